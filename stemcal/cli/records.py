"""Commands on the records: ``history``, ``show``, ``export``, ``sync``, and printing a record."""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .args import CLIError, add_catalog, integer
from .output import (angle_difference, geometry_lines, record_summary, state_line, to_json,
                     when)

__all__ = ["add_parsers", "open_for", "print_record"]


def add_parsers(sub: Any) -> None:
    """The ``history``, ``show``, ``export`` and ``sync`` subcommands."""
    hist = sub.add_parser("history", help="list calibration records, newest first")
    add_catalog(hist)
    hist.add_argument("--limit", type=integer("--limit"), metavar="N", help="at most N records")
    hist.add_argument("--valid-only", action="store_true", help="only records with quality ok")
    hist.add_argument("--json", action="store_true", help="print one JSON list")
    hist.set_defaults(handler=_history)

    show = sub.add_parser("show", help="print one calibration record with its provenance")
    show.add_argument("uid", nargs="?", help="record uid (or a unique prefix of >= 8 characters)")
    show.add_argument("--run", metavar="RUN_UID",
                      help="instead: the calibration an experiment run carried (and its status)")
    add_catalog(show)
    show.add_argument("--json", action="store_true", help="print the whole record as JSON")
    show.set_defaults(handler=_show)

    exp = sub.add_parser("export", help="export a calibration record as JSON or into an HDF5 file")
    exp.add_argument("uid", help="record uid (or a unique prefix of >= 8 characters)")
    add_catalog(exp)
    exp.add_argument("--format", choices=("json", "hdf5"), default="json",
                     help="json (stdout, or a new file with --into) or hdf5 (a group of "
                          "attributes in the existing file --into)")
    exp.add_argument("--into", metavar="FILE", help="json: a new file; hdf5: an existing HDF5 "
                                                   "file (e.g. the experiment's data file)")
    exp.add_argument("--group", default=None, metavar="PATH",
                     help="hdf5: group to create (default stemcal_calibration)")
    exp.set_defaults(handler=_export)

    syn = sub.add_parser("sync", help="deliver spooled calibration records to their catalogs "
                                      "(exit status 1 while some stay spooled)")
    syn.add_argument("--json", action="store_true", help="print one JSON object")
    syn.set_defaults(handler=_sync)


def open_for(args: argparse.Namespace, readable: Sequence[Path] = ()) -> Any:
    """The catalog of ``--catalog`` (or the default); a reading command needs it to exist."""
    from ..catalog import open_catalog
    from ..session import catalog_location
    loc, remote = catalog_location(args.catalog)
    if not remote and not (Path(loc) / "catalog.db").is_file():
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
        from ..catalog.spool import failure_reason
        raise CLIError(f"cannot open catalog {loc}: {failure_reason(exc)}") from None


def print_record(record: Any, *, truth: Any = None, provenance: bool = False) -> None:
    """A calibration record for people; with the simulator's ``truth`` beside it, or with
    its whole provenance."""
    print(f"uid            {record.uid}")
    print(f"acquisition    {record.acquisition_uid}")
    print(f"time           {when(record.time)}")
    for line in geometry_lines(record.to_dict(), record.uncertainty):
        print(line)
    if math.isfinite(record.blur):
        print(f"blur           {record.blur:.4f} (Crete; 0 sharp, 1 blurred)")
    print(f"quality        {record.quality}")
    if record.supersedes:
        print(f"supersedes     {record.supersedes}")
    if truth is not None:
        drot = angle_difference(record.scan_rotation, truth.scan_rotation)
        print(f"truth          rotation {truth.scan_rotation:.3f} deg ({drot:+.3f}), flip_y "
              f"{truth.flip_y}, overfocus {truth.overfocus:.6g} m "
              f"({100 * (record.overfocus / truth.overfocus - 1):+.3f} %)")
    if provenance:
        print("optics state   " + state_line(record.optics_state))
        print(f"sizes          scan pixel {record.scan_pixel_size:.6g} m, camera length "
              f"{record.camera_length:.6g} m, detector pixel {record.detector_pixel_size:.6g} m, "
              f"semiconv {record.semiconv:.6g} rad")
        print("versions       " + ", ".join(f"{k} {v}" for k, v in record.versions.items()))
        print("fit settings   " + to_json(record.fit_settings))


