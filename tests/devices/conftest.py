"""Fixtures of the device tests: the scan generator and optics a detector runs with."""
from __future__ import annotations

import pytest

from stemcal.devices import MicroscopeOptics, ScanGenerator


@pytest.fixture
def scan(request):
    """A scan generator set to the test module's ``NAV`` (ny, nx)."""
    ny, nx = request.module.NAV
    s = ScanGenerator(name="scan")
    s.shape_y.set(ny).wait(timeout=5)
    s.shape_x.set(nx).wait(timeout=5)
    return s


@pytest.fixture
def optics():
    """Optics at their defaults (1 um overfocus, 0.2 m camera length)."""
    return MicroscopeOptics(name="optics")
