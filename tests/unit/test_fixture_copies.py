"""The fixtures under tests/fixtures are verbatim copies of the shared domain samples."""

from __future__ import annotations

from pathlib import Path

import pytest

LOCAL = Path(__file__).resolve().parents[1] / "fixtures"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def test_copies_equal_shared_fixtures() -> None:
    """Every shared fixture has a byte-identical copy here (skipped without the share)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not available")
    shared = sorted(p.name for p in SHARED.iterdir() if p.is_file())
    assert shared, "the shared fixture directory is empty"
    for name in shared:
        assert (LOCAL / name).read_bytes() == (SHARED / name).read_bytes(), name
