"""train.py on the real Fundus sample files with a tiny random SAM and a width-4 U-Net (seconds per run)."""
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import losses
import medsam_lora
import synfoc
import train
from records import config
from records import plan
import data
from dataio.spec import DOWNLOADS
from records import checkpoint, runlog

ROOT = Path(__file__).resolve().parents[1]


def args(shared_data, out, *extra):
    # The sample set has one train image per fundus domain: 1 labeled (domain 1), 3 unlabeled, 4 test.
    return ["--dataset", "fundus", "--data-root", str(shared_data), "--domain", "1", "--labeled", "1",
            "--sam", "tiny", "--unet-width", "4", "--batch", "1", "1", "--steps", "4", "--eval-every", "2",
            "--log-every", "1", "--device", "cpu", "--amp", "off", "--out", str(out), *extra]


def read_rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def load(p):
    return torch.load(p, map_location="cpu", weights_only=True)


def test_resume_continues_exactly(shared_data, tmp_path):
    full = train.train(args(shared_data, tmp_path / "full"))
    part = train.train(args(shared_data, tmp_path / "part"), stop_at=2)
    assert load(part / "last.pt")["step"] == 2
    assert len(read_rows(part)) == 2
    train.train(["--resume", str(part), "--device", "cpu"])
    rows_full, rows_part = read_rows(full), read_rows(part)
    assert [r["step"] for r in rows_part] == ["1", "2", "3", "4"]
    for a, b in zip(rows_full, rows_part):
        for k in ("loss", "L_x", "L_u", "L_c", "L_d", "alpha"):
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5, abs=1e-7), (a["step"], k)
    ca, cb = load(full / "last.pt"), load(part / "last.pt")
    assert ca["step"] == cb["step"] == 4
    for key in ("unet", "unet_ema", "sam", "sam_ema"):
        for name in ca[key]:
            assert torch.allclose(ca[key][name].float(), cb[key][name].float(), atol=1e-6), (key, name)
    # the losses really move: the semi-supervised terms are not all zero
    assert any(float(r["L_u"]) > 0 for r in rows_full)


