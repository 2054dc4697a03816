"""bench/table7.py end to end on a tiny SAM, two steps per row (seconds): files written, values consistent; several
budgets (Dice against steps) with one more budget of three steps."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


TINY = ["--train-args", "--sam", "tiny", "--unet-width", "4", "--labeled", "2", "--device", "cpu"]
ROWS = ("SupOnly", "Base U-Net", "Base MedSAM", "SynFoC")
# the three tests below share one table7 run (the fixture) and build on it in order: one xdist worker runs them
SHARED_RUN = pytest.mark.xdist_group("table7")


def evals(folder: Path) -> list[list[str]]:
    """A run's evals.csv rows (step, model, domain, dice) as strings, header dropped."""
    return [line.split(",") for line in (folder / "evals.csv").read_text().splitlines()[1:]]


def best(folder: Path, model: str) -> float:
    """A student's test-selected mean Dice: its best mean over domains among its evaluations (evals.csv)."""
    rows = evals(folder)
    steps = {s for s, m, d, v in rows if m == model}
    return max(sum(float(v) for s_, m, d, v in rows if m == model and s_ == s) / 4 for s in steps)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> dict:
    """bench/table7.py run once as a command line, two steps per row: {root, data, out, res (its table7.json)}."""
    # a small set of data seed 5 where table7 looks for it (3 train, 2 test images per domain at 64 px): the
    # preset's 40 + 16 at 256 px would make every one of the ten trainings and evaluations below 8x slower
    from dataio import synthetic
    tmp_path = tmp_path_factory.mktemp("table7")
    synthetic.synthesize(tmp_path / "data" / "synthetic_s5", seed=5, n_train=3, n_test=2, size=64)
    out = tmp_path / "t7"
    r = subprocess.run([sys.executable, "bench/table7.py", "--data-seed", "5", "--steps", "2", "--out", str(out),
                        "--data-root", str(tmp_path / "data"), *TINY], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return dict(root=tmp_path, data=tmp_path / "data", out=out, res=json.loads((out / "table7.json").read_text()))


@pytest.fixture(scope="module")
def table7():
    """bench/table7.py as a module: the calls after the command line run in this process (no training to reuse)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import table7
    return table7


@SHARED_RUN
def test_table7_end_to_end(table):
    out, res = table["out"], table["res"]
    assert list(res) == ["SupOnly", "Base U-Net", "Base MedSAM", "SynFoC", "_per_seed", "_paired", "_meta"]
    assert set(res["SupOnly"]) == {"unet"} and set(res["Base MedSAM"]) == {"medsam"}
    assert set(res["SynFoC"]) == {"unet", "medsam"}
    for row in ROWS:
        for model, r_ in res[row].items():
            doms = [r_[f"Domain{k}"] for k in range(1, 5)]
            assert all(0 <= v <= 1 for v in doms) and abs(r_["mean"] - sum(doms) / 4) < 1e-9
            # the same numbers as the run's own final evaluation (evals.csv, written by train.py)
            own = {d: float(v) for s, m, d, v in evals(out / row.replace(" ", "_")) if m == model and s == "2"}
            assert all(abs(own[f"Domain{k}"] - doms[k - 1]) < 1e-5 for k in range(1, 5)), (row, model)
    meta = res["_meta"]
    assert meta["data_seed"] == 5 and meta["steps"] == 2 and (table["data"] / "synthetic_s5" / "synthetic.json").exists()
    assert (out / "table7.png").stat().st_size > 1000
    md = (out / "table7.md").read_text()
    assert "| SynFoC | medsam |" in md and "data seed 5" in md


@SHARED_RUN
def test_table7_reuses_runs_and_adds_a_training_seed(table, table7, capsys):
    out, res, data_root = table["out"], table["res"], str(table["data"])
    # a second call (in this process: no training, no second torch import) reuses the finished runs
    assert table7.main(["--data-seed", "5", "--steps", "2", "--out", str(out), "--data-root", data_root, *TINY]) == 0
    assert capsys.readouterr().out.count("reusing") == 4
    assert json.loads((out / "table7.json").read_text())["SynFoC"] == res["SynFoC"]
    # a second training seed: seed 0's runs are reused, seed 1's trained into <Row>_seed1, the table gives the
    # mean over seeds (checked here against each run's own evals.csv) and the sample sd of the mean Dice
    # (in this process too: the command line was run end to end above; the new runs train in subprocesses)
    assert table7.main(["--data-seed", "5", "--steps", "2", "--out", str(out), "--data-root", data_root,
                        "--seed", "0", "1", "--jobs", "2", *TINY]) == 0
    assert capsys.readouterr().out.count("reusing") == 4 and (out / "SynFoC_seed1" / "last.pt").is_file()
    # --jobs 2: the seed-1 runs trained in their own processes, one thread each
    assert json.loads((out / "SynFoC_seed1" / "wall.json").read_text())["threads"] == 1
    assert json.loads((out / "SynFoC_seed1" / "config.json").read_text())["threads"] == 1
    res2 = json.loads((out / "table7.json").read_text())
    assert res2["_meta"]["seeds"] == [0, 1]
    md2 = (out / "table7.md").read_text()
    assert "training seeds 0, 1" in md2 and "mean ± sd" in md2
    for row in ROWS:
        for model in res2[row]:
            own = [sum(float(v) for s, m, d, v in evals(folder) if m == model and s == "2") / 4
                   for folder in (out / row.replace(" ", "_"), out / (row.replace(" ", "_") + "_seed1"))]
            assert abs(res2[row][model]["mean"] - sum(own) / 2) < 1e-5, (row, model)
            assert res2["_per_seed"][row][model]["0"]["mean"] == res[row][model]["mean"]
            a, b = (res2["_per_seed"][row][model][k]["mean"] for k in ("0", "1"))
            sd = abs(a - b) / 2 ** 0.5  # the sample sd of two values
            assert f"**{100 * res2[row][model]['mean']:.1f}** ± {100 * sd:.1f}" in md2, (row, model)
    # paired differences per seed: last = the rows' own means above; test-selected = each student's best mean over
    # its evaluations (evals.csv), recomputed here (best)
    for (model, base), name in zip((("medsam", "Base_MedSAM"), ("unet", "Base_U-Net")),
                                   ("SynFoC medsam − Base MedSAM", "SynFoC unet − Base U-Net")):
        pr = res2["_paired"][name]
        for seed, suf in (("0", ""), ("1", "_seed1")):
            assert pr["last"][seed] == pytest.approx(res2["_per_seed"]["SynFoC"][model][seed]["mean"]
                                                     - res2["_per_seed"][base.replace("_", " ")][model][seed]["mean"])
            assert pr["test-selected"][seed] == pytest.approx(best(out / f"SynFoC{suf}", model) - best(out / f"{base}{suf}", model))
        d = pr["test-selected"]
        assert f"| {name} | test-selected | {100 * d['0']:+.1f} | {100 * d['1']:+.1f} | **{100 * (d['0'] + d['1']) / 2:+.1f}** |" in md2


@SHARED_RUN
def test_table7_refuses_other_runs_then_sums_budgets(table, table7, capsys):
    out, res, tmp_path, data_root = table["out"], table["res"], table["root"], str(table["data"])
    # the error cases run in this process too (no training happens)
    capsys.readouterr()
    # a finished run of another data seed in the folder is an error, not a silent reuse
    assert table7.main(["--data-seed", "6", "--steps", "2", "--out", str(out), "--data-root", data_root]) == 2
    err = capsys.readouterr().err
    assert "holds a run with {'data_seed': 5, 'seed': 0}" in err and len(err.strip().splitlines()) == 1, err[-500:]
    # a finished run trained with another configuration (here the Dice mask) is an error, not a silent reuse
    assert table7.main(["--data-seed", "5", "--steps", "2", "--out", str(out), "--data-root", data_root,
                        *TINY, "--dice-mask", "all"]) == 2
    err = capsys.readouterr().err
    assert "trained with dice_mask = 'fg', this table asks for 'all'" in err and len(err.strip().splitlines()) == 1, err[-500:]
    # a setting only the SAM reads (here the LoRA rank): the U-Net rows are the same runs and are reused, the
    # SAM rows are not
    args = table7.build_parser().parse_args(["--data-seed", "5", "--steps", "2", "--out", str(out), "--data-root",
                                             data_root, *TINY, "--rank", "8"])
    for row, flags in table7.MAIN_ROWS[:2]:
        assert table7.plan_row(row, flags, args, out, 0) == (out / row.replace(" ", "_"), None)
    for row, flags in table7.MAIN_ROWS[2:]:
        with pytest.raises(ValueError, match="trained with rank = 4, this table asks for 8"):
            table7.plan_row(row, flags, args, out, 0)
    # the reference file is one run per row
    assert table7.main(["--data-seed", "5", "--out", str(out), "--seed", "0", "1", "--write-reference"]) == 2
    assert capsys.readouterr().err.startswith("error: --write-reference takes one --seed")
    # several budgets: one table per budget in <out>/s5_steps<T>, then Dice against steps over them. The steps-2
    # runs above are copied in and reused; the steps-3 runs train here, in this process (--jobs 1), longest first
    import shutil
    budgets = tmp_path / "budgets"
    for row in ("SupOnly", "Base_U-Net", "Base_MedSAM", "SynFoC"):
        shutil.copytree(out / row, budgets / "s5_steps2" / row)
    assert table7.main(["--data-seed", "5", "--steps", "3", "2", "--out", str(budgets), "--data-root", data_root,
                        *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 4
    trained = [line.split(":")[0].removeprefix("[table7] ") for line in printed.splitlines() if "python train.py" in line]
    assert trained == ["Base MedSAM", "SynFoC", "SupOnly", "Base U-Net"]  # the SAM rows first: two jobs end together
    summary = json.loads((budgets / "budgets.json").read_text())
    assert list(summary) == ["2", "3"]
    t2 = json.loads((budgets / "s5_steps2" / "table7.json").read_text())
    t3 = json.loads((budgets / "s5_steps3" / "table7.json").read_text())
    assert t2["SynFoC"] == res["SynFoC"] and t3["_meta"]["steps"] == 3
    for steps, tab in (("2", t2), ("3", t3)):
        for row in ROWS:
            for model in tab[row]:
                assert summary[steps]["rows"][row][model]["mean"] == pytest.approx(tab[row][model]["mean"])
        assert summary[steps]["paired"]["SynFoC unet − Base U-Net"]["last"]["mean"] == pytest.approx(
            tab["SynFoC"]["unet"]["mean"] - tab["Base U-Net"]["unet"]["mean"])
    md = (budgets / "budgets.md").read_text()
    assert "| SynFoC | medsam | " + " | ".join(f"{100 * t['SynFoC']['medsam']['mean']:.1f} (n=1)" for t in (t2, t3)) in md
    assert (budgets / "budgets.png").stat().st_size > 1000
    assert table7.main(["--data-seed", "5", "6", "--steps", "2", "--out", str(budgets), "--write-reference"]) == 2
    assert "takes one --seed, one --data-seed and one --steps" in capsys.readouterr().err


def test_budgets_summary_by_hand(tmp_path):
    # two data seeds × one training seed at one budget: the row mean is over the pairs, the paired difference per
    # pair is keyed "data seed/training seed"; numbers made up, expected values by hand
    import importlib
    sys.path.insert(0, str(ROOT / "bench"))
    table7 = importlib.import_module("table7")
    def tab(syn, base):
        return {"_per_seed": {"SynFoC": {"medsam": {"0": {"mean": syn}}}, "Base MedSAM": {"medsam": {"0": {"mean": base}}}},
                "_paired": {"SynFoC medsam − Base MedSAM": {"last": {"0": syn - base}}}}
    s = table7.budgets_summary({(20, 100): tab(0.50, 0.60), (21, 100): tab(0.70, 0.60), (20, 800): tab(0.9, 0.8)})
    assert list(s) == [100, 800]
    assert s[100]["rows"]["SynFoC"]["medsam"]["mean"] == pytest.approx(0.60)       # (0.5 + 0.7) / 2
    assert s[100]["rows"]["SynFoC"]["medsam"]["n"] == 2 and s[800]["rows"]["SynFoC"]["medsam"]["n"] == 1
    d = s[100]["paired"]["SynFoC medsam − Base MedSAM"]["last"]
    assert d["per_pair"] == pytest.approx({"20/0": -0.10, "21/0": 0.10}) and d["mean"] == pytest.approx(0.0)
    md = table7.budgets_markdown(s, [20, 21], [0])
    assert "| SynFoC | medsam | 60.0 (n=2) | 90.0 (n=1) |" in md
    assert "| SynFoC medsam − Base MedSAM | last | 800 | 20/0: +10.0 | **+10.0** |" in md
    # the figure reads budgets.json too (string keys): the budgets are the x values, not categories
    from records import plots
    png = plots.plot_budgets(json.loads(json.dumps(s)), tmp_path / "b.png")
    assert png.stat().st_size > 1000
