"""Speed of one SynFoC training step: the paper configuration built as train.py builds it, timed.

Commands (from the repository root)
    python bench/step.py --dataset fundus --amp bf16 --peak-tflops 989          # GPU: paper config, 3 + 10 steps
    python bench/step.py --dataset prostate --amp fp16 --compile --fast-attn
    python bench/step.py --dataset fundus --sam-ckpt checkpoints/medsam_vit_b.pth  # real MedSAM weights
    python bench/step.py --write-ckpt /tmp/medsam_random.pth  # only write the random MedSAM-shaped state dict
    nice -n 19 python bench/step.py                           # CPU: the reduced configuration, 1 + 2 steps

What is built. `train.resolve_config(train.parse_args(...))` with the flags below, then `synfoc.build_run`:
the students, EMA teachers, optimisers, GradScaler and autocast exactly as train.py makes them. On a GPU
the default is the paper configuration: MedSAM ViT-B at I = 512 loaded through the real checkpoint path
(`--sam-ckpt`; without it a random state dict with MedSAM's key names and 1024-size shapes -- pos_embed
[1,64,64,768], global-attention rel_pos [127,64], 4 mask tokens -- is written to a temp file, so the
1024 -> 512 adaptation runs), the U-Net of width 64 at the dataset's size S (fundus 256, prostate 384,
mnms 288, busi 256), the dataset's batch L + U (4 + 4; mnms 2 + 2), fp16 autocast.
On a CPU the default is the REDUCED configuration, so the suite can run it in seconds: `--sam tiny`
(checkpoint.TINY_SAM: a random 2-block ViT at 64 px, no checkpoint), `--unet-width 8`, `--unet-size 64`,
`--batch 1 1`, `--amp off`, `--warmup 1 --steps 2`. Every flag given overrides either default.

What is timed. Inputs are random tensors made once on the device (no loader: this measures the step);
the copy-paste masks M_S of every step are drawn with train.boxes and moved to the device before timing.
Then: one step under torch.utils.flop_counter.FlopCounterMode (eager, before any compilation; counts
matmuls, convolutions and attention, not elementwise work), W warm-up steps (compilation happens here),
N steps of `synfoc.train_step` timed with one device synchronisation before and one after (none inside),
then N more steps with the parts timed by CUDA events (no host sync either; on a CPU by the clock):
teachers (`synfoc.teach`: stages 2-5), students forward + losses (`synfoc.student_losses`: 6-7), backward
(from `synfoc.update`'s start to the last gradient accumulated: a post-accumulate-grad hook on every
trainable tensor) and optimisers + EMA (the rest of `synfoc.update`). The hooks cost a little, so the parts
add up to slightly more than s/step.

Printed, one `name: value` per line (parsed by tests/test_bench_step.py), then the same as one JSON line:
    config, device, s/step, images/s ((L + U) images per step), peak memory (torch.cuda.max_memory_allocated
    over the timed steps; n/a on CPU), FLOPs/step, TFLOP/s, fraction of peak (FLOPs/step / s/step /
    --peak-tflops; n/a without it), split (ms per step of the four parts).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project is flat scripts at the repository root

import synfoc  # noqa: E402
import train  # noqa: E402
from medsam_lora import LoRAQKV, build_sam  # noqa: E402
from sam_attention import use_fast_attention  # noqa: E402

DATASETS = ("fundus", "prostate", "mnms", "busi")
REDUCED = dict(sam="tiny", unet_width=8, unet_size=64, batch=[1, 1], amp="off", warmup=1, steps=2)
PAPER = dict(sam="medsam", unet_width=64, unet_size=None, batch=None, amp="fp16", warmup=3, steps=10)
PARTS = ("teachers", "students fwd+losses", "backward", "optimisers+EMA")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time one SynFoC training step (see the module docstring).")
    p.add_argument("--dataset", default="fundus", choices=DATASETS, help="dataset preset: sizes, classes, batch (default fundus)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("L", "U"), help="labeled and unlabeled batch (default: preset; CPU 1 1)")
    p.add_argument("--amp", choices=["fp16", "bf16", "off"], help="autocast dtype (default fp16 on CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the students and teachers (after the FLOP count)")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend (default inductor; eager only traces, for quick checks)")
    p.add_argument("--fast-attn", action="store_true", help="SAM ViT attention through SDPA (sam_attention.py)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps, and as many again for the split (default 10 on CUDA, 2 on CPU)")
    p.add_argument("--peak-tflops", type=float, help="the card's peak TFLOP/s for the amp dtype (e.g. 989 for H100 SXM bf16)")
    p.add_argument("--sam", choices=["medsam", "tiny"], help="MedSAM ViT-B at 512 (default on CUDA) or the tiny random ViT (CPU)")
    p.add_argument("--sam-ckpt", help="SAM-format state dict to load (default: a random MedSAM-shaped one in a temp file)")
    p.add_argument("--write-ckpt", metavar="PATH", help="only write the random MedSAM-shaped state dict to PATH and exit")
    p.add_argument("--unet-width", type=int, help="U-Net base width (default 64; CPU 8)")
    p.add_argument("--unet-size", type=int, help="U-Net input size S (default: the dataset's; CPU 64)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the random inputs (default 0)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = PAPER if args.device.startswith("cuda") else REDUCED
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


# ----------------------------------------------------------------------------- the random checkpoint

def random_medsam_state_dict(seed: int = 0, **vit) -> dict[str, torch.Tensor]:
    """A SAM-format state dict with MedSAM's key names and shapes, random values.

    The model medsam_lora.build_sam("medsam", 4, None) makes (4 mask tokens, as SAM/MedSAM ship) at 1024
    input (`vit` overrides medsam_lora.VIT_B_512 keys; image_size defaults to 1024), with LoRA taken off
    again, so the keys are the plain `...attn.qkv.weight` of a released checkpoint. Values: build_sam's
    own seeded init, with pos_embed and rel_pos (zeros there) drawn N(0, 0.02²) so they are not trivial.
    Works under `with torch.device("meta")` (shapes only).
    """
    model = build_sam("medsam", 4, None, **{"image_size": 1024, **vit})
    for _, module in list(model.named_modules()):  # unwrap LoRA: qkv.base -> qkv
        for name, child in list(module.named_children()):
            if isinstance(child, LoRAQKV):
                setattr(module, name, child.base)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k, v in state.items():
            if k.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                state[k] = torch.randn_like(v) * 0.02
    return state


# ----------------------------------------------------------------------------- building

def train_argv(args: argparse.Namespace, sam_ckpt: str | None, out: str) -> list[str]:
    """The train.py command line of this benchmark (--burn-in 0: always the full SynFoC step, never the
    supervised-only burn-in)."""
    argv = ["--dataset", args.dataset, "--sam", args.sam, "--amp", args.amp, "--unet-width", str(args.unet_width),
            "--burn-in", "0",
            "--device", args.device, "--workers", "0", "--seed", str(args.seed), "--out", out]
    if args.batch is not None:
        argv += ["--batch", *map(str, args.batch)]
    if sam_ckpt is not None:
        argv += ["--sam-ckpt", sam_ckpt]
    return argv


@dataclass
class Inputs:
    lb: dict[str, torch.Tensor]
    ub: dict[str, torch.Tensor]
    masks: list[torch.Tensor]  # one M_S float[U,1,S,S] per step, already on the device


def make_inputs(run, cfg: dict, steps: int, device: torch.device, seed: int) -> Inputs:
    """Random labeled / unlabeled batches of the shapes train.py's loaders give, and every step's boxes."""
    L, U = cfg["batch"]
    S, C, Cin = cfg["unet_size"], cfg["num_classes"], cfg["in_channels"]
    I, R = run.sam.image_size, run.sam.logit_size
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g).to(device)  # noqa: E731
    label = lambda *shape: torch.randint(0, C, shape, generator=g).to(device)  # noqa: E731
    lb = dict(img_unet=rand(L, Cin, S, S), img_sam=rand(L, 3, I, I), label_unet=label(L, S, S), label_sam=label(L, R, R))
    ub = dict(weak_unet=rand(U, Cin, S, S), weak_sam=rand(U, 3, I, I), strong_unet=rand(U, Cin, S, S),
              strong_sam=rand(U, 3, I, I), label_unet=label(U, S, S))
    masks = [train.boxes(t, U, S, cfg["seed"]).to(device) for t in range(steps)]  # [U,1,S,S] each
    return Inputs(lb, ub, masks)


def count_flops(run, x: Inputs, step: int) -> int:
    """FLOPs of one train_step (matmuls, convolutions, attention), eager."""
    from torch.utils.flop_counter import FlopCounterMode
    fc = torch.utils.flop_counter
    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):  # the CPU fused kernel has no formula upstream
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
            lambda go, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(go, q, k, v)
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        synfoc.train_step(run, x.lb, x.ub, x.masks[step], step)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- timing

class Clock:
    """Marks on the device's timeline: CUDA events (no host sync), or the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else 1e3 * (b - a)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def timed_split(run, x: Inputs, first: int, n: int, clock: Clock) -> dict[str, float]:
    """Mean ms per step of the four parts over n steps starting at step `first`."""
    params = [p for m in (run.unet, run.sam) if m is not None for p in m.parameters() if p.requires_grad]
    last_grad: list = [None]

    def on_grad(_p: torch.Tensor) -> None:  # fires as each gradient lands: the last one ends the backward
        last_grad[0] = clock.mark()

    handles = [p.register_post_accumulate_grad_hook(on_grad) for p in params]
    marks = []
    try:
        for t in range(first, first + n):
            a = clock.mark()
            tg = synfoc.teach(run, x.lb, x.ub, x.masks[t], t)
            b = clock.mark()
            terms = synfoc.student_losses(run, x.lb, tg, t)
            c = clock.mark()
            synfoc.update(run, terms["loss"], t)
            d = clock.mark()
            marks.append((a, b, c, last_grad[0], d))
    finally:
        for h in handles:
            h.remove()
    clock.sync()
    sums = dict.fromkeys(PARTS, 0.0)
    for a, b, c, g, d in marks:
        for name, (u, v) in zip(PARTS, ((a, b), (b, c), (c, g), (g, d))):
            sums[name] += clock.ms(u, v)
    return {k: v / n for k, v in sums.items()}


