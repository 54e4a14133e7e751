"""``stemcal calibrate``: the calibrate plan on the simulated microscope, into a catalog."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from .args import EXIT_BAD_INPUT, EXIT_NO_FEATURES, add_catalog, integer, number, shape
from .output import record_summary, to_json
from .records import print_record

__all__ = ["add_parsers", "run_calibrate"]


def add_parsers(sub: Any) -> None:
    """The ``calibrate`` subcommand."""
    cal = sub.add_parser("calibrate", help="run the calibrate plan on the simulated microscope "
                                           "and store the record in a catalog")
    add_catalog(cal)
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.add_argument("--true-scan-rotation", type=number("--true-scan-rotation"), default=23.5,
                     metavar="DEG", help="the simulator's true scan rotation (default 23.5)")
    tflip = cal.add_mutually_exclusive_group()
    tflip.add_argument("--true-flip-y", dest="true_flip_y", action="store_true", default=True,
                       help="the simulated detector is flipped (default)")
    tflip.add_argument("--no-true-flip-y", dest="true_flip_y", action="store_false")
    cal.add_argument("--true-overfocus", type=number("--true-overfocus", "nonzero"),
                     default=1.05e-6, metavar="M",
                     help="the simulator's true overfocus at the optics setting --overfocus "
                          "(default 1.05e-6)")
    cal.add_argument("--overfocus", type=number("--overfocus", "nonzero"), default=1e-6,
                     metavar="M", help="optics overfocus setting (default 1e-6)")
    cal.add_argument("--nav-shape", type=shape, nargs=2, default=(40, 40), metavar=("NY", "NX"))
    cal.add_argument("--sig-shape", type=shape, nargs=2, default=(96, 96), metavar=("SY", "SX"))
    cal.add_argument("--dose", type=number("--dose", "positive"), default=5.0,
                     help="mean counts per pixel in the disk (default 5)")
    cal.add_argument("--seed", type=integer("--seed", minimum=0), default=0)
    cal.add_argument("--max-attempts", type=integer("--max-attempts", maximum=100), default=3,
                     metavar="N", help="most acquisitions, each at another focus (default 3)")
    cal.add_argument("--data-dir", metavar="DIR",
                     help="where the detector writes (default CATALOG/raw, or the data "
                          "directory a catalog server announces)")
    cal.add_argument("--figures", metavar="DIR", help="write a PNG of the images per run "
                                                     "(and of the live view, live_<uid8>.png)")
    live = cal.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=True,
                      help="live scans: frames are streamed and projected while they arrive "
                           "(default)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="triggered scans: one 4D event per scan, processed at its end")
    cal.set_defaults(handler=_calibrate)


def run_calibrate(args: argparse.Namespace) -> tuple[Any, Any, list]:
    """Run the calibrate plan on the simulated microscope; (record, true geometry, paths of
    the runs kept for ``stemcal sync``)."""
    from ..plans import calibrate
    from ..config import SimSettings
    from ..session import catalog_location, make_session

    loc, _ = catalog_location(args.catalog)
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
    return result.plan_result, truth, list(session.keeper)


def _quiet_catalog_warnings(verbose: int) -> None:
    """The catalog's own warnings stay out of stderr: the command says it in one line."""
    if not verbose:
        for name in ("stemcal.catalog", "bluesky_tiled_plugins", "tiled", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # event-model's RunRouter warns when a callback (TiledWriter) raises at a start document
        warnings.filterwarnings("ignore", message=r"The callback .* raised", category=UserWarning)


def _calibrate(args: argparse.Namespace) -> int:
    from ..catalog.spool import find as find_spooled
    _quiet_catalog_warnings(args.verbose)
    record, truth, kept_runs = run_calibrate(args)
    spooled = find_spooled(record.uid)
    if args.json:
        print(to_json({**record_summary(record), "spooled": spooled is not None}))
    else:
        print_record(record, truth=truth)
    if spooled is not None:
        runs = f"; its runs in {', '.join(map(str, kept_runs))}" if kept_runs else ""
        where = f"record {record.uid} kept in {spooled.path}{runs}"
        if spooled.refused:
            print(f"stemcal: error: catalog {spooled.location} refused the API key "
                  f"({spooled.reason}); {where}; set the right key ($TILED_API_KEY) and run "
                  "`stemcal sync`", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"stemcal: catalog {spooled.location} unavailable ({spooled.reason}); {where}; "
              "`stemcal sync` delivers them", file=sys.stderr)
    elif kept_runs:
        print(f"stemcal: the catalog failed while taking runs; kept in "
              f"{', '.join(map(str, kept_runs))}; `stemcal sync` delivers them", file=sys.stderr)
    if not record.valid:
        print(f"stemcal: error: calibration not trusted: {record.quality}", file=sys.stderr)
        return EXIT_NO_FEATURES
    return 0
