"""InlineContext: the default context gives what libertem.api's does, without its imports."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from libertem.api import Context
from libertem.common.progress import ProgressReporter

from stemcal.fit.cache import BinFramesUDF
from stemcal.processing import OverfocusUDF
from stemcal.executors import InlineContext
from stemcal.twin import OverfocusParams, simulate

PARAMS = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                         detector_pixel_size=55e-6, semiconv=6e-3, cy=23.0, cx=25.0,
                         scan_rotation=25.0, flip_y=True, descan=((0.01, 0.0), (0.0, -0.02)))


#: Lines of a child process's script: ``p`` the tests' geometry, ``ctx`` an inline context.
PARAMS_AND_CONTEXT = (
    f"p = OverfocusParams.from_dict(json.loads({json.dumps(json.dumps(PARAMS.to_dict()))}))\n"
    "ctx = make_context('inline')\n")


def run_python(code: str) -> dict:
    """Run ``code`` in a new interpreter; the JSON its last line of output holds."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctx") / "scan.npy"
    np.save(path, simulate(PARAMS, (12, 10), (48, 48), dose=30, seed=4))
    return path


class Counting(ProgressReporter):
    def __init__(self):
        self.calls = 0

    def start(self, state):
        self.calls += 1

    def update(self, state):
        self.calls += 1

    def end(self, state):
        self.calls += 1


@pytest.mark.filterwarnings("ignore:ROI dtype")   # the Context's warning of the cast
def test_passes_equal_those_of_libertems_context(npy):
    roi = np.zeros((12, 10), dtype=np.uint8)   # not bool: cast, as the Context does
    roi[1::2, ::3] = 1
    ours, theirs = InlineContext(), Context.make_with("inline")
    try:
        a_ds = ours.load("npy", path=str(npy))
        b_ds = theirs.load("npy", path=str(npy))
        assert tuple(a_ds.shape) == tuple(b_ds.shape) == (12, 10, 48, 48)
        for udf, kw in ((OverfocusUDF(PARAMS), {}), (BinFramesUDF(factor=2), {"roi": roi})):
            a = ours.run_udf(dataset=a_ds, udf=udf, **kw)
            b = theirs.run_udf(dataset=b_ds, udf=udf, **kw)
            assert set(a) == set(b)
            for name in a:
                np.testing.assert_array_equal(np.asarray(a[name].data), np.asarray(b[name].data))
        # a list of UDFs gives a list of result dicts; a ProgressReporter is called
        reporter = Counting()
        many = ours.run_udf(a_ds, [OverfocusUDF(PARAMS), BinFramesUDF(factor=4)],
                            progress=reporter)
        assert len(many) == 2 and "shifted_sum" in many[0] and "binned" in many[1]
        assert np.asarray(many[1]["binned"].data).shape == (12, 10, 12, 12)
        assert reporter.calls >= 2
        with pytest.raises(ValueError, match="empty list"):
            ours.run_udf(a_ds, [])
    finally:
        ours.close()
        theirs.close()


def test_a_fit_on_the_default_context_does_not_import_libertem_api(npy):
    """The CLI's and the fit's default context leave libertem.api (and with it dask's
    distributed and the delayed executor's imports) out of the process."""
    code = (
        "import json, sys\n"
        "from stemcal.executors import make_context\n"
        "from stemcal.fit.passes import as_dataset, full_pass\n"
        "from stemcal.formats.dataset import open_dataset\n"
        "from stemcal.twin import OverfocusParams\n"
        + PARAMS_AND_CONTEXT +
        f"ds = open_dataset(ctx, {str(npy)!r})\n"
        "images = full_pass(ctx, ds, p)\n"
        "ctx2, _ = as_dataset(None, images['point'][None, None].repeat(2, 0).repeat(2, 1))\n"
        "print(json.dumps({'api': 'libertem.api' in sys.modules,"
        " 'distributed': 'distributed' in sys.modules,"
        " 'ctx': type(ctx).__name__, 'ctx2': type(ctx2).__name__,"
        " 'sum': float(images['shifted_sum'].sum())}))\n"
    )
    got = run_python(code)
    assert got == {**got, "api": False, "distributed": False, "ctx": "InlineContext",
                   "ctx2": "InlineContext"}
    assert got["sum"] > 0


