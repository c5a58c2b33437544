"""Shared fixtures: the real data in ../shared/data, which CI must have."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped when absent on a user's clone, a failure under CI=true."""
    if not SHARED_DATA.is_dir():
        reason = f"real data folder {SHARED_DATA} is absent"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run the real-data tests")
        pytest.skip(reason)
    return SHARED_DATA
