"""Bad data files: each gives one clear error line, a non-zero exit and nothing half-written.

Issue 6, "bad input", files. What ``tests/test_io.py`` (``open_dataset`` alone) and
``tests/test_cli.py`` (missing, text, truncated .npy, 3D .npy, nav_shape mismatch,
blank specimen, all-zero .npy) already cover is not repeated; this file adds the
other formats, pixel types, corrupt MIB headers, HDF5 without frames, zero
frames and NaN frames through the CLI, the report and simulate outputs
(nothing half-written), absurd shapes in files, and random byte corruption of
small .npy, Merlin and HDF5 files (hypothesis).

Exit statuses, as decided here: 2 for anything wrong with the file or the
arguments (found from metadata before the data are read); 3 ("nothing to
calibrate on") for what only the first pass over the frames can find: all-zero
or uniform frames and NaN/infinite pixels (the frame sum is not finite).

The CLI runs in-process (``stemcal.cli.main``) where that is enough: an
uncaught exception would fail the test just as a traceback would. Real
subprocesses are used where the process itself matters (a file-size limit).
"""
from __future__ import annotations

import itertools
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libertem.api import Context

from stemcal.cli import main
from stemcal.fit.cache import BinFramesUDF
from stemcal.formats import MAX_SIDE, DatasetError, open_dataset
from stemcal.twin import OverfocusParams, simulate
from stemcal.formats import write_hdf5, write_mib, write_npy

REPO = Path(__file__).resolve().parents[2]
NAV, SIG = (24, 24), (48, 48)
CAMERA_LENGTH, DETECTOR_PIXEL = 0.2, 55e-6
SEMICONV = 0.3 * SIG[0] * DETECTOR_PIXEL / CAMERA_LENGTH
SCAN_PIXEL = 0.5e-9 * SIG[0] / 128
GEOMETRY = ["--scan-pixel-size", repr(SCAN_PIXEL), "--camera-length", repr(CAMERA_LENGTH),
            "--detector-pixel-size", repr(DETECTOR_PIXEL), "--overfocus", "1e-6",
            "--json", "--no-progress"]
FRAME_BYTES = 384 + SIG[0] * SIG[1] * 2  # one U16 Merlin frame with its header


