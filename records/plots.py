"""Pictures of a run: training curves (the paper's Fig. 6 and more), the synthetic Table 7 figure, and the
overlay of a prediction on its image (predict.py, evaluate.py --overlays, TensorBoard).

    python evaluate.py runs/x --curves          # writes runs/x/curves.png (also written by train.py as it evaluates)

    from records import plots
    plots.plot_curves("runs/x")                 # -> runs/x/curves.png
    plots.plot_table7(results, {"synfoc": Path("runs/a"), "unet": Path("runs/b")}, Path("table7.png"))
    plots.plot_budgets(summary, Path("budgets.png"))   # Dice against steps (bench/table7.py --steps 100 300 800)
    rgb = plots.overlay(image, pred, gt, parts)  # uint8 [H,W,3]: classes translucent, GT part contours green

curves.png, one panel each, everything against the training step:
  losses            loss, L_x, L_u, L_c, L_d                       (metrics.csv)
  λ and α           lambda, alpha (the mean ensemble ratio)         (metrics.csv)
  Φ                 phi_self, phi_mut                               (metrics.csv)
  mask ratio        mask_ratio, the share of pseudo-labelled pixels (metrics.csv)
  pseudo-label Dice dice_sam_teacher, dice_unet_teacher, dice_ensemble: the paper's Fig. 6 (metrics.csv)
  test Dice         one line per model and domain, from evals.csv (step,model,domain,dice) when present
Columns are read by name: extra columns are ignored, missing ones leave their line out. Matplotlib runs
with the Agg backend (no display needed). Curves and the Table 7 figure draw their lines with one function,
draw_lines.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from dataio.atomic import write_atomic
from metrics import part_mask, surface


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: works on servers without a display), imported on first
    use so that the overlay's users (predict.py) never load matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

Series = dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (x [N], y [N])

PANELS = [  # (title, y label, metrics.csv columns)
    ("losses", "loss", ["loss", "L_x", "L_u", "L_c", "L_d"]),
    ("λ and α", "value", ["lambda", "alpha"]),
    ("Φself and Φmut", "Φ", ["phi_self", "phi_mut"]),
    ("pseudo-label mask ratio", "ratio", ["mask_ratio"]),
    ("pseudo-label Dice (Fig. 6)", "Dice", ["dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"]),
]
PSEUDO_DICE = PANELS[-1][2]


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):  # an empty cell: no value at this step
        return math.nan


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV with a header as {column name: float64 [N]} (cells that are not numbers -> nan)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = list(rows[0]) if rows else []
    return {n: np.array([_float(r.get(n)) for r in rows], dtype=np.float64) for n in names}


def read_evals(path: Path) -> Series:
    """evals.csv (step,model,domain,dice) as one series per `model domain`: (steps, Dice in %)."""
    acc: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            acc.setdefault(f"{r['model']} {r['domain']}", []).append((_float(r["step"]), 100 * _float(r["dice"])))
    return {k: (np.array([s for s, _ in v]), np.array([d for _, d in v])) for k, v in acc.items()}


def draw_lines(ax: plt.Axes, series: Series, title: str, ylabel: str, xlabel: str = "step") -> None:
    """The one line drawing of every figure: each series as a line (markers when it has few points),
    nan values skipped; an empty panel says so."""
    drawn = 0
    for label, (x, y) in series.items():
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        ax.plot(x[ok], y[ok], label=label, marker="o" if ok.sum() <= 20 else None, markersize=3, linewidth=1.2)
        drawn += 1
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)


def curve_panels(run_dir: str | Path) -> list[tuple[str, str, Series]]:
    """What plot_curves draws: [(title, y label, series)] from the run folder's metrics.csv and evals.csv.
    FileNotFoundError when metrics.csv is missing."""
    run_dir = Path(run_dir)
    cols = read_columns(run_dir / "metrics.csv")
    step = cols.get("step", np.arange(len(next(iter(cols.values()), []))))
    panels = [(t, yl, {c: (step, cols[c]) for c in names if c in cols}) for t, yl, names in PANELS]
    evals = run_dir / "evals.csv"
    panels.append(("test Dice per domain", "Dice %", read_evals(evals) if evals.is_file() else {}))
    return panels


def plot_curves(run_dir: str | Path) -> Path:
    """Draw the run folder's training curves (module docstring) as <run_dir>/curves.png; returns its path."""
    run_dir = Path(run_dir)
    panels = curve_panels(run_dir)
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, ylabel, series) in zip(axes.flat, panels):
        draw_lines(ax, series, title, ylabel)
    fig.suptitle(f"{run_dir.name}: training curves", fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.07, top=0.91, wspace=0.22, hspace=0.32)  # no tight_layout:
    # it draws the whole figure once more to measure it (0.8 s of the 2 s a drawing takes on a CPU)
    out = write_atomic(run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=90, format="png"))  # whole or absent
    plt.close(fig)
    return out


