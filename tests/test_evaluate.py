"""evaluate.py and predict.py: aggregation (per slice, per volume, over runs) and the command lines end to end
on the real sample files (tiny models trained for one step). The metrics themselves: test_metrics.py."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import metrics
import predict
import synfoc
from dataio import transforms

ROOT = Path(__file__).resolve().parents[1]
FUNDUS_PARTS = [(1,), (1, 2)]


# ----------------------------------------------------------------------------- aggregation

def test_aggregate_means_over_slices_then_domains_then_parts():
    def row(d, part, dice, hd):
        return dict(domain=d, part=part, dice=dice, jaccard=dice / 2, hd95=hd, asd=hd / 2)
    rows = [row(1, "cup", 0.2, 10), row(1, "cup", 0.4, 20), row(1, "cup", 0.6, 30),   # domain 1: 3 slices
            row(1, "disc", 0.8, 4), row(1, "disc", 1.0, 2), row(1, "disc", 0.9, 6),
            row(2, "cup", 0.0, 100), row(2, "disc", 0.5, 8),                           # domain 2: 1 slice
            row(4, "cup", 1.0, 0), row(4, "disc", 1.0, 0)]                             # domain 3: none
    s = evaluate.aggregate(rows, ["D1", "D2", "D3", "D4"], ["cup", "disc"])
    assert list(s["domains"]) == ["D1", "D2", "D4"]
    d1 = s["domains"]["D1"]
    assert d1["cup"]["dice"] == pytest.approx(0.4) and d1["cup"]["hd95"] == pytest.approx(20)
    assert d1["cup"]["jaccard"] == pytest.approx(0.2) and d1["cup"]["asd"] == pytest.approx(10)
    assert d1["disc"]["dice"] == pytest.approx(0.9) and d1["dice"] == pytest.approx(0.65) and d1["cases"] == 3
    # unweighted mean over domains (domain 1's three slices count as one domain)
    assert s["mean"]["cup"]["dice"] == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert s["mean"]["disc"]["hd95"] == pytest.approx((4 + 8 + 0) / 3)
    assert s["mean"]["dice"] == pytest.approx(((0.4 + 0.0 + 1.0) / 3 + (0.9 + 0.5 + 1.0) / 3) / 2)
    table = evaluate.format_table(s, ["cup", "disc"], "t")
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == ["D1 (3)", "D2 (1)", "D4 (1)", "**Mean**"]
    assert lines[1].rstrip(" |").endswith("65.00")  # domain 1 average DSC in %


def test_aggregate_runs_mean_and_sample_std():
    def summary(cup, disc):
        e = lambda v: dict(dice=v, jaccard=v / 2, hd95=10 * v, asd=5 * v)  # noqa: E731
        dom = dict(cup=e(cup), disc=e(disc), dice=(cup + disc) / 2, cases=3)
        return dict(domains={"D1": dom}, mean=dict(cup=e(cup), disc=e(disc), dice=(cup + disc) / 2))
    runs = [summary(0.2, 0.8), summary(0.4, 0.9), summary(0.9, 1.0)]
    s = evaluate.aggregate_runs(runs, ["cup", "disc"])
    assert s["runs"] == 3 and s["domains"]["D1"]["cases"] == 3
    cup = s["domains"]["D1"]["cup"]
    assert cup["dice"]["mean"] == pytest.approx(0.5)
    assert cup["dice"]["std"] == pytest.approx(np.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))  # n-1
    assert cup["hd95"]["mean"] == pytest.approx(5.0) and s["mean"]["disc"]["asd"]["mean"] == pytest.approx(4.5)
    assert s["mean"]["dice"]["mean"] == pytest.approx((0.5 + 0.65 + 0.95) / 3)
    table = evaluate.format_table(s, ["cup", "disc"], "mean ± std over 3 runs")
    row = [ln for ln in table.splitlines() if ln.startswith("| D1 (3)")][0]
    assert row.split("|")[2].strip() == f"50.00 ± {100 * cup['dice']['std']:.2f}"
    one = evaluate.aggregate_runs(runs[:1], ["cup", "disc"])
    assert one["mean"]["cup"]["dice"] == {"mean": 0.2, "std": 0.0}
    with pytest.raises(ValueError, match="different domains"):
        evaluate.aggregate_runs([runs[0], dict(runs[1], domains={"D2": runs[1]["domains"]["D1"]})], ["cup", "disc"])


# ----------------------------------------------------------------------------- pipeline pieces

class Threshold(torch.nn.Module):
    """A stand-in model: class 2 where the red channel is bright, class 1 where it is very bright, at `out`."""

    def __init__(self, out: int | None = None):
        super().__init__()
        self.out = out

    def forward(self, x):
        r = x[:, :1]
        logits = torch.cat([0.5 - r, 0.9 - (r - 0.3).abs() * 4, (r - 0.8) * 4], 1)
        return torch.nn.functional.interpolate(logits, size=(self.out, self.out), mode="bilinear") if self.out else logits


def test_evaluate_cases_rows_match_direct_computation(shared_data, tmp_path):
    root = shared_data / "Fundus"
    cases = data.test_cases("fundus", root)
    cfg = dict(unet_size=256, sam_size=64, parts=FUNDUS_PARTS, part_names=["cup", "disc"])
    models = {"unet": Threshold(), "medsam": Threshold(out=32)}
    rows, summaries = evaluate.evaluate_cases(models, "fundus", cases, cfg, torch.device("cpu"), batch_size=3,
                                              overlays=1, overlay_dir=tmp_path)
    assert len(rows) == 2 * len(cases) * 2
    ds = data.TestSet("fundus", cases, 64)
    for i, (path, _, dom) in enumerate(cases):
        item = ds[i]
        preds = evaluate.predict(models, item["img_unet"][None], item["img_sam"][None], 256, None)
        for name in models:
            want = metrics.case_metrics(preds[name][0].numpy(), item["label_unet"].numpy(), FUNDUS_PARTS)
            got = [r for r in rows if r["model"] == name and r["name"] == Path(path).stem]
            assert [r["part"] for r in got] == ["cup", "disc"]
            assert all(r["domain"] == f"Domain{dom}" for r in got)
            for r, w in zip(got, want):
                assert {k: r[k] for k in metrics.METRICS} == w
    assert set(summaries) == {"unet", "medsam"}
    assert list(summaries["unet"]["domains"]) == [f"Domain{k}" for k in range(1, 5)]
    assert len(list(tmp_path.glob("*.png"))) == 2 * 4  # one overlay per domain and model
    # mean_dice (what train.py logs and bench/table7.py tabulates), from the rows by hand: per domain the mean
    # over its slices and parts, and the headline mean over the domains
    dice = evaluate.mean_dice(summaries)
    for name in models:
        per_domain = {f"Domain{k}": np.mean([r["dice"] for r in rows if r["model"] == name and r["domain_id"] == k])
                      for k in range(1, 5)}
        assert dice[name].keys() == {*per_domain, "mean"}
        for d, v in per_domain.items():
            assert dice[name][d] == pytest.approx(v)
        assert dice[name]["mean"] == pytest.approx(np.mean(list(per_domain.values())))


def test_new_image_input_matches_testset(shared_data):
    path, masks, dom = data.test_cases("fundus", shared_data / "Fundus")[0]
    item = data.TestSet("fundus", [(path, masks, dom)], 64)[0]
    img = predict.read_image(Path(path), 3)
    assert torch.allclose(transforms.to_input(img, 256, 3), item["img_unet"], atol=1e-6)
    assert torch.allclose(transforms.to_input(img, 64, 3), item["img_sam"], atol=1e-6)


def test_resize_label_nearest():
    lab = np.arange(16).reshape(4, 4)
    assert transforms.resize_label(lab, 8, 8)[::2, ::2].tolist() == lab.tolist()
    assert transforms.resize_label(lab, 2, 6).shape == (2, 6)


@pytest.mark.parametrize("hw", [(4, 4), (2, 6), (7, 3), (13, 9), (384, 256), (100, 512)])
def test_one_nearest_rule_numpy_and_torch(hw):
    """transforms.resize_label (numpy) and the torch side (synfoc.resize / smc, "nearest-exact") sample the same pixels."""
    lab = np.random.default_rng(0).integers(0, 3, (37, 53))
    want = torch.nn.functional.interpolate(torch.from_numpy(lab)[None, None].float(), size=hw, mode="nearest-exact")
    assert transforms.resize_label(lab, *hw).tolist() == want[0, 0].long().tolist()
    sq = np.random.default_rng(1).integers(0, 3, (1, 1, 48, 48))
    assert synfoc.resize(torch.from_numpy(sq).float(), hw[0], "nearest")[0, 0].long().tolist() == \
        transforms.resize_label(sq[0, 0], hw[0], hw[0]).tolist()


def test_overlay_draws_gt_contour_and_prediction():
    img = np.full((10, 10), 100, np.uint8)
    gt = np.zeros((10, 10), np.int64)
    gt[3:7, 3:7] = 1
    pred = np.zeros_like(gt)
    pred[0:2, 0:2] = 2
    o = evaluate.overlay(img, pred, gt, [(1,)])
    assert o.shape == (10, 10, 3) and o.dtype == np.uint8
    assert o[3, 3].tolist() == [0, 255, 0] and o[5, 5].tolist() == [100, 100, 100]
    assert o[0, 0].tolist() != [100, 100, 100] and o[9, 9].tolist() == [100, 100, 100]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory):
    """A tiny SynFoC run (tiny random SAM, width-4 U-Net, 1 step) on the real Fundus sample files."""
    import train

    out = tmp_path_factory.mktemp("run") / "r"
    return train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--domain", "1", "--labeled", "1",
                        "--sam", "tiny", "--unet-width", "4", "--batch", "1", "1", "--steps", "1",
                        "--eval-every", "1", "--device", "cpu", "--amp", "off", "--out", str(out)])


def cli(argv, capsys, module=evaluate):
    """module.main (evaluate or predict) in-process -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        module.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def test_evaluate_checkpoint_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = cli([run_dir / "last.pt", "--model", "both", "--overlays", "1", "--out", out,
                             "--device", "cpu"], capsys)
    assert code == 0, err
    for f in ("results.json", "table.md", "per_case.csv"):
        assert (out / f).is_file(), f
    table = (out / "table.md").read_text()
    for k in range(1, 5):
        assert table.count(f"| Domain{k} (1) |") == 2  # a row per domain, for each of the two models
    assert table.count("**Mean**") == 2 and "cup HD95" in table and "disc ASD" in table
    assert "| Domain3 (1) |" in stdout
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"medsam", "unet"} and res["step"] == 1
    assert list(res["models"]["medsam"]["domains"]) == [f"Domain{k}" for k in range(1, 5)]
    # train.py evaluated the same students on the same test split: the same mean Dice, so the students
    # (with the tiny SAM's unsaved random encoder, rebuilt from the seed) are restored exactly
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert res["models"]["medsam"]["headline_dice"] == pytest.approx(ck["best"]["medsam"][0], abs=1e-6)
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 * 2 and set(rows[0]) == {"model", "domain", "name", "part", *metrics.METRICS, "level"}
    assert {r["level"] for r in rows} == {"slice"}
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 8 and "medsam_Domain1_gdrishtiGS_001.png" in overlays
    # defaults: every student (the paper's tables give both), a run folder means its last.pt, --out next to it;
    # the train split works too
    code, _, err = cli([run_dir, "--split", "train", "--limit", "1", "--device", "cpu"], capsys)
    assert code == 0, err
    res = json.loads((run_dir / "eval_last" / "results.json").read_text())
    assert list(res["models"]) == ["medsam", "unet"] and res["split"] == "train" and res["limit"] == 1


