"""SynFoC training: a MedSAM (LoRA) and a U-Net, trained together as mutual teachers (CVPR 2025).

Commands
    python train.py --dataset synthetic                        # embedded default: CPU, LiteMedSAM, synthetic data
    python train.py --dataset fundus --domain 1                # paper setting (GPU): MedSAM ViT-B at 512
    python train.py --dataset fundus --domain 1 --dry-run      # the plan, its memory, what is missing; no training
    python train.py --dataset prostate --domain 4 --sam-ckpt /path/medsam_vit_b.pth
    python train.py --dataset busi --domain 1 --labeled-ratio 0.25
    python train.py --dataset path/to/my_set --domain 2       # your own set: a folder holding dataset.json
    python train.py --dataset fundus --domain 1 --tensorboard # + TensorBoard events in runs/<name>/tb
    python train.py --dataset prostate --domain 1 --mode unet  # Table 7 "Base U-Net" (Mean Teacher + intermediate samples)
    python train.py --dataset prostate --domain 1 --mode medsam   # Table 7 "Base MedSAM"
    python train.py --dataset fundus --domain 1 --mode suponly    # "SupOnly": labeled images only, U-Net
    python train.py --dataset fundus --domain 1 --alpha cps       # Table 8: const, linear, self, mutual, cps (own: Table 7)
    python train.py --dataset fundus --domain 1 --reg cr          # Table 7: cdcr (default), cr, none
    python train.py --dataset fundus --domain 1 --dice-mask all   # W on every Dice channel (default fg: the authors')
    python train.py --dataset synthetic --pseudo-labels oracle    # diagnostic: ground truth as pseudo-labels (ceiling)
    python train.py --resume runs/fundus_d1_synfoc                # continue a killed run exactly
    torchrun --nproc_per_node 4 train.py --dataset fundus --domain 1   # 4 GPUs (hardware/distributed.py; --batch is per rank)

This file is the loop, top to bottom: train_step (one iteration: the losses of synfoc.py under autocast,
the scaled backward, both optimisers, the EMA of both teachers; bench/ and the tests run this same function),
then train (set-up, then per step: batch -> train_step -> records -> maybe evaluate and save). Around it:
records/config.py the settings (each declared once, with its flag and default) and --resume's rule,
records/plan.py the prerequisites and --dry-run, data.py the run's batches (data.Batches), records/tracking.py
what the loop writes (logs, curves, checkpoints), evaluate.evaluate_students the periodic evaluation.

Before anything is built, every missing prerequisite (MedSAM weights, each data folder) is named at once with
where to download it, and a MedSAM file whose md5 is not a published one is named in a warning;
`--dry-run` prints the resolved plan (steps, batch, evaluation cadence, sizes, precision, the memory of one
training step counted on fake tensors: hardware/memory.py) with that list and exits.

Run folder runs/<name>/: config.json, log.txt, metrics.csv (every --log-every steps), evals.csv (step,
model, domain, dice of every periodic evaluation), last.pt (every --eval-every steps, after evaluating
both students in fp32 on every domain's test split, as the authors' test()), curves.png (at an evaluation at
most once a minute, and at the last step), best_test_selected_<student>.pt for each student (unet, medsam):
the step of its best mean test Dice, the authors' protocol and the paper's reported numbers (selected on the
test sets: optimistic), tb/ (with --tensorboard; a fresh start or --overwrite clears it). The final printout
gives the last step's table and each student's test-selected Dice with its step.
Checkpoints are plain dicts (torch.load(p, weights_only=True)) written atomically; --resume continues
exactly (the same per-step losses and final weights as an uninterrupted run; tested on CPU). metrics.csv
columns: loss, L_x, L_u, L_c, L_d (with --reg cr the plain MSE term is logged as L_c), λ, mean α, Φself, Φmut,
the pseudo-label mask ratio and the Dice of the SAM-teacher,
U-Net-teacher and ensemble pseudo-labels against the unlabeled ground truth (paper Fig. 6), and the wall
seconds per step (evaluation excluded) and on CUDA the peak allocated memory so far (GiB; both also on the
progress bar); a column a mode or a burn-in step does not compute is 0.
Before step 0 every mask of the train and test splits is decoded once (data.check_masks, the checks of data.py
check): an unmapped value or a mask/image size mismatch is one error line, exit 2.
A dataset.json set (docs/datasets.md) is its own data root; its "train" field gives the defaults the flags
override, and config.json / the checkpoints carry its whole description (dataset_description), so evaluate.py
and predict.py (also on NIfTI volumes, with the set's intensity rule) work without the folder's dataset.json.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

import data
from evaluate import evaluate_students
from hardware import distributed
from hardware.speedups import ema_foreach
from records.checkpoint import restore
from records.cli import one_line_errors
from records.config import ConfigError, parse_args, setup
from records.plan import dry_run, require
from records.tracking import Tracker
from synfoc import Run, build_run, ema_update, training_losses


def train_step(run: Run, lb: dict, ub: dict | None, M_S: Tensor | None, step: int) -> dict[str, Tensor]:
    """One training iteration: the losses (synfoc.training_losses: stages 2-7, or L_x alone in the burn-in)
    under autocast, then update (stage 8). Returns the losses and monitoring values (0-dim device tensors)."""
    with run.amp():                                        # autocast: fp16 on CUDA (the authors'), off on a CPU
        out = training_losses(run, lb, ub, M_S, step)      # forwards in the autocast dtype, every loss in fp32
    update(run, out["loss"], step)
    return out


def update(run: Run, loss: Tensor, step: int) -> None:
    """Stage 8: one scaled backward, both optimisers, the EMA of both teachers."""
    for opt in run.optims:
        opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()                      # GradScaler: fp16's loss scaling (disabled otherwise)
    if run.sync is not None:
        run.sync(run)                                      # torchrun: gradients averaged over the ranks
    for opt in run.optims:                                 # SGD (U-Net), AdamW (SAM's LoRA and decoder)
        run.scaler.step(opt)                               # unscales; skips the step if a gradient is not finite
    run.scaler.update()
    decay = min(1.0 - 1.0 / (step + 1), run.cfg["ema"])    # the EMA decay ramps up to --ema (official)
    ema = ema_update if run.cfg["plain"] else ema_foreach  # the same average: a loop, or one foreach call
    for teacher, student in run.ema_pairs():
        ema(teacher, student, decay)                       # teacher <- decay teacher + (1 - decay) student


def run_cases(cfg: dict, rank: int) -> tuple[list, list | None, list]:
    """(labeled, unlabeled (None for --mode suponly), test) cases of the run, every mask decoded once before
    step 0: an unmapped value or a wrong size stops the run now, not hours in when the loader first draws it."""
    root = data.dataset_root(cfg) if rank == 0 else None   # rank 0 generates the synthetic set (if needed) first
    distributed.barrier()
    root = root or data.dataset_root(cfg)
    lab, unl = data.split_labeled(cfg["dataset"], root, cfg["domain"], cfg["labeled"], cfg["labeled_ratio"])
    if cfg["mode"] != "suponly" and not unl:  # the unlabeled sampler needs one image
        raise ConfigError(f"--mode {cfg['mode']} is semi-supervised but its {len(lab)} labeled images are every "
                          f"training image of {root}: lower --labeled / --labeled-ratio, or use --mode suponly")
    if cfg["pseudo_labels"] == "oracle" and any(not masks for _, masks, *_ in unl):
        raise ConfigError(f"--pseudo-labels oracle needs a mask for every unlabeled image; {root} has unlabeled "
                          "images without one")
    test = data.test_cases(cfg["dataset"], root)
    if cfg["test_limit"]:
        test = [c for d in sorted({c[2] for c in test}) for c in [c for c in test if c[2] == d][: cfg["test_limit"]]]
    problems = data.check_masks(cfg["dataset"], lab + unl + test)  # the same decoding and messages as data.py check
    if problems:
        raise data.DataError(f"{len(problems)} mask problem(s) (python data.py check --dataset {cfg['dataset']} "
                             f"lists them all), the first: {problems[0]}")
    return lab, (unl if cfg["mode"] != "suponly" else None), test


def train(argv: list[str] | None = None, stop_at: int | None = None) -> Path | None:
    """Run (or resume) one training; returns the run folder. stop_at: end after that step as if killed (tests).
    --dry-run prints the plan and returns None."""
    given = parse_args(argv)
    if given.pop("dry_run", False):
        return dry_run(given, train_step)
    cfg, ck = setup(given)                          # flags > the dataset's defaults > records/config.Settings
    require(cfg)                                    # every missing input at once, before minutes of model building
    rank, world, cfg["device"] = distributed.init(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    run = build_run(cfg, cfg["device"])             # students, EMA teachers, SGD + AdamW, GradScaler (synfoc.py)
    run.sync = distributed.sync_run if world > 1 else None
    if ck is not None and ck["config"]["world_size"] != world:
        raise ConfigError(f"--resume: the run was trained by {ck['config']['world_size']} process(es), this is {world}; "
                          "resume with the same torchrun --nproc_per_node (the batches are keyed by the rank)")
    # SAM input / logit sizes; without SAM the SAM views are never used, so keep them at S (cheap).
    S = cfg["unet_size"]
    I, R = (run.sam.image_size, run.sam.logit_size) if run.sam is not None else (S, S)
    cfg.update(sam_size=I, sam_logit_size=R, world_size=world)
    lab, unl, test = run_cases(cfg, rank)
    rec = Tracker(cfg, run, ck is not None, (I, R, S), (len(lab), len(unl or []), len(test)), test, world, rank)
    start, rec.best = restore(run, ck) if ck is not None else (0, {})
    batches = data.Batches(cfg, lab, unl, (I, R, S), start, run.device, (rank,) if world > 1 else ())
    T, every = cfg["steps"], cfg["eval_every"]
    for step in rec.progress(start):                # the tqdm bar over [start, T)
        lb, ub, M_S = batches.next(step)            # labeled weak; unlabeled weak + strong; the Eq. 1 boxes M
        out = train_step(run, lb, ub, M_S, step)    # autocast forward and losses, scaled backward, optimisers, EMA
        rec.add(out, step)                          # running sums on the device: no host sync per step
        done = step + 1
        if done % cfg["log_every"] == 0 or done % every == 0 or done == T or done == stop_at:
            rec.log(done)                           # the interval's host sync: metrics.csv, non-finite check
        if done % every == 0 or done == T:          # both students in fp32 on every test split (authors' test())
            res = evaluate_students(run, test, cfg) if rank == 0 else None
            rec.evaluated(done, res, ub)            # evals.csv, curves.png, best_test_selected_*.pt, last.pt
        if stop_at is not None and done >= stop_at:
            break
    rec.close()                                     # the final table, the measured band, test-selected Dice
    distributed.close()
    return Path(cfg["out"])


def main(argv: list[str] | None = None) -> None:
    with one_line_errors(ConfigError, FloatingPointError):  # a user mistake or a diverged run: one line, exit 2
        # SYNFOC_STOP_AT=k ends after step k as if killed (the multi-process resume test)
        train(argv, stop_at=int(os.environ["SYNFOC_STOP_AT"]) if "SYNFOC_STOP_AT" in os.environ else None)


if __name__ == "__main__":
    main()
