"""The records a training run (train.py) writes in its run folder: log.txt, metrics.csv and evals.csv, the
closing summary, and with --tensorboard the same numbers plus pictures as TensorBoard events.

    log = Log(Path(cfg["out"]), enabled=rank == 0)  # appends, so a resumed run continues the same files
    log.line("message")                             # log.txt, time-stamped; echoed through tqdm unless echo=False
    log.row(step, values, seconds_per_step)         # metrics.csv: values {name: float} for every METRIC_NAMES
    log.eval_rows(step, res, domains)               # evals.csv: one row per (model, domain); res from
                                                    #   evaluate.evaluate_students: {model: {domain: Dice}}
    dice_table(res, domains, band)                  # per-domain mean Dice (%) of each student, as text
    band, line = reference_band(cfg)                # the Quick start's measured band (bench/band.py) or None
    reference_line(cfg)                             # the same budget's baselines (bench/table7.py) or ""
    tb = TBLog(out); tb.scalars(...); tb.dice(...); tb.pictures(step, run, test_cases, ub); tb.close()

metrics.csv: step, METRIC_NAMES, s_per_step, peak_mem_gib (CUDA; the columns are listed in train.py's docstring); evals.csv:
step, model, domain, dice. Only rank 0 writes under torchrun (enabled=False elsewhere).

TensorBoard (`python train.py ... --tensorboard`; `tensorboard --logdir runs/` shows every run folder's tb/):
   Written to <run folder>/tb/ by rank 0:
       train/<name>               every metrics.csv column (loss, L_x, L_u, L_c, L_d, lambda, alpha, phi_self, phi_mut,
                                  mask_ratio, dice_*_teacher, dice_ensemble, s_per_step, peak_mem_gib), every --log-every steps
       test_dice/<model>/<domain> each student's mean test Dice per domain at every evaluation (+ .../mean)
       test/<domain>/<name>       at every evaluation, one test image of each of up to 4 domains as one strip:
                                  image | ground truth | SAM student | U-Net student (classes painted translucent);
                                  the one with the most foreground of 16 spread over the domain's test split (chosen
                                  once; the first slice of a volume is usually empty)
       unlabeled/pseudo_labels    the step's unlabeled weak views | their ensemble pseudo-labels (Eq. 3, 7; pixels
                                  below the confidence threshold tau greyed) | ground truth (monitoring only)
   The tensorboard package is needed only with the flag (import here, when the writer is made); without it
   train.py stops with one line. The pseudo-label picture re-runs the teachers on the step's batch with every
   buffer (BatchNorm statistics) restored afterwards, so a run with --tensorboard trains exactly as one without.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import smc
from hardware.speedups import capability_line
from records.checkpoint import predict
from records.plots import PALETTE, overlay
from synfoc import Run, teachers

METRIC_NAMES = ["loss", "L_x", "L_u", "L_c", "L_d", "lambda", "alpha", "phi_self", "phi_mut", "mask_ratio",
                "dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"]
# the settings that define "the same budget" for the reference train.py prints (every one must match). Not "amp":
# fp32 and native bf16 differ by rounding (as threads do); the printed line names the reference's precision.
BUDGET_KEYS = ("steps", "burn_in", "batch", "lr_sam", "lr_unet", "ema", "tau", "rank", "sam", "lite_size",
               "head_init", "sam_norm", "unet_norm", "unet_layer", "unet_width", "unet_size", "labeled", "domain",
               "seed", "data_seed", "dice_mask")
REFERENCE = Path(__file__).resolve().parents[1] / "bench" / "synthetic_reference.json"  # written by bench/table7.py


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
        if not new:  # a run resumed from a version with fewer columns keeps its file's columns
            with open(path, newline="") as f:
                have = next(csv.reader(f), header)
            if have != header and set(have) <= set(header):
                rows = [[dict(zip(header, r))[k] for k in have] for r in rows]
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerows(rows)

    def row(self, step: int, values: dict, sec: float, mem_gib: float | None = None) -> None:
        """mem_gib: the peak allocated GPU memory so far (torch.cuda.max_memory_allocated); nan on a CPU."""
        self._append(self.csv, ["step", *METRIC_NAMES, "s_per_step", "peak_mem_gib"],
                     [[step, *(f"{values[k]:.6g}" for k in METRIC_NAMES), f"{sec:.3g}",
                       "nan" if mem_gib is None else f"{mem_gib:.3g}"]])

    def eval_rows(self, step: int, res: dict[str, dict[int, float]], domains: list[str]) -> None:
        self._append(self.evals, ["step", "model", "domain", "dice"],
                     [[step, n, domains[d - 1], f"{v:.6g}"] for n, r in res.items() for d, v in r.items()])


def dice_table(res: dict[str, dict[int, float]], domains: list[str], band: dict | None = None) -> str:
    """Per-domain mean Dice (%) of each student as a small text table; with `band` (reference_band), each
    student's column is followed by the band's min-max of the same cell."""
    names = list(res)

    def cell(n: str, key: str, v: float) -> str:
        b = band["students"].get(n, {}).get(key) if band else None
        return f"{v:>10.2f}" + ("" if not band else f"{b['min']:>7.1f}-{b['max']:<5.1f}" if b else f"{'':>13}")
    rows = [f"{'domain':<14}" + "".join(f"{n:>10}" + (f"{'band':>11}{'':2}" if band else "") for n in names)]
    for d, dname in enumerate(domains, 1):
        rows.append(f"{dname:<14}" + "".join(cell(n, dname, 100 * res[n].get(d, float("nan"))) for n in names))
    rows.append(f"{'mean':<14}" + "".join(cell(n, "mean", 100 * np.mean(list(res[n].values()))) for n in names))
    return "\n".join(r.rstrip() for r in rows)


def _reference(cfg: dict) -> dict:
    """bench/synthetic_reference.json for a SynFoC run of the synthetic set, {} for any other run or without it."""
    if cfg["dataset"] != "synthetic" or cfg["mode"] != "synfoc" or not REFERENCE.is_file():
        return {}
    return json.loads(REFERENCE.read_text())


def cpu_family(capability: str) -> str:
    """The CPU model and ISA level of a capability line ("AMD EPYC | AVX2 | bf16 ..." -> "AMD EPYC | AVX2")."""
    return " | ".join(capability.split(" | ")[:2])


def reference_band(cfg: dict) -> tuple[dict | None, str]:
    """(the band bench/band.py recorded for this run's budget and precision, preferring this CPU's family; a line
    that says what it is), or (None, "") when none was measured for this budget."""
    entries = [e for e in _reference(cfg).get("band", []) if all(cfg.get(k) == v for k, v in e["budget"].items())]
    if not entries:
        return None, ""
    here = cpu_family(capability_line("cpu"))
    same = [e for e in entries if cpu_family(e["cpu"]) == here and e["amp"] == cfg["amp"]]
    e = (same or entries)[0]
    where = cpu_family(e["cpu"])
    line = (f"band: min-max of the last step over training seeds {', '.join(map(str, e['seeds']))} on {where}, "
            f"{'fp32' if e['amp'] == 'off' else e['amp']} ({e['date']}, bench/band.py); " +
            ("a run inside it is working" if same else
             f"this CPU ({here}, {'fp32' if cfg['amp'] == 'off' else cfg['amp']}) is not measured: expect other numbers")
            + (f"; also measured: {'; '.join(cpu_family(o['cpu']) for o in entries if o is not e)}"
               if len(entries) > 1 else ""))
    return e, line


def reference_line(cfg: dict) -> str:
    """The baselines of the same budget measured by bench/table7.py (bench/synthetic_reference.json), as a few
    lines, when this run's budget is the one measured there; "" otherwise."""
    ref = _reference(cfg)
    if not ref or any(cfg.get(k) != ref["budget"].get(k) for k in BUDGET_KEYS):
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


