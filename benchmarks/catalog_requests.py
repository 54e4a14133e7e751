"""What one catalog request costs: tiled's dependency override resolved once, or per request.

Run from the repository root (make bench runs it)::

    .venv/bin/python benchmarks/catalog_requests.py [--records 30] [--rounds 3]

Two embedded catalogs in one process, each opened by ``open_catalog``: one as stemcal
opens it (``stemcal.catalog.overrides.resolve_overrides``: the settings override put
into the route dependants once), the baseline with the override left to FastAPI
(``STEMCAL_RESOLVE_OVERRIDES=0`` while it opens; FastAPI then rebuilds every
sub-dependency of every request). Rounds alternate between them:
write ``--records`` calibration records (four 64x64 images each, as
benchmarks/catalog.py writes them), then read them all back with
``calibration_history``. Prints a table (writes: the best round of each; the history:
the last round's, when both catalogs hold the same records), with the ratio to the
baseline. Nothing is asserted (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

#: Requests of one record write, counted in the warm-up round.
COUNTED: list[int] = []


def open_pair(base: Path):
    """(stemcal's client, baseline client) of two new embedded catalogs under ``base``."""
    from stemcal.catalog import open_catalog
    from stemcal.catalog.overrides import ENV

    ours = open_catalog(base / "resolved")
    os.environ[ENV] = "0"                # the baseline: FastAPI's own pass
    try:
        plain = open_catalog(base / "plain")
    finally:
        del os.environ[ENV]
    return ours, plain


def count_requests(client) -> int:
    """Requests one record write makes (httpx's send counted)."""
    import httpx
    from catalog import make_record, record_images
    from stemcal.catalog.store import write_record

    sent = []
    send = httpx.Client.send

    def counting(self, request, *args, **kwargs):
        sent.append(request.method)
        return send(self, request, *args, **kwargs)

    httpx.Client.send = counting
    try:
        write_record(client, make_record(10**6), record_images())
    finally:
        httpx.Client.send = send
    return len(sent)


def one_round(client, records: int, first: int) -> tuple[float, float]:
    """Seconds per record written, and seconds for one history read of all of them."""
    from catalog import make_record, record_images
    from stemcal.catalog.queries import calibration_history
    from stemcal.catalog.store import write_record

    images = record_images()
    t0 = time.perf_counter()
    for i in range(records):
        write_record(client, make_record(first + i), images)
    write_s = (time.perf_counter() - t0) / records
    t0 = time.perf_counter()
    calibration_history(client)
    return write_s, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=30, help="records written per round")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    base = Path(tempfile.mkdtemp(prefix="stemcal-bench-requests-"))
    os.environ["XDG_STATE_HOME"] = str(base / "state")
    try:
        ours, plain = open_pair(base)
        per_record = count_requests(ours)
        count_requests(plain)      # the same records in both
        load0 = os.getloadavg()
        results = {"resolved": [], "plain": []}
        for r in range(a.rounds + 1):                   # the first round warms both up
            for name, client in (("plain", plain), ("resolved", ours)):
                w, h = one_round(client, a.records, r * a.records)
                if r:
                    results[name].append((w, h))
        load1 = os.getloadavg()
        ours.context.close()
        plain.context.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # writes: the best round; the history read: the last round (both catalogs then hold n)
    best = {k: (min(x[0] for x in v), v[-1][1]) for k, v in results.items()}
    n = (a.rounds + 1) * a.records + 1
    print(f"\ncatalog requests: embedded catalog, one process, {a.rounds} alternating rounds "
          f"after 1 warm-up ({a.records} records each; writes: best round)")
    print("-" * 96)
    print(f"{'overrides':<40}{'ms/record':>12}{'ratio':>8}{f'history of {n} ms':>22}{'ratio':>8}")
    print("-" * 96)
    for name, label in (("plain", "left to FastAPI (baseline)"),
                        ("resolved", "resolved once (stemcal)")):
        w, h = best[name]
        print(f"{label:<40}{1e3 * w:>12.1f}{w / best['plain'][0]:>8.2f}{1e3 * h:>22.1f}"
              f"{h / best['plain'][1]:>8.2f}")
    print("-" * 96)
    print(f"  load average (1/5/15 min) before {'/'.join(f'{v:.2f}' for v in load0)}, "
          f"after {'/'.join(f'{v:.2f}' for v in load1)}; a record is {per_record} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
