"""The paper's Table 3-6 layout: records/paper.py by hand, and bench/paper.py + evaluate.py --paper-table end to end
on the Fundus sample files (tiny SAM, width-4 U-Net, two steps per labeled domain: seconds)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import evaluate
from records import paper

ROOT = Path(__file__).resolve().parents[1]


def summary(dice: dict[str, float], jac: float = 0.5, hd: float = 10.0, asd: float = 3.0) -> dict:
    """An aggregate()-shaped summary whose mean holds the given per-part Dice (fractions)."""
    mean = {p: dict(dice=d, jaccard=jac, hd95=hd, asd=asd) for p, d in dice.items()}
    return {"domains": {}, "mean": dict(mean, dice=float(np.mean(list(dice.values()))))}


def fundus_run(domain: int, cup: float, disc: float, labeled: int = 20) -> dict:
    cfg = dict(dataset="fundus", domain=domain, part_names=["cup", "disc"], mode="synfoc", labeled=labeled,
               labeled_ratio=None)
    st = dict(selected=summary({"cup": cup, "disc": disc}), selected_step=500 * domain,
              last=summary({"cup": cup - 0.1, "disc": disc - 0.1}, hd=20.0), last_step=30000)
    return dict(config=cfg, students={"medsam": st}, path=f"runs/fundus_d{domain}")


def test_the_paper_numbers_average_as_the_paper_prints():
    """Each row's cells, as transcribed, average to the Avg. DSC the paper prints (to its rounding)."""
    for key, e in paper.PAPER.items():
        for s in ("unet", "medsam"):
            cells, avg = e[s]
            assert len(cells) == len(e["columns"])
            assert np.mean([x for c in cells for x in c]) == pytest.approx(avg[0], abs=0.006), (key, s)


def test_table_cells_and_averages_by_hand():
    runs = [fundus_run(1, 0.80, 0.90), fundus_run(3, 0.70, 0.94)]  # domains 2 and 4 missing
    text, res = paper.table(runs)
    row = res["rows"]["medsam selected"]
    assert row["cells"]["Domain1"] == pytest.approx([80.0, 90.0]) and row["cells"]["Domain2"] is None
    assert row["avg"]["dice"] == pytest.approx((80 + 90 + 70 + 94) / 4)       # over every part of every column
    assert row["avg"]["jaccard"] == pytest.approx(50.0) and row["avg"]["hd95"] == pytest.approx(10.0)
    assert res["rows"]["medsam last"]["avg"]["hd95"] == pytest.approx(20.0)
    assert row["steps"] == {"Domain1": 500, "Domain3": 1500}
    assert "| MedSAM, test-selected | 80.00 / 90.00 | — | 70.00 / 94.00 | — | 83.50 |" in text
    assert "no run for Domain2, Domain4" in text and "Table 4 layout" in text
    # the paper's row, as the paper prints it, beside the runs of the paper's setting
    assert "| MedSAM, paper | 85.44 / 93.29 | 82.50 / 90.52 | 85.51 / 93.56 | 83.78 / 94.23 | 88.60 | 80.50 | 6.56 | 3.47 |" in text
    assert "unet paper" not in res["rows"]  # only the students the runs have
    # another labeled count: no paper row, and the table says why
    text, res = paper.table([fundus_run(1, 0.8, 0.9, labeled=5)])
    assert "medsam paper" not in res["rows"] and "the paper's numbers are for labeled 20" in text
    with pytest.raises(ValueError, match="two runs with labeled domain Domain1"):
        paper.table([fundus_run(1, 0.8, 0.9), fundus_run(1, 0.7, 0.9)])


def test_prostate_columns_follow_the_paper_and_busi_picks_its_ratio():
    e, _ = paper.paper_entry(dict(dataset="prostate", mode="synfoc", labeled=20))
    assert e["columns"] == ["RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK"]  # HCRUDB is the I2CVB folder
    assert paper.paper_entry(dict(dataset="busi", mode="synfoc", labeled=None, labeled_ratio=0.25))[0]["medsam"][1][0] == 74.75
    assert paper.paper_entry(dict(dataset="busi", mode="synfoc", labeled=None, labeled_ratio=0.125))[0]["medsam"][1][0] == 71.61
    e, why = paper.paper_entry(dict(dataset="fundus", mode="unet", labeled=20))
    assert e is None and "--mode unet" in why


