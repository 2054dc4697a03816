"""The step matrix of the GPU check: several bench/step.py configurations in ONE process, each the median of
several timed windows, one JSON line per case the moment it ends.

    python3 bench/gpu_steps.py --sam-ckpt /tmp/medsam_random.pth --results steps.jsonl \
        --case fundus:fp16:plain --case fundus:fp16:fast --case fundus:bf16:plain --case fundus:bf16:fast \
        --case prostate:best                                           # the eager matrix (bench/gpu_check.sh)
    python3 bench/gpu_steps.py --sam-ckpt CKPT --compile --best-from steps.jsonl --results compile.jsonl \
        --case fundus:best --case fundus:best:other                     # the two --compile cases
    nice -n 19 python bench/gpu_steps.py --tiny --case fundus:fp16:fast --results /tmp/s.jsonl   # CPU rehearsal

A case is DATASET:AMP:ATTN with AMP fp16 | bf16 | off and ATTN plain (upstream SAM attention) | fast (SDPA,
sam_attention.py); `DATASET:best` takes the AMP and ATTN of the fastest eager fundus case measured so far
(this run's, then --best-from's; fp16:fast when there is none), `DATASET:best:other` the same AMP with the
other attention. Every case is the optimised step (not --plain), built as bench/step.py builds it: its
parse_args defaults (on CUDA the paper configuration: MedSAM ViT-B at 512 from --sam-ckpt, U-Net 64, the
dataset's batch; --tiny: its reduced CPU configuration), train.resolve_config, synfoc.build_run, the same
seed, so every case starts from the same weights.

Why not N calls of bench/step.py: each process builds ViT-B on the CPU and counts FLOPs again (~15-25 s of
a 15-minute lease per call); here the FLOPs are counted once per dataset (they do not depend on the
dtype or on the attention kernel: tests/test_bench_step.py) and the process starts once.

What is timed: W warm-up steps (with --compile the compilation happens there: compile_s), then --windows
windows of --steps train_steps each, one device sync before and after each window and none inside; s/step
is the median window's mean. Peak memory: torch.cuda.max_memory_allocated over the windows. TFLOP/s:
FLOPs/step (FlopCounterMode, one eager step: matmuls, convolutions, attention) / s/step, and its share of
--peak-tflops (790: the bf16 matrix rate measured on the lent H200, /work/.library/device/KINDS.md).
A case that raises (out of memory, a compile error) is written with its error and the others still run;
the exit status is 1 if any case failed.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))           # bench/step.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))       # the project's flat scripts

import step as bench_step  # noqa: E402
import synfoc  # noqa: E402
import train  # noqa: E402
from sam_attention import use_fast_attention  # noqa: E402

AMPS, ATTNS = ("fp16", "bf16", "off"), ("plain", "fast")
DEFAULT_BEST = ("fp16", "fast")


def batch(x, t: int) -> tuple:
    """Step t's (labeled, unlabeled, M_S) of bench/step.py's Inputs: `x.at(t)` where it has one (main's bench/step.py
    keeps a batch per step), else the one batch of every step and step t's mask."""
    return x.at(t) if hasattr(x, "at") else (x.lb, x.ub, x.masks[t])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time several SynFoC step configurations in one process (module docstring).")
    p.add_argument("--case", action="append", required=True, metavar="DATASET:AMP:ATTN",
                   help="a configuration, e.g. fundus:fp16:fast, prostate:best, fundus:best:other (repeatable)")
    p.add_argument("--results", required=True, help="JSON-lines file: one object per case, appended as each ends")
    p.add_argument("--best-from", help="an earlier --results file whose fastest eager fundus case `best` means")
    p.add_argument("--sam-ckpt", help="MedSAM-format state dict (bench/step.py --write-ckpt); needed for ViT-B")
    p.add_argument("--compile", action="store_true", help="torch.compile students and teachers (bench/step.py's way)")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend (default inductor; eager: tracing only, the CPU rehearsal)")
    p.add_argument("--windows", type=int, default=3, help="timed windows; s/step is their median (default 3)")
    p.add_argument("--steps", type=int, help="train_steps per window (default 10 on CUDA, 1 with --tiny)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 with --tiny)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the card's bf16 matrix rate (default 790: H200 here)")
    p.add_argument("--tiny", action="store_true", help="bench/step.py's reduced CPU configuration (rehearsal)")
    p.add_argument("--amp-override", choices=AMPS, help="run every case with this autocast instead; rows record it as "
                                                         "amp_ran (the CPU rehearsal: fp16 kernels on a CPU are "
                                                         "emulated, 3-10x slower than fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the models and inputs (default 0)")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.tiny
    a.steps = a.steps or (10 if cuda else 1)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    if a.windows < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--windows and --steps must be >= 1, --warmup >= 0")
    for c in a.case:
        parse_case(c, p.error)
    return a


