"""The GPU check's report: gpu_report.json + gpu_report.md, rewritten after every section (bench/gpu_check.sh).

    python3 bench/gpu_report.py record --out OUT --section steps --status PASS --seconds 41 --cap 75 \
        --results /tmp/w/steps.jsonl --set note="median of 3 windows"     # add or replace one section
    python3 bench/gpu_report.py junit /tmp/w/cuda_tests.xml --results /tmp/w/cuda_tests.jsonl   # judge a pytest run
    python3 bench/gpu_report.py junit FILE --dry      # CPU rehearsal: skips allowed, but only "needs a CUDA GPU" ones
    python3 bench/gpu_report.py train RUN_DIR --results /tmp/w/train.jsonl   # judge a train.py run folder

Why a file of its own: the script is killed at its time limit at any moment, so the report is written as it
goes. Each `record` reads OUT/gpu_report.json, adds (or, on a rerun with SECTIONS=, replaces) one section
and writes both files again, each through a temp file and a rename: a killed script leaves the report of
every section that ended. A section program appends one JSON object per measured case to its results file
(JSON lines) the moment the case ends, so a section stopped by its cap still reports what it measured.

gpu_report.json: {"title", "dry", "sections": [{"name", "status", "seconds", "cap_s", "why", "info": {...},
"results": [{...}, ...]}]}. status is PASS, FAIL, TIMEOUT (killed at its cap: `timeout` returned 124/137)
or SKIP (not run; `why` says why). gpu_report.md: a summary table, then each section's info and results.

`junit` reads pytest's --junitxml file and exits 1 when no test ran, any failed or errored, or any was
skipped (on a GPU machine a skipped CUDA test means it did not run: that is a failure, not a pass); with
--dry (the CPU rehearsal) skips are allowed only with the conftest reason "needs a CUDA GPU".
`train` reads a train.py run folder: metrics.csv must hold steps / log_every rows with every loss finite,
evals.csv the final evaluation, and last.pt and best_test_selected.pt must exist (their loading is checked
by the script with checkpoint.load_checkpoint, which needs torch). No torch import here: the script calls this after every section, and it must cost milliseconds.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

STATUSES = ("PASS", "FAIL", "TIMEOUT", "SKIP")


# ----------------------------------------------------------------------------- reading and writing

def load(out: Path) -> dict:
    path = out / "gpu_report.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"title": "SynFoC GPU check (bench/gpu_check.sh)", "dry": os.environ.get("GPU_CHECK_DRY") == "1",
            "sections": []}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: str | None) -> list[dict]:
    """The results a section program appended; a line cut off by a kill is dropped, not fatal."""
    if not path or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {p!r}")
        out[k] = v
    return out


def record(out: Path, section: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = load(out)
    report["sections"] = [s for s in report["sections"] if s["name"] != section["name"]] + [section]
    write_atomic(out / "gpu_report.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "gpu_report.md", markdown(report))
    return report


# ----------------------------------------------------------------------------- markdown

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


# ----------------------------------------------------------------------------- pytest's junit file

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


# ----------------------------------------------------------------------------- a train.py run folder

LOSSES = ("loss", "L_x", "L_u", "L_c", "L_d")


def train_verdict(run: Path) -> tuple[bool, dict]:
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    metrics = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []
    evals = list(csv.DictReader(open(run / "evals.csv"))) if (run / "evals.csv").exists() else []
    want = cfg.get("steps", 0) // max(cfg.get("log_every", 1), 1)
    bad = [r.get("step") for r in metrics for k in LOSSES if not math.isfinite(float(r.get(k, "nan")))]
    ckpts = {f: round((run / f).stat().st_size / 1e6, 1) for f in ("last.pt", "best_test_selected.pt") if (run / f).exists()}
    last = metrics[-1] if metrics else {}
    row = {"steps": cfg.get("steps"), "metrics_rows": len(metrics), "metrics_rows_expected": want,
           "non_finite_at_steps": bad, "loss_first": metrics[0].get("loss") if metrics else None,
           "loss_last": last.get("loss"), "s_per_step_last": last.get("s_per_step"),
           "eval_rows": len(evals), "checkpoint_MB": ckpts,
           "workers": cfg.get("workers"), "amp": cfg.get("amp"), "sam": cfg.get("sam"), "device": cfg.get("device")}
    ok = bool(metrics) and len(metrics) == want and not bad and bool(evals) and len(ckpts) == 2
    return ok, row


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the GPU check's report; judge a pytest junit file.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="add or replace one section in OUT/gpu_report.json and .md")
    r.add_argument("--out", required=True, help="folder of gpu_report.json / .md (the script's $OUT)")
    r.add_argument("--section", required=True, help="section name (env, cuda_tests, steps, compile, parity, train)")
    r.add_argument("--status", required=True, choices=STATUSES, help="what became of the section")
    r.add_argument("--seconds", type=float, help="wall seconds the section took")
    r.add_argument("--cap", type=float, help="the section's time cap in seconds")
    r.add_argument("--why", default="", help="why it was skipped or failed, or a one-line note")
    r.add_argument("--results", help="JSON-lines file the section program wrote (one object per case)")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="info lines of the section")
    j = sub.add_parser("junit", help="judge pytest's --junitxml file; exit 1 unless every test passed")
    j.add_argument("file", help="the junit xml file")
    j.add_argument("--results", help="write one JSON line per test here (for record --results)")
    j.add_argument("--dry", action="store_true", help="CPU rehearsal: skips for the missing GPU are allowed")
    t = sub.add_parser("train", help="judge a train.py run folder; exit 1 unless it trained, evaluated and saved")
    t.add_argument("run", help="the run folder (train.py --out)")
    t.add_argument("--results", help="write the verdict's JSON line here (for record --results)")
    a = p.parse_args(argv)
    if a.cmd == "train":
        ok, row = train_verdict(Path(a.run))
        row["ok"] = ok
        if a.results:
            Path(a.results).write_text(json.dumps(row) + "\n")
        print(("PASS" if ok else "FAIL") + "  train run: " + json.dumps(row))
        return 0 if ok else 1
    if a.cmd == "record":
        record(Path(a.out), {"name": a.section, "status": a.status, "seconds": a.seconds, "cap_s": a.cap,
                             "why": a.why, "info": parse_sets(a.set), "results": read_jsonl(a.results)})
        return 0
    path = Path(a.file)
    rows = junit_outcomes(path) if path.exists() else []
    ok, summary = junit_verdict(rows, a.dry)
    if a.results:
        with open(a.results, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(("PASS" if ok else "FAIL") + f"  CUDA tests: {summary}")
    for row in rows:
        if row["outcome"] != "passed":
            print(f"  {row['outcome']}: {row['test']}  {row['message']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