def compile_run(run, backend: str) -> None:
    """torch.compile every student and teacher in place (Module.compile keeps the objects train.py holds).

    dynamic=False: the U-Net student sees two batch sizes (U in the SMC forward, L + U with grad); two
    static graphs beat the dynamic-shape graph that a recompilation would otherwise switch to."""
    for m in (run.unet, run.unet_t, run.sam, run.sam_t):
        if m is not None:
            m.compile(backend=backend, dynamic=False)


def bench(args: argparse.Namespace, sam_ckpt: str | None) -> dict:
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as out:
        cfg = train.resolve_config(train.parse_args(train_argv(args, sam_ckpt, out)))
        if args.unet_size is not None:
            cfg["unet_size"] = args.unet_size
        torch.manual_seed(args.seed)
        run = synfoc.build_run(cfg, device)
    patched = 0
    if args.fast_attn:
        patched = sum(use_fast_attention(m) for m in (run.sam, run.sam_t) if m is not None)
    L, U = cfg["batch"]
    total = 1 + args.warmup + 2 * args.steps
    x = make_inputs(run, cfg, total, device, args.seed)
    clock = Clock(device)

    flops = count_flops(run, x, 0)
    if args.compile:
        compile_run(run, args.compile_backend)
    for t in range(1, 1 + args.warmup):
        synfoc.train_step(run, x.lb, x.ub, x.masks[t], t)
    first = 1 + args.warmup
    clock.sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for t in range(first, first + args.steps):
        synfoc.train_step(run, x.lb, x.ub, x.masks[t], t)
    clock.sync()
    s_step = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    split = timed_split(run, x, first + args.steps, args.steps, clock)

    tflops = flops / s_step / 1e12
    sam_desc = (f"MedSAM ViT-B {run.sam.image_size}" if args.sam == "medsam" else f"tiny ViT {run.sam.image_size}")
    return {
        "config": f"{args.dataset} | {sam_desc} | U-Net {args.unet_width} @ {cfg['unet_size']} | batch {L}+{U} | "
                  f"amp {args.amp} | compile {args.compile_backend if args.compile else 'off'} | "
                  f"fast-attn {'on (' + str(patched) + ' modules)' if args.fast_attn else 'off'} | "
                  f"warmup {args.warmup} steps {args.steps}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "s/step": s_step,
        "images/s": (L + U) / s_step,
        "peak memory GB": peak,
        "FLOPs/step": flops,
        "TFLOP/s": tflops,
        "fraction of peak": tflops / args.peak_tflops if args.peak_tflops else None,
        "split ms": split,
    }


