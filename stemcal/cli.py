"""Command line: ``stemcal fit``, ``stemcal simulate``, ``stemcal demo``.

The CLI only parses, wires objects and prints; the work is in the package.
Bad input ends with one line ``stemcal: error: ...`` on stderr and exit
status 2 (3 when the data hold nothing to calibrate on), never a traceback.
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


def _positive(name: str):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text!r}")
        return v
    return conv


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


def _nonzero(name: str):
    finite = _finite(name)

    def conv(text: str) -> float:
        v = finite(text)
        if v == 0:
            raise argparse.ArgumentTypeError(f"{name} must not be 0 (negative means underfocus)")
        return v
    return conv


def _shape(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must be positive integers, got {text!r}") from None
    if v < 1 or v > 65536:
        raise argparse.ArgumentTypeError(f"shape {v} out of range 1..65536")
    return v


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
    sim.add_argument("--background", type=float, default=0.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="simulate, calibrate from a cold start, report")
    demo.add_argument("--out", default="out", help="output directory (default ./out)")
    demo.add_argument("--json", action="store_true")
    return parser


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
    from .io import describe, open_dataset

    if args.refine_only and _missing_guesses(args):
        raise CLIError("--refine-only needs a starting guess: give "
                       + ", ".join(_missing_guesses(args)))
    ctx = make_context(args.executor, args.cluster)
    try:
        ds = open_dataset(ctx, args.dataset, nav_shape=tuple(args.nav_shape) if args.nav_shape else None)
        info = describe(ds)
        progress = (not args.no_progress) and sys.stderr.isatty()
        if args.refine_only:
            fit = _refine_only(ctx, ds, args, progress)
        else:
            from .fit.coarse import cold_start
            fit = cold_start(ds, ctx=ctx, scan_pixel_size=args.scan_pixel_size,
                             camera_length=args.camera_length,
                             detector_pixel_size=args.detector_pixel_size, overfocus=args.overfocus,
                             semiconv=args.semiconv, progress=progress)
            _compare_guesses(fit, args)
        summary = _summary(fit, info, str(args.dataset))
        if args.report:
            from .report import write_report
            write_report(args.report, fit.images, summary, frame_sum=fit.extra.get("frame_sum"))
            summary["report"] = str(args.report)
        return summary
    finally:
        ctx.close()


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
    from .twin.writers import write_dataset
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
    truth_path = Path(args.out).with_suffix(".truth.json")
    truth = {"params": params.to_dict(), "nav_shape": list(args.nav_shape),
             "sig_shape": list(args.sig_shape), "dose": args.dose,
             "background": args.background, "seed": args.seed, "dataset": str(path)}
    truth_path.write_text(json.dumps(truth, indent=2))
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


# -- entry point ----------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore", "Loading compressed HDF5", RuntimeWarning)  # LiberTEM noise
    from .fit.disk import NoFeaturesError
    from .io import DatasetError
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