# -- helpers ---------------------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``stemcal ARGV`` in this process: (status, stdout, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(result, status: int, *words: str) -> str:
    """Assert a clean failure: ``status``, nothing on stdout, one ``stemcal: error:`` line."""
    code, out, err = result
    assert code == status, (code, out, err)
    assert out == "", f"nothing may be printed on stdout, got {out!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemcal: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def fit(capsys, path, *extra):
    return run_cli(capsys, "fit", path, *GEOMETRY, *extra)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A small overfocused scan that the CLI calibrates (24x24 scan, 48x48 detector)."""
    p = OverfocusParams(overfocus=1e-6, scan_pixel_size=SCAN_PIXEL, camera_length=CAMERA_LENGTH,
                        detector_pixel_size=DETECTOR_PIXEL, semiconv=SEMICONV,
                        cy=SIG[0] / 2 + 1.3, cx=SIG[1] / 2 - 0.7, scan_rotation=23.5,
                        flip_y=True)
    return simulate(p, NAV, SIG, dose=20.0, seed=0)


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context.make_with("inline")


@pytest.fixture
def good_npy(frames, tmp_path) -> Path:
    return write_npy(tmp_path / "good.npy", frames)


# -- 1. the good file calibrates (so the failures below are the files' fault) -------------------

def test_good_file_fits(capsys, good_npy, tmp_path):
    import json
    report = tmp_path / "out" / "report.png"
    (tmp_path / "out").mkdir()
    code, out, err = fit(capsys, good_npy, "--report", report)
    assert code == 0, err
    res = json.loads(out)
    assert res["flip_y"] is True and abs(res["scan_rotation"] - 23.5) < 0.5, res
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in report.parent.iterdir()] == ["report.png"]  # no temporary left


# -- 2. truncated / corrupt files in the formats test_cli does not cover ------------------------

def test_truncated_mib(capsys, frames, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", frames)
    mib = hdr.with_suffix(".mib")
    mib.write_bytes(mib.read_bytes()[:-1000])
    one_error_line(fit(capsys, hdr), 2, str(mib), "truncated")


def test_truncated_hdf5(capsys, frames, tmp_path):
    master = write_hdf5(tmp_path / "s.h5", frames)
    data = tmp_path / "s.h5"
    data.write_bytes(data.read_bytes()[:-5000])
    one_error_line(fit(capsys, master), 2, "unreadable target", "truncated")


@pytest.mark.parametrize("field, value, words", [
    (0, b"XQ1", "not a readable Merlin .mib frame header"),   # magic
    (2, b"00000", "header size 0"),                          # header size
    (2, b"9x384", "not a readable Merlin .mib frame header"),  # not a number
    (4, b"0000", "0 frame"),                                  # width 0
    (5, b"-001", "frame"),                                    # negative height
    (6, b"R64", "pixel type 'R64' is not supported"),          # raw mode
])
def test_corrupt_mib_header(capsys, frames, tmp_path, field, value, words):
    hdr = write_mib(tmp_path / "s.mib", frames)
    mib = hdr.with_suffix(".mib")
    raw = bytearray(mib.read_bytes())
    fields = bytes(raw[:384]).split(b",")
    fields[field] = value
    head = b",".join(fields)[:384].ljust(384, b"\0")
    raw[:384] = head
    mib.write_bytes(bytes(raw))
    one_error_line(fit(capsys, hdr), 2, str(mib), words)


def test_mib_header_with_impossible_frame_size(capsys, frames, tmp_path):
    """A width that passes the range check but does not match the bytes: caught by the size."""
    hdr = write_mib(tmp_path / "s.mib", frames)
    mib = hdr.with_suffix(".mib")
    raw = bytearray(mib.read_bytes())
    raw[:384] = bytes(raw[:384]).replace(b",0048,0048,", b",0049,0048,", 1)
    mib.write_bytes(bytes(raw))
    one_error_line(fit(capsys, hdr), 2, "not a whole number")


@pytest.mark.parametrize("byte", [0, 4, 5, 6, 7])
def test_corrupt_bitshuffle_chunk_header(capsys, frames, tmp_path, byte):
    """A compressed chunk whose bitshuffle header states a wrong size is refused up front.

    Decoding such a chunk made hdf5plugin's bitshuffle filter write past its
    buffer and kill the process (SIGSEGV, found by the fuzz test below), so
    ``open_dataset`` checks every chunk's 12-byte header before any is decoded.
    """
    master = write_hdf5(tmp_path / "s.h5", frames)  # DECTRIS-style: master + bslz4 data file
    data = tmp_path / "s.h5"
    with h5py.File(data, "r") as f:
        chunks = []
        f["entry/data/data"].id.chunk_iter(lambda info: chunks.append(info.byte_offset))
    raw = bytearray(data.read_bytes())
    raw[chunks[300] + byte] ^= 0x10
    data.write_bytes(bytes(raw))
    one_error_line(fit(capsys, master), 2, f"compressed chunk at byte {chunks[300]}",
                   str(data), "corrupt")


def test_damaged_chunk_payload_found_while_reading(capsys, frames, tmp_path):
    """Damage inside a compressed chunk shows only when it is decoded: exit 2, file named."""
    master = write_hdf5(tmp_path / "s.h5", frames)
    data = tmp_path / "s.h5"
    with h5py.File(data, "r") as f:
        chunks = []
        f["entry/data/data"].id.chunk_iter(lambda i: chunks.append((i.byte_offset, i.size)))
    offset, size = chunks[300]
    raw = bytearray(data.read_bytes())
    raw[offset + 12:offset + size] = b"\xff" * (size - 12)  # header intact, LZ4 blocks garbage
    data.write_bytes(bytes(raw))
    one_error_line(fit(capsys, master), 2, str(master), "cannot read the data")


def test_hdr_with_bad_scan_counts(capsys, frames, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", frames)
    hdr.write_text(hdr.read_text().replace("End\t", "ScanX:\tabc\nScanY:\t24\nEnd\t"))
    one_error_line(fit(capsys, hdr), 2, str(hdr), "ScanX/ScanY")


# -- 3. wrong pixel types ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["complex64", "bool", "float16", "U3", "datetime64[s]",
                                   [("a", "<u2"), ("b", "<u2")]])
def test_wrong_dtype_npy(capsys, frames, tmp_path, dtype):
    path = tmp_path / "s.npy"
    arr = np.zeros(frames.shape, dtype=dtype)
    np.save(path, arr)
    one_error_line(fit(capsys, path), 2, "pixel dtype", "not supported")


def test_big_endian_float_npy(capsys, frames, tmp_path):
    """LiberTEM's .npy reader cannot swap float bytes ("not implemented"): refused up front."""
    np.save(tmp_path / "s.npy", frames.astype(">f4"))
    one_error_line(fit(capsys, tmp_path / "s.npy"), 2, "big-endian float", "little-endian")


