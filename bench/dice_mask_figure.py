"""Where the ensemble's foreground goes under each masked-Dice rule, and what the students make of it: one figure.

    python bench/dice_mask_figure.py runs/t7_64_s3/SynFoC runs/t7_64all_s3/SynFoC \\
        --base runs/t7_64_s3/Base_MedSAM runs/t7_64_s3/Base_U-Net --out runs/dice_mask_s3.png

Positional: SynFoC run folders (e.g. the same data and training seed with `--dice-mask fg`, the default, and
`--dice-mask all`); each is labelled by its Dice rule (and its LiteMedSAM size when the runs differ in it).
--base: baseline runs (--mode medsam / unet) drawn as dotted lines. For every SynFoC run this computes
bench/pseudo_labels.py's per-domain table at the run's last.pt (cached as <run>/pseudo_labels.json, recomputed
when that file lacks the asked tau) and reads the students' per-domain test Dice over steps from evals.csv.

The figure (one screen):
  top left    the ensemble's foreground (Q > 0) per domain, split at tau: the share with max P_ens >= tau
              (weighted by W in every Dice channel) and the share below tau: under `fg` (the authors' rule)
              these pixels still reach the students through the background channel, which counts every
              pixel and pushes them off background; under `all` they reach no gradient of L_u
  top middle  pseudo-label Dice per domain against the ground truth: SAM teacher, U-Net teacher, ensemble
  top right   alpha (the ensemble's weight on the U-Net teacher) and fg@tau (the ground-truth foreground W keeps)
  bottom      one panel per domain: the SAM and U-Net students' test Dice over steps, one line style per run,
              the baselines dotted
Also printed: the per-domain numbers as a Markdown table (the students' Dice at their last evaluation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import plots  # noqa: E402  (Agg backend)
from records.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from pseudo_labels import pseudo_label_quality  # noqa: E402

plt = plots.pyplot()
STYLES = ["-", "--", "-.", (0, (5, 1))]
MODEL_COLOURS = {"medsam": "tab:blue", "unet": "tab:orange"}


def quality(run: Path, cfg: dict, tau: float | None, device: str) -> tuple[dict, float]:
    """(per-domain pseudo_labels table at tau (default: the run's), tau) with <run>/pseudo_labels.json as cache."""
    tau = cfg["tau"] if tau is None else tau
    cache = run / "pseudo_labels.json"
    if cache.is_file():
        res = json.loads(cache.read_text())
        if all(f"bgonly@{tau:g}" in r for r in res.values()):
            return res, tau
    res = pseudo_label_quality(run, [tau], device=device)
    cache.write_text(json.dumps(res, indent=2))
    return res, tau


def labels(runs: list[Path], cfgs: list[dict]) -> list[str]:
    """'fg' / 'all' per run, with ' 64 px' when the runs differ in LiteMedSAM size, ' (name)' when still equal."""
    names = [c.get("dice_mask", "all") for c in cfgs]
    if len({c.get("lite_size") for c in cfgs}) > 1:
        names = [f"{n} {c.get('lite_size')} px" for n, c in zip(names, cfgs)]
    if len(set(names)) < len(names):
        names = [f"{n} ({r.parent.name}/{r.name})" for n, r in zip(names, runs)]
    return names


def student_curves(run: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{model: {domain: (steps, Dice %)}} from evals.csv."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key, xy in plots.read_evals(run / "evals.csv").items():
        model, domain = key.split(" ", 1)
        out.setdefault(model, {})[domain] = xy
    return out


def figure(runs: list[Path], base: list[Path], tau: float | None, out_png: Path, device: str = "cpu") -> str:
    """Draw the figure to out_png; returns the Markdown table it also prints."""
    cfgs = [load_checkpoint(r)["config"] for r in runs]  # each checkpoint read here once (and by pseudo_labels)
    names = labels(runs, cfgs)
    qs = [quality(r, c, tau, device) for r, c in zip(runs, cfgs)]
    curves = [student_curves(r) for r in runs]
    domains = list(qs[0][0])
    x = np.arange(len(domains))
    wd = 0.8 / len(runs)
    fig = plt.figure(figsize=(16, 9), layout="constrained")
    n = len(domains)
    gs = fig.add_gridspec(2, 3 * n)  # one grid for both rows: 3 top panels of n columns, n bottom panels of 3
    top = [fig.add_subplot(gs[0, i * n:(i + 1) * n]) for i in range(3)]
    bottom = [fig.add_subplot(gs[1, 3 * i:3 * (i + 1)]) for i in range(n)]
    for i, (name, (q, t)) in enumerate(zip(names, qs)):
        below = np.array([q[d][f"bgonly@{t:g}"] for d in domains])
        pos = x - 0.4 + wd * (i + 0.5)
        top[0].bar(pos, 1 - below, wd, color="tab:green", edgecolor="k", hatch=["", "//", "..", "xx"][i % 4],
                   label=f"{name}: max P_ens ≥ τ (W = 1)")
        top[0].bar(pos, below, wd, bottom=1 - below, color="tab:red" if name.startswith("all") else "tab:purple",
                   edgecolor="k", hatch=["", "//", "..", "xx"][i % 4],
                   label=f"{name}: below τ ({'no gradient' if name.startswith('all') else 'background channel only'})")
        for k, (col, c, what) in enumerate((("sam", "tab:blue", "sam teacher"), ("unet", "tab:orange", "unet teacher"),
                                            ("ens", "k", "ensemble"))):
            top[1].plot(pos, [100 * q[d][col] for d in domains], marker="os^"[k], ls="", color=c,
                        label=what if i == 0 else None)  # one legend entry per series
        top[2].plot(x, [q[d]["alpha"] for d in domains], marker="o", ls=STYLES[i % 4], color="tab:gray", label=f"α, {name}")
        top[2].plot(x, [q[d][f"fg@{t:g}"] for d in domains], marker="s", ls=STYLES[i % 4], color="tab:green",
                    label=f"fg@τ, {name}")
    for ax, title in zip(top, (f"ensemble foreground at the last step, split at τ = {qs[0][1]:g}",
                               "pseudo-label Dice (%) on the unlabeled images", "α and fg@τ")):
        ax.set_xticks(x, domains)
        ax.set_title(title, fontsize=10)
    top[0].set_ylim(0, 1.45)  # room for the legend above the bars
    top[0].legend(fontsize=7, loc="upper center", ncol=2)
    top[1].legend(fontsize=7)
    top[2].legend(fontsize=7)
    for j, d in enumerate(domains_all := sorted({d for c in curves for m in c.values() for d in m})):
        if j >= len(bottom):
            break
        ax = bottom[j]
        for i, (name, c) in enumerate(zip(names, curves)):
            for model, per in c.items():
                if d in per:
                    ax.plot(*per[d], ls=STYLES[i % 4], color=MODEL_COLOURS.get(model), label=f"{model} student, {name}")
        for b in base:
            for model, per in student_curves(b).items():
                if d in per:
                    ax.plot(*per[d], ls=":", color=MODEL_COLOURS.get(model), label=f"Base {model} ({b.name})")
        ax.set_title(f"{d}: students' test Dice (%)", fontsize=10)
        ax.set_xlabel("step")
        if j == 0:
            ax.legend(fontsize=7)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    rows = ["| run | domain | SAM teacher | U-Net teacher | ensemble | α | fg@τ | ens. fg below τ | SAM student | U-Net student |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (q, t), c in zip(names, qs, curves):
        for d in domains_all:
            last = {m: (f"{per[d][1][-1]:.1f}" if d in per else "–") for m, per in c.items()}
            qd = q.get(d)
            cells = ([f"{100 * qd[k]:.1f}" for k in ("sam", "unet", "ens")] + [f"{qd['alpha']:.2f}",
                     f"{100 * qd[f'fg@{t:g}']:.0f} %", f"{100 * qd[f'bgonly@{t:g}']:.0f} %"]) if qd else ["–"] * 6
            rows.append(f"| {name} | {d} | " + " | ".join(cells) + f" | {last.get('medsam', '–')} | {last.get('unet', '–')} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses the documented commands with it)."""
    p = argparse.ArgumentParser(description="Where the ensemble's foreground goes under each Dice rule (see the module docstring).")
    p.add_argument("runs", nargs="+", help="SynFoC run folders (--mode synfoc), e.g. one with --dice-mask fg and one with all")
    p.add_argument("--base", nargs="*", default=[], help="baseline run folders (--mode medsam / unet), drawn dotted")
    p.add_argument("--tau", type=float, help="confidence threshold to split at (default: each run's --tau)")
    p.add_argument("--out", default="dice_mask.png", help="figure file (default dice_mask.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the teachers' forwards")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for b in args.base:
            if not (Path(b) / "evals.csv").is_file():
                raise ValueError(f"--base {b}: no evals.csv there (expected a run folder)")
        table = figure([Path(r) for r in args.runs], [Path(b) for b in args.base], args.tau, Path(args.out), args.device)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
