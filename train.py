"""SynFoC training: a MedSAM (LoRA) and a U-Net, trained together as mutual teachers (CVPR 2025).

Commands
    python train.py --dataset synthetic                        # embedded default: CPU, LiteMedSAM, synthetic data
    python train.py --dataset fundus --domain 1                # paper setting (GPU): MedSAM ViT-B at 512
    python train.py --dataset prostate --domain 4 --sam-ckpt /path/medsam_vit_b.pth
    python train.py --dataset busi --domain 1 --labeled-ratio 0.25
    python train.py --dataset prostate --domain 1 --mode unet  # Table 7 "Base U-Net" (Mean Teacher + intermediate samples)
    python train.py --dataset prostate --domain 1 --mode medsam   # Table 7 "Base MedSAM"
    python train.py --dataset fundus --domain 1 --mode suponly    # "SupOnly": labeled images only, U-Net
    python train.py --dataset fundus --domain 1 --alpha cps       # Table 8: const, linear, self, mutual, cps
    python train.py --dataset fundus --domain 1 --reg cr          # Table 7: cdcr (default), cr, none
    python train.py --resume runs/fundus_d1_synfoc                # continue a killed run exactly

One iteration follows SPEC §3 (equation numbers of the paper in the comments):
  1 weak/strong views → 2 teachers (no grad) → 3 SMC ratio α (Eq. 4-6) → 4 ensemble pseudo-labels (Eq. 3)
  → 5 intermediate samples (Eq. 1) → 6 student forwards → 7 L_x, L_u (Eq. 7), L_c, L_d (Eq. 8-10), λ(t) (Eq. 2)
  → 8 one backward, both optimisers, EMA of both teachers.

Run folder runs/<name>/: config.json, log.txt, metrics.csv (every --log-every steps), last.pt (every
--eval-every steps, after evaluating both students on every domain's test split), best_test_selected.pt
(the best mean test Dice: the paper's optimistic protocol, kept apart). Checkpoints are plain dicts
(torch.load(p, weights_only=True)) written atomically; --resume continues exactly (the same per-step losses
and final weights as an uninterrupted run; tested on CPU). metrics.csv columns: loss, L_x, L_u, L_c, L_d (with
--reg cr the plain MSE term is logged as L_c), λ, mean α, Φself, Φmut, the pseudo-label mask ratio and the Dice
of the SAM-teacher, U-Net-teacher and ensemble pseudo-labels against the unlabeled ground truth (paper Fig. 6).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import losses
import smc
from checkpoint import (CKPT_FORMAT, TINY_SAM, build_models, checkpoint_path, load_checkpoint, predict, save_atomic,
                        uses)
from medsam_lora import CheckpointError, make_teacher
from unet import UNet

METRIC_NAMES = ["loss", "L_x", "L_u", "L_c", "L_d", "lambda", "alpha", "phi_self", "phi_mut", "mask_ratio",
                "dice_sam_teacher", "dice_unet_teacher", "dice_ensemble"]


class ConfigError(ValueError):
    """A user mistake on the command line (one line, printed without traceback)."""


# ----------------------------------------------------------------------------- command line and config

def parse_args(argv: list[str] | None) -> dict:
    """Only the flags the user actually gave (argparse.SUPPRESS), so presets fill the rest visibly."""
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(description="SynFoC training (see the module docstring for commands).",
                                argument_default=S)
    p.add_argument("--dataset", choices=sorted(data.PRESETS), help="dataset preset (default: synthetic)")
    p.add_argument("--domain", type=int, help="1-based index of the labeled domain (default 1)")
    p.add_argument("--data-root", help="folder holding the dataset folders (default: data)")
    p.add_argument("--labeled", type=int, help="number of labeled images (default: preset; 20 fundus/prostate, 5 mnms)")
    p.add_argument("--labeled-ratio", type=float, help="labeled fraction of ALL train images (BUSI: 0.125 or 0.25)")
    p.add_argument("--sam", choices=["medsam", "litemedsam", "tiny"],
                   help="foundation model: MedSAM ViT-B at 512, LiteMedSAM at 256 (shipped weights), "
                        "or a random tiny ViT for tests (default: preset)")
    p.add_argument("--sam-ckpt", help="MedSAM checkpoint (default: checkpoints/medsam_vit_b.pth)")
    p.add_argument("--mode", choices=["synfoc", "unet", "medsam", "suponly"],
                   help="synfoc (default); unet / medsam = single-model Mean Teacher baseline (Table 7); "
                        "suponly = U-Net on labeled images only")
    p.add_argument("--alpha", choices=list(smc.STRATEGIES), help="ensemble ratio strategy, Table 8 (default: smc)")
    p.add_argument("--reg", choices=["cdcr", "cr", "none"], help="consistency regulariser, Table 7 (default: cdcr)")
    p.add_argument("--steps", type=int, help="total training steps T (default: preset)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("L", "U"), help="labeled and unlabeled batch size (default: preset)")
    p.add_argument("--tau", type=float, help="pseudo-label confidence threshold (default 0.95)")
    p.add_argument("--ema", type=float, help="EMA decay of both teachers (default 0.99; synthetic preset 0.95)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--lr-unet", type=float, help="U-Net SGD learning rate (default 0.03)")
    p.add_argument("--lr-sam", type=float, help="SAM AdamW learning rate (default 1e-4; synthetic preset 1e-3)")
    p.add_argument("--unet-width", type=int, help="U-Net base width (default: preset; 64 = paper)")
    p.add_argument("--eval-every", type=int, help="evaluate on every test split and write last.pt every N steps (default: preset)")
    p.add_argument("--log-every", type=int, help="write a metrics.csv row every N steps (default 10)")
    p.add_argument("--test-limit", type=int, help="use only the first N test images per domain in periodic evaluation (default: preset; all for real datasets)")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], help="autocast (default: preset, else fp16 on CUDA, off on CPU)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--workers", type=int, help="data loader worker processes (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--out", help="run folder (default: runs/<dataset>_d<domain>_<mode>[_<alpha>][_<reg>])")
    p.add_argument("--resume", nargs="?", const="", help="continue from a run folder or checkpoint (no value: the run folder of these flags)")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    return vars(p.parse_args(argv))


def resolve_config(given: dict) -> dict:
    """Flags > dataset preset > global defaults. Returns a JSON-able dict (saved as config.json)."""
    dataset = given.get("dataset", "synthetic")
    pre = data.PRESETS[dataset]
    cuda = torch.cuda.is_available()
    device = given.get("device", "cuda" if cuda else "cpu")
    cfg = dict(
        dataset=dataset, domain=1, data_root="data", labeled=pre.get("labeled"), labeled_ratio=pre.get("labeled_ratio"),
        sam=pre.get("sam", "medsam"), sam_ckpt="checkpoints/medsam_vit_b.pth", mode="synfoc", alpha="smc", reg="cdcr",
        steps=pre["steps"], batch=list(pre["batch"]), tau=0.95, ema=pre.get("ema", 0.99), rank=4, lr_unet=0.03,
        lr_sam=pre.get("lr_sam", 1e-4),
        unet_width=pre.get("unet_width", 64), eval_every=pre.get("eval_every", 1000), log_every=10,
        test_limit=pre.get("test_limit"), amp=pre.get("amp") or ("fp16" if device.startswith("cuda") else "off"),
        device=device, workers=4 if device.startswith("cuda") else 0, seed=0, out=None)
    for k, v in given.items():
        if k in cfg:
            cfg[k] = list(v) if isinstance(v, tuple) else v
    if "labeled" in given:      # one of the two counts wins, never both silently
        cfg["labeled_ratio"] = None
    if "labeled_ratio" in given:
        cfg["labeled"] = None
    if cfg["out"] is None:
        name = f"{dataset}_d{cfg['domain']}_{cfg['mode']}"
        name += "" if cfg["alpha"] == "smc" else f"_{cfg['alpha']}"
        name += "" if cfg["reg"] == "cdcr" else f"_{cfg['reg']}"
        cfg["out"] = str(Path("runs") / name)
    for k in ("steps", "eval_every", "log_every", "rank", "unet_width"):
        if cfg[k] < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be >= 1, got {cfg[k]}")
    if min(cfg["batch"]) < 1:
        raise ConfigError(f"--batch needs two sizes >= 1, got {cfg['batch']}")
    if not 0.0 < cfg["tau"] <= 1.0 or not 0.0 <= cfg["ema"] < 1.0:
        raise ConfigError("--tau must be in (0, 1] and --ema in [0, 1)")
    cfg.update(num_classes=pre["num_classes"], in_channels=pre["in_channels"], unet_size=pre["unet_size"],
               parts=[list(p) for p in pre["parts"]], part_names=list(pre["part_names"]),
               sam_tiny=dict(TINY_SAM, global_attn_indexes=list(TINY_SAM["global_attn_indexes"]))
               if cfg["sam"] == "tiny" else None)
    return cfg


# ----------------------------------------------------------------------------- models

@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student, parameter by parameter (BN buffers are not averaged)."""
    for t, s in zip(teacher, student):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def part_dice(pred: torch.Tensor, gt: torch.Tensor, parts: list[list[int]]) -> torch.Tensor:
    """Dice per sample and part with the SPEC §6 empty policy (both empty → 1, one empty → 0): float[B, P]."""
    cols = []
    for part in parts:
        ids = torch.tensor(part, device=pred.device)
        a, b = torch.isin(pred, ids).flatten(1), torch.isin(gt, ids).flatten(1)            # [B, HW]
        inter, total = (a & b).sum(1).float(), (a.sum(1) + b.sum(1)).float()
        cols.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    return torch.stack(cols, 1)