def test_run_folder_contents(shared_data, tmp_path):
    run = train.train(args(shared_data, tmp_path / "r", "--steps", "2"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"] == "fundus" and cfg["sam"] == "tiny" and cfg["unet_width"] == 4
    ck = load(run / "last.pt")
    assert ck["format"] == checkpoint.CKPT_FORMAT and ck["step"] == 2
    assert set(ck) >= {"unet", "unet_ema", "sam", "sam_ema", "opt_unet", "opt_sam", "scaler", "rng", "config"}
    for student in ("unet", "medsam"):  # each student's own test-selected step (the authors' protocol)
        best = load(run / f"best_test_selected_{student}.pt")
        assert best["best"][student][1] == best["step"] and best["step"] in (1, 2)
    log = (run / "log.txt").read_text()
    assert "test Dice per domain" in log and "Domain4" in log
    assert "test-selected" in log and "unet " in log.split("test-selected")[-1] and "best_test_selected_<student>.pt" in log
    assert (run / "curves.png").stat().st_size > 1000
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", *runlog.METRIC_NAMES, "s_per_step", "peak_mem_gib"]
    with open(run / "evals.csv") as f:
        evals = list(csv.DictReader(f))
    assert {(r["step"], r["model"]) for r in evals} == {("2", "unet"), ("2", "medsam")}
    assert sorted({r["domain"] for r in evals}) == ["Domain1", "Domain2", "Domain3", "Domain4"]


def test_one_step_updates_and_ema(shared_data, tmp_path):
    run = train.train(args(shared_data, tmp_path / "r", "--steps", "1", "--eval-every", "1"))
    ck = load(run / "last.pt")
    # step 0 uses EMA decay a_0 = 0: both teachers equal their students after the first step
    for k, v in ck["sam"].items():
        assert torch.equal(v, ck["sam_ema"][k]), k
    for k, v in ck["unet"].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, ck["unet_ema"][k]), k
    # and the students moved away from their initialisation (same seed → same init)
    torch.manual_seed(0)
    unet, sam = synfoc.build_models(ck["config"], "cpu")
    moved = [k for k, v in unet.state_dict().items() if v.is_floating_point() and not torch.equal(v, ck["unet"][k])]
    assert moved
    moved_sam = [k for k, v in sam.trainable_state_dict().items() if not torch.equal(v, ck["sam"][k])]
    assert any(k.endswith((".b_q", ".b_v")) for k in moved_sam) and any("mask_decoder" in k for k in moved_sam)


@pytest.mark.parametrize("extra", [["--mode", "unet"], ["--mode", "medsam"], ["--mode", "suponly"],
                                   ["--alpha", "cps"], ["--alpha", "own"], ["--alpha", "linear"], ["--reg", "cr"],
                                   ["--reg", "none"], ["--burn-in", "2"],
                                   # fp16 autocast is a GPU setting: on a CPU it is emulated, like bf16 without
                                   # native support (EXPERIMENTS.md "a preset for any CPU"), so it runs on CUDA only
                                   pytest.param(["--amp", "fp16", "--device", "cuda"], marks=pytest.mark.cuda)])
def test_ablations_run(shared_data, tmp_path, extra):
    """Each flag by the effect it must have in metrics.csv (alpha = the U-Net target's ensemble weight)."""
    run = train.train(args(shared_data, tmp_path / "r", "--steps", "4", *extra))
    rows = read_rows(run)
    col = lambda k: [float(r[k]) for r in rows]  # noqa: E731
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(col("loss"))))
    ck = load(run / "last.pt")
    flag, value = extra[:2]
    if flag == "--mode":
        assert (ck["sam"] is None) == (value != "medsam") and (ck["unet"] is None) == (value == "medsam")
        assert all(v == 0 for v in col("L_c") + col("L_d"))
        if value == "suponly":
            assert all(v == 0 for v in col("L_u")) and all(v == 0 for v in col("dice_unet_teacher"))
        else:
            teacher, other = ("dice_unet_teacher", "dice_sam_teacher") if value == "unet" else \
                ("dice_sam_teacher", "dice_unet_teacher")
            assert any(v > 0 for v in col(teacher)) and all(v == 0 for v in col(other))
            assert any(v > 0 for v in col("L_u"))
    if extra == ["--alpha", "cps"]:   # the U-Net learns from the SAM teacher alone
        assert all(v == 0 for v in col("alpha"))
    if extra == ["--alpha", "own"]:   # the U-Net learns from its own teacher alone
        assert all(v == 1 for v in col("alpha"))
    if extra == ["--alpha", "linear"]:  # alpha = t/T at step index t (row "step" = t + 1)
        assert col("alpha") == pytest.approx([(int(r["step"]) - 1) / 4 for r in rows])
    if extra == ["--reg", "cr"]:
        assert all(v == 0 for v in col("L_d")) and all(v > 0 for v in col("L_c"))
    if extra == ["--reg", "none"]:
        assert all(v == 0 for v in col("L_c") + col("L_d"))
    if flag == "--alpha" or flag == "--amp":
        assert all(v > 0 for v in col("L_d"))  # CDCR still on
    if flag == "--amp":  # one GradScaler for both optimisers, saved for resume
        assert ck["scaler"] and ck["scaler"]["scale"] > 0
    if extra == ["--burn-in", "2"]:  # supervised only, then the Eq. 2 ramp over the remaining 2 steps
        assert col("lambda")[:2] == [0, 0] and all(v > 0 for v in col("lambda")[2:])
        assert col("L_u")[:2] == [0, 0] and all(v > 0 for v in col("L_u")[2:])
        assert col("lambda")[2] == pytest.approx(math.exp(-5), rel=1e-4)


