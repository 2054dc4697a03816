"""bench/pseudo_labels.py on tiny runs of the real Fundus sample files (seconds): per-domain pseudo-label quality."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import pseudo_labels  # noqa: E402


def tiny_run(shared_data, out, *extra):
    # 1 labeled image (Domain1), 3 unlabeled (one per Domain2-4), a tiny random SAM: seconds.
    return train.train(["--dataset", "fundus", "--data-root", str(shared_data), "--domain", "1", "--labeled", "1",
                        "--sam", "tiny", "--unet-width", "4", "--batch", "1", "1", "--steps", "3", "--burn-in", "1",
                        "--eval-every", "3", "--device", "cpu", "--amp", "off", "--out", str(out), *extra])


@pytest.mark.parametrize("alpha,same_as", [("own", "unet"), ("cps", "sam")])
def test_ensemble_follows_the_strategy(shared_data, tmp_path, alpha, same_as):
    # own: the U-Net's target is its own teacher (alpha 1); cps: the SAM teacher's map (alpha 0). The ensemble's
    # Dice must then equal that teacher's, image by image averaged per domain.
    run = tiny_run(shared_data, tmp_path / alpha, "--alpha", alpha)
    res = pseudo_labels.pseudo_label_quality(run, taus=[0.0, 0.5, 1.01], batch=2)
    assert list(res) == ["Domain2", "Domain3", "Domain4"] and all(r["n"] == 1 for r in res.values())
    for d, r in res.items():
        assert r["ens"] == pytest.approx(r[same_as], abs=1e-6), d
        assert r["alpha"] == (1.0 if alpha == "own" else 0.0)
        assert r["kept@0"] == 1.0 and r["fg@0"] == 1.0          # every pixel passes tau 0
        assert r["bgonly@0"] == 0.0 and r["bgonly@1.01"] in (0.0, 1.0)  # none / all of the ensemble's foreground
        assert r["kept@1.01"] == 0.0 and r["fg@1.01"] == 0.0    # none passes a tau above 1
        assert r["kept@0.5"] <= 1.0 and r["fg@0.5"] <= 1.0
        for k in ("sam", "unet", "ens"):
            assert 0.0 < r[k] <= 1.0


@pytest.fixture(scope="module")
def smc_run(shared_data, tmp_path_factory):
    """One tiny SynFoC run (the default --dice-mask fg) shared by the CLI and figure tests."""
    return tiny_run(shared_data, tmp_path_factory.mktemp("smc") / "run")


def test_cli_table_json_and_errors(smc_run, tmp_path, capsys):
    run = smc_run
    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, "bench/pseudo_labels.py", str(run), "--tau", "0.95", "0.7", "--json", str(out),
                        "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["domain", "n", "sam", "unet", "ens", "alpha", "kept@0.95", "fg@0.95", "bgonly@0.95", "kept@0.7", "fg@0.7",
                                "bgonly@0.7"]
    res = json.loads(out.read_text())
    assert [ln.split()[0] for ln in lines[1:]] == list(res) == ["Domain2", "Domain3", "Domain4"]
    for r_ in res.values():
        assert r_["kept@0.7"] >= r_["kept@0.95"] and r_["fg@0.7"] >= r_["fg@0.95"]  # a lower tau keeps more
        assert r_["bgonly@0.7"] <= r_["bgonly@0.95"]  # and leaves less of the ensemble's foreground unweighted
        assert 0.0 < r_["alpha"] <= 1.0  # smc: Phi_self * Phi_mut
    # a baseline run has no ensemble, a missing folder no checkpoint: one line each, exit 2, no traceback
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["config"]["mode"] = "unet"  # what a --mode unet run's checkpoint says (its SAM entries unused)
    base = tmp_path / "unet.pt"
    torch.save(ck, base)
    capsys.readouterr()  # drop the training's progress output
    assert pseudo_labels.main([str(base), "--device", "cpu"]) == 2
    assert pseudo_labels.main([str(tmp_path / "none"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--mode unet" in err[0] and "not found" in err[1]
    with pytest.raises(SystemExit) as e:  # argparse's one-line usage error
        pseudo_labels.main([str(run), "--batch", "0"])
    assert e.value.code == 2 and "--batch 0" in capsys.readouterr().err


def test_dice_mask_figure(smc_run, shared_data, tmp_path, capsys):
    # the same tiny run under both Dice rules (the first also drawn as a "baseline": any run folder with an
    # evals.csv): the figure is written, the printed table carries pseudo_labels' numbers (cached in the run
    # folder) and each student's last test Dice from evals.csv
    import dice_mask_figure
    fg, al = smc_run, tiny_run(shared_data, tmp_path / "all", "--dice-mask", "all")
    base = fg
    png = tmp_path / "fig.png"
    capsys.readouterr()
    assert dice_mask_figure.main([str(fg), str(al), "--base", str(base), "--tau", "0.5", "--out", str(png),
                                  "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 10000
    for run, name in ((fg, "fg"), (al, "all")):
        q = json.loads((run / "pseudo_labels.json").read_text())
        if name == "fg":  # the cache is the function's own table (one recomputation is enough)
            assert q == pseudo_labels.pseudo_label_quality(run, taus=[0.5])
        evals = [ln.split(",") for ln in (run / "evals.csv").read_text().splitlines()[1:]]
        for d, r in q.items():
            last = {m: 100 * float(v) for s, m, d_, v in evals if d_ == d and s == "3"}
            row = (f"| {name} | {d} | {100 * r['sam']:.1f} | {100 * r['unet']:.1f} | {100 * r['ens']:.1f} | "
                   f"{r['alpha']:.2f} | {100 * r['fg@0.5']:.0f} % | {100 * r['bgonly@0.5']:.0f} % | "
                   f"{last['medsam']:.1f} | {last['unet']:.1f} |")
            assert row in out, (row, out)
    # a baseline's checkpoint given as a SynFoC run: one line, exit 2
    ck = torch.load(fg / "last.pt", weights_only=True)
    ck["config"]["mode"] = "unet"
    (tmp_path / "unet").mkdir()
    torch.save(ck, tmp_path / "unet" / "last.pt")
    assert dice_mask_figure.main([str(tmp_path / "unet"), "--out", str(png), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode unet" in err[0], err
