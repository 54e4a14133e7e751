"""``stemcal ARGS`` that kills itself or its catalog courier (SIGKILL, as ``kill -9``) at one
point: for test_kill.py.

usage: python killpoint.py POINT -- ARGS...

POINT is one of

* ``scan``: when the first acquisition announces its frames (``stream_datum``), before
  its stop document (mid-scan);
* ``fit``: when the recorder starts the fit of the record;
* ``handed``: just after the record was spooled and handed to the courier (the courier
  lives on and delivers it);
* ``recordN``: the courier (:mod:`stemcal.catalog.courier`) kills itself just before the
  N-th writing request (not GET) of the record's write to the catalog, after the record
  was spooled (N from 1); the calibrating process goes on.

Nothing in stemcal knows of this: the points are found by wrapping stemcal's
and httpx's functions from the outside, in this child process (and its courier) only.
The courier runs this file as ``killpoint.py POINT --courier COURIER-ARGS``.
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
    elif point == "handed":
        import stemcal.catalog

        write = stemcal.catalog.write_record_or_spool

        def handed(client, *args, **kwargs):  # the recorder imports it from stemcal.catalog
            out = write(client, *args, **kwargs)  # spooled and handed to the courier
            die()
            return out
        stemcal.catalog.write_record_or_spool = handed
    elif point.startswith("record"):
        from stemcal.catalog import courier

        courier_argv = courier.courier_argv

        def argv(*args, **kwargs):  # the courier runs this file, armed
            real = courier_argv(*args, **kwargs)
            rest = real[real.index(courier.MODULE) + 1:]
            return [sys.executable, __file__, point, "--courier", *rest]
        courier.courier_argv = argv
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def arm_courier(point: str) -> None:
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


if __name__ == "__main__":
    point, sep, *args = sys.argv[1:]
    if sep == "--courier":
        arm_courier(point)
        from stemcal.catalog.courier import main as courier_main

        sys.exit(courier_main(args))
    assert sep == "--", sys.argv
    arm(point)
    from stemcal.cli.main import main

    sys.exit(main(args))