def parse_case(text: str, error=None) -> tuple[str, str, str]:
    """'fundus:fp16:fast' -> ('fundus', 'fp16', 'fast'); 'fundus:best' -> ('fundus', 'best', 'best');
    'fundus:best:other' -> ('fundus', 'best', 'other')."""
    parts = text.split(":")
    ok = len(parts) in (2, 3) and parts[0] in bench_step.DATASETS and (
        (parts[1] == "best" and parts[2:] in ([], ["other"])) or (parts[1] in AMPS and parts[2:3] and parts[2] in ATTNS))
    if not ok:
        msg = f"--case {text!r}: want DATASET:AMP:ATTN (AMP {'|'.join(AMPS)}, ATTN plain|fast), DATASET:best or DATASET:best:other"
        if error:
            error(msg)
        raise ValueError(msg)
    return parts[0], parts[1], parts[2] if len(parts) == 3 else "best"


def eager_fundus(rows: list[dict]) -> list[dict]:
    """The successful eager fundus cases among rows."""
    return [r for r in rows if r.get("dataset") == "fundus" and not r.get("compile") and r.get("s_step")]


def best_eager(rows: list[dict]) -> tuple[str, str]:
    """(amp, attn) of the fastest successful eager fundus case among rows; DEFAULT_BEST when none."""
    done = eager_fundus(rows)
    if not done:
        return DEFAULT_BEST
    r = min(done, key=lambda r: r["s_step"])
    return r["amp"], r["attn"]


def resolve(case: str, rows: list[dict]) -> tuple[str, str, str]:
    ds, amp, attn = parse_case(case)
    if amp == "best":
        amp, best_attn = best_eager(rows)
        attn = best_attn if attn == "best" else ("plain" if best_attn == "fast" else "fast")
    return ds, amp, attn


def step_args(a: argparse.Namespace, ds: str, amp: str, attn: str) -> argparse.Namespace:
    """bench/step.py's own argument defaults for this case (paper config on CUDA, reduced with --tiny)."""
    argv = ["--dataset", ds, "--amp", a.amp_override or amp, "--warmup", str(a.warmup), "--steps", str(a.steps), "--seed", str(a.seed)]
    argv += ["--device", "cpu"] if a.tiny else []
    argv += ["--fast-attn"] if attn == "fast" else []
    argv += ["--compile", "--compile-backend", a.compile_backend] if a.compile else []
    return bench_step.parse_args(argv)