def test_segment_new_images(run_dir, shared_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    fundus = Image.open(next((shared_data / "Fundus/Domain2/test/ROIs/image").glob("*.png"))).convert("RGB")
    fundus.resize((300, 200)).save(src / "rgb.png")
    fundus.convert("L").resize((120, 160)).save(src / "gray.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    code, stdout, err = cli([run_dir / "last.pt", "--images", src, "--out", out, "--device", "cpu"], capsys, predict)
    assert code == 1  # the broken file is reported, the rest is written
    bad = [ln for ln in err.splitlines() if "broken.png" in ln]
    assert len(bad) == 1 and "Traceback" not in err
    for name, size in (("rgb", (300, 200)), ("gray", (120, 160))):
        mask = Image.open(out / f"{name}.png")
        assert mask.size == size
        data.decode_mask("fundus", np.asarray(mask))  # in the dataset's encoding (raises otherwise)
        assert Image.open(out / f"{name}_overlay.png").size == size
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()
    # the output folder may not be the input folder (the masks would overwrite the images)
    code, _, err = cli([run_dir / "last.pt", "--images", src, "--out", src], capsys, predict)
    assert code == 2 and err.startswith("error: ") and "--out" in err
    # evaluate.py has no --images (segmenting is predict.py's): argparse's own one-line error
    code, _, err = cli([run_dir / "last.pt", "--images", src, "--out", out], capsys)
    assert code == 2 and "--images" in err and err.count("\n") == 1


def test_bad_input_is_one_line_exit_2(run_dir, shared_data, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(2)}, foreign)
    cases = [
        ([tmp_path / "missing.pt"], "not found"),
        ([junk], "corrupt"),
        ([foreign], "not a SynFoC checkpoint"),
        ([run_dir / "last.pt", "--data-root", tmp_path / "nowhere"], "--data-root"),
        ([run_dir / "last.pt", "--data-root", shared_data / "ProstateSlice"], "holds prostate"),
        ([run_dir / "last.pt", "--model", "sideways"], "invalid choice"),
        ([run_dir / "last.pt", "--per-volume"], "prostate and mnms"),
        ([tmp_path, "--curves"], "metrics.csv"),
    ]
    for argv, needle in cases:
        code, _, err = cli(argv, capsys)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, (argv, err)
    code, _, err = cli([run_dir / "last.pt", "--images", tmp_path / "nowhere", "--out", tmp_path / "o"], capsys,
                       predict)
    assert code == 2 and err.startswith("error: --images") and err.count("\n") == 1


def test_model_missing_from_checkpoint(run_dir):
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    ck["sam"] = None
    assert evaluate.which_models(ck, None) == ["unet"]
    with pytest.raises(evaluate.EvalError, match="no medsam"):
        evaluate.which_models(ck, "both")


def test_cli_subprocess_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(tmp_path / "nope.pt")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- volumes and seeds (prostate)

# Slice names of each test volume: numeric slice order differs from string order (2 < 10), so a wrong
# grouping or ordering changes the 3D surface distances.
VOLUMES = {"00": [0, 2, 10], "07": [3, 4]}


def write_prostate(root: Path) -> Path:
    """A tiny prostate dataset (6 sites) whose test volumes follow VOLUMES: discs of varying radius and
    place per slice, 48x48 grey slices (the reader resizes them to the U-Net size)."""
    yy, xx = np.mgrid[:48, :48]
    rng = np.random.default_rng(0)
    for site in data.PRESETS["prostate"]["domains"]:
        for split, vols in (("train", {"00": [0, 1]}), ("test", VOLUMES)):
            for case, slices in vols.items():
                for k in slices:
                    cy, cx, r = 24 + rng.integers(-6, 7), 24 + rng.integers(-6, 7), 4 + 2 * (k % 5)
                    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                    img = np.where(disc, 200, 60).astype(np.uint8) + rng.integers(0, 40, (48, 48)).astype(np.uint8)
                    for sub, a in (("image", img), ("mask", np.where(disc, 0, 255).astype(np.uint8))):
                        (root / site / split / sub).mkdir(parents=True, exist_ok=True)
                        Image.fromarray(a).save(root / site / split / sub / f"{case}_{k:02d}.png")
    return root


class Bright(torch.nn.Module):
    """A 2-class stand-in model: prostate where the first channel is bright."""

    def forward(self, x):
        r = x[:, :1]
        return torch.cat([0.55 - r, r - 0.55], 1)


def test_per_volume_rows_match_medpy_on_stacked_slices(tmp_path):
    from medpy.metric import binary as mb

    root = write_prostate(tmp_path / "ProstateSlice")
    cases = data.test_cases("prostate", root)
    cfg = dict(unet_size=384, sam_size=32, parts=[(1,)], part_names=["prostate"])  # 384: the preset S
    rows, _ = evaluate.evaluate_cases({"unet": Bright()}, "prostate", cases, cfg, torch.device("cpu"),
                                      batch_size=3, per_volume=True)
    vol = [r for r in rows if r["level"] == "volume"]
    assert len(vol) == 6 * len(VOLUMES) and len([r for r in rows if r["level"] == "slice"]) == 6 * 5
    ds = data.TestSet("prostate", cases, 32)
    items = {(it["domain"], it["name"]): it for it in (ds[i] for i in range(len(ds)))}
    for r in vol:
        stems = [f"{r['name']}_{k:02d}" for k in VOLUMES[r["name"]]]  # numeric slice order
        its = [items[(r["domain_id"], s)] for s in stems]
        pred = np.stack([Bright()(it["img_unet"][None]).argmax(1)[0].numpy() == 1 for it in its])
        gt = np.stack([it["label_unet"].numpy() == 1 for it in its])
        assert pred.shape == (len(stems), 384, 384) and pred.any() and gt.any()
        want = dict(dice=mb.dc(pred, gt), jaccard=mb.jc(pred, gt), hd95=mb.hd95(pred, gt), asd=mb.asd(pred, gt))
        assert {k: r[k] for k in metrics.METRICS} == want, r["name"]
    summary = evaluate.summarize(rows, "unet", "prostate", ["prostate"], "volume")
    assert all(d["cases"] == len(VOLUMES) for d in summary["domains"].values())
    # a slice whose name does not follow <case>_<slice> is one clear error naming it
    bad = root / "BIDMC" / "test"
    (bad / "image" / "00_00.png").rename(bad / "image" / "scan.png")
    (bad / "mask" / "00_00.png").rename(bad / "mask" / "scan.png")
    with pytest.raises(data.DataError, match=r"scan\.png.*<case>_<slice>"):
        evaluate.evaluate_cases({"unet": Bright()}, "prostate", data.test_cases("prostate", root), cfg,
                                torch.device("cpu"), per_volume=True)


@pytest.fixture(scope="module")
def prostate_runs(tmp_path_factory):
    """Two tiny prostate runs on write_prostate data: one trained (tiny SAM, width-4 U-Net, 1 step), and a copy
    of it whose U-Net predicts prostate everywhere (a second training would cost half a minute on 2 cores)."""
    import shutil

    import train

    base = tmp_path_factory.mktemp("pros")
    write_prostate(base / "ProstateSlice")
    a = train.train(["--dataset", "prostate", "--data-root", str(base), "--domain", "1", "--labeled", "1",
                     "--sam", "tiny", "--unet-width", "4", "--batch", "1", "1", "--steps", "1", "--test-limit", "1",
                     "--eval-every", "1", "--device", "cpu", "--amp", "off", "--seed", "0", "--out", str(base / "seed0")])
    b = base / "seed1"
    shutil.copytree(a, b)
    ck = torch.load(b / "last.pt", map_location="cpu", weights_only=True)
    ck["unet"]["head.bias"] = torch.tensor([0.0, 50.0])  # this U-Net says "prostate" everywhere
    torch.save(ck, b / "last.pt")
    return [a, b]


def test_runs_mean_std_and_per_volume_cli(prostate_runs, tmp_path, capsys):
    out = tmp_path / "agg"
    code, stdout, err = cli([*prostate_runs, "--per-volume", "--model", "unet", "--device", "cpu", "--out", out,
                             "--batch-size", "8"], capsys)  # the U-Net only: the SAM side adds time, not coverage
    assert code == 0, err
    assert "mean ± std over 2 runs" in stdout and "per volume (3D, voxels)" in stdout
    agg = json.loads((out / "results.json").read_text())
    assert agg["n_runs"] == 2 and set(agg["models"]) == {"unet"}
    singles = [json.loads((r / "eval_last" / "results.json").read_text()) for r in prostate_runs]
    for model in ("unet",):
        for level, pick in (("slice", lambda s: s), ("volume", lambda s: s["per_volume"])):
            for dom in data.PRESETS["prostate"]["domains"]:
                vals = [pick(s["models"][model])["domains"][dom]["prostate"]["hd95"] for s in singles]
                got = agg["models"][model][level]["domains"][dom]["prostate"]["hd95"]
                assert got["mean"] == pytest.approx(np.mean(vals)) and got["std"] == pytest.approx(np.std(vals, ddof=1))
            vals = [pick(s["models"][model])["mean"]["dice"] for s in singles]
            assert agg["models"][model][level]["mean"]["dice"]["mean"] == pytest.approx(np.mean(vals))
    # each run's own per_case.csv has the volume rows (name = case id) next to the slice rows
    with open(prostate_runs[0] / "eval_last" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    vol = [r for r in rows if r["level"] == "volume"]
    assert len(vol) == 6 * len(VOLUMES) and {r["name"] for r in vol} == set(VOLUMES)
    assert len([r for r in rows if r["level"] == "slice"]) == 6 * 5
    table = (prostate_runs[0] / "eval_last" / "table.md").read_text()
    assert table.count(f"| BIDMC ({len(VOLUMES)}) |") == 1 and table.count("| BIDMC (5) |") == 1
    # the two runs differ (the second U-Net), so the spread is not zero
    assert agg["models"]["unet"]["slice"]["mean"]["dice"]["std"] > 0


def test_curves_flag_draws_the_run_without_evaluating(run_dir, tmp_path, capsys):
    png = run_dir / "curves.png"
    png.unlink(missing_ok=True)  # train.py may draw it one day; the flag must draw it itself
    out = tmp_path / "not_written"
    code, stdout, err = cli([run_dir, "--curves", "--out", out], capsys)
    assert code == 0, err
    assert png.is_file() and f"wrote {png}" in stdout and not out.exists()
