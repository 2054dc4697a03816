"""A synthetic Table 7 in one command: SupOnly < Base U-Net < Base MedSAM < SynFoC, on data anyone can generate.

    python bench/table7.py                                  # data seed 1, the embedded default budget
    python bench/table7.py --data-seed 2 --out runs/table7_s2
    python bench/table7.py --all                            # + Table 7's ablation rows and Table 8 (alpha, with --reg none)
    python bench/table7.py --oracle                         # + SynFoC-oracle: ground truth as pseudo-labels (ceiling)
    python bench/table7.py --data-seed 0 --write-reference  # the labeled-only reference train.py prints
    python bench/table7.py --seed 0 1 2                     # every row with three training seeds: mean ± sd
    python bench/table7.py --data-seed 3 --seed 0 1 2 --jobs 2   # two runs at once, one thread each
    python bench/table7.py --data-seed 20 21 --seed 0 1 --steps 100 300 800 --oracle --jobs 2 --out runs/budgets
                                                            # Dice against steps (budgets.md / .json / .png)

Each row trains `train.py --dataset synthetic --data-seed N [--steps T] <row flags>` (the synthetic preset
otherwise), then evaluates the run's last.pt on every domain's FULL test split with evaluate.py's code
(evaluate.evaluate_cases: per-slice Dice, mean over parts, then per domain). Written to --out
(default runs/table7_s<N>):
    table7.md    mean Dice (%) per domain and the mean, per row and student, with each row's training wall time
                 (per run: the mean over the training seeds); then the paired differences SynFoC SAM − Base
                 MedSAM and SynFoC U-Net − Base U-Net per training seed, at the last step and test-selected
                 (each student's best evaluation in its evals.csv, the paper's protocol, labelled as such)
    table7.json  {row: {model: {domain: Dice, ..., "mean": Dice}}} (fractions) + "_per_seed" (the same per
                 training seed: {row: {model: {seed: {...}}}}) + "_paired" ({pair: {"last" | "test-selected":
                 {seed: difference}}}) + "_meta" (flags, seeds, times, machine)
    table7.png   per-domain bars per row, and the pseudo-label Dice of the SAM teacher, the U-Net teacher and
                 the ensemble vs step from each run's metrics.csv (the paper's Fig. 6)
Several budgets or data seeds (`--steps 100 300 800`, `--data-seed 20 21`): one table as above per data seed
and budget, in --out/s<D>_steps<T> (each budget its own runs: λ's ramp and the burn-in scale with the steps),
then Dice against steps over them in --out (default runs/table7_budgets):
    budgets.md   each row's mean Dice per student at each budget (mean over the data seed × training seed pairs,
                 n = the pairs), then the paired differences SynFoC − Base per pair, last step and test-selected
    budgets.json {steps: {"rows": {row: {model: {"mean", "n", "runs"}}}, "paired": {pair: {"last" |
                 "test-selected": {"per_pair": {"<data seed>/<training seed>": Δ}, "mean": Δ}}}}} (fractions)
    budgets.png  one panel per student kind (Dice against steps, SynFoC-oracle dashed: the ceiling), then the
                 gap SynFoC − Base per student with one dot per pair and the +3 line the gain issue asks for
The runs are planned pair by pair (training seed, then data seed) and, inside a pair, longest first (most steps,
SAM rows before U-Net rows), so --jobs 2 keeps both cores busy and a killed call already holds whole pairs.
Rows: SupOnly (--mode suponly), Base U-Net (--mode unet), Base MedSAM (--mode medsam), SynFoC. With --all:
SynFoC with CR (--reg cr), Base+SMC (--reg none), CDCR without SMC (--alpha own), and Table 8's alpha
strategies const / linear / self / mutual / cps with --reg none (Table 8's SMC row is the Base+SMC row). With
--oracle: SynFoC-oracle (--pseudo-labels oracle), the ceiling of the unlabeled path at the table's budget.
Runs that already finished (a last.pt at their final step) are reused, so an interrupted table resumes; a run
whose saved configuration differs from the row's in anything but the output folder, device and thread
settings (another seed, loss, budget, ...) is a one-line error, never mixed into the table. SupOnly and
Base U-Net build no SAM, so settings only the SAM reads (--lite-size, --rank, --lr-sam, ...) do not count for
them: copy their run folders into a `--train-args --lite-size 64` table's --out and they are reused.

Parallel runs (`--jobs 2`): two train.py processes at once, one thread each by default (CPUs / jobs), each
logging to its folder's train.out (with --jobs 1 the runs train in this process, one after the other); on a
2-core CPU this is the cheapest way to a table. Train times are then
those of runs sharing the machine.

Several training seeds (`--seed 0 1 2`): every row is trained once per seed (folder <Row> for seed 0,
<Row>_seed<S> for the others, so a one-seed table is reused); table7.md then gives the mean over the seeds
per domain and the mean Dice as "mean ± sd" (sample standard deviation over the seeds), table7.json keeps the
means in the same layout and each seed's numbers under "_per_seed". At this budget one run per row moves by
several points with the training seed alone, so a difference of a few points needs several seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
from records import plots  # noqa: E402
import train  # noqa: E402
from records import config  # noqa: E402
from records.checkpoint import build_students, load_checkpoint  # noqa: E402
from records.cli import amp_dtype  # noqa: E402
from records.runlog import BUDGET_KEYS, REFERENCE  # noqa: E402  (the reference file train.py prints from)
from hardware.speedups import capability_line  # noqa: E402

MAIN_ROWS = [("SupOnly", ["--mode", "suponly"]), ("Base U-Net", ["--mode", "unet"]),
             ("Base MedSAM", ["--mode", "medsam"]), ("SynFoC", [])]
ALL_ROWS = [("SynFoC w/ CR", ["--reg", "cr"]), ("Base+SMC (no CDCR)", ["--reg", "none"]),
            ("CDCR w/o SMC", ["--alpha", "own"])] + \
           [(f"Table 8: {a}", ["--reg", "none", "--alpha", a]) for a in ("const", "linear", "self", "mutual", "cps")]

def row_folder(out: Path, name: str, seed: int) -> Path:
    """The run folder of one row and training seed: "Base U-Net" -> Base_U-Net (seed 0), Base_U-Net_seed2."""
    base = re.sub(r"[^\w-]+", "_", name).strip("_")
    return out / (base if seed == 0 else f"{base}_seed{seed}")


# config keys that may differ between a reused run and this table: where and how fast it ran, and logging
# (plain / compile / fast_attn change float rounding only: hardware/speedups.py, tests/test_speedups.py)
IGNORED = {"out", "device", "workers", "threads", "tensorboard", "plain", "compile", "fast_attn", "amp_reason"}
# keys read only where a SAM is built (checkpoint.build_models, the AdamW of synfoc.build_run): a SupOnly or Base
# U-Net run is the same run whatever they say, so a --lite-size 64 table reuses the U-Net rows of a 128 one
SAM_ONLY = {"lite_size", "rank", "lr_sam", "head_init", "sam_norm", "sam_ckpt"}


def builds_sam(flags: list[str]) -> bool:
    """Whether a row's train.py flags train a SAM (every mode but --mode unet / suponly)."""
    return not any(a == "--mode" and b in ("unet", "suponly") for a, b in zip(flags, flags[1:]))


