"""open_dataset / describe: round trips and one-line DatasetError for bad input."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from libertem.api import Context
from libertem.io.dataset.base import DataSetException
from libertem.udf.raw import PickUDF

from stemcal.formats import DatasetError, describe, open_dataset
from stemcal.formats import write_hdf5, write_mib, write_npy

SHAPE = (8, 8, 32, 32)


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context.make_with("inline")


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    arr = np.random.default_rng(3).integers(0, 65536, size=SHAPE, dtype=np.uint16)
    arr[0, 0, 0, :2] = (300, 65535)
    return arr


def read_all(ctx: Context, ds) -> np.ndarray:
    roi = np.ones(tuple(ds.shape.nav), dtype=bool)
    frames = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=roi)["intensity"].raw_data
    return np.asarray(frames).reshape(tuple(ds.shape))


def fails(ctx, path, match: str, **kwargs) -> str:
    """Assert open_dataset raises a one-line DatasetError matching ``match``."""
    with pytest.raises(DatasetError, match=match) as info:
        open_dataset(ctx, path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def truncate(path: Path, n_bytes: int) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[:-n_bytes])


# --- round trips --------------------------------------------------------------------------

def test_open_npy(ctx, data, tmp_path):
    ds = open_dataset(ctx, write_npy(tmp_path / "s.npy", data))
    assert describe(ds) == {"nav_shape": (8, 8), "sig_shape": (32, 32), "dtype": "uint16",
                            "n_frames": 64}
    assert np.array_equal(read_all(ctx, ds), data)


def test_open_npy_series_given_its_scan_shape(ctx, data, tmp_path):
    """A series stored as one row (1, n, sy, sx) may be given its scan shape."""
    path = write_npy(tmp_path / "s.npy", data.reshape(1, 64, 32, 32))
    ds = open_dataset(ctx, path, nav_shape=(8, 8))
    assert describe(ds)["nav_shape"] == (8, 8)
    assert np.array_equal(read_all(ctx, ds), data)


def test_npy_scan_axes_are_not_reinterpreted(ctx, data, tmp_path):
    """A 4D array's own 8x8 scan given as 4x16: refused, naming both shapes (it would put
    frames at other scan positions); its own shape again is fine."""
    path = write_npy(tmp_path / "s.npy", data)
    fails(ctx, path, r"holds a 8 x 8 scan; nav_shape \(4, 16\) would put its frames at other",
          nav_shape=(4, 16))
    assert describe(open_dataset(ctx, path, nav_shape=(8, 8)))["nav_shape"] == (8, 8)


@pytest.mark.parametrize("which", ["hdr", "mib"])
def test_open_mib(ctx, data, tmp_path, which):
    hdr = write_mib(tmp_path / "s.mib", data)
    ds = open_dataset(ctx, hdr.with_suffix("." + which))  # .mib finds its .hdr for the shape
    assert describe(ds) == {"nav_shape": (8, 8), "sig_shape": (32, 32), "dtype": "uint16",
                            "n_frames": 64}
    assert np.array_equal(read_all(ctx, ds), data)


def test_open_dectris_master(ctx, data, tmp_path):
    master = write_hdf5(tmp_path / "s.h5", data)
    ds = open_dataset(ctx, master)  # nav from ntrigger/nimages in the master
    assert describe(ds)["nav_shape"] == (8, 8)
    assert np.array_equal(read_all(ctx, ds), data)
    ds = open_dataset(ctx, tmp_path / "s.h5", nav_shape=(8, 8))  # the bare data file
    assert np.array_equal(read_all(ctx, ds), data)


def test_open_first_4d_hdf5_dataset(ctx, data, tmp_path):
    path = tmp_path / "plain.hdf5"
    with h5py.File(path, "w") as f:
        f["meta/image"] = np.zeros((4, 4))
        f["scan/frames"] = data
    ds = open_dataset(ctx, path)
    assert describe(ds)["nav_shape"] == (8, 8)
    assert np.array_equal(read_all(ctx, ds), data)


# --- errors -------------------------------------------------------------------------------

def test_missing_file(ctx, tmp_path):
    fails(ctx, tmp_path / "nope.npy", "no such file")


def test_directory(ctx, tmp_path):
    fails(ctx, tmp_path, "not a regular file")


def test_unknown_suffix(ctx, tmp_path):
    (tmp_path / "s.tif").write_bytes(b"II*\0")
    fails(ctx, tmp_path / "s.tif", "unknown suffix")


def test_truncated_npy(ctx, data, tmp_path):
    path = write_npy(tmp_path / "s.npy", data)
    truncate(path, 100)
    fails(ctx, path, "truncated")


@pytest.mark.parametrize("name", ["s.npy", "s.mib", "s.h5"])
def test_garbage_file(ctx, tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(5000))
    fails(ctx, tmp_path / name, "not a readable", nav_shape=(8, 8))


def test_npy_not_4d(ctx, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((64, 32, 32), np.uint16))
    fails(ctx, tmp_path / "s.npy", "expected a 4D array", nav_shape=(8, 8))


@pytest.mark.parametrize("which", ["hdr", "mib"])
def test_truncated_mib(ctx, data, tmp_path, which):
    hdr = write_mib(tmp_path / "s.mib", data)
    truncate(hdr.with_suffix(".mib"), 10)
    fails(ctx, hdr.with_suffix("." + which), "truncated")


def test_mib_missing_whole_frames(ctx, data, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", data)
    truncate(hdr.with_suffix(".mib"), 3 * (384 + 32 * 32 * 2))  # whole frames gone
    fails(ctx, hdr, "declares 64 frames .* holds 61")


def test_hdr_without_mib(ctx, data, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", data)
    hdr.with_suffix(".mib").unlink()
    fails(ctx, hdr, "no .mib file")


def test_bad_hdr(ctx, data, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", data)
    hdr.write_text("not a header\n")
    fails(ctx, hdr, "not a Merlin .hdr")


def test_mib_without_hdr_needs_nav_shape(ctx, data, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", data)
    hdr.unlink()
    fails(ctx, tmp_path / "s.mib", r"give the scan.s shape \(nav_shape=\(ny, nx\), --nav-shape NY NX")
    ds = open_dataset(ctx, tmp_path / "s.mib", nav_shape=(8, 8))
    assert np.array_equal(read_all(ctx, ds), data)


def test_truncated_hdf5(ctx, data, tmp_path):
    master = write_hdf5(tmp_path / "s.h5", data)
    truncate(tmp_path / "s.h5", 20000)
    fails(ctx, master, "unreadable target.*truncated file")
    fails(ctx, tmp_path / "s.h5", "not a readable HDF5.*truncated file", nav_shape=(8, 8))


def test_hdf5_broken_link(ctx, data, tmp_path):
    master = write_hdf5(tmp_path / "s.h5", data)
    (tmp_path / "s.h5").unlink()
    fails(ctx, master, "broken external link")


def test_hdf5_without_3d_dataset(ctx, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["image"] = np.zeros((32, 32))
        f["entry/data/data"] = np.zeros(5)
    fails(ctx, tmp_path / "s.h5", "no 3D or 4D dataset")


def test_hdf5_3d_needs_nav_shape(ctx, data, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = data.reshape(64, 32, 32)
    fails(ctx, tmp_path / "s.h5", "does not give a 2D scan shape .*64 frames.*nav_shape")
    ds = open_dataset(ctx, tmp_path / "s.h5", nav_shape=(8, 8))
    assert np.array_equal(read_all(ctx, ds), data)


@pytest.mark.parametrize("fmt", ["npy", "mib", "h5"])
@pytest.mark.parametrize("nav", [(8, 9), (4, 8), (64,), (8, 0), "ab"])
def test_nav_shape_mismatch(ctx, data, tmp_path, fmt, nav):
    writer = {"npy": write_npy, "mib": write_mib, "h5": write_hdf5}[fmt]
    path = writer(tmp_path / f"s.{fmt}", data)
    fails(ctx, path, "nav_shape", nav_shape=nav)


def test_zero_frames_npy(ctx, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((0, 8, 32, 32), np.uint16))
    fails(ctx, tmp_path / "s.npy", "zero frames")


def test_zero_frames_hdf5(ctx, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = np.zeros((0, 32, 32), np.uint16)
    fails(ctx, tmp_path / "s.h5", "zero frames", nav_shape=(1, 1))


def test_zero_frames_mib(ctx, tmp_path):
    (tmp_path / "s.mib").write_bytes(b"")
    fails(ctx, tmp_path / "s.mib", "zero frames", nav_shape=(1, 1))


def test_sig_dims_other_than_2(ctx, data, tmp_path):
    fails(ctx, write_npy(tmp_path / "s.npy", data), "sig_dims", sig_dims=1)


def test_libertem_errors_are_wrapped(data, tmp_path):
    class BrokenContext:
        def load(self, *args, **kwargs):
            raise DataSetException("something deep\nwith a second line")

    with pytest.raises(DatasetError, match="LiberTEM cannot load it.*something deep") as info:
        open_dataset(BrokenContext(), write_npy(tmp_path / "s.npy", data))
    assert "\n" not in str(info.value)


# --- detector event files (issue 4) ---------------------------------------------------------

def test_open_detector_event_file(ctx, data, tmp_path):
    """HDF5StreamWriter's (1, ny, nx, sy, sx) files open as 4D: the event axis is dropped."""
    from stemcal.devices.writers.scan_file import HDF5StreamWriter

    writer = HDF5StreamWriter(tmp_path, compression="bslz4")
    writer.open("merlin", "merlin_image")
    path = writer.write(data)
    with h5py.File(path, "r") as f:
        assert f["entry/data/data"].shape == (1,) + SHAPE
    ds = open_dataset(ctx, path)  # the scan shape comes from the file
    assert describe(ds) == {"nav_shape": (8, 8), "sig_shape": (32, 32), "dtype": "uint16",
                            "n_frames": 64}
    assert np.array_equal(read_all(ctx, ds), data)
    fails(ctx, path, r"holds a 8 x 8 scan", nav_shape=(4, 16))   # its own scan axes


def test_5d_hdf5_with_several_events_is_refused(ctx, data, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = np.stack([data, data])  # (2, ny, nx, sy, sx): two events
    fails(ctx, tmp_path / "s.h5", "no 3D or 4D dataset")
