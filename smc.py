"""Self-Mutual Confidence (SMC) and the pseudo-label machinery of SynFoC (CVPR 2025).

    agreement(a, b, parts)                        Eq. 4/5  smoothed Dice agreement of two label maps, per sample
    smc_factors(unet_s, unet_t, sam_t, parts)     Eq. 4/5  (Phi_self, Phi_mut), per sample
    smc_alpha(unet_s, unet_t, sam_t, parts)       Eq. 6    alpha = Phi_self * Phi_mut
    strategy_alpha(strategy, ...)                 Table 8  alpha for each student's target (smc, const, ...)
    ensemble(p_unet, p_sam, alpha)                Eq. 3    alpha * P_unet + (1 - alpha) * up(P_sam)
    pseudo_label(prob, tau)                       Eq. 7    Q = argmax, W = [max >= tau]
    consensus_masks(p_unet, p_sam)                Eq. 8    M_c / M_d at the U-Net size S and SAM size R
    warmup(step, total)                           Eq. 2    lambda(t) = exp(-5 (1 - t/T)^2)

Sizes: the U-Net works at S (e.g. 256), SAM's logits are at R (128 for a 512 input). Label maps are
int64 [B,H,W], probabilities float [B,C,H,W]. "parts" are the dataset's metric parts, each a tuple of
class ids (one per foreground class; fundus: cup = (1,), disc = (1, 2)).

Everything here is a target or a weight: it runs under torch.no_grad(), returns float32 tensors on the
input's device, and never syncs with the host (no .item()/.cpu()), so the host never waits for the GPU here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics import part_mask  # the project's one "pixels in part" rule (works on tensors)

# Eq. 4/5 smoothing as the authors' code: (2|A&B| + 1) / (|A| + |B| + 1.001), so two empty maps agree 1/1.001
AGREE_NUM, AGREE_DEN = 1.0, 1.001
STRATEGIES = ("smc", "const", "linear", "self", "mutual", "cps", "own")  # Table 8 (+ own: Table 7); smc is SynFoC


def _resize_labels(labels: Tensor, size: int | tuple[int, int]) -> Tensor:
    """int [B,H,W] -> int64 [B,h,w] by nearest, pixel-centre sampling (torch "nearest-exact": source index
    floor((i + 0.5) * H / h)), the project's one nearest rule (transforms.resize_label is its numpy twin)."""
    out = F.interpolate(labels.unsqueeze(1).float(), size=size, mode="nearest-exact")
    return out.squeeze(1).long()


def _progress(step: float | Tensor, total: float | Tensor) -> float | Tensor:
    """t/T clamped to [0, 1]; total <= 0 counts as finished (1)."""
    if isinstance(step, Tensor) or isinstance(total, Tensor):
        device = step.device if isinstance(step, Tensor) else total.device
        step = torch.as_tensor(step, dtype=torch.float32, device=device)
        total = torch.as_tensor(total, dtype=torch.float32, device=device)
        return torch.where(total > 0, step / total.clamp_min(1e-12), torch.ones_like(step)).clamp(0.0, 1.0)
    return 1.0 if total <= 0 else min(max(step / total, 0.0), 1.0)


@torch.no_grad()
def agreement(a: Tensor, b: Tensor, parts: Sequence[Sequence[int]]) -> Tensor:
    """Eq. 4/5: mean over parts k of (2|A_k & B_k| + 1) / (|A_k| + |B_k| + 1.001), per sample.

    a, b int64 [B,H,W] label maps of the same size; part k = the pixels whose class is in parts[k].
    The 1.001 is the authors' code (the paper prints +1). Both empty -> 1/1.001, disjoint non-empty ->
    1/(|A|+|B|+1.001). Returns float32 [B].
    """
    if len(parts) == 0:
        raise ValueError("agreement: parts is empty (expected e.g. [(1,), (1, 2)])")
    total = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
    for part in parts:  # a handful of parts: the loop is over parts, not pixels
        in_a, in_b = part_mask(a, part).flatten(1), part_mask(b, part).flatten(1)  # bool [B, H*W]
        inter = (in_a & in_b).sum(1).float()
        total += (2.0 * inter + AGREE_NUM) / (in_a.sum(1).float() + in_b.sum(1).float() + AGREE_DEN)
    return total / len(parts)


