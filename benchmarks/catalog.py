"""Benchmarks of the catalog: concurrent writers, and reading back 1,000 records.

Run from the repository root::

    .venv/bin/python benchmarks/catalog.py            # 1,000 records per catalog
    .venv/bin/python benchmarks/catalog.py --quick    # 100 records
    .venv/bin/python benchmarks/catalog.py --records 400 --no-postgresql

For each catalog (SQLite in a directory, and PostgreSQL behind ``stemcal
serve`` when a private PostgreSQL can be started, as in the tests), four
writer processes start together and write records as fast as they can
(each with four 64x64 images, like a calibration), through the embedded
directory or through the server with the writer key, until the catalog holds
``--records``. Then the latency of reading them back: ``calibration_history``
and ``latest_calibration`` in a process that has the catalog open, and
``stemcal history`` as a new process. Nothing is asserted: the script prints
tables (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "catalog")]  # stemcal; pg.py and servers.py

WRITERS = 4
STATE = {"camera_length": 0.2, "high_tension": 300e3, "overfocus_setting": 1e-6}
TOLERANCES = {"camera_length": 1e-3, "high_tension": 10.0}


def make_record(i: int):
    from stemcal.record import CalibrationRecord
    return CalibrationRecord(acquisition_uid=None, scan_rotation=23.5 + 1e-3 * i, flip_y=True,
                             overfocus=1.05e-6, cy=40.0, cx=41.0, quality="ok",
                             optics_state=dict(STATE), scan_pixel_size=2.5e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.01)


def record_images() -> dict:
    """The four 64x64 float32 images of a calibration record, as each record carries."""
    import numpy as np

    return {k: np.random.default_rng(0).random((64, 64), dtype=np.float32)
            for k in ("point", "selected", "shifted_sum_normalised", "sum")}


def writer(location: str, n: int, start_at: float) -> None:
    """One writer process: ``n`` records into ``location``; prints one JSON line of timings."""
    from stemcal.catalog import open_catalog, write_record
    warnings.simplefilter("ignore")
    client = open_catalog(location)
    images = record_images()
    while time.time() < start_at:  # all writers start together
        time.sleep(0.01)
    t0 = time.time()
    for i in range(n):
        write_record(client, make_record(i), images)
    print(json.dumps({"start": t0, "end": time.time(), "n": n}), flush=True)


def concurrent_writes(location: str, total: int, env: dict) -> dict:
    """Start :data:`WRITERS` writer processes together; records per second over all of them."""
    per = [total // WRITERS + (i < total % WRITERS) for i in range(WRITERS)]
    start_at = time.time() + 20  # after every process has opened the catalog
    procs = [subprocess.Popen([sys.executable, __file__, "--writer", location, str(k),
                               str(start_at)], env=env, stdout=subprocess.PIPE, text=True)
             for k in per]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a writer failed")
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {"records": total, "wall_s": wall, "per_s": total / wall}


def median_time(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_latency(location: str, env: dict) -> dict:
    from stemcal.catalog import calibration_history, latest_calibration, open_catalog
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        client = open_catalog(location)
        opened = time.perf_counter() - t
        n = len(calibration_history(client))
        hist = median_time(lambda: calibration_history(client))
        latest = median_time(lambda: latest_calibration(client, STATE, TOLERANCES))
        client.context.close()
    cli = median_time(lambda: subprocess.run(
        [sys.executable, "-m", "stemcal.cli", "history", "--catalog", location, "--limit", "10"],
        env=env, capture_output=True, check=True), repeat=3)
    return {"n": n, "open_s": opened, "history_s": hist, "latest_s": latest, "cli_history_s": cli}


def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1000, help="records per catalog")
    ap.add_argument("--quick", action="store_true", help="100 records per catalog")
    ap.add_argument("--no-postgresql", action="store_true")
    ap.add_argument("--only", choices=("embedded", "served", "postgresql"),
                    help="only this catalog (the three take about an hour at 1,000 records)")
    ap.add_argument("--writer", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.writer:
        writer(a.writer[0], int(a.writer[1]), float(a.writer[2]))
        return 0
    import pg
    from servers import Server, new_keys

    total = 100 if a.quick else a.records
    base = Path(tempfile.mkdtemp(prefix="stemcal-bench-catalog-"))
    base.chmod(0o755)  # a PostgreSQL run as another user must reach its data directory
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(base / "state")}
    os.environ["XDG_STATE_HOME"] = env["XDG_STATE_HOME"]
    print(f"catalog benchmark: {WRITERS} writers, {total} records per catalog; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    cases = [("SQLite, embedded (4 processes on the directory)", None),
             ("SQLite, through stemcal serve", "sqlite")]
    postgres = None
    if not a.no_postgresql and a.only in (None, "postgresql") and pg.unavailable_reason() is None:
        postgres = pg.start(base / "pgdata")
        cases.append(("PostgreSQL, through stemcal serve", "postgresql"))
    if a.only:
        keep = {"embedded": None, "served": "sqlite", "postgresql": "postgresql"}[a.only]
        cases = [c for c in cases if c[1] == keep]
    writes, reads = [], []
    try:
        for label, served in cases:
            d = base / f"cat-{len(writes)}"
            server = None
            wenv = dict(env)
            if served:
                storage = {"database": postgres.create_database(f"bench{len(writes)}")} \
                    if served == "postgresql" else {}
                server = Server(d, new_keys(), base / f"server-{len(writes)}.log", **storage)
                server.start()
                location = server.uri
                wenv["TILED_API_KEY"] = server.keys.writer
            else:
                location = str(d)
                from stemcal.catalog import open_catalog
                open_catalog(d).context.close()  # created before the writers start
            try:
                w = concurrent_writes(location, total, wenv)
                os.environ["TILED_API_KEY"] = wenv.get("TILED_API_KEY", "")
                r = read_latency(location, wenv)
            finally:
                if server is not None:
                    server.stop()
            writes.append([label, str(w["records"]), f"{w['wall_s']:.1f}", f"{w['per_s']:.2f}"])
            reads.append([label, str(r["n"]), f"{r['open_s']:.2f}", f"{r['history_s']:.3f}",
                          f"{r['latest_s']:.3f}", f"{r['cli_history_s']:.2f}"])
            print(f"{label}: {json.dumps({**w, **r})}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        if postgres is not None:
            postgres.stop()
    table(f"{WRITERS} writers at once", ["catalog", "records", "wall s", "records/s"], writes)
    table("reading back", ["catalog", "records", "open s", "history s", "latest s",
                           "CLI history s"], reads)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
