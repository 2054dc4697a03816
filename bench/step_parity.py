"""Does the optimised step compute what the plain step does? Per-step losses of short training runs, side by side.

    python bench/step_parity.py                                   # synthetic preset, 60 steps (10 burn-in), CPU
    python bench/step_parity.py --steps 30 --burn-in 5 --out runs/parity --train-args --sam tiny --unet-width 4

Three train.py runs of the same configuration, seed and batches (train.py's data path; --log-every 1):
    plain     --plain --threads T      the reference: every speedups.py change off
    plain_1t  --plain --threads 1      the same code on one thread: floating-point summation order alone
    optimised          --threads T     the default step (speedups.py)
The spread of `plain_1t` around `plain` is what reordering the same arithmetic does to this run (bf16 on a
CPU drifts apart within tens of steps); the optimised step passes when its distance to `plain` stays within
that spread (--tolerance times it, default 2, per statistic). Printed: a table of max and mean |difference|
of each logged loss (loss, L_x, L_u, L_c, L_d) over the SynFoC steps and over the burn-in, and PASS/FAIL;
written to --out: parity.csv (step, run, every metrics.csv column) and parity.json (the table, the verdict).
Exit 1 on FAIL. Finished runs in --out are reused when they were trained with the same flags (argv.json).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMS = ("loss", "L_x", "L_u", "L_c", "L_d")


def run_train(out: Path, name: str, argv: list[str]) -> list[dict[str, float]]:
    """Train one variant (or reuse a finished one); returns metrics.csv rows as floats."""
    folder = out / name
    metrics = folder / "metrics.csv"
    saved = folder / "argv.json"
    if (folder / "last.pt").is_file() and (not saved.is_file() or json.loads(saved.read_text()) != argv):
        raise SystemExit(f"error: {folder} holds a run of other flags than {' '.join(argv)}: give another --out")
    if not (folder / "last.pt").is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), *argv, "--out", str(folder), "--overwrite"]
        print(f"[parity] {name}: {' '.join(cmd[1:])}", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "train.out", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"error: {name}: train.py exited {rc}; see {folder / 'train.out'}")
        saved.write_text(json.dumps(argv))
    else:
        print(f"[parity] {name}: reusing {folder}")
    with open(metrics) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def distance(a: list[dict], b: list[dict], steps: set[int]) -> dict[str, dict[str, float]]:
    """Per loss term: max and mean |a - b| over the given steps."""
    out = {}
    pairs = [(x, y) for x, y in zip(a, b) if int(x["step"]) in steps]
    for k in TERMS:
        d = [abs(x[k] - y[k]) for x, y in pairs]
        out[k] = dict(max=max(d) if d else 0.0, mean=sum(d) / len(d) if d else 0.0)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Optimised vs plain step: per-step losses (see the module docstring).")
    p.add_argument("--dataset", default="synthetic", help="train.py --dataset (default synthetic)")
    p.add_argument("--steps", type=int, default=60, help="training steps of each run (default 60)")
    p.add_argument("--burn-in", type=int, default=10, help="supervised-only steps first (default 10)")
    p.add_argument("--threads", type=int, default=2, help="threads of the plain and the optimised run (default 2)")
    p.add_argument("--tolerance", type=float, default=2.0,
                   help="pass when the optimised run's distance to plain is <= this times the one-thread run's (default 2)")
    p.add_argument("--out", default="runs/step_parity", help="folder of the three runs and the report (default runs/step_parity)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this flag goes to every train.py call (e.g. --sam tiny for tests)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.steps <= args.burn_in or args.burn_in < 0 or args.threads < 1 or args.tolerance <= 0:
        p.error("need 0 <= --burn-in < --steps, --threads >= 1 and --tolerance > 0")
    out = Path(args.out)
    base = ["--dataset", args.dataset, "--steps", str(args.steps), "--burn-in", str(args.burn_in), "--log-every", "1",
            "--eval-every", str(args.steps), *args.train_args]
    runs = {name: run_train(out, name, base + extra) for name, extra in (
        ("plain", ["--plain", "--threads", str(args.threads)]),
        ("plain_1t", ["--plain", "--threads", "1"]),
        ("optimised", ["--threads", str(args.threads)]))}
    semi = set(range(args.burn_in + 1, args.steps + 1))  # metrics.csv step = steps done
    burn = set(range(1, args.burn_in + 1))
    table = {phase: {"order (plain 1 vs N threads)": distance(runs["plain"], runs["plain_1t"], st),
                     "optimised vs plain": distance(runs["plain"], runs["optimised"], st)}
             for phase, st in (("SynFoC steps", semi), ("burn-in", burn))}
    ok = all(table["SynFoC steps"]["optimised vs plain"][k][s]
             <= args.tolerance * max(table["SynFoC steps"]["order (plain 1 vs N threads)"][k][s], 1e-6)
             for k in TERMS for s in ("max", "mean"))
    with open(out / "parity.csv", "w", newline="") as f:
        cols = list(runs["plain"][0])
        w = csv.writer(f)
        w.writerow(["run", *cols])
        for name, rows in runs.items():
            for r in rows:
                w.writerow([name, *(r[c] for c in cols)])
    (out / "parity.json").write_text(json.dumps(dict(table=table, passed=ok, tolerance=args.tolerance,
                                                     steps=args.steps, burn_in=args.burn_in), indent=2))
    for phase, t in table.items():
        print(f"\n{phase}: |difference| of each logged loss, max / mean over the steps")
        print("| pair | " + " | ".join(TERMS) + " |\n|---|" + "---|" * len(TERMS))
        for pair, d in t.items():
            print(f"| {pair} | " + " | ".join(f"{d[k]['max']:.2e} / {d[k]['mean']:.2e}" for k in TERMS) + " |")
    print(f"\n{'PASS' if ok else 'FAIL'}: optimised vs plain within {args.tolerance:g}x the spread of thread order alone "
          "(SynFoC steps)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