def report(r: dict, peak_tflops: float | None) -> str:
    """The `name: value` lines the docstring promises, then `json: {...}`."""
    na = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        f"config: {r['config']}",
        f"device: {r['device']}",
        f"s/step: {r['s/step']:.6g}",
        f"images/s: {r['images/s']:.6g}",
        f"peak memory: {na(r['peak memory GB'], '.4g')}{'' if r['peak memory GB'] is None else ' GB'}",
        f"FLOPs/step: {r['FLOPs/step']:.6g}",
        f"TFLOP/s: {r['TFLOP/s']:.6g}",
        f"fraction of peak: {na(r['fraction of peak'], '.6g')}"
        + (f" (of {peak_tflops:g} TFLOP/s)" if peak_tflops else " (no --peak-tflops)"),
        "split: " + " | ".join(f"{k} {v:.2f} ms" for k, v in r["split ms"].items())
        + f" | sum {sum(r['split ms'].values()):.2f} ms",
        "json: " + json.dumps(r),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_ckpt:
        torch.save(random_medsam_state_dict(args.seed), args.write_ckpt)
        print(f"wrote {args.write_ckpt}")
        return
    with contextlib.ExitStack() as stack:
        ckpt = args.sam_ckpt
        if args.sam == "medsam" and ckpt is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            ckpt = str(Path(tmp) / "medsam_random.pth")
            torch.save(random_medsam_state_dict(args.seed), ckpt)
        print(report(bench(args, ckpt), args.peak_tflops), flush=True)


if __name__ == "__main__":
    main()
