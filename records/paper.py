"""The paper's Tables 3-6 layout from a set of runs, one per labeled domain, with the paper's numbers beside them.

    text, res = paper.table(runs)     # runs: what `python evaluate.py --paper-table RUN ...` gathers (below)

A cell of Tables 3-6 is one training run: the labeled images come from the column's domain, and the number is the
mean Dice over EVERY domain's test split (per metric part: cup / disc, LV / MYO / RV), per slice, then over the
domains (paper §4.1: "the average performance across all six domains is reported ..., corresponding to the values
in the column for RUNMC"). The Avg. columns average the cells of a row (DSC over every part of every column, as
the paper: Fundus 88.60 is the mean of its eight cup and disc numbers) and, for Jaccard, 95HD and ASD, the runs'
means. The paper reports each student at its own best evaluation on the test sets (the authors' code keeps each
student's best mean test Dice, evaluated every 500 steps): the "test-selected" rows, from train.py's
best_test_selected_<student>.pt. The "last step" rows (last.pt) are the unselected, honest number.

runs: [{"config": the run's config, "students": {student: {"selected": aggregate() summary, "selected_step": int,
"last": summary, "last_step": int}}}] (records/tables.aggregate: {"mean": {part: {metric: v}, "dice": v}}).
"""
from __future__ import annotations

import math

import numpy as np

from dataio.spec import spec

STUDENT_NAMES = {"unet": "U-Net", "medsam": "MedSAM"}

# The SynFoC rows of Tables 3-6 (%, 95HD and ASD in pixels): per column (the labeled domain, in the paper's column
# order, named by this project's domain folders; the paper's HCRUDB is the I2CVB folder) the per-part Dice, then
# the Avg. DSC, Jaccard, 95HD, ASD. "setting": the labeled count (or ratio) the numbers were obtained with.
PAPER = {
    "prostate": dict(table="Table 3", setting=dict(labeled=20),
                     columns=["RUNMC", "BMC", "I2CVB", "UCL", "BIDMC", "HK"],
                     unet=([[88.09], [85.22], [84.97], [87.74], [87.63], [87.74]], [86.90, 79.11, 11.25, 4.82]),
                     medsam=([[88.54], [85.74], [84.89], [87.51], [87.92], [88.34]], [87.16, 79.30, 10.26, 4.41])),
    "fundus": dict(table="Table 4", setting=dict(labeled=20), columns=["Domain1", "Domain2", "Domain3", "Domain4"],
                   unet=([[84.26, 92.78], [78.51, 90.12], [85.33, 93.05], [82.05, 93.88]], [87.50, 78.93, 7.74, 3.79]),
                   medsam=([[85.44, 93.29], [82.50, 90.52], [85.51, 93.56], [83.78, 94.23]], [88.60, 80.50, 6.56, 3.47])),
    "mnms": dict(table="Table 5", setting=dict(labeled=5), columns=["vendorA", "vendorB", "vendorC", "vendorD"],
                 unet=([[85.81, 76.80, 73.71], [86.70, 78.23, 74.29], [85.88, 76.61, 74.77], [87.90, 78.32, 75.54]],
                       [79.55, 69.86, 9.33, 5.20]),
                 medsam=([[85.65, 76.40, 76.18], [88.03, 78.42, 75.40], [87.09, 78.63, 77.71], [89.51, 79.90, 77.13]],
                         [80.84, 70.94, 8.15, 3.65])),
    "busi": dict(table="Table 6", setting=dict(labeled_ratio=0.125), columns=["benign", "malignant"],
                 unet=([[59.56], [72.69]], [66.13, 56.41, 43.52, 20.67]),
                 medsam=([[70.16], [73.05]], [71.61, 61.31, 34.77, 15.05])),
    "busi_quarter": dict(table="Table 6", setting=dict(labeled_ratio=0.25), columns=["benign", "malignant"],
                         unet=([[61.28], [71.45]], [66.37, 56.45, 49.89, 22.58]),
                         medsam=([[73.74], [75.75]], [74.75, 64.90, 31.29, 12.45])),
}
AVG = ("dice", "jaccard", "hd95", "asd")  # the Avg. columns: DSC, Jaccard, 95HD, ASD
HEAD = ("DSC", "Jaccard", "95HD", "ASD")


