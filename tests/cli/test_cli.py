"""End-to-end tests of the ``stemcal`` command line, run as real subprocesses.

The data are small simulations written by ``stemcal simulate`` itself: a
48x48 scan on a 96x96 detector at 5 counts/px. The semi-convergence angle
puts the disk radius at 0.3 of the detector width, and the scan step is
scaled by 96/128 so that the specimen is sampled as with the default
128 px detector. (A 32x32 scan is not enough for the 0.1 degree tolerance:
seeds 0 and 1 gave rotation errors of -0.13 and +0.20 degree.)

Independent commands run two at a time (the test machine has 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
NAV = (48, 48)
SIG = (96, 96)
CAMERA_LENGTH = 0.2
DETECTOR_PIXEL = 55e-6
SEMICONV = 0.3 * SIG[0] * DETECTOR_PIXEL / CAMERA_LENGTH
SCAN_PIXEL = 0.5e-9 * SIG[0] / 128
TRUE_OVERFOCUS = 1e-6  # the simulate default
GEOMETRY = ["--scan-pixel-size", repr(SCAN_PIXEL), "--camera-length", repr(CAMERA_LENGTH),
            "--detector-pixel-size", repr(DETECTOR_PIXEL)]
FIT_FIELDS = {"scan_rotation", "flip_y", "overfocus", "cy", "cx", "blur", "passes", "seconds",
              "descan", "uncertainty", "quality"}
TIMEOUT = 300


# -- helpers ----------------------------------------------------------------------

def _cmd(args, script: bool = False) -> list[str]:
    if script:
        exe = Path(sys.executable).with_name("stemcal")
        if exe.is_file():
            return [str(exe), *map(str, args)]
    return [sys.executable, "-m", "stemcal.cli", *map(str, args)]


def stemcal(*args, script: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """Run ``stemcal ARGS`` in a fresh interpreter; never raises on a non-zero status."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(_cmd(args, script), capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=cwd or REPO, env=env)


def stemcal_many(jobs: dict[str, list]) -> dict[str, subprocess.CompletedProcess]:
    """Run several independent ``stemcal`` commands, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(stemcal, *args) for key, args in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def _no_nan(const: str):
    raise AssertionError(f"stdout is not strict JSON: it holds {const}")


def one_json(proc: subprocess.CompletedProcess) -> dict:
    """The single JSON object that a successful ``--json`` run printed."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert out.endswith("\n") and out.count("\n") == 1, f"want exactly one line, got {out!r}"
    obj = json.loads(out, parse_constant=_no_nan)
    assert isinstance(obj, dict)
    return obj


