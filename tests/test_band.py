"""The Quick start's band (bench/band.py, records/runlog.reference_band): min-max over finished runs of one budget,
recorded per CPU family, and shown beside a run's own numbers by train.py's final printout."""
import importlib.util
import json
from pathlib import Path

import pytest

import train
from records import config
from hardware import speedups
from records import runlog

ROOT = Path(__file__).resolve().parents[1]


def load_band():
    spec = importlib.util.spec_from_file_location("bench_band", ROOT / "bench" / "band.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_run(folder: Path, seed: int, dice: dict[str, list[float]], **cfg_over) -> Path:
    """A finished synthetic run folder: config.json of the preset and evals.csv whose last step holds `dice`."""
    cfg = config.resolve_config(config.parse_args(["--dataset", "synthetic", "--seed", str(seed), "--device", "cpu"]))
    cfg.update(cfg_over)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    rows = ["step,model,domain,dice"] + [f"{cfg['steps']},{m},Domain{k + 1},{v}" for m, vs in dice.items()
                                         for k, v in enumerate(vs)]
    (folder / "evals.csv").write_text("\n".join([rows[0], f"100,unet,Domain1,0.1", *rows[1:]]) + "\n")
    return folder


def test_band_by_hand(tmp_path, monkeypatch, capsys):
    band = load_band()
    runs = [fake_run(tmp_path / f"s{s}", s, {"unet": [0.9, 0.5, 0.7, 0.1], "medsam": [0.8, 0.8, 0.6, 0.6 + s / 10]})
            for s in range(3)]
    b = band.band(runs)
    assert b["seeds"] == [0, 1, 2] and "seed" not in b["budget"] and b["amp"] == "off"
    m = b["students"]["medsam"]
    assert m["Domain4"]["min"] == pytest.approx(60) and m["Domain4"]["max"] == pytest.approx(80)
    assert m["mean"]["mean"] == pytest.approx(100 * (0.8 + 0.8 + 0.6 + 0.7) / 4)  # the mean over seeds of the means
    assert m["Domain4"]["sd"] == pytest.approx(10.0)
    # --write records it per CPU family (another family's entry stays), and train.py's printout finds it
    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps({"results": {}, "band": [dict(b, cpu="Intel Xeon | AVX512 | bf16 native (AMX)")]}))
    monkeypatch.setattr(band, "REFERENCE", ref)
    monkeypatch.setattr(runlog, "REFERENCE", ref)
    assert band.main([*map(str, runs), "--write"]) == 0
    entries = json.loads(ref.read_text())["band"]
    assert len(entries) == 2 and entries[1]["cpu"] == speedups.capability_line("cpu")
    cfg = json.loads((runs[0] / "config.json").read_text())
    got, line = runlog.reference_band(dict(cfg, seed=7))  # any training seed: the band is over seeds
    assert got["cpu"] == speedups.capability_line("cpu") and "a run inside it is working" in line
    assert "seeds 0, 1, 2" in line and "also measured: Intel Xeon | AVX512" in line
    table = runlog.dice_table({"unet": {1: 0.9, 2: 0.5, 3: 0.7, 4: 0.1}, "medsam": {1: .8, 2: .8, 3: .6, 4: .7}},
                              [f"Domain{k}" for k in range(1, 5)], got)
    assert "60.0-80.0" in table.splitlines()[4] and table.splitlines()[0].split() == ["domain", "unet", "band",
                                                                                      "medsam", "band"]
    assert runlog.reference_band(dict(cfg, steps=401)) == (None, "")  # another budget: no band


def test_band_refuses_mixed_budgets_and_repeated_seeds(tmp_path):
    band = load_band()
    a = fake_run(tmp_path / "a", 0, {"unet": [0.5] * 4})
    with pytest.raises(SystemExit, match="differ in steps"):
        band.band([a, fake_run(tmp_path / "b", 1, {"unet": [0.5] * 4}, steps=300)])
    with pytest.raises(SystemExit, match="repeat a training seed"):
        band.band([a, fake_run(tmp_path / "c", 0, {"unet": [0.5] * 4})])