@torch.no_grad()
def smc_factors(
    unet_student: Tensor, unet_teacher: Tensor, sam_teacher: Tensor, parts: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    """Eq. 4 and 5: (Phi_self, Phi_mut), each float32 [B].

    unet_student, unet_teacher: int64 [B,S,S] argmax maps of G(x_u^w) and G_ema(x_u^w);
    sam_teacher: int64 [B,R,R] argmax map of F_ema(x_u^w).
    Phi_self = agreement(student, teacher) at S; Phi_mut = agreement(nearest(teacher -> R), sam) at R.
    """
    phi_self = agreement(unet_student, unet_teacher, parts)
    phi_mut = agreement(_resize_labels(unet_teacher, sam_teacher.shape[-2:]), sam_teacher, parts)
    return phi_self, phi_mut


@torch.no_grad()
def smc_alpha(
    unet_student: Tensor, unet_teacher: Tensor, sam_teacher: Tensor, parts: Sequence[Sequence[int]]
) -> Tensor:
    """Eq. 6: alpha_b = Phi_self_b * Phi_mut_b, float32 [B] in (0, 1]. Arguments as smc_factors."""
    phi_self, phi_mut = smc_factors(unet_student, unet_teacher, sam_teacher, parts)
    return phi_self * phi_mut


@torch.no_grad()
def strategy_alpha(
    strategy: str, phi_self: Tensor, phi_mut: Tensor, step: float | Tensor, total: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Table 8: the ensemble weight alpha (on the U-Net teacher) for each student's pseudo-label.

    phi_self, phi_mut float [B] (smc_factors). Returns (alpha_for_sam_target, alpha_for_unet_target),
    float32 [B] each; the same tensor twice except for "cps". Strategies:
      smc: Phi_self * Phi_mut | const: 0.5 | linear: t/T (the caller passes lambda's clock: steps since the
      burn-in over T - K) | self: Phi_self | mutual: Phi_mut
      cps: cross pseudo supervision, the SAM student learns from the U-Net teacher only (alpha = 1)
           and the U-Net student from the SAM teacher only (alpha = 0).
      own: each student from its own teacher (SAM target alpha = 0, U-Net target alpha = 1): Table 7's
           "CDCR without SMC" row (the two models meet only through the CDCR terms).
    """
    phi_self, phi_mut = phi_self.float(), phi_mut.float()
    if strategy == "smc":
        alpha = phi_self * phi_mut
    elif strategy == "const":
        alpha = torch.full_like(phi_self, 0.5)
    elif strategy == "linear":
        alpha = torch.zeros_like(phi_self) + _progress(step, total)
    elif strategy == "self":
        alpha = phi_self
    elif strategy == "mutual":
        alpha = phi_mut
    elif strategy == "cps":
        return torch.ones_like(phi_self), torch.zeros_like(phi_self)
    elif strategy == "own":
        return torch.zeros_like(phi_self), torch.ones_like(phi_self)
    else:
        raise ValueError(f"unknown alpha strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return alpha, alpha


@torch.no_grad()
def ensemble(p_unet: Tensor, p_sam: Tensor, alpha: Tensor | float) -> Tensor:
    """Eq. 3: P_ens = alpha * P_unet + (1 - alpha) * up(P_sam), at P_unet's size.

    p_unet float [B,C,S,S] (U-Net teacher probs), p_sam float [B,C,R,R] (SAM teacher probs, resized
    bilinearly, align_corners=False), alpha float [B] (per sample) or a scalar. Returns float32 [B,C,S,S].
    """
    p_unet, p_sam = p_unet.float(), p_sam.float()
    if p_sam.shape[-2:] != p_unet.shape[-2:]:
        p_sam = F.interpolate(p_sam, size=p_unet.shape[-2:], mode="bilinear", align_corners=False)
    a = alpha.float().reshape(-1, 1, 1, 1) if isinstance(alpha, Tensor) else float(alpha)
    return a * p_unet + (1.0 - a) * p_sam


@torch.no_grad()
def pseudo_label(prob: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Eq. 7 targets: Q = argmax_c prob (int64 [B,H,W]), W = [max_c prob >= tau] (float32 [B,H,W]).

    prob float [B,C,H,W]. For SAM, resize P_ens to R bilinearly before calling (METHOD.md §3.4).
    """
    conf, label = prob.float().max(dim=1)
    return label, (conf >= tau).float()


@torch.no_grad()
def consensus_masks(p_unet: Tensor, p_sam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eq. 8: consensus M_c = [argmax P_unet == argmax up(P_sam)], divergence M_d = 1 - M_c.

    p_unet [B,C,S,S] and p_sam [B,C,R,R] are the STUDENTS' predictions on x_c (probs or logits);
    P_sam is upsampled to S by nearest, M_c is brought back to R by nearest for SAM's own term.
    Returns (m_c_S, m_d_S, m_c_R, m_d_R), float32 [B,1,S,S] x2 and [B,1,R,R] x2, without gradient.
    """
    size_s, size_r = p_unet.shape[-2:], p_sam.shape[-2:]
    # argmax commutes with nearest resizing, so resize the cheap label map instead of all C channels
    q_sam = _resize_labels(p_sam.argmax(dim=1), size_s)
    m_c_s = (p_unet.argmax(dim=1) == q_sam).float().unsqueeze(1)
    m_c_r = F.interpolate(m_c_s, size=size_r, mode="nearest-exact")
    return m_c_s, 1.0 - m_c_s, m_c_r, 1.0 - m_c_r


def warmup(step: float | Tensor, total: float | Tensor) -> float | Tensor:
    """Eq. 2 Gaussian warm-up: lambda(t) = exp(-5 (1 - t/T)^2), t/T clamped to [0, 1].

    lambda(0) = exp(-5) ~ 0.0067, lambda(T/2) = exp(-1.25) ~ 0.2865, lambda(t >= T) = 1.
    Python numbers give a float, tensors give a float32 tensor.
    """
    r = _progress(step, total)
    if isinstance(r, Tensor):
        return torch.exp(-5.0 * (1.0 - r) ** 2)
    return math.exp(-5.0 * (1.0 - r) ** 2)