def assert_one_line_error(proc: subprocess.CompletedProcess, status: int = 2) -> str:
    """A clean failure: ``status``, no stdout, one ``stemcal: error:`` line on stderr."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", f"nothing may be printed on stdout, got {proc.stdout!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"want one stderr line, got {proc.stderr!r}"
    assert lines[0].startswith("stemcal: error:"), lines[0]
    return lines[0]


def assert_argparse_error(proc: subprocess.CompletedProcess, option: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one stderr line, got {proc.stderr!r}"
    assert lines[0].startswith("stemcal: error:") and option in lines[0], lines[0]


def rot_err(a: float, b: float) -> float:
    return (a - b + 180.0) % 360.0 - 180.0


def assert_matches_truth(res: dict, truth: dict, *, centre_tol: float = 0.5) -> None:
    t = truth["params"]
    assert FIT_FIELDS <= set(res), f"missing keys: {FIT_FIELDS - set(res)}"
    assert set(res["descan"]) >= {"matrix", "offset"}
    assert np.shape(res["descan"]["matrix"]) == (2, 2) and len(res["descan"]["offset"]) == 2
    assert set(res["uncertainty"]) >= {"scan_rotation", "overfocus"}
    assert isinstance(res["passes"], int) and res["passes"] >= 1
    assert res["seconds"] > 0 and 0 <= res["blur"] <= 1
    assert res["quality"] == "ok", res["quality"]
    assert res["flip_y"] is t["flip_y"]
    assert abs(rot_err(res["scan_rotation"], t["scan_rotation"])) < 0.1, \
        (res["scan_rotation"], t["scan_rotation"])
    assert abs(res["overfocus"] / t["overfocus"] - 1) < 0.005, (res["overfocus"], t["overfocus"])
    assert abs(res["cy"] - t["cy"]) < centre_tol and abs(res["cx"] - t["cx"]) < centre_tol, \
        (res["cy"], res["cx"], t["cy"], t["cx"])


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def sims(workdir) -> dict[str, subprocess.CompletedProcess]:
    """The same simulated dataset (same seed) written as .npy, .mib/.hdr and .h5."""
    common = ["--nav-shape", *NAV, "--sig-shape", *SIG, "--dose", "5", "--semiconv", repr(SEMICONV),
              "--scan-pixel-size", repr(SCAN_PIXEL), "--seed", "0", "--json"]
    return stemcal_many({fmt: ["simulate", workdir / f"scan_{fmt}.{fmt}", *common]
                         for fmt in ("npy", "mib", "h5")})


@pytest.fixture(scope="module")
def truth(sims) -> dict:
    res = one_json(sims["npy"])
    return json.loads(Path(res["truth"]).read_text())


@pytest.fixture(scope="module")
def fits(sims, truth, workdir) -> dict[str, subprocess.CompletedProcess]:
    """Cold-start fits of the three files (one with a report) and a refine-only fit."""
    ds = {fmt: one_json(sims[fmt])["dataset"] for fmt in sims}
    t = truth["params"]
    guess = [*GEOMETRY, "--overfocus", repr(1.3 * TRUE_OVERFOCUS), "--json", "--no-progress"]
    return stemcal_many({
        "npy": ["fit", ds["npy"], *guess, "--nav-shape", *NAV],
        "mib": ["fit", ds["mib"], *guess, "--report", workdir / "report.png"],
        "h5": ["fit", ds["h5"], *guess],
        "refine": ["fit", ds["npy"], *GEOMETRY, "--overfocus", repr(1.04 * t["overfocus"]),
                   "--refine-only", "--scan-rotation", repr(t["scan_rotation"] + 0.4),
                   "--flip-y" if t["flip_y"] else "--no-flip-y",
                   "--cy", repr(t["cy"] + 0.2), "--cx", repr(t["cx"] - 0.2), "--json"],
        # overfocus guesses outside the first search box (+-12 %): widened, not stuck
        **{f"refine_x{f}": ["fit", ds["npy"], *refine_guess(t, f * t["overfocus"])]
           for f in (0.85, 1.2)},
    })


def refine_guess(t: dict, overfocus: float) -> list:
    """``--refine-only`` options: the truth's flip and centre, rotation 1 degree off."""
    return [*GEOMETRY, "--overfocus", repr(overfocus), "--refine-only",
            "--scan-rotation", repr(t["scan_rotation"] + 1.0),
            "--flip-y" if t["flip_y"] else "--no-flip-y", "--cy", repr(t["cy"]),
            "--cx", repr(t["cx"]), "--json", "--no-progress"]


