"""Bad parameters from users, config files and queue-server requests.

Issue 6, "bad input", parameters. Every invalid value is refused with a
``ValueError`` (``argparse`` error for the CLI) that names the field or option
-- never a ``ZeroDivisionError``, ``OverflowError``, ``TypeError`` or
``MemoryError`` -- and valid values round-trip. Absurd shapes (a 1e6 x 1e6
scan) are refused before anything is allocated: ``tracemalloc`` (which sees
NumPy's allocations, checked by a positive control) records the peak of each
refusal.

Property-based tests (hypothesis) cover ``OverfocusParams``, the CLI option
converters through the real parser, ``SimSettings`` (the ``[simulation]``
table of the config file), and the plans' arguments (``focus_schedule``,
``calibrate``, ``overfocus_scan``'s guess, the scan generator's shape).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemcal.cli import main
from stemcal.devices import ManualClock, MicroscopeTruth, PhysicalSpecimen, make_sim_instrument
from stemcal.devices.scan import MAX_SCAN_SIDE, ScanGenerator
from stemcal.plans import calibrate, focus_schedule, overfocus_scan, recalibrate_if_stale
from stemcal.plans.calibrate import MAX_ATTEMPTS
from stemcal.plans.scan import MAX_ACQUISITION_BYTES
from stemcal.runs import check_guess
from stemcal.config import SIM_MAX_BYTES, SIM_MAX_SIDE, SimSettings, load_config
from stemcal.twin import OverfocusParams, simulate
from stemcal.twin.simulator import MAX_SIDE, MAX_SIMULATION_BYTES, check_shapes

from parsing import parse  # tests/parsing.py

PROPS = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

FIELDS = ("overfocus", "scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv",
          "cy", "cx", "scan_rotation", "flip_y", "descan")
SIZES = ("scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv")
GOOD = dict(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2, detector_pixel_size=55e-6,
            semiconv=0.01, cy=64.0, cx=60.0, scan_rotation=23.5, flip_y=True,
            descan=((0.01, 0.0), (0.0, -0.02)))

# Values no numeric field may take, and the extra ones sizes / overfocus may not take.
NOT_A_NUMBER = [math.nan, math.inf, -math.inf, None, "1.0", True, [1.0], {"v": 1.0}, 1j]
BAD = {**{f: NOT_A_NUMBER + [-1e-9, 0.0, -0.0, 0, -1e300] for f in SIZES},
       "overfocus": NOT_A_NUMBER + [0.0, -0.0, 0],
       **{f: NOT_A_NUMBER for f in ("cy", "cx", "scan_rotation")},
       "flip_y": [1, 0, 1.0, "True", None, [True]],
       "descan": [[[math.nan, 0], [0, 0]], [[0, 0]], "x", [[0, 0], [0, 0], [0, 0]],
                  [[math.inf, 0], [0, 0]], [[0, 0], [0]], 5.0, [["a", 0], [0, 0]]]}


@contextlib.contextmanager
def peak_allocation():
    """Yield a dict whose ``peak`` is the most memory traced while the block ran, bytes."""
    out = {"peak": None}
    tracemalloc.start()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def test_peak_allocation_sees_numpy():
    """Positive control: the probe does see a NumPy allocation."""
    with peak_allocation() as mem:
        np.zeros(64 * 2**20, np.uint8)
    assert mem["peak"] >= 64 * 2**20


# -- 1. OverfocusParams -----------------------------------------------------------------------

good_params = st.fixed_dictionaries({
    "overfocus": st.floats(1e-9, 1e-3) | st.floats(-1e-3, -1e-9),
    "scan_pixel_size": st.floats(1e-12, 1e-6),
    "camera_length": st.floats(1e-2, 10.0),
    "detector_pixel_size": st.floats(1e-6, 1e-3),
    "semiconv": st.floats(1e-4, 0.1),
    "cy": st.floats(-1e4, 1e4), "cx": st.floats(-1e4, 1e4),
    "scan_rotation": st.floats(-720.0, 720.0),
    "flip_y": st.booleans(),
    "descan": st.tuples(st.tuples(st.floats(-1, 1), st.floats(-1, 1)),
                        st.tuples(st.floats(-1, 1), st.floats(-1, 1))),
})


def assert_valid(p: OverfocusParams) -> None:
    """What every constructed OverfocusParams guarantees, and its round trips."""
    for name in FIELDS[:8]:
        assert isinstance(getattr(p, name), float) and math.isfinite(getattr(p, name)), name
    for name in SIZES:
        assert getattr(p, name) > 0
    assert p.overfocus != 0 and p.overfocus != -p.camera_length
    assert math.isfinite(p.magnification_ratio) and p.magnification_ratio != 0
    assert math.isfinite(p.disk_radius_px)
    assert isinstance(p.flip_y, bool) and np.all(np.isfinite(p.descan_matrix))
    assert OverfocusParams.from_dict(p.to_dict()) == p
    assert OverfocusParams.from_dict(json.loads(json.dumps(p.to_dict(), allow_nan=False))) == p
    assert p.replace() == p


@PROPS
@given(good=good_params, field=st.sampled_from(FIELDS), data=st.data())
def test_one_bad_field_is_named(good, field, data):
    bad = data.draw(st.sampled_from(BAD[field]))
    with pytest.raises(ValueError) as info:
        OverfocusParams(**{**good, field: bad})
    assert field in str(info.value), (field, bad, str(info.value))


@PROPS
@given(good=good_params)
def test_valid_params_round_trip(good):
    assert_valid(OverfocusParams(**good))


any_number = (st.floats() | st.floats(allow_subnormal=True, min_value=-1e-300, max_value=1e-300)
              | st.integers(-10**400, 10**400) | st.sampled_from([0, 0.0, -0.0, 1e308, -1e308]))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(values=st.fixed_dictionaries({f: any_number for f in FIELDS[:8]}), flip=st.booleans())
def test_arbitrary_numbers(values, flip):
    """Any numbers at all: a valid object, or a ValueError naming a field -- nothing else."""
    try:
        p = OverfocusParams(**values, flip_y=flip)
    except ValueError as exc:
        assert any(f in str(exc) for f in FIELDS), str(exc)
        return
    assert_valid(p)


def test_overfocus_equal_to_minus_camera_length():
    with pytest.raises(ValueError, match="overfocus must not equal -camera_length"):
        OverfocusParams(**{**GOOD, "overfocus": -0.2})
    # Finite inputs whose derived scale overflows or underflows are refused too.
    with pytest.raises(ValueError, match="magnification ratio"):
        OverfocusParams(**{**GOOD, "overfocus": 1e300, "detector_pixel_size": 1e300})
    with pytest.raises(ValueError, match="magnification ratio"):
        OverfocusParams(**{**GOOD, "overfocus": 1e-300, "detector_pixel_size": 1e-300})


def test_from_dict_and_replace_name_the_keys():
    d = OverfocusParams(**GOOD).to_dict()
    with pytest.raises(ValueError, match=r"missing parameter\(s\): \['semiconv'\]"):
        OverfocusParams.from_dict({k: v for k, v in d.items() if k != "semiconv"})
    with pytest.raises(ValueError, match="unknown parameter.*'overfokus'"):
        OverfocusParams.from_dict({**d, "overfokus": 1e-6})
    with pytest.raises(ValueError, match="unknown parameter.*'rotation'"):
        OverfocusParams(**GOOD).replace(rotation=3.0)
    with pytest.raises(ValueError, match="must be a dict"):
        OverfocusParams.from_dict([("overfocus", 1e-6)])


# -- 2. CLI options, through the real parser ------------------------------------------------------

def finite(v):
    return isinstance(v, float) and math.isfinite(v)


OPTIONS = {  # option -> (nargs, check of a parsed value)
    "--scan-pixel-size": (1, lambda v: finite(v) and v > 0),
    "--camera-length": (1, lambda v: finite(v) and v > 0),
    "--detector-pixel-size": (1, lambda v: finite(v) and v > 0),
    "--semiconv": (1, lambda v: finite(v) and v > 0),
    "--dose": (1, lambda v: finite(v) and v > 0),
    "--overfocus": (1, lambda v: finite(v) and v != 0),
    "--scan-rotation": (1, finite),
    "--cy": (1, finite),
    "--background": (1, lambda v: finite(v) and v >= 0),
    "--seed": (1, lambda v: isinstance(v, int) and v >= 0),
    "--nav-shape": (2, lambda v: all(isinstance(n, int) and 1 <= n <= 65536 for n in v)),
    "--sig-shape": (2, lambda v: all(isinstance(n, int) and 1 <= n <= 65536 for n in v)),
    "--descan": (4, lambda v: all(map(finite, v))),
}
option_text = (st.floats().map(repr) | st.integers(-10**30, 10**30).map(str)
               | st.text(max_size=12)
               | st.sampled_from(["nan", "inf", "-inf", "0", "-0", "1e400", "-1e-400", "0x10",
                                  "1_000", " 5 ", "", "--x", "-h", "1e6", "1000000", "5\n6",
                                  "9" * 5000]))


@PROPS
@given(option=st.sampled_from(sorted(OPTIONS)), texts=st.lists(option_text, min_size=4,
                                                                max_size=4))
def test_cli_options(option, texts):
    nargs, ok = OPTIONS[option]
    ns, err = parse(["simulate", "x.npy", option, *texts[:nargs]])
    if ns is None:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("stemcal: error: "), err
        assert option in lines[0], lines[0]
    else:
        value = getattr(ns, option.lstrip("-").replace("-", "_"))
        assert ok(value if nargs == 1 else list(value)), (option, texts, value)


@pytest.mark.parametrize("argv, words", [
    (["calibrate", "--max-attempts", "1000000000"], "--max-attempts must be <= 100"),
    (["calibrate", "--true-overfocus", "0"], "--true-overfocus must not be 0"),
    (["calibrate", "--seed", "-1"], "--seed must be >= 0"),
    (["fit", "x.npy", "--scan-pixel-size", "1e-10", "--camera-length", "0.2",
      "--detector-pixel-size", "5e-5", "--overfocus", "1e-6", "--nav-shape", "1000000", "8"],
     "--nav-shape: shape 1000000 out of range 1..65536"),
])
def test_cli_refuses_before_any_work(argv, words):
    ns, err = parse(argv)
    assert ns is None and words in err and len(err.splitlines()) == 1, err


def run_main(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        status = main([str(a) for a in argv])
    assert out.getvalue() == ""
    return status, err.getvalue()


def test_cli_calibrate_absurd_scan_refused_before_the_session(tmp_path):
    """65536 x 65536 passes the per-side check; the size limit refuses it, nothing created."""
    catalog = tmp_path / "catalog"
    argv = ["calibrate", "--catalog", catalog, "--nav-shape", 65536, 65536]
    run_main(argv)  # once to import what the command imports: imports are not the point
    with peak_allocation() as mem:
        status, err = run_main(argv)
    assert status == 2 and err.startswith("stemcal: error: [simulation] a 65536x65536 scan")
    assert "over the limit of 8 GiB" in err and len(err.splitlines()) == 1
    assert not catalog.exists()
    assert mem["peak"] < 5 * 2**20


def test_cli_simulate_absurd_shapes_refused_before_allocation(tmp_path):
    argv = ["simulate", tmp_path / "x.npy", "--nav-shape", 65536, 65536]
    run_main(argv)  # imports first
    with peak_allocation() as mem:
        status, err = run_main(argv)
    assert status == 2 and "over the limit of 8 GiB" in err, err
    assert list(tmp_path.iterdir()) == []
    assert mem["peak"] < 5 * 2**20


def test_cli_simulate_overfocus_too_large_for_a_specimen(tmp_path):
    """1 m overfocus: the default specimen would be 7e7 px square; refused, not a MemoryError."""
    run_main(["simulate", tmp_path / "x.npy", "--overfocus", 1])  # imports first
    with peak_allocation() as mem:
        status, err = run_main(["simulate", tmp_path / "x.npy", "--overfocus", 1])
    assert status == 2 and "the default specimen would need" in err, err
    assert f"limit {2**26} pixels" in err
    assert mem["peak"] < 5 * 2**20


# -- 3. simulate() and its shape limits ---------------------------------------------------------

@pytest.mark.parametrize("nav, sig, words", [
    ((10**6, 10**6), (64, 64), "each side must be 1..65536"),
    ((1024, 1024), (64, 64), "needs 32 GiB (8 bytes/px), over the limit of 8 GiB"),
    ((64, 64), (1, 64), "sig_shape (1, 64) out of range"),
    ((0, 64), (64, 64), "nav_shape (0, 64) out of range"),
    ((math.inf, 8), (64, 64), "nav_shape must be two integers"),
    ((8.5, 8), (64, 64), "nav_shape must be two integers"),
    ((8, 8, 8), (64, 64), "nav_shape must be two integers"),
    ("ab", (64, 64), "nav_shape must be two integers"),
])
def test_simulate_refuses_shapes_before_allocating(nav, sig, words):
    p = OverfocusParams(**GOOD)
    with peak_allocation() as mem, pytest.raises(ValueError) as info:
        simulate(p, nav, sig)
    assert words in str(info.value)
    assert mem["peak"] < 2**20


def test_shape_limits_agree_and_the_boundary_is_accepted():
    assert SIM_MAX_SIDE == MAX_SIDE == MAX_SCAN_SIDE == 65536
    assert SIM_MAX_BYTES == MAX_SIMULATION_BYTES
    # 1024 x 1024 x 32 x 32 float64 frames are exactly 8 GiB: the largest accepted.
    assert check_shapes((1024, 1024), (32, 32)) == ((1024, 1024), (32, 32))
    with pytest.raises(ValueError, match="over the limit"):
        check_shapes((1024, 1025), (32, 32))
    assert SimSettings(nav_shape=(1024, 1024), sig_shape=(32, 32)).nav_shape == (1024, 1024)


@pytest.mark.parametrize("kw, words", [
    ({"dose": math.nan}, "dose"), ({"dose": -1.0}, "dose"),
    ({"background": math.inf}, "background"),
    ({"background": -1.0}, "background"), ({"intensity": math.nan}, "intensity"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"dtype": "complex64"}, "dtype"),
    ({"dtype": "not a dtype"}, "dtype"),
])
def test_simulate_other_arguments(kw, words):
    with pytest.raises(ValueError, match=words):
        simulate(OverfocusParams(**GOOD), (4, 4), (16, 16), **kw)


# -- 4. the config file: [simulation], [paths], [catalog] -----------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-10**20, 10**20) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)
SIM_FIELDS = ("true_scan_rotation", "true_flip_y", "true_overfocus", "overfocus", "nav_shape",
              "sig_shape", "dose", "seed")


@PROPS
@given(table=st.dictionaries(st.sampled_from(SIM_FIELDS), json_value, max_size=3))
def test_simulation_table(table):
    try:
        s = SimSettings.from_mapping(table)
    except ValueError as exc:
        assert any(f in str(exc) for f in table), (table, str(exc))
        return
    assert math.isfinite(s.true_scan_rotation) and isinstance(s.true_flip_y, bool)
    for f in ("true_overfocus", "overfocus"):
        assert 0 < abs(getattr(s, f)) <= 0.1
    assert all(1 <= n <= SIM_MAX_SIDE for n in s.nav_shape) and min(s.sig_shape) >= 8
    assert math.prod(s.nav_shape) * math.prod(s.sig_shape) * 8 <= SIM_MAX_BYTES
    assert s.dose > 0 and isinstance(s.seed, int) and s.seed >= 0


@PROPS
@given(field=st.sampled_from(SIM_FIELDS), value=json_value)
def test_simulation_table_one_field(field, value):
    """One field set to anything: accepted as valid, or refused naming that field."""
    try:
        SimSettings.from_mapping({field: value})
    except ValueError as exc:
        assert field in str(exc), (field, value, str(exc))


@pytest.mark.parametrize("text, words", [
    ("[simulation]\nnav_shape = [1000000, 1000000]\n", "nav_shape (1000000, 1000000) out of range"),
    ("[simulation]\nnav_shape = [4096, 4096]\nsig_shape = [256, 256]\n", "over the limit of 8 GiB"),
    ("[simulation]\ndose = \"5\"\n", "dose must be a finite number"),
    ("[simulation]\ndose = nan\n", "dose must be a finite number"),
    ("[simulation]\noverfocus = -0.2\n", "overfocus must be non-zero and within"),
    ("[simulation]\ntrue_flip_y = 1\n", "true_flip_y must be true or false"),
    ("[simulation]\nseed = -1\n", "seed must be an integer >= 0"),
    ("[simulation]\nnav_shape = 40\n", "nav_shape must be two integers"),
    ("[simulation]\nnavshape = [40, 40]\n", "unknown [simulation] setting(s): ['navshape']"),
    ("simulation = 5\n", "[simulation] must be a table"),
    ("[paths]\ndata_dir = 5\n", "[paths] data_dir must be a non-empty string"),
    ("[paths]\ndata = \"x\"\n", "unknown [paths] key(s) ['data']"),
    ("[catalog]\nlocation = [\"a\"]\n", "[catalog] location must be a non-empty string"),
    ("[catalog]\nlocation = \"\"\n", "[catalog] location must be a non-empty string"),
    ("[simulation\n", "config.toml"),
])
def test_config_file(tmp_path, text, words):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with peak_allocation() as mem, pytest.raises(ValueError) as info:
        load_config(path)
    assert words in str(info.value) and str(path) in str(info.value), str(info.value)
    assert "\n" not in str(info.value).strip()
    assert mem["peak"] < 2**20


def test_valid_config_round_trips(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[catalog]\nlocation = "/tmp/cat"\n[paths]\ndata_dir = "/tmp/raw"\n'
                    '[simulation]\nnav_shape = [32, 48]\ndose = 3\nseed = 7\n')
    cfg = load_config(path)
    s = SimSettings.from_mapping(cfg["simulation"])
    assert (s.nav_shape, s.dose, s.seed) == ((32, 48), 3.0, 7)
    assert isinstance(s.dose, float)


# -- 5. plan arguments (queue-server requests) ------------------------------------------------

plan_number = (st.floats() | st.integers(-10**400, 10**400) | st.text(max_size=4) | st.none()
               | st.sampled_from([1e-6, 2e-6, 5e-7, -1e-6, 1e-9, 0]))


@PROPS
@given(start=plan_number, step=plan_number, lo=plan_number, hi=plan_number,
       n=st.integers(-5, 10**12) | st.floats() | st.booleans())
def test_focus_schedule(start, step, lo, hi, n):
    try:
        out = focus_schedule(start, step, (lo, hi), n)
    except ValueError as exc:
        assert any(w in str(exc) for w in ("max_attempts", "focus_limits", "focus_step",
                                           "overfocus")), str(exc)
        return
    assert out[0] == start and 1 <= len(out) <= min(n, MAX_ATTEMPTS)
    assert all(min(lo, hi) <= f <= max(lo, hi) for f in out)


@PROPS
@given(max_attempts=st.integers(-5, 10**12) | st.floats() | st.none(),
       focus_limits=st.none() | st.lists(plan_number, max_size=3) | plan_number,
       focus_step=st.none() | plan_number, timeout=st.none() | plan_number)
def test_calibrate_arguments(max_attempts, focus_limits, focus_step, timeout):
    """calibrate() checks its arguments when the plan is made (no device, no catalog needed)."""
    with pytest.raises(ValueError) as info:
        calibrate(None, None, None, max_attempts=max_attempts, focus_limits=focus_limits,
                  focus_step=focus_step, timeout=timeout)
    msg = str(info.value)
    assert any(w in msg for w in ("max_attempts", "focus_limits", "focus_step", "timeout",
                                  "give callback")), msg
    with pytest.raises(ValueError) as info:
        recalibrate_if_stale(None, None, None, catalog_client=None, tolerances={},
                             max_attempts=max_attempts, focus_limits=focus_limits,
                             focus_step=focus_step, timeout=timeout)


def test_calibrate_valid_arguments_reach_the_recorder_check():
    with pytest.raises(ValueError, match="give callback"):
        calibrate(None, None, None, max_attempts=5, focus_limits=[5e-7, 2e-6], focus_step=1e-7,
                  timeout=30)
    with pytest.raises(ValueError, match="max_attempts must be an int in 1..100"):
        calibrate(None, None, None, max_attempts=10**9)


guess_value = json_value | st.sampled_from([1e-6, -1e-6, 0.5e-9, 23.5, True,
                                           [[0.0, 0.1], [0.0, 0.0]]])


@PROPS
@given(guess=st.dictionaries(st.sampled_from(FIELDS + ("x", "overfokus")), guess_value,
                             max_size=4))
def test_guess_dict(guess):
    try:
        out = check_guess(guess)
    except ValueError as exc:
        assert any(repr(k) in str(exc) or k in str(exc) for k in guess), str(exc)
        return
    assert set(out) <= set(FIELDS)
    for k, v in out.items():
        if k == "flip_y":
            assert isinstance(v, bool)
        elif k == "descan":
            assert np.shape(v) == (2, 2) and np.all(np.isfinite(v))
        else:
            assert math.isfinite(v) and (v > 0 if k in SIZES else True)
            assert v != 0 if k == "overfocus" else True
    json.dumps(out, allow_nan=False)


@PROPS
@given(value=st.integers(-10, 10**9) | st.floats() | st.booleans() | st.text(max_size=3))
def test_scan_shape_setting(value):
    scan = ScanGenerator(name="scan")
    try:
        scan.shape_y.set(value).wait(timeout=5)
    except ValueError as exc:
        assert "shape_y" in str(exc)
        assert scan.shape_y.get() == 32  # unchanged
        return
    assert isinstance(value, int) and 1 <= value <= MAX_SCAN_SIDE


@pytest.fixture
def inst(tmp_path):
    clock = ManualClock()
    return make_sim_instrument(tmp_path / "raw", truth=MicroscopeTruth(semiconv=6e-3),
                               sig_shape=(64, 64),
                               specimen=PhysicalSpecimen.generate((64, 64), seed=1),
                               clock=clock.time, sleep=clock.sleep)


@pytest.mark.parametrize("guess, words", [
    ({"overfocus": math.nan}, "guess['overfocus'] must be a finite number"),
    ({"overfocus": 0.0}, "must not be 0"),
    ({"semiconv": -1e-3}, "guess['semiconv'] must be > 0"),
    ({"flip_y": "yes"}, "guess['flip_y']"),
    ({"descan": [[math.inf, 0], [0, 0]]}, "guess['descan']"),
    ({"rotation": 3.0}, "unknown key(s) ['rotation']"),
])
def test_overfocus_scan_bad_guess_touches_nothing(RE, docs, inst, tmp_path, guess, words):
    mic, scan, optics, det = inst
    with pytest.raises(ValueError) as info:
        RE(overfocus_scan(det, scan, optics, guess=guess))
    assert words in str(info.value)
    assert docs == [] and mic.n_acquired == 0 and not (tmp_path / "raw").exists()


def test_overfocus_scan_refuses_an_absurd_scan_before_staging(RE, docs, inst, tmp_path):
    """65536 x 65536 is a legal scan-generator setting; 512 TiB of frames is not acquired."""
    mic, scan, optics, det = inst
    scan.shape_y.set(MAX_SCAN_SIDE).wait(timeout=5)
    scan.shape_x.set(MAX_SCAN_SIDE).wait(timeout=5)
    with peak_allocation() as mem, pytest.raises(ValueError) as info:
        RE(overfocus_scan(det, scan, optics))
    assert f"over the acquisition limit of {MAX_ACQUISITION_BYTES / 2**30:.3g} GiB" \
        in str(info.value)
    assert docs == [] and mic.n_acquired == 0 and not (tmp_path / "raw").exists()
    assert mem["peak"] < 5 * 2**20
    with pytest.raises(ValueError, match=f"shape_x must be <= {MAX_SCAN_SIDE}"):
        scan.shape_x.set(10**6)
    assert scan.shape_x.get() == MAX_SCAN_SIDE
