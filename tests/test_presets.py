"""The paper presets follow the authors' protocol: METHOD.md §8's table of resolved presets is read here and every
cell is checked against config.resolve_config, so the table and the code cannot drift apart."""
import re
from pathlib import Path

import pytest

import train
from records import config

ROOT = Path(__file__).resolve().parents[1]


def preset_table() -> dict[str, dict[str, str]]:
    text = (ROOT / "METHOD.md").read_text()
    head = re.search(r"^\| preset \| steps \|.*$", text, re.M)
    assert head, "METHOD.md §8 lost its table of resolved presets"
    cols = [c.strip() for c in head.group(0).strip("|").split("|")]
    rows = {}
    for line in text[head.end():].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(cols[1:], cells[1:]))
    return rows


def shown(v) -> str:
    """A resolved config value as the table writes it."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return " ".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def test_table_lists_every_paper_preset():
    assert set(preset_table()) == {"prostate", "fundus", "mnms", "busi"}


@pytest.mark.parametrize("name", ["prostate", "fundus", "mnms", "busi"])
def test_resolved_preset_is_the_table(name):
    cfg = config.resolve_config(config.parse_args(["--dataset", name, "--device", "cuda"]))
    row = preset_table()[name]
    assert {k: shown(cfg[k]) for k in row} == row
    assert cfg["amp"] == "fp16" and cfg["mode"] == "synfoc" and cfg["sam_ckpt"] == config.DEFAULT_SAM_CKPT


def test_the_authors_batch_rule_follows_the_labeled_count():
    """Their `if lb_num < 8: 2 + 2 else 4 + 4`; a labeled ratio keeps their lb_num default (40): 4 + 4; --batch wins."""
    resolve = lambda *a: config.resolve_config(config.parse_args(list(a)))  # noqa: E731
    assert resolve("--dataset", "prostate", "--labeled", "7")["batch"] == [2, 2]
    assert resolve("--dataset", "prostate", "--labeled", "8")["batch"] == [4, 4]
    assert resolve("--dataset", "mnms", "--labeled", "10")["batch"] == [4, 4]
    assert resolve("--dataset", "busi", "--labeled-ratio", "0.01")["batch"] == [4, 4]
    assert resolve("--dataset", "mnms", "--batch", "3", "1")["batch"] == [3, 1]
    # the CPU preset keeps its own choices (EXPERIMENTS.md "The embedded default")
    syn = resolve("--dataset", "synthetic")
    assert (syn["batch"], syn["seed"], syn["eval_every"], syn["sam_ckpt"]) == ([1, 1], 0, 100, None)
