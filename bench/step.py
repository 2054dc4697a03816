"""Speed of one SynFoC training step: the paper configuration built as train.py builds it, timed.

Commands (from the repository root)
    python bench/step.py --dataset fundus --amp bf16                            # GPU: paper config, 3 + 10 steps
    python bench/step.py --dataset prostate --amp fp16 --compile --fast-attn
    python bench/step.py --dataset fundus --sam-ckpt checkpoints/medsam_vit_b.pth  # real MedSAM weights
    python bench/step.py --write-ckpt /tmp/medsam_random.pth  # only write the random MedSAM-shaped state dict
    nice -n 19 python bench/step.py                           # CPU: the reduced configuration, 1 + 2 steps
    python bench/step.py --dataset synthetic --compare --parts --windows 5   # the CPU default: plain vs optimised

What is built. `records/config.resolve_config(parse_args(...))` with the flags below, then `synfoc.build_run`:
the students, EMA teachers, optimisers, GradScaler and autocast exactly as train.py makes them. On a GPU
the default is the paper configuration: MedSAM ViT-B at I = 512 loaded through the real checkpoint path
(`--sam-ckpt`; without it a random state dict with MedSAM's key names and 1024-size shapes -- pos_embed
[1,64,64,768], global-attention rel_pos [127,64], 4 mask tokens -- is written to a temp file, so the
1024 -> 512 adaptation runs), the U-Net of width 64 at the dataset's size S (fundus 256, prostate 384,
mnms 288, busi 256), the dataset's batch L + U (4 + 4; mnms 2 + 2), fp16 autocast.
On a CPU the default is the REDUCED configuration, so the suite can run it in seconds: `--sam tiny`
(checkpoint.TINY_SAM: a random 2-block ViT at 64 px, no checkpoint), `--unet-width 8`, `--unet-size 64`,
`--batch 1 1`, `--amp auto`, `--warmup 1 --steps 2`. Every flag given overrides either default.
`--dataset synthetic` is the embedded default as train.py runs it (the preset decides: LiteMedSAM at 64,
the width-16 GroupNorm U-Net at 128, batch 1 + 1, amp auto) on REAL batches: the generated set (--data-root)
through train.py's datasets, augmentations and (seed, step) draws; warm-up 2, 5 steps per window;
`--lite-size` and `--unet-size` measure other sizes of it. `--amp auto` (every default): fp16 on CUDA, fp32 on
a CPU (speedups.choose_amp: bf16 only where measured worth it); the report names the CPU and the choice.
`--plain` times the plain step (train.py --plain: hardware/speedups.py off); `--compare` builds both from the same
seed and times them in alternating windows on the same inputs (s/step and the rest describe the optimised
one; `compare:` gives both medians and the speedup). `--windows K`: s/step is the median of K windows.

What is timed. Inputs are random tensors made once on the device (no loader: this measures the step);
the copy-paste masks M_S of every step are drawn with data.boxes and moved to the device before timing.
Then: one step under torch.utils.flop_counter.FlopCounterMode (eager, before any compilation; counts
matmuls, convolutions and attention, not elementwise work), W warm-up steps (compilation happens here),
N steps of `train.train_step` timed with one device synchronisation before and one after (none inside),
then N more steps with the parts timed by CUDA events (no host sync either; on a CPU by the clock):
teachers (`synfoc.teach`: stages 2-5), students forward + losses (`synfoc.student_losses`: 6-7), backward
(from `train.update`'s start to the last gradient accumulated: a post-accumulate-grad hook on every
trainable tensor) and optimisers + EMA (the rest of `train.update`). The hooks cost a little, so the parts
add up to slightly more than s/step.
`--parts` cuts N further steps finer (FINE below; module hooks mark each model call, the EMA functions
are wrapped, data loading is timed when batches are real) and counts each part's FLOPs in one more, untimed
step under FlopCounterMode: a markdown table of ms per step (each compared step) with GFLOP and GFLOP/s.

Printed, one `name: value` per line (parsed by tests/test_bench_step.py), then the same as one JSON line:
    config, device, capability (CPU model, ISA level, bf16 native or emulated, threads, torch), amp (the
    choice and why), s/step, images/s ((L + U) images per step), peak memory (torch.cuda.max_memory_allocated
    over the timed steps; n/a on CPU), memory estimate (records/plan.estimate_memory: the step's tensor bytes counted on
    fake tensors at the run's autocast dtype, with the state part: what `train.py --dry-run` prints; on CUDA, or
    on a CPU with --memory), FLOPs/step, TFLOP/s, fraction of peak (FLOPs/step / s/step /
    --peak-tflops; on CUDA PEAK_TFLOPS by default, n/a on a CPU without the flag), split (ms per step of the
    four parts); with --compare a `compare:` line, with --parts `parts:` and the table, before the JSON line.

The card's peak. PEAK_TFLOPS below is the one peak every bench tool divides by (this file's --peak-tflops on
CUDA, bench/gpu_check.py's frac_peak): the dense BF16/FP16 tensor rate of NVIDIA's H100 SXM and H200 SXM data
sheets, which list 1,979 TFLOP/s BF16/FP16 "with sparsity", twice the dense rate. What a card reaches in a
plain bf16 matmul is measured, not written down: `python3 bench/gpu_check.py env --results env.jsonl` prints
it as bf16_matmul_TFLOP_s (the GPU check's env section records it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project is flat scripts at the repository root

import synfoc  # noqa: E402
import train  # noqa: E402
from records import config  # noqa: E402
from records import plan  # noqa: E402
import data  # noqa: E402
from medsam_lora import LoRAQKV, build_sam  # noqa: E402
from hardware.sam_attention import use_fast_attention  # noqa: E402
from hardware.speedups import AMP_CHOICES, capability_line  # noqa: E402

DATASETS = ("fundus", "prostate", "mnms", "busi", "synthetic")
REDUCED = dict(sam="tiny", unet_width=8, unet_size=64, batch=[1, 1], amp="auto", warmup=1, steps=2)
PAPER = dict(sam="medsam", unet_width=64, unet_size=None, batch=None, amp="auto", warmup=3, steps=10)
# NVIDIA H100/H200 SXM data sheet: 1,979 TFLOP/s BF16/FP16 tensor with sparsity, half without (the dense rate)
PEAK_TFLOPS = 989.0
PARTS = ("teachers", "students fwd+losses", "backward", "optimisers+EMA")
# --parts: the step cut finer (module hooks on the live models; one row per part of one SynFoC step)
FINE = ("data loading + augmentation", "U-Net teacher fwd", "SAM teacher fwd", "U-Net student fwd (SMC, no grad)",
        "SMC + pseudo-labels + mixing", "U-Net student fwd (x_l, x_c)", "SAM student encoder fwd (LoRA)",
        "SAM student decoder fwd", "losses (CE, Dice, CDCR)", "backward", "optimisers", "EMA")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time one SynFoC training step (see the module docstring).")
    p.add_argument("--dataset", default="fundus", choices=DATASETS, help="dataset preset: sizes, classes, batch (default fundus)")
    p.add_argument("--batch", type=int, nargs=2, metavar=("L", "U"), help="labeled and unlabeled batch (default: preset; CPU 1 1)")
    p.add_argument("--amp", choices=list(AMP_CHOICES),
                   help="autocast dtype; auto = fp16 on CUDA, else train.py's CPU rule (fp32) (default: auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the students and teachers (after the FLOP count)")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend (default inductor; eager only traces, for quick checks)")
    p.add_argument("--fast-attn", action="store_true", help="SAM ViT attention through SDPA (hardware/sam_attention.py)")
    p.add_argument("--warmup", type=int, help="untimed steps before timing (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps, and as many again for the split (default 10 on CUDA, 2 on CPU)")
    p.add_argument("--peak-tflops", type=float,
                   help=f"the card's peak TFLOP/s for the amp dtype (default on CUDA {PEAK_TFLOPS:g}: PEAK_TFLOPS, the "
                        "H100/H200 SXM data sheet's dense BF16/FP16; none on a CPU)")
    p.add_argument("--sam", choices=["medsam", "litemedsam", "tiny"],
                   help="MedSAM ViT-B at 512 (default on CUDA), the tiny random ViT (CPU), or LiteMedSAM (synthetic's)")
    p.add_argument("--plain", action="store_true", help="the plain step (train.py --plain: every hardware/speedups.py change off)")
    p.add_argument("--compare", action="store_true",
                   help="time the plain and the optimised step side by side (alternating windows, same inputs)")
    p.add_argument("--windows", type=int, default=1, help="timed windows of --steps steps; s/step is their median (default 1)")
    p.add_argument("--parts", action="store_true", help="also time the step cut into FINE parts, with FLOPs and GFLOP/s")
    p.add_argument("--memory", action="store_true",
                   help="also count the step's memory on fake tensors (train.py --dry-run's estimate; always on CUDA, "
                        "beside the measured peak; on a CPU it costs ~10 s, fake tensors dispatch in Python)")
    p.add_argument("--sam-ckpt", help="SAM-format state dict to load (default: a random MedSAM-shaped one in a temp file)")
    p.add_argument("--write-ckpt", metavar="PATH", help="only write the random MedSAM-shaped state dict to PATH and exit")
    p.add_argument("--unet-width", type=int, help="U-Net base width (default 64; CPU 8)")
    p.add_argument("--unet-size", type=int, help="U-Net input size S (default: the dataset's, synthetic's preset; CPU 64)")
    p.add_argument("--lite-size", type=int, help="LiteMedSAM input size, a multiple of 64 (--sam litemedsam; "
                                                 "default: the preset's)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default cuda when available)")
    p.add_argument("--data-root", default="data", help="synthetic only: folder of the generated set (default data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the random inputs (default 0)")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = PEAK_TFLOPS
    defaults = PAPER if args.device.startswith("cuda") else REDUCED
    if args.dataset == "synthetic":  # the embedded default as train.py runs it: the preset decides
        defaults = dict(sam=None, unet_width=None, unet_size=None, batch=None, amp=None, lite_size=None, warmup=2,
                        steps=5)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.steps < 1 or args.warmup < 0 or args.windows < 1:
        p.error("--steps and --windows must be >= 1 and --warmup >= 0")
    if args.compare and args.plain:
        p.error("--compare times both steps; drop --plain")
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
    argv = ["--dataset", args.dataset, "--burn-in", "0", "--device", args.device, "--workers", "0",
            "--seed", str(args.seed), "--out", out, "--data-root", args.data_root]
    for flag, value in (("--sam", args.sam), ("--amp", args.amp), ("--unet-width", args.unet_width),
                        ("--unet-size", args.unet_size), ("--lite-size", args.lite_size)):
        if value is not None:
            argv += [flag, str(value)]
    if args.plain:
        argv.append("--plain")
    if args.batch is not None:
        argv += ["--batch", *map(str, args.batch)]
    if sam_ckpt is not None:
        argv += ["--sam-ckpt", sam_ckpt]
    return argv


@dataclass
class Inputs:
    lb: list[dict[str, torch.Tensor]]  # step t's labeled batch (the same dict every step for random inputs)
    ub: list[dict[str, torch.Tensor]]
    masks: list[torch.Tensor]  # one M_S float[U,1,S,S] per step, already on the device

    def at(self, t: int) -> tuple[dict, dict, torch.Tensor]:
        return self.lb[t], self.ub[t], self.masks[t]


def make_inputs(run, cfg: dict, steps: int, device: torch.device, seed: int) -> Inputs:
    """Random labeled / unlabeled batches of the shapes train.py's loaders give (plan.random_batch, on the run's
    device), and every step's boxes."""
    lb, ub = plan.random_batch(run, cfg, seed)
    masks = [data.boxes(t, cfg["batch"][1], cfg["unet_size"], cfg["seed"]).to(device) for t in range(steps)]
    return Inputs([lb] * steps, [ub] * steps, masks)


