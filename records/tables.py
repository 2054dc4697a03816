"""The paper-style tables (Tables 3-6) from per-slice or per-volume metric rows: means per domain and over
domains, mean ± std over runs, and the markdown table.

    summary = tables.aggregate(rows, domain_names, part_names)    # rows: domain (1-based), part, the 4 metrics
    print(tables.format_table(summary, part_names, "title"))
    print(tables.format_table(tables.aggregate_runs([s0, s1, s2], part_names), part_names, "mean ± std"))
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from metrics import METRICS


def aggregate(rows: Iterable[dict], domain_names: Sequence[str], part_names: Sequence[str]) -> dict:
    """Per-domain and overall means from per-slice (or per-volume) rows.

    rows: dicts with `domain` (1-based int), `part` (a name from part_names) and the four METRICS.
    Returns {"domains": {domain_name: {part: {metric: mean over the domain's slices}, "dice": mean Dice
    over parts, "cases": n}}, "mean": {part: {metric: unweighted mean over domains}, "dice": headline}}.
    Domains without slices are left out (and so do not enter the mean).
    """
    acc: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        acc.setdefault((int(r["domain"]), r["part"]), []).append(r)
    domains: dict[str, dict] = {}
    for k, dname in enumerate(domain_names, start=1):
        if not any((k, p) in acc for p in part_names):
            continue
        entry: dict = {}
        for p in part_names:
            rs = acc.get((k, p), [])
            entry[p] = {m: float(np.mean([r[m] for r in rs])) if rs else math.nan for m in METRICS}
        entry["dice"] = float(np.mean([entry[p]["dice"] for p in part_names]))
        entry["cases"] = len(acc.get((k, part_names[0]), []))
        domains[dname] = entry
    mean: dict = {}
    for p in part_names:
        mean[p] = {m: float(np.mean([d[p][m] for d in domains.values()])) if domains else math.nan
                   for m in METRICS}
    mean["dice"] = float(np.mean([mean[p]["dice"] for p in part_names])) if domains else math.nan
    return {"domains": domains, "mean": mean}


def aggregate_runs(summaries: Sequence[dict], part_names: Sequence[str]) -> dict:
    """Mean ± std over runs of aggregate() outputs (one per run, same domains and parts).

    Returns aggregate()'s structure with every number replaced by {"mean": m, "std": s} (std: sample
    standard deviation over the runs, ddof=1; 0 for a single run) and "runs": the number of runs.
    ValueError when the runs do not cover the same domains."""
    first = list(summaries[0]["domains"])
    for s in summaries[1:]:
        if list(s["domains"]) != first:
            raise ValueError(f"the runs cover different domains ({first} vs {list(s['domains'])}): "
                            "aggregate runs evaluated on the same data")

    def ms(values: list[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}

    def combine(entries: list[dict]) -> dict:
        out = {p: {m: ms([e[p][m] for e in entries]) for m in METRICS} for p in part_names}
        out["dice"] = ms([e["dice"] for e in entries])
        return out

    domains = {d: dict(combine([s["domains"][d] for s in summaries]), cases=summaries[0]["domains"][d]["cases"])
               for d in first}
    return {"domains": domains, "mean": combine([s["mean"] for s in summaries]), "runs": len(summaries)}


def _fmt(v: float | dict, scale: float) -> str:
    """A table cell: a number, or {"mean", "std"} as `m ± s`."""
    if isinstance(v, dict):
        return f"{scale * v['mean']:.2f} ± {scale * v['std']:.2f}"
    return f"{scale * v:.2f}"


def format_table(summary: dict, part_names: Sequence[str], title: str = "") -> str:
    """Markdown table like the paper's Tables 3-6: rows = domains + Mean; per part DSC %, Jaccard %,
    HD95 and ASD (pixels, or voxels for a per-volume summary); last column the average DSC % over parts.
    Works on aggregate() (numbers) and aggregate_runs() (mean ± std) outputs."""
    head = ["Domain"]
    for p in part_names:
        head += [f"{p} DSC", f"{p} Jac", f"{p} HD95", f"{p} ASD"]
    head.append("Avg DSC")

    def cells(name: str, e: dict) -> list[str]:
        c = [name]
        for p in part_names:
            c += [_fmt(e[p]["dice"], 100), _fmt(e[p]["jaccard"], 100), _fmt(e[p]["hd95"], 1), _fmt(e[p]["asd"], 1)]
        return c + [_fmt(e["dice"], 100)]

    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary["domains"].items():
        lines.append("| " + " | ".join(cells(f"{name} ({e['cases']})", e)) + " |")
    lines.append("| " + " | ".join(cells("**Mean**", summary["mean"])) + " |")
    return "\n".join(lines) + "\n"