def plot_table7(results: dict[str, dict[str, dict[str, float]]], curves: dict[str, Path], out_png: Path) -> Path:
    """The synthetic Table 7 figure: per model, the test Dice per domain (and the mean) as bars, one bar per mode;
    then the pseudo-label Dice of the SAM teacher, the U-Net teacher and the ensemble vs step, one line per mode.

    results: {mode: {model: {domain name: dice, ..., "mean": dice}}}, Dice as fractions (drawn in %).
    curves: {mode: run folder} whose metrics.csv holds the dice_* columns (a mode without one is left out).
    Returns out_png."""
    modes = list(results)
    models = sorted({m for r in results.values() for m in r})
    ncols = max(len(models), len(PSEUDO_DICE))
    plt = pyplot()
    fig, axes = plt.subplots(2, ncols, figsize=(5 * ncols, 8), squeeze=False)
    for ax, model in zip(axes[0], models):
        keys = [k for k in next(r[model] for r in results.values() if model in r) if k != "mean"] + ["mean"]
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            vals = [100 * results[mode].get(model, {}).get(k, math.nan) for k in keys]
            ax.bar(np.arange(len(keys)) + (j - (len(modes) - 1) / 2) * width, vals, width, label=mode)
        ax.set_xticks(np.arange(len(keys)), keys, fontsize=8)
        ax.set_title(f"test Dice: {model}", fontsize=9)
        ax.set_ylabel("Dice %", fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    cols = {mode: read_columns(Path(d) / "metrics.csv") for mode, d in curves.items() if (Path(d) / "metrics.csv").is_file()}
    for ax, name in zip(axes[1], PSEUDO_DICE):
        series = {mode: (c["step"], c[name]) for mode, c in cols.items() if name in c and "step" in c}
        draw_lines(ax, series, f"pseudo-label Dice: {name[5:].replace('_', ' ')}", "Dice")
    for ax in list(axes[0][len(models):]) + list(axes[1][len(PSEUDO_DICE):]):
        ax.axis("off")
    return save(fig, out_png)


def save(fig, out_png: Path) -> Path:
    """Lay out a multi-panel figure (tight_layout), write it to out_png (folders made) at 90 dpi, close it."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    pyplot().close(fig)
    return out_png


def steps_axis(ax, steps: list[int], label: str) -> None:
    """A log x axis whose ticks are exactly the budgets (no minor tick labels)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(steps, [str(t) for t in steps])
    ax.set_xlabel(label, fontsize=8)


def plot_budgets(summary: dict, out_png: Path, target: float = 0.03) -> Path:
    """Dice against steps (bench/table7.py with several --steps): one panel per student kind, each row's mean test
    Dice against the budget (SynFoC-oracle dashed: the ceiling of the unlabeled path); last, the paired gap
    SynFoC − Base per student (mean line, one dot per pair) with the +target line the gain issue asks for.

    summary: {steps: {"rows": {row: {model: {"mean": dice, ...}}}, "paired": {name: {"last": {"per_pair":
    {pair: Δ}, "mean": Δ}, ...}}}} (bench/table7.budgets_summary), Dice as fractions (drawn in %). Returns out_png."""
    summary = {int(t): v for t, v in summary.items()}  # budgets.json keys are strings
    steps = sorted(summary)
    plt = pyplot()
    lines = dict.fromkeys((r, m) for t in steps for r, ms in summary[t]["rows"].items() for m in ms)
    models = list(dict.fromkeys(m for _, m in lines))
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5.5 * (len(models) + 1), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for row, m in lines:
            if m == model:
                ys = [100 * summary[t]["rows"].get(row, {}).get(model, {}).get("mean", math.nan) for t in steps]
                ax.plot(steps, ys, "--" if "oracle" in row else "-", marker="o", label=row)
        steps_axis(ax, steps, "training steps (each budget its own runs)")
        ax.set_ylabel("mean test Dice %", fontsize=8)
        ax.set_title(f"{model} students: test Dice against steps (mean over the pairs)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    right = axes[0][-1]
    for name in dict.fromkeys(p for t in steps for p in summary[t]["paired"]):
        d = [summary[t]["paired"].get(name, {}).get("last") for t in steps]
        line, = right.plot(steps, [100 * x["mean"] if x else math.nan for x in d], marker="o", label=name)
        for t, x in zip(steps, d):
            if x:
                right.scatter([t] * len(x["per_pair"]), [100 * v for v in x["per_pair"].values()], s=10,
                              color=line.get_color(), alpha=0.5)
    right.axhline(0, color="k", lw=0.8)
    right.axhline(100 * target, color="grey", ls=":", lw=0.8, label=f"+{100 * target:.0f} (the gain asked)")
    steps_axis(right, steps, "training steps")
    right.set_ylabel("points of mean Dice", fontsize=8)
    right.set_title("gap SynFoC − Base per student, last step (dots: pairs)", fontsize=9)
    right.legend(fontsize=6)
    right.grid(alpha=0.3)
    return save(fig, out_png)


# translucent prediction colours per class id (0 = background, not drawn): red, blue, yellow, magenta, cyan
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [0, 130, 200], [255, 225, 25], [240, 50, 230], [70, 240, 240]], np.float32)
GT_COLOUR = np.array([0, 255, 0], np.uint8)


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
            parts: Sequence[Sequence[int]] = (), alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 [H,W,3]: the image (uint8 [H,W] or [H,W,3]) with each predicted class painted translucent
    and, when gt is given, the contour of each ground-truth part in green."""
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    out = img[..., :3].astype(np.float32)
    fg = pred > 0
    colours = PALETTE[np.minimum(pred, len(PALETTE) - 1)]
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if gt is not None:
        for part in parts:
            out[surface(part_mask(gt, part))] = GT_COLOUR  # the 1-pixel contour (medpy surface)
    return out
