"""The GPU check's Python side, one subcommand per job of bench/gpu_check.sh (the entry point: its header says
how it is called on the device): the environment, the step matrix, the report, and the verdicts on a pytest
run and on a train.py run.

    python3 bench/gpu_check.py env --results /tmp/w/env.jsonl          # GPU, driver, versions, bf16 matmul rate
    python3 bench/gpu_check.py steps --sam-ckpt /tmp/medsam_random.pth --results steps.jsonl \\
        --case fundus:fp16:plain --case fundus:fp16:fast --case fundus:bf16:plain --case fundus:bf16:fast \\
        --case prostate:best                                          # the eager matrix
    python3 bench/gpu_check.py steps --sam-ckpt CKPT --compile --best-from steps.jsonl --results compile.jsonl \\
        --case fundus:best --case fundus:best:other                    # the two --compile cases
    nice -n 19 python bench/gpu_check.py steps --tiny --case fundus:fp16:fast --results /tmp/s.jsonl   # CPU rehearsal
    python3 bench/gpu_check.py record --out OUT --section steps --status PASS --seconds 41 --cap 75 \\
        --results /tmp/w/steps.jsonl --set note="median of 3 windows"  # add or replace one section of the report
    python3 bench/gpu_check.py junit /tmp/w/cuda_tests.xml --results /tmp/w/cuda_tests.jsonl   # judge a pytest run
    python3 bench/gpu_check.py junit FILE --dry     # CPU rehearsal: skips allowed, but only "needs a CUDA GPU" ones
    python3 bench/gpu_check.py train RUN_DIR --results /tmp/w/train.jsonl   # judge a train.py run folder

torch is imported only inside env, steps and train: `record` runs after every section and must cost
milliseconds. Every subcommand that judges exits 1 on FAIL.

env. One JSON object (printed, and written as one line to --results): Python, torch, CUDA runtime, cuDNN,
nvidia-smi's GPU / driver / memory, CPU count, /dev/shm size and space (DataLoader workers), the GPU's name,
capability, memory and SMs, where segment_anything was imported from, and the card's measured bf16 matrix
rate bf16_matmul_TFLOP_s: the best of 3 windows of 10 products of two N x N bf16 matrices (2 N³ FLOPs each,
one device sync before and after each window; N 8192 on CUDA, 256 on a CPU). FAIL when CUDA is missing (not
with --dry) or segment_anything cannot be imported.

steps. Several bench/step.py configurations in ONE process, each the median of several timed windows, one
JSON line per case the moment it ends. A case is DATASET:AMP:ATTN with AMP fp16 | bf16 | off and ATTN plain
(upstream SAM attention) | fast (SDPA, hardware/sam_attention.py); `DATASET:best` takes the AMP and ATTN of
the fastest eager fundus case measured so far (this run's, then --best-from's; fp16:fast when there is none),
`DATASET:best:other` the same AMP with the other attention. Every case is the optimised step (not --plain),
built by bench/step.py's build from its parse_args defaults (on CUDA the paper configuration: MedSAM ViT-B
at 512 from --sam-ckpt, U-Net 64, the dataset's batch; --tiny: its reduced CPU configuration) and the same
seed, so every case starts from the same weights. Why not N calls of bench/step.py: each process builds
ViT-B on the CPU and counts FLOPs again (~15-25 s of a 15-minute lease per call); here the FLOPs are counted
once per dataset (they do not depend on the dtype or on the attention kernel: tests/test_bench_step.py) and
the process starts once. What is timed: W warm-up steps (with --compile the compilation happens there:
compile_warmup_s), then --windows windows of --steps train_steps each (bench/step.py's timed_window: one
device sync before and after each window and none inside); s_step is the median window's mean. peak_GB:
torch.cuda.max_memory_allocated over the windows. TFLOP_s: FLOPs/step (FlopCounterMode, one eager step:
matmuls, convolutions, attention) / s_step; frac_peak: its share of --peak-tflops (default bench/step.py's
PEAK_TFLOPS, the H100/H200 SXM data sheet's dense BF16/FP16 rate; env measures the card's own matmul rate).
A case that raises (out of memory, a compile error) is written with its error and the others still run;
the exit status is 1 if any case failed.

record. The script is killed at its time limit at any moment, so the report is written as it goes: each
`record` reads OUT/gpu_report.json, adds (or, on a rerun with SECTIONS=, replaces) one section and writes
both files again, each through a temp file and a rename, so a killed script leaves the report of every
section that ended. A section program appends one JSON object per measured case to its results file (JSON
lines) the moment the case ends, so a section stopped by its cap still reports what it measured (a line cut
by the kill is dropped). gpu_report.json: {"title", "dry", "sections": [{"name", "status", "seconds",
"cap_s", "why", "info": {...}, "results": [{...}, ...]}]}; status is PASS, FAIL, TIMEOUT (killed at its cap:
`timeout` returned 124/137) or SKIP (not run; `why` says why). gpu_report.md: a summary table, then each
section's info and results (one table per shape of result row).

junit. Reads pytest's --junitxml file; FAIL when no test ran, any failed or errored, or any was skipped (on
a GPU machine a skipped CUDA test means it did not run: a failure, not a pass); with --dry (the CPU
rehearsal) skips are allowed only with the conftest reason "needs a CUDA GPU".

train. Reads a train.py run folder: metrics.csv must hold steps / log_every rows with every loss finite,
evals.csv the final evaluation, last.pt and best_test_selected_{unet,medsam}.pt must exist, and last.pt must load through
records.checkpoint.load_checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))           # bench/step.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))       # the project root

STATUSES = ("PASS", "FAIL", "TIMEOUT", "SKIP")
AMPS, ATTNS = ("fp16", "bf16", "off"), ("plain", "fast")
DEFAULT_BEST = ("fp16", "fast")
LOSSES = ("loss", "L_x", "L_u", "L_c", "L_d")


def read_jsonl(path: str | None) -> list[dict]:
    """The rows a section program appended; a line cut off by a kill is dropped, not fatal."""
    if not path or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- env

def matmul_tflops(device, size: int, windows: int = 3, reps: int = 10) -> float:
    """The bf16 matrix rate `device` reaches: the best of `windows` windows of `reps` products of two size x size
    bf16 matrices (2 size³ FLOPs each), one device sync before and one after each window."""
    import torch
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # noqa: E731
    a @ b  # warm-up: cuBLAS handle and kernel choice
    best = math.inf
    for _ in range(windows):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 * reps / best / 1e12


def environment(dry: bool, matmul_size: int | None) -> tuple[bool, dict]:
    import torch
    smi = shutil.which("nvidia-smi")
    q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.strip() if smi else "none"
    shm = subprocess.run(["df", "-h", "--output=size,avail", "/dev/shm"], capture_output=True, text=True).stdout.split()
    row = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(), "nvidia_smi": q,
           "cpus": os.cpu_count(), "dev_shm_size_avail": " ".join(shm[2:]) if len(shm) >= 4 else "?"}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        row.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_GB=round(p.total_memory / 1e9, 1),
                   sms=p.multi_processor_count)
    try:
        import segment_anything
        row["segment_anything"] = segment_anything.__file__
    except ImportError as e:
        row["segment_anything"] = f"MISSING ({e}): carry .whl"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = matmul_size or (8192 if device.type == "cuda" else 256)
    try:
        row["bf16_matmul_TFLOP_s"] = float(f"{matmul_tflops(device, size):.4g}")
        row["bf16_matmul"] = f"{device.type}, {size} x {size} bf16 products, best of 3 windows of 10"
    except Exception as e:  # noqa: BLE001  (a figure, not a verdict: the section still says what it found)
        row["bf16_matmul_TFLOP_s"], row["bf16_matmul"] = None, f"failed: {type(e).__name__}: {e}"[:200]
    ok = (row["cuda_available"] or dry) and "MISSING" not in row["segment_anything"]
    return ok, row


def cmd_env(a: argparse.Namespace) -> int:
    ok, row = environment(a.dry, a.matmul_size)
    print(json.dumps(row, indent=1))
    Path(a.results).write_text(json.dumps(row) + "\n")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- steps

def parse_case(text: str, error=None) -> tuple[str, str, str]:
    """'fundus:fp16:fast' -> ('fundus', 'fp16', 'fast'); 'fundus:best' -> ('fundus', 'best', 'best');
    'fundus:best:other' -> ('fundus', 'best', 'other')."""
    import step as bench_step
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


def finish_steps_args(a: argparse.Namespace, error) -> None:
    """The defaults that depend on the device, and the checks argparse cannot make."""
    import torch
    import step as bench_step
    cuda = torch.cuda.is_available() and not a.tiny
    a.steps = a.steps or (10 if cuda else 1)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    a.peak_tflops = a.peak_tflops or bench_step.PEAK_TFLOPS
    if a.windows < 1 or a.steps < 1 or a.warmup < 0:
        error("--windows and --steps must be >= 1, --warmup >= 0")
    for c in a.case:
        parse_case(c, error)


def step_args(a: argparse.Namespace, ds: str, amp: str, attn: str) -> argparse.Namespace:
    """bench/step.py's own argument defaults for this case (paper config on CUDA, reduced with --tiny)."""
    import step as bench_step
    argv = ["--dataset", ds, "--amp", a.amp_override or amp, "--warmup", str(a.warmup), "--steps", str(a.steps),
            "--seed", str(a.seed)]
    argv += ["--device", "cpu"] if a.tiny else []
    argv += ["--fast-attn"] if attn == "fast" else []
    argv += ["--compile", "--compile-backend", a.compile_backend] if a.compile else []
    return bench_step.parse_args(argv)