def measure(a: argparse.Namespace, ds: str, amp: str, attn: str, flops_cache: dict) -> dict:
    args = step_args(a, ds, amp, attn)
    device = torch.device(args.device)
    clock = bench_step.Clock(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        ckpt = a.sam_ckpt if args.sam == "medsam" else None
        if args.sam == "medsam" and not ckpt:
            raise SystemExit("--sam-ckpt is needed for MedSAM ViT-B (write one: python bench/step.py --write-ckpt PATH)")
        cfg = train.resolve_config(train.parse_args(bench_step.train_argv(args, ckpt, out)))
        if args.unet_size is not None:
            cfg["unet_size"] = args.unet_size
        torch.manual_seed(args.seed)
        run = synfoc.build_run(cfg, device)
    if attn == "fast":
        assert sum(use_fast_attention(m) for m in (run.sam, run.sam_t)) > 0 or run.sam.image_encoder is None
    total = 1 + args.warmup + a.windows * args.steps
    x = bench_step.make_inputs(run, cfg, total, device, args.seed)
    clock.sync()
    build_s = time.perf_counter() - t0
    if ds not in flops_cache:  # one eager step under FlopCounterMode, before any compilation
        flops_cache[ds] = bench_step.count_flops(run, x, 0)
    if a.compile:
        bench_step.compile_run(run, args.compile_backend)
    t0 = time.perf_counter()
    for t in range(1, 1 + args.warmup):
        synfoc.train_step(run, *batch(x, t), t)
    clock.sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    windows, t = [], 1 + args.warmup
    for _ in range(a.windows):
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            synfoc.train_step(run, *batch(x, t), t)
            t += 1
        clock.sync()
        windows.append((time.perf_counter() - t0) / args.steps)
    s_step = statistics.median(windows)
    L, U = cfg["batch"]
    tflops = flops_cache[ds] / s_step / 1e12
    return {
        "case": f"{ds}:{amp}:{attn}" + (f":compile-{a.compile_backend}" if a.compile else ""),
        "dataset": ds, "amp": amp, "attn": attn, "compile": a.compile,
        **({"amp_ran": args.amp} if args.amp != amp else {}),
        "model": f"{'MedSAM ViT-B' if args.sam == 'medsam' else 'tiny ViT'} {run.sam.image_size} + U-Net "
                 f"{args.unet_width} @ {cfg['unet_size']}, batch {L}+{U}",
        "s_step": s_step, "ms_windows": [round(1e3 * w, 3) for w in windows],
        "images_s": (L + U) / s_step,
        "peak_GB": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "TFLOP_step": flops_cache[ds] / 1e12, "TFLOP_s": tflops, "frac_peak": tflops / a.peak_tflops,
        "build_s": round(build_s, 2), ("compile_warmup_s" if a.compile else "warmup_s"): round(warmup_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    earlier = []
    if a.best_from and Path(a.best_from).exists():
        earlier = [json.loads(line) for line in Path(a.best_from).read_text().splitlines() if line.strip()]
    rows, flops_cache, failed = [], {}, 0
    for case in a.case:
        ds, amp, attn = resolve(case, rows + earlier)
        if ":best" in case and not eager_fundus(rows + earlier):
            print(f"note: no eager fundus case measured (no --best-from results): {case} means "
                  f"{':'.join(DEFAULT_BEST)}", flush=True)
        name = f"{ds}:{amp}:{attn}" + (" compiled" if a.compile else "")
        print(f"--- {case} -> {name}", flush=True)
        try:
            row = measure(a, ds, amp, attn, flops_cache)
        except Exception as e:  # one failing case (OOM, compile error) must not hide the others' figures
            traceback.print_exc()
            row = {"case": f"{ds}:{amp}:{attn}", "dataset": ds, "amp": amp, "attn": attn, "compile": a.compile,
                   "error": f"{type(e).__name__}: {e}"[:300]}
            failed += 1
        finally:
            if a.compile:
                torch._dynamo.reset()  # the next case compiles its own graphs
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rows.append(row)
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        if "error" not in row:
            print(f"{row['case']}: {1e3 * row['s_step']:.2f} ms/step (windows {row['ms_windows']} ms), "
                  f"{row['images_s']:.1f} images/s, peak {row['peak_GB'] or 0:.2f} GB, {row['TFLOP_s']:.1f} TFLOP/s "
                  f"= {100 * row['frac_peak']:.1f}% of {a.peak_tflops:g}", flush=True)
        else:
            print(f"{row['case']}: FAILED {row['error']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
