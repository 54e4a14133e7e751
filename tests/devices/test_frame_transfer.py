"""How a hardware backend hands frames on: the sink UDF, the shared-memory ring of the DECTRIS
receiver, and the partition size a backend asks LiberTEM-live for."""
from __future__ import annotations

import numpy as np
import pytest
from libertem.api import Context

from stemcal.devices import ScanGenerator
from stemcal.devices.hardware._frame_ring import FrameRing, RingLayout
from stemcal.devices.hardware._frame_sink import FrameSinkUDF
from stemcal.devices.hardware.merlin import MerlinHardwareBackend

DATA = np.arange(5 * 4 * 16 * 16, dtype=np.uint16).reshape(5, 4, 16, 16)


def test_sink_gets_every_frame_once_in_scan_order():
    ctx = Context.make_with("inline")
    got: list[tuple[int, np.ndarray]] = []
    ds = ctx.load("memory", data=DATA, num_partitions=3)
    res = ctx.run_udf(ds, FrameSinkUDF(lambda start, f: got.append((start, f.copy()))))
    assert [s for s, _ in got] == list(np.cumsum([0] + [len(f) for _, f in got[:-1]]))
    assert all(f.dtype == np.uint16 for _, f in got)  # the detector's dtype, not float
    np.testing.assert_array_equal(np.concatenate([f for _, f in got]), DATA.reshape(20, 16, 16))
    assert res["frames"].data.tolist() == [20]


def test_sink_refuses_parts_of_frames():
    ctx = Context.make_with("inline")
    ds = ctx.load("memory", data=DATA, num_partitions=2, tileshape=(2, 4, 16))
    with pytest.warns(UserWarning), \
            pytest.raises(ValueError, match=r"whole frames, got \(4, 16\) of \(16, 16\)"):
        ctx.run_udf(ds, FrameSinkUDF(lambda start, f: None))


def test_ring_slots_are_shared_between_mappings():
    ring = FrameRing.create((16, 16), "<u2", slots=3, slot_bytes=5 * 16 * 16 * 2 + 7)
    try:
        layout = RingLayout.from_dict(ring.layout.to_dict())  # as the receiver gets it
        assert (layout.slots, layout.slot_frames, layout.frame_shape) == (3, 5, (16, 16))
        other = FrameRing(layout)  # the receiver's mapping
        other.slot(2, 4)[:] = DATA.reshape(20, 16, 16)[:4]
        ring.unlink()  # the name goes; both mappings stay
        np.testing.assert_array_equal(ring.slot(2, 4), DATA.reshape(20, 16, 16)[:4])
        assert not ring.slot(1, 5).any()
        other.close()
    finally:
        ring.unlink()
        ring.close()
    big = FrameRing.create((4096, 4096), "<u4", slots=1)  # a frame larger than a slot
    assert big.layout.slot_frames == 1
    big.unlink()
    big.close()


@pytest.mark.parametrize("dwell, given, n, expected", [
    (1e-3, None, 4096, 100),     # 0.1 s of a 1 ms dwell
    (1e-5, None, 4096, 256),     # LiberTEM-live's default at detector rate
    (4e-3, None, 4096, 25),
    (1.0, None, 4096, 1),        # at least one frame
    (1e-5, None, 60, 60),        # at most the scan
    (1e-3, 24, 4096, 24),        # given
])
def test_partition_size(dwell, given, n, expected):
    scan = ScanGenerator(name="scan")
    scan.dwell_time.set(dwell).wait(timeout=5)
    backend = MerlinHardwareBackend(scan, frames_per_partition=given)
    assert backend._partition(n) == expected