class RealFeed:
    """train.py's own data path for the synthetic set: the labeled and unlabeled sets with their augmentations,
    drawn by (seed, step) exactly as train.py's StepSampler does (workers 0: on the critical path)."""

    def __init__(self, run, cfg: dict, device: torch.device):
        import data  # noqa: PLC0415  (only the real-data benchmark reads files)
        root = data.dataset_root(cfg)  # generates data/synthetic on first use
        lab, unl = data.split_labeled(cfg["dataset"], root, cfg["domain"], cfg["labeled"], cfg["labeled_ratio"])
        I, R = run.sam.image_size, run.sam.logit_size
        S = cfg["unet_size"]
        self.sets = (data.LabeledSet(cfg["dataset"], lab, I, R, seed=cfg["seed"], unet_size=S),
                     data.UnlabeledSet(cfg["dataset"], unl, I, R, seed=cfg["seed"] + 1, unet_size=S))
        self.cfg, self.device = cfg, device

    def draw(self, t: int) -> tuple[dict, dict, torch.Tensor]:
        """Step t's batches (labeled, unlabeled) and boxes, on the device."""
        out = []
        for ds, bsz, tag in zip(self.sets, self.cfg["batch"], (1, 2)):
            keys = next(iter(data.StepSampler(len(ds), bsz, self.cfg["seed"], tag, t, t + 1)))
            items = [ds[k] for k in keys]
            out.append({k: torch.stack([torch.as_tensor(it[k]) for it in items]).to(self.device) for k in items[0]})
        return out[0], out[1], data.boxes(t, self.cfg["batch"][1], self.cfg["unet_size"], self.cfg["seed"]).to(self.device)

    def inputs(self, steps: int) -> Inputs:
        lbs, ubs, ms = zip(*(self.draw(t) for t in range(steps)))
        return Inputs(list(lbs), list(ubs), list(ms))


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
        train.train_step(run, *x.at(step), step)
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
            lb, ub, m = x.at(t)
            with run.amp():  # as train.train_step: the losses under the run's autocast
                tg = synfoc.teach(run, lb, ub, m, t)
                b = clock.mark()
                terms = synfoc.student_losses(run, lb, tg, t)
            c = clock.mark()
            train.update(run, terms["loss"], t)
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