def _history(args: argparse.Namespace) -> int:
    from ..catalog import calibration_history
    records = calibration_history(open_for(args), limit=args.limit, valid_only=args.valid_only)
    if args.json:
        print(to_json([record_summary(r) for r in records]))
    elif not records:
        print("no calibration records")
    else:
        print(f"{'uid':10}{'time':21}{'rotation':>10}{'flip':>6}{'overfocus':>13}{'cy':>8}"
              f"{'cx':>8}  quality")
        for r in records:
            print(f"{r.uid[:8]:10}{when(r.time):21}{r.scan_rotation:>10.3f}{str(r.flip_y):>6}"
                  f"{r.overfocus:>13.5g}{r.cy:>8.2f}{r.cx:>8.2f}  {r.quality}")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.run:
        return _show_run(args)
    from ..catalog import get_record
    if not args.uid:
        raise CLIError("give a record uid, or --run RUN_UID for an experiment run")
    client = open_for(args)
    try:
        record = get_record(client, args.uid)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no calibration record {args.uid!r}") from None
    print(to_json(record.to_dict())) if args.json else print_record(record, provenance=True)
    return 0


def _show_run(args: argparse.Namespace) -> int:
    """``show --run``: what an experiment run carried (:func:`stemcal.attach.carried_calibration`)."""
    from ..attach import carried_calibration
    if args.uid:
        raise CLIError("give a record uid or --run RUN_UID, not both")
    try:
        res = carried_calibration(open_for(args), args.run)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no run {args.run!r}") from None
    if args.json:
        print(to_json(res))
        return 0
    print(f"run            {res['run']} ({res['plan_name']})")
    if not res["attached"]:
        print("calibration    none attached (the run was taken without attach_calibration)")
        return 0
    st = res["calibration_status"] or {}
    print(f"status         {st.get('status')}: {st.get('reason')}")
    cal = res["calibration"]
    if cal is None:
        print("calibration    none")
        return 0
    print(f"calibration    {cal['uid']} (recorded {when(cal['time'])})")
    for line in geometry_lines(cal):
        print(line)
    print("optics state   " + state_line(cal.get("optics_state") or {}))
    return 0


def _export(args: argparse.Namespace) -> int:
    """``export``: JSON on stdout, or into a file (its path on stderr)."""
    from ..catalog import get_record
    from ..export import DEFAULT_GROUP, record_to_json, write_hdf5, write_json
    if args.format == "hdf5" and not args.into:
        raise CLIError("--format hdf5 needs --into FILE (an existing HDF5 file)")
    if args.group is not None and args.format != "hdf5":
        raise CLIError("--group applies to --format hdf5 only")
    try:
        record = get_record(open_for(args), args.uid)
    except KeyError as exc:
        raise CLIError(str(exc.args[0]) if exc.args else f"no calibration record {args.uid!r}") from None
    if args.format == "json":
        if not args.into:
            print(record_to_json(record))
            return 0
        try:
            path = write_json(record, args.into)
        except FileExistsError:
            raise CLIError(f"{args.into} exists; export does not overwrite files") from None
        print(f"wrote calibration {record.uid} to {path}", file=sys.stderr)
        return 0
    try:
        group = write_hdf5(record, args.into, args.group or DEFAULT_GROUP)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote calibration {record.uid} to {args.into}:{group}", file=sys.stderr)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from ..catalog import sync
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = sync()
    if args.json:
        print(to_json(report.to_dict()))
    else:
        for uid, loc in report.delivered:
            print(f"delivered      {uid} -> {loc}")
        for uid, loc in report.already_there:
            print(f"already there  {uid} ({loc}); spool entry removed")
        for uid, loc, reason in report.pending:
            print(f"still spooled  {uid} -> {loc}: {reason}")
        if not (report.delivered or report.already_there or report.pending):
            print("nothing spooled")
    return 1 if report.pending else 0
