"""Before a run starts: what it needs, what one step costs, and the plan `python train.py ... --dry-run` prints.

    missing, warnings = prerequisites(cfg)        # every absent input with where to get it, found at once
    require(cfg)                                  # the same as one ConfigError line (train.py, before building)
    mem = estimate_memory(cfg, train.train_step)  # {"state": bytes, "peak": bytes} of one step, on fake tensors
    lb, ub = random_batch(run, cfg)               # batches of the loaders' shapes (bench/step.py, estimate_memory)
    dry_run(given, train.train_step)              # the resolved plan, its memory, the missing list; exit 2 if any

The step is passed in (train.train_step, the one implementation of it) because this folder never imports an
entry point (tests/test_layout.py).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import data
from dataio.spec import DOWNLOADS
from hardware import memory
from medsam_lora import MEDSAM_MD5, MEDSAM_URL, PUBLISHED_MD5, file_md5
from records.config import ConfigError, resolve_config
from synfoc import Run, build_run, uses

SAM_NAMES = {"medsam": "MedSAM ViT-B", "litemedsam": "LiteMedSAM", "tiny": "a tiny random ViT"}


def prerequisites(cfg: dict) -> tuple[list[str], list[str]]:
    """(missing, warnings): every input this run needs that is not there, each with where to get it, found at
    once before anything is built; a present MedSAM file whose md5 is not a published one is a warning."""
    missing, warnings = [], []
    if cfg["sam"] == "medsam" and uses(cfg)[1]:
        path = Path(cfg["sam_ckpt"])
        if not path.is_file():
            missing.append(f"MedSAM weights {path}: download medsam_vit_b.pth from {MEDSAM_URL} (md5 {MEDSAM_MD5}) "
                           "to that path, pass --sam-ckpt PATH (any SAM ViT-B/L/H file), or use --sam litemedsam (weights shipped)")
        elif (md5 := file_md5(path)) not in PUBLISHED_MD5:
            warnings.append(f"{path}: md5 {md5} is not the published one of medsam_vit_b.pth ({MEDSAM_MD5}) nor of a "
                            "SAM release (README 'Weights'): an incomplete download? (it is loaded only if its "
                            "tensors are SAM's)")
    if cfg["dataset"] != "synthetic":  # the synthetic set is generated on first use
        try:
            data.check_root(cfg["dataset"], data.data_folder(cfg))
        except data.DataError as e:
            where = DOWNLOADS.get(cfg["dataset"])
            missing.append(f"{e}" + (f"; download: {where}" if where else ""))
    return missing, warnings


def require(cfg: dict) -> None:
    """ConfigError listing every missing prerequisite (one line); the warnings go to stderr."""
    missing, warnings = prerequisites(cfg)
    if missing:
        raise ConfigError(f"{len(missing)} prerequisite(s) missing: " + " ".join(
            f"[{k}] {m};" for k, m in enumerate(missing, 1)) + " (--dry-run shows them with the plan)")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def random_batch(run: Run, cfg: dict, seed: int = 0) -> tuple[dict, dict]:
    """Random labeled and unlabeled batches of the shapes and dtypes train.py's loaders give (bench/step.py,
    estimate_memory): img [B, C, size, size] in [0, 1], labels int64 class ids; on run.device."""
    (L, U), S, C, Cin = cfg["batch"], cfg["unet_size"], cfg["num_classes"], cfg["in_channels"]
    I, R = (run.sam.image_size, run.sam.logit_size) if run.sam is not None else (S, S)
    g = torch.Generator().manual_seed(seed)
    img = lambda n, c, k: torch.rand(n, c, k, k, generator=g).to(run.device)  # noqa: E731
    lab = lambda n, k: torch.randint(0, C, (n, k, k), generator=g).to(run.device)  # noqa: E731
    lb = dict(img_unet=img(L, Cin, S), img_sam=img(L, 3, I), label_unet=lab(L, S), label_sam=lab(L, R))
    ub = dict(weak_unet=img(U, Cin, S), weak_sam=img(U, 3, I), strong_unet=img(U, Cin, S), strong_sam=img(U, 3, I),
              label_unet=lab(U, S), label_sam=lab(U, R))
    return lb, ub


def estimate_memory(cfg: dict, train_step: Callable, fake: bool = True) -> dict:
    """Bytes one training step of `cfg` holds at its peak, counted by hardware/memory.py: {"state": parameters,
    buffers, gradients and optimiser state before the step, "peak": everything alive at once during it}. The
    models are built on the CPU (random SAM weights: values do not change bytes); the full step (past any
    burn-in; train_step is train.train_step) runs twice on fake tensors at the config's autocast dtype, and the
    second, with the optimisers' state present, is counted. fake=False runs it on real tensors (the test that the
    two counts agree)."""
    c = dict(cfg, sam_ckpt=None, compile=False)
    with torch.random.fork_rng(devices=[]):
        run = build_run(c, "cpu")
    run.scaler = torch.amp.GradScaler("cpu", enabled=False)  # its inf check reads values; its state is 2 scalars
    k = c["burn_in"]
    semi = c["mode"] != "suponly"
    M_S = data.boxes(0, c["batch"][1], c["unet_size"], c["seed"]) if semi else None
    mode = memory.fake_mode() if fake else None
    with mode or contextlib.nullcontext():
        lb, ub = random_batch(run, c)
        ub = ub if semi else None
        train_step(run, lb, ub, M_S, k)
        models = [m for m in (run.unet, run.unet_t, run.sam, run.sam_t) if m is not None]
        state = [t for m in models for t in (*m.parameters(), *m.buffers())]
        state += [t.grad for t in state if t.grad is not None]
        state += [v for o in run.optims for st in o.state.values() for v in st.values() if torch.is_tensor(v)]
        out = memory.step_peak(mode, state, lambda: train_step(run, lb, ub, M_S, k + 1))
    return dict(out, sam_size=lb["img_sam"].shape[-1], sam_logit_size=lb["label_sam"].shape[-1])


def plan(cfg: dict, mem: dict | None, missing: list[str]) -> str:
    """The resolved plan --dry-run prints."""
    evals = cfg["steps"] // cfg["eval_every"] + (cfg["steps"] % cfg["eval_every"] > 0)
    n_lab = f"{cfg['labeled']} labeled" if cfg["labeled"] is not None else f"{cfg['labeled_ratio']:g} of the images labeled"
    lines = [f"plan: {cfg['dataset']}, labeled domain {cfg['domain']} ({n_lab}), --mode {cfg['mode']}, seed {cfg['seed']}",
             f"  steps {cfg['steps']} (supervised only: {cfg['burn_in']}), batch {cfg['batch'][0]} + {cfg['batch'][1]}, "
             f"evaluation of both students every {cfg['eval_every']} steps ({evals} in all, fp32, "
             f"{'first ' + str(cfg['test_limit']) + ' test images per domain' if cfg['test_limit'] else 'every test image'})",
             f"  models: U-Net width {cfg['unet_width']} at {cfg['unet_size']} px"
             + (f"; {SAM_NAMES[cfg['sam']]} at {cfg['sam_size']} px (logits {cfg['sam_logit_size']}), LoRA rank "
                f"{cfg['rank']}" if uses(cfg)[1] else ""),
             f"  precision: {'fp32' if cfg['amp'] == 'off' else cfg['amp']} ({cfg['amp_reason']}); device {cfg['device']}; run folder {cfg['out']}"]
    if mem is not None:
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        lines.append(f"  memory of one training step (tensor bytes counted on fake tensors, hardware/memory.py): "
                     f"peak {gib(mem['peak'])}, of which weights, gradients and optimiser state {gib(mem['state'])}; "
                     "a GPU adds its context (~0.5 GiB) and allocator slack")
    lines += [f"  missing: {m}" for m in missing] or ["  every prerequisite is there"]
    return "\n".join(lines)


def dry_run(given: dict, train_step: Callable) -> None:
    """--dry-run: the resolved plan, the memory of one step and every missing prerequisite; exit status 2 when
    something is missing (nothing is written and no weights are loaded; a present MedSAM file is hashed)."""
    given.pop("resume", None), given.pop("overwrite", None)
    cfg = resolve_config(given)
    missing, warnings = prerequisites(cfg)
    print(f"estimating the memory of one training step on fake tensors (seconds; {cfg['sam']} built on the CPU) ...",
          file=sys.stderr)
    mem = estimate_memory(cfg, train_step)
    cfg.update(sam_size=mem["sam_size"], sam_logit_size=mem["sam_logit_size"])
    print(plan(cfg, mem, missing))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if missing:
        sys.exit(2)
