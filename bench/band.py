"""What the Quick start should print: the band of both students' Dice over training seeds, per CPU family.

    python train.py --dataset synthetic                                   # the Quick start run (seed 0)
    python train.py --dataset synthetic --seed 1 --out runs/synthetic_s1
    python train.py --dataset synthetic --seed 2 --out runs/synthetic_s2
    python bench/band.py runs/synthetic_d1_synfoc runs/synthetic_s1 runs/synthetic_s2          # print the band
    python bench/band.py runs/synthetic_d1_synfoc runs/synthetic_s1 runs/synthetic_s2 --write  # and record it

The runs must be finished train.py runs of one budget (runlog.BUDGET_KEYS, the training seed aside) and one
precision. For each student and each domain (and the mean over domains) the band is the min and max of the
last evaluation's Dice over the runs, with their mean and sample sd. `--write` records it in
bench/synthetic_reference.json under "band", one entry per CPU family and precision (the capability line's CPU
model and ISA level: runs on another family add an entry, never replace one), and train.py's final printout
shows the band of the run's own budget beside its numbers (records/runlog.py), so a newcomer sees whether a run
is inside what was measured. Each entry names its seeds, CPU, precision, date and the runs' wall time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project is flat scripts at the repository root

from hardware.speedups import capability_line  # noqa: E402
from records.plots import read_evals  # noqa: E402
from records.runlog import BUDGET_KEYS, REFERENCE, cpu_family  # noqa: E402


def last_eval(run: Path) -> tuple[dict, dict[str, dict[str, float]]]:
    """(config, {student: {domain: Dice (%), "mean": Dice (%)}}) of a finished run's last evaluation."""
    cfg = json.loads((run / "config.json").read_text())
    series = read_evals(run / "evals.csv") if (run / "evals.csv").is_file() else {}  # {"model domain": (steps, %)}
    if not series or any(steps[-1] != cfg["steps"] for steps, _ in series.values()):
        raise SystemExit(f"error: {run} is not finished (its last evaluation is not at step {cfg['steps']})")
    out: dict[str, dict[str, float]] = {}
    for key, (_, dice) in series.items():
        model, domain = key.split(" ", 1)
        out.setdefault(model, {})[domain] = float(dice[-1])
    for d in out.values():
        d["mean"] = statistics.mean(d.values())
    return cfg, out


def band(runs: list[Path]) -> dict:
    """The band entry of `runs` (see the module docstring)."""
    got = [last_eval(r) for r in runs]
    cfg0 = got[0][0]
    for r, (cfg, _) in zip(runs[1:], got[1:]):
        diff = [k for k in BUDGET_KEYS if k != "seed" and cfg.get(k) != cfg0.get(k)] + \
            (["amp"] if cfg.get("amp") != cfg0.get("amp") else [])
        if diff:
            raise SystemExit(f"error: {r} and {runs[0]} differ in {', '.join(diff)}: a band is one budget, one precision")
    seeds = [cfg["seed"] for cfg, _ in got]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"error: the runs repeat a training seed ({seeds}): a band is over different seeds")
    students = {}
    for s in got[0][1]:
        students[s] = {k: dict(min=min(v), max=max(v), mean=statistics.mean(v),
                               sd=statistics.stdev(v) if len(v) > 1 else 0.0)
                       for k in got[0][1][s] for v in [[res[s][k] for _, res in got]]}
    return dict(budget={k: cfg0.get(k) for k in BUDGET_KEYS if k != "seed"}, amp=cfg0.get("amp"), seeds=seeds,
                cpu=capability_line("cpu"), date=time.strftime("%Y-%m-%d"), runs=[r.name for r in runs],  # names: no machine paths
                students=students)


def family(entry: dict) -> str:
    """An entry's CPU family (runlog.cpu_family) with its precision: one band per pair."""
    return f"{cpu_family(entry['cpu'])} | {entry['amp']}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The band of the students' Dice over finished runs of one budget "
                                            "(module docstring).")
    p.add_argument("runs", nargs="+", help="finished train.py run folders, one per training seed")
    p.add_argument("--write", action="store_true", help=f"record it in {REFERENCE.name} (one entry per CPU family)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    b = band([Path(r) for r in a.runs])
    for s, rows in b["students"].items():
        print(f"{s}: " + "  ".join(f"{k} {v['min']:.1f}-{v['max']:.1f} (mean {v['mean']:.1f} ± {v['sd']:.1f})"
                                   for k, v in rows.items()))
    print(f"seeds {b['seeds']}, {b['cpu']}, amp {b['amp']}")
    if a.write:
        ref = json.loads(REFERENCE.read_text())
        ref["band"] = [e for e in ref.get("band", []) if family(e) != family(b)] + [b]
        REFERENCE.write_text(json.dumps(ref, indent=2))
        print(f"wrote the band of {family(b)} to {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
