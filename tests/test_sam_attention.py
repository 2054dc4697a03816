"""sam_attention: SDPA forward of SAM's ViT attention vs the unpatched upstream module.

    nice -n 19 python -m pytest -q tests/test_sam_attention.py

Parity (values and gradients, fp32 allclose; bf16 within tolerance) for windowed blocks, windowed blocks
that need padding, global blocks and a whole SamSeg with LoRA-wrapped qkv whose B matrices are nonzero;
the relative-position lookup against upstream get_rel_pos; installation (counts, idempotence, undo,
deepcopy, LiteMedSAM untouched); the indices made on the model's device. The CUDA cases skip on a CPU.
"""
import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch.utils._python_dispatch import TorchDispatchMode

from hardware import sam_attention as SA
from records.checkpoint import TINY_SAM
from medsam_lora import build_sam, make_teacher

SMALL = dict(image_size=64, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,))
PADDED = dict(SMALL, window_size=3)  # grid 4 is padded to 6 before windowing
cuda = pytest.mark.cuda  # tests/conftest.py skips it without a GPU; bench/gpu_check.sh runs -m cuda


def randomized(config: dict, seed: int = 0):
    """A medsam SamSeg with nonzero LoRA B matrices and random relative-position tables (both start at 0)."""
    return SA.parity_model(config, seed)


def patched(module: torch.nn.Module) -> torch.nn.Module:
    fast = copy.deepcopy(module)
    assert SA.use_fast_attention(fast) > 0
    return fast


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def assert_grads_close(a: torch.nn.Module, b: torch.nn.Module, **tol) -> None:
    ga, gb = grads(a), grads(b)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        assert torch.allclose(ga[n], gb[n], **tol), f"gradient of {n} differs: {(ga[n] - gb[n]).abs().max()}"


@pytest.fixture
def count_sdpa(monkeypatch):
    """Counts calls of F.scaled_dot_product_attention (so a parity test cannot pass on an unpatched path)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


# ----------------------------------------------------------------------------- relative positions

@pytest.mark.parametrize("q_size,k_size,rows", [(4, 4, 7), (14, 14, 27), (32, 32, 63), (4, 4, 11), (3, 6, 11),
                                                 (6, 3, 11), (5, 5, 3)])
def test_rel_pos_table_matches_upstream(q_size, k_size, rows):
    table = torch.randn(rows, 8, generator=torch.Generator().manual_seed(rows))
    assert torch.equal(SA.rel_pos_table(q_size, k_size, table), get_rel_pos(q_size, k_size, table))


def test_rel_pos_index_values():
    idx = SA.rel_pos_index(3, 3, torch.device("cpu"))
    assert idx.tolist() == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]  # q − k + (k − 1)


# ----------------------------------------------------------------------------- parity, fp32

@pytest.mark.parametrize("config,block", [(SMALL, 0), (SMALL, 1), (PADDED, 0)],
                         ids=["windowed", "global", "windowed-padded"])
def test_block_parity_fp32(config, block, count_sdpa):
    """One encoder Block (window partition included) with a LoRA qkv: outputs and all gradients."""
    ref = randomized(config).image_encoder.blocks[block]
    fast = patched(ref)
    assert type(fast.attn) is SA.FastSamAttention and type(ref.attn) is Attention
    assert fast.window_size == config["window_size"] * (block not in config["global_attn_indexes"])
    x = torch.randn(2, 4, 4, config["embed_dim"], generator=torch.Generator().manual_seed(1))
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(2, 4, 4, config["embed_dim"])
    yr, yf = ref(xr), fast(xf)
    assert count_sdpa == [True]  # the fast block went through SDPA, with the rel-pos bias
    assert torch.allclose(yr, yf, rtol=1e-5, atol=1e-5), (yr - yf).abs().max()
    (yr * w).sum().backward()
    (yf * w).sum().backward()
    assert torch.allclose(xr.grad, xf.grad, rtol=1e-5, atol=1e-5)
    assert_grads_close(ref, fast, rtol=1e-4, atol=1e-5)
    lora = [n for n in grads(fast) if ".b_q" in n or ".a_q" in n]
    assert lora and all(grads(fast)[n].abs().sum() > 0 for n in lora)  # LoRA on q really reaches the loss


@pytest.mark.parametrize("config", [SMALL, TINY_SAM], ids=["small", "TINY_SAM"])
def test_model_parity_fp32(config, count_sdpa):
    """The whole prompt-free SamSeg: logits and the gradients of every parameter."""
    ref = randomized(config)
    fast = patched(ref)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    yr, yf = ref(x), fast(x)
    assert len(count_sdpa) == config["depth"]
    assert torch.allclose(yr, yf, rtol=1e-5, atol=1e-5), (yr - yf).abs().max()
    yr.square().mean().backward()
    yf.square().mean().backward()
    assert_grads_close(ref, fast, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- parity, low precision

def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """‖a − b‖ / max(‖b‖, floor), b the reference (the floor keeps analytically-zero gradients, e.g. the
    decoder's key biases under softmax, from dividing rounding noise by rounding noise)."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(floor))


def check_precision_parity(device: str, dtype: torch.dtype) -> None:
    """Whole SamSeg, logits and every parameter's gradient. float32: SDPA equals upstream within 1e-4
    (relative norm; TF32 off). bf16/fp16 autocast: both paths round; against the fp32 result the SDPA
    path may be at most 2x upstream's own error + 0.05 (a wrong bias or scale is off by O(1)), for the
    logits and every gradient, and the whole gradient vector within 2x + 0.01."""
    ref = randomized(TINY_SAM).to(device)
    fast = patched(ref)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).to(device)

    def run(model, low: torch.dtype | None):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=low or torch.bfloat16, enabled=low is not None):
            y = model(x).float()
        y.square().mean().backward()
        return y.detach(), grads(model)

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN convs default to TF32
        y32, g32 = run(ref, None)
        yr, gr = run(ref, None if dtype == torch.float32 else dtype)
        yf, gf = run(fast, None if dtype == torch.float32 else dtype)
    floor = 1e-3 * max(float(g.norm()) for g in g32.values())
    err = lambda g, n: rel_err(g[n], g32[n], floor)  # noqa: E731
    flat = lambda g: torch.cat([g[n].flatten().float() for n in g32])  # noqa: E731
    if dtype == torch.float32:
        assert rel_err(yf, y32) < 1e-4
        worse = {n: err(gf, n) for n in g32 if err(gf, n) >= 1e-4}
        assert not worse, worse
        return
    assert rel_err(yf, y32) <= 2 * rel_err(yr, y32) + 0.05, (rel_err(yf, y32), rel_err(yr, y32))
    assert rel_err(flat(gf), flat(g32)) <= 2 * rel_err(flat(gr), flat(g32)) + 0.01
    worse = {n: (err(gf, n), err(gr, n)) for n in g32 if err(gf, n) > 2 * err(gr, n) + 0.05}
    assert not worse, worse