def measure(a: argparse.Namespace, ds: str, amp: str, attn: str, flops_cache: dict) -> dict:
    """One case: build, count FLOPs (once per dataset), warm up (compile), time --windows windows."""
    import torch
    import step as bench_step
    import synfoc
    args = step_args(a, ds, amp, attn)
    device = torch.device(args.device)
    clock = bench_step.Clock(device)
    if args.sam == "medsam" and not a.sam_ckpt:
        raise SystemExit("--sam-ckpt is needed for MedSAM ViT-B (write one: python bench/step.py --write-ckpt PATH)")
    t0 = time.perf_counter()
    run, cfg = bench_step.build(args, a.sam_ckpt if args.sam == "medsam" else None, plain=False)
    if attn == "fast" and not getattr(run, "fast_attn_modules", 0) and run.sam.image_encoder is not None:
        raise RuntimeError("--fast-attn patched no attention module")
    x = bench_step.make_inputs(run, cfg, 1 + args.warmup + a.windows * args.steps, device, args.seed)
    clock.sync()
    build_s = time.perf_counter() - t0
    if ds not in flops_cache:  # one eager step under FlopCounterMode, before any compilation
        flops_cache[ds] = bench_step.count_flops(run, x, 0)
    if a.compile:
        bench_step.compile_run(run, args.compile_backend)
    t0 = time.perf_counter()
    for t in range(1, 1 + args.warmup):
        train.train_step(run, *x.at(t), t)
    clock.sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = 1 + args.warmup
    windows = [bench_step.timed_window(run, x, first + w * args.steps, args.steps, clock) for w in range(a.windows)]
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
        "peak_TFLOP_s": a.peak_tflops,
        "build_s": round(build_s, 2), ("compile_warmup_s" if a.compile else "warmup_s"): round(warmup_s, 2),
    }