def plan_row(name: str, flags: list[str], args: argparse.Namespace, out: Path, seed: int,
             data_seed: int | None = None, steps: int | None = None) -> tuple[Path, list[str] | None]:
    """(run folder, train.py argv) of one row and training seed of the table of data_seed and steps (default: the
    first --data-seed and --steps); argv None: a finished run with exactly this configuration is reused. A run
    whose saved configuration differs in anything but IGNORED is an error."""
    data_seed = args.data_seed[0] if data_seed is None else data_seed
    steps = (args.steps or [None])[0] if steps is None else steps
    folder = row_folder(out, name, seed)
    argv = ["--dataset", "synthetic", "--data-seed", str(data_seed), "--seed", str(seed),
            "--data-root", args.data_root, "--out", str(folder), *flags, *args.train_args]
    if steps:
        argv += ["--steps", str(steps)]
    if (folder / "last.pt").is_file():
        ck = load_checkpoint(folder)
        ran = {k: ck["config"].get(k) for k in ("data_seed", "seed")}
        if ran != {"data_seed": data_seed, "seed": seed}:  # never mix another table's run into this one
            raise ValueError(f"{folder} holds a run with {ran}, this table asks for data_seed {data_seed}, "
                             f"seed {seed}: give another --out")
        want = config.resolve_config(config.parse_args(argv))
        ignored = IGNORED | (SAM_ONLY if want["mode"] in ("unet", "suponly") else set())
        diff = [k for k in sorted(want) if k not in ignored and want[k] != ck["config"].get(k)]
        if diff:
            k = diff[0]
            raise ValueError(f"{folder} holds a run trained with {k} = {ck['config'].get(k)!r}, this table asks for "
                             f"{want[k]!r} ({len(diff)} setting(s) differ: {', '.join(diff)}): give another --out")
        if ck["step"] == ck["config"]["steps"]:
            return folder, None
        return folder, ["--resume", str(folder)]
    if folder.exists():
        argv.append("--overwrite")
    return folder, argv