def test_nonfinite_loss_stops_with_message(shared_data, tmp_path, monkeypatch):
    real = losses.ce_loss
    calls = {"n": 0}

    def ce_nan_on_step_2(logits, target, weight=None):
        calls["n"] += 1
        out = real(logits, target, weight)
        return out * float("nan") if calls["n"] > 4 else out  # 4 CE calls per synfoc step

    monkeypatch.setattr(losses, "ce_loss", ce_nan_on_step_2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 2 .*L_x=nan"):
        train.train(args(shared_data, tmp_path / "r", "--eval-every", "1"))
    assert load(tmp_path / "r" / "last.pt")["step"] == 1


def run_cli(*a):
    return subprocess.run([sys.executable, "train.py", *a], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line(shared_data, tmp_path, capsys):
    base = args(shared_data, tmp_path / "r", "--steps", "1", "--eval-every", "1")
    r = run_cli(*base[:-2], "--out", str(tmp_path / "z"), "--domain", "7")  # the command line itself: one line
    assert r.returncode == 2 and "domain" in r.stderr.lower() and "Traceback" not in r.stderr
    train.train(base)
    capsys.readouterr()  # the run's progress bars (stderr) are not the errors checked below

    def main_err(*argv: str) -> str:  # the same entry point in-process (the subprocess cases above cover the CLI)
        with pytest.raises(SystemExit) as e:
            train.main(list(argv))
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        return err
    err = main_err(*base)  # the folder exists now
    assert "exists" in err and "--resume" in err
    err = main_err("--dataset", "fundus", "--sam", "medsam", "--sam-ckpt", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x"))
    assert "nope.pth" in err and "litemedsam" in err
    assert not (tmp_path / "x").exists()
    # every missing prerequisite in the one message, each with where to get it: the weights and the data folder
    err = main_err("--dataset", "fundus", "--sam-ckpt", str(tmp_path / "nope.pth"), "--data-root", str(tmp_path / "no"),
                   "--out", str(tmp_path / "x"))
    assert "2 prerequisite(s) missing" in err and "nope.pth" in err and medsam_lora.MEDSAM_MD5 in err
    assert str(tmp_path / "no" / "Fundus") in err and DOWNLOADS["fundus"].split()[0] in err
    assert "missing" in main_err("--dataset", "prostate", "--sam", "tiny", "--data-root", str(tmp_path / "missing"),
                                 "--out", str(tmp_path / "y"))
    assert "--steps" in main_err("--resume", str(tmp_path / "r"), "--steps", "9")
    assert "nothing_here" in main_err("--resume", str(tmp_path / "nothing_here"))
    for bad, word in ((["--mode", "unet", "--alpha", "cps"], "--alpha"), (["--mode", "suponly", "--reg", "cr"], "--reg"),
                      (["--burn-in", "9", "--steps", "9"], "--burn-in"), (["--data-seed", "3"], "--data-seed"),
                      (["--lite-size", "128"], "--lite-size"), (["--head-init", "pretrained"], "--head-init")):
        assert word in main_err(*base[:-2], "--out", str(tmp_path / "w"), *bad), bad
    assert not (tmp_path / "w").exists()


def test_flags_override_presets():
    cfg = config.resolve_config(config.parse_args(["--dataset", "mnms", "--steps", "7", "--batch", "3", "1"]))
    assert cfg["steps"] == 7 and cfg["batch"] == [3, 1] and cfg["num_classes"] == 4 and cfg["unet_size"] == 288
    cfg = config.resolve_config(config.parse_args(["--dataset", "busi", "--labeled", "10"]))
    assert cfg["labeled"] == 10 and cfg["labeled_ratio"] is None
    cfg = config.resolve_config(config.parse_args(["--dataset", "busi"]))
    assert cfg["labeled"] is None and cfg["labeled_ratio"] == pytest.approx(0.125)


def test_reference_line_only_for_the_measured_budget(tmp_path, monkeypatch):
    cfg = config.resolve_config(config.parse_args(["--steps", "200", "--batch", "2", "2"]))
    budget = {k: cfg[k] for k in runlog.BUDGET_KEYS}
    ref = dict(date="2026-11-26", machine="m", data_seed=0, seed=0, budget=budget,
               results={"SupOnly": {"unet": {"Domain1": 0.9, "Domain2": 0.1, "Domain3": 0.2, "Domain4": 0.3, "mean": 0.375}}})
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    monkeypatch.setattr(runlog, "REFERENCE", tmp_path / "ref.json")
    line = runlog.reference_line(cfg)
    assert "SupOnly (unet)" in line and "Domain2  10.0" in line and "mean  37.5" in line and "2026-11-26" in line
    assert runlog.reference_line(dict(cfg, steps=201)) == ""          # another budget: no claim
    assert runlog.reference_line(dict(cfg, mode="unet")) == ""
    assert runlog.reference_line(dict(cfg, dice_mask="all")) == ""    # another loss: no claim
    del budget["dice_mask"]                                           # a reference from before the flag
    (tmp_path / "ref.json").write_text(json.dumps(dict(ref, budget=budget)))
    assert runlog.reference_line(cfg) == ""
    monkeypatch.setattr(runlog, "REFERENCE", tmp_path / "none.json")
    assert runlog.reference_line(cfg) == ""


def test_unet_layer_flag_reaches_the_model_and_the_checkpoint(shared_data, tmp_path):
    """--unet-layer group: the trained U-Net has GroupNorm (no running statistics in last.pt), and the
    checkpoint's students are rebuilt with it (strict load); the synthetic preset uses it, the paper's not."""
    assert config.resolve_config(config.parse_args([]))["unet_layer"] == "group"
    assert config.resolve_config(config.parse_args(["--dataset", "fundus"]))["unet_layer"] == "batch"
    run = train.train(args(shared_data, tmp_path / "g", "--steps", "1", "--unet-layer", "group"))
    ck = load(run / "last.pt")
    assert ck["config"]["unet_layer"] == "group" and not any("running_mean" in k for k in ck["unet"])
    unet = checkpoint.build_students(ck, torch.device("cpu"), ["unet"], None)["unet"]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules())
    bn = load(train.train(args(shared_data, tmp_path / "b", "--steps", "1")) / "last.pt")
    assert any("running_mean" in k for k in bn["unet"])


def test_sam_learning_rate_follows_the_authors_code():
    # their --warmup divides the AdamW rate once (0.03 / 250) and never raises it: 1.2e-4 on the paper's data;
    # the synthetic preset keeps its measured 1e-4; the flag wins over both
    assert config.resolve_config(config.parse_args(["--dataset", "fundus"]))["lr_sam"] == pytest.approx(0.03 / 250)
    assert config.resolve_config(config.parse_args(["--dataset", "prostate"]))["lr_sam"] == pytest.approx(1.2e-4)
    assert config.resolve_config(config.parse_args([]))["lr_sam"] == 1e-4
    assert config.resolve_config(config.parse_args(["--dataset", "fundus", "--lr-sam", "1e-4"]))["lr_sam"] == 1e-4


def test_dry_run_prints_the_plan_and_every_missing_prerequisite(shared_data, tmp_path, capsys):
    """--dry-run: the resolved plan (steps, batch, cadence, sizes, precision, the step's memory) and the missing
    inputs with their links; exit 2 when something is missing, nothing written either way."""
    base = ["--dataset", "fundus", "--sam", "tiny", "--unet-width", "4", "--unet-size", "64", "--device", "cpu",
            "--out", str(tmp_path / "r"), "--dry-run"]
    with pytest.raises(SystemExit) as e:
        train.main([*base, "--data-root", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert e.value.code == 2 and not (tmp_path / "r").exists()
    assert "plan: fundus, labeled domain 1 (20 labeled)" in out and "seed 1337" in out
    assert "steps 30000 (supervised only: 0), batch 4 + 4, evaluation of both students every 500 steps (60 in all" in out
    assert "U-Net width 4 at 64 px; a tiny random ViT at 64 px (logits 16)" in out
    assert re.search(r"memory of one training step .*: peak \d+\.\d\d GiB", out)
    assert "missing: data root" in out and DOWNLOADS["fundus"].split()[0] in out
    cfg = config.resolve_config(config.parse_args([*base[:-1], "--data-root", str(shared_data)]))
    assert plan.prerequisites(cfg) == ([], [])  # with the data there: "every prerequisite is there", exit 0
    assert "every prerequisite is there" in plan.plan(dict(cfg, sam_size=64, sam_logit_size=16), None, [])


def test_a_weights_file_with_another_md5_is_named(tmp_path):
    """A present MedSAM file is hashed: a sum that is not a published one is a warning naming it, not an error."""
    bad = tmp_path / "medsam_vit_b.pth"
    bad.write_bytes(b"half a download")
    cfg = config.resolve_config(config.parse_args(["--dataset", "synthetic", "--sam", "medsam", "--sam-ckpt", str(bad)]))
    missing, warnings = plan.prerequisites(cfg)
    assert missing == [] and len(warnings) == 1
    assert str(bad) in warnings[0] and medsam_lora.file_md5(bad) in warnings[0] and medsam_lora.MEDSAM_MD5 in warnings[0]
    cfg["mode"] = "suponly"  # a run without SAM needs no SAM file at all
    assert plan.prerequisites(dict(cfg, sam_ckpt=str(tmp_path / "absent.pth"))) == ([], [])
