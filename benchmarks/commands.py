"""What the operator waits for around the fit: each command as a new process.

Run from the repository root::

    .venv/bin/python benchmarks/commands.py            # (make bench runs it)
    .venv/bin/python benchmarks/commands.py --repeat 5

Each row is a command run as a new process (``python -m stemcal.cli ...``), the median
wall time of ``--repeat`` runs after one untimed run, beside the baseline measured in the
same run: a bare interpreter (``python -c pass``) for the commands, and for ``fit`` the
fit's own time (``seconds`` of its JSON), so that ``fit beyond the fit`` is what the
process costs around it; ``calibrate beyond the scan`` subtracts each run's scan (its
acquisition run's start to stop document, read from the catalog afterwards), once without
spares (``STEMCAL_COURIER_SPARE=0 STEMCAL_COMMAND_SPARE=0``: every run imports for itself
and starts its own courier, as the first command does), once with a spare courier waiting
only (:mod:`stemcal.catalog.spare`) and twice with both spares, the courier's and the
command's (:mod:`stemcal.cli.spare`; each run claims the spares the run before left): one
run right after another (the spares still import while the next run starts) and each
run once they wait (as after a pause of a few seconds; the wait is not timed). ``fit``
runs without and with a spare command process waiting. The catalog is a fresh embedded one in a temporary
directory, holding the records that ``calibrate`` writes; the data file a 64x64 scan of 128x128
frames (3 counts/px, descan) as in ``run.py``'s fit rows. Nothing is asserted.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from run import FIT_DESCAN, FIT_DOSE, geometry, load_average, table  # noqa: E402


def timed(args: list[str], env: dict, repeat: int, before=None) -> tuple[float, list[str], list[float]]:
    """Median wall time (s) of ``repeat`` runs after one untimed run, each run's stdout and
    wall time; ``before()``, untimed, before each run."""
    def once() -> tuple[float, str]:
        if before is not None:
            before()
        t0 = time.perf_counter()
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - t0
        if out.returncode not in (0,):
            raise RuntimeError(f"{' '.join(args)} exited {out.returncode}: {out.stderr[-500:]}")
        return took, out.stdout
    once()
    runs = [once() for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), [s for _, s in runs], [t for t, _ in runs]


def scan_seconds(catalog: str, acquisition_uids: list[str]) -> list[float]:
    """Start to stop of each acquisition run (its documents' times): the scan itself."""
    from stemcal.catalog.store import open_catalog
    client = open_catalog(catalog, create=False)
    mds = [client[uid].metadata for uid in acquisition_uids]
    return [float(md["stop"]["time"] - md["start"]["time"]) for md in mds]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per row (default 3)")
    args = ap.parse_args(argv)
    py = [sys.executable]
    cli = py + ["-m", "stemcal.cli"]
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="stemcal-bench-commands-") as tmp:
        env = {**os.environ, "XDG_DATA_HOME": f"{tmp}/data", "XDG_CONFIG_HOME": f"{tmp}/config",
               "STEMCAL_CATALOG": f"{tmp}/catalog", "MPLBACKEND": "Agg"}
        env.pop("STEMCAL_CONFIG", None)
        rows = []
        base, _, _ = timed(py + ["-c", "pass"], env, args.repeat)
        rows.append(["python -c pass", f"{base:.2f}", "-", "1.00", "-"])
        t, _, _ = timed(cli + ["--help"], env, args.repeat)
        rows.append(["stemcal --help", f"{t:.2f}", "python", f"{t / base:.1f}", "instant"])
        # calibrate without spares (a first command), with a spare courier only, then with
        # both spares (the courier's and the command's): each run claims the spares the run
        # before left, right after it (still importing: they compete with the run) and once
        # they wait (as after a pause of a few seconds; the wait is untimed)
        from stemcal.catalog.spare import COURIER
        from stemcal.cli.spare import COMMAND
        from stemcal.spares import dismiss, spare_waiting

        def spares_ready(run_env: dict) -> None:
            """Wait until the spares that are on in ``run_env`` listen."""
            courier = run_env.get("STEMCAL_COURIER_SPARE") != "0"
            command = run_env.get("STEMCAL_COMMAND_SPARE") != "0"
            end = time.monotonic() + 30
            while time.monotonic() < end and not (
                    (not courier or spare_waiting(COURIER, run_env))
                    and (not command or spare_waiting(COMMAND, run_env))):
                time.sleep(0.05)

        for label, courier, command, wait in (
                (" (no spares)", "0", "0", False),
                (" (a spare courier waiting)", "", "0", True),
                (" (spares, one after another)", "", "", False),
                (" (spares waiting)", "", "", True)):
            run_env = {**env, "STEMCAL_COURIER_SPARE": courier, "STEMCAL_COMMAND_SPARE": command}
            ready = (lambda e=run_env: spares_ready(e)) if wait else None
            t, outs, walls = timed(cli + ["calibrate", "--json", "--no-progress"], run_env,
                                   args.repeat, before=ready)
            uid = json.loads(outs[-1])["uid"]
            scans = scan_seconds(env["STEMCAL_CATALOG"],
                                 [json.loads(o)["acquisition_uid"] for o in outs])
            beyond = statistics.median(w - s for w, s in zip(walls, scans))
            rows.append([f"stemcal calibrate{label} (sim 40x40, 96x96)", f"{t:.2f}", "python",
                         f"{t / base:.1f}", "-"])
            rows.append(["  its scan (start to stop document)",
                         f"{statistics.median(scans):.2f}", "-", "-", "-"])
            rows.append([f"stemcal calibrate{label} beyond the scan", f"{beyond:.2f}", "python",
                         f"{beyond / base:.1f}", "<= 3 s"])
        for kind in (COURIER, COMMAND):   # the spares the last run left
            dismiss(kind, run_env)
        for name, extra in (("history", []), ("history --json", ["--json"]),
                            ("show UID", [uid]), ("export UID", [uid])):
            cmd = name.split()[0]
            t, _, _ = timed(cli + [cmd] + extra, env, args.repeat)
            rows.append([f"stemcal {name} ({args.repeat + 1} records)", f"{t:.2f}", "python",
                         f"{t / base:.1f}", "<= 1 s"])
        from stemcal.formats import write_npy
        from stemcal.twin import simulate
        truth = geometry((128, 128), FIT_DESCAN)
        path = write_npy(Path(tmp) / "scan.npy", simulate(truth, (64, 64), (128, 128),
                                                          dose=FIT_DOSE, dtype="uint16", seed=2))
        fit_cmd = cli + ["fit", str(path), "--scan-pixel-size", str(truth.scan_pixel_size),
                         "--camera-length", str(truth.camera_length), "--detector-pixel-size",
                         str(truth.detector_pixel_size), f"--overfocus={1.3 * truth.overfocus}",
                         "--json"]
        for label, command in (("", "0"), (" (a spare waiting)", "")):
            fit_env = {**env, "STEMCAL_COURIER_SPARE": "0", "STEMCAL_COMMAND_SPARE": command}
            ready = ((lambda e=fit_env: spares_ready(e)) if command != "0" else None)
            t, outs, _ = timed(fit_cmd, fit_env, args.repeat, before=ready)
            fit_s = statistics.median(json.loads(o)["seconds"] for o in outs)
            rows.append([f"stemcal fit{label} (cold start, 64x64 x 128x128)", f"{t:.2f}",
                         "its fit", f"{t / fit_s:.2f}", "-"])
            rows.append([f"stemcal fit{label} beyond the fit", f"{t - fit_s:.2f}", "python",
                         f"{(t - fit_s) / base:.1f}", "<= 1 s"])
        dismiss(COMMAND, env)
    table(f"commands: median of {args.repeat} new processes after one untimed run "
          f"(catalog: embedded, fresh)",
          ["command", "wall s", "baseline", "ratio", "target"], rows)
    print(f"  load average (1/5/15 min) before {before}, after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
