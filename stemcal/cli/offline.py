"""Offline commands: ``fit`` a dataset file, ``simulate`` one, the ``demo`` of both."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .args import EXIT_NO_FEATURES, CLIError, Parser, add_geometry, integer, number, shape
from .output import angle_difference, geometry_lines, to_json

__all__ = ["add_parsers", "run_fit", "run_simulate", "run_demo"]

log = logging.getLogger("stemcal")


def add_parsers(sub: Any) -> None:
    """The ``fit``, ``simulate`` and ``demo`` subcommands."""
    fit = sub.add_parser("fit", help="calibrate a dataset file",
                         description="Calibrate a dataset file from a cold start (or refine "
                                     "given guesses with --refine-only).")
    fit.add_argument("dataset", help=".npy (4D), .hdr/.mib or .h5/.hdf5")
    add_geometry(fit, defaults=False)
    fit.add_argument("--scan-rotation", type=number("--scan-rotation"), metavar="DEG",
                     help="rotation guess, degrees (LiberTEM convention)")
    flip = fit.add_mutually_exclusive_group()
    flip.add_argument("--flip-y", dest="flip_y", action="store_true", default=None,
                      help="guess: the detector is flipped")
    flip.add_argument("--no-flip-y", dest="flip_y", action="store_false",
                      help="guess: the detector is not flipped")
    fit.add_argument("--cy", type=number("--cy", span="centre"), metavar="PX",
                     help="beam centre y guess, detector px")
    fit.add_argument("--cx", type=number("--cx", span="centre"), metavar="PX",
                     help="beam centre x guess, detector px")
    fit.add_argument("--nav-shape", type=shape, nargs=2, metavar=("NY", "NX"),
                     help="scan shape, scan px (where the file does not tell it)")
    fit.add_argument("--refine-only", action="store_true",
                     help="skip the cold start: refine rotation and overfocus from the guesses "
                          "(needs --scan-rotation, --flip-y/--no-flip-y, --cy, --cx); the "
                          "search widens while its optimum sits at a bound, up to +-45 deg "
                          "and +-50 %%; exit status 3 if it still cannot converge")
    fit.add_argument("--json", action="store_true", help="print one JSON object")
    fit.add_argument("--report", metavar="PNG",
                     help="write a report figure (its directory must exist; .png, .pdf, .svg...)")
    fit.add_argument("--executor", choices=("inline", "dask"), default="inline",
                     help="where the passes run: this process, or a local dask cluster")
    fit.add_argument("--cluster", metavar="tcp://HOST:PORT",
                     help="run the passes on a running dask.distributed cluster")
    fit.add_argument("--no-progress", action="store_true",
                     help="no progress bars (they are drawn on stderr when it is a terminal)")
    fit.set_defaults(handler=_fit)

    sim = sub.add_parser("simulate", help="write a simulated overfocused dataset and its truth",
                         description="Write a simulated overfocused 4D-STEM dataset (ray-traced "
                                     "digital twin, Poisson noise) and OUT.truth.json.")
    sim.add_argument("out", help="output file: .npy, .mib/.hdr or .h5 (missing directories "
                                 "are created)")
    add_geometry(sim, defaults=True)
    sim.add_argument("--scan-rotation", type=number("--scan-rotation"), default=23.5,
                     metavar="DEG", help="scan rotation, degrees (LiberTEM convention)")
    sflip = sim.add_mutually_exclusive_group()
    sflip.add_argument("--flip-y", dest="flip_y", action="store_true", default=True,
                       help="the detector is flipped (default)")
    sflip.add_argument("--no-flip-y", dest="flip_y", action="store_false",
                       help="the detector is not flipped")
    sim.add_argument("--cy", type=number("--cy", span="centre"), default=None, metavar="PX",
                     help="beam centre y, detector px (default: detector middle + 3.3)")
    sim.add_argument("--cx", type=number("--cx", span="centre"), default=None, metavar="PX",
                     help="beam centre x, detector px (default: detector middle - 2.7)")
    sim.add_argument("--descan", type=number("--descan", span="descan"), nargs=4,
                     metavar=("DYY", "DYX", "DXY", "DXX"), default=(0.0, 0.0, 0.0, 0.0),
                     help="descan matrix, detector px per scan px (each at most 10 in magnitude)")
    sim.add_argument("--nav-shape", type=shape, nargs=2, default=(64, 64), metavar=("NY", "NX"),
                     help="scan shape, scan px")
    sim.add_argument("--sig-shape", type=shape, nargs=2, default=(128, 128), metavar=("SY", "SX"),
                     help="detector shape, px")
    sim.add_argument("--dose", type=number("--dose", "positive", "dose"), default=5.0,
                     metavar="COUNTS",
                     help="mean counts per pixel in the disk, Poisson noise (1e-06..1e+06)")
    sim.add_argument("--background", type=number("--background", "nonnegative", "background"),
                     default=0.0, metavar="COUNTS",
                     help="mean counts per pixel outside the disk (0..1e+06)")
    sim.add_argument("--seed", type=integer("--seed", minimum=0), default=0, metavar="N",
                     help="random seed of the specimen and the noise")
    sim.add_argument("--json", action="store_true", help="print the truth as one JSON object")
    sim.set_defaults(handler=_simulate)

    demo = sub.add_parser("demo", help="simulate, calibrate from a cold start, report")
    demo.add_argument("--out", default="out", metavar="DIR",
                      help="output directory (created if missing)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(handler=_demo)


# -- fit ----------------------------------------------------------------------

def _summary(fit: Any, ds_info: dict[str, Any], dataset: str) -> dict[str, Any]:
    from .. import __version__
    out = fit.summary()
    p = fit.params
    out["semiconv"] = p.semiconv
    out["descan"] = fit.extra.get("descan") or {"matrix": [list(r) for r in p.descan],
                                                "offset": [p.cy, p.cx]}
    unc = fit.extra.get("uncertainty", {})
    out["uncertainty"] = {"scan_rotation": unc.get("scan_rotation"),
                          "overfocus": unc.get("overfocus")}
    if fit.extra.get("defects"):   # detector pixels filled from their neighbours
        out["detector_defects"] = dict(fit.extra["defects"])
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
    """``fit``: open the dataset, calibrate it, return the JSON summary (writes ``--report``)."""
    from ..executors import command_line_process, make_context
    from ..formats import describe, open_dataset

    command_line_process()
    if args.refine_only and _missing_guesses(args):
        raise CLIError("--refine-only needs a starting guess: give "
                       + ", ".join(_missing_guesses(args)))
    if args.report:
        _check_report(args.report)  # before the work, not after it
    ctx = make_context(args.executor, args.cluster)
    try:
        size = _size(args.dataset)
        ds = open_dataset(ctx, args.dataset, nav_shape=tuple(args.nav_shape) if args.nav_shape else None)
        info = describe(ds)
        progress = (not args.no_progress) and sys.stderr.isatty()
        try:
            if args.refine_only:
                fit = _refine_only(ctx, ds, args, progress)
            else:
                from ..fit.coarse import cold_start
                fit = cold_start(ds, ctx=ctx, scan_pixel_size=args.scan_pixel_size,
                                 camera_length=args.camera_length,
                                 detector_pixel_size=args.detector_pixel_size,
                                 overfocus=args.overfocus, semiconv=args.semiconv,
                                 progress=progress)
                _compare_guesses(fit, args)
        except OSError as exc:  # a damaged block found while reading (e.g. an HDF5 chunk)
            raise CLIError(f"{args.dataset}: cannot read the data "
                           f"({' '.join(str(exc).split())})") from None
        except AssertionError:  # a reader's short read: the file changed under it?
            now = _size(args.dataset)
            if now != size:
                raise CLIError(f"{args.dataset}: the file changed while it was read "
                               f"({size} -> {now} bytes)") from None
            raise
        _check_finite_images(fit)
        summary = _summary(fit, info, str(args.dataset))
        if args.report:
            _write_report(args, ctx, ds, fit, summary)
            summary["report"] = str(args.report)
        return summary
    finally:
        ctx.close()


def _size(path: str) -> int | None:
    """Bytes of ``path`` now (None where it cannot be read)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def guess_params(args: argparse.Namespace, fitted: Any, sig_shape: Any) -> Any:
    """The geometry the fit started from, as far as the user gave it: the guesses, else
    rotation 0, no flip, the detector middle and no descan (sizes and semiconv as fitted
    where not given)."""
    sy, sx = (int(n) for n in sig_shape)
    return fitted.replace(
        scan_rotation=args.scan_rotation if args.scan_rotation is not None else 0.0,
        flip_y=bool(args.flip_y), overfocus=args.overfocus,
        cy=args.cy if args.cy is not None else sy / 2,
        cx=args.cx if args.cx is not None else sx / 2, descan=((0.0, 0.0), (0.0, 0.0)))


