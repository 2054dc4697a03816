"""bench/step.py's --compare, --parts and real synthetic batches, and bench/parity.py runs, on tiny models (CPU).

    nice -n 19 python -m pytest -q tests/test_bench_step_parts.py
"""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import step as bench_step  # noqa: E402  (bench/step.py)
import parity  # noqa: E402  (bench/parity.py)


def run(argv, capsys) -> tuple[str, dict]:
    bench_step.main(argv)
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1].partition(": ")[2])


def test_parts_cover_the_step_and_its_flops(capsys):
    """--parts: every FINE row, the parts' FLOPs add up to the counted step's FLOPs, and the U-Net teacher's
    forward costs what the U-Net student's no-grad SMC forward costs (same network, same batch)."""
    out, js = run(["--device", "cpu", "--warmup", "0", "--steps", "1", "--parts", "--batch", "1", "2"], capsys)
    parts = js["parts"]["optimised"]
    assert list(parts) == list(bench_step.FINE)
    assert sum(f for _, f in parts.values()) == pytest.approx(js["FLOPs/step"], rel=1e-6)
    assert parts["U-Net teacher fwd"][1] == parts["U-Net student fwd (SMC, no grad)"][1] > 0
    assert parts["backward"][1] > parts["SAM student encoder fwd (LoRA)"][1] > 0
    assert parts["EMA"][1] == 0 and parts["EMA"][0] > 0
    assert all(ms >= 0 for ms, _ in parts.values())
    assert "| **sum** |" in out and "| SAM teacher fwd |" in out


def test_compare_times_both_steps(capsys):
    out, js = run(["--device", "cpu", "--warmup", "1", "--steps", "1", "--windows", "3", "--compare"], capsys)
    c = js["compare"]
    assert set(c) == {"plain", "optimised"} and all(len(v["windows"]) == 3 for v in c.values())
    assert js["s/step"] == c["optimised"]["median"]
    assert js["speedup"] == pytest.approx(c["plain"]["median"] / c["optimised"]["median"])
    assert "optimised step" in js["config"] and re.search(r"^compare: plain .* speedup [0-9.]+x$", out, re.M)
    with pytest.raises(SystemExit):
        bench_step.parse_args(["--compare", "--plain"])


def test_synthetic_real_batches(tmp_path, capsys):
    """--dataset synthetic reads the generated set through train.py's datasets (here with a tiny SAM), at the
    --unet-size asked for: the real batches come at that size (a mismatch with the models would fail)."""
    out, js = run(["--dataset", "synthetic", "--sam", "tiny", "--unet-width", "4", "--device", "cpu", "--warmup", "0",
                   "--steps", "1", "--parts", "--data-root", str(tmp_path), "--unet-size", "64"], capsys)
    assert (tmp_path / "synthetic" / "synthetic.json").is_file()
    assert "real batches" in js["config"] and "U-Net 4 @ 64" in js["config"] and "batch 1+1" in js["config"]
    assert js["parts"]["optimised"]["data loading + augmentation"][0] > 0


def test_the_preset_step_is_at_most_60_gflop():
    """The embedded default's SynFoC step (LiteMedSAM with its shipped weights, fp32, random inputs of the
    preset's shapes) counts <= 60 GFLOP: the any-CPU budget (EXPERIMENTS.md "A preset for any CPU")."""
    args = bench_step.parse_args(["--dataset", "synthetic", "--device", "cpu", "--amp", "off"])
    run, cfg = bench_step.build(args, None, plain=False)
    flops = bench_step.count_flops(run, bench_step.make_inputs(run, cfg, 1, run.device, 0), 0)
    assert cfg["unet_size"] == 128 and run.sam.image_size == 64
    assert 20e9 < flops <= 60e9, flops / 1e9


def test_sizes_reach_train_py():
    """--lite-size and --unet-size go to train.py's command line (the preset's when not given)."""
    args = bench_step.parse_args(["--dataset", "synthetic", "--lite-size", "128", "--unet-size", "96"])
    argv = bench_step.train_argv(args, None, "out")
    assert argv[argv.index("--lite-size") + 1] == "128" and argv[argv.index("--unet-size") + 1] == "96"
    argv = bench_step.train_argv(bench_step.parse_args(["--dataset", "synthetic"]), None, "out")
    assert "--lite-size" not in argv and "--unet-size" not in argv


def test_distance_by_hand():
    a = [dict(step=1, loss=1.0, L_x=1, L_u=0, L_c=0, L_d=0), dict(step=2, loss=2.0, L_x=1, L_u=1, L_c=0, L_d=0)]
    b = [dict(step=1, loss=1.5, L_x=1, L_u=0, L_c=0, L_d=0), dict(step=2, loss=1.0, L_x=1, L_u=0.5, L_c=0, L_d=0)]
    d = parity.distance(a, b, {1, 2})
    assert d["loss"] == dict(max=1.0, mean=0.75) and d["L_u"] == dict(max=0.5, mean=0.25) and d["L_x"]["max"] == 0
    assert parity.distance(a, b, {2})["loss"] == dict(max=1.0, mean=1.0)


def test_parity_runs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # --data-root tests/data is relative
    """Three tiny runs on the real Fundus sample files (fp32): files written, the verdict is the exit code, and the
    optimised step stays at rounding distance from the plain one (a different function would differ by ~0.1-1)."""
    out = tmp_path / "par"
    argv = [sys.executable, "bench/parity.py", "runs", "--dataset", "fundus", "--steps", "3", "--burn-in", "1",
            "--out", str(out), "--train-args", "--sam", "tiny", "--unet-width", "4", "--device", "cpu",
            "--data-root", "tests/data", "--labeled", "1", "--batch", "1", "1", "--amp", "off"]
    code = parity.main(argv[2:])  # in this process; the three runs train in their own (train.py subprocesses)
    stdout = capsys.readouterr().out
    assert code in (0, 1), stdout[-2000:]
    rep = json.loads((out / "parity.json").read_text())
    assert (code == 0) == rep["passed"] and ("PASS" if rep["passed"] else "FAIL") in stdout
    assert set(rep["table"]) == {"SynFoC steps", "burn-in"}
    assert rep["table"]["burn-in"]["optimised vs plain"]["loss"]["max"] < 1e-3
    assert rep["table"]["SynFoC steps"]["optimised vs plain"]["loss"]["max"] < 1e-2
    rows = (out / "parity.csv").read_text().splitlines()
    assert rows[0].startswith("run,step,loss") and len(rows) == 1 + 3 * 3
    cfgs = {n: json.loads((out / n / "config.json").read_text()) for n in ("plain", "plain_1t", "optimised")}
    assert cfgs["plain"]["plain"] and cfgs["plain_1t"]["threads"] == 1 and not cfgs["optimised"]["plain"]
    # finished runs are reused (in this process: no training, no second torch import); a large tolerance passes
    capsys.readouterr()
    assert parity.main(["runs", "--tolerance", "1e9"] + argv[3:]) == 0
    out2 = capsys.readouterr().out
    assert out2.count("reusing") == 3 and "PASS" in out2
    with pytest.raises(SystemExit, match="holds a run of other flags"):  # other flags
        parity.main(argv[2:-1] + ["fp16"])
