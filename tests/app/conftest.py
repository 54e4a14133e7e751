"""A small simulated scan shared by the app's tests (written once per session)."""
from __future__ import annotations

import pytest

from stemcal.formats import write_npy
from stemcal.twin import simulate

from scan_setup import NAV, SIG, TRUTH  # tests/app/


@pytest.fixture(scope="session")
def small_scan(tmp_path_factory):
    """``(path, truth)``: a 40x40 scan of 96x96 frames (5 counts/px) as ``.npy``."""
    path = tmp_path_factory.mktemp("app-data") / "small.npy"
    write_npy(path, simulate(TRUTH, NAV, SIG, dose=5.0, seed=3))
    return path, TRUTH
