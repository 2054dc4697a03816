"""A synthetic Table 7 in one command: SupOnly < Base U-Net < Base MedSAM < SynFoC, on data anyone can generate.

    python bench/table7.py                                  # data seed 1, the embedded default budget
    python bench/table7.py --data-seed 2 --out runs/table7_s2
    python bench/table7.py --all                            # + Table 7's ablation rows and Table 8 (alpha, with --reg none)
    python bench/table7.py --data-seed 0 --write-reference  # the labeled-only reference train.py prints

Each row trains `train.py --dataset synthetic --data-seed N [--steps T] <row flags>` (the synthetic preset
otherwise), then evaluates the run's last.pt on every domain's FULL test split with evaluate.py's code
(evaluate.evaluate_cases: per-slice Dice, mean over parts, then per domain). Written to --out
(default runs/table7_s<N>):
    table7.md    mean Dice (%) per domain and the mean, per row and student, with each row's wall time
    table7.json  {row: {model: {domain: Dice, ..., "mean": Dice}}} (fractions) + "_meta" (flags, times, machine)
    table7.png   per-domain bars per row, and the pseudo-label Dice of the SAM teacher, the U-Net teacher and
                 the ensemble vs step from each run's metrics.csv (the paper's Fig. 6)
Rows: SupOnly (--mode suponly), Base U-Net (--mode unet), Base MedSAM (--mode medsam), SynFoC. With --all:
SynFoC with CR (--reg cr), Base+SMC (--reg none), CDCR without SMC (--alpha own), and Table 8's alpha
strategies const / linear / self / mutual / cps with --reg none (Table 8's SMC row is the Base+SMC row).
Runs that already finished (a last.pt at their final step) are reused, so an interrupted table resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
import plots  # noqa: E402
import predict  # noqa: E402
import train  # noqa: E402
from checkpoint import build_students, load_checkpoint  # noqa: E402
from runlog import REFERENCE  # noqa: E402  (the reference file train.py prints from)

MAIN_ROWS = [("SupOnly", ["--mode", "suponly"]), ("Base U-Net", ["--mode", "unet"]),
             ("Base MedSAM", ["--mode", "medsam"]), ("SynFoC", [])]
ALL_ROWS = [("SynFoC w/ CR", ["--reg", "cr"]), ("Base+SMC (no CDCR)", ["--reg", "none"]),
            ("CDCR w/o SMC", ["--alpha", "own"])] + \
           [(f"Table 8: {a}", ["--reg", "none", "--alpha", a]) for a in ("const", "linear", "self", "mutual", "cps")]
# the settings that define "the same budget" for the reference train.py prints
BUDGET_KEYS = ("steps", "burn_in", "batch", "lr_sam", "lr_unet", "ema", "tau", "rank", "sam", "lite_size",
               "head_init", "sam_norm", "unet_norm", "unet_layer", "unet_width", "amp", "labeled", "domain",
               "seed", "data_seed")


def run_row(name: str, flags: list[str], args: argparse.Namespace, out: Path) -> tuple[Path, float]:
    """Train one row (or reuse a finished run); returns (run folder, wall seconds of the training)."""
    folder = out / re.sub(r"[^\w-]+", "_", name).strip("_")  # "Base U-Net" -> Base_U-Net
    argv = ["--dataset", "synthetic", "--data-seed", str(args.data_seed), "--seed", str(args.seed),
            "--data-root", args.data_root, "--out", str(folder), *flags, *args.train_args]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if (folder / "last.pt").is_file():
        ck = load_checkpoint(folder)
        if ck["step"] == ck["config"]["steps"]:
            print(f"[table7] {name}: reusing {folder} (finished)")
            return folder, json.loads((folder / "wall.json").read_text())["seconds"] if (folder / "wall.json").exists() else float("nan")
        argv = ["--resume", str(folder)]
    elif folder.exists():
        argv.append("--overwrite")
    print(f"[table7] {name}: python train.py {' '.join(argv)}")
    t0 = time.time()
    train.train(argv)
    sec = time.time() - t0
    (folder / "wall.json").write_text(json.dumps(dict(seconds=sec)))
    return folder, sec


def evaluate_run(folder: Path) -> dict[str, dict[str, float]]:
    """Both students of a run's last.pt on every domain's full test split -> {model: {domain: Dice, "mean": Dice}}."""
    ck = load_checkpoint(folder)
    cfg = ck["config"]
    device = torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")
    want = [n for n, k in (("medsam", "sam"), ("unet", "unet")) if ck.get(k) is not None]
    models = build_students(ck, device, want, None)
    root = train.dataset_root(cfg)
    amp = predict.amp_dtype(cfg["amp"], cfg, device)  # the training setting, as train.py evaluates
    _, summaries = evaluate.evaluate_cases(models, cfg["dataset"], data.test_cases(cfg["dataset"], root), cfg, device,
                                           batch_size=max(cfg["batch"]), amp=amp)
    return {n: {**{d: e["dice"] for d, e in s["domains"].items()}, "mean": s["mean"]["dice"]}
            for n, s in summaries.items()}


def markdown(results: dict, walls: dict, domains: list[str], title: str) -> str:
    lines = [f"## {title}", "", "| row | student | " + " | ".join(domains) + " | mean | train time |",
             "|---|---|" + "---|" * (len(domains) + 2)]
    for row, models in results.items():
        for model, r in models.items():
            lines.append(f"| {row} | {model} | " + " | ".join(f"{100 * r[d]:.1f}" for d in domains)
                         + f" | **{100 * r['mean']:.1f}** | {walls[row] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Synthetic Table 7 (see the module docstring).")
    p.add_argument("--data-seed", type=int, default=1, help="generator seed of the synthetic set (default 1; "
                                                             "0 is the embedded default's data)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every row (default 0)")
    p.add_argument("--steps", type=int, help="training steps of every row (default: the synthetic preset)")
    p.add_argument("--out", help="output folder (default runs/table7_s<data-seed>)")
    p.add_argument("--data-root", default="data", help="folder of the generated sets (default data)")
    p.add_argument("--all", action="store_true", help="also Table 7's ablation rows and Table 8's alpha strategies")
    p.add_argument("--write-reference", action="store_true",
                   help=f"write {REFERENCE.relative_to(ROOT)}: the rows' Dice and the budget, printed by train.py "
                        "at the end of a run with the same budget")
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this flag goes to every train.py call (e.g. --sam tiny for tests)")
    args = p.parse_args(argv)
    out = Path(args.out or f"runs/table7_s{args.data_seed}")
    out.mkdir(parents=True, exist_ok=True)
    rows = MAIN_ROWS + (ALL_ROWS if args.all else [])
    results, walls, folders = {}, {}, {}
    try:
        for name, flags in rows:
            folders[name], walls[name] = run_row(name, flags, args, out)
            results[name] = evaluate_run(folders[name])
            print(f"[table7] {name}: " + ", ".join(f"{m} mean {100 * r['mean']:.1f}" for m, r in results[name].items()))
    except (train.ConfigError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    domains = data.PRESETS["synthetic"]["domains"]
    cfg = load_checkpoint(folders["SynFoC"])["config"]
    meta = dict(data_seed=args.data_seed, seed=args.seed, steps=cfg["steps"], rows={n: f for n, f in rows},
                train_seconds=walls, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, "
                + ("CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
                date=time.strftime("%Y-%m-%d"), budget={k: cfg.get(k) for k in BUDGET_KEYS})
    title = f"Synthetic Table 7 — data seed {args.data_seed}, {cfg['steps']} steps, mean Dice (%) on the full test split"
    (out / "table7.md").write_text(markdown(results, walls, domains, title))
    (out / "table7.json").write_text(json.dumps(dict(results, _meta=meta), indent=2))
    plots.plot_table7(results, {n: folders[n] for n in results}, out / "table7.png")
    print((out / "table7.md").read_text())
    if args.write_reference:
        REFERENCE.write_text(json.dumps(dict(results=results, **meta), indent=2))
        print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