def _write_report(args: argparse.Namespace, ctx: Any, ds: Any, fit: Any,
                  summary: dict[str, Any]) -> None:
    """``--report``: the fit beside one more pass over the data, projected with the guess."""
    from ..fit.passes import full_pass
    from ..formats import atomic_output
    from ..report import write_report

    guess = guess_params(args, fit.params, ds.shape.sig)
    try:
        before = full_pass(ctx, ds, guess)["shifted_sum_normalised"]
    except (ValueError, OSError) as exc:  # e.g. a guess that projects outside every limit
        log.warning("no projection with the guess for the report: %s", exc)
        before = None
    with atomic_output(args.report) as tmp:  # no half-written figure on failure
        write_report(tmp, fit.images, summary, params=fit.params, before=before, guess=guess,
                     frame_sum=fit.extra.get("frame_sum"),
                     title=f"stemcal fit of {Path(args.dataset).name}")


def _check_finite_images(fit: Any) -> None:
    """NaN/inf pixels in frames the cache skipped show only in the full pass: no silent NaN."""
    import numpy as np

    from ..fit.disk import NoFeaturesError
    images = getattr(fit, "images", None) or {}
    for name in ("shifted_sum", "coverage"):  # the raw sums (normalised images hold NaN gaps)
        image = images.get(name)
        if image is not None and not np.all(np.isfinite(image)):
            raise NoFeaturesError(f"the frames hold NaN or infinite values (the full pass's "
                                  f"{name} is not finite)")


