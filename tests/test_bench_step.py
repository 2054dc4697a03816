"""bench/step.py: the random MedSAM-shaped checkpoint, the reduced CPU run and its printed fields, and (on a GPU
only) the reduced run there. The whole optimised step under set_sync_debug_mode("error"): tests/test_no_sync.py.

    nice -n 19 python -m pytest -q tests/test_bench_step.py
"""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step as bench_step  # noqa: E402  (bench/step.py)

from hardware import speedups  # noqa: E402
from records.checkpoint import TINY_SAM  # noqa: E402
from medsam_lora import build_sam  # noqa: E402

cuda = pytest.mark.cuda  # tests/conftest.py skips it without a GPU; bench/gpu_check.sh runs -m cuda
FIELDS = ["config", "device", "capability", "amp", "s/step", "images/s", "peak memory", "memory estimate",
          "FLOPs/step", "TFLOP/s", "fraction of peak", "split", "json"]


def parse(text: str) -> dict[str, str]:
    """The `name: value` lines of the report (the first ': ' splits)."""
    out = {}
    for line in text.strip().splitlines():
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def number(value: str) -> float:
    return float(value.split()[0])


# ----------------------------------------------------------------------------- the random checkpoint

def test_random_state_dict_has_medsam_keys_and_shapes():
    """Same keys and shapes as segment-anything's own vit_b Sam (what medsam_vit_b.pth holds), built on meta."""
    from segment_anything import sam_model_registry
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in sam_model_registry["vit_b"]().state_dict().items()}
        got = {k: tuple(v.shape) for k, v in bench_step.random_medsam_state_dict().items()}
    assert got == want
    assert got["image_encoder.pos_embed"] == (1, 64, 64, 768)
    assert got["image_encoder.blocks.2.attn.rel_pos_h"] == (127, 64)   # global block at 1024
    assert got["image_encoder.blocks.0.attn.rel_pos_w"] == (27, 64)    # windowed block


def test_random_state_dict_goes_through_the_adaptation(tmp_path):
    """A tiny ViT's "1024-size" checkpoint (image 128 for a 64 model) loads with pos_embed and the global
    tables resized and everything else as written."""
    sd = bench_step.random_medsam_state_dict(seed=3, **dict(TINY_SAM, image_size=128))
    path = tmp_path / "sam.pth"
    torch.save(sd, path)
    model = build_sam("medsam", 3, path, **TINY_SAM)
    enc = model.image_encoder
    assert sd["image_encoder.pos_embed"].shape == (1, 8, 8, 32) and enc.pos_embed.shape == (1, 4, 4, 32)
    assert sd["image_encoder.blocks.1.attn.rel_pos_h"].shape == (15, 16) and enc.blocks[1].attn.rel_pos_h.shape == (7, 16)
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, sd["image_encoder.blocks.0.attn.rel_pos_h"])
    assert torch.equal(enc.blocks[0].attn.qkv.base.weight, sd["image_encoder.blocks.0.attn.qkv.weight"])
    assert sd["image_encoder.blocks.0.attn.rel_pos_h"].abs().sum() > 0  # not the zero init


# ----------------------------------------------------------------------------- the reduced CPU run

def run_bench(argv: list[str], capsys) -> tuple[dict[str, str], dict]:
    bench_step.main(argv)
    fields = parse(capsys.readouterr().out)
    assert list(fields) == FIELDS, fields.keys()
    return fields, json.loads(fields["json"])


def test_reduced_cpu_run_prints_parsable_fields(capsys):
    fields, js = run_bench(["--device", "cpu", "--warmup", "1", "--steps", "1", "--memory"], capsys)
    amp, why = speedups.choose_amp("auto", "cpu")  # the reduced default: off on this CPU unless bf16 is native
    assert f"fundus | tiny ViT 64 | U-Net 8 @ 64 | batch 1+1 | amp {amp}" in fields["config"]
    assert fields["amp"] == f"{amp} ({why})" and fields["capability"] == speedups.capability_line("cpu")
    assert fields["device"] == "cpu" and fields["peak memory"] == "n/a"
    est = js["memory estimate GiB"]  # the step's bytes, counted: the state (weights...) and more at the peak
    assert number(fields["memory estimate"]) == pytest.approx(est["peak"], rel=1e-3) and est["peak"] > est["state"] > 0
    assert fields["fraction of peak"].startswith("n/a")
    s, ips, flops, tf = (number(fields[k]) for k in ("s/step", "images/s", "FLOPs/step", "TFLOP/s"))
    assert s > 0 and ips == pytest.approx(2 / s, rel=1e-3)
    assert flops > 0 and tf == pytest.approx(flops / s / 1e12, rel=1e-3)
    parts = dict(re.findall(r"([a-zA-Z+ ]+?) ([0-9.]+) ms", fields["split"]))
    assert [k.strip() for k in parts] == [*bench_step.PARTS, "sum"]
    assert all(float(v) > 0 for v in parts.values())
    assert js["s/step"] == pytest.approx(s, rel=1e-3) and js["FLOPs/step"] == pytest.approx(flops, rel=1e-5)


def test_fast_attn_same_flops_and_peak_fraction(capsys):
    """--fast-attn patches student and teacher (2 blocks each) and does the same arithmetic: equal FLOP
    counts (the CPU SDPA kernel is counted through bench/step.py's custom formula)."""
    argv = ["--device", "cpu", "--warmup", "0", "--steps", "1", "--peak-tflops", "0.5", "--dataset", "prostate"]
    plain, js_plain = run_bench(argv, capsys)
    fast, js_fast = run_bench(argv + ["--fast-attn"], capsys)
    assert "fast-attn on (4 modules)" in fast["config"] and "fast-attn off" in plain["config"]
    assert "U-Net 8 @ 64" in fast["config"]
    assert js_fast["FLOPs/step"] == pytest.approx(js_plain["FLOPs/step"], rel=1e-6)
    assert number(fast["fraction of peak"]) == pytest.approx(js_fast["TFLOP/s"] / 0.5, rel=1e-3)


# ----------------------------------------------------------------------------- CUDA only

@cuda
def test_cuda_reduced_bench(capsys):
    fields, js = run_bench(["--device", "cuda", "--sam", "tiny", "--unet-width", "8", "--unet-size", "64",
                            "--batch", "1", "1", "--amp", "bf16", "--warmup", "1", "--steps", "2", "--fast-attn"], capsys)
    assert fields["peak memory"].endswith(" GB") and js["peak memory GB"] > 0