@pytest.fixture(scope="module")
def failures(sims, workdir) -> dict[str, subprocess.CompletedProcess]:
    """Every fit that must fail cleanly, run as one batch."""
    from stemcal.twin import OverfocusParams, simulate
    from stemcal.twin.simulator import SimulatedSpecimen
    from stemcal.formats import write_npy

    good = Path(one_json(sims["npy"])["dataset"])
    d = workdir / "bad"
    d.mkdir()
    (d / "text.npy").write_text("this is a text file, not an array\n")
    raw = good.read_bytes()
    (d / "truncated.npy").write_bytes(raw[: len(raw) // 2])
    np.save(d / "three_d.npy", np.zeros((4, *SIG), dtype=np.uint16))
    # The disk is there, the specimen is uniform: nothing to track.
    params = OverfocusParams(overfocus=TRUE_OVERFOCUS, scan_pixel_size=SCAN_PIXEL,
                             camera_length=CAMERA_LENGTH, detector_pixel_size=DETECTOR_PIXEL,
                             semiconv=SEMICONV, cy=SIG[0] / 2 + 3.3, cx=SIG[1] / 2 - 2.7,
                             scan_rotation=23.5, flip_y=True)
    blank = simulate(params, (32, 32), SIG, dose=5.0,
                     specimen=SimulatedSpecimen(np.ones((400, 400)), (-100.0, -100.0), 2.0))
    assert blank.max() > 0
    write_npy(d / "blank.npy", blank)
    write_npy(d / "zeros.npy", np.zeros((32, 32, *SIG), dtype=np.uint16))  # beam off the detector
    # pure counting noise, no beam: refine-only used to fit it and say "ok"
    write_npy(d / "noise.npy", np.random.default_rng(3).poisson(1.0, (32, 32, *SIG)).astype(np.uint16))
    frames = np.load(good, mmap_mode="r")
    write_npy(d / "line.npy", np.ascontiguousarray(frames[:1]))        # one scan row
    # the same frame at every position: the beam does not move with the scan
    write_npy(d / "same.npy", np.broadcast_to(frames[5, 5], (16, 16, *SIG)).copy())

    guess = [*GEOMETRY, "--overfocus", repr(TRUE_OVERFOCUS), "--json"]
    return stemcal_many({
        "missing": ["fit", d / "no_such_file.npy", *guess],
        "text": ["fit", d / "text.npy", *guess],
        "truncated": ["fit", d / "truncated.npy", *guess],
        "three_d": ["fit", d / "three_d.npy", *guess],
        "nav_shape": ["fit", good, *guess, "--nav-shape", NAV[0] - 8, NAV[1]],
        "overfocus_zero": ["fit", good, *GEOMETRY, "--overfocus", "0", "--json"],
        "refine_missing": ["fit", good, *guess, "--refine-only", "--cy", "50"],
        "refine_noise": ["fit", d / "noise.npy", *refine_guess(json.loads(
            good.with_suffix(".truth.json").read_text())["params"], TRUE_OVERFOCUS)],
        # a quarter of the overfocus: out of reach of the widened search (+-50 % at most)
        "refine_wall": ["fit", good, *refine_guess(json.loads(
            good.with_suffix(".truth.json").read_text())["params"], TRUE_OVERFOCUS / 4)],
        "blank": ["fit", d / "blank.npy", *guess],
        "zeros": ["fit", d / "zeros.npy", *guess],
        "line": ["fit", d / "line.npy", *guess],
        "same": ["fit", d / "same.npy", *guess],
    })


# -- 1. simulate ----------------------------------------------------------------------

def test_simulate_writes_data_and_truth(workdir):
    out = workdir / "sim_script.npy"
    proc = stemcal("simulate", out, "--nav-shape", 8, 8, "--sig-shape", 32, 32, "--json",
                   script=True)  # the installed console script
    res = one_json(proc)
    assert Path(res["dataset"]) == out and out.is_file()
    assert Path(res["truth"]) == workdir / "sim_script.truth.json"
    truth = json.loads(Path(res["truth"]).read_text())
    assert truth["params"] == res["params"]
    assert truth["nav_shape"] == [8, 8] and truth["sig_shape"] == [32, 32]
    arr = np.load(out)
    assert arr.shape == (8, 8, 32, 32) and arr.sum() > 0


def test_simulate_formats(sims, truth, workdir):
    for fmt, proc in sims.items():
        res = one_json(proc)
        assert res["params"] == truth["params"]
        assert Path(res["truth"]).is_file()
    npy = one_json(sims["npy"])
    assert npy["nav_shape"] == list(NAV) and npy["sig_shape"] == list(SIG)
    assert np.load(npy["dataset"]).shape == NAV + SIG
    mib = Path(one_json(sims["mib"])["dataset"])
    assert mib.suffix == ".hdr" and mib.is_file() and mib.with_suffix(".mib").is_file()
    h5 = Path(one_json(sims["h5"])["dataset"])
    assert h5.name == "scan_h5_master.h5" and h5.is_file() and (workdir / "scan_h5.h5").is_file()


# -- 2. fit, three formats ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["npy", "mib", "h5"])
def test_fit_cold_start(fits, truth, fmt):
    proc = fits[fmt]
    res = one_json(proc)
    assert_matches_truth(res, truth)
    assert res["nav_shape"] == list(NAV) and res["sig_shape"] == list(SIG)
    assert not proc.stderr.strip(), f"a clean fit prints nothing on stderr, got {proc.stderr!r}"


def test_fit_formats_agree(fits):
    """The same frames in three containers give the same calibration."""
    res = {fmt: one_json(fits[fmt]) for fmt in ("npy", "mib", "h5")}
    for fmt in ("mib", "h5"):
        for key in ("scan_rotation", "overfocus", "cy", "cx"):
            assert res[fmt][key] == pytest.approx(res["npy"][key], rel=1e-6, abs=1e-6), (fmt, key)
        assert res[fmt]["flip_y"] == res["npy"]["flip_y"]


# -- 3. report --------------------------------------------------------------------------

def test_fit_report_png(fits, workdir):
    import matplotlib.image

    res = one_json(fits["mib"])
    png = workdir / "report.png"
    assert res["report"] == str(png) and png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0  # not a blank canvas


# -- 4. refine-only -----------------------------------------------------------------------

def test_refine_only_from_guesses(fits, truth):
    res = one_json(fits["refine"])
    assert_matches_truth(res, truth)


@pytest.mark.parametrize("factor", [0.85, 1.2])
def test_refine_only_widens_at_the_bound(fits, truth, factor):
    res = one_json(fits[f"refine_x{factor}"])
    assert res["widened"] >= 1
    assert_matches_truth(res, truth)


def test_refine_only_on_noise_exits_3(failures):
    line = assert_one_line_error(failures["refine_noise"], 3)
    assert "nothing to calibrate on" in line and "disk" in line, line


def test_refine_only_out_of_reach_exits_3(failures):
    line = assert_one_line_error(failures["refine_wall"], 3)
    assert "did not converge" in line and "search bound" in line, line


def test_refine_only_needs_guesses(failures):
    line = assert_one_line_error(failures["refine_missing"], 2)
    named = line.split("give", 1)[1]
    for opt in ("--scan-rotation", "--flip-y/--no-flip-y", "--cx"):
        assert opt in named, line
    assert "--cy" not in named, line  # it was given


# -- 5. bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, words", [
    ("missing", "no such file"),
    ("text", "not a readable .npy"),
    ("truncated", "truncated"),
    ("three_d", "4D"),
    ("nav_shape", "nav_shape"),
    ("overfocus_zero", "overfocus"),
])
def test_bad_input_one_line(failures, case, words):
    line = assert_one_line_error(failures[case], 2)
    assert words in line, line