def evaluate_students(unet, sam, loader, cfg: dict, device, amp_dtype) -> dict[str, dict[int, float]]:
    """Mean Dice (over slices, then parts) per domain for each student, on the test loader."""
    models = {n: m for n, m in (("unet", unet), ("medsam", sam)) if m is not None}
    sums: dict[str, dict[int, list[float]]] = {}
    for m in models.values():
        m.eval()
    for b in loader:
        preds = predict(models, b["img_unet"].to(device), b["img_sam"].to(device), cfg["unet_size"], amp_dtype)
        gt = b["label_unet"].to(device)
        for name, pred in preds.items():
            d = part_dice(pred, gt, cfg["parts"]).mean(1).cpu()                            # [B]
            for dom, v in zip(b["domain"].tolist(), d.tolist()):
                s = sums.setdefault(name, {}).setdefault(dom, [0.0, 0])
                s[0] += v
                s[1] += 1
    for m in models.values():
        m.train()
    return {name: {dom: s / n for dom, (s, n) in sorted(doms.items())} for name, doms in sums.items()}


# ----------------------------------------------------------------------------- data plumbing

class StepSampler(torch.utils.data.Sampler):
    """Yields, for each step t in [start, total), `batch` keys (index, t): the sample AND its augmentation
    are a pure function of (seed, t), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, n: int, batch: int, seed: int, tag: int, start: int, total: int):
        self.n, self.batch, self.seed, self.tag, self.start, self.total = n, batch, seed, tag, start, total

    def __iter__(self):
        for t in range(self.start, self.total):
            rng = np.random.default_rng([self.seed, self.tag, t])
            idx = rng.permutation(self.n)[: self.batch] if self.n >= self.batch else rng.integers(0, self.n, self.batch)
            yield [(int(i), t) for i in idx]

    def __len__(self) -> int:
        return self.total - self.start


def boxes(step: int, batch: int, S: int, seed: int) -> torch.Tensor:
    """The Eq. 1 copy-paste masks M of one step, drawn at S: float[B, 1, S, S]."""
    rng = np.random.default_rng([seed, 7, step])
    return torch.from_numpy(np.stack([data.random_box(S, rng) for _ in range(batch)])).float()[:, None]


def resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest resize of a [B, C, H, W] map (labels, masks, probabilities for CDCR)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="nearest")


def resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- checkpoints and logs

class Log:
    """log.txt (human) + metrics.csv (one row per logging interval), both appended, so resume continues them."""

    def __init__(self, out: Path):
        self.txt, self.csv = out / "log.txt", out / "metrics.csv"

    def line(self, msg: str, echo: bool = True) -> None:
        with open(self.txt, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if echo:
            tqdm.write(msg)

    def row(self, step: int, values: dict) -> None:
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", *METRIC_NAMES])
            w.writerow([step, *(f"{values[k]:.6g}" for k in METRIC_NAMES)])


def dice_table(res: dict[str, dict[int, float]], domains: list[str]) -> str:
    """Per-domain mean Dice (%) of each student as a small text table."""
    names = list(res)
    rows = [f"{'domain':<14}" + "".join(f"{n:>10}" for n in names)]
    for d, dname in enumerate(domains, 1):
        rows.append(f"{dname:<14}" + "".join(f"{100 * res[n].get(d, float('nan')):>10.2f}" for n in names))
    rows.append(f"{'mean':<14}" + "".join(f"{100 * np.mean(list(res[n].values())):>10.2f}" for n in names))
    return "\n".join(rows)


# ----------------------------------------------------------------------------- training

def train(argv: list[str] | None = None, stop_at: int | None = None) -> Path:
    """Run (or resume) one training; returns the run folder. stop_at: end after that step as if killed (tests)."""
    given = parse_args(argv)
    resume = given.pop("resume", None)
    overwrite = given.pop("overwrite", False)
    ckpt = None
    if resume is not None:
        path = checkpoint_path(resume or resolve_config(given)["out"])
        ckpt = load_checkpoint(path)
        saved, fresh = ckpt["config"], resolve_config(given)
        for k in sorted(set(given) - {"device", "workers"}):
            if fresh.get(k) != saved.get(k):
                raise ConfigError(f"--resume continues the saved configuration, but --{k.replace('_', '-')} "
                                  f"{fresh.get(k)} differs from the saved {saved.get(k)} (only --device and --workers may change)")
        cfg = dict(saved, out=str(path.parent), **{k: given[k] for k in ("device", "workers") if k in given})
    else:
        cfg = resolve_config(given)
    out = Path(cfg["out"])
    if ckpt is None and (out / "config.json").exists() and not overwrite:
        raise ConfigError(f"run folder {out} exists; use --resume to continue it, --overwrite to start over, or --out")
    device = torch.device(cfg["device"])
    use_unet, use_sam = uses(cfg)
    semi = cfg["mode"] != "suponly"
    parts, T, S, C = cfg["parts"], cfg["steps"], cfg["unet_size"], cfg["num_classes"]
    torch.manual_seed(cfg["seed"])

    # Models first: a missing MedSAM checkpoint fails before any data work.
    unet, sam = build_models(cfg, device)
    # SAM input / logit sizes; without SAM the SAM views are never used, so keep them at S (cheap).
    I, R = (sam.image_size, sam.logit_size) if sam is not None else (S, S)
    cfg.update(sam_size=I, sam_logit_size=R)

    root = Path(cfg["data_root"]) / data.PRESETS[cfg["dataset"]]["folder"]
    if cfg["dataset"] == "synthetic" and not root.exists():
        pre = data.PRESETS["synthetic"]
        print(f"generating the synthetic mixed-domain set in {root} ...")
        data.synthesize(root, seed=0, n_train=pre["n_train"], n_test=pre["n_test"])
    data.check_root(cfg["dataset"], root)
    lab_cases, unl_cases = data.split_labeled(cfg["dataset"], root, cfg["domain"], cfg["labeled"], cfg["labeled_ratio"])
    test_cases = data.test_cases(cfg["dataset"], root)
    if cfg["test_limit"]:
        test_cases = [c for d in sorted({c[2] for c in test_cases})
                      for c in [c for c in test_cases if c[2] == d][: cfg["test_limit"]]]
    domains = data.PRESETS[cfg["dataset"]]["domains"]

    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    if ckpt is None:
        for f in ("log.txt", "metrics.csv", "last.pt", "best_test_selected.pt"):
            (out / f).unlink(missing_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    log.line(("resuming " if ckpt else "config ") + json.dumps(cfg))
    log.line(f"labeled {len(lab_cases)} | unlabeled {len(unl_cases)} | test {len(test_cases)} | I={I} R={R} S={S}")

    # Teachers: the U-Net teacher is a full copy; the SAM teacher shares the frozen encoder with its student.
    unet_t = UNet(cfg["in_channels"], C, cfg["unet_width"]).to(device) if use_unet and semi else None
    if unet_t is not None:
        unet_t.load_state_dict(unet.state_dict())
        unet_t.requires_grad_(False)
    sam_t = make_teacher(sam) if use_sam else None
    for model in (unet, unet_t, sam, sam_t):
        if model is not None:
            model.train()  # teachers stay in train mode during training (official)
    opt_unet = torch.optim.SGD(unet.parameters(), lr=cfg["lr_unet"], momentum=0.9, weight_decay=1e-4) if use_unet else None
    opt_sam = torch.optim.AdamW(sam.trainable_parameters(), lr=cfg["lr_sam"], betas=(0.9, 0.999),
                                weight_decay=0.1) if use_sam else None
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg["amp"])
    amp = lambda: torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    optims = [o for o in (opt_unet, opt_sam) if o is not None]

    start, best = 0, -1.0
    if ckpt is not None:
        if use_unet:
            unet.load_state_dict(ckpt["unet"])
            opt_unet.load_state_dict(ckpt["opt_unet"])
            if unet_t is not None:
                unet_t.load_state_dict(ckpt["unet_ema"])
        if use_sam:
            sam.load_trainable_state_dict(ckpt["sam"])
            sam_t.load_trainable_state_dict(ckpt["sam_ema"])
            opt_sam.load_state_dict(ckpt["opt_sam"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start, best = ckpt["step"], ckpt["best_dice"]

    def checkpoint(step: int) -> dict:
        return dict(format=CKPT_FORMAT, step=step, config=cfg, best_dice=best,
                    unet=unet.state_dict() if use_unet else None,
                    unet_ema=unet_t.state_dict() if unet_t is not None else None,
                    sam=sam.trainable_state_dict() if use_sam else None,
                    sam_ema=sam_t.trainable_state_dict() if use_sam else None,
                    opt_unet=opt_unet.state_dict() if use_unet else None,
                    opt_sam=opt_sam.state_dict() if use_sam else None,
                    scaler=scaler.state_dict(), rng=dict(torch=torch.get_rng_state()))

    L, U = cfg["batch"]
    loader = lambda ds, bsz, tag: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_sampler=StepSampler(len(ds), bsz, cfg["seed"], tag, start, T), num_workers=cfg["workers"],
        pin_memory=device.type == "cuda", persistent_workers=False)
    lab_iter = iter(loader(data.LabeledSet(cfg["dataset"], lab_cases, I, R, seed=cfg["seed"]), L, 1))
    unl_iter = iter(loader(data.UnlabeledSet(cfg["dataset"], unl_cases, I, R, seed=cfg["seed"] + 1), U, 2)) if semi else None
    test_loader = torch.utils.data.DataLoader(data.TestSet(cfg["dataset"], test_cases, I), batch_size=max(L, U),
                                              num_workers=cfg["workers"])

    zero = torch.zeros((), device=device)
    acc = torch.zeros(len(METRIC_NAMES), device=device)   # running sums on device: no host sync per step
    n_acc, first_bad = 0, torch.full((), -1, device=device, dtype=torch.long)
    bad_terms = torch.zeros(5, device=device)
    last_dice, res = float("nan"), {}
    bar = tqdm(range(start, T), initial=start, total=T, desc=out.name, dynamic_ncols=True)
    for step in bar:
        # 1. Views: labeled weak (x_l, y_l) and unlabeled weak / strong, each at I (SAM) and S (U-Net).
        lb = {k: v.to(device, non_blocking=True) for k, v in next(lab_iter).items()}
        xl_S, xl_I, yl_S, yl_R = lb["img_unet"], lb["img_sam"], lb["label_unet"], lb["label_sam"]
        mets = dict.fromkeys(METRIC_NAMES, zero)
        lam = smc.warmup(step, T)                                       # λ(t), Eq. 2
        if semi:
            ub = {k: v.to(device, non_blocking=True) for k, v in next(unl_iter).items()}
            xw_S, xw_I, xs_S, xs_I = ub["weak_unet"], ub["weak_sam"], ub["strong_unet"], ub["strong_sam"]
            B = xw_S.shape[0]
            # 2. Teachers on the weak view, no grad: P̄_UT at S, P̄_MS at R.
            with torch.no_grad(), amp():
                p_ut = unet_t(xw_S).float().softmax(1) if use_unet else None      # [B, C, S, S]
                p_ms = sam_t(xw_I).float().softmax(1) if use_sam else None        # [B, C, R, R]
                # 3. SMC (Eq. 4-6): Φself = student vs teacher U-Net at S, Φmut = U-Net teacher vs SAM teacher at R.
                if use_unet and use_sam:
                    g_w = unet(xw_S).argmax(1)                                     # [B, S, S]
                    phi_self, phi_mut = smc.smc_factors(g_w, p_ut.argmax(1), p_ms.argmax(1), parts)
                    a_sam, a_unet = smc.strategy_alpha(cfg["alpha"], phi_self, phi_mut, step, T)
                else:  # single-model baselines: the one teacher alone
                    phi_self = phi_mut = torch.ones(B, device=device)
                    a_sam = a_unet = torch.full((B,), 1.0 if use_unet else 0.0, device=device)
            # 4. Ensemble pseudo-labels (Eq. 3) at S for the U-Net and, downsampled, at R for SAM.
            p_ens_S = smc.ensemble(p_ut, p_ms, a_unet) if use_unet and use_sam else (p_ut if use_unet else resize_bilinear(p_ms, S))
            p_ens_R = resize_bilinear(smc.ensemble(p_ut, p_ms, a_sam) if use_unet and use_sam else
                                      (p_ut if use_unet else p_ms), R)
            q_S, w_S = smc.pseudo_label(p_ens_S, cfg["tau"])               # [B, S, S] each
            q_R, w_R = smc.pseudo_label(p_ens_R, cfg["tau"])               # [B, R, R] each
            # 5. Intermediate samples (Eq. 1): labeled weak image pasted into the unlabeled strong image.
            M_S = boxes(step, B, S, cfg["seed"]).to(device)                # [B, 1, S, S]
            M_I, M_R = resize_nearest(M_S, I), resize_nearest(M_S, R)
            pair = torch.arange(B, device=device) % xl_S.shape[0]          # i-th unlabeled ↔ i-th labeled
            xc_S = xl_S[pair] * M_S + xs_S * (1 - M_S)
            xc_I = xl_I[pair] * M_I + xs_I * (1 - M_I)
            qc_S = torch.where(M_S[:, 0] > 0, yl_S[pair], q_S)              # Q_c = y_l ⊙ M + Q ⊙ (1 − M)
            wc_S = torch.where(M_S[:, 0] > 0, torch.ones_like(w_S), w_S)    # W_c = 1 inside the box, W outside
            qc_R = torch.where(M_R[:, 0] > 0, yl_R[pair], q_R)
            wc_R = torch.where(M_R[:, 0] > 0, torch.ones_like(w_R), w_R)
        # 6. Student forwards with grad, labeled and mixed images in one batch per model.
        with amp():
            if use_unet:
                g = unet(torch.cat([xl_S, xc_S]) if semi else xl_S).float()  # [L(+B), C, S, S]
                g_l, g_c = g[: xl_S.shape[0]], g[xl_S.shape[0]:]
            if use_sam:
                f = sam(torch.cat([xl_I, xc_I])).float()                    # [L+B, C, R, R]
                f_l, f_c = f[: xl_I.shape[0]], f[xl_I.shape[0]:]
        # 7. Losses (fp32). L_x: supervised CE + Dice of each student at its own resolution.
        L_x = L_u = L_c = L_d = zero
        if use_unet:
            L_x = L_x + losses.ce_loss(g_l, yl_S) + losses.dice_loss(g_l, yl_S)
        if use_sam:
            L_x = L_x + losses.ce_loss(f_l, yl_R) + losses.dice_loss(f_l, yl_R)
        if semi:
            # L_u (Eq. 7, 11, 12): each student on the intermediate sample vs the mixed target and weight.
            if use_unet:
                L_u = L_u + losses.ce_loss(g_c, qc_S, wc_S) + losses.dice_loss(g_c, qc_S, wc_S)
            if use_sam:
                L_u = L_u + losses.ce_loss(f_c, qc_R, wc_R) + losses.dice_loss(f_c, qc_R, wc_R)
            if use_unet and use_sam and cfg["reg"] != "none":
                pc_ut, pc_ms = g_c.softmax(1), f_c.softmax(1)               # [B, C, S, S], [B, C, R, R]
                pc_ms_S = resize_nearest(pc_ms, S)
                if cfg["reg"] == "cdcr":
                    mc_S, md_S, mc_R, _ = smc.consensus_masks(pc_ut, pc_ms)   # Eq. 8
                    L_c = 0.5 * (losses.entropy_loss(pc_ms, mc_R) + losses.entropy_loss(pc_ut, mc_S))  # Eq. 9
                    L_d = losses.divergence_loss(pc_ms_S, pc_ut, md_S)      # Eq. 10 (positive)
                else:  # "cr": plain consistency in place of L_c + L_d
                    L_c = losses.mse_loss(pc_ms_S, pc_ut)
        loss = L_x + lam * (L_u + L_c + L_d)                                # Eq. 2
        # 8. One backward, both optimisers (one GradScaler for both under fp16), EMA of both teachers.
        for o in optims:
            o.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for o in optims:
            scaler.step(o)
        scaler.update()
        decay = min(1.0 - 1.0 / (step + 1), cfg["ema"])
        if unet_t is not None:
            ema_update(list(unet_t.parameters()), list(unet.parameters()), decay)
        if use_sam:
            ema_update(sam_t.trainable_parameters(), sam.trainable_parameters(), decay)

        # Bookkeeping on the device; the host only looks at it every --log-every steps.
        terms = torch.stack([L_x, L_u, L_c, L_d, loss]).detach()
        bad_now = ~torch.isfinite(terms).all() & (first_bad < 0)
        first_bad = torch.where(bad_now, torch.full_like(first_bad, step + 1), first_bad)
        bad_terms = torch.where(bad_now, terms, bad_terms)
        mets.update(loss=loss.detach(), L_x=L_x.detach(), L_u=L_u.detach(), L_c=L_c.detach(), L_d=L_d.detach(),
                 **{"lambda": torch.as_tensor(lam, device=device)})
        if semi:
            with torch.no_grad():
                gt_S = ub["label_unet"]
                mets.update(alpha=a_unet.mean(), phi_self=phi_self.mean(), phi_mut=phi_mut.mean(), mask_ratio=w_S.mean(),
                         dice_ensemble=smc.agreement(q_S, gt_S, parts).mean())
                if use_unet:
                    mets["dice_unet_teacher"] = smc.agreement(p_ut.argmax(1), gt_S, parts).mean()
                if use_sam:
                    mets["dice_sam_teacher"] = smc.agreement(resize_bilinear(p_ms, S).argmax(1), gt_S, parts).mean()
        acc += torch.stack([mets[k].float() for k in METRIC_NAMES])
        n_acc += 1

        done = step + 1
        if done % cfg["log_every"] == 0 or done % cfg["eval_every"] == 0 or done == T or done == stop_at:
            if int(first_bad) >= 0:   # host sync, once per interval
                names = ["L_x", "L_u", "L_c", "L_d", "loss"]
                vals = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, bad_terms.tolist()))
                msg = (f"non-finite loss at step {int(first_bad)} ({vals}); stopping. "
                       f"{out / 'last.pt'} holds the last good checkpoint"
                       + ("" if (out / "last.pt").exists() else " (none written yet)"))
                log.line(msg, echo=False)
                raise FloatingPointError(msg)
            vals = dict(zip(METRIC_NAMES, (acc / n_acc).tolist()))
            log.row(done, vals)
            acc.zero_()
            n_acc = 0
            bar.set_postfix(loss=f"{vals['loss']:.3f}", alpha=f"{vals['alpha']:.2f}", dice=f"{last_dice:.3f}")
        if done % cfg["eval_every"] == 0 or done == T:
            res = evaluate_students(unet, sam, test_loader, cfg, device, amp_dtype)
            mean = {n: float(np.mean(list(r.values()))) for n, r in res.items()}
            headline = mean.get("medsam", mean.get("unet"))
            last_dice = headline
            log.line(f"step {done} test Dice per domain " + json.dumps(
                {n: {domains[d - 1]: round(v, 4) for d, v in r.items()} for n, r in res.items()})
                + " mean " + json.dumps({n: round(v, 4) for n, v in mean.items()}))
            if headline > best:
                best = headline
                save_atomic(checkpoint(done), out / "best_test_selected.pt")
                log.line(f"step {done} best_test_selected.pt: mean test Dice {best:.4f} "
                         "(selected ON THE TEST SETS, the paper's optimistic protocol)")
            save_atomic(checkpoint(done), out / "last.pt")
        if stop_at is not None and done >= stop_at:
            break
    bar.close()
    if res:
        log.line("final per-domain mean Dice (%) of the students, last step:\n" + dice_table(res, domains))
    return out


def main(argv: list[str] | None = None) -> None:
    try:
        train(argv)
    except (ConfigError, data.DataError, CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
