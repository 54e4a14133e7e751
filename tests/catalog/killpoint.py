"""``stemcal ARGS`` that kills itself (SIGKILL, as ``kill -9``) at one point: for test_kill.py.

usage: python killpoint.py POINT -- ARGS...

POINT is one of

* ``scan``: when the first acquisition announces its frames (``stream_datum``), before
  its stop document (mid-scan);
* ``fit``: when the recorder starts the fit of the record;
* ``recordN``: just before the N-th writing request (not GET) of the record's
  write to the catalog, after the record was spooled (N from 1).

Nothing in stemcal knows of this: the points are found by wrapping stemcal's
and httpx's functions from the outside, in this child process only.
"""
from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "scan":
        from stemcal.catalog import journal

        keeper_call = journal.RunKeeper.__call__

        def call(self, name, doc):
            keeper_call(self, name, doc)
            if name == "stream_datum":  # the frames are announced; the run is not stopped
                die()
        journal.RunKeeper.__call__ = call
    elif point == "fit":
        from stemcal.fit import coarse

        def cold_start(*args, **kwargs):
            die()
        coarse.cold_start = cold_start
    elif point.startswith("record"):
        import httpx

        from stemcal.catalog import store

        n = int(point[len("record"):])
        state = {"writing": False, "count": 0}
        write_record = store.write_record
        send = httpx.Client.send

        def writing(*args, **kwargs):
            state["writing"] = True
            return write_record(*args, **kwargs)

        def counted(self, request, **kwargs):
            if state["writing"] and request.method != "GET":
                state["count"] += 1
                if state["count"] == n:
                    die()
            return send(self, request, **kwargs)
        store.write_record = writing
        httpx.Client.send = counted
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    arm(point)
    from stemcal.cli.main import main

    sys.exit(main(args))
