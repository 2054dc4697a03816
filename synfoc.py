"""One SynFoC training iteration's maths, as functions (the loop, the backward and the EMA are train.py's).

    run = build_run(cfg, device)                      # students, EMA teachers, optimisers, GradScaler
    with run.amp():                                   # train.train_step: autocast, then the scaled backward,
        out = training_losses(run, lb, ub, M_S, step) #   both optimisers and ema_update of both teachers
    training_losses = synfoc_losses (or baseline_losses / supervised_losses, by --mode and the burn-in)
    synfoc_losses = teach (stages 2-5, no grad; teachers() = stages 2-3) + student_losses (stages 6-7)

Stages of one SynFoC step (equation numbers of the paper):
  1 views (the loader): labeled weak (x_l, y_l); unlabeled weak x_w and strong x_s, each at the U-Net
    size S and the SAM input size I; labels at S and at SAM's logit size R.
  2 teachers on x_w, no grad: P_UT = softmax(U-Net teacher) [B,C,S,S], P_MS = softmax(SAM teacher) [B,C,R,R]
  3 SMC (Eq. 4-6): Phi_self = agreement(U-Net student, U-Net teacher), Phi_mut = agreement(U-Net teacher,
    SAM teacher); alpha = Phi_self * Phi_mut per image (or a Table 8 strategy, --alpha)
  4 ensemble (Eq. 3) P = alpha P_UT + (1 - alpha) up(P_MS) -> pseudo-label Q = argmax, W = [max >= tau] (Eq. 7),
    at S for the U-Net and (bilinearly resized) at R for SAM (run.targets; with --pseudo-labels oracle, a
    diagnostic, Q = the unlabeled images' ground truth and W = 1)
  5 intermediate samples (Eq. 1): x_c = x_l M + x_s (1 - M), Q_c = y_l M + Q (1 - M), W_c = 1 in M, W outside
  6 student forwards: U-Net on x_l and on x_c (two forwards, as the official code: BatchNorm statistics
    of each batch on its own), SAM on [x_l; x_c] in one batch (no batch-dependent layer there)
  7 L_x = CE + Dice on x_l (Eq. 11, 12) of both students; L_u = CE + Dice on x_c vs (Q_c, W_c) (Eq. 7; W_c
    weights CE and the foreground Dice channels, the background Dice channel counts every pixel: --dice-mask);
    CDCR (Eq. 8-10): L_c = entropy on the consensus pixels of each student, L_d = squared difference on
    the divergence pixels; loss = L_x + lambda(t) (L_u + L_c + L_d) (Eq. 2)
  8 one backward, both optimisers (one GradScaler), EMA of both teachers: train.py (train_step, update)

lambda(t): Eq. 2 over the whole run, or with --burn-in K: 0 for t < K (those steps are supervised only:
only L_x, no unlabeled forward), then Eq. 2 over the remaining T - K steps (the burn-in stage of
Unbiased Teacher, Liu et al., ICLR 2021).

The caller runs these under the run's autocast (run.amp(), train.train_step): the model forwards run in the
autocast dtype, and every output is cast to fp32 (.float()) before a loss or an SMC step uses it, so the losses,
the ratios and the pseudo-labels are computed in fp32 (none of their ops is one autocast lowers).
Everything here stays on the device (no .item(), .cpu(), or host-to-device copy): the host never waits.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hardware.speedups import AMP_DTYPES, optimise_models
import losses
from medsam_lora import build_sam, make_teacher
import smc
from unet import UNet

LOSS_NAMES = ("loss", "L_x", "L_u", "L_c", "L_d")


@dataclass
class Run:
    """The trainable state of one run: students, teachers (None where the mode has none), optimisers."""
    cfg: dict
    unet: UNet | None
    unet_t: UNet | None
    sam: torch.nn.Module | None
    sam_t: torch.nn.Module | None
    opt_unet: torch.optim.Optimizer | None
    opt_sam: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    sync: Callable[["Run"], None] | None = None  # after the backward: averages gradients over ranks (torchrun)
    # (P [B,C,H,W], ground truth [B,H,W], tau) -> (Q, W) of Eq. 7: ensemble_targets, or oracle_targets (diagnostic)
    targets: Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]] | None = None

    def amp(self):
        """The autocast context of this run (a no-op with --amp off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def optims(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.opt_unet, self.opt_sam) if o is not None]

    def ema_pairs(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """(teacher tensors, student tensors) of each teacher the EMA averages: every U-Net parameter, SAM's
        trainable ones (the frozen encoder is shared). BatchNorm buffers are not averaged (official)."""
        pairs = []
        if self.unet_t is not None:
            pairs.append((list(self.unet_t.parameters()), list(self.unet.parameters())))
        if self.sam_t is not None:
            pairs.append((self.sam_t.trainable_parameters(), self.sam.trainable_parameters()))
        return pairs


def uses(cfg: dict) -> tuple[bool, bool]:
    """(trains the U-Net, trains SAM) for this mode."""
    return cfg["mode"] in ("synfoc", "unet", "suponly"), cfg["mode"] in ("synfoc", "medsam")


def unet_from_config(cfg: dict) -> UNet:
    """The U-Net of a config, freshly initialised. One place, so student and teacher always match. (A saved
    config is read through records/checkpoint.upgrade: the keys it lacks get what that run trained with.)"""
    return UNet(cfg["in_channels"], cfg["num_classes"], cfg["unet_width"], cfg["unet_norm"], cfg["unet_layer"])


def build_models(cfg: dict, device: str | torch.device) -> tuple[UNet | None, torch.nn.Module | None]:
    """The two students of a (saved) config; a model the mode does not train is None."""
    use_unet, use_sam = uses(cfg)
    unet = unet_from_config(cfg).to(device) if use_unet else None
    sam = None
    if use_sam:  # sam_init_seed: only in configs older than --head-init (records/checkpoint.upgrade)
        kw = dict(seed=cfg.get("sam_init_seed", cfg["seed"]), head_init=cfg["head_init"], input_norm=cfg["sam_norm"])
        if cfg["sam"] == "tiny":
            tiny = dict(cfg["sam_tiny"], global_attn_indexes=tuple(cfg["sam_tiny"]["global_attn_indexes"]))
            sam = build_sam("medsam", cfg["num_classes"], None, cfg["rank"], **kw, **tiny)
        elif cfg["sam"] == "medsam":
            sam = build_sam("medsam", cfg["num_classes"], cfg["sam_ckpt"], cfg["rank"], **kw)
        else:
            sam = build_sam("litemedsam", cfg["num_classes"], None, cfg["rank"], lite_size=cfg["lite_size"], **kw)
        if cfg["fast_attn"]:
            # imported here: segment-anything (and torchvision, ~4 s) loads only when a SAM is built, so a
            # command line that stops at a user mistake answers at once
            from hardware.sam_attention import use_fast_attention
            use_fast_attention(sam)  # same outputs (tested), SDPA kernels
        sam = sam.to(device)
    if not cfg["plain"]:  # the optimised step (hardware/speedups.py): same function, faster kernels
        optimise_models(unet, sam)
    return unet, sam


def build_run(cfg: dict, device: str | torch.device) -> Run:
    """Students (build_models), EMA teachers, SGD (U-Net) and AdamW (SAM) as the paper."""
    device = torch.device(device)
    unet, sam = build_models(cfg, device)
    semi = cfg["mode"] != "suponly"
    unet_t = None
    if unet is not None and semi:  # the U-Net teacher is a full copy
        unet_t = unet_from_config(cfg).to(device)
        unet_t.load_state_dict(unet.state_dict())
        unet_t.requires_grad_(False)
        if not cfg["plain"]:
            optimise_models(unet_t, None)  # NHWC like its student (hardware/speedups.py)
    sam_t = make_teacher(sam) if sam is not None else None  # shares the frozen encoder with its student
    for model in (unet, unet_t, sam, sam_t):
        if model is not None:
            model.train()  # teachers stay in train mode during training (official)
            if cfg["compile"]:
                model.compile()  # in place: state_dict keys unchanged
    fused = device.type == "cuda" and not cfg["plain"]  # one kernel per optimiser step, no host sync in scaler.step
    opt_unet = torch.optim.SGD(unet.parameters(), lr=cfg["lr_unet"], momentum=0.9, weight_decay=1e-4,
                               fused=fused) if unet is not None else None
    opt_sam = torch.optim.AdamW(sam.trainable_parameters(), lr=cfg["lr_sam"], betas=(0.9, 0.999),
                                weight_decay=0.1, fused=fused) if sam is not None else None
    amp_dtype = AMP_DTYPES.get(cfg["amp"])  # None: --amp off
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    targets = PSEUDO_LABELS[cfg["pseudo_labels"]]
    return Run(cfg, unet, unet_t, sam, sam_t, opt_unet, opt_sam, scaler, amp_dtype, device, targets=targets)


def lam(step: int, cfg: dict) -> float:
    """lambda(t) of Eq. 2, after the burn-in: 0 for t < K, then exp(-5 (1 - (t-K)/(T-K))^2). A host float."""
    k = cfg["burn_in"]
    return 0.0 if step < k else smc.warmup(step - k, cfg["steps"] - k)


def resize(x: Tensor, size: int, mode: str) -> Tensor:
    """[B, C, H, W] -> [B, C, size, size]; "nearest" for labels, masks and CDCR maps (pixel-centre sampling,
    torch's "nearest-exact": the same rule as transforms.resize_label), "bilinear" for probs."""
    if x.shape[-1] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False)


