"""Shared pytest fixtures. Real sample files live in `tests/data/` (see tests/data/README.md for their
source and licence), so the tests run from a bare clone."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is flat scripts at the repository root, not a package

SHARED_DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to `tests/data` (Fundus/, ProstateSlice/)."""
    assert SHARED_DATA.is_dir(), f"missing fixtures: {SHARED_DATA}"
    return SHARED_DATA
