"""``stemcal calibrate``: the calibrate plan on the configured microscope, into a catalog.

The detector is that of the configuration's ``[detector]`` table
(:func:`stemcal.config.load_config`, as in the IPython profile): by default
the simulated Merlin of the digital twin, whose true state the ``--true-*``
options set; with ``backend = "hardware"`` the real detector (or its
simulator) through its own protocol, and then the twin's options are refused.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
import weakref
from typing import Any

from .args import (CLIError, EXIT_BAD_INPUT, EXIT_NO_FEATURES, add_catalog, error_line, integer,
                   number, shape)
from .output import record_summary, to_json
from .records import print_record

__all__ = ["add_parsers", "run_calibrate", "AbortOnInterrupt", "SIM_ONLY"]

log = logging.getLogger(__name__)

#: Options that describe the simulated detector and the twin's truth, with their defaults
#: (``None`` in the parser, so that an option given can be told from a default).
SIM_ONLY: dict[str, tuple[str, Any]] = {
    "true_scan_rotation": ("--true-scan-rotation", 23.5),
    "true_flip_y": ("--true-flip-y/--no-true-flip-y", True),
    "true_overfocus": ("--true-overfocus", 1.05e-6),
    "sig_shape": ("--sig-shape", (96, 96)),
    "dose": ("--dose", 5.0),
    "seed": ("--seed", 0),
}


def add_parsers(sub: Any) -> None:
    """The ``calibrate`` subcommand."""
    cal = sub.add_parser(
        "calibrate", help="run the calibrate plan on the configured microscope (by default the "
                          "simulated one) and store the record in a catalog",
        description="Run the calibrate plan: acquire, calibrate, record; retry at other focus "
                    "settings until the record is trusted. The detector is the configuration's "
                    "[detector] ($STEMCAL_CONFIG or ~/.config/stemcal/config.toml), by default "
                    "the simulated one; the options marked 'simulated detector only' set the "
                    "digital twin and are refused for a hardware detector.")
    add_catalog(cal)
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.add_argument("--true-scan-rotation", type=number("--true-scan-rotation"), default=None,
                     metavar="DEG", help="simulated detector only: the twin's true scan "
                                         "rotation, degrees (default: 23.5)")
    tflip = cal.add_mutually_exclusive_group()
    tflip.add_argument("--true-flip-y", dest="true_flip_y", action="store_true", default=None,
                       help="simulated detector only: the twin's detector is flipped (default)")
    tflip.add_argument("--no-true-flip-y", dest="true_flip_y", action="store_false",
                       help="simulated detector only: the twin's detector is not flipped")
    cal.add_argument("--true-overfocus", type=number("--true-overfocus", "nonzero", "overfocus"),
                     default=None, metavar="M",
                     help="simulated detector only: the twin's true overfocus at the optics "
                          "setting --overfocus, metres (default: 1.05e-6)")
    cal.add_argument("--overfocus", type=number("--overfocus", "nonzero", "overfocus"),
                     default=1e-6, metavar="M",
                     help="optics overfocus setting, metres; negative: underfocus")
    cal.add_argument("--nav-shape", type=shape, nargs=2, default=(40, 40), metavar=("NY", "NX"),
                     help="scan shape, scan px")
    cal.add_argument("--sig-shape", type=shape, nargs=2, default=None, metavar=("SY", "SX"),
                     help="simulated detector only: detector shape, px (default: 96 96)")
    cal.add_argument("--dose", type=number("--dose", "positive", "dose"), default=None,
                     metavar="COUNTS", help="simulated detector only: mean counts per pixel "
                                            "in the disk (default: 5)")
    cal.add_argument("--seed", type=integer("--seed", minimum=0), default=None, metavar="N",
                     help="simulated detector only: random seed of specimen and noise "
                          "(default: 0)")
    cal.add_argument("--max-attempts", type=integer("--max-attempts", maximum=100), default=3,
                     metavar="N", help="most acquisitions, each at another focus")
    cal.add_argument("--data-dir", metavar="DIR",
                     help="where the detector writes (default: the configuration's [paths] "
                          "data_dir, else CATALOG/raw or the data directory a catalog server "
                          "announces)")
    cal.add_argument("--figures", metavar="DIR",
                     help="write the report figure of each calibration "
                          "(calibration_<record uid8>.png) and the live view (live_<run uid8>.png)")
    live = cal.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=True,
                      help="live scans: frames are streamed and projected while they arrive "
                           "(default)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="triggered scans: one 4D event per scan, processed at its end")
    cal.add_argument("--no-progress", action="store_true",
                     help="no progress bars (they are drawn on stderr when it is a terminal)")
    cal.set_defaults(handler=_calibrate)


def _detector_settings(cfg: dict) -> Any:
    """The configuration's ``[detector]`` (:class:`~stemcal.config.DetectorSettings`)."""
    from ..config import DetectorSettings
    return DetectorSettings.from_mapping(cfg.get("detector", {}))


