"""Shared pytest fixtures. Real sample files live in `../shared/data_format` beside the repository,
the way CI lays them out."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is flat scripts at the repository root, not a package

SHARED_DATA = ROOT.parent / "shared" / "data_format"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to `../shared/data_format` (Fundus/, ProstateSlice/)."""
    assert SHARED_DATA.is_dir(), f"missing fixtures: {SHARED_DATA}"
    return SHARED_DATA
