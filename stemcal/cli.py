"""Command line: ``stemcal fit``, ``simulate``, ``demo``, ``calibrate``, ``history``, ``show``.

The CLI only parses, wires objects and prints; the work is in the package.
Bad input ends with one line ``stemcal: error: ...`` on stderr and exit
status 2 (3 when the data hold nothing to calibrate on, or ``calibrate``
ends without a trusted record), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("stemcal")

EXIT_BAD_INPUT = 2
EXIT_NO_FEATURES = 3


class CLIError(Exception):
    """An error to report as one line with an exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``stemcal: error: ...``), status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"stemcal: error: {' '.join(message.split())}\n")


def _finite(name: str):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        return v
    return conv


def _positive(name: str):
    finite = _finite(name)

    def conv(text: str) -> float:
        v = finite(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text!r}")
        return v
    return conv


def _nonzero(name: str):
    finite = _finite(name)

    def conv(text: str) -> float:
        v = finite(text)
        if v == 0:
            raise argparse.ArgumentTypeError(f"{name} must not be 0 (negative means underfocus)")
        return v
    return conv


def _nonnegative(name: str):
    finite = _finite(name)

    def conv(text: str) -> float:
        v = finite(text)
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text!r}")
        return v
    return conv


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"--seed must be >= 0, got {v}")
    return v


