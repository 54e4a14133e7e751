"""Commands on the records: ``history``, ``show``, ``export``, ``sync``, and printing a record."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .args import CLIError, add_catalog, integer
from .output import (angle_difference, geometry_lines, record_summary, state_line, to_json,
                     when)

__all__ = ["add_parsers", "open_for", "print_record", "catalog_errors"]

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def catalog_errors(loc: Any) -> Iterator[None]:
    """Any failure of the catalog inside the block as one :class:`CLIError` line naming it.

    Missing, damaged, locked or unreadable databases, a server that is down or
    refuses the key: ``stemcal: error: ...``, exit status 2. The traceback is
    logged at DEBUG (``-vv``).
    """
    try:
        yield
    except CLIError:
        raise
    except FileNotFoundError:
        raise CLIError(f"no catalog at {loc}") from None
    except Exception as exc:  # noqa: BLE001 - one line, whatever the catalog raised
        from ..catalog.delivery import is_refusal
        from ..catalog.keys import KeyInURIError
        from ..catalog.spool import failure_reason
        log.debug("catalog %s failed", loc, exc_info=True)
        if isinstance(exc, KeyInURIError):
            raise CLIError(str(exc)) from None
        if type(exc).__name__ == "CannotPrompt":
            raise CLIError(f"catalog {loc} needs an API key: set $TILED_API_KEY") from None
        if type(exc).__name__ == "UninitializedDatabase":
            raise CLIError(f"cannot read catalog {loc}: it is damaged (its catalog.db holds "
                           "no catalog)") from None
        if is_refusal(exc):
            raise CLIError(f"catalog {loc} refused the API key ({failure_reason(exc)}); "
                           "check $TILED_API_KEY") from None
        raise CLIError(f"cannot read catalog {loc}: {failure_reason(exc)}") from None


def open_for(args: argparse.Namespace, readable: Sequence[Path] = ()) -> Any:
    """The catalog of ``--catalog`` (or the default); a reading command needs it to exist.

    A server is given :func:`~stemcal.catalog.delivery.open_timeout` seconds to answer
    (``$STEMCAL_CATALOG_TIMEOUT``, 20 by default; a port that accepts and never answers
    otherwise held the command for about a minute of tiled's retries). Failures are
    :class:`CLIError` lines (:func:`catalog_errors`).
    """
    from ..catalog import open_catalog
    from ..session import catalog_location
    loc, remote = catalog_location(args.catalog)
    with catalog_errors(loc), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not remote:
            return open_catalog(loc, readable_storage=readable, create=False)
        from ..catalog.delivery import answer_within, open_timeout
        return answer_within(lambda: open_catalog(loc, readable_storage=readable, create=False),
                             open_timeout(), name="stemcal-catalog-read",
                             setting=" ($STEMCAL_CATALOG_TIMEOUT)")


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


def _record_runs(args: argparse.Namespace) -> list[dict] | None:
    """The record runs' metadata read straight from an embedded catalog's SQLite file
    (:mod:`stemcal.catalog.snapshot`); None for a server, or where that cannot be done
    (the command then opens the catalog through tiled, which reports what is wrong)."""
    from ..catalog.snapshot import record_run_metadata
    from ..locations import catalog_location
    return record_run_metadata(catalog_location(args.catalog))


def _history(args: argparse.Namespace) -> int:
    from ..catalog.queries import entries_from_metadata, history_entries
    from ..session import catalog_location
    runs = _record_runs(args)
    if runs is not None:
        entries = entries_from_metadata(runs)
    else:
        client = open_for(args)
        with catalog_errors(catalog_location(args.catalog)[0]):
            entries = history_entries(client)
    if args.valid_only:
        entries = [e for e in entries if e.state == "complete" and e.record.valid]
    entries = entries[:args.limit]
    if args.json:
        print(to_json([{**record_summary(e.record), "state": e.state} for e in entries]))
    elif not entries:
        print("no calibration records")
    else:
        print(f"{'uid':10}{'time':21}{'rotation':>10}{'flip':>6}{'overfocus':>13}{'cy':>8}"
              f"{'cx':>8}  {'state':11} quality")
        for e in entries:
            r = e.record
            print(f"{r.uid[:8]:10}{when(r.time):21}{r.scan_rotation:>10.3f}{str(r.flip_y):>6}"
                  f"{r.overfocus:>13.5g}{r.cy:>8.2f}{r.cx:>8.2f}  {e.state:11} {r.quality}")
    return 0


def check_uid_argument(uid: str, what: str = "record") -> None:
    """Refuse a uid argument that cannot name anything, before the catalog is opened (so
    that the error names the argument, not the catalog)."""
    from ..catalog.queries import is_uid_prefix
    if not is_uid_prefix(uid):
        raise CLIError(f"{uid!r} is not a {what} uid: give the uid, or a unique prefix of at "
                       "least 8 of its characters (hex digits and '-')")


def _record_of(args: argparse.Namespace) -> tuple[Any, str]:
    """(record, state) of ``args.uid`` in ``--catalog``; failures are one-line errors."""
    from ..catalog.queries import find_entry, get_record, record_state
    from ..session import catalog_location
    check_uid_argument(args.uid)
    runs = _record_runs(args)
    with catalog_errors(catalog_location(args.catalog)[0]):
        try:
            if runs is not None:
                entry, state = find_entry(runs, args.uid)
                return entry.record, state
            client = open_for(args)
            record = get_record(client, args.uid)
            return record, record_state(client, record.uid)
        except KeyError as exc:
            raise CLIError(str(exc.args[0]) if exc.args
                           else f"no calibration record {args.uid!r}") from None


def _show(args: argparse.Namespace) -> int:
    if args.run:
        return _show_run(args)
    if not args.uid:
        raise CLIError("give a record uid, or --run RUN_UID for an experiment run")
    record, state = _record_of(args)
    if args.json:
        print(to_json(record.to_dict()))
        return 0
    print_record(record, provenance=True)
    if state != "complete":
        print(f"state          {state}: its run has no stop document with exit status "
              "success; it is not a valid calibration")
    return 0


def _show_run(args: argparse.Namespace) -> int:
    """``show --run``: what an experiment run carried (:func:`stemcal.attach.carried_calibration`)."""
    from ..attach import carried_calibration
    if args.uid:
        raise CLIError("give a record uid or --run RUN_UID, not both")
    check_uid_argument(args.run, "run")
    from ..session import catalog_location
    client = open_for(args)
    with catalog_errors(catalog_location(args.catalog)[0]):
        try:
            res = carried_calibration(client, args.run)
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
    from ..export import DEFAULT_GROUP, record_to_json, write_hdf5, write_json
    if args.format == "hdf5" and not args.into:
        raise CLIError("--format hdf5 needs --into FILE (an existing HDF5 file)")
    if args.group is not None and args.format != "hdf5":
        raise CLIError("--group applies to --format hdf5 only")
    record, _ = _record_of(args)
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
        return 1 if report.stuck else 0
    for uid, loc, how in report.runs_delivered:
        print(f"run {how:14} {uid} -> {loc}")
    for uid, loc, reason in report.runs_pending:
        print(f"run kept       {uid} -> {loc}: {reason}")
    for uid, loc in report.delivered:
        print(f"delivered      {uid} -> {loc}")
    for uid, loc in report.already_there:
        print(f"already there  {uid} ({loc}); spool entry removed")
    for uid, loc, reason in report.pending:
        print(f"still spooled  {uid} -> {loc}: {reason}")
    for uid in report.busy:
        print(f"being written  {uid} (by a running process; left alone)")
    for path, reason in report.damaged:
        print(f"damaged        {path}: {reason} (left in place: repair it or move it away)")
    if not (report.delivered or report.already_there or report.pending or report.runs_delivered
            or report.runs_pending or report.busy or report.damaged):
        print("nothing spooled")
    return 1 if report.stuck else 0