def _sim_settings(args: argparse.Namespace, hardware: bool) -> Any:
    """The twin's settings; the simulated-detector options refused for a hardware detector."""
    from ..config import SimSettings
    given = [opt for key, (opt, _) in SIM_ONLY.items() if getattr(args, key) is not None]
    if hardware and given:
        raise CLIError(f"{', '.join(given)}: the configured detector is a hardware detector "
                       "([detector] backend = \"hardware\"); these options set the simulated "
                       "one only")
    values = {key: default if getattr(args, key) is None else getattr(args, key)
              for key, (_, default) in SIM_ONLY.items()}
    return SimSettings(overfocus=args.overfocus, nav_shape=tuple(args.nav_shape),
                       **{**values, "sig_shape": tuple(values["sig_shape"])})


#: RunEngines that a Ctrl-C reached during a run (:class:`AbortOnInterrupt`).
_INTERRUPTED: "weakref.WeakSet[Any]" = weakref.WeakSet()


class AbortOnInterrupt:
    """The RunEngine's SIGINT handling for a command (a context manager it enters per run).

    bluesky's own pauses at the next checkpoint on a first Ctrl-C and leaves the
    RunEngine paused for someone at a prompt to resume or abort; a command has no prompt
    (and bluesky's words went to stdout, into ``--json``). Here a Ctrl-C asks the
    RunEngine to pause at once and :func:`run_calibrate` then aborts the run (its stop
    document says ``abort``) and ends the command with ``stemcal: interrupted``, 130.
    """

    def __init__(self, RE: Any) -> None:
        self.RE = RE

    def __enter__(self) -> "AbortOnInterrupt":
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        _INTERRUPTED.add(self.RE)
        try:
            self.RE.request_pause(defer=False)
        except Exception:  # noqa: BLE001 - not pausable now (ending): noted above all the same
            log.debug("Ctrl-C: the RunEngine could not pause", exc_info=True)


