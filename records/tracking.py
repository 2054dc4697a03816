"""What train.py's loop records, behind four calls: the run folder, the per-step sums, the logs, the checkpoints.

    rec = Tracker(cfg, run, resumed, sizes, counts, test_cases, world, rank)   # run folder, config.json, log.txt
    for step in rec.progress(start):        # the tqdm bar over [start, T)
        ...
        rec.add(out, step)                  # every step: running sums and the first non-finite step, on the device
        rec.log(done)                       # every --log-every steps: the one host sync (FloatingPointError on a
                                            #   non-finite loss), a metrics.csv row, TensorBoard, the bar's numbers
        rec.evaluated(done, res, ub)        # every --eval-every steps: evals.csv, TensorBoard, curves.png,
                                            #   best_test_selected_<student>.pt, last.pt (res: the evaluation)
    rec.close()                             # the final printout: the last step's table, the band, test-selected

Only rank 0 writes under torchrun (the others keep their sums and the collective identity check).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
from hardware import distributed
from hardware.speedups import choose_amp
from records import plots
from records.checkpoint import run_checkpoint, save_atomic
from records.config import ConfigError
from records.runlog import METRIC_NAMES, Log, TBLog, dice_table, reference_band, reference_line
from synfoc import Run, lam

CURVES_EVERY_S = 60  # curves.png is redrawn at an evaluation at most once a minute, and always at the last step
STUDENTS = ("unet", "medsam")  # each keeps its own test-selected checkpoint, best_test_selected_<student>.pt
TERMS = ("L_x", "L_u", "L_c", "L_d", "loss")  # the loss terms checked for non-finite values


class Tracker:
    """The run folder's files while training: log.txt, metrics.csv, evals.csv, curves.png, TensorBoard (with
    --tensorboard), best_test_selected_<student>.pt and last.pt; a fresh start clears what an earlier run left."""

    def __init__(self, cfg: dict, run: Run, resumed: bool, sizes: tuple[int, int, int], counts: tuple[int, int, int],
                 test_cases: list, world: int = 1, rank: int = 0):
        self.cfg, self.run, self.test_cases, self.world = cfg, run, test_cases, world
        self.out, self.is_main = Path(cfg["out"]), rank == 0
        self.domains = data.spec(cfg["dataset"])["domains"]
        self.logger = Log(self.out, enabled=self.is_main)
        self.tb = self._open(resumed)
        self.logger.line(("resuming " if resumed else "config ") + json.dumps(cfg))
        if resumed:  # the saved setting continues; bf16 on a CPU that emulates it still warns
            choose_amp(cfg["amp"], run.device.type)
        why = "the resumed run's setting" if resumed else cfg["amp_reason"]
        self.logger.line(f"amp: {cfg['amp']} ({why})")
        (I, R, S), (n_lab, n_unl, n_test) = sizes, counts
        self.logger.line(f"labeled {n_lab} | unlabeled {n_unl} | test {n_test} | I={I} R={R} S={S}")
        dev = run.device
        self.acc = torch.zeros(len(METRIC_NAMES), device=dev)  # running sums on the device: no host sync per step
        self.first_bad = torch.full((), -1, device=dev, dtype=torch.long)
        self.bad_terms = torch.zeros(len(TERMS), device=dev)
        self.lam_acc, self.n_acc = 0.0, 0
        self.best: dict[str, tuple[float, int]] = {}  # {student: (best mean test Dice, its step)}
        self.res: dict = {}
        self.last_dice = float("nan")
        self.t_log = self.t_drawn = time.time()

    def _open(self, resumed: bool) -> TBLog | None:
        """The run folder: created; on a fresh start (--overwrite) emptied of an earlier run's files, config.json
        written. Returns the TensorBoard writer (--tensorboard; ConfigError without the package)."""
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        if not resumed:  # old TensorBoard events would draw a second curve per tag
            shutil.rmtree(self.out / "tb", ignore_errors=True)
        try:
            tb = TBLog(self.out) if self.cfg["tensorboard"] else None  # imports tensorboard: only with the flag
        except ImportError as e:
            raise ConfigError(str(e)) from None
        if not resumed:
            for f in ("log.txt", "metrics.csv", "evals.csv", "last.pt", *(f"best_test_selected_{n}.pt" for n in STUDENTS)):
                (self.out / f).unlink(missing_ok=True)
            data.write_text(self.out / "config.json", json.dumps(self.cfg, indent=2))
        return tb

    def progress(self, start: int) -> tqdm:
        self.bar = tqdm(range(start, self.cfg["steps"]), initial=start, total=self.cfg["steps"], desc=self.out.name,
                        dynamic_ncols=True, disable=not self.is_main)
        return self.bar

    def add(self, o: dict[str, torch.Tensor], step: int) -> None:
        """One step's outputs into the running sums, on the device (no host sync)."""
        terms = torch.stack([o[k] for k in TERMS]).detach()
        bad_now = ~torch.isfinite(terms).all() & (self.first_bad < 0)
        self.first_bad = torch.where(bad_now, torch.full_like(self.first_bad, step + 1), self.first_bad)
        self.bad_terms = torch.where(bad_now, terms, self.bad_terms)
        zero = terms.new_zeros(())
        self.acc += torch.stack([o.get(k, zero).detach().float() for k in METRIC_NAMES])  # "lambda" is added below
        self.lam_acc += lam(step, self.cfg)
        self.n_acc += 1

    def log(self, done: int) -> None:
        """The interval's means: a metrics.csv row (and TensorBoard), the bar's numbers; FloatingPointError when a
        loss was not finite (the host sync of the interval)."""
        if distributed.any_rank(int(self.first_bad) >= 0):
            vals = ", ".join(f"{n}={v:.4g}" for n, v in zip(TERMS, self.bad_terms.tolist()))
            last = self.out / "last.pt"
            msg = (f"non-finite loss at step {int(self.first_bad)} ({vals}); stopping. {last} holds the last good "
                   "checkpoint" + ("" if last.exists() else " (none written yet)"))
            self.logger.line(msg, echo=False)
            raise FloatingPointError(msg)
        vals = dict(zip(METRIC_NAMES, (self.acc / self.n_acc).tolist()), **{"lambda": self.lam_acc / self.n_acc})
        sec = (time.time() - self.t_log) / self.n_acc  # wall time per step, evaluation excluded
        dev = self.run.device
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        self.logger.row(done, vals, sec, mem)
        if self.tb is not None:
            self.tb.scalars(done, vals, sec, mem)
        self.acc.zero_()
        self.lam_acc, self.n_acc = 0.0, 0
        shown = dict(loss=f"{vals['loss']:.3f}", alpha=f"{vals['alpha']:.2f}", s_step=f"{sec:.3g}")
        if mem is not None:
            shown["mem"] = f"{mem:.1f}G"  # the peak allocated since the start (max_memory_allocated)
        if self.last_dice == self.last_dice:  # the last evaluation's test Dice, once there is one (no "nan" before)
            shown["test_dice"] = f"{self.last_dice:.3f}"
        self.bar.set_postfix(**shown)
        self.t_log = time.time()

    def evaluated(self, done: int, res: dict[str, dict[int, float]] | None, ub: dict | None) -> None:
        """An evaluation's records (res: evaluate.evaluate_students' {student: {domain: Dice}}, None off rank 0):
        evals.csv, TensorBoard, curves.png, each student's best_test_selected_<student>.pt, last.pt."""
        if self.world > 1:  # every rank: the collective check that the replicas did not drift apart
            self.logger.line(f"step {done}: the {self.world} ranks hold identical models "
                             f"(fingerprint {distributed.check_identical(self.run):.17g})", echo=False)
        if res is None:
            return
        self.res = res
        mean = {n: float(np.mean(list(r.values()))) for n, r in res.items()}
        self.last_dice = mean["medsam" if "medsam" in mean else "unet"]
        self.logger.eval_rows(done, res, self.domains)
        if self.tb is not None:
            self.tb.dice(done, res, self.domains)
            self.tb.pictures(done, self.run, self.test_cases, ub)
        if done == self.cfg["steps"] or time.time() - self.t_drawn >= CURVES_EVERY_S:  # 1-2 s per drawing
            plots.plot_curves(self.out)  # curves.png: losses, λ, α, Φ, pseudo-label Dice (Fig. 6), test Dice
            self.t_drawn = time.time()
        self.logger.line(f"step {done} test Dice per domain " + json.dumps(
            {n: {self.domains[d - 1]: round(v, 4) for d, v in r.items()} for n, r in res.items()})
            + " mean " + json.dumps({n: round(v, 4) for n, v in mean.items()}))
        for n in [n for n in STUDENTS if n in mean and mean[n] > self.best.get(n, (-1.0, 0))[0]]:
            self.best[n] = (mean[n], done)  # each student's own best step, as the authors keep it
            save_atomic(run_checkpoint(self.run, done, self.best), self.out / f"best_test_selected_{n}.pt")
            self.logger.line(f"step {done} best_test_selected_{n}.pt: mean test Dice of the {n} student {mean[n]:.4f} "
                             "(selected ON THE TEST SETS: the authors' protocol, the paper's numbers)", echo=False)
        save_atomic(run_checkpoint(self.run, done, self.best), self.out / "last.pt")
        self.t_log = time.time()  # the next interval's seconds per step exclude the evaluation

    def close(self) -> None:
        """The final printout (the last evaluation's table with the measured band, each student's test-selected
        Dice, the same budget's baselines) and the TensorBoard writer closed."""
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if not self.res:
            return
        band, band_line = reference_band(self.cfg)
        self.logger.line("final per-domain mean Dice (%) of the students, last step:\n"
                         + dice_table(self.res, self.domains, band) + (f"\n{band_line}" if band else ""))
        self.logger.line("test-selected (each student's best mean test Dice over the evaluations, as the paper "
                         "reports): " + ", ".join(f"{n} {100 * d:.2f} at step {t}" for n, (d, t) in self.best.items())
                         + " (best_test_selected_<student>.pt)")
        ref = reference_line(self.cfg)
        if ref:
            self.logger.line(ref)


__all__ = ["Tracker", "CURVES_EVERY_S", "STUDENTS"]
