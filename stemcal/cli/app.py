"""``stemcal app``: the interactive browser app (:mod:`stemcal.app`)."""
from __future__ import annotations

import argparse
from typing import Any

from .args import CLIError, add_catalog, add_geometry, integer, shape

__all__ = ["add_parsers"]

_SIZES = ("scan_pixel_size", "camera_length", "detector_pixel_size", "overfocus")


def add_parsers(sub: Any) -> None:
    """The ``app`` subcommand."""
    app = sub.add_parser(
        "app", help="serve the interactive app in a browser: adjust a dataset's geometry by "
                    "eye, Auto, Refine, Record; the catalog's history",
        description="Serve the interactive app (a Bokeh server) and print its address. "
                    "DATASET needs the sizes and an overfocus guess, as for `fit`; "
                    "--record opens the frames a record was made from, at its values; "
                    "with neither, records are opened from the History tab.")
    app.add_argument("dataset", nargs="?", metavar="DATASET",
                     help=".npy (4D), .hdr/.mib or .h5/.hdf5")
    app.add_argument("--record", metavar="UID",
                     help="instead of DATASET: a record's frames and values (uid or a unique "
                          "prefix of >= 8 characters)")
    add_catalog(app)
    add_geometry(app, defaults=False, required=False)
    app.add_argument("--nav-shape", type=shape, nargs=2, metavar=("NY", "NX"))
    app.add_argument("--operator", metavar="NAME",
                     help="who adjusts (stored with manual records; default the login name)")
    app.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on (default 127.0.0.1: this machine only)")
    app.add_argument("--port", type=integer("--port", minimum=0, maximum=65535), default=5006,
                     help="port (default 5006; 0: any free port)")
    app.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                     help="a further address the page may be opened as (e.g. a tunnel's)")
    app.set_defaults(handler=_app)


def _app(args: argparse.Namespace) -> int:
    from ..session import catalog_location
    from .bus_error import install
    install()  # a data file truncated under the app's mapped reads: one line
    if args.dataset and args.record:
        raise CLIError("give a DATASET or --record UID, not both")
    missing = ["--" + name.replace("_", "-") for name in _SIZES if getattr(args, name) is None]
    if args.dataset and missing:
        raise CLIError("DATASET needs the sizes and an overfocus guess: give " + ", ".join(missing))
    catalog: Any = catalog_location(args.catalog)[0]
    record = None
    if args.record:
        from ..catalog import get_record
        from .records import open_for
        catalog = open_for(args)
        try:
            record = get_record(catalog, args.record)
        except KeyError as exc:
            raise CLIError(str(exc.args[0]) if exc.args else f"no record {args.record!r}") from None
    from ..app import Sizes, StemcalApp, serve
    app = StemcalApp(catalog=catalog, operator=args.operator)
    if record is not None:
        app.load_record(record)
    elif args.dataset:
        sizes = Sizes(**{name: getattr(args, name) for name in _SIZES}, semiconv=args.semiconv)
        app.open_file(args.dataset, sizes,
                      nav_shape=tuple(args.nav_shape) if args.nav_shape else None)
    serve(app, address=args.host, port=args.port, allow_origin=args.allow_origin,
          on_ready=lambda url: print(f"stemcal app: serving {url} (Ctrl-C stops)", flush=True))
    return 0
