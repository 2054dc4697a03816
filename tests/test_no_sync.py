"""The whole optimised train_step never synchronises the host with the GPU (CUDA only; skipped without a GPU).

    nice -n 19 python -m pytest -q tests/test_no_sync.py          # here: both cases skip (no GPU)
    python3 -m pytest -q -m cuda tests/test_no_sync.py            # on a GPU machine (bench/gpu_check.sh runs it)

One step of the reduced configuration (tiny ViT with fast attention, U-Net width 8, batch 2 + 2) after one
warm-up step, under torch.cuda.set_sync_debug_mode("error"): the teachers, SMC, pseudo-labels, both students,
every loss, the scaled backward, both FUSED optimisers through the GradScaler (fp16: the scaler's inf check
and unscaling stay on the device only because the optimisers are fused) and the foreach EMA of both teachers.
A synchronising call inside raises. Afterwards: every loss term is finite, and every student and teacher
moved (a skipped optimiser step, or an EMA that did nothing, fails the test). fp16 is the paper's precision;
bf16 runs without the GradScaler. The plain step (--plain) may sync: it is the parity reference, not timed.
"""
import tempfile

import pytest
import torch

import synfoc
import train
from records import config
import data

pytestmark = pytest.mark.cuda


def build(amp: str) -> synfoc.Run:
    with tempfile.TemporaryDirectory() as out:
        cfg = config.resolve_config(config.parse_args([
            "--dataset", "fundus", "--sam", "tiny", "--fast-attn", "--amp", amp, "--unet-width", "8",
            "--batch", "2", "2", "--burn-in", "0", "--steps", "100", "--device", "cuda", "--out", out]))
    cfg["unet_size"] = 64
    torch.manual_seed(0)
    run = synfoc.build_run(cfg, torch.device("cuda"))
    if amp == "fp16":  # 2^16 (the default start) can overflow the tiny model's fp16 gradients, and the scaler then
        # skips the optimiser step on purpose, which the "parameters moved" check below would call a failure
        run.scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    return run


def inputs(run: synfoc.Run, steps: int) -> tuple[dict, dict, list[torch.Tensor]]:
    """Random batches of the loader's shapes, and each step's copy-paste masks, all on the GPU before timing."""
    cfg, dev = run.cfg, run.device
    (L, U), S, C, Cin = cfg["batch"], cfg["unet_size"], cfg["num_classes"], cfg["in_channels"]
    I, R = run.sam.image_size, run.sam.logit_size
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g).to(dev)  # noqa: E731
    label = lambda *s: torch.randint(0, C, s, generator=g).to(dev)  # noqa: E731
    lb = dict(img_unet=rand(L, Cin, S, S), img_sam=rand(L, 3, I, I), label_unet=label(L, S, S), label_sam=label(L, R, R))
    ub = dict(weak_unet=rand(U, Cin, S, S), weak_sam=rand(U, 3, I, I), strong_unet=rand(U, Cin, S, S),
              strong_sam=rand(U, 3, I, I), label_unet=label(U, S, S), label_sam=label(U, R, R))
    masks = [data.boxes(t, U, S, 0).to(dev) for t in range(steps)]
    return lb, ub, masks


def snapshot(run: synfoc.Run) -> dict[str, list[torch.Tensor]]:
    return {"unet": [p.detach().clone() for p in run.unet.parameters()],
            "unet_t": [p.detach().clone() for p in run.unet_t.parameters()],
            "sam": [p.detach().clone() for p in run.sam.trainable_parameters()],
            "sam_t": [p.detach().clone() for p in run.sam_t.trainable_parameters()]}


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_optimised_train_step_never_syncs(amp):
    run = build(amp)
    assert not run.cfg["plain"] and run.cfg["fast_attn"]
    assert run.opt_unet.defaults["fused"] and run.opt_sam.defaults["fused"]  # the optimised step's optimisers
    assert run.scaler.is_enabled() is (amp == "fp16")
    lb, ub, masks = inputs(run, 2)
    train.train_step(run, lb, ub, masks[0], 0)  # warm-up: lazy init (cuBLAS handles, optimiser state) may sync
    torch.cuda.synchronize()
    before = snapshot(run)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = train.train_step(run, lb, ub, masks[1], 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    bad = {k: float(out[k]) for k in synfoc.LOSS_NAMES if not torch.isfinite(out[k])}
    assert not bad, f"non-finite losses {bad}"
    after = snapshot(run)
    for name in before:
        moved = sum(not torch.equal(a, b) for a, b in zip(before[name], after[name]))
        assert moved > 0, f"{name}: no tensor changed in the step ({amp})"
    # an fp16 step the scaler skipped would leave the students as they were: the scale must not have dropped
    if amp == "fp16":
        assert run.scaler.get_scale() >= 2.0 ** 10
