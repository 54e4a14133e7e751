"""The command line's arguments: negative numbers, plausible sizes, help, and clean failures.

* Every numeric option of every subcommand (found by walking the real
  parser) is given a negative number with an exponent, ``-1e-6``: argparse
  must hand it to the option's type (which takes it or names the option in
  its refusal), never answer "expected one argument".
* A battery of bad arguments per subcommand runs through :func:`stemcal.cli.main`
  in this process (an escaping exception fails the test) and a sample of them
  as real subprocesses: each ends with one ``stemcal: error:`` line on
  stderr, status 2 or 3, no traceback, nothing on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stemcal.cli import build_parser, main
from stemcal.cli.args import RANGES

from parsing import parse  # tests/parsing.py

REPO = Path(__file__).resolve().parents[2]

#: Valid values of the options some subcommands require.
REQUIRED = {"--scan-pixel-size": "1e-10", "--camera-length": "0.2",
            "--detector-pixel-size": "5e-5", "--overfocus": "1e-6"}
#: Options whose value may be negative (signed quantities).
SIGNED = {"--overfocus", "--true-overfocus", "--scan-rotation", "--true-scan-rotation", "--cy",
          "--cx", "--descan"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def numeric_options() -> list[tuple[str, str, argparse.Action]]:
    """(subcommand, option, action) of every option whose type converts numbers."""
    out = []
    for name, p in subcommands().items():
        for action in p._actions:
            if action.option_strings and getattr(action.type, "__name__", "") in (
                    "number", "integer", "shape"):
                out.append((name, action.option_strings[0], action))
    return out


def base_argv(name: str, p: argparse.ArgumentParser, skip: str) -> list[str]:
    """The subcommand with its required arguments (valid values), except ``skip``."""
    argv = [name]
    for action in p._actions:
        if not action.option_strings and action.required and action.nargs != 0:
            argv.append("x.npy")
        elif action.required and action.option_strings[0] != skip:
            argv += [action.option_strings[0], REQUIRED[action.option_strings[0]]]
    return argv


def test_the_walk_finds_the_numeric_options():
    found = {(n, o) for n, o, _ in numeric_options()}
    for expected in [("fit", "--overfocus"), ("fit", "--cy"), ("simulate", "--descan"),
                     ("simulate", "--dose"), ("calibrate", "--true-overfocus"),
                     ("calibrate", "--overfocus"), ("calibrate", "--max-attempts"),
                     ("history", "--limit"), ("serve", "--port"), ("fit", "--nav-shape")]:
        assert expected in found
    assert len(found) >= 30


@pytest.mark.parametrize("name, option, action", numeric_options(),
                         ids=[f"{n} {o}" for n, o, _ in numeric_options()])
def test_negative_exponent_reaches_the_option(name, option, action):
    nargs = action.nargs if isinstance(action.nargs, int) else 1
    p = subcommands()[name]
    for text in ("-1e-6", "-1E-06", "-2.5e+3"):
        argv = base_argv(name, p, option) + [option, *[text] * nargs]
        ns, err = parse(argv)
        assert "expected" not in err, (argv, err)  # argparse took it for an option
        if ns is None:
            lines = err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("stemcal: error: "), err
            assert option in lines[0], lines[0]
            assert option not in SIGNED or text == "-2.5e+3" or option in (
                "--overfocus", "--true-overfocus"), err
        else:
            value = getattr(ns, action.dest)
            values = list(value) if nargs > 1 else [value]
            assert values == [float(text)] * nargs, (argv, value)
    if option in SIGNED:  # -1e-6 is a valid value of each signed option
        ns, err = parse(base_argv(name, p, option) + [option, *["-1e-6"] * nargs])
        assert ns is not None, err


def test_equals_spelling_still_works():
    ns, _ = parse(["simulate", "x.npy", "--overfocus=-1e-6", "--scan-rotation", "-1e1"])
    assert ns.overfocus == -1e-6 and ns.scan_rotation == -10.0


@pytest.mark.parametrize("option, text", [
    ("--scan-pixel-size", "1e300"), ("--scan-pixel-size", "1e-300"),
    ("--detector-pixel-size", "1e-300"), ("--detector-pixel-size", "1e300"),
    ("--semiconv", "1e300"), ("--semiconv", "1e-300"), ("--camera-length", "1e300"),
    ("--overfocus", "1e300"), ("--overfocus", "-1e-300"), ("--dose", "1e300"),
    ("--background", "1e300"), ("--cy", "1e300"), ("--cx", "-1e300")])
def test_absurd_sizes_are_refused_by_name(option, text):
    ns, err = parse(["simulate", "x.npy", option, text])
    assert ns is None and option in err and "must be" in err, err
    assert len(err.splitlines()) == 1


def test_ranges_hold_the_defaults_and_the_test_geometries():
    for key, value in [("scan_pixel_size", 3.75e-10), ("camera_length", 0.2),
                       ("detector_pixel_size", 55e-6), ("detector_pixel_size", 100e-6),
                       ("semiconv", 0.0079), ("overfocus", 1e-6), ("dose", 3.0)]:
        lo, hi, _ = RANGES[key]
        assert lo <= value <= hi, key


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_gives_units_and_defaults(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    if name == "simulate":
        for words in ["scan step, metres", "(default: 5e-10)", "(default: 64 64)",
                      "radians", "(default: 23.5)", "counts per pixel"]:
            assert words in " ".join(text.split()), (words, text)
    if name == "calibrate":
        for words in ["(default: 1e-06)", "(default: 40 40)", "(default: 3)",
                      "simulated detector only"]:
            assert words in " ".join(text.split()), (words, text)
    assert "(default: None)" not in text and "(default: False)" not in text
    if "--catalog" in text:
        assert "$XDG_DATA_HOME" in text


# -- every failure is one line ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "text.npy").write_text("not an array\n")
    np.save(d / "small.npy", np.zeros((4, 4, 8, 8), np.uint16))
    raw = (d / "small.npy").read_bytes()
    (d / "truncated.npy").write_bytes(raw[: len(raw) // 2])
    (d / "a_file").write_text("x")
    (d / "empty_catalog").mkdir()
    return d


GEOM = ["--scan-pixel-size", "1e-10", "--camera-length", "0.2", "--detector-pixel-size", "5e-5",
        "--overfocus", "1e-6"]


def battery(d: Path) -> dict[str, list[str]]:
    """Bad arguments per subcommand (none of them starts a calibration)."""
    return {
        "no command": [],
        "unknown command": ["frobnicate"],
        "fit missing file": ["fit", d / "nothing.npy", *GEOM],
        "fit text file": ["fit", d / "text.npy", *GEOM],
        "fit truncated": ["fit", d / "truncated.npy", *GEOM],
        "fit directory": ["fit", d, *GEOM],
        "fit report dir missing": ["fit", d / "small.npy", *GEOM, "--report",
                                   d / "no" / "dir" / "r.png"],
        "fit report type": ["fit", d / "small.npy", *GEOM, "--report", d / "r.xyz"],
        "fit huge pixel": ["fit", d / "small.npy", *GEOM, "--scan-pixel-size", "1e300"],
        "fit tiny semiconv": ["fit", d / "small.npy", *GEOM, "--semiconv", "1e-300"],
        "fit missing option": ["fit", d / "small.npy", "--overfocus", "1e-6"],
        "fit executor": ["fit", d / "small.npy", *GEOM, "--executor", "cuda"],
        "fit cluster": ["fit", d / "small.npy", *GEOM, "--cluster", "not an address"],
        "fit nav shape": ["fit", d / "small.npy", *GEOM, "--nav-shape", "0", "4"],
        "fit nav shape mismatch": ["fit", d / "small.npy", *GEOM, "--nav-shape", "3", "3"],
        "simulate suffix": ["simulate", d / "out.txt"],
        "simulate into a directory": ["simulate", d],
        "simulate huge": ["simulate", d / "h.npy", "--nav-shape", "65536", "65536"],
        "simulate descan": ["simulate", d / "h.npy", "--descan", "1", "2", "3"],
        "simulate dose": ["simulate", d / "h.npy", "--dose", "1e300"],
        "simulate under a file": ["simulate", d / "a_file" / "x.npy"],
        "demo into a file": ["demo", "--out", d / "a_file"],
        "calibrate overfocus": ["calibrate", "--overfocus", "0"],
        "calibrate attempts": ["calibrate", "--max-attempts", "1000"],
        "calibrate absurd scan": ["calibrate", "--catalog", d / "c", "--nav-shape", "65536",
                                  "65536"],
        "calibrate true overfocus": ["calibrate", "--true-overfocus=-1e300"],
        "history no catalog": ["history", "--catalog", d / "nothing"],
        "history empty dir": ["history", "--catalog", d / "empty_catalog"],
        "history limit": ["history", "--limit", "-1e-6"],
        "show nothing": ["show", "--catalog", d / "nothing"],
        "show both": ["show", "abcdefgh", "--run", "x", "--catalog", d / "nothing"],
        "export format": ["export", "abcdefgh", "--format", "xml"],
        "export hdf5 without into": ["export", "abcdefgh", "--format", "hdf5"],
        "export group": ["export", "abcdefgh", "--group", "g"],
        "sync option": ["sync", "--bogus"],
        "serve port": ["serve", "--port", "70000"],
        "serve negative port": ["serve", "--port", "-1e-6"],
        "serve twice": ["serve", d / "c", "--catalog", d / "c"],
        "serve uri": ["serve", "--catalog", "http://127.0.0.1:1"],
        # a mistyped server address is not quietly a new local directory
        "calibrate htp": ["calibrate", "--catalog", "htp://localhost:8000", "--json"],
        "history ftp": ["history", "--catalog", "ftp://host/cat"],
        "show one slash": ["show", "abcdef12", "--catalog", "http:/localhost:8000"],
        # a uid too short to name anything: the argument is named, not the catalog
        "show short uid": ["show", "f030", "--catalog", d / "no-such-catalog"],
        "export bad uid": ["export", "not-a-uid!", "--catalog", d / "no-such-catalog"],
        "show run short uid": ["show", "--run", "xyz", "--catalog", d / "no-such-catalog"],
    }


def run_main(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def assert_clean_failure(case: str, status: int, out: str, err: str) -> None:
    assert status in (2, 3), (case, status, err)
    assert "Traceback" not in err, (case, err)
    assert out == "", (case, out)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemcal: error: "), (case, err)


def test_battery_of_bad_arguments_in_process(bad, monkeypatch):
    monkeypatch.delenv("STEMCAL_CATALOG", raising=False)
    monkeypatch.chdir(bad)
    for case, argv in battery(bad).items():
        status, out, err = run_main(argv)
        assert_clean_failure(case, status, out, err)
        if case in ("calibrate htp", "history ftp", "show one slash"):
            assert "is not an http:// or https:// address" in err, (case, err)
        if case in ("show short uid", "export bad uid", "show run short uid"):
            assert "is not a record uid" in err or "is not a run uid" in err, (case, err)
    assert not (bad / "no").exists()  # --report made no directory
    assert not any(p.name in ("htp:", "ftp:", "http:") for p in bad.iterdir())  # no catalog made


@pytest.mark.parametrize("case", ["no command", "fit truncated", "fit report dir missing",
                                  "simulate huge", "calibrate true overfocus", "serve twice",
                                  "history limit"])
def test_battery_as_subprocesses(bad, case):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    env.pop("STEMCAL_CATALOG", None)
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, battery(bad)[case])],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert_clean_failure(case, proc.returncode, proc.stdout, proc.stderr)


def test_an_unforeseen_error_is_one_line(monkeypatch):
    from stemcal.cli import offline

    def broken(args):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(offline, "run_simulate", broken)
    status, out, err = run_main(["simulate", "x.npy"])
    assert_clean_failure("unforeseen", status, out, err)
    assert "ZeroDivisionError: float division by zero" in err
