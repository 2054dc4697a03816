"""bench/table7.py end to end on a tiny SAM, two steps per row (seconds): files written, values consistent."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_table7_end_to_end(tmp_path):
    out = tmp_path / "t7"
    r = subprocess.run([sys.executable, "bench/table7.py", "--data-seed", "5", "--steps", "2", "--out", str(out),
                        "--data-root", str(tmp_path / "data"), "--train-args", "--sam", "tiny", "--unet-width", "4",
                        "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "table7.json").read_text())
    assert list(res) == ["SupOnly", "Base U-Net", "Base MedSAM", "SynFoC", "_meta"]
    assert set(res["SupOnly"]) == {"unet"} and set(res["Base MedSAM"]) == {"medsam"}
    assert set(res["SynFoC"]) == {"unet", "medsam"}
    for row in ("SupOnly", "Base U-Net", "Base MedSAM", "SynFoC"):
        for model, r_ in res[row].items():
            doms = [r_[f"Domain{k}"] for k in range(1, 5)]
            assert all(0 <= v <= 1 for v in doms) and abs(r_["mean"] - sum(doms) / 4) < 1e-9
            # the same numbers as the run's own final evaluation (evals.csv, written by train.py)
            folder = out / row.replace(" ", "_")
            evals = [line.split(",") for line in (folder / "evals.csv").read_text().splitlines()[1:]]
            own = {d: float(v) for s, m, d, v in evals if m == model and s == "2"}
            assert all(abs(own[f"Domain{k}"] - doms[k - 1]) < 1e-5 for k in range(1, 5)), (row, model)
    meta = res["_meta"]
    assert meta["data_seed"] == 5 and meta["steps"] == 2 and (tmp_path / "data" / "synthetic_s5" / "synthetic.json").exists()
    assert (out / "table7.png").stat().st_size > 1000
    md = (out / "table7.md").read_text()
    assert "| SynFoC | medsam |" in md and "data seed 5" in md
    # a second call reuses the finished runs instead of training again
    r2 = subprocess.run([sys.executable, "bench/table7.py", "--data-seed", "5", "--steps", "2", "--out", str(out),
                         "--data-root", str(tmp_path / "data"), "--train-args", "--sam", "tiny", "--unet-width", "4",
                         "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and r2.stdout.count("reusing") == 4
    assert json.loads((out / "table7.json").read_text())["SynFoC"] == res["SynFoC"]