#: What each of the command line's skips leaves unloaded (where it is installed).
SKIPS = {"skip_fft_probe": "pyfftw", "skip_numba_extensions": "awkward",
         "skip_preload": "matplotlib"}


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("function", sorted(SKIPS))
def test_the_command_lines_skip_what_stemcal_does_not_use(npy, function, skip):
    """What `stemcal fit` and `stemcal calibrate` call first: skip_fft_probe (LiberTEM
    imports pyFFTW in the first pass wherever it is installed; abTEM in the test extra
    brings it), skip_numba_extensions (Numba loads awkward's extension before its first
    compilation or cache load) and skip_preload (LiberTEM's inline executor imports its
    dask workers' preload, matplotlib's colours among it). With each, a pass gives the
    same images and leaves the module unloaded; once skipped, a second call changes
    nothing."""
    module = SKIPS[function]
    installed = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    if not skip and installed.returncode != 0:
        pytest.skip(f"{module} is not installed: nothing to load")
    code = (
        "import json, sys\n"
        f"from stemcal.executors import make_context, {function} as skip\n"
        f"skipped = skip() if {skip} else None\n"
        "from stemcal.fit.passes import full_pass\n"
        "from stemcal.formats.dataset import open_dataset\n"
        "from stemcal.twin import OverfocusParams\n"
        + PARAMS_AND_CONTEXT +
        f"images = full_pass(ctx, open_dataset(ctx, {str(npy)!r}), p)\n"
        "print(json.dumps({'skipped': skipped, 'again': skip() if skipped else None,"
        f" 'loaded': {module!r} in sys.modules, 'sum': float(images['shifted_sum'].sum())}}))\n"
    )
    got = run_python(code)
    assert got["loaded"] is (not skip)
    if skip:
        assert got["skipped"] is True and got["again"] is False
    assert got["sum"] == pytest.approx(full_pass_sum(npy), rel=1e-12)


def full_pass_sum(npy) -> float:
    """The shifted sum of a pass in this (test) process, for comparison."""
    from stemcal.fit.passes import full_pass
    from stemcal.formats.dataset import open_dataset

    ctx = InlineContext()
    return float(full_pass(ctx, open_dataset(ctx, str(npy)), PARAMS)["shifted_sum"].sum())


def test_a_command_line_process_registers_the_hdf5_filters_where_it_opens_hdf5(npy, tmp_path):
    """skip_preload leaves hdf5plugin unloaded (a fit of an .npy file does not need it);
    opening a compressed (bitshuffle-LZ4, DECTRIS-style) file registers its filters
    through the HDF5 probe, and a pass over it gives the images of the same frames
    uncompressed."""
    from stemcal.formats.dectris import write_hdf5

    data = np.load(npy)
    master = write_hdf5(tmp_path / "scan.h5", data)   # bitshuffle-LZ4, a master file beside
    code = (
        "import json, sys\n"
        "from stemcal.executors import command_line_process, make_context\n"
        "command_line_process()\n"
        "before = 'hdf5plugin' in sys.modules\n"
        "from stemcal.fit.passes import full_pass\n"
        "from stemcal.formats.dataset import open_dataset\n"
        "from stemcal.twin import OverfocusParams\n"
        + PARAMS_AND_CONTEXT +
        f"npy_sum = float(full_pass(ctx, open_dataset(ctx, {str(npy)!r}), p)['shifted_sum'].sum())\n"
        "after_npy = 'hdf5plugin' in sys.modules\n"
        f"ds = open_dataset(ctx, {str(master)!r})\n"
        "h5_sum = float(full_pass(ctx, ds, p)['shifted_sum'].sum())\n"
        "print(json.dumps({'before': before, 'after_npy': after_npy, 'npy': npy_sum,"
        " 'h5': h5_sum, 'after': 'hdf5plugin' in sys.modules}))\n"
    )
    got = run_python(code)
    assert got["before"] is False and got["after_npy"] is False and got["after"] is True
    # the same frames: the same image, up to the order of the sums (other tiles)
    assert got["npy"] == pytest.approx(full_pass_sum(npy), rel=1e-12)
    assert got["h5"] == pytest.approx(got["npy"], rel=1e-12)