class _NoTracebacks(logging.Filter):
    """Drops bluesky's "Run aborted" and its traceback below ``-vv``: the command ends
    with the error in one line (and ``-vv`` shows the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info or logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def _run_plan(RE: Any, plan: Any) -> Any:
    """``RE(plan)`` for a command: bluesky's chatter kept off stdout (it is for ``--json``),
    and a Ctrl-C (:class:`AbortOnInterrupt`) ending in ``KeyboardInterrupt`` once the run
    is aborted; whatever was recorded before it stays."""
    import contextlib
    import io

    from bluesky.utils import RunEngineInterrupted

    chatter = io.StringIO()
    bluesky_log = logging.getLogger("bluesky")
    tracebacks = _NoTracebacks()
    bluesky_log.addFilter(tracebacks)
    try:
        with contextlib.redirect_stdout(chatter):
            try:
                result = RE(plan)
            except RunEngineInterrupted:
                if RE.state == "paused":
                    quiet = logging.getLogger("bluesky")   # its "Run aborted" and traceback
                    level = quiet.level
                    quiet.setLevel(logging.CRITICAL)
                    try:
                        RE.abort(reason="interrupted (Ctrl-C)")
                    finally:
                        quiet.setLevel(level)
                raise KeyboardInterrupt from None
    finally:
        bluesky_log.removeFilter(tracebacks)
        if chatter.getvalue():
            log.debug("bluesky: %s", chatter.getvalue().strip())
    if RE in _INTERRUPTED:
        raise KeyboardInterrupt
    return result


def run_calibrate(args: argparse.Namespace) -> tuple[Any, Any, list]:
    """Run the calibrate plan on the configured microscope; (record, true geometry or None,
    paths of the runs kept for ``stemcal sync``).

    The true geometry is the twin's, for the simulated detector; None for a hardware one.
    """
    from ..executors import command_line_process
    from ..plans import calibrate
    from ..session import catalog_location, make_session

    from ..config import load_config

    command_line_process()
    cfg = load_config()
    detector = _detector_settings(cfg)
    # --data-dir, else the configuration's [paths] data_dir, else the catalog's
    data_dir = args.data_dir if args.data_dir else cfg.get("paths", {}).get("data_dir")
    sim = _sim_settings(args, detector.is_hardware)
    loc, _ = catalog_location(args.catalog)
    bars = not args.no_progress and sys.stderr.isatty()
    if bars:  # the few seconds before the first progress bar are not silent
        print(f"stemcal: opening the catalog {loc} and the "
              f"{'hardware' if detector.is_hardware else 'simulated'} microscope ...",
              file=sys.stderr, flush=True)
    # the live view's figure only where someone sees it (a window, or --figures): None
    session = make_session(loc, sim=sim, data_dir=data_dir, figure_dir=args.figures,
                           detector=detector, courier=True, live_figure=None,
                           context_managers=[AbortOnInterrupt], reconnect=False)
    inst = session.instrument
    if bars:
        from ..callbacks.progress import progress_bars
        session.RE.waiting_hook = progress_bars()
    failed = None
    try:
        result = _run_plan(session.RE, calibrate(inst.detector, inst.scan, inst.optics,
                                                 callback=session.recorder,
                                                 max_attempts=args.max_attempts,
                                                 live=args.live))
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - said below, with the runs it kept
        failed = exc
    finally:
        session.close()
    if failed is not None:
        kept = list(session.keeper)
        if not kept:
            raise failed
        raise CLIError(error_line(failed, _kept_runs(kept))) from failed
    if detector.is_hardware:
        return result.plan_result, None, list(session.keeper)
    truth = inst.microscope.geometry(inst.scan.state(), inst.optics.state())
    return result.plan_result, truth, list(session.keeper)


def _kept_runs(kept: list) -> str:
    """What a failed calibration's error line adds: where the runs it made are kept for
    ``stemcal sync`` (the catalog did not take them)."""
    many = len(kept) > 1
    return (f"; the run{'s' if many else ''} it made kept in {', '.join(map(str, kept))}; "
            f"`stemcal sync` delivers {'them' if many else 'it'}")


def _quiet_catalog_warnings(verbose: int) -> None:
    """The catalog's own warnings stay out of stderr: the command says it in one line."""
    if not verbose:
        for name in ("stemcal.catalog", "bluesky_tiled_plugins", "tiled", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # event-model's RunRouter warns when a callback (TiledWriter) raises at a start document
        warnings.filterwarnings("ignore", message=r"The callback .* raised", category=UserWarning)


def _calibrate(args: argparse.Namespace) -> int:
    from ..catalog.spool import find as find_spooled
    from .bus_error import install
    install()  # the live view maps the scan's file: cut under it, one line, not "Bus error"
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