def train_row(name: str, folder: Path, argv: list[str], threads: int | None, own_process: bool) -> float:
    """Train (or resume) one run, in this process or (own_process: --jobs > 1) in its own train.py process;
    returns wall seconds (also written to wall.json)."""
    argv = argv + (["--threads", str(threads)] if threads else [])
    print(f"[table7] {name}: python train.py {' '.join(argv)}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not own_process:
        train.train(argv)
    else:
        with open(folder / "train.out", "w") as log:  # the run's own log.txt is the record; this keeps tqdm/errors
            rc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], stdout=log,
                                stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = (folder / "train.out").read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise ValueError(f"{name}: train.py exited {rc} ({tail[0]}); see {folder / 'train.out'}")
    sec = time.time() - t0
    (folder / "wall.json").write_text(json.dumps(dict(seconds=sec, threads=threads)))
    return sec


def wall(folder: Path) -> float:
    return json.loads((folder / "wall.json").read_text())["seconds"] if (folder / "wall.json").exists() else float("nan")


def evaluate_run(folder: Path) -> dict[str, dict[str, float]]:
    """Both students of a run's last.pt on every domain's full test split -> {model: {domain: Dice, "mean": Dice}}."""
    ck = load_checkpoint(folder)
    cfg = ck["config"]
    device = torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")
    want = [n for n, k in (("medsam", "sam"), ("unet", "unet")) if ck.get(k) is not None]
    models = build_students(ck, device, want, None)
    root = data.dataset_root(cfg)
    amp = amp_dtype(cfg["amp"], cfg, device)  # the training setting, as train.py evaluates
    _, summaries = evaluate.evaluate_cases(models, cfg["dataset"], data.test_cases(cfg["dataset"], root), cfg, device,
                                           batch_size=max(cfg["batch"]), amp=amp)
    return evaluate.mean_dice(summaries)


def over_seeds(per_seed: dict[int, dict[str, float]]) -> tuple[dict[str, float], float]:
    """{seed: {domain: Dice, "mean": Dice}} -> (the mean over seeds of each entry, sample sd of "mean"; 0 for one seed)."""
    runs = list(per_seed.values())
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    return mean, statistics.stdev([r["mean"] for r in runs]) if len(runs) > 1 else 0.0


def best_evaluated(folder: Path, model: str) -> float:
    """The highest mean-over-domains test Dice of one student over the run's evaluations (evals.csv): the
    test-selected number of the authors' protocol, taken per student (train.py's best_test_selected_<student>.pt)."""
    per_domain = [dice for key, (_, dice) in plots.read_evals(folder / "evals.csv").items()
                  if key.split(" ", 1)[0] == model]                        # [domains][evaluations], in %
    return max(sum(col) / len(col) for col in zip(*per_domain)) / 100


ORACLE_ROWS = [("SynFoC-oracle", ["--pseudo-labels", "oracle"])]