def cmd_steps(a: argparse.Namespace) -> int:
    import torch
    earlier = read_jsonl(a.best_from)
    rows, flops_cache, failed = [], {}, 0
    for case in a.case:
        ds, amp, attn = resolve(case, rows + earlier)
        if ":best" in case and not eager_fundus(rows + earlier):
            print(f"note: no eager fundus case measured (no --best-from results): {case} means "
                  f"{':'.join(DEFAULT_BEST)}", flush=True)
        print(f"--- {case} -> {ds}:{amp}:{attn}" + (" compiled" if a.compile else ""), flush=True)
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
        append_jsonl(a.results, row)
        if "error" not in row:
            print(f"{row['case']}: {1e3 * row['s_step']:.2f} ms/step (windows {row['ms_windows']} ms), "
                  f"{row['images_s']:.1f} images/s, peak {row['peak_GB'] or 0:.2f} GB, {row['TFLOP_s']:.1f} TFLOP/s "
                  f"= {100 * row['frac_peak']:.1f}% of {a.peak_tflops:g}", flush=True)
        else:
            print(f"{row['case']}: FAILED {row['error']}", flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------- record: the report files

def load_report(out: Path) -> dict:
    path = out / "gpu_report.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"title": "SynFoC GPU check (bench/gpu_check.sh)", "dry": os.environ.get("GPU_CHECK_DRY") == "1",
            "sections": []}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(out: Path, section: dict) -> dict:
    """Add `section` to OUT/gpu_report.json (replacing one of the same name) and rewrite both report files."""
    out.mkdir(parents=True, exist_ok=True)
    report = load_report(out)
    report["sections"] = [s for s in report["sections"] if s["name"] != section["name"]] + [section]
    write_atomic(out / "gpu_report.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "gpu_report.md", markdown(report))
    return report


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else str(v).replace("|", "/").replace("\n", " ")


def flatten(row: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested measurements become columns."""
    flat = {}
    for k, v in row.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def table(rows: list[dict]) -> list[str]:
    rows = [flatten(r) for r in rows]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def markdown(report: dict) -> str:
    lines = [f"# {report['title']}", ""]
    if report.get("dry"):
        lines += ["**DRY RUN (GPU_CHECK_DRY=1): tiny configurations on the CPU; no figure here is a GPU figure.**", ""]
    lines += ["| section | status | seconds | cap s | why |", "|---|---|---|---|---|"]
    for s in report["sections"]:
        lines.append(f"| {s['name']} | {s['status']} | {fmt(s.get('seconds'))} | {fmt(s.get('cap_s'))} | "
                     f"{fmt(s.get('why'))} |")
    for s in report["sections"]:
        lines += ["", f"## {s['name']}: {s['status']}", ""]
        if s.get("why"):
            lines += [s["why"], ""]
        for k, v in s.get("info", {}).items():
            lines.append(f"- {k}: {fmt(v)}")
        groups: dict[tuple, list[dict]] = {}   # rows of another shape (parity: attention, steps) get their own table
        for row in s.get("results", []):
            groups.setdefault(tuple(flatten(row)), []).append(row)
        for rows in groups.values():
            lines += [""] + table(rows)
    return "\n".join(lines) + "\n"


def cmd_record(a: argparse.Namespace) -> int:
    info = {}
    for pair in a.set:
        k, sep, v = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        info[k] = v
    record(Path(a.out), {"name": a.section, "status": a.status, "seconds": a.seconds, "cap_s": a.cap,
                         "why": a.why, "info": info, "results": read_jsonl(a.results)})
    return 0


# ----------------------------------------------------------------------------- junit: pytest's junit file

def junit_outcomes(path: Path) -> list[dict]:
    """One {"test", "outcome", "message"} per testcase; a collection error is a testcase with <error>."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], el.get("message", "")
                break
        rows.append({"test": test, "outcome": outcome, "message": message[:200]})
    return rows


def junit_verdict(rows: list[dict], dry: bool) -> tuple[bool, str]:
    count = {o: sum(r["outcome"] == o for r in rows) for o in ("passed", "failed", "error", "skipped")}
    summary = ", ".join(f"{v} {k}" for k, v in count.items())
    if not rows:
        return False, "no test ran (nothing carries the cuda marker, or collection found nothing)"
    if count["failed"] or count["error"]:
        return False, summary
    if count["skipped"]:
        if not dry:
            return False, summary + ": a CUDA test skipped on the GPU machine did not run"
        odd = [r["test"] for r in rows if r["outcome"] == "skipped" and "needs a CUDA GPU" not in r["message"]]
        if odd:
            return False, summary + f": skipped for another reason than the missing GPU: {odd}"
    return True, summary


def cmd_junit(a: argparse.Namespace) -> int:
    path = Path(a.file)
    rows = junit_outcomes(path) if path.exists() else []
    ok, summary = junit_verdict(rows, a.dry)
    if a.results:
        Path(a.results).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(("PASS" if ok else "FAIL") + f"  CUDA tests: {summary}")
    for row in rows:
        if row["outcome"] != "passed":
            print(f"  {row['outcome']}: {row['test']}  {row['message']}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- train: a train.py run folder

def train_verdict(run: Path) -> tuple[bool, dict]:
    """The run folder's files, without torch: rows logged, losses finite, evaluation and checkpoints written."""
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    metrics = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
    evals = list(csv.DictReader(open(run / "evals.csv"))) if (run / "evals.csv").exists() else []
    want = cfg.get("steps", 0) // max(cfg.get("log_every", 1), 1)
    bad = [r.get("step") for r in metrics for k in LOSSES if not math.isfinite(float(r.get(k, "nan")))]
    names = ("last.pt", *(f"best_test_selected_{n}.pt" for n in ("unet", "medsam")))  # a synfoc run: both students
    ckpts = {f: round((run / f).stat().st_size / 1e6, 1) for f in names if (run / f).exists()}
    last = metrics[-1] if metrics else {}
    row = {"steps": cfg.get("steps"), "metrics_rows": len(metrics), "metrics_rows_expected": want,
           "non_finite_at_steps": bad, "loss_first": metrics[0].get("loss") if metrics else None,
           "loss_last": last.get("loss"), "s_per_step_last": last.get("s_per_step"),
           "eval_rows": len(evals), "checkpoint_MB": ckpts,
           "workers": cfg.get("workers"), "amp": cfg.get("amp"), "sam": cfg.get("sam"), "device": cfg.get("device")}
    ok = bool(metrics) and len(metrics) == want and not bad and bool(evals) and len(ckpts) == len(names)
    return ok, row


def cmd_train(a: argparse.Namespace) -> int:
    from records.checkpoint import load_checkpoint
    ok, row = train_verdict(Path(a.run))
    try:
        row["last_pt_step"] = load_checkpoint(a.run)["step"]
        print(f"last.pt loads: step {row['last_pt_step']}")
    except Exception as e:  # noqa: BLE001  (CheckpointError, or a checkpoint without its step: a FAIL either way)
        row["last_pt_step"], ok = None, False
        print(f"last.pt does not load: {type(e).__name__}: {e}")
    row["ok"] = ok
    if a.results:
        Path(a.results).write_text(json.dumps(row) + "\n")
    print(("PASS" if ok else "FAIL") + "  train run: " + json.dumps(row))
    return 0 if ok else 1


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The GPU check's Python side (see the module docstring).")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("env", help="the environment and the card's bf16 matmul rate, one JSON line")
    e.add_argument("--results", required=True, help="write the environment's JSON line here (for record --results)")
    e.add_argument("--dry", action="store_true", help="CPU rehearsal: no CUDA is no failure")
    e.add_argument("--matmul-size", type=int, help="N of the N x N bf16 products timed (default 8192 on CUDA, 256 on a CPU)")
    e.set_defaults(func=cmd_env)

    s = sub.add_parser("steps", help="time several step configurations in one process, one JSON line per case")
    s.add_argument("--case", action="append", required=True, metavar="DATASET:AMP:ATTN",
                   help="a configuration, e.g. fundus:fp16:fast, prostate:best, fundus:best:other (repeatable)")
    s.add_argument("--results", required=True, help="JSON-lines file: one object per case, appended as each ends")
    s.add_argument("--best-from", help="an earlier --results file whose fastest eager fundus case `best` means")
    s.add_argument("--sam-ckpt", help="MedSAM-format state dict (bench/step.py --write-ckpt); needed for ViT-B")
    s.add_argument("--compile", action="store_true", help="torch.compile students and teachers (bench/step.py's way)")
    s.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile backend (default inductor; eager: tracing only, the CPU rehearsal)")
    s.add_argument("--windows", type=int, default=3, help="timed windows; s/step is their median (default 3)")
    s.add_argument("--steps", type=int, help="train_steps per window (default 10 on CUDA, 1 with --tiny)")
    s.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 with --tiny)")
    s.add_argument("--peak-tflops", type=float, help="the TFLOP/s that frac_peak divides by (default bench/step.py's "
                                                      "PEAK_TFLOPS: the H100/H200 SXM data sheet's dense BF16/FP16)")
    s.add_argument("--tiny", action="store_true", help="bench/step.py's reduced CPU configuration (rehearsal)")
    s.add_argument("--amp-override", choices=AMPS, help="run every case with this autocast instead; rows record it as "
                                                         "amp_ran (the CPU rehearsal: fp16 kernels on a CPU are "
                                                         "emulated, 3-10x slower than fp32)")
    s.add_argument("--seed", type=int, default=0, help="seed of the models and inputs (default 0)")
    s.set_defaults(func=cmd_steps)

    r = sub.add_parser("record", help="add or replace one section in OUT/gpu_report.json and .md")
    r.add_argument("--out", required=True, help="folder of gpu_report.json / .md (the script's $OUT)")
    r.add_argument("--section", required=True, help="section name (env, cuda_tests, steps, compile, parity, train)")
    r.add_argument("--status", required=True, choices=STATUSES, help="what became of the section")
    r.add_argument("--seconds", type=float, help="wall seconds the section took")
    r.add_argument("--cap", type=float, help="the section's time cap in seconds")
    r.add_argument("--why", default="", help="why it was skipped or failed, or a one-line note")
    r.add_argument("--results", help="JSON-lines file the section program wrote (one object per case)")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="info lines of the section")
    r.set_defaults(func=cmd_record)

    j = sub.add_parser("junit", help="judge pytest's --junitxml file; exit 1 unless every test passed")
    j.add_argument("file", help="the junit xml file")
    j.add_argument("--results", help="write one JSON line per test here (for record --results)")
    j.add_argument("--dry", action="store_true", help="CPU rehearsal: skips for the missing GPU are allowed")
    j.set_defaults(func=cmd_junit)

    t = sub.add_parser("train", help="judge a train.py run folder; exit 1 unless it trained, evaluated and saved")
    t.add_argument("run", help="the run folder (train.py --out)")
    t.add_argument("--results", help="write the verdict's JSON line here (for record --results)")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.cmd == "steps":
        finish_steps_args(a, p.error)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