def test_a_line_scan_is_refused_with_the_reason(failures):
    """One scan row: a clear refusal, not 'Singular matrix' from the descan's regression."""
    line = assert_one_line_error(failures["line"], 2)
    assert f"scan of 1x{NAV[1]} positions" in line and "2D scan" in line, line


def test_frames_that_do_not_move_with_the_scan_exit_3(failures):
    """The same frame everywhere: nothing to calibrate on (not a 'target image would be
    7e12 px' error that blames the pixel sizes)."""
    line = assert_one_line_error(failures["same"], 3)
    assert "nothing to calibrate on" in line and "does not move with the scan" in line, line


@pytest.mark.parametrize("option, value", [
    ("--camera-length", "-1"),
    ("--scan-pixel-size", "nan"),
    ("--detector-pixel-size", "0"),
    ("--overfocus", "inf"),
    ("--nav-shape", "0"),
])
def test_bad_parameters_argparse(sims, option, value):
    args = dict(zip(GEOMETRY[::2], GEOMETRY[1::2]))
    args["--overfocus"] = repr(TRUE_OVERFOCUS)
    if option == "--nav-shape":
        args[option] = [value, "48"]
    else:
        args[option] = value
    argv = ["fit", one_json(sims["npy"])["dataset"]]
    for k, v in args.items():
        argv += [k, *(v if isinstance(v, list) else [v])]
    assert_argparse_error(stemcal(*argv), option)


def test_missing_required_option(sims):
    proc = stemcal("fit", one_json(sims["npy"])["dataset"], "--camera-length", "0.2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert "--scan-pixel-size" in proc.stderr


# -- 6. nothing to calibrate on ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["blank", "zeros"])
def test_no_features(failures, case):
    line = assert_one_line_error(failures[case], 3)  # assert_one_line_error: stdout is empty
    assert "nothing to calibrate on" in line, line


# -- 7. demo ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo(workdir):
    out = workdir / "demo"
    res = one_json(stemcal("demo", "--out", out, "--json"))
    err = res["error"]
    assert err["flip_y_right"] is True
    assert abs(err["scan_rotation_deg"]) < 0.1, err
    assert abs(err["overfocus_rel"]) < 0.005, err
    assert abs(err["cy_px"]) < 0.5 and abs(err["cx_px"]) < 0.5, err
    assert res["fit"]["quality"] == "ok"
    for name in ("demo.npy", "demo.truth.json", "demo-report.png"):
        assert (out / name).is_file(), name


# -- 4. scale-out -----------------------------------------------------------------------

def test_fit_on_a_dask_cluster_gives_the_inline_result(sims, fits):
    """``--cluster``: the raw-data passes run on a running dask.distributed cluster (a
    LocalCluster with two worker processes as the stand-in) and give the inline result."""
    from dask.distributed import LocalCluster
    ds = one_json(sims["npy"])["dataset"]
    guess = [*GEOMETRY, "--overfocus", repr(1.3 * TRUE_OVERFOCUS), "--json", "--no-progress"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        proc = stemcal("fit", ds, *guess, "--nav-shape", *NAV, "--cluster", cluster.scheduler_address)
    res, inline = one_json(proc), one_json(fits["npy"])
    for key in ("scan_rotation", "overfocus", "cy", "cx"):
        assert res[key] == pytest.approx(inline[key], rel=1e-9, abs=1e-9), key
    assert res["flip_y"] == inline["flip_y"] and res["passes"] == inline["passes"] == 2
    np.testing.assert_allclose(res["descan"]["matrix"], inline["descan"]["matrix"], atol=1e-12)


def test_cluster_address_is_checked():
    proc = stemcal("fit", "whatever.npy", *GEOMETRY, "--overfocus", "1e-6", "--cluster", "127.0.0.1:1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "stemcal: error: cluster address must look like tcp://HOST:PORT, got '127.0.0.1:1'"]