def table_rows(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(row name, train.py flags) of this table: the main rows, then --all's, then --oracle's."""
    return MAIN_ROWS + (ALL_ROWS if args.all else []) + (ORACLE_ROWS if args.oracle else [])


PAIRS = [("SynFoC", "medsam", "Base MedSAM"), ("SynFoC", "unet", "Base U-Net")]


def paired(per_seed: dict, folders: dict[str, dict[int, Path]]) -> dict[str, dict[str, dict[int, float]]]:
    """{"SynFoC medsam − Base MedSAM": {"last": {seed: Δ}, "test-selected": {seed: Δ}}, ...}: SynFoC's student
    minus its single-model baseline of the same training seed, mean Dice (fractions)."""
    out = {}
    for row, model, base in PAIRS:
        if row in per_seed and base in per_seed:
            seeds = list(folders[row])
            out[f"{row} {model} − {base}"] = {
                "last": {s: per_seed[row][model][s]["mean"] - per_seed[base][model][s]["mean"] for s in seeds},
                "test-selected": {s: best_evaluated(folders[row][s], model) - best_evaluated(folders[base][s], model)
                                  for s in seeds}}
    return out


def paired_markdown(pairs: dict) -> str:
    if not pairs:
        return ""
    seeds = list(next(iter(pairs.values()))["last"])
    lines = ["", "Paired differences (points of mean Dice, same training seed; test-selected = each student's best "
             "evaluation on the TEST split, the paper's optimistic protocol):", "",
             "| difference | checkpoint | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for name, kinds in pairs.items():
        for kind, d in kinds.items():
            lines.append(f"| {name} | {kind} | " + " | ".join(f"{100 * d[s]:+.1f}" for s in seeds)
                         + f" | **{100 * sum(d.values()) / len(d):+.1f}** |")
    return "\n".join(lines) + "\n"


def markdown(results: dict, sds: dict, walls: dict, domains: list[str], title: str, several: bool) -> str:
    mean_head = "mean ± sd" if several else "mean"
    lines = [f"## {title}", "", "| row | student | " + " | ".join(domains) + f" | {mean_head} | train time |",
             "|---|---|" + "---|" * (len(domains) + 2)]
    for row, models in results.items():
        for model, r in models.items():
            sd = f" ± {100 * sds[row][model]:.1f}" if several else ""
            lines.append(f"| {row} | {model} | " + " | ".join(f"{100 * r[d]:.1f}" for d in domains)
                         + f" | **{100 * r['mean']:.1f}**{sd} | {walls[row] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses the README's commands with it)."""
    p = argparse.ArgumentParser(description="Synthetic Table 7 (see the module docstring).")
    p.add_argument("--data-seed", type=int, nargs="+", default=[1],
                   help="generator seed(s) of the synthetic set (default 1; 0 is the embedded default's data); "
                        "several: one table per data seed, and the summary over them (budgets.md)")
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="training seed(s) of every row (default 0); several: each row once per seed, mean ± sd")
    p.add_argument("--steps", type=int, nargs="+",
                   help="training steps of every row (default: the synthetic preset); several budgets: one table "
                        "per budget (each its own runs: lambda's ramp and the burn-in scale with the steps) and "
                        "Dice against steps over them (budgets.md / .json / .png)")
    p.add_argument("--out", help="output folder (default runs/table7_s<data-seed>; several data seeds or budgets: "
                                 "runs/table7_budgets, one subfolder s<D>_steps<T> per table)")
    p.add_argument("--data-root", default="data", help="folder of the generated sets (default data)")
    p.add_argument("--all", action="store_true", help="also Table 7's ablation rows and Table 8's alpha strategies")
    p.add_argument("--oracle", action="store_true", help="also SynFoC-oracle (train.py --pseudo-labels oracle: the "
                                                         "unlabeled ground truth as pseudo-labels, a diagnostic ceiling)")
    p.add_argument("--write-reference", action="store_true",
                   help=f"write {REFERENCE.relative_to(ROOT)}: the rows' Dice and the budget, printed by train.py "
                        "at the end of a run with the same budget")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each its own train.py process "
                                                        "(default 1; 2 on a 2-core CPU: one thread each)")
    p.add_argument("--threads", type=int, help="torch threads of each run (default: CPUs / --jobs when --jobs > 1, "
                                               "else torch's own choice)")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this flag goes to every train.py call (e.g. --sam tiny for tests)")
    return p


def table_folder(out: Path, data_seed: int, steps: int | None, several: bool) -> Path:
    """Where one table of a call goes: --out itself for one (data seed, budget), else --out/s<D>_steps<T>."""
    return out / f"s{data_seed}_steps{steps or 'preset'}" if several else out


