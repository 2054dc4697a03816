"""The logs of a training run (train.py) in its run folder: log.txt, metrics.csv and evals.csv, the periodic
evaluation of both students behind evals.csv, and the closing summary.

    log = Log(Path(cfg["out"]), enabled=rank == 0)  # appends, so a resumed run continues the same files
    log.line("message")                             # log.txt, time-stamped; echoed through tqdm unless echo=False
    log.row(step, values, seconds_per_step)         # metrics.csv: values {name: float} for every METRIC_NAMES
    res = evaluate_students(run, test_cases, cfg)   # {"unet" | "medsam": {domain (1-based): mean Dice}}
    log.eval_rows(step, res, domains)               # evals.csv: one row per (model, domain)
    dice_table(res, domains)                        # per-domain mean Dice (%) of each student, as text
    reference_line(cfg)                             # the same budget's baselines (bench/table7.py) or ""

metrics.csv: step, METRIC_NAMES, s_per_step (the columns are listed in train.py's docstring); evals.csv:
step, model, domain, dice. Only rank 0 writes under torchrun (enabled=False elsewhere). Imports go one way:
train.py imports this file, never the reverse.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data
import evaluate
from synfoc import Run

METRIC_NAMES = ["loss", "L_x", "L_u", "L_c", "L_d", "lambda", "alpha", "phi_self", "phi_mut", "mask_ratio",
                "dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"]
# the settings that define "the same budget" for the reference train.py prints (every one must match). Not "amp":
# fp32 and native bf16 differ by rounding (as threads do); the printed line names the reference's precision.
BUDGET_KEYS = ("steps", "burn_in", "batch", "lr_sam", "lr_unet", "ema", "tau", "rank", "sam", "lite_size",
               "head_init", "sam_norm", "unet_norm", "unet_layer", "unet_width", "unet_size", "labeled", "domain",
               "seed", "data_seed", "dice_mask")
REFERENCE = Path(__file__).resolve().parent / "bench" / "synthetic_reference.json"  # written by bench/table7.py


def evaluate_students(run: Run, cases: list, cfg: dict) -> dict[str, dict[int, float]]:
    """Mean Dice (over slices, then parts) per domain of each student on `cases`, with evaluate.py's code
    (the paper's metrics). Returns {model: {domain (1-based): Dice}}."""
    models = {n: m for n, m in (("unet", run.unet), ("medsam", run.sam)) if m is not None}
    for m in models.values():
        m.eval()
    _, summaries = evaluate.evaluate_cases(models, cfg["dataset"], cases, cfg, run.device,
                                           batch_size=max(cfg["batch"]), workers=cfg["workers"], amp=run.amp_dtype)
    for m in models.values():
        m.train()
    domains = data.spec(cfg["dataset"])["domains"]
    return {n: {domains.index(d) + 1: v for d, v in r.items() if d != "mean"}
            for n, r in evaluate.mean_dice(summaries).items()}


class Log:
    """log.txt (human), metrics.csv (one row per logging interval), evals.csv (one row per evaluation,
    model and domain); all appended, so resume continues them."""

    def __init__(self, out: Path, enabled: bool = True):
        self.txt, self.csv, self.evals = out / "log.txt", out / "metrics.csv", out / "evals.csv"
        self.enabled = enabled  # only rank 0 writes under torchrun

    def line(self, msg: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        with open(self.txt, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if echo:
            tqdm.write(msg)

    def _append(self, path: Path, header: list[str], rows: list[list]) -> None:
        if not self.enabled:
            return
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerows(rows)

    def row(self, step: int, values: dict, sec: float) -> None:
        self._append(self.csv, ["step", *METRIC_NAMES, "s_per_step"],
                     [[step, *(f"{values[k]:.6g}" for k in METRIC_NAMES), f"{sec:.3g}"]])

    def eval_rows(self, step: int, res: dict[str, dict[int, float]], domains: list[str]) -> None:
        self._append(self.evals, ["step", "model", "domain", "dice"],
                     [[step, n, domains[d - 1], f"{v:.6g}"] for n, r in res.items() for d, v in r.items()])


def dice_table(res: dict[str, dict[int, float]], domains: list[str]) -> str:
    """Per-domain mean Dice (%) of each student as a small text table."""
    names = list(res)
    rows = [f"{'domain':<14}" + "".join(f"{n:>10}" for n in names)]
    for d, dname in enumerate(domains, 1):
        rows.append(f"{dname:<14}" + "".join(f"{100 * res[n].get(d, float('nan')):>10.2f}" for n in names))
    rows.append(f"{'mean':<14}" + "".join(f"{100 * np.mean(list(res[n].values())):>10.2f}" for n in names))
    return "\n".join(rows)


def reference_line(cfg: dict) -> str:
    """The baselines of the same budget measured by bench/table7.py (bench/synthetic_reference.json), as a few
    lines, when this run's budget is the one measured there; "" otherwise."""
    if cfg["dataset"] != "synthetic" or cfg["mode"] != "synfoc" or not REFERENCE.is_file():
        return ""
    ref = json.loads(REFERENCE.read_text())
    if any(cfg.get(k) != ref["budget"].get(k) for k in BUDGET_KEYS):
        return ""
    doms = data.PRESETS["synthetic"]["domains"]
    amp = ref.get("amp", ref["budget"].get("amp", "off"))  # the precision the reference trained in
    lines = [f"the same budget's baselines, measured by bench/table7.py on {ref['date']} ({ref['machine']}; "
             f"{'fp32' if amp == 'off' else amp}; data seed {ref['data_seed']}, training seed {ref['seed']}), "
             "mean Dice (%):"]
    for row, models in ref["results"].items():
        for model, r in models.items():
            lines.append(f"  {row + ' (' + model + ')':<26}" + "".join(f"{d} {100 * r[d]:5.1f}  " for d in doms)
                         + f"mean {100 * r['mean']:5.1f}")
    return "\n".join(lines)

