"""A run's checkpoints: save / load them, read their configs, resume a run, rebuild the students, predict.

    save_atomic(run_checkpoint(run, step, best), path)   # torch.save to path.tmp, then rename
    ck = load_checkpoint("runs/x")               # a run folder means its last.pt; CheckpointError otherwise;
                                                 #   ck["config"] through upgrade (older configs' fallbacks)
    step, best = restore(run, ck)                # a freshly built run continues exactly (train.py --resume)
    models = build_students(ck, device, ["medsam", "unet"], sam_ckpt=None)   # eval-mode students
    preds = predict(models, img_unet, img_sam, S, amp_dtype)                 # {name: int64 [B,S,S]}

Shared by train.py (periodic evaluation, resume), evaluate.py, predict.py and the benchmarks; the models of a
config come from synfoc.build_models (the same code train.py builds its students with). A checkpoint is a plain dict
(torch.load(p, weights_only=True)): format, step, config, best ({student: [its best mean test Dice, that step]}),
unet, unet_ema, sam, sam_ema (SAM: only its trainable tensors), opt_unet, opt_sam, scaler, rng.
"""
from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from dataio.spec import PRESETS, DataError, register
from medsam_lora import WeightsError
from synfoc import build_models


class CheckpointError(ValueError):
    """A run checkpoint that is missing, corrupt, not ours, or does not fit its config (one-line message)."""


