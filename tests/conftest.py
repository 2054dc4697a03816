"""Shared pytest fixtures and the `cuda` marker. Real sample files live in `tests/data/` (see tests/data/README.md
for their source and licence), so the tests run from a bare clone.

The `cuda` marker: a test (or a `pytest.param("cuda", marks=pytest.mark.cuda)` case) that needs a CUDA GPU. Without
one it is skipped here, said so with -rs; on a GPU machine `python -m pytest -m cuda tests` runs exactly these
(bench/gpu_check.sh does, and fails if any of them is skipped or errors).
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is flat scripts at the repository root, not a package

SHARED_DATA = ROOT / "tests" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores (pytest.ini): one thread each, and their
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too, so the workers never oversubscribe the CPU
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to `tests/data` (Fundus/, ProstateSlice/)."""
    assert SHARED_DATA.is_dir(), f"missing fixtures: {SHARED_DATA}"
    return SHARED_DATA


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; `-m cuda` selects them)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
