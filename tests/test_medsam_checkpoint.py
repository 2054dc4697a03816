"""--sam-ckpt: SAM / MedSAM ViT-B, ViT-L and ViT-H state dicts are recognised from their tensor shapes
(full-size key/shape tables on the meta device: no weights allocated), a small random SAM-format file
loads through build_sam (plain and wrapped as {"model": sd}), and wrong files get one WeightsError line."""
import pytest
import torch
import torch.nn as nn

import medsam_lora as ml

# segment_anything.build_sam's encoders: (embed dim, depth, heads, global-attention blocks)
REAL = {"ViT-B": (768, 12, 12, (2, 5, 8, 11)), "ViT-L": (1024, 24, 16, (5, 11, 17, 23)),
        "ViT-H": (1280, 32, 16, (7, 15, 23, 31))}


def sam_state(dim, depth, heads, glob, image_size=1024, num_classes=4, device="meta"):
    """A SAM-format state dict with segment_anything's own key names and shapes (built by its modules,
    as segment_anything.build_sam builds them for 1024 input), on `device`."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = image_size // 16
    with torch.device(device):
        torch.manual_seed(0)
        enc = ImageEncoderViT(img_size=image_size, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                              mlp_ratio=4, out_chans=256, qkv_bias=True,
                              norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6), use_rel_pos=True, window_size=14,
                              global_attn_indexes=glob)
        prompt = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                               input_image_size=(image_size, image_size), mask_in_chans=16)
        dec = MaskDecoder(num_multimask_outputs=num_classes - 1, transformer_dim=256, iou_head_depth=3,
                          iou_head_hidden_dim=256,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
    sd = {}
    for name, m in (("image_encoder", enc), ("prompt_encoder", prompt), ("mask_decoder", dec)):
        sd.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
    return sd


@pytest.mark.parametrize("variant", list(REAL))
def test_full_size_variants_detected_from_shapes(variant):
    dim, depth, heads, glob = REAL[variant]
    sd = sam_state(dim, depth, heads, glob)
    assert sd["image_encoder.pos_embed"].is_meta  # nothing allocated
    cfg = ml.sam_config_from_state_dict(sd)
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["global_attn_indexes"]) == (dim, depth, heads, glob)
    assert cfg["window_size"] == 14 and cfg["patch_size"] == 16 and cfg["mlp_ratio"] == 4.0
    assert ml.sam_variant(cfg) == variant
    # the 512-input model of that size takes the adapted checkpoint: every key and shape fits
    with torch.device("meta"):
        model = ml._medsam(4, **{**ml.VIT_B_512, **cfg})
    own = model.state_dict()
    adapted = ml.adapt_sam_state_dict(sd, model)
    assert set(own) - set(adapted) == {k for k in own if k.startswith(ml.DROPPED_PREFIXES)}
    assert all(adapted[k].shape == own[k].shape for k in adapted)
    assert adapted["image_encoder.pos_embed"].shape == (1, 32, 32, dim)
    assert adapted[f"image_encoder.blocks.{glob[0]}.attn.rel_pos_h"].shape == (63, dim // heads)


def test_file_name_does_not_matter_and_small_checkpoint_loads(tmp_path):
    # a small ViT (dim 64, 4 blocks, 2 heads, globals 1 and 3) in SAM's 1024 format, under a misleading name
    sd = sam_state(64, 4, 2, (1, 3), device="cpu")
    path = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(sd, path)
    model = ml.build_sam("medsam", 3, path, rank=2)
    enc = model.image_encoder
    assert len(enc.blocks) == 4 and enc.pos_embed.shape == (1, 32, 32, 64)
    assert [i for i, b in enumerate(enc.blocks) if b.window_size == 0] == [1, 3]
    assert enc.blocks[0].attn.num_heads == 2
    # the weights are the file's (adapted), not a fresh initialisation
    w = sd["image_encoder.blocks.2.mlp.lin1.weight"]
    assert torch.equal(enc.blocks[2].mlp.lin1.weight, w)
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, sd["image_encoder.blocks.0.attn.rel_pos_h"])  # 27 rows kept
    # MedSAM's training format {"model": sd, "optimizer": ..., "epoch": ...} loads the same weights
    wrapped = tmp_path / "medsam_model_best.pth"
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3}, wrapped)
    again = ml.build_sam("medsam", 3, wrapped, rank=2)
    assert torch.equal(again.image_encoder.blocks[2].mlp.lin1.weight, w)
    assert torch.equal(again.image_encoder.pos_embed, enc.pos_embed)


def one_line_error(tmp_path, obj_or_bytes, *needles):
    path = tmp_path / "x.pth"
    if isinstance(obj_or_bytes, bytes):
        path.write_bytes(obj_or_bytes)
    else:
        torch.save(obj_or_bytes, path)
    with pytest.raises(ml.WeightsError) as e:
        ml.build_sam("medsam", 3, path)
    msg = str(e.value)
    assert "\n" not in msg and "x.pth" in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_wrong_files_say_what_was_found_and_expected(tmp_path):
    import unet

    expected = "expected a SAM or MedSAM ViT-B/L/H state dict"
    one_line_error(tmp_path, unet.UNet(3, 3, 4).state_dict(), "a U-Net state dict", expected)
    lite = {"image_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 1), "mask_decoder.x": torch.zeros(1)}
    one_line_error(tmp_path, lite, "LiteMedSAM", "--sam litemedsam", expected)
    one_line_error(tmp_path, {"format": 1, "config": {}, "step": 3, "sam": {}}, "SynFoC training checkpoint")
    full = sam_state(64, 4, 2, (1, 3), device="cpu")
    raw = (tmp_path / "full.pth")
    torch.save(full, raw)
    one_line_error(tmp_path, raw.read_bytes()[: len(raw.read_bytes()) // 2], "truncated", "cannot read")
    gap = {k: v for k, v in full.items() if not k.startswith("image_encoder.blocks.2.")}
    one_line_error(tmp_path, gap, "encoder blocks", expected)
    odd = dict(full, **{"image_encoder.blocks.0.attn.rel_pos_h": torch.zeros(31, 32)})
    one_line_error(tmp_path, odd, "rel_pos rows", "127 rows")
    with pytest.raises(ml.WeightsError, match="not found"):
        ml.build_sam("medsam", 3, tmp_path / "missing.pth")