def write_table(rows: list, seeds: list[int], data_seed: int, plans: dict, out: Path,
                jobs_threads: tuple[int, int | None]) -> dict:
    """Evaluate the finished runs of one (data seed, budget) and write table7.md / .json / .png to out;
    returns what table7.json holds."""
    results, sds, walls, folders, per_seed, seed_folders = {}, {}, {}, {}, {}, {}
    for name, _ in rows:
        runs = {s: plans[(name, s)][0] for s in seeds}                # seed -> folder
        folders[name], seed_folders[name] = runs[seeds[0]], runs
        walls[name] = sum(wall(f) for f in runs.values()) / len(runs)   # per run
        evals = {s: evaluate_run(f) for s, f in runs.items()}          # seed -> model -> domain -> Dice
        per_seed[name] = {m: {s: evals[s][m] for s in seeds} for m in evals[seeds[0]]}
        stats = {m: over_seeds(v) for m, v in per_seed[name].items()}
        results[name] = {m: mean for m, (mean, _) in stats.items()}
        sds[name] = {m: sd for m, (_, sd) in stats.items()}
        print(f"[table7] {name}: " + ", ".join(f"{m} mean {100 * r['mean']:.1f}" for m, r in results[name].items()))
    domains = data.PRESETS["synthetic"]["domains"]
    cfg = load_checkpoint(folders["SynFoC"])["config"]
    meta = dict(data_seed=data_seed, seed=seeds[0], seeds=seeds, steps=cfg["steps"], rows={n: f for n, f in rows},
                train_seconds=walls, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
                + ("CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
                cpu=capability_line(), amp=cfg["amp"], date=time.strftime("%Y-%m-%d"),
                budget={k: cfg.get(k) for k in BUDGET_KEYS}, jobs=jobs_threads[0], threads=jobs_threads[1])
    several = len(seeds) > 1
    title = f"Synthetic Table 7 — data seed {data_seed}, {cfg['steps']} steps, " + \
        (f"training seeds {', '.join(map(str, seeds))}, mean Dice (%) over the seeds" if several
         else "mean Dice (%)") + " on the full test split"
    pairs = paired(per_seed, seed_folders)
    table = dict(results, _per_seed=per_seed, _paired=pairs, _meta=meta)
    (out / "table7.md").write_text(markdown(results, sds, walls, domains, title, several) + paired_markdown(pairs))
    (out / "table7.json").write_text(json.dumps(table, indent=2))
    plots.plot_table7(results, {n: folders[n] for n in results}, out / "table7.png")
    print((out / "table7.md").read_text())
    return table


def budgets_summary(tables: dict[tuple[int, int], dict]) -> dict:
    """Several budgets (and data seeds) -> Dice against steps: per budget, each row's mean Dice per student over
    every (data seed, training seed) pair, and the paired differences SynFoC − Base per pair, last step and
    test-selected. tables: {(data seed, steps): table7.json content}. Dice as fractions."""
    out = {}
    for steps in sorted({t for _, t in tables}):
        at = {ds: tab for (ds, t), tab in tables.items() if t == steps}
        rows = {}
        for tab in at.values():
            for row, models in tab["_per_seed"].items():
                for model, per in models.items():
                    rows.setdefault(row, {}).setdefault(model, []).extend(r["mean"] for r in per.values())
        diffs = {}
        for ds, tab in at.items():
            for pair, kinds in tab["_paired"].items():
                for kind, per in kinds.items():
                    diffs.setdefault(pair, {}).setdefault(kind, {}).update({f"{ds}/{s}": d for s, d in per.items()})
        out[steps] = dict(rows={r: {m: dict(mean=sum(v) / len(v), n=len(v), runs=v) for m, v in ms.items()}
                                for r, ms in rows.items()},
                          paired={p: {k: dict(per_pair=v, mean=sum(v.values()) / len(v)) for k, v in kinds.items()}
                                  for p, kinds in diffs.items()})
    return out


def budgets_markdown(summary: dict, data_seeds: list[int], seeds: list[int]) -> str:
    """The Dice-against-steps tables: rows × budgets (mean over the pairs), then the paired differences."""
    steps = list(summary)
    rows = list(dict.fromkeys(r for s in summary.values() for r in s["rows"]))
    head = "| row | student | " + " | ".join(f"{t} steps" for t in steps) + " |"
    lines = [f"## Dice against steps — data seeds {', '.join(map(str, data_seeds))} × training seeds "
             f"{', '.join(map(str, seeds))}, mean Dice (%) over the pairs, last step, full test split", "",
             head, "|---|---|" + "---|" * len(steps)]
    for row in rows:
        for model in dict.fromkeys(m for s in summary.values() for m in s["rows"].get(row, {})):
            cells = [summary[t]["rows"].get(row, {}).get(model) for t in steps]
            lines.append(f"| {row} | {model} | " + " | ".join(
                f"{100 * c['mean']:.1f} (n={c['n']})" if c else "–" for c in cells) + " |")
    lines += ["", "Paired differences (points; per pair `data seed/training seed`; test-selected = each student's "
              "best evaluation on the TEST split, the paper's optimistic protocol):", "",
              "| difference | checkpoint | steps | per pair | mean |", "|---|---|---|---|---|"]
    for t in steps:
        for pair, kinds in summary[t]["paired"].items():
            for kind, d in kinds.items():
                per = ", ".join(f"{k}: {100 * v:+.1f}" for k, v in d["per_pair"].items())
                lines.append(f"| {pair} | {kind} | {t} | {per} | **{100 * d['mean']:+.1f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        print("error: --jobs and --threads must be >= 1", file=sys.stderr)
        return 2
    if any(t < 1 for t in args.steps or []):
        print("error: --steps must be >= 1", file=sys.stderr)
        return 2
    seeds = list(dict.fromkeys(args.seed))  # in the given order, each once
    data_seeds = list(dict.fromkeys(args.data_seed))
    budgets = list(dict.fromkeys(args.steps or [None]))
    several = len(data_seeds) * len(budgets) > 1
    if args.write_reference and (len(seeds) > 1 or several):
        print("error: --write-reference takes one --seed, one --data-seed and one --steps (the reference is one run "
              "per row, like train.py's run)", file=sys.stderr)
        return 2
    if any(b is None for b in budgets) and len(budgets) > 1:
        print("error: --steps: give every budget as a number", file=sys.stderr)
        return 2
    out = Path(args.out or (f"runs/table7_s{data_seeds[0]}" if not several else "runs/table7_budgets"))
    rows = table_rows(args)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    tables = {(ds, t): table_folder(out, ds, t, several) for ds in data_seeds for t in budgets}
    for folder in tables.values():
        folder.mkdir(parents=True, exist_ok=True)
    try:
        # pair-major (training seed, then data seed): an interrupted call already holds whole pairs at every
        # budget; inside a pair the longest runs first (most steps, SAM rows), so two jobs end together
        plans = {}
        for s in seeds:
            for ds in data_seeds:
                for t, name, flags in sorted(((t, name, flags) for t in budgets for name, flags in rows),
                                             key=lambda k: (-(k[0] or 0), not builds_sam(k[2]))):
                    plans[(ds, t, name, s)] = plan_row(name, flags, args, tables[(ds, t)], s, ds, t)
        todo = [key for key, (_, argv) in plans.items() if argv is not None]
        for (ds, t, name, s), (folder, argv) in plans.items():
            if argv is None:
                print(f"[table7] {name}: reusing {folder} (finished)")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each job is its own train.py process
            futures = [pool.submit(train_row, key[2], plans[key][0], plans[key][1], threads, args.jobs > 1)
                       for key in todo]
            for f in futures:
                f.result()
        written = {}
        for (ds, t), folder in tables.items():
            sub = {(name, s): plans[(ds, t, name, s)] for name, _ in rows for s in seeds}
            written[(ds, t)] = write_table(rows, seeds, ds, sub, folder, (args.jobs, threads))
    except (config.ConfigError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if several:
        summary = budgets_summary({(ds, tab["_meta"]["steps"]): tab for (ds, _), tab in written.items()})
        (out / "budgets.md").write_text(budgets_markdown(summary, data_seeds, seeds))
        (out / "budgets.json").write_text(json.dumps(summary, indent=2))
        plots.plot_budgets(summary, out / "budgets.png")
        print((out / "budgets.md").read_text())
    if args.write_reference:
        tab = written[(data_seeds[0], budgets[0])]
        results = {k: v for k, v in tab.items() if not k.startswith("_")}
        band = json.loads(REFERENCE.read_text()).get("band") if REFERENCE.is_file() else None  # bench/band.py's
        REFERENCE.write_text(json.dumps(dict(results=results, **tab["_meta"], **({"band": band} if band else {})), indent=2))
        print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
