"""Does the optimised step compute what the plain step does? Two comparisons, one subcommand each.

    python bench/parity.py runs                                   # synthetic preset, 60 steps (10 burn-in), CPU
    python bench/parity.py runs --steps 30 --burn-in 5 --out runs/parity_tiny --train-args --sam tiny --unet-width 4
    python3 bench/parity.py paper --sam-ckpt /tmp/medsam_random.pth --csv parity.csv --results parity.jsonl   # GPU
    python3 bench/parity.py paper --sam-ckpt CKPT --csv parity.csv --results p.jsonl --steps 30 --amp fp16 --compile
    nice -n 19 python bench/parity.py paper --tiny --csv /tmp/parity.csv --results /tmp/p.jsonl   # CPU rehearsal

The plain step is train.py --plain (every hardware/speedups.py change off: foreach optimisers, NCHW, the EMA
loop, upstream attention, eager); the optimised step is the default (fused optimisers on CUDA, channels_last,
the foreach EMA), with --fast-attn and --compile where asked. Each subcommand exits 1 when its rule fails.

runs: whole train.py runs (the CPU question). Three runs of the same configuration, seed and batches
(train.py's data path; --log-every 1):
    plain     --plain --threads T      the reference
    plain_1t  --plain --threads 1      the same code on one thread: floating-point summation order alone
    optimised          --threads T     the default step
The spread of `plain_1t` around `plain` is what reordering the same arithmetic does to this run (bf16 on a
CPU drifts apart within tens of steps); the optimised step passes when its distance to `plain` stays within
that spread (--tolerance times it, default 2, per statistic). Printed: a table of max and mean |difference|
of each logged loss (loss, L_x, L_u, L_c, L_d) over the SynFoC steps and over the burn-in, and PASS/FAIL;
written to --out: parity.csv (run, step, every metrics.csv column) and parity.json (the table, the verdict).
Finished runs in --out are reused when they were trained with the same flags (argv.json).

paper: the paper's size in one process (the GPU question; bench/gpu_check.sh's parity section). --parts:
1. attention (`attention` rows). The whole prompt-free SamSeg (MedSAM ViT-B at 512, random weights with
   nonzero LoRA B matrices and N(0, 0.5²) relative-position tables: hardware/sam_attention.parity_model,
   every parameter trainable), batch 2, upstream attention vs sam_attention.use_fast_attention, in fp32,
   bf16 and fp16 autocast: the logits and the gradient of every parameter of loss = mean(logits²). This
   size is what the tiny CPU tests cannot reach: 14-token windows padded to 42 (32 tokens a side),
   1024-token global blocks. Rule (that of tests/test_sam_attention.py): fp32: logits within 1e-4
   (relative norm) and every gradient within 1e-4 of upstream (cuDNN TF32 off); bf16 / fp16: against
   upstream's fp32 result, the fast path's error at most 2x upstream's own error in that dtype + 0.05 for
   the logits and every gradient, and the whole gradient vector within 2x + 0.01. The SDPA kernels that
   actually ran are recorded (the aten ops seen by a dispatch mode during the fast forward and backward:
   _scaled_dot_product_efficient_attention, _flash_attention, _cudnn_attention, _flash_attention_for_cpu;
   none seen = the math fallback).
2. steps (`steps` row, --csv). Two runs built from the same seed and checkpoint, --steps train_steps on
   identical inputs (bench/step.py's random batches, one copy-paste mask per step, each step reseeded):
   the plain step and the optimised one (plus --fast-attn; --compile adds torch.compile). The csv holds
   every step's five loss terms of both and the relative difference of the total; the row states the
   divergence: the step-0 difference (the same weights: only kernel rounding), the median and the largest
   over the steps, and the relative distance of the final student weights. Rule: every loss finite, step 0
   within 1e-2 (1e-4 with --amp off), the median within 5e-2 (the runs are chaotic, as any two trainings
   that differ in rounding: this bounds the drift, it does not ask for equality). The plain step may
   synchronise (it is the reference).
Each part appends its JSON line to --results the moment it ends.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))           # bench/step.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))       # the project root

import step as bench_step  # noqa: E402
import synfoc  # noqa: E402
import train  # noqa: E402
from records import config  # noqa: E402
from gpu_check import append_jsonl  # noqa: E402  (bench/gpu_check.py: the GPU check's results files)
from hardware.sam_attention import parity_model, use_fast_attention  # noqa: E402
from records.checkpoint import TINY_SAM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TERMS = synfoc.LOSS_NAMES  # train.py's metrics.csv loss columns
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- runs: three train.py runs

def run_train(out: Path, name: str, argv: list[str]) -> list[dict[str, float]]:
    """Train one variant (or reuse a finished one); returns metrics.csv rows as floats."""
    folder = out / name
    metrics = folder / "metrics.csv"
    saved = folder / "argv.json"
    if (folder / "last.pt").is_file() and (not saved.is_file() or json.loads(saved.read_text()) != argv):
        raise SystemExit(f"error: {folder} holds a run of other flags than {' '.join(argv)}: give another --out")
    if not (folder / "last.pt").is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), *argv, "--out", str(folder), "--overwrite"]
        print(f"[parity] {name}: {' '.join(cmd[1:])}", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "train.out", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"error: {name}: train.py exited {rc}; see {folder / 'train.out'}")
        saved.write_text(json.dumps(argv))
    else:
        print(f"[parity] {name}: reusing {folder}")
    with open(metrics) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def distance(a: list[dict], b: list[dict], steps: set[int]) -> dict[str, dict[str, float]]:
    """Per loss term: max and mean |a - b| over the given steps."""
    out = {}
    pairs = [(x, y) for x, y in zip(a, b) if int(x["step"]) in steps]
    for k in TERMS:
        d = [abs(x[k] - y[k]) for x, y in pairs]
        out[k] = dict(max=max(d) if d else 0.0, mean=sum(d) / len(d) if d else 0.0)
    return out


def cmd_runs(a: argparse.Namespace) -> int:
    out = Path(a.out)
    base = ["--dataset", a.dataset, "--steps", str(a.steps), "--burn-in", str(a.burn_in), "--log-every", "1",
            "--eval-every", str(a.steps), *a.train_args]
    runs = {name: run_train(out, name, base + extra) for name, extra in (
        ("plain", ["--plain", "--threads", str(a.threads)]),
        ("plain_1t", ["--plain", "--threads", "1"]),
        ("optimised", ["--threads", str(a.threads)]))}
    semi = set(range(a.burn_in + 1, a.steps + 1))  # metrics.csv step = steps done
    burn = set(range(1, a.burn_in + 1))
    table = {phase: {"order (plain 1 vs N threads)": distance(runs["plain"], runs["plain_1t"], st),
                     "optimised vs plain": distance(runs["plain"], runs["optimised"], st)}
             for phase, st in (("SynFoC steps", semi), ("burn-in", burn))}
    ok = all(table["SynFoC steps"]["optimised vs plain"][k][s]
             <= a.tolerance * max(table["SynFoC steps"]["order (plain 1 vs N threads)"][k][s], 1e-6)
             for k in TERMS for s in ("max", "mean"))
    with open(out / "parity.csv", "w", newline="") as f:
        cols = list(runs["plain"][0])
        w = csv.writer(f)
        w.writerow(["run", *cols])
        for name, rows in runs.items():
            for r in rows:
                w.writerow([name, *(r[c] for c in cols)])
    (out / "parity.json").write_text(json.dumps(dict(table=table, passed=ok, tolerance=a.tolerance,
                                                     steps=a.steps, burn_in=a.burn_in), indent=2))
    for phase, t in table.items():
        print(f"\n{phase}: |difference| of each logged loss, max / mean over the steps")
        print("| pair | " + " | ".join(TERMS) + " |\n|---|" + "---|" * len(TERMS))
        for pair, d in t.items():
            print(f"| {pair} | " + " | ".join(f"{d[k]['max']:.2e} / {d[k]['mean']:.2e}" for k in TERMS) + " |")
    print(f"\n{'PASS' if ok else 'FAIL'}: optimised vs plain within {a.tolerance:g}x the spread of thread order alone "
          "(SynFoC steps)")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- paper: 1. attention

def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-30) -> float:
    """‖a − b‖ / max(‖b‖, floor), b the reference (the floor keeps gradients that are zero in exact arithmetic
    from dividing rounding noise by rounding noise)."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(floor))