def test_wrong_dtype_hdf5(capsys, frames, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = frames.astype(np.complex64)
    one_error_line(fit(capsys, tmp_path / "s.h5"), 2, "pixel dtype", "complex64")


@pytest.mark.parametrize("dtype", [">u2", "int8", ">i4", "uint64", "float32", "<f8"])
def test_supported_dtypes_open(ctx, frames, tmp_path, dtype):
    """Every integer width and both float widths (either byte order) are accepted."""
    path = tmp_path / "s.npy"
    np.save(path, frames.astype(dtype))
    ds = open_dataset(ctx, path)
    total = ctx.run_udf(dataset=ds, udf=BinFramesUDF())["frame_sum"].data
    assert np.allclose(total, frames.astype(dtype).astype(np.float64).sum(axis=(0, 1)))


# -- 4. HDF5 without the frames ----------------------------------------------------------------

def test_hdf5_without_dataset(capsys, tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/instrument/name"] = "no data here"
        f["entry/image"] = np.zeros((48, 48), np.uint16)
    one_error_line(fit(capsys, tmp_path / "s.h5"), 2, "no 3D or 4D dataset")


def test_empty_hdf5(capsys, tmp_path):
    h5py.File(tmp_path / "s.h5", "w").close()
    one_error_line(fit(capsys, tmp_path / "s.h5"), 2, "no 3D or 4D dataset")


# -- 5. zero frames ------------------------------------------------------------------------------

def test_zero_frames(capsys, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((0, 24, 48, 48), np.uint16))
    one_error_line(fit(capsys, tmp_path / "s.npy"), 2, "zero frames")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = np.zeros((0, 48, 48), np.uint16)
    one_error_line(fit(capsys, tmp_path / "s.h5", "--nav-shape", 1, 1), 2, "zero frames")
    (tmp_path / "s.mib").write_bytes(b"")
    one_error_line(fit(capsys, tmp_path / "s.mib", "--nav-shape", 1, 1), 2, "zero frames")


def test_scan_shape_that_would_reorder_a_4d_array(capsys, good_npy, frames):
    """--nav-shape with the frame count right but not the 4D array's own scan axes: named,
    nothing fitted on frames put at other scan positions."""
    ny, nx = frames.shape[:2]
    one_error_line(fit(capsys, good_npy, "--nav-shape", ny // 2, nx * 2), 2,
                   f"holds a {ny} x {nx} scan; nav_shape ({ny // 2}, {nx * 2}) would put its frames")


def test_frames_of_zero_size(capsys, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((24, 24, 0, 48), np.uint16))
    one_error_line(fit(capsys, tmp_path / "s.npy"), 2, "frames are empty")


def test_nav_shape_not_dividing_frames(capsys, frames, tmp_path):
    """575 frames in a 3D HDF5: no 2D scan shape divides them the way the file would need."""
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["entry/data/data"] = frames.reshape(-1, *SIG)[:575]
    one_error_line(fit(capsys, tmp_path / "s.h5"), 2, "575 frames", "nav_shape")
    one_error_line(fit(capsys, tmp_path / "s.h5", "--nav-shape", 24, 24), 2,
                   "576 positions", "575 frames")


# -- 6. frames of NaN, all zero: nothing to calibrate on (exit 3), never a silent NaN ----------

@pytest.mark.parametrize("case", ["all_nan", "one_nan_frame", "one_inf_pixel"])
def test_nan_frames(capsys, frames, tmp_path, case):
    data = frames.astype(np.float32)
    if case == "all_nan":
        data[:] = np.nan
    elif case == "one_nan_frame":
        data[7, 11] = np.nan
    else:
        data[3, 3, 20, 20] = np.inf
    path = write_npy(tmp_path / "s.npy", data)
    report = tmp_path / "r.png"
    one_error_line(fit(capsys, path, "--report", report), 3, "nothing to calibrate on",
                   "NaN or infinite")
    assert not report.exists()


def test_all_zero_mib(capsys, frames, tmp_path):
    hdr = write_mib(tmp_path / "s.mib", np.zeros_like(frames))
    one_error_line(fit(capsys, hdr, "--report", tmp_path / "r.png"), 3,
                   "nothing to calibrate on", "uniform")
    assert not (tmp_path / "r.png").exists()


# -- 7. nothing half-written -------------------------------------------------------------------

def test_failed_fit_writes_no_report(capsys, frames, tmp_path):
    path = write_npy(tmp_path / "s.npy", frames)
    path.write_bytes(path.read_bytes()[:-10])
    one_error_line(fit(capsys, path, "--report", tmp_path / "r.png"), 2, "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


@pytest.mark.parametrize("report, words", [
    ("r.png", None),                                 # fine: the missing data file is reached
    ("missing_dir/deeper/r.png", "does not exist"),  # a typo, not a new directory tree
    ("afile/r.png", "is not a directory"),
    ("adir", "is a directory"),
    ("r.xyz", "unknown figure type 'xyz'"),
])
def test_report_destination_checked_before_the_fit(capsys, tmp_path, report, words):
    """A bad --report is refused before the data are read (a missing data file is not reached)."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    res = fit(capsys, tmp_path / "no_such.npy", "--report", tmp_path / report)
    if words is None:
        one_error_line(res, 2, "no such file")  # the report was fine; the data file is missing
    else:
        one_error_line(res, 2, "--report", words)
    assert not (tmp_path / "missing_dir").exists()


def _stemcal_limited(args, fsize: int | None, cwd: Path) -> subprocess.CompletedProcess:
    """``stemcal ARGS`` in a subprocess that may write at most ``fsize`` bytes per file."""
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def _assert_subprocess_error(proc, status, *words):
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemcal: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_report_write_failure_leaves_no_partial_file(capsys, frames, tmp_path, monkeypatch):
    """The disk fills up while the report is written: no partial figure, exit 2."""
    import stemcal.report

    def half_written(path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n half a figure")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stemcal.report, "write_report", half_written)
    data = write_npy(tmp_path / "s.npy", frames)
    out = tmp_path / "out"
    out.mkdir()
    one_error_line(fit(capsys, data, "--report", out / "r.png"), 2,
                   f"cannot write {out / 'r.png'}: No space left on device")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["x.npy", "x.mib", "x.h5"])
def test_simulate_write_failure_leaves_no_partial_files(tmp_path, name):
    """Writing the dataset fails midway (RLIMIT_FSIZE 200 kB of a 1.2 MB file): no files at all."""
    # An unlimited run first, so that numba's on-disk cache exists and the limited run
    # writes nothing but the dataset.
    _stemcal_limited(["simulate", tmp_path / "warm" / name, "--nav-shape", 2, 2], None, tmp_path)
    proc = _stemcal_limited(["simulate", tmp_path / "out" / name, "--nav-shape", 16, 16,
                             "--sig-shape", 48, 48], 200_000, tmp_path)
    _assert_subprocess_error(proc, 2, "cannot write", str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("out, words", [
    ("afile/x.npy", "is not a directory"),
    ("x.tif", "unknown suffix '.tif'"),
    ("x.npy", "x.truth.json: is a directory"),
    ("adir.npy", "adir.npy: is a directory"),
    ("h/x.h5", "x_master.h5: is a directory"),
])
def test_simulate_bad_destination(capsys, tmp_path, out, words):
    """Refused before simulating: nothing written, nothing left."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "x.truth.json").mkdir()
    (tmp_path / "adir.npy").mkdir()
    (tmp_path / "h" / "x_master.h5").mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    res = run_cli(capsys, "simulate", tmp_path / out, "--nav-shape", 8, 8, "--sig-shape", 32, 32)
    one_error_line(res, 2, words)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_simulate_truth_failure_removes_the_dataset(capsys, tmp_path, monkeypatch):
    """If the truth JSON cannot be written after the data, the data go too (no half pair)."""
    import stemcal.formats as writers

    def broken(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(writers, "write_text", broken)
    res = run_cli(capsys, "simulate", tmp_path / "x.mib", "--nav-shape", 8, 8,
                  "--sig-shape", 32, 32)
    one_error_line(res, 2, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# -- 8. absurd shapes in files: refused from the metadata, before anything is allocated --------

def _traced_peak(fn) -> tuple[BaseException | None, int]:
    """(exception raised by ``fn()``, peak bytes traced by tracemalloc while it ran)."""
    tracemalloc.start()
    try:
        fn()
        exc = None
    except Exception as e:  # noqa: BLE001 - returned to the caller
        exc = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return exc, peak


def test_tracemalloc_sees_numpy_allocations():
    """The probe used below would notice a large NumPy allocation (positive control)."""
    exc, peak = _traced_peak(lambda: np.empty(200 * 2**20, np.uint8))
    assert exc is None and peak >= 200 * 2**20


def test_hdf5_declaring_a_huge_scan(ctx, tmp_path):
    """A 1e6 x 1e6 scan of 64x64 frames declared by a sparse HDF5 file (a few kB on disk)."""
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", shape=(10**6, 10**6, 64, 64), dtype="u2",
                         chunks=(1, 1, 64, 64))
    assert path.stat().st_size < 100_000
    exc, peak = _traced_peak(lambda: open_dataset(ctx, path))
    assert isinstance(exc, DatasetError), exc
    assert f"limit of {MAX_SIDE}" in str(exc) and "\n" not in str(exc)
    assert peak < 20 * 2**20, peak


def test_npy_header_declaring_a_huge_scan(ctx, tmp_path):
    path = tmp_path / "huge.npy"
    header = {"descr": "<u2", "fortran_order": False, "shape": (10**6, 10**6, 256, 256)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 4096)
    exc, peak = _traced_peak(lambda: open_dataset(ctx, path))
    assert isinstance(exc, DatasetError) and f"limit of {MAX_SIDE}" in str(exc), exc
    assert peak < 20 * 2**20, peak


def test_huge_nav_shape_argument(capsys, ctx, good_npy):
    exc, peak = _traced_peak(lambda: open_dataset(ctx, good_npy, nav_shape=(10**6, 10**6)))
    assert isinstance(exc, DatasetError) and f"limit of {MAX_SIDE}" in str(exc), exc
    assert peak < 20 * 2**20, peak
    one_error_line(fit(capsys, good_npy, "--nav-shape", 10**6, 10**6), 2, "--nav-shape",
                   "out of range 1..65536")


# -- 9. random byte corruption (hypothesis) -----------------------------------------------------

SMALL = np.random.default_rng(5).integers(0, 4000, size=(4, 6, 16, 16), dtype=np.uint16)


@st.composite
def corruptions(draw, size: int):
    """A list of (kind, offset, payload) edits: bit flips, overwrites, or one truncation."""
    head = st.integers(0, min(size - 1, 700))  # headers live at the start: hit them often
    anywhere = st.integers(0, size - 1)
    offset = st.one_of(head, anywhere)
    edit = st.one_of(
        st.tuples(st.just("flip"), offset, st.integers(0, 7)),
        st.tuples(st.just("overwrite"), offset, st.binary(min_size=1, max_size=16)),
    )
    edits = draw(st.lists(edit, min_size=0, max_size=4))
    if draw(st.booleans()):
        edits.append(("truncate", draw(anywhere), None))
    if not edits:
        edits.append(("flip", draw(offset), draw(st.integers(0, 7))))
    return edits


def _apply(raw: bytes, edits) -> bytes:
    buf = bytearray(raw)
    for kind, off, arg in edits:
        if kind == "flip" and off < len(buf):
            buf[off] ^= 1 << arg
        elif kind == "overwrite":
            buf[off:off + len(arg)] = arg
        elif kind == "truncate":
            del buf[off:]
    return bytes(buf)


def _open_and_pass(ctx, path, nav_shape=None) -> None:
    """open_dataset + the fit's first pass: finite results or a one-line error.

    ``open_dataset`` may only raise :class:`DatasetError` (naming the file); the
    pass may only raise ``OSError`` (a damaged block inside the data).

    (The pass is ``stemcal fit``'s own, :class:`BinFramesUDF`. LiberTEM 0.16's
    ``SumUDF`` is avoided: run over a .npy and then over a .mib in one process,
    it fails inside numba, corrupt files or not.)
    """
    try:
        ds = open_dataset(ctx, path, nav_shape=nav_shape)
    except DatasetError as exc:  # anything the metadata reveals: DatasetError, never else
        assert "\n" not in str(exc)
        assert str(path.with_suffix("")) in str(exc)  # names the file (.hdr or its .mib)
        return
    try:
        res = ctx.run_udf(dataset=ds, udf=BinFramesUDF())
    except OSError as exc:
        # A damaged block inside the data (a compressed HDF5 chunk that no longer
        # decodes) shows only when it is read; `stemcal fit` reports it as
        # "FILE: cannot read the data (...)", exit 2.
        assert str(exc).strip() and "\n" not in str(exc).strip()
        return
    total = np.asarray(res["frame_sum"].data)
    assert total.shape == tuple(ds.shape.sig)
    assert np.all(np.isfinite(total)) and np.all(np.isfinite(res["binned"].data))


_SERIAL = itertools.count()


def _fresh_dir(base: Path) -> Path:
    """A new directory per example: no reader can still hold an earlier example's file."""
    d = base / f"fuzz{next(_SERIAL)}"
    d.mkdir()
    return d


def _write(dir_: Path, name: str, raw: bytes) -> Path:
    path = dir_ / name
    path.write_bytes(raw)
    return path


#: Examples per corruption test; ``STEMCAL_FUZZ_EXAMPLES=500`` (random, not derandomized)
#: searches deeper than the fixed 30 the suite runs.
_DEEP = int(os.environ.get("STEMCAL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 30, deadline=None, derandomize=not _DEEP,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


class _Originals(dict):
    """The original file bytes (a short repr keeps hypothesis' failure reports readable)."""

    def __repr__(self) -> str:
        return f"<original bytes of {sorted(self)}>"


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("originals")
    out = _Originals(npy=write_npy(d / "s.npy", SMALL).read_bytes())
    hdr = write_mib(d / "s.mib", SMALL)
    out["mib"], out["hdr"] = hdr.with_suffix(".mib").read_bytes(), hdr.read_bytes()
    with h5py.File(d / "s.h5", "w") as f:
        import hdf5plugin
        f.create_dataset("entry/data/data", data=SMALL, chunks=(1, 1, 16, 16),
                         **hdf5plugin.Bitshuffle(cname="lz4"))
    out["h5"] = (d / "s.h5").read_bytes()
    return out


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_corrupt_npy(ctx, originals, tmp_path_factory, data):
    raw = originals["npy"]
    bad = _apply(raw, data.draw(corruptions(len(raw))))
    _open_and_pass(ctx, _write(_fresh_dir(tmp_path_factory.getbasetemp()), "s.npy", bad))


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data(), which=st.sampled_from(["mib", "hdr"]))
def test_corrupt_mib(ctx, originals, tmp_path_factory, data, which):
    d = _fresh_dir(tmp_path_factory.getbasetemp())
    files = {"mib": originals["mib"], "hdr": originals["hdr"]}
    files[which] = _apply(files[which], data.draw(corruptions(len(files[which]))))
    for suffix, raw in files.items():
        _write(d, f"s.{suffix}", raw)
    _open_and_pass(ctx, d / "s.hdr")


@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_corrupt_hdf5(ctx, originals, tmp_path_factory, data):
    raw = originals["h5"]
    bad = _apply(raw, data.draw(corruptions(len(raw))))
    _open_and_pass(ctx, _write(_fresh_dir(tmp_path_factory.getbasetemp()), "s.h5", bad),
                   nav_shape=(4, 6))


def test_nan_frame_outside_the_cache(capsys, frames, tmp_path, monkeypatch):
    """Large data are cached sub-sampled; a NaN frame the cache skipped is caught in the full pass.

    A small memory budget makes the cache keep every 2nd scan position (as the
    512 MiB default does for big data); frame (1, 1) is not among them.
    """
    import functools

    import stemcal.fit.coarse as coarse

    small = SIG[0] * SIG[1] * 4 * NAV[0] * NAV[1] // 3  # a third of the full cache
    monkeypatch.setattr(coarse, "cold_start", functools.partial(coarse.cold_start, budget=small))
    data = frames.astype(np.float32)
    data[1, 1] = np.nan
    path = write_npy(tmp_path / "s.npy", data)
    one_error_line(fit(capsys, path, "--report", tmp_path / "r.png"), 3,
                   "nothing to calibrate on", "NaN or infinite", "full pass")
    assert not (tmp_path / "r.png").exists()