def load_bench_paper():
    spec = importlib.util.spec_from_file_location("bench_paper", ROOT / "bench" / "paper.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_paper_trains_every_domain_resumes_and_tabulates(shared_data, tmp_path, capsys):
    import train
    bench = load_bench_paper()
    root = tmp_path / "runs"
    flags = ["--data-root", str(shared_data), "--labeled", "1", "--sam", "tiny", "--unet-width", "4", "--unet-size",
             "64", "--batch", "1", "1", "--steps", "2", "--eval-every", "1", "--amp", "off", "--log-every", "1"]
    # domain 2's run was killed after step 1: the bench continues it (train.py --resume), it does not start over
    train.train(["--dataset", "fundus", "--domain", "2", "--out", str(root / "fundus_d2_synfoc"), "--device", "cpu",
                 *flags], stop_at=1)
    assert bench.main(["--dataset", "fundus", "--domains", "1", "2", "--out-root", str(root), "--device", "cpu",
                       "--", *flags]) == 0
    out = capsys.readouterr().out
    assert "fundus_d2_synfoc: killed at step 1, resuming" in out
    rows = (root / "fundus_d2_synfoc" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # step 1 once: continued, not redone
    res = json.loads((root / "paper_table_fundus" / "results.json").read_text())
    assert res["rows"]["unet selected"]["cells"]["Domain3"] is None and "no run for Domain3, Domain4" in out
    # the rest of the table: two more runs; the finished ones are kept, their evaluations reused
    kept = (root / "fundus_d1_synfoc" / "last.pt").stat().st_mtime_ns
    assert bench.main(["--dataset", "fundus", "--out-root", str(root), "--device", "cpu", "--", *flags]) == 0
    out = capsys.readouterr().out
    assert "fundus_d1_synfoc: finished (2 steps), kept" in out
    assert (root / "fundus_d1_synfoc" / "last.pt").stat().st_mtime_ns == kept
    assert "wrote " + str(root / "fundus_d1_synfoc" / "eval_last" / "results.json") not in out  # reused
    res = json.loads((root / "paper_table_fundus" / "results.json").read_text())
    assert res["columns"] == [f"Domain{k}" for k in range(1, 5)]
    for k in range(1, 5):
        run = root / f"fundus_d{k}_synfoc"
        for s in ("unet", "medsam"):
            # each cell is that run's evaluation of that student's checkpoint over every domain's test split
            sel = json.loads((run / f"eval_best_test_selected_{s}" / "results.json").read_text())
            last = json.loads((run / "eval_last" / "results.json").read_text())
            cell = res["rows"][f"{s} selected"]["cells"][f"Domain{k}"]
            assert cell == pytest.approx([100 * sel["models"][s]["mean"][p]["dice"] for p in ("cup", "disc")])
            assert res["rows"][f"{s} last"]["cells"][f"Domain{k}"] == pytest.approx(
                [100 * last["models"][s]["mean"][p]["dice"] for p in ("cup", "disc")])
            # selected on the test sets: never below the last step's mean Dice (the same evaluation)
            assert sel["models"][s]["headline_dice"] >= last["models"][s]["headline_dice"] - 1e-9
            assert not math.isnan(res["rows"][f"{s} selected"]["avg"]["hd95"])
    table = (root / "paper_table_fundus" / "table.md").read_text()
    assert table.count("| U-Net, ") == 2 and table.count("| MedSAM, ") == 2 and "labeled 1" in table


def test_paper_table_needs_each_students_checkpoint(tmp_path):
    with pytest.raises(evaluate.EvalError, match="has no best_test_selected_unet.pt"):
        (tmp_path / "r").mkdir()
        import torch
        from records.checkpoint import CKPT_FORMAT
        torch.save(dict(format=CKPT_FORMAT, step=1, config=dict(dataset="fundus", mode="synfoc", num_classes=3)),
                   tmp_path / "r" / "last.pt")
        evaluate.run(["--paper-table", str(tmp_path / "r")])


def test_paper_table_of_single_student_runs(shared_data, tmp_path, capsys):
    """Base U-Net runs (--mode unet): the table has the U-Net rows only, and says why there is no paper row."""
    import train
    runs = [train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--domain", str(d), "--labeled", "1",
                         "--mode", "unet", "--unet-width", "4", "--unet-size", "64", "--batch", "1", "1", "--steps",
                         "1", "--eval-every", "1", "--amp", "off", "--device", "cpu", "--out", str(tmp_path / f"d{d}")])
            for d in (1, 2)]
    assert evaluate.run(["--paper-table", *map(str, runs), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "paper_table_fundus" / "results.json").read_text())
    assert set(res["rows"]) == {"unet selected", "unet last"}
    assert "--mode unet" in (tmp_path / "paper_table_fundus" / "table.md").read_text()