def fine_split(run, feed, first: int, n: int, clock: Clock, count: bool = False) -> dict[str, list[float]]:
    """The step cut into FINE parts over n steps from `first`: {part: [mean ms, FLOPs per step]}.

    Module hooks mark each model call (U-Net student / teacher, SAM teacher, SAM student and its encoder);
    what a phase spends outside its model calls is its own part (SMC..., losses). The backward ends at the
    last gradient landing (post-accumulate-grad hooks), the EMA is timed by wrapping synfoc's EMA functions.
    FLOPs (count=True, one extra step under FlopCounterMode): the counter's total read at the same marks."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False) if count else None
    spans: list[tuple[str, object, object, int]] = []   # (part, start mark, end mark, FLOPs)
    flops = lambda: counter.get_total_flops() if counter is not None else 0  # noqa: E731
    phase = [""]
    who = {id(run.unet): "unet", id(run.unet_t): "unet_t", id(run.sam_t): "sam_t", id(run.sam): "sam",
           id(run.sam.image_encoder): "sam_enc"}
    names = {("teach", "unet_t"): FINE[1], ("teach", "sam_t"): FINE[2], ("teach", "unet"): FINE[3],
             ("students", "unet"): FINE[5], ("students", "sam_enc"): FINE[6], ("students", "sam"): FINE[7]}
    open_calls: dict[int, tuple] = {}

    def pre(module, _args):
        open_calls[id(module)] = (clock.mark(), flops())

    def post(module, _args, _out):
        a, f0 = open_calls.pop(id(module))
        part = names.get((phase[0], who[id(module)]))
        if part is not None:
            spans.append((part, a, clock.mark(), flops() - f0))

    modules = [run.unet, run.unet_t, run.sam_t, run.sam, run.sam.image_encoder]
    handles = [h for m in modules if m is not None for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    last_grad: list = [None, 0]
    params = [p for m in (run.unet, run.sam) if m is not None for p in m.parameters() if p.requires_grad]
    handles += [p.register_post_accumulate_grad_hook(lambda _p: last_grad.__setitem__(slice(0, 2), [clock.mark(), flops()]))
                for p in params]
    ema_marks: list = []
    originals = train.ema_update, train.ema_foreach

    def timed(fn):
        def wrapper(*a, **k):
            m0, f0 = clock.mark(), flops()
            fn(*a, **k)
            ema_marks.append((m0, clock.mark(), f0, flops()))
        return wrapper
    train.ema_update, train.ema_foreach = timed(originals[0]), timed(originals[1])
    rows = []
    try:
        with counter if counter is not None else contextlib.nullcontext():
            for t in range(first, first + n):
                m0 = clock.mark()
                lb, ub, m = feed(t)
                m1, f1 = clock.mark(), flops()
                spans.clear(); ema_marks.clear()
                phase[0] = "teach"
                with run.amp():  # as train.train_step: the losses under the run's autocast
                    tg = synfoc.teach(run, lb, ub, m, t)
                    m2, f2 = clock.mark(), flops()
                    phase[0] = "students"
                    terms = synfoc.student_losses(run, lb, tg, t)
                m3, f3 = clock.mark(), flops()
                phase[0] = "update"
                train.update(run, terms["loss"], t)
                m4, f4 = clock.mark(), flops()
                rows.append((m0, m1, f1, m2, f2, m3, f3, m4, f4, list(spans), list(last_grad), list(ema_marks)))
    finally:
        train.ema_update, train.ema_foreach = originals
        for h in handles:
            h.remove()
    clock.sync()
    out = {k: [0.0, 0.0] for k in FINE}
    for m0, m1, f1, m2, f2, m3, f3, m4, f4, sp, (g, fg), emas in rows:
        add = lambda part, a, b, f: (out[part].__setitem__(0, out[part][0] + clock.ms(a, b)),  # noqa: E731
                                     out[part].__setitem__(1, out[part][1] + f))
        add(FINE[0], m0, m1, 0)
        inside = {"teach": [0.0, 0], "students": [0.0, 0]}
        for part, a, b, f in sp:
            add(part, a, b, f)
            ph = "teach" if part in FINE[1:4] else "students"
            inside[ph][0] += clock.ms(a, b)
            inside[ph][1] += f
        enc = sum(clock.ms(a, b) for part, a, b, f in sp if part == FINE[6])
        enc_f = sum(f for part, a, b, f in sp if part == FINE[6])
        out[FINE[7]][0] -= enc  # the SAM student's call includes its encoder's
        out[FINE[7]][1] -= enc_f
        inside["students"][0] -= enc
        inside["students"][1] -= enc_f
        out[FINE[4]][0] += clock.ms(m1, m2) - inside["teach"][0]
        out[FINE[4]][1] += f2 - f1 - inside["teach"][1]
        out[FINE[8]][0] += clock.ms(m2, m3) - inside["students"][0]
        out[FINE[8]][1] += f3 - f2 - inside["students"][1]
        e0, e1, ef0, ef1 = emas[0][0], emas[-1][1], emas[0][2], emas[-1][3]
        add(FINE[9], m3, g, fg - f3)
        add(FINE[10], g, e0, ef0 - fg)
        add(FINE[11], e0, e1, ef1 - ef0)
        out[FINE[10]][0] += clock.ms(e1, m4)  # GradScaler.update etc. after the EMA: optimiser bookkeeping
    return {k: [ms / n, f / n] for k, (ms, f) in out.items()}


def build(args: argparse.Namespace, sam_ckpt: str | None, plain: bool):
    """(run, cfg) as train.py builds them, the plain or the optimised step, seeded alike."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as out:
        argv = train_argv(argparse.Namespace(**{**vars(args), "plain": plain}), sam_ckpt, out)
        cfg = config.resolve_config(config.parse_args(argv))
        torch.manual_seed(args.seed)
        run = synfoc.build_run(cfg, device)
    if args.fast_attn:
        run.fast_attn_modules = sum(use_fast_attention(m) for m in (run.sam, run.sam_t) if m is not None)
    return run, cfg