def paper_entry(cfg: dict) -> tuple[dict | None, str]:
    """(the paper's block for runs of this config, or None; why not, when None)."""
    ds = cfg["dataset"]
    if ds not in PAPER:
        return None, f"the paper has no table for {ds}"
    if cfg["mode"] != "synfoc":
        return None, f"the paper's Tables 3-6 report SynFoC; these runs are --mode {cfg['mode']}"
    for key in (ds, f"{ds}_quarter"):
        e = PAPER.get(key)
        if e and all(cfg.get(k) == v for k, v in e["setting"].items()):
            return e, ""
    want = PAPER[ds]["setting"]
    return None, (f"the paper's numbers are for {', '.join(f'{k} {v}' for k, v in want.items())}"
                  + (" or labeled_ratio 0.25" if ds == "busi" else "") + "; these runs used "
                  + (f"labeled {cfg.get('labeled')}" if cfg.get("labeled") is not None
                     else f"labeled_ratio {cfg.get('labeled_ratio')}"))


def _avg(summary: dict, parts: list[str]) -> dict[str, float]:
    """A run's Avg. numbers (%, pixels): Dice and Jaccard as the mean over parts of the domain-averaged metric."""
    m = summary["mean"]
    return {k: float(np.mean([m[p][k] for p in parts])) * (100 if k in ("dice", "jaccard") else 1) for k in AVG}


def _cells(values: list[list[float] | None]) -> list[str]:
    return ["—" if v is None else " / ".join(f"{x:.2f}" for x in v) for v in values]


def table(runs: list[dict]) -> tuple[str, dict]:
    """The Table 3-6 layout of `runs` (one per labeled domain; see the module docstring) as markdown text, and
    the same numbers as a JSON-able dict."""
    cfg = runs[0]["config"]
    ds, parts = cfg["dataset"], list(cfg["part_names"])
    domains = spec(ds)["domains"]  # a dataset.json set: registered by load_checkpoint from the run's description
    entry, why = paper_entry(cfg)
    columns = entry["columns"] if entry else list(domains)
    by_domain = {}
    for r in runs:
        name = domains[r["config"]["domain"] - 1]
        if name in by_domain:
            raise ValueError(f"two runs with labeled domain {name}: give one run per labeled domain")
        by_domain[name] = r
    students = [s for s in STUDENT_NAMES if any(s in r["students"] for r in runs)]
    lines = [f"| row | {' | '.join(columns)} | {' | '.join(HEAD)} |", "|---" * (len(columns) + 5) + "|"]
    res: dict = dict(dataset=ds, parts=parts, columns=columns, runs={c: by_domain[c]["path"] for c in by_domain
                                                                       if "path" in by_domain[c]}, rows={})
    for s in students:
        for which, label in (("selected", "test-selected"), ("last", "last step")):
            cells, avgs, steps = [], [], {}
            for c in columns:
                st = by_domain.get(c, {}).get("students", {}).get(s)
                if st is None:
                    cells.append(None)
                    continue
                summ = st[which]
                cells.append([100 * summ["mean"][p]["dice"] for p in parts])
                avgs.append(_avg(summ, parts))
                steps[c] = st[f"{which}_step"]
            have = [v for v in cells if v is not None]
            avg = {k: float(np.mean([a[k] for a in avgs])) if avgs else math.nan for k in AVG}
            avg["dice"] = float(np.mean([x for v in have for x in v])) if have else math.nan
            res["rows"][f"{s} {which}"] = dict(cells=dict(zip(columns, cells)), avg=avg, steps=steps)
            lines.append(f"| {STUDENT_NAMES[s]}, {label} | {' | '.join(_cells(cells))} | "
                         + " | ".join(f"{avg[k]:.2f}" for k in AVG) + " |")
        if entry:
            per, avg = entry[s]
            res["rows"][f"{s} paper"] = dict(cells=dict(zip(columns, per)), avg=dict(zip(AVG, avg)))
            lines.append(f"| {STUDENT_NAMES[s]}, paper | {' | '.join(_cells(per))} | "
                         + " | ".join(f"{v:.2f}" for v in avg) + " |")
    missing = [c for c in columns if c not in by_domain]
    head = (f"{PAPER[ds]['table'] if ds in PAPER else 'Tables 3-6'} layout: {ds}, SynFoC students; a column is the run whose "
            f"labeled images come from that domain, each cell its mean Dice (%) over every domain's test split "
            f"({' / '.join(parts)}); Avg.: DSC and Jaccard in %, 95HD and ASD in pixels at the U-Net size.")
    notes = ["test-selected: each student at its own best mean test Dice over the periodic evaluations "
             "(best_test_selected_<student>.pt), the authors' protocol and what the paper reports; last step: last.pt "
             "(no selection on the test sets).",
             "steps of the test-selected rows: " + "; ".join(
                 f"{STUDENT_NAMES[s]} " + ", ".join(f"{c} {t}" for c, t in res['rows'][f'{s} selected']['steps'].items())
                 for s in students)]
    if missing:
        notes.append(f"no run for {', '.join(missing)}: Avg. over the {len(columns) - len(missing)} columns present")
    if not entry:
        notes.append(f"no paper row: {why}")
    text = head + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"
    return text, res