class SdpaLog(TorchDispatchMode):
    """Names of the scaled-dot-product aten ops that ran (forward and backward), i.e. the SDPA backend."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        if "scaled_dot_product" in name or "attention_backward" in name:
            self.ops.add(name)
        return func(*args, **(kwargs or {}))


def paper_attention(a: argparse.Namespace) -> list[dict]:
    dev = torch.device(a.device)
    ref = parity_model(TINY_SAM if a.tiny else {}, a.seed).to(dev)
    fast = copy.deepcopy(ref)
    patched = use_fast_attention(fast)
    size = ref.image_size
    x = torch.rand(a.batch, 3, size, size, generator=torch.Generator().manual_seed(a.seed + 3)).to(dev)

    def run(model, low, log=None):
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=low or torch.bfloat16, enabled=low is not None):
            if log is None:
                y = model(x).float()
                y.square().mean().backward()
            else:
                with log:
                    y = model(x).float()
                    y.square().mean().backward()
        return y.detach(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}

    rows = []
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN convolutions default to TF32
        y32, g32 = run(ref, None)
        floor = 1e-3 * max(float(g.norm()) for g in g32.values())
        flat = lambda g: torch.cat([g[n].flatten() for n in g32])  # noqa: E731
        for name, low in DTYPES.items():
            t0 = time.perf_counter()
            log = SdpaLog()
            yr, gr = (y32, g32) if low is None else run(ref, low)
            yf, gf = run(fast, low, log)
            out_fast, out_plain = rel_err(yf, y32), rel_err(yr, y32)
            grad_fast = {n: rel_err(gf[n], g32[n], floor) for n in g32}
            grad_plain = {n: rel_err(gr[n], g32[n], floor) for n in g32}
            worst = max(g32, key=lambda n: grad_fast[n] - 2 * grad_plain[n])
            if low is None:
                ok = out_fast < 1e-4 and max(grad_fast.values()) < 1e-4
            else:
                ok = (out_fast <= 2 * out_plain + 0.05
                      and rel_err(flat(gf), flat(g32)) <= 2 * rel_err(flat(gr), flat(g32)) + 0.01
                      and all(grad_fast[n] <= 2 * grad_plain[n] + 0.05 for n in g32))
            row = {"part": "attention", "dtype": name, "ok": ok,
                   "model": f"SamSeg {'tiny ViT' if a.tiny else 'ViT-B'} {size}, batch {a.batch}, {patched} attentions patched",
                   "sdpa_ops": sorted(log.ops) or ["none: math fallback"],
                   "logits_err_fast": out_fast, "logits_err_plain": out_plain,
                   "grads_err_fast": rel_err(flat(gf), flat(g32)), "grads_err_plain": rel_err(flat(gr), flat(g32)),
                   "worst_param": worst, "worst_err_fast": grad_fast[worst], "worst_err_plain": grad_plain[worst],
                   "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            append_jsonl(a.results, row)
            print(f"attention {name}: {'ok' if ok else 'FAIL'}; SDPA {row['sdpa_ops']}; vs fp32 upstream: logits "
                  f"fast {out_fast:.3g} plain {out_plain:.3g}; grads fast {row['grads_err_fast']:.3g} plain "
                  f"{row['grads_err_plain']:.3g}; worst {worst} {grad_fast[worst]:.3g} (plain {grad_plain[worst]:.3g})",
                  flush=True)
    del ref, fast
    return rows


# ----------------------------------------------------------------------------- paper: 2. steps

def build(a: argparse.Namespace, plain: bool, out: str) -> tuple[synfoc.Run, dict]:
    """The plain or the optimised run as train.py builds it from its own flags (--plain, or --fast-attn and
    --compile), on bench/step.py's configuration for the dataset, seeded alike."""
    args = bench_step.parse_args(["--dataset", a.dataset, "--amp", a.amp, "--seed", str(a.seed), "--device", a.device]
                                 + (["--sam", "tiny"] if a.tiny else []))
    ckpt = a.sam_ckpt if args.sam == "medsam" else None
    if args.sam == "medsam" and not ckpt:
        raise SystemExit("--sam-ckpt is needed for MedSAM ViT-B (write one: python bench/step.py --write-ckpt PATH)")
    argv = bench_step.train_argv(args, ckpt, out) + (["--plain"] if plain else ["--fast-attn"])
    argv += ["--compile"] if (a.compile and not plain) else []
    cfg = config.resolve_config(config.parse_args(argv))
    torch.manual_seed(a.seed)
    return synfoc.build_run(cfg, torch.device(a.device)), cfg