def timed_window(run, x: Inputs, first: int, n: int, clock: Clock) -> float:
    """Seconds per train_step over steps [first, first + n), one device sync before and one after."""
    clock.sync()
    t0 = time.perf_counter()
    for t in range(first, first + n):
        train.train_step(run, *x.at(t), t)
    clock.sync()
    return (time.perf_counter() - t0) / n


def bench(args: argparse.Namespace, sam_ckpt: str | None) -> dict:
    device = torch.device(args.device)
    clock = Clock(device)
    kinds = [("plain", True), ("optimised", False)] if args.compare else [("plain" if args.plain else "optimised", args.plain)]
    runs = {name: build(args, sam_ckpt, plain) for name, plain in kinds}
    run, cfg = runs[kinds[-1][0]]
    real = cfg["dataset"] == "synthetic"
    L, U = cfg["batch"]
    total = 2 + args.warmup + (args.windows + 2) * args.steps  # windows, the split, the parts, the counted step
    feed = RealFeed(run, cfg, device) if real else None
    x = feed.inputs(total) if real else make_inputs(run, cfg, total, device, args.seed)

    flops = count_flops(run, x, 0)  # eager, before any compilation, on the last-built (reported) run
    for r, _ in runs.values():
        if r is not run:
            train.train_step(r, *x.at(0), 0)  # the same step 0 for every compared run
        if args.compile:
            compile_run(r, args.compile_backend)
        for t in range(1, 1 + args.warmup):
            train.train_step(r, *x.at(t), t)
    first = 1 + args.warmup
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for w in range(args.windows):  # alternate the compared runs window by window: the machine's drift hits both
        for name, (r, _) in runs.items():
            times[name].append(timed_window(r, x, first + w * args.steps, args.steps, clock))
    s_step = statistics.median(times[kinds[-1][0]])
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    last = first + args.windows * args.steps
    split = timed_split(run, x, last, args.steps, clock)

    tflops = flops / s_step / 1e12
    sam_desc = {"medsam": f"MedSAM ViT-B {run.sam.image_size}", "tiny": f"tiny ViT {run.sam.image_size}",
                "litemedsam": f"LiteMedSAM {run.sam.image_size}"}[cfg["sam"]]
    patched = getattr(run, "fast_attn_modules", 0)
    result = {
        "config": f"{args.dataset} | {sam_desc} | U-Net {cfg['unet_width']} @ {cfg['unet_size']} | batch {L}+{U} | "
                  f"amp {cfg['amp']} | compile {args.compile_backend if args.compile else 'off'} | "
                  f"fast-attn {'on (' + str(patched) + ' modules)' if args.fast_attn else 'off'} | "
                  f"warmup {args.warmup} steps {args.steps}" + (f" x {args.windows} windows" if args.windows > 1 else "")
                  + f" | {kinds[-1][0]} step" + (" | real batches" if real else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "capability": capability_line(args.device),
        "amp": f"{cfg['amp']} ({cfg['amp_reason']})",
        "s/step": s_step,
        "images/s": (L + U) / s_step,
        "peak memory GB": peak,
        "memory estimate GiB": {k: v / 2**30 for k, v in plan.estimate_memory(cfg, train.train_step).items() if k in ("peak", "state")}
        if args.memory or device.type == "cuda" else None,
        "FLOPs/step": flops,
        "TFLOP/s": tflops,
        "fraction of peak": tflops / args.peak_tflops if args.peak_tflops else None,
        "split ms": split,
    }
    if args.compare:
        result["compare"] = {name: dict(median=statistics.median(v), windows=v) for name, v in times.items()}
        result["speedup"] = statistics.median(times["plain"]) / s_step
    if args.parts:  # timed without the FLOP counter (its hooks cost time), then one more step counted
        drawn = feed.draw if real else x.at
        counted = fine_split(run, drawn, last + 2 * args.steps, 1, clock, count=True)
        result["parts"] = {name: {k: [ms, counted[k][1]] for k, (ms, _) in
                                  fine_split(r, drawn, last + args.steps, args.steps, clock).items()}
                           for name, (r, _) in runs.items()}
    return result


def report(r: dict, peak_tflops: float | None) -> str:
    """The `name: value` lines the docstring promises, then `json: {...}`."""
    na = lambda v, fmt: "n/a" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        f"config: {r['config']}",
        f"device: {r['device']}",
        f"capability: {r['capability']}",
        f"amp: {r['amp']}",
        f"s/step: {r['s/step']:.6g}",
        f"images/s: {r['images/s']:.6g}",
        f"peak memory: {na(r['peak memory GB'], '.4g')}{'' if r['peak memory GB'] is None else ' GB'}",
        "memory estimate: " + ("n/a (--memory)" if r["memory estimate GiB"] is None else
                               f"{r['memory estimate GiB']['peak']:.4g} GiB (state {r['memory estimate GiB']['state']:.4g} "
                               "GiB; tensor bytes of one step counted on fake tensors, hardware/memory.py)"),
        f"FLOPs/step: {r['FLOPs/step']:.6g}",
        f"TFLOP/s: {r['TFLOP/s']:.6g} ({1e3 * r['TFLOP/s']:.1f} GFLOP/s)",
        f"fraction of peak: {na(r['fraction of peak'], '.6g')}"
        + (f" (of {peak_tflops:g} TFLOP/s)" if peak_tflops else " (no --peak-tflops)"),
        "split: " + " | ".join(f"{k} {v:.2f} ms" for k, v in r["split ms"].items())
        + f" | sum {sum(r['split ms'].values()):.2f} ms",
    ]
    if "compare" in r:
        c = r["compare"]
        lines.append("compare: " + " | ".join(f"{k} {1e3 * v['median']:.1f} ms/step (windows "
                                              + ", ".join(f"{1e3 * w:.0f}" for w in v["windows"]) + ")"
                                              for k, v in c.items()) + f" | speedup {r['speedup']:.2f}x")
    if "parts" in r:
        lines += ["parts:", parts_table(r["parts"])]
    lines.append("json: " + json.dumps(r))
    return "\n".join(lines)


def parts_table(parts: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per FINE part, ms per step of each compared step, FLOPs and GFLOP/s of the last."""
    names = list(parts)
    ref = names[-1]
    head = "| part | " + " | ".join(f"{n} ms" for n in names) + f" | GFLOP ({ref}) | GFLOP/s ({ref}) |"
    rows = [head, "|---|" + "---:|" * (len(names) + 2)]
    for k in FINE:
        ms, f = parts[ref][k]
        rate = f"{f / 1e9 / (ms / 1e3):.0f}" if f > 0 and ms > 0 else "-"
        rows.append(f"| {k} | " + " | ".join(f"{parts[n][k][0]:.1f}" for n in names) + f" | {f / 1e9:.2f} | {rate} |")
    tot = {n: sum(v[0] for v in parts[n].values()) for n in names}
    ftot = sum(v[1] for v in parts[ref].values())
    rows.append("| **sum** | " + " | ".join(f"**{tot[n]:.1f}**" for n in names)
                + f" | {ftot / 1e9:.2f} | {ftot / 1e9 / (tot[ref] / 1e3):.0f} |")
    return "\n".join(rows)


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