def _pair(x_l: Tensor, n: int) -> Tensor:
    """The labeled item of each of n unlabeled ones: the i-th unlabeled <-> the (i mod L)-th labeled."""
    return x_l[torch.arange(n, device=x_l.device) % x_l.shape[0]]


def mix_images(x_l: Tensor, x_s: Tensor, M: Tensor) -> Tensor:
    """Eq. 1: x_c = x_l M + x_s (1 - M). x_l [L,C,H,W], x_s [B,C,H,W], M [B,1,H,W] 0/1 -> [B,C,H,W]."""
    return _pair(x_l, x_s.shape[0]) * M + x_s * (1 - M)


def mix_targets(y_l: Tensor, q: Tensor, w: Tensor, M: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 1 on the targets: Q_c = y_l M + Q (1 - M), W_c = 1 inside M, W outside. y_l [L,H,W], q/w [B,H,W]."""
    inside = M[:, 0] > 0                                                    # [B, H, W]
    return torch.where(inside, _pair(y_l, q.shape[0]), q), torch.where(inside, torch.ones_like(w), w)


def seg_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, dice_mask: str = "fg") -> Tensor:
    """CE (Eq. 11) + Dice (Eq. 12), fp32; dice_mask: which Dice channels the weight applies to (losses.DICE_MASKS)."""
    return losses.ce_loss(logits, target, weight) + losses.dice_loss(logits, target, weight, dice_mask)


def ensemble_targets(p: Tensor, gt: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Eq. 7: Q = argmax P, W = [max P >= tau]. p [B, C, H, W] -> q [B, H, W] int64, w [B, H, W] float. gt unused."""
    return smc.pseudo_label(p, tau)


def oracle_targets(p: Tensor, gt: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """`--pseudo-labels oracle`, a DIAGNOSTIC, not the method: Q = the unlabeled images' ground truth gt [B, H, W]
    (what the loader carries for monitoring), W = 1 everywhere; p and tau unused. Everything else (views,
    mixing, losses, schedule, the teachers' forwards) is unchanged, so the run bounds what the unlabeled path
    can give at its budget."""
    return gt, torch.ones_like(gt, dtype=torch.float32)


PSEUDO_LABELS = {"ensemble": ensemble_targets, "oracle": oracle_targets}  # train.py --pseudo-labels


# ----------------------------------------------------------------------------- SynFoC (both models)

@torch.no_grad()
def teachers(run: Run, ub: dict, step: int) -> dict[str, Tensor]:
    """Stages 2-3 on the weak views: both teachers' probabilities, the SMC factors and alpha (no grad).
    -> p_ut [B, C, S, S], p_ms [B, C, R, R], y_ut [B, S, S], phi_self / phi_mut / a_sam / a_unet [B]."""
    cfg = run.cfg
    p_ut = run.unet_t(ub["weak_unet"]).float().softmax(1)                    # [B, C, S, S]   stage 2
    p_ms = run.sam_t(ub["weak_sam"]).float().softmax(1)                      # [B, C, R, R]
    g_w = run.unet(ub["weak_unet"]).argmax(1)                                # [B, S, S]      stage 3
    y_ut = p_ut.argmax(1)                                                    # [B, S, S]
    phi_self, phi_mut = smc.smc_factors(g_w, y_ut, p_ms.argmax(1), cfg["parts"])  # Eq. 4, 5: [B] each
    k = cfg["burn_in"]  # "linear" runs on lambda's clock: t - K of T - K (Eq. 2 after the burn-in)
    a_sam, a_unet = smc.strategy_alpha(cfg["alpha"], phi_self, phi_mut, step - k, cfg["steps"] - k)  # Eq. 6
    return dict(p_ut=p_ut, p_ms=p_ms, y_ut=y_ut, phi_self=phi_self, phi_mut=phi_mut, a_sam=a_sam, a_unet=a_unet)


@torch.no_grad()
def teach(run: Run, lb: dict, ub: dict, M_S: Tensor, step: int) -> dict[str, Tensor]:
    """Stages 2-5: teachers, SMC alpha, ensemble pseudo-labels and the intermediate samples (no grad)."""
    cfg, parts, S = run.cfg, run.cfg["parts"], run.cfg["unet_size"]
    I, R = run.sam.image_size, run.sam.logit_size
    t = teachers(run, ub, step)                                              # stages 2-3
    p_ut, p_ms, y_ut, a_sam, a_unet = t["p_ut"], t["p_ms"], t["y_ut"], t["a_sam"], t["a_unet"]
    phi_self, phi_mut = t["phi_self"], t["phi_mut"]
    q_S, w_S = run.targets(smc.ensemble(p_ut, p_ms, a_unet), ub["label_unet"], cfg["tau"])  # Eq. 3, 7 at S
    q_R, w_R = run.targets(resize(smc.ensemble(p_ut, p_ms, a_sam), R, "bilinear"), ub["label_sam"], cfg["tau"])
    M_I, M_R = resize(M_S, I, "nearest"), resize(M_S, R, "nearest")       # [B, 1, I, I], [B, 1, R, R]
    xc_S, xc_I = mix_images(lb["img_unet"], ub["strong_unet"], M_S), mix_images(lb["img_sam"], ub["strong_sam"], M_I)
    qc_S, wc_S = mix_targets(lb["label_unet"], q_S, w_S, M_S)                                      # stage 5
    qc_R, wc_R = mix_targets(lb["label_sam"], q_R, w_R, M_R)
    gt = ub["label_unet"]  # monitoring only (paper Fig. 6): never enters a loss
    return dict(xc_S=xc_S, qc_S=qc_S, wc_S=wc_S, xc_I=xc_I, qc_R=qc_R, wc_R=wc_R,
                alpha=a_unet.mean(), phi_self=phi_self.mean(), phi_mut=phi_mut.mean(), mask_ratio=w_S.mean(),
                dice_ensemble=smc.agreement(q_S, gt, parts).mean(),
                dice_unet_teacher=smc.agreement(y_ut, gt, parts).mean(),
                dice_sam_teacher=smc.agreement(resize(p_ms, S, "bilinear").argmax(1), gt, parts).mean())


def student_losses(run: Run, lb: dict, tg: dict[str, Tensor], step: int) -> dict[str, Tensor]:
    """Stages 6-7: student forwards (the caller's autocast) and the losses (fp32) of Eq. 2 with its terms."""
    L = lb["img_unet"].shape[0]
    g_l = run.unet(lb["img_unet"]).float()                                  # [L, C, S, S]
    g_c = run.unet(tg["xc_S"]).float()                                      # [B, C, S, S]
    f = run.sam(torch.cat([lb["img_sam"], tg["xc_I"]])).float()             # [L+B, C, R, R]
    f_l, f_c = f[:L], f[L:]
    L_x = seg_loss(g_l, lb["label_unet"]) + seg_loss(f_l, lb["label_sam"])
    dm = run.cfg["dice_mask"]
    L_u = seg_loss(g_c, tg["qc_S"], tg["wc_S"], dm) + seg_loss(f_c, tg["qc_R"], tg["wc_R"], dm)
    L_c = L_d = L_x.new_zeros(())
    if run.cfg["reg"] != "none":
        pc_ut, pc_ms = g_c.softmax(1), f_c.softmax(1)                       # [B, C, S, S], [B, C, R, R]
        pc_ms_S = resize(pc_ms, run.cfg["unet_size"], "nearest")
    if run.cfg["reg"] == "cdcr":
        mc_S, md_S, mc_R, _ = smc.consensus_masks(pc_ut, pc_ms)            # Eq. 8
        L_c = 0.5 * (losses.entropy_loss(pc_ms, mc_R) + losses.entropy_loss(pc_ut, mc_S))  # Eq. 9
        L_d = losses.divergence_loss(pc_ms_S, pc_ut, md_S)                  # Eq. 10 (positive sign)
    elif run.cfg["reg"] == "cr":                                            # Table 7: plain consistency
        L_c = losses.mse_loss(pc_ms_S, pc_ut)
    loss = L_x + lam(step, run.cfg) * (L_u + L_c + L_d)                     # Eq. 2
    return dict(loss=loss, L_x=L_x, L_u=L_u, L_c=L_c, L_d=L_d)


def synfoc_losses(run: Run, lb: dict, ub: dict, M_S: Tensor, step: int) -> dict[str, Tensor]:
    """Stages 2-7 of SynFoC -> the loss terms and the monitoring values (all 0-dim device tensors)."""
    tg = teach(run, lb, ub, M_S, step)
    out = student_losses(run, lb, tg, step)
    out.update({k: v for k, v in tg.items() if v.ndim == 0})
    return out


# ----------------------------------------------------------------------------- baselines and burn-in

def supervised_losses(run: Run, lb: dict, ub: dict | None = None, M_S: Tensor | None = None,
                      step: int = 0) -> dict[str, Tensor]:
    """L_x of every student on the labeled batch: SupOnly, and any mode during its burn-in."""
    terms = [seg_loss(m(lb[x]).float(), lb[y]) for m, x, y in
             ((run.unet, "img_unet", "label_unet"), (run.sam, "img_sam", "label_sam")) if m is not None]
    L_x = torch.stack(terms).sum()
    zero = L_x.new_zeros(())
    return dict(loss=L_x, L_x=L_x, L_u=zero, L_c=zero, L_d=zero)


def baseline_losses(run: Run, lb: dict, ub: dict, M_S: Tensor, step: int) -> dict[str, Tensor]:
    """Table 7 "Base U-Net" / "Base MedSAM": one Mean Teacher with intermediate samples (alpha fixed to its
    own teacher, no CDCR); the same stages as SynFoC with a single model."""
    sam = run.unet is None
    student, teacher = (run.sam, run.sam_t) if sam else (run.unet, run.unet_t)
    x, y, w_, s_ = ("img_sam", "label_sam", "weak_sam", "strong_sam") if sam else \
        ("img_unet", "label_unet", "weak_unet", "strong_unet")
    size_in, size_out = (run.sam.image_size, run.sam.logit_size) if sam else (run.cfg["unet_size"],) * 2
    with torch.no_grad():
        p_t = teacher(ub[w_]).float().softmax(1)                            # [B, C, R|S, R|S]
        q, w = run.targets(p_t, ub[y], run.cfg["tau"])                    # Eq. 7 (or the oracle's)
        x_c = mix_images(lb[x], ub[s_], resize(M_S, size_in, "nearest"))
        q_c, w_c = mix_targets(lb[y], q, w, resize(M_S, size_out, "nearest"))
        gt, S = ub["label_unet"], run.cfg["unet_size"]
        dice_t = smc.agreement(resize(p_t, S, "bilinear").argmax(1), gt, run.cfg["parts"]).mean()
    f_l, f_c = student(lb[x]).float(), student(x_c).float()
    L_x, L_u = seg_loss(f_l, lb[y]), seg_loss(f_c, q_c, w_c, run.cfg["dice_mask"])
    zero = L_x.new_zeros(())
    one = torch.ones_like(zero)
    return dict(loss=L_x + lam(step, run.cfg) * L_u, L_x=L_x, L_u=L_u, L_c=zero, L_d=zero,
                alpha=zero if sam else one, phi_self=one, phi_mut=one, mask_ratio=w.mean(), dice_ensemble=dice_t,
                **{("dice_sam_teacher" if sam else "dice_unet_teacher"): dice_t})


def losses_fn(cfg: dict):
    """The loss function of a mode (chosen once per run, so the step itself has no mode branches)."""
    return {"synfoc": synfoc_losses, "unet": baseline_losses, "medsam": baseline_losses,
            "suponly": supervised_losses}[cfg["mode"]]


def training_losses(run: Run, lb: dict, ub: dict | None, M_S: Tensor | None, step: int) -> dict[str, Tensor]:
    """The losses of one training step: the mode's (losses_fn), or the supervised ones during the burn-in."""
    fn = supervised_losses if step < run.cfg["burn_in"] else losses_fn(run.cfg)
    return fn(run, lb, ub, M_S, step)


@torch.no_grad()
def ema_update(teacher: list[Tensor], student: list[Tensor], decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameter by parameter (BN buffers are not averaged).
    The plain step's loop; the optimised step uses speedups.ema_foreach (one call, the same within rounding)."""
    for t, s in zip(teacher, student):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


__all__ = ["Run", "build_run", "lam", "teachers", "teach", "student_losses", "synfoc_losses", "supervised_losses",
           "baseline_losses", "losses_fn", "training_losses", "ema_update", "LOSS_NAMES"]