CKPT_FORMAT = "synfoc-ckpt-1"
# `--sam tiny`: a random, tiny ViT with MedSAM's module and key names, for tests and smoke runs only.
TINY_SAM = dict(image_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its last.pt."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict:
    """A SynFoC checkpoint dict (train.py's last.pt / best_test_selected_<student>.pt), loaded with weights_only=True;
    a run folder means its last.pt. CheckpointError (one line) when it is missing, corrupt or not ours."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: expected a .pt file written by train.py or its run folder")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; torch.load's errors on others are cryptic
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this project (expected "
                              "the zip archive torch.save writes; a truncated copy?)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt zip, or a pickle of arbitrary objects (refused by weights_only)
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {why})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a SynFoC checkpoint (expected a dict with format '{CKPT_FORMAT}' "
                              "written by train.py)")
    cfg = ck.get("config")
    if isinstance(cfg, dict) and cfg.get("dataset") not in PRESETS and isinstance(cfg.get("dataset_description"), dict):
        try:  # a dataset.json set: the checkpoint carries its description (the folder may be elsewhere by now)
            register(cfg["dataset"], cfg["dataset_description"])
        except DataError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if not isinstance(cfg, dict) or (cfg.get("dataset") not in PRESETS
                                     and not isinstance(cfg.get("dataset_description"), dict)):
        raise CheckpointError(f"{path} has no usable config (dataset {None if not isinstance(cfg, dict) else cfg.get('dataset')!r})")
    upgrade(cfg)
    return ck


def build_students(ck: dict, device: torch.device, want: Sequence[str], sam_ckpt: str | None) -> dict[str, torch.nn.Module]:
    """The students of a checkpoint, in eval mode: {"medsam": SamSeg, "unet": UNet} for the names in `want`.
    The tiny/random parts are rebuilt with the training seed, so a `--sam tiny` run gets its frozen encoder
    back exactly (only trainable tensors are stored)."""
    cfg = upgrade(dict(ck["config"]))
    if sam_ckpt is not None:
        cfg["sam_ckpt"] = sam_ckpt
    if "medsam" not in want and ck.get("unet") is not None:
        cfg["mode"] = "unet"  # U-Net only: do not build (or need the weights of) the foundation model
    torch.manual_seed(int(cfg["seed"]))  # train.py seeds right before build_models: same random init
    try:
        unet, sam = build_models(cfg, device)
    except WeightsError as e:  # the base SAM weights: missing or not SAM's
        hint = "" if sam_ckpt else " (pass the base MedSAM weights with --sam-ckpt PATH)"
        raise CheckpointError(f"{e}{hint}") from None
    models: dict[str, torch.nn.Module] = {}
    try:
        if "medsam" in want and sam is not None:
            sam.load_trainable_state_dict({k: v.to(device) for k, v in ck["sam"].items()})
            models["medsam"] = sam.eval()
        if "unet" in want and unet is not None:
            unet.load_state_dict(ck["unet"])
            models["unet"] = unet.eval()
    except (RuntimeError, KeyError, AttributeError, WeightsError) as e:
        # strict loading: missing/unexpected/mis-shaped tensors (WeightsError: SamSeg.load_trainable_state_dict's)
        why = " ".join(str(e).split())[:200]
        raise CheckpointError(f"the weights in the checkpoint do not fit the models rebuilt from its config ({why})") from None
    return models


@torch.no_grad()
def predict(models: dict[str, torch.nn.Module], img_unet: torch.Tensor, img_sam: torch.Tensor, size: int,
            amp: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Label maps at the U-Net size S (METHOD.md §6): img_unet float[B,C_in,S,S], img_sam float[B,3,I,I] in [0,1]
    -> {name: int64[B,S,S]}; SAM logits [B,C,R,R] are upsampled bilinearly to S before the argmax."""
    out = {}
    ctx = torch.autocast(img_unet.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with ctx:
        if "unet" in models:
            out["unet"] = models["unet"](img_unet).float().argmax(1)
        if "medsam" in models:
            logits = models["medsam"](img_sam).float()
            if logits.shape[-1] != size:
                logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            out["medsam"] = logits.argmax(1)
    return out


# ----------------------------------------------------------------------------- older configs, a run's state

# What a run trained with before a setting existed: the value a saved config that lacks the key means (one rule
# per key; upgrade() applies them to every config read back, so no reader needs a fallback of its own).
BEFORE_THE_KEY = dict(
    seed=0, data_seed=0, data_root="data", world_size=1, burn_in=0,
    unet_norm="unit", unet_layer="batch",        # the U-Net's input /255 and BatchNorm
    sam_norm="unit", lite_size=256,              # SAM's input /255; LiteMedSAM at its pretrained size
    dice_mask="all",                             # W on every Dice channel (the flag's "fg" is the authors' rule)
    pseudo_labels="ensemble", plain=False, fast_attn=False, compile=False, tensorboard=False, threads=None,
    amp="off",                                   # fp32
)


def upgrade(cfg: dict) -> dict:
    """A saved config completed in place (and returned) with BEFORE_THE_KEY's value of every key it lacks.
    Two keys have a rule beyond a value: sam_size (SAM's input size, recorded since the run's start) is the U-Net
    size when missing, and a config older than --head-init built SAM's random parts with seed 0 (sam_init_seed,
    read by synfoc.build_models) and random heads."""
    if "head_init" not in cfg:
        cfg.update(head_init="random", sam_init_seed=0)
    for k, v in BEFORE_THE_KEY.items():
        cfg.setdefault(k, v)
    if cfg.get("sam_size") is None and "unet_size" in cfg:
        cfg["sam_size"] = cfg["unet_size"]
    return cfg


def run_checkpoint(run, step: int, best: dict) -> dict:
    """The plain-dict checkpoint of a training run (synfoc.Run) at `step`; best: {student: (mean test Dice, step)}."""
    sd = lambda m, f: None if m is None else getattr(m, f)()  # noqa: E731
    return dict(format=CKPT_FORMAT, step=step, config=run.cfg, best={n: list(v) for n, v in best.items()},
                unet=sd(run.unet, "state_dict"), unet_ema=sd(run.unet_t, "state_dict"),
                sam=sd(run.sam, "trainable_state_dict"), sam_ema=sd(run.sam_t, "trainable_state_dict"),
                opt_unet=sd(run.opt_unet, "state_dict"), opt_sam=sd(run.opt_sam, "state_dict"),
                scaler=run.scaler.state_dict(), rng=dict(torch=torch.get_rng_state()))


def restore(run, ck: dict) -> tuple[int, dict]:
    """Load a checkpoint into a freshly built run; returns (step, {student: (best mean test Dice, its step)})."""
    for model, key, fn in ((run.unet, "unet", "load_state_dict"), (run.unet_t, "unet_ema", "load_state_dict"),
                           (run.sam, "sam", "load_trainable_state_dict"),
                           (run.sam_t, "sam_ema", "load_trainable_state_dict"),
                           (run.opt_unet, "opt_unet", "load_state_dict"), (run.opt_sam, "opt_sam", "load_state_dict")):
        if model is not None:
            getattr(model, fn)(ck[key])
    run.scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng"]["torch"])
    return ck["step"], {n: tuple(v) for n, v in ck.get("best", {}).items()}  # none in checkpoints before 2026-12-07