# ----------------------------------------------------------------------------- TensorBoard
N_PICTURES = 4  # test domains drawn per evaluation
PICK_FROM = 16  # test cases per domain looked at, once, to choose the drawn one


def writer(out: Path):
    """A SummaryWriter on out/tb; ImportError with the install line when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard==2.21.0 "
                          "(pinned in requirements.txt)") from None
    return SummaryWriter(log_dir=str(out / "tb"))


def _uint8(img: torch.Tensor) -> np.ndarray:
    """float [C,H,W] in [0,1] -> uint8 [H,W,3]."""
    a = (img.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def shown_cases(dataset: str, test_cases: list) -> list:
    """Per domain (up to N_PICTURES) the test case drawn: of PICK_FROM cases spread evenly over the domain's
    test split, the one with the largest foreground fraction (the first on ties)."""
    shown = []
    for d in sorted({c[2] for c in test_cases})[:N_PICTURES]:
        own = [c for c in test_cases if c[2] == d]
        spread = np.linspace(0, len(own) - 1, min(len(own), PICK_FROM)).round().astype(int)
        picks = [own[i] for i in sorted(set(spread.tolist()))]
        fg = [float(np.mean(data.load_case(dataset, c[0], c[1])[1] > 0)) for c in picks]
        shown.append(picks[int(np.argmax(fg))])
    return shown


def _labels(label: np.ndarray, grey: np.ndarray | None = None) -> np.ndarray:
    """int class ids [H,W] -> uint8 [H,W,3] in the overlay palette; `grey` (bool) pixels drawn grey."""
    rgb = PALETTE[np.minimum(label, len(PALETTE) - 1)].astype(np.uint8)
    if grey is not None:
        rgb[grey] = 128
    return rgb


class TBLog:
    """The TensorBoard side of Log: scalars, per-domain Dice, pictures."""

    def __init__(self, out: Path):
        self.w = writer(out)
        self.shown: list | None = None  # the test cases drawn, chosen at the first evaluation

    def scalars(self, step: int, values: dict[str, float], sec: float, mem_gib: float | None = None) -> None:
        """Every metrics.csv column (peak_mem_gib: NaN on a CPU, as in the CSV)."""
        for k, v in {**values, "s_per_step": sec, "peak_mem_gib": float("nan") if mem_gib is None else mem_gib}.items():
            self.w.add_scalar(f"train/{k}", float(v), step)

    def dice(self, step: int, res: dict[str, dict[int, float]], domains: list[str]) -> None:
        for model, r in res.items():
            for d, v in r.items():
                self.w.add_scalar(f"test_dice/{model}/{domains[d - 1]}", v, step)
            self.w.add_scalar(f"test_dice/{model}/mean", float(np.mean(list(r.values()))), step)

    @torch.no_grad()
    def pictures(self, step: int, run: Run, test_cases: list, ub: dict | None) -> None:
        """Test strips (image | GT | SAM | U-Net) and the unlabeled batch's pseudo-labels (module docstring)."""
        cfg, S = run.cfg, run.cfg["unet_size"]
        domains = data.spec(cfg["dataset"])["domains"]
        if self.shown is None:
            self.shown = shown_cases(cfg["dataset"], test_cases)
        ds = data.TestSet(cfg["dataset"], self.shown, cfg["sam_size"], unet_size=S)
        models = {n: m for n, m in (("medsam", run.sam), ("unet", run.unet)) if m is not None}
        for m in models.values():
            m.eval()
        for item in ds:
            preds = predict(models, item["img_unet"][None].to(run.device), item["img_sam"][None].to(run.device), S,
                            run.amp_dtype)
            img, gt = _uint8(item["img_unet"]), item["label_unet"].numpy()
            strip = [img, overlay(img, gt)] + [overlay(img, preds[n][0].cpu().numpy()) for n in ("medsam", "unet")
                                                 if n in preds]
            self.w.add_image(f"test/{domains[item['domain'] - 1]}/{item['name']}", np.concatenate(strip, axis=1),
                             step, dataformats="HWC")
        for m in models.values():
            m.train()
        if ub is not None and run.sam is not None and run.unet is not None and cfg["mode"] == "synfoc":
            self.w.add_image("unlabeled/pseudo_labels", self._pseudo(run, ub, step), step, dataformats="HWC")
        self.w.flush()

    def _pseudo(self, run: Run, ub: dict, step: int) -> np.ndarray:
        """Rows of weak view | pseudo-label (greyed below tau) | GT for the step's unlabeled batch, uint8 [H,W,3]."""
        mods = [m for m in (run.unet, run.unet_t, run.sam, run.sam_t) if m is not None]
        saved = [{k: b.clone() for k, b in m.named_buffers()} for m in mods]  # BatchNorm statistics move in train mode
        with run.amp():  # the training step's autocast (train.train_step)
            t = teachers(run, ub, step)
        q, w = smc.pseudo_label(smc.ensemble(t["p_ut"], t["p_ms"], t["a_unet"]), run.cfg["tau"])  # [B,S,S] each
        for m, buf in zip(mods, saved):
            for k, b in m.named_buffers():
                b.copy_(buf[k])
        rows = [np.concatenate([_uint8(ub["weak_unet"][i]), _labels(q[i].cpu().numpy(), w[i].cpu().numpy() < 1),
                                _labels(ub["label_unet"][i].cpu().numpy())], axis=1) for i in range(q.shape[0])]
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        self.w.close()
