"""hardware/speedups.py: the optimised step computes the plain step's function (fp32, LiteMedSAM with its folded stem),
and `--plain` turns every change off.

    nice -n 19 python -m pytest -q tests/test_speedups.py
"""
import copy

import pytest
import torch

from hardware import speedups
import synfoc
import train
from records import config
import data
from medsam_lora import build_sam


def lite_run(plain: bool, lite_size: int = 64):
    cfg = config.resolve_config(config.parse_args(
        ["--dataset", "synthetic", "--lite-size", str(lite_size), "--unet-width", "4", "--amp", "off", "--device", "cpu",
         "--unet-size", "256",  # the size these tolerances were set at: at 128 one consensus pixel flips L_c by 2e-4
         "--batch", "1", "2", "--steps", "10", "--burn-in", "0", "--tau", "0.4"] + (["--plain"] if plain else [])))
    torch.manual_seed(0)
    return synfoc.build_run(cfg, "cpu")


def batches(run, seed=0):
    g = torch.Generator().manual_seed(seed)
    L, U = run.cfg["batch"]
    S, I, R = run.cfg["unet_size"], run.sam.image_size, run.sam.logit_size
    lb = dict(img_unet=torch.rand(L, 3, S, S, generator=g), img_sam=torch.rand(L, 3, I, I, generator=g),
              label_unet=torch.randint(0, 3, (L, S, S), generator=g), label_sam=torch.randint(0, 3, (L, R, R), generator=g))
    ub = dict(weak_unet=torch.rand(U, 3, S, S, generator=g), weak_sam=torch.rand(U, 3, I, I, generator=g),
              strong_unet=torch.rand(U, 3, S, S, generator=g), strong_sam=torch.rand(U, 3, I, I, generator=g),
              label_unet=torch.randint(0, 3, (U, S, S), generator=g),
              label_sam=torch.randint(0, 3, (U, R, R), generator=g))
    return lb, ub, data.boxes(0, U, S, 0)


def test_fold_equals_conv_then_batchnorm():
    """The folded TinyViT encoder computes the unfolded one's features (fp32), 27 pairs at any size."""
    sam = build_sam("litemedsam", 3, None, 4, lite_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = sam.image_encoder(x)
        enc = copy.deepcopy(sam.image_encoder)
        assert speedups.fold_frozen_conv_bn(enc) == 27
        assert not any(type(m).__name__ == "Conv2d_BN" for m in enc.modules())
        torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-4)
        assert speedups.fold_frozen_conv_bn(enc) == 0  # nothing left to fold
    trainable = copy.deepcopy(sam.image_encoder).requires_grad_(True)
    with pytest.raises(ValueError, match="trainable"):
        speedups.fold_frozen_conv_bn(trainable)


def test_optimised_step_equals_plain_step_fp32():
    """The same seed and batches in fp32: the SynFoC losses, the teachers' probabilities and the gradients of the
    supervised loss agree up to float rounding; the optimised run is NHWC with a folded stem, the plain one not.
    (Gradients of the whole SynFoC loss are not compared: its argmax/threshold masks flip on rounding.)"""
    plain, fast = lite_run(True), lite_run(False)
    lb, ub, M = batches(plain)
    out = {}
    for name, run in (("plain", plain), ("fast", fast)):
        with torch.no_grad():
            terms = synfoc.synfoc_losses(run, lb, ub, M, 5)
            t = synfoc.teachers(run, ub, 5)
        synfoc.supervised_losses(run, lb)["loss"].backward()
        grads = [(n, p.grad.clone()) for m in (run.unet, run.sam) for n, p in m.named_parameters()
                 if p.requires_grad and p.grad is not None]  # heads the prompt-free decoder never uses get none
        out[name] = ({k: float(v) for k, v in terms.items()}, t, grads)
    for k in ("loss", "L_x", "L_u", "L_c", "L_d"):
        assert out["fast"][0][k] == pytest.approx(out["plain"][0][k], rel=1e-4, abs=1e-6), k
    for k in ("p_ut", "p_ms"):
        torch.testing.assert_close(out["fast"][1][k], out["plain"][1][k], rtol=1e-4, atol=1e-5)
    ga, gb = out["fast"][2], out["plain"][2]
    assert [n for n, _ in ga] == [n for n, _ in gb] and len(gb) > 20
    top = max(float(g.norm()) for _, g in gb)
    rel = {n: float((a - b).norm() / b.norm()) for (n, a), (_, b) in zip(ga, gb) if float(b.norm()) > 1e-6 * top}
    assert len(rel) > 20 and max(rel.values()) < 1e-3, sorted(rel.items(), key=lambda kv: -kv[1])[:3]
    enc_fast, enc_plain = fast.sam.image_encoder, plain.sam.image_encoder
    assert any(type(m).__name__ == "Conv2d_BN" for m in enc_plain.modules())
    assert not any(type(m).__name__ == "Conv2d_BN" for m in enc_fast.modules())
    conv = lambda run: next(m for m in run.sam.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)  # noqa: E731
                            and m.kernel_size == (3, 3) and m.in_channels // m.groups > 1)
    assert conv(fast).weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv(plain).weight.is_contiguous(memory_format=torch.channels_last)
    # the teacher shares the student's folded stem (no second copy of the frozen tensors)
    frozen = {id(p) for p in fast.sam.image_encoder.parameters() if not p.requires_grad}  # all but LoRA
    assert len(frozen) > 50 and frozen <= {id(p) for p in fast.sam_t.image_encoder.parameters()}


def test_plain_refuses_the_opt_in_speedups():
    with pytest.raises(config.ConfigError, match="--plain"):
        config.resolve_config(config.parse_args(["--dataset", "fundus", "--plain", "--compile"]))


def test_ema_picks_foreach_unless_plain(monkeypatch):
    """The optimised step updates the teachers with speedups.ema_foreach, the plain one with the loop."""
    calls = []
    monkeypatch.setattr(train, "ema_update", lambda *a: calls.append("loop"))  # train.update picks one
    monkeypatch.setattr(train, "ema_foreach", lambda *a: calls.append("foreach"))
    for plain in (True, False):
        run = lite_run(plain)
        lb, ub, M = batches(run)
        train.train_step(run, lb, ub, M, 5)
    assert calls == ["loop", "loop", "foreach", "foreach"]  # U-Net and SAM teacher, each step