def weights(run: synfoc.Run) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in [*run.unet.parameters(), *run.sam.trainable_parameters()]])


def paper_steps(a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as out:
        run_p, cfg = build(a, True, out)
        run_o, _ = build(a, False, out)
    w0 = weights(run_p)
    assert torch.equal(w0, weights(run_o)), "the two runs must start from the same weights"
    x = bench_step.make_inputs(run_p, cfg, a.steps, torch.device(a.device), a.seed)
    names = list(synfoc.LOSS_NAMES)
    diffs, bad = [], []
    t0 = time.perf_counter()
    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step"] + [f"{n}_plain" for n in names] + [f"{n}_optimised" for n in names] + ["loss_rel_diff"])
        for t in range(a.steps):
            losses = []
            for run in (run_p, run_o):
                torch.manual_seed(1000 + t)  # the same random stream for both, whatever the step draws
                out = train.train_step(run, *x.at(t), t)
                losses.append([float(out[n].detach()) for n in names])   # a host sync per step: fine, nothing is timed
            lp, lo = losses
            d = abs(lo[0] - lp[0]) / max(abs(lp[0]), 1e-12)
            diffs.append(d)
            bad += [t] if not all(map(lambda v: v == v and abs(v) != float("inf"), lp + lo)) else []
            w.writerow([t] + [f"{v:.8g}" for v in lp + lo] + [f"{d:.3e}"])
            f.flush()   # a kill at the cap keeps the steps done
    wp, wo = weights(run_p), weights(run_o)
    tol0 = 1e-4 if a.amp == "off" else 1e-2
    row = {"part": "steps", "steps": a.steps, "amp": a.amp, "dataset": a.dataset,
           "plain": "foreach optimisers, NCHW, EMA loop, upstream attention, eager",
           "optimised": f"{'fused' if a.device == 'cuda' else 'foreach (CPU)'} optimisers, channels_last, foreach EMA, "
                        f"fast attention, {'compiled' if a.compile else 'eager'}",
           "step0_rel_diff": diffs[0], "median_rel_diff": statistics.median(diffs), "max_rel_diff": max(diffs),
           "max_at_step": diffs.index(max(diffs)), "final_weights_rel_dist": rel_err(wo, wp),
           "weights_moved_rel": rel_err(wp, w0), "non_finite_steps": bad,
           "ok": not bad and diffs[0] <= tol0 and statistics.median(diffs) <= 5e-2,
           "seconds": round(time.perf_counter() - t0, 2)}
    append_jsonl(a.results, row)
    print(f"steps: {'ok' if row['ok'] else 'FAIL'}; loss relative difference plain vs optimised: step 0 "
          f"{diffs[0]:.3g}, median {row['median_rel_diff']:.3g}, max {row['max_rel_diff']:.3g} (step "
          f"{row['max_at_step']}); final weights {row['final_weights_rel_dist']:.3g} apart (they moved "
          f"{row['weights_moved_rel']:.3g} from the start); non-finite at {bad}", flush=True)
    return row


def cmd_paper(a: argparse.Namespace) -> int:
    a.steps = a.steps or (3 if a.tiny else 30)
    a.device = "cpu" if a.tiny or not torch.cuda.is_available() else "cuda"
    ok = True
    if "attention" in a.parts:
        ok &= all(r["ok"] for r in paper_attention(a))
        if a.device == "cuda":
            torch.cuda.empty_cache()
    if "steps" in a.parts:
        ok &= paper_steps(a)["ok"]
    return 0 if ok else 1


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Optimised vs plain step (see the module docstring).")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("runs", help="three train.py runs (plain, plain on one thread, optimised): per-step losses")
    r.add_argument("--dataset", default="synthetic", help="train.py --dataset (default synthetic)")
    r.add_argument("--steps", type=int, default=60, help="training steps of each run (default 60)")
    r.add_argument("--burn-in", type=int, default=10, help="supervised-only steps first (default 10)")
    r.add_argument("--threads", type=int, default=2, help="threads of the plain and the optimised run (default 2)")
    r.add_argument("--tolerance", type=float, default=2.0,
                   help="pass when the optimised run's distance to plain is <= this times the one-thread run's (default 2)")
    r.add_argument("--out", default="runs/parity", help="folder of the three runs and the report (default runs/parity)")
    r.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="everything after this flag goes to every train.py call (e.g. --sam tiny for tests)")
    r.set_defaults(func=cmd_runs)

    q = sub.add_parser("paper", help="fast vs plain attention on ViT-B 512, and the two steps side by side, in-process")
    q.add_argument("--csv", required=True, help="per-step losses of both runs (parity.csv)")
    q.add_argument("--results", required=True, help="JSON-lines file, one line per part, appended as each ends")
    q.add_argument("--sam-ckpt", help="MedSAM-format state dict (bench/step.py --write-ckpt) for the step runs")
    q.add_argument("--steps", type=int, help="train_steps of each run (default 30; 3 with --tiny)")
    q.add_argument("--amp", default="fp16", choices=["fp16", "bf16", "off"],
                   help="the step runs' autocast (default fp16, the paper's)")
    q.add_argument("--compile", action="store_true", help="torch.compile the optimised run too (default: eager)")
    q.add_argument("--dataset", default="fundus", choices=bench_step.DATASETS, help="step runs' preset (default fundus)")
    q.add_argument("--batch", type=int, default=2, help="attention part: images (default 2)")
    q.add_argument("--parts", nargs="+", default=["attention", "steps"], choices=["attention", "steps"],
                   help="which parts to run (default both)")
    q.add_argument("--tiny", action="store_true",
                   help="the tiny ViT at 64 px and bench/step.py's reduced step (CPU rehearsal)")
    q.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    q.set_defaults(func=cmd_paper)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.cmd == "runs" and (a.steps <= a.burn_in or a.burn_in < 0 or a.threads < 1 or a.tolerance <= 0):
        p.error("need 0 <= --burn-in < --steps, --threads >= 1 and --tolerance > 0")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
