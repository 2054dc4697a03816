"""records/plots.py: the curves read metrics.csv / evals.csv by column name and end up in one PNG; the Table 7 figure."""
import csv

import numpy as np
from PIL import Image

from records import plots

COLUMNS = ["step", "loss", "L_x", "L_u", "L_c", "L_d", "lambda", "alpha", "phi_self", "phi_mut", "mask_ratio",
           "dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"]


def write_metrics(run, steps, extra=True, drop=()):
    cols = [c for c in COLUMNS if c not in drop] + (["lr_sam"] if extra else [])
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols[::-1])  # another column order than train.py's: read by name
        for s in steps:
            w.writerow([s if c == "step" else ("" if c == "L_d" and s == steps[0] else f"{s / 100 + len(c) / 10:.6g}")
                        for c in cols[::-1]])
    return run


def test_curve_panels_read_columns_by_name(tmp_path):
    run = write_metrics(tmp_path / "r", [10, 20, 30], drop=("phi_mut",))
    with open(run / "evals.csv", "w") as f:
        f.write("step,model,domain,dice\n10,medsam,Domain1,0.5\n10,unet,Domain1,0.25\n20,medsam,Domain1,0.75\n")
    panels = {t: s for t, _, s in plots.curve_panels(run)}
    x, y = panels["losses"]["L_u"]
    assert x.tolist() == [10, 20, 30] and np.allclose(y, [0.1 + 0.3, 0.2 + 0.3, 0.3 + 0.3])
    assert np.isnan(panels["losses"]["L_d"][1][0])  # an empty cell is a gap, not a zero
    assert set(panels["Φself and Φmut"]) == {"phi_self"}  # the missing column is left out
    assert set(panels["pseudo-label Dice (Fig. 6)"]) == {"dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"}
    assert "lr_sam" not in str(panels)
    ev = panels["test Dice per domain"]
    assert ev["medsam Domain1"][0].tolist() == [10, 20] and ev["medsam Domain1"][1].tolist() == [50, 75]
    png = plots.plot_curves(run)
    assert png == run / "curves.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 500
    # without evals.csv the panel is empty but the figure is still drawn
    (run / "evals.csv").unlink()
    assert {t: s for t, _, s in plots.curve_panels(run)}["test Dice per domain"] == {}
    assert plots.plot_curves(run).is_file()


def test_table7_figure_uses_the_shared_line_drawing(tmp_path, monkeypatch):
    a = write_metrics(tmp_path / "a", [1, 2, 3])
    b = write_metrics(tmp_path / "b", [1, 2])
    results = {"synfoc": {"medsam": {"D1": 0.8, "D2": 0.6, "mean": 0.7}, "unet": {"D1": 0.7, "D2": 0.5, "mean": 0.6}},
               "unet": {"unet": {"D1": 0.6, "D2": 0.4, "mean": 0.5}}}
    drawn = []
    real = plots.draw_lines
    monkeypatch.setattr(plots, "draw_lines", lambda ax, series, *r, **k: (drawn.append(series), real(ax, series, *r, **k)))
    out = plots.plot_table7(results, {"synfoc": a, "unet": b, "missing": tmp_path / "none"}, tmp_path / "f" / "t7.png")
    assert out.is_file() and Image.open(out).format == "PNG"
    assert len(drawn) == 3  # SAM teacher, U-Net teacher, ensemble
    assert all(set(s) == {"synfoc", "unet"} for s in drawn)
    assert drawn[2]["unet"][0].tolist() == [1, 2]
