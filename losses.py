"""Losses of SynFoC (CVPR 2025): supervised/pseudo-label CE + Dice and the CDCR terms.

    ce_loss(logits, target, weight)        Eq. 11  cross-entropy, mean over ALL pixels of the batch
    dice_loss(logits, target, weight, mask) Eq. 12  soft Dice, per class over the batch, all C classes
    entropy_loss(prob, mask)               Eq. 9   one model's masked Shannon-entropy term (L_c)
    divergence_loss(prob_a, prob_b, mask)  Eq. 10  masked squared error (L_d, positive sign)
    mse_loss(prob_a, prob_b)               plain MSE consistency (the "cr" ablation)

DICE_MASKS = ("fg", "all"): which Dice channels the pixel weight W applies to. "fg" (default) is the authors'
code: their one-hot mask encoder builds class i's mask as `W * i == i`, which is true everywhere for i = 0, so
the background channel is computed over every pixel and W weights the foreground channels only. "all" weights
every channel (this project's earlier reading; a flag, `train.py --dice-mask all`, METHOD.md §3.7).

Conventions: logits/probabilities are [B,C,H,W] (channel 0 = background), targets int64 [B,H,W] class
ids, weights float [B,H,W] (a pixel with weight 0 adds zero to the sum but still counts in the mean:
no renormalisation by the mask size, as the official code). Every loss returns a float32 scalar: the
inputs are cast to float32 before softmax/log/sums, so the losses are safe under autocast (fp16/bf16).
Resizing is the caller's job: both arguments of a loss have the same spatial size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS_DICE = 1e-10  # smoothing of Eq. 12, in numerator and denominator (keeps empty classes finite)
EPS_PROB = 1e-10  # probabilities are clamped to >= this before log (Eq. 9)
DICE_MASKS = ("fg", "all")  # dice_loss(mask=...): the weight on the foreground channels only (authors), or on all


def _pixel_weight(weight: Tensor | None, like: Tensor) -> Tensor | float:
    """weight [B,H,W] (or None) -> float32 [B,1,H,W] broadcastable over classes (or the scalar 1)."""
    if weight is None:
        return 1.0
    return weight.to(device=like.device, dtype=torch.float32).unsqueeze(1)


def _as_mask(mask: Tensor, like: Tensor) -> Tensor:
    """mask [B,H,W] or [B,1,H,W] -> float32 [B,1,H,W] (broadcast over the C channels of `like`)."""
    mask = mask.to(device=like.device, dtype=torch.float32)
    return mask.unsqueeze(1) if mask.dim() == 3 else mask


def one_hot(target: Tensor, num_classes: int) -> Tensor:
    """int64 [B,H,W] class ids -> float32 one-hot [B,C,H,W]."""
    out = torch.zeros(target.shape[0], num_classes, *target.shape[1:], device=target.device)
    return out.scatter_(1, target.unsqueeze(1).long(), 1.0)


def ce_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Eq. 11: -(1/#pixels) sum_i w_i log softmax(logits)_i[y_i].

    logits [B,C,H,W], target int64 [B,H,W], weight float [B,H,W] or None (all ones).
    #pixels = B*H*W whatever the weight (masked pixels count as zero). Returns a float32 scalar.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target.unsqueeze(1).long())  # [B,1,H,W]
    return (nll * _pixel_weight(weight, logits)).mean()


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, mask: str = "fg") -> Tensor:
    """Eq. 12: mean over the C classes of 1 - (2 sum w_c p y + eps) / (sum w_c (p^2 + y^2) + eps).

    p = softmax(logits) [B,C,H,W], y = one-hot(target), sums over the whole batch (B,H,W) per class.
    Background (class 0) is included. w_c = weight [B,H,W] for the foreground classes; for the background
    w_0 = 1 with mask="fg" (the authors' code) or weight with mask="all". An all-zero weight gives 0 on the
    weighted channels (eps/eps), an absent class gives ~1. Returns a float32 scalar.
    """
    if mask not in DICE_MASKS:
        raise ValueError(f"dice_loss: mask must be one of {DICE_MASKS}, got {mask!r}")
    p = torch.softmax(logits.float(), dim=1)
    y = one_hot(target, p.shape[1])
    w = _pixel_weight(weight, logits)                                 # [B,1,H,W] or 1.0
    if mask == "fg" and weight is not None:
        first = torch.ones_like(w)                                    # background: every pixel counts
        w = torch.cat([first, w.expand(-1, p.shape[1] - 1, -1, -1)], dim=1)  # [B,C,H,W]
    inter = (w * p * y).sum(dim=(0, 2, 3))  # [C]
    denom = (w * (p * p + y)).sum(dim=(0, 2, 3))  # y is 0/1, so y^2 == y
    return (1.0 - (2.0 * inter + EPS_DICE) / (denom + EPS_DICE)).mean()


def entropy_loss(prob: Tensor, mask: Tensor) -> Tensor:
    """One model's term of Eq. 9 (L_c): mean over all B*C*H*W elements of -p log p * mask.

    prob [B,C,H,W] (softmax output, gradients flow into it), mask [B,1,H,W] or [B,H,W] (M_c, 0/1).
    p is clamped to >= 1e-10 inside the log only, so exact zeros stay finite and still get a gradient.
    L_c of the paper is 0.5 * (entropy_loss(P_sam, M_c at R) + entropy_loss(P_unet, M_c at S)).
    """
    p = prob.float()
    ent = -p * torch.log(p.clamp_min(EPS_PROB))
    return (ent * _as_mask(mask, p)).mean()


def divergence_loss(prob_a: Tensor, prob_b: Tensor, mask: Tensor) -> Tensor:
    """Eq. 10 (L_d, positive sign): mean over all B*C*H*W elements of (a - b)^2 * mask.

    prob_a, prob_b [B,C,H,W] at the same size (upsample the SAM probabilities to S first); both receive
    gradients. mask [B,1,H,W] or [B,H,W] (M_d, 0/1). The paper's minus sign is a typo (METHOD.md §3.7).
    """
    diff = prob_a.float() - prob_b.float()
    return (diff * diff * _as_mask(mask, diff)).mean()


def mse_loss(prob_a: Tensor, prob_b: Tensor) -> Tensor:
    """Plain mean squared error over all B*C*H*W elements (ablation "cr", Table 7), fp32 scalar."""
    diff = prob_a.float() - prob_b.float()
    return (diff * diff).mean()
