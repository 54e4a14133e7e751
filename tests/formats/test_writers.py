"""Round trips of the twin's file writers through LiberTEM 0.16's own loaders."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from libertem.api import Context
from libertem.udf.raw import PickUDF

from stemcal.formats import dectris, mib, npy
from stemcal.formats import write_dataset, write_hdf5, write_mib, write_npy

SHAPE = (8, 8, 32, 32)


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context.make_with("inline")


@pytest.fixture
def data() -> np.ndarray:
    """Random uint16 with values above 255 and 32767 (catches byte-order slips)."""
    arr = np.random.default_rng(1).integers(0, 65536, size=SHAPE, dtype=np.uint16)
    arr[0, 0, 0, :3] = (0, 300, 65535)
    assert arr.max() > 32767 and np.any((arr > 255) & (arr < 32768))
    return arr


def read_all(ctx: Context, ds) -> np.ndarray:
    """Every frame of ``ds`` as a native-order ``(ny, nx, sy, sx)`` array."""
    roi = np.ones(tuple(ds.shape.nav), dtype=bool)
    frames = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=roi)["intensity"].raw_data
    return np.asarray(frames).reshape(tuple(ds.shape))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_npy_roundtrip(ctx, data, tmp_path):
    path = write_npy(tmp_path / "scan.npy", data)
    assert path == tmp_path / "scan.npy"
    ds = ctx.load("npy", path=str(path))
    out = read_all(ctx, ds)
    assert out.dtype == np.uint16 and np.array_equal(out, data)


def test_mib_roundtrip(ctx, data, tmp_path):
    hdr = write_mib(tmp_path / "scan.mib", data)
    assert hdr == tmp_path / "scan.hdr" and (tmp_path / "scan.mib").is_file()
    ds = ctx.load("mib", path=str(hdr))
    assert tuple(ds.shape) == SHAPE  # nav inferred from the .hdr
    out = read_all(ctx, ds)
    assert out.dtype == np.uint16 and np.array_equal(out, data)


def test_mib_file_format(data, tmp_path):
    hdr = write_mib(tmp_path / "scan.hdr", data)
    raw = (tmp_path / "scan.mib").read_bytes()
    frame_bytes = 384 + 32 * 32 * 2
    assert len(raw) == 64 * frame_bytes
    header = raw[:384]
    text = header.rstrip(b"\0").decode("ascii")
    assert text.startswith("MQ1,000001,00384,01,0032,0032,U16,   1x1,01,")
    assert text.endswith(",") and header.endswith(b"\0")
    assert raw[frame_bytes:frame_bytes + 11] == b"MQ1,000002,"
    pixels = np.frombuffer(raw[384:frame_bytes], dtype=">u2").reshape(32, 32)
    assert np.array_equal(pixels, data[0, 0])
    lines = hdr.read_text().split("\n")
    assert lines[0].startswith("HDR") and lines[-1] == "End\t"
    assert "Frames in Acquisition (Number):\t64" in lines
    assert "Frames per Trigger (Number):\t8" in lines


def test_mib_uint8_stays_uint8(ctx, data, tmp_path):
    small = (data % 256).astype(np.uint8)
    ds = ctx.load("mib", path=str(write_mib(tmp_path / "scan.mib", small)))
    out = read_all(ctx, ds)
    assert out.dtype == np.uint8 and np.array_equal(out, small)


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_mib_accepts_integer_valued(ctx, data, tmp_path, dtype):
    ds = ctx.load("mib", path=str(write_mib(tmp_path / "scan.mib", data.astype(dtype))))
    out = read_all(ctx, ds)
    assert out.dtype == np.uint16 and np.array_equal(out, data)


@pytest.mark.parametrize("value, match", [(-1, "range"), (65536, "range"), (0.5, "integer"),
                                          (np.nan, "integer")])
def test_mib_rejects_values_outside_u16(tmp_path, value, match):
    arr = np.zeros(SHAPE, dtype=np.float64)
    arr[1, 2, 3, 4] = value
    with pytest.raises(ValueError, match=match):
        write_mib(tmp_path / "scan.mib", arr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["bslz4", None])
def test_hdf5_roundtrip(ctx, data, tmp_path, monkeypatch, compression):
    master = write_hdf5(tmp_path / "scan.h5", data, compression=compression)
    assert master == tmp_path / "scan_master.h5"
    with h5py.File(master, "r") as f:
        link = f.get("entry/data/data", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.filename == "scan.h5"
        dset = f["entry/data/data"]
        assert dset.shape == (64, 32, 32) and dset.chunks == (1, 32, 32)
        plist = dset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        assert filters == ([32008] if compression else [])  # 32008: bitshuffle (+LZ4)
    monkeypatch.chdir(tmp_path.parent)  # the relative link resolves next to the master
    ds = ctx.load("hdf5", path=str(master), ds_path="entry/data/data", nav_shape=SHAPE[:2])
    out = read_all(ctx, ds)
    assert out.dtype == np.uint16 and np.array_equal(out, data)


def test_hdf5_custom_dataset_and_float(ctx, tmp_path):
    arr = np.random.default_rng(2).normal(size=(3, 5, 16, 16)).astype(np.float32)
    master = write_hdf5(tmp_path / "f.hdf5", arr, dataset="frames")
    assert master.name == "f_master.hdf5"
    ds = ctx.load("hdf5", path=str(master), ds_path="frames", nav_shape=(3, 5))
    assert np.array_equal(read_all(ctx, ds), arr)


def test_hdf5_rejects_unknown_compression(data, tmp_path):
    with pytest.raises(ValueError, match="compression"):
        write_hdf5(tmp_path / "scan.h5", data, compression="gzip")


@pytest.mark.parametrize("name, loaded", [("a.npy", "a.npy"), ("b.mib", "b.hdr"),
                                          ("c.hdr", "c.hdr"), ("d.h5", "d_master.h5"),
                                          ("e.HDF5", "e_master.HDF5")])
def test_write_dataset_dispatch(data, tmp_path, name, loaded):
    assert write_dataset(tmp_path / name, data) == tmp_path / loaded


def test_write_dataset_unknown_suffix(data, tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_dataset(tmp_path / "scan.tif", data)


@pytest.mark.parametrize("writer", [write_npy, write_mib, write_hdf5])
@pytest.mark.parametrize("bad, match", [(np.zeros((8, 32, 32), np.uint16), "4D"),
                                        (np.zeros((0, 8, 32, 32), np.uint16), "empty"),
                                        (np.array([[[["x"]]]]), "numeric")])
def test_writers_validate(writer, bad, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        writer(tmp_path / "scan.h5", bad)
    assert list(tmp_path.iterdir()) == []


def test_npy_failure_keeps_old_file(data, tmp_path, monkeypatch):
    path = write_npy(tmp_path / "scan.npy", data)
    before = path.read_bytes()

    def broken_save(fh, arr, **kwargs):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(npy.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_npy(path, data[::-1])
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_mib_failure_leaves_nothing(data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mib, "_mib_hdr_text", broken)
    with pytest.raises(OSError):
        write_mib(tmp_path / "scan.mib", data)
    assert list(tmp_path.iterdir()) == []


def test_hdf5_failure_leaves_nothing(data, tmp_path, monkeypatch):
    monkeypatch.setattr(dectris, "DECTRIS_SPECIFIC", "entry/data/data/not-a-group")
    with pytest.raises(Exception):
        write_hdf5(tmp_path / "scan.h5", data)
    assert list(tmp_path.iterdir()) == []


def test_writes_create_missing_directory(data, tmp_path):
    path = write_npy(tmp_path / "new" / "dir" / "scan.npy", data)
    assert path.is_file() and os.access(path, os.R_OK)