def _check_report(path: str) -> None:
    """A ``--report`` name that matplotlib can write, in an existing directory that can be
    written (a typo in the directory is an error, not a new directory tree)."""
    from matplotlib.figure import Figure

    from ..formats import check_destination
    parent = Path(path).parent
    if parent.exists() and not parent.is_dir():
        raise CLIError(f"--report {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise CLIError(f"--report {path}: the directory {parent} does not exist")
    try:
        check_destination([Path(path)])
    except ValueError as exc:
        raise CLIError(f"--report {exc}") from None
    suffix = Path(path).suffix.lower().lstrip(".")
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise CLIError(f"--report {path}: unknown figure type {suffix!r} "
                       f"(use one of {', '.join(sorted(formats))})")


def _compare_guesses(fit: Any, args: argparse.Namespace) -> None:
    p = fit.params
    if args.flip_y is not None and args.flip_y != p.flip_y:
        log.warning("the data say flip_y=%s, the guess was %s", p.flip_y, args.flip_y)
    if args.scan_rotation is not None:
        d = angle_difference(p.scan_rotation, args.scan_rotation)
        if abs(d) > 10:
            log.warning("the data say scan_rotation=%.2f deg, %.1f deg from the guess",
                        p.scan_rotation, d)


def _refine_only(ctx: Any, ds: Any, args: argparse.Namespace, progress: bool) -> Any:
    """Refine from the guesses; the data must hold a disk (as for the cold start), and a
    fit that cannot converge within the widened search ends with exit status 3."""
    from ..fit import build_cache, refine
    from ..fit.disk import check_disk_contrast, find_disk
    from ..twin import OverfocusParams
    cache = build_cache(ctx, ds, budget=512 * 2**20, work=2**62, progress=progress)
    disk = find_disk(cache.mean_frame())
    check_disk_contrast(cache.frames, disk)
    semiconv = args.semiconv
    if semiconv is None:
        semiconv = (disk.radius * cache.bin * args.detector_pixel_size
                    / abs(args.overfocus + args.camera_length))
    start = OverfocusParams(overfocus=args.overfocus, scan_pixel_size=args.scan_pixel_size,
                            camera_length=args.camera_length,
                            detector_pixel_size=args.detector_pixel_size, semiconv=semiconv,
                            cy=args.cy, cx=args.cx, scan_rotation=args.scan_rotation,
                            flip_y=args.flip_y)
    fit = refine(ds, start, ctx=ctx, cache=cache, progress=progress)
    if not fit.success:
        raise CLIError(f"the fit did not converge: {fit.message}", EXIT_NO_FEATURES)
    fit.passes += 1
    fit.extra["frame_sum"] = cache.frame_sum
    if cache.defects:
        fit.extra["defects"] = dict(cache.defects)
    return fit


def print_fit(summary: dict[str, Any]) -> None:
    """A fit's summary for people."""
    values = {**summary, "descan": summary["descan"]["matrix"]}
    for line in geometry_lines(values, summary.get("uncertainty")):
        print(line)
    print(f"semiconv       {summary['semiconv']:.4g} rad")
    print(f"blur           {summary['blur']:.4f} (Crete; 0 sharp, 1 blurred)")
    print(f"quality        {summary['quality']}")
    print(f"passes         {summary['passes']} over the raw data, {summary['seconds']:.2f} s")
    if "report" in summary:
        print(f"report         {summary['report']}")


def _fit(args: argparse.Namespace) -> int:
    from .bus_error import install
    install()  # a file truncated under the mapped reads: one line, not "Bus error"
    res = run_fit(args)
    print(to_json(res)) if args.json else print_fit(res)
    return 0


# -- simulate -------------------------------------------------------------------

def run_simulate(args: argparse.Namespace) -> dict[str, Any]:
    """``simulate``: write the dataset and its truth JSON; return the truth."""
    from .. import formats
    from ..twin import OverfocusParams, simulate
    truth_path = Path(args.out).with_suffix(".truth.json")
    files = formats.dataset_files(args.out)  # unknown suffix: refused before the simulation
    formats.check_destination([*files, truth_path])
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
    path = formats.write_dataset(args.out, data)
    truth = {"params": params.to_dict(), "nav_shape": list(args.nav_shape),
             "sig_shape": list(args.sig_shape), "dose": args.dose,
             "background": args.background, "seed": args.seed, "dataset": str(path)}
    try:
        formats.write_text(truth_path, json.dumps(truth, indent=2))
    except BaseException:
        for f in files:  # a dataset without its truth is half of the output
            f.unlink(missing_ok=True)
        raise
    truth["truth"] = str(truth_path)
    return truth


def _simulate(args: argparse.Namespace) -> int:
    res = run_simulate(args)
    print(to_json(res)) if args.json else print(f"wrote {res['dataset']} and {res['truth']}")
    return 0


# -- demo -----------------------------------------------------------------------

def _parse(argv: list[str]) -> argparse.Namespace:
    """Arguments of one of this module's subcommands."""
    parser = Parser(prog="stemcal")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Simulate a dataset with a known geometry, calibrate it from a cold start, compare."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = run_simulate(_parse(["simulate", str(out / "demo.npy"), "--descan",
                                 "0.03", "-0.02", "0.01", "0.04", "--dose", "3"]))
    tp = truth["params"]
    summary = run_fit(_parse([
        "fit", truth["dataset"], "--scan-pixel-size", str(tp["scan_pixel_size"]),
        "--camera-length", str(tp["camera_length"]),
        "--detector-pixel-size", str(tp["detector_pixel_size"]),
        "--overfocus", str(tp["overfocus"] * 1.3), "--report", str(out / "demo-report.png"),
        "--no-progress"]))
    err = {"scan_rotation_deg": angle_difference(summary["scan_rotation"], tp["scan_rotation"]),
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
    print_fit(f)
    print(f"\ntotal {res['seconds_total']:.1f} s (simulation included)")


def _demo(args: argparse.Namespace) -> int:
    from .bus_error import install
    install()
    res = run_demo(args)
    print(to_json(res)) if args.json else _print_demo(res)
    return 0