def _shape(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must be positive integers, got {text!r}") from None
    if v < 1 or v > 65536:
        raise argparse.ArgumentTypeError(f"shape {v} out of range 1..65536")
    return v


def _count(name: str, most: int | None = None):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(f"{name} must be <= {most}, got {v}")
        return v
    return conv


def _add_geometry(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    d = (lambda v: v) if defaults else (lambda v: None)
    req = not defaults
    p.add_argument("--scan-pixel-size", type=_positive("--scan-pixel-size"), required=req,
                   default=d(0.5e-9), metavar="M", help="scan step, metres")
    p.add_argument("--camera-length", type=_positive("--camera-length"), required=req,
                   default=d(0.2), metavar="M", help="specimen to detector distance, metres")
    p.add_argument("--detector-pixel-size", type=_positive("--detector-pixel-size"), required=req,
                   default=d(55e-6), metavar="M", help="detector pixel pitch, metres")
    p.add_argument("--overfocus", type=_nonzero("--overfocus"), required=req, default=d(1e-6),
                   metavar="M", help="overfocus, metres (negative: underfocus)")
    p.add_argument("--semiconv", type=_positive("--semiconv"), default=d(10e-3) if defaults else None,
                   metavar="RAD", help="convergence semi-angle, radians")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="stemcal", description=(
        "Calibrate scan rotation, flip, overfocus, beam centre and descan of overfocused "
        "4D-STEM data."))
    parser.add_argument("--version", action="version", version=f"stemcal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="calibrate a dataset file")
    fit.add_argument("dataset", help=".npy (4D), .hdr/.mib or .h5/.hdf5")
    _add_geometry(fit, defaults=False)
    fit.add_argument("--scan-rotation", type=_finite("--scan-rotation"), metavar="DEG",
                     help="rotation guess, degrees (LiberTEM convention)")
    flip = fit.add_mutually_exclusive_group()
    flip.add_argument("--flip-y", dest="flip_y", action="store_true", default=None)
    flip.add_argument("--no-flip-y", dest="flip_y", action="store_false")
    fit.add_argument("--cy", type=_finite("--cy"), metavar="PX", help="beam centre y guess, px")
    fit.add_argument("--cx", type=_finite("--cx"), metavar="PX", help="beam centre x guess, px")
    fit.add_argument("--nav-shape", type=_shape, nargs=2, metavar=("NY", "NX"))
    fit.add_argument("--refine-only", action="store_true",
                     help="skip the cold start: refine rotation and overfocus from the guesses "
                          "(needs --scan-rotation, --flip-y/--no-flip-y, --cy, --cx)")
    fit.add_argument("--json", action="store_true", help="print one JSON object")
    fit.add_argument("--report", metavar="PNG", help="write a report figure")
    fit.add_argument("--executor", choices=("inline", "dask"), default="inline")
    fit.add_argument("--cluster", metavar="tcp://HOST:PORT",
                     help="run the passes on a running dask.distributed cluster")
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")

    sim = sub.add_parser("simulate", help="write a simulated overfocused dataset and its truth")
    sim.add_argument("out", help="output file: .npy, .mib/.hdr or .h5")
    _add_geometry(sim, defaults=True)
    sim.add_argument("--scan-rotation", type=_finite("--scan-rotation"), default=23.5)
    sflip = sim.add_mutually_exclusive_group()
    sflip.add_argument("--flip-y", dest="flip_y", action="store_true", default=True)
    sflip.add_argument("--no-flip-y", dest="flip_y", action="store_false")
    sim.add_argument("--cy", type=_finite("--cy"), default=None, help="default: detector middle + 3.3")
    sim.add_argument("--cx", type=_finite("--cx"), default=None, help="default: detector middle - 2.7")
    sim.add_argument("--descan", type=_finite("--descan"), nargs=4, metavar=("DYY", "DYX", "DXY", "DXX"),
                     default=(0.0, 0.0, 0.0, 0.0), help="descan matrix, detector px per scan px")
    sim.add_argument("--nav-shape", type=_shape, nargs=2, default=(64, 64), metavar=("NY", "NX"))
    sim.add_argument("--sig-shape", type=_shape, nargs=2, default=(128, 128), metavar=("SY", "SX"))
    sim.add_argument("--dose", type=_positive("--dose"), default=5.0,
                     help="mean counts per pixel in the disk (Poisson noise)")
    sim.add_argument("--background", type=_nonnegative("--background"), default=0.0)
    sim.add_argument("--seed", type=_seed, default=0)
    sim.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="simulate, calibrate from a cold start, report")
    demo.add_argument("--out", default="out", help="output directory (default ./out)")
    demo.add_argument("--json", action="store_true")

    cal = sub.add_parser("calibrate", help="run the calibrate plan on the simulated microscope "
                                           "and store the record in a catalog")
    _add_catalog(cal)
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.add_argument("--true-scan-rotation", type=_finite("--true-scan-rotation"), default=23.5,
                     metavar="DEG", help="the simulator's true scan rotation (default 23.5)")
    tflip = cal.add_mutually_exclusive_group()
    tflip.add_argument("--true-flip-y", dest="true_flip_y", action="store_true", default=True,
                       help="the simulated detector is flipped (default)")
    tflip.add_argument("--no-true-flip-y", dest="true_flip_y", action="store_false")
    cal.add_argument("--true-overfocus", type=_nonzero("--true-overfocus"), default=1.05e-6,
                     metavar="M", help="the simulator's true overfocus at the optics setting "
                                       "--overfocus (default 1.05e-6)")
    cal.add_argument("--overfocus", type=_nonzero("--overfocus"), default=1e-6, metavar="M",
                     help="optics overfocus setting (default 1e-6)")
    cal.add_argument("--nav-shape", type=_shape, nargs=2, default=(40, 40), metavar=("NY", "NX"))
    cal.add_argument("--sig-shape", type=_shape, nargs=2, default=(96, 96), metavar=("SY", "SX"))
    cal.add_argument("--dose", type=_positive("--dose"), default=5.0,
                     help="mean counts per pixel in the disk (default 5)")
    cal.add_argument("--seed", type=_seed, default=0)
    cal.add_argument("--max-attempts", type=_count("--max-attempts", 100), default=3, metavar="N",
                     help="most acquisitions, each at another focus (default 3)")
    cal.add_argument("--data-dir", metavar="DIR",
                     help="where the detector writes (default CATALOG/raw; a temporary "
                          "directory for a tiled server)")
    cal.add_argument("--figures", metavar="DIR", help="write a PNG of the images per run "
                                                     "(and of the live view, live_<uid8>.png)")
    live = cal.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=True,
                      help="live scans: frames are streamed and projected while they arrive "
                           "(default)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="triggered scans: one 4D event per scan, processed at its end")

    hist = sub.add_parser("history", help="list calibration records, newest first")
    _add_catalog(hist)
    hist.add_argument("--limit", type=_count("--limit"), metavar="N", help="at most N records")
    hist.add_argument("--valid-only", action="store_true", help="only records with quality ok")
    hist.add_argument("--json", action="store_true", help="print one JSON list")

    show = sub.add_parser("show", help="print one calibration record with its provenance")
    show.add_argument("uid", nargs="?", help="record uid (or a unique prefix of >= 8 characters)")
    show.add_argument("--run", metavar="RUN_UID",
                      help="instead: the calibration an experiment run carried (and its status)")
    _add_catalog(show)
    show.add_argument("--json", action="store_true", help="print the whole record as JSON")

    exp = sub.add_parser("export", help="export a calibration record as JSON or into an HDF5 file")
    exp.add_argument("uid", help="record uid (or a unique prefix of >= 8 characters)")
    _add_catalog(exp)
    exp.add_argument("--format", choices=("json", "hdf5"), default="json",
                     help="json (stdout, or a new file with --into) or hdf5 (a group of "
                          "attributes in the existing file --into)")
    exp.add_argument("--into", metavar="FILE", help="json: a new file; hdf5: an existing HDF5 "
                                                   "file (e.g. the experiment's data file)")
    exp.add_argument("--group", default=None, metavar="PATH",
                     help="hdf5: group to create (default stemcal_calibration)")

    syn = sub.add_parser("sync", help="deliver spooled calibration records to their catalogs "
                                      "(exit status 1 while some stay spooled)")
    syn.add_argument("--json", action="store_true", help="print one JSON object")

    srv = sub.add_parser("serve", help="serve a catalog directory with tiled (API keys from "
                                       "$STEMCAL_WRITER_KEY/$STEMCAL_READER_KEY or the keys file)")
    srv.add_argument("catalog", nargs="?", metavar="DIR",
                     help="catalog directory (default $STEMCAL_CATALOG, else the default one)")
    srv.add_argument("--host", help="interface to bind (default [server] host of the "
                                    "configuration, else 127.0.0.1)")
    srv.add_argument("--port", type=_count("--port"), help="port (default [server] port, else 8000)")
    return parser


def _add_catalog(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", metavar="DIR_OR_URI",
                   help="catalog directory or tiled http(s):// URI (default $STEMCAL_CATALOG, "
                        "else ~/.local/share/stemcal/catalog)")


# -- fit ----------------------------------------------------------------------

def _summary(fit, ds_info: dict[str, Any], dataset: str) -> dict[str, Any]:
    from . import __version__
    out = fit.summary()
    p = fit.params
    out["semiconv"] = p.semiconv
    out["descan"] = fit.extra.get("descan") or {"matrix": [list(r) for r in p.descan],
                                                "offset": [p.cy, p.cx]}
    unc = fit.extra.get("uncertainty", {})
    out["uncertainty"] = {"scan_rotation": unc.get("scan_rotation"),
                          "overfocus": unc.get("overfocus")}
    out["dataset"] = dataset
    out["nav_shape"] = list(ds_info["nav_shape"])
    out["sig_shape"] = list(ds_info["sig_shape"])
    out["stemcal_version"] = __version__
    return out


def _missing_guesses(args: argparse.Namespace) -> list[str]:
    return [opt for opt, v in (("--scan-rotation", args.scan_rotation),
                               ("--flip-y/--no-flip-y", args.flip_y),
                               ("--cy", args.cy), ("--cx", args.cx)) if v is None]


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    from .executors import make_context
    from .formats import describe, open_dataset

    if args.refine_only and _missing_guesses(args):
        raise CLIError("--refine-only needs a starting guess: give "
                       + ", ".join(_missing_guesses(args)))
    if args.report:
        _check_report(args.report)  # before the work, not after it
    ctx = make_context(args.executor, args.cluster)
    try:
        ds = open_dataset(ctx, args.dataset, nav_shape=tuple(args.nav_shape) if args.nav_shape else None)
        info = describe(ds)
        progress = (not args.no_progress) and sys.stderr.isatty()
        try:
            if args.refine_only:
                fit = _refine_only(ctx, ds, args, progress)
            else:
                from .fit.coarse import cold_start
                fit = cold_start(ds, ctx=ctx, scan_pixel_size=args.scan_pixel_size,
                                 camera_length=args.camera_length,
                                 detector_pixel_size=args.detector_pixel_size,
                                 overfocus=args.overfocus, semiconv=args.semiconv,
                                 progress=progress)
                _compare_guesses(fit, args)
        except OSError as exc:  # a damaged block found while reading (e.g. an HDF5 chunk)
            raise CLIError(f"{args.dataset}: cannot read the data "
                           f"({' '.join(str(exc).split())})") from None
        _check_finite_images(fit)
        summary = _summary(fit, info, str(args.dataset))
        if args.report:
            from .report import write_report
            from .formats import atomic_output
            with atomic_output(args.report) as tmp:  # no half-written figure on failure
                write_report(tmp, fit.images, summary, frame_sum=fit.extra.get("frame_sum"))
            summary["report"] = str(args.report)
        return summary
    finally:
        ctx.close()


def _check_finite_images(fit) -> None:
    """NaN/inf pixels in frames the cache skipped show only in the full pass: no silent NaN."""
    import numpy as np

    from .fit.disk import NoFeaturesError
    images = getattr(fit, "images", None) or {}
    for name in ("shifted_sum", "coverage"):  # the raw sums (normalised images hold NaN gaps)
        image = images.get(name)
        if image is not None and not np.all(np.isfinite(image)):
            raise NoFeaturesError(f"the frames hold NaN or infinite values (the full pass's "
                                  f"{name} is not finite)")


def _check_report(path: str) -> None:
    """A ``--report`` name that matplotlib can write, in a place that can be written."""
    from matplotlib.figure import Figure

    from .formats import check_destination
    try:
        check_destination([Path(path)])
    except ValueError as exc:
        raise CLIError(f"--report {exc}") from None
    suffix = Path(path).suffix.lower().lstrip(".")
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise CLIError(f"--report {path}: unknown figure type {suffix!r} "
                       f"(use one of {', '.join(sorted(formats))})")


def _compare_guesses(fit, args) -> None:
    p = fit.params
    if args.flip_y is not None and args.flip_y != p.flip_y:
        log.warning("the data say flip_y=%s, the guess was %s", p.flip_y, args.flip_y)
    if args.scan_rotation is not None:
        d = (p.scan_rotation - args.scan_rotation + 180) % 360 - 180
        if abs(d) > 10:
            log.warning("the data say scan_rotation=%.2f deg, %.1f deg from the guess",
                        p.scan_rotation, d)


def _refine_only(ctx, ds, args, progress):
    from .fit import build_cache, refine
    from .fit.disk import find_disk
    from .twin import OverfocusParams
    cache = build_cache(ctx, ds, budget=512 * 2**20, work=2**62, progress=progress)
    semiconv = args.semiconv
    if semiconv is None:
        disk = find_disk(cache.frame_sum)
        semiconv = disk.radius * args.detector_pixel_size / abs(args.overfocus + args.camera_length)
    start = OverfocusParams(overfocus=args.overfocus, scan_pixel_size=args.scan_pixel_size,
                            camera_length=args.camera_length,
                            detector_pixel_size=args.detector_pixel_size, semiconv=semiconv,
                            cy=args.cy, cx=args.cx, scan_rotation=args.scan_rotation,
                            flip_y=args.flip_y)
    fit = refine(ds, start, ctx=ctx, cache=cache, progress=progress)
    fit.passes += 1
    fit.extra["frame_sum"] = cache.frame_sum
    return fit


def _json(obj: Any) -> str:
    """Strict JSON: non-finite floats become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            return clean(v.item())
        return v
    return json.dumps(clean(obj), allow_nan=False)


def _print_fit(summary: dict[str, Any]) -> None:
    unc = summary.get("uncertainty") or {}

    def pm(key, scale=1.0):
        v = unc.get(key)
        return f" +- {v * scale:.2g}" if v is not None and math.isfinite(v) else ""

    m = summary["descan"]["matrix"]
    print(f"scan_rotation  {summary['scan_rotation']:.3f} deg{pm('scan_rotation')}")
    print(f"flip_y         {summary['flip_y']}")
    print(f"overfocus      {summary['overfocus']:.6g} m{pm('overfocus')}")
    print(f"centre (y, x)  {summary['cy']:.2f}, {summary['cx']:.2f} px")
    print(f"descan         [[{m[0][0]:+.4f}, {m[0][1]:+.4f}], [{m[1][0]:+.4f}, {m[1][1]:+.4f}]] px/scan px")
    print(f"semiconv       {summary['semiconv']:.4g} rad")
    print(f"blur           {summary['blur']:.4f} (Crete; 0 sharp, 1 blurred)")
    print(f"quality        {summary['quality']}")
    print(f"passes         {summary['passes']} over the raw data, {summary['seconds']:.2f} s")
    if "report" in summary:
        print(f"report         {summary['report']}")


# -- simulate -------------------------------------------------------------------

def run_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from .twin import OverfocusParams, simulate
    from .formats import check_destination, dataset_files, write_dataset, write_text
    truth_path = Path(args.out).with_suffix(".truth.json")
    files = dataset_files(args.out)  # unknown suffix: refused before the simulation
    check_destination([*files, truth_path])
    sy, sx = args.sig_shape
    d = args.descan
    params = OverfocusParams(
        overfocus=args.overfocus, scan_pixel_size=args.scan_pixel_size,
        camera_length=args.camera_length, detector_pixel_size=args.detector_pixel_size,
        semiconv=args.semiconv, cy=args.cy if args.cy is not None else sy / 2 + 3.3,
        cx=args.cx if args.cx is not None else sx / 2 - 2.7, scan_rotation=args.scan_rotation,
        flip_y=args.flip_y, descan=((d[0], d[1]), (d[2], d[3])))
    data = simulate(params, tuple(args.nav_shape), tuple(args.sig_shape), dose=args.dose,
                    background=args.background, seed=args.seed)
    path = write_dataset(args.out, data)
    truth = {"params": params.to_dict(), "nav_shape": list(args.nav_shape),
             "sig_shape": list(args.sig_shape), "dose": args.dose,
             "background": args.background, "seed": args.seed, "dataset": str(path)}
    try:
        write_text(truth_path, json.dumps(truth, indent=2))
    except BaseException:
        for f in files:  # a dataset without its truth is half of the output
            f.unlink(missing_ok=True)
        raise
    truth["truth"] = str(truth_path)
    return truth


# -- demo -----------------------------------------------------------------------

def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Simulate a dataset with a known geometry, calibrate it from a cold start, compare."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sim_args = build_parser().parse_args(["simulate", str(out / "demo.npy"), "--descan",
                                          "0.03", "-0.02", "0.01", "0.04", "--dose", "3"])
    truth = run_simulate(sim_args)
    tp = truth["params"]
    fit_args = build_parser().parse_args([
        "fit", truth["dataset"], "--scan-pixel-size", str(tp["scan_pixel_size"]),
        "--camera-length", str(tp["camera_length"]),
        "--detector-pixel-size", str(tp["detector_pixel_size"]),
        "--overfocus", str(tp["overfocus"] * 1.3), "--report", str(out / "demo-report.png"),
        "--no-progress"])
    summary = run_fit(fit_args)
    err = {"scan_rotation_deg": (summary["scan_rotation"] - tp["scan_rotation"] + 180) % 360 - 180,
           "overfocus_rel": summary["overfocus"] / tp["overfocus"] - 1,
           "cy_px": summary["cy"] - tp["cy"], "cx_px": summary["cx"] - tp["cx"],
           "flip_y_right": summary["flip_y"] == tp["flip_y"]}
    return {"truth": tp, "fit": summary, "error": err, "seconds_total": time.perf_counter() - t0}


def _print_demo(res: dict[str, Any]) -> None:
    t, f, e = res["truth"], res["fit"], res["error"]
    print("stemcal demo: simulated 64x64 scan x 128x128 detector, 3 counts/px, descan;")
    print("calibrated from a cold start (sizes + an overfocus guess 30 % off).\n")
    print(f"{'':16}{'truth':>14}{'fitted':>14}{'error':>12}")
    print(f"{'scan_rotation':16}{t['scan_rotation']:>14.3f}{f['scan_rotation']:>14.3f}"
          f"{e['scan_rotation_deg']:>+12.3f} deg")
    print(f"{'flip_y':16}{str(t['flip_y']):>14}{str(f['flip_y']):>14}"
          f"{'ok' if e['flip_y_right'] else 'WRONG':>12}")
    print(f"{'overfocus':16}{t['overfocus']:>14.5g}{f['overfocus']:>14.5g}"
          f"{100 * e['overfocus_rel']:>+11.3f} %")
    print(f"{'cy':16}{t['cy']:>14.2f}{f['cy']:>14.2f}{e['cy_px']:>+12.3f} px")
    print(f"{'cx':16}{t['cx']:>14.2f}{f['cx']:>14.2f}{e['cx_px']:>+12.3f} px")
    print()
    _print_fit(f)
    print(f"\ntotal {res['seconds_total']:.1f} s (simulation included)")


# -- calibrate / history / show ---------------------------------------------------

#: Keys of the short record summary (``calibrate --json``, ``history --json``).
RECORD_SUMMARY = ("uid", "acquisition_uid", "time", "scan_rotation", "flip_y", "overfocus",
                  "cy", "cx", "quality", "valid")


def _catalog_location(args: argparse.Namespace) -> tuple[Any, bool]:
    """(location, is a tiled server URI) of ``--catalog`` or the default."""
    from .session import catalog_location
    return catalog_location(args.catalog)


def _open(args: argparse.Namespace, readable: Sequence[Path] = ()) -> Any:
    from .catalog import open_catalog
    loc, remote = _catalog_location(args)
    if not remote and args.command != "calibrate" and not (Path(loc) / "catalog.db").is_file():
        raise CLIError(f"no catalog at {loc}")
    import httpx
    from tiled.client.context import CannotPrompt
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_catalog(loc, readable_storage=readable)
    except CannotPrompt:
        raise CLIError(f"catalog {loc} needs an API key: set $TILED_API_KEY") from None
    except httpx.HTTPError as exc:  # server down, key refused, ...
        from .catalog.spool import failure_reason
        raise CLIError(f"cannot open catalog {loc}: {failure_reason(exc)}") from None


def record_summary(record) -> dict[str, Any]:
    """The short JSON summary of a calibration record (:data:`RECORD_SUMMARY`)."""
    d = record.to_dict()
    d["valid"] = record.valid
    return {k: d[k] for k in RECORD_SUMMARY}


def run_calibrate(args: argparse.Namespace) -> tuple[Any, Any]:
    """Run the calibrate plan on the simulated microscope; (record, true geometry)."""
    from .plans import calibrate
    from .session import SimSettings, make_session

    loc, _ = _catalog_location(args)
    sim = SimSettings(true_scan_rotation=args.true_scan_rotation, true_flip_y=args.true_flip_y,
                      true_overfocus=args.true_overfocus, overfocus=args.overfocus,
                      nav_shape=tuple(args.nav_shape), sig_shape=tuple(args.sig_shape),
                      dose=args.dose, seed=args.seed)
    session = make_session(loc, sim=sim, data_dir=args.data_dir, figure_dir=args.figures)
    inst = session.instrument
    try:
        result = session.RE(calibrate(inst.detector, inst.scan, inst.optics,
                                      callback=session.recorder,
                                      max_attempts=args.max_attempts, live=args.live))
    finally:
        session.close()
    truth = inst.microscope.geometry(inst.scan.state(), inst.optics.state())
    return result.plan_result, truth


def _print_record(record, *, truth=None, provenance: bool = False) -> None:
    import datetime
    unc = record.uncertainty or {}

    def pm(key):
        v = unc.get(key)
        return f" +- {v:.2g}" if v is not None else ""

    when = datetime.datetime.fromtimestamp(record.time).isoformat(timespec="seconds")
    print(f"uid            {record.uid}")
    print(f"acquisition    {record.acquisition_uid}")
    print(f"time           {when}")
    print(f"scan_rotation  {record.scan_rotation:.3f} deg{pm('scan_rotation')}")
    print(f"flip_y         {record.flip_y}")
    print(f"overfocus      {record.overfocus:.6g} m{pm('overfocus')}")
    print(f"centre (y, x)  {record.cy:.2f}, {record.cx:.2f} px")
    m = record.descan
    print(f"descan         [[{m[0][0]:+.4f}, {m[0][1]:+.4f}], [{m[1][0]:+.4f}, {m[1][1]:+.4f}]] px/scan px")
    if math.isfinite(record.blur):
        print(f"blur           {record.blur:.4f} (Crete; 0 sharp, 1 blurred)")
    print(f"quality        {record.quality}")
    if record.supersedes:
        print(f"supersedes     {record.supersedes}")
    if truth is not None:
        drot = (record.scan_rotation - truth.scan_rotation + 180) % 360 - 180
        print(f"truth          rotation {truth.scan_rotation:.3f} deg ({drot:+.3f}), flip_y "
              f"{truth.flip_y}, overfocus {truth.overfocus:.6g} m "
              f"({100 * (record.overfocus / truth.overfocus - 1):+.3f} %)")
    if provenance:
        print("optics state   " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in record.optics_state.items()))
        print(f"sizes          scan pixel {record.scan_pixel_size:.6g} m, camera length "
              f"{record.camera_length:.6g} m, detector pixel {record.detector_pixel_size:.6g} m, "
              f"semiconv {record.semiconv:.6g} rad")
        print("versions       " + ", ".join(f"{k} {v}" for k, v in record.versions.items()))
        print("fit settings   " + _json(record.fit_settings))


def run_history(args: argparse.Namespace) -> list:
    from .catalog import calibration_history
    return calibration_history(_open(args), limit=args.limit, valid_only=args.valid_only)


def _print_history(records) -> None:
    import datetime
    if not records:
        print("no calibration records")
        return
    print(f"{'uid':10}{'time':21}{'rotation':>10}{'flip':>6}{'overfocus':>13}{'cy':>8}{'cx':>8}"
          f"  quality")
    for r in records:
        when = datetime.datetime.fromtimestamp(r.time).isoformat(timespec="seconds")
        print(f"{r.uid[:8]:10}{when:21}{r.scan_rotation:>10.3f}{str(r.flip_y):>6}"
              f"{r.overfocus:>13.5g}{r.cy:>8.2f}{r.cx:>8.2f}  {r.quality}")


def run_show_run(args: argparse.Namespace) -> dict[str, Any]:
    """``show --run``: what an experiment run carried (:func:`stemcal.attach.carried_calibration`)."""
    from .attach import carried_calibration
    if args.uid:
        raise CLIError("give a record uid or --run RUN_UID, not both")
    try:
        return carried_calibration(_open(args), args.run)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no run {args.run!r}") from None


def _print_run_calibration(res: dict[str, Any]) -> None:
    print(f"run            {res['run']} ({res['plan_name']})")
    if not res["attached"]:
        print("calibration    none attached (the run was taken without attach_calibration)")
        return
    st = res["calibration_status"] or {}
    print(f"status         {st.get('status')}: {st.get('reason')}")
    cal = res["calibration"]
    if cal is None:
        print("calibration    none")
        return
    import datetime
    when = datetime.datetime.fromtimestamp(cal["time"]).isoformat(timespec="seconds")
    m = cal["descan"]
    print(f"calibration    {cal['uid']} (recorded {when})")
    print(f"scan_rotation  {cal['scan_rotation']:.3f} deg")
    print(f"flip_y         {cal['flip_y']}")
    print(f"overfocus      {cal['overfocus']:.6g} m")
    print(f"centre (y, x)  {cal['cy']:.2f}, {cal['cx']:.2f} px")
    print(f"descan         [[{m[0][0]:+.4f}, {m[0][1]:+.4f}], [{m[1][0]:+.4f}, {m[1][1]:+.4f}]] px/scan px")
    print("optics state   " + ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in (cal.get("optics_state") or {}).items()))


def run_export(args: argparse.Namespace) -> str | None:
    """``export``: the JSON text to print, or None when written to a file (path on stderr)."""
    from .catalog import get_record
    from .export import DEFAULT_GROUP, record_to_json, write_hdf5, write_json
    if args.format == "hdf5" and not args.into:
        raise CLIError("--format hdf5 needs --into FILE (an existing HDF5 file)")
    if args.group is not None and args.format != "hdf5":
        raise CLIError("--group applies to --format hdf5 only")
    try:
        record = get_record(_open(args), args.uid)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no calibration record {args.uid!r}") from None
    if args.format == "json":
        if not args.into:
            return record_to_json(record)
        try:
            path = write_json(record, args.into)
        except FileExistsError:
            raise CLIError(f"{args.into} exists; export does not overwrite files") from None
        print(f"wrote calibration {record.uid} to {path}", file=sys.stderr)
        return None
    try:
        group = write_hdf5(record, args.into, args.group or DEFAULT_GROUP)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote calibration {record.uid} to {args.into}:{group}", file=sys.stderr)
    return None


def run_show(args: argparse.Namespace):
    from .catalog import get_record
    if not args.uid:
        raise CLIError("give a record uid, or --run RUN_UID for an experiment run")
    client = _open(args)
    try:
        return get_record(client, args.uid)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no calibration record {args.uid!r}") from None


def run_sync(args: argparse.Namespace):
    from .catalog import sync
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sync()


def _print_sync(report) -> None:
    for uid, loc in report.delivered:
        print(f"delivered      {uid} -> {loc}")
    for uid, loc in report.already_there:
        print(f"already there  {uid} ({loc}); spool entry removed")
    for uid, loc, reason in report.pending:
        print(f"still spooled  {uid} -> {loc}: {reason}")
    if not (report.delivered or report.already_there or report.pending):
        print("nothing spooled")


def run_serve(args: argparse.Namespace) -> int:
    from .catalog.server import serve, server_settings
    from .session import catalog_location, load_config
    host, port = server_settings(load_config())
    loc, remote = catalog_location(args.catalog)
    if remote:
        raise CLIError(f"serve needs a catalog directory, not a URI ({loc})")
    serve(loc, host=args.host or host, port=args.port or port)  # exec: becomes the server
    return 0


# -- entry point ----------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore", "Loading compressed HDF5", RuntimeWarning)  # LiberTEM noise
    from .fit.disk import NoFeaturesError
    from .formats import DatasetError
    try:
        if args.command == "fit":
            res = run_fit(args)
            print(_json(res)) if args.json else _print_fit(res)
        elif args.command == "simulate":
            res = run_simulate(args)
            print(_json(res)) if args.json else print(
                f"wrote {res['dataset']} and {res['truth']}")
        elif args.command == "demo":
            res = run_demo(args)
            print(_json(res)) if args.json else _print_demo(res)
        elif args.command == "calibrate":
            record, truth = run_calibrate(args)
            from .catalog.spool import find as find_spooled
            spooled = find_spooled(record.uid)
            if args.json:
                print(_json({**record_summary(record), "spooled": spooled is not None}))
            else:
                _print_record(record, truth=truth)
                if spooled is not None:
                    print(f"spooled        not in the catalog ({spooled.reason}); kept in "
                          f"{spooled.path}; `stemcal sync` delivers it")
            if not record.valid:
                print(f"stemcal: error: calibration not trusted: {record.quality}", file=sys.stderr)
                return EXIT_NO_FEATURES
        elif args.command == "sync":
            report = run_sync(args)
            print(_json(report.to_dict())) if args.json else _print_sync(report)
            return 1 if report.pending else 0
        elif args.command == "serve":
            return run_serve(args)
        elif args.command == "history":
            records = run_history(args)
            print(_json([record_summary(r) for r in records])) if args.json else _print_history(records)
        elif args.command == "show" and args.run:
            res = run_show_run(args)
            print(_json(res)) if args.json else _print_run_calibration(res)
        elif args.command == "show":
            record = run_show(args)
            print(_json(record.to_dict())) if args.json else _print_record(record, provenance=True)
        elif args.command == "export":
            text = run_export(args)
            if text is not None:
                print(text)
    except CLIError as exc:
        print(f"stemcal: error: {exc}", file=sys.stderr)
        return exc.status
    except NoFeaturesError as exc:
        print(f"stemcal: error: nothing to calibrate on: {exc}", file=sys.stderr)
        return EXIT_NO_FEATURES
    except (DatasetError, ValueError, OSError) as exc:
        msg = " ".join(str(exc).split())
        print(f"stemcal: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:  # a last resort: absurd sizes are meant to be refused before this
        print("stemcal: error: out of memory (the data or the requested shapes are too large)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