def test_bf16_autocast_within_tolerance():
    check_precision_parity("cpu", torch.bfloat16)


# ----------------------------------------------------------------------------- installation

def test_install_counts_idempotent_undo_and_teacher():
    model = build_sam("medsam", 3, None, 4, **SMALL)
    keys = list(model.state_dict())
    assert SA.use_fast_attention(model) == 2
    assert SA.use_fast_attention(model) == 0  # already done
    assert list(model.state_dict()) == keys  # checkpoints are unaffected
    teacher = make_teacher(model)
    attn = [m for m in teacher.modules() if isinstance(m, Attention)]
    assert len(attn) == 2 and all(type(m) is SA.FastSamAttention for m in attn)
    assert type(teacher.mask_decoder.transformer.layers[0].self_attn).__name__ == "Attention"  # decoder untouched
    assert SA.use_fast_attention(model, enable=False) == 2
    assert all(type(m) is Attention for m in model.modules() if isinstance(m, Attention))


def test_vit_b_has_twelve_and_litemedsam_none():
    with torch.device("meta"):  # ViT-B structure without allocating its weights
        vit_b = build_sam("medsam", 3)
    assert SA.use_fast_attention(vit_b) == 12
    assert SA.use_fast_attention(build_sam("litemedsam", 3)) == 0  # TinyViT attention is another class


class DeviceLog(TorchDispatchMode):
    """Records the device of every tensor an aten op reads or makes."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_indices_made_on_the_model_device():
    """On the meta device, any tensor made on the CPU (upstream's arange indices) shows up in the log."""
    ref = build_sam("medsam", 3, None, 4, **SMALL).image_encoder.blocks[1].attn  # global block
    fast = patched(ref)
    x = torch.empty(2, 4, 4, 32, device="meta")
    for module, expect_cpu in ((ref, True), (fast, False)):
        module.to("meta")
        with DeviceLog() as log:
            assert module(x).shape == x.shape
        assert ("cpu" in log.devices) is expect_cpu, log.devices


# ----------------------------------------------------------------------------- CUDA

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_model_parity(dtype):
    """On the GPU, where SDPA runs its fused kernels (memory-efficient / cuDNN with a bias)."""
    check_precision_parity("cuda", dtype)


@cuda
def test_cuda_no_host_sync():
    """Forward + backward of the patched attention (windowed and global) never synchronises the host."""
    model = patched(randomized(TINY_SAM)).cuda()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    model(x).float().mean().backward()  # warm-up: lazy CUDA initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        enc = model.image_encoder
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = enc(x)
        y.float().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
