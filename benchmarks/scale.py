"""Scale: one OverfocusUDF pass at 64x64, 128x128 and 256x256 scans of 256x256 frames,
inline and through a dask cluster of 2 local workers, with peak memory.

Run from the repository root (``make bench`` runs it through ``benchmarks/run.py``)::

    .venv/bin/python benchmarks/scale.py                  # 64x64 128x128 256x256
    .venv/bin/python benchmarks/scale.py --scans 64x64 --repeat 2

Each scan is one ``.npy`` of uint16 frames (one simulated strip of scan rows
repeated; 8.6 GB at 256x256), written by a child process and removed after
its rows. Every timing runs in a freshly spawned process, so that its peak
memory (``VmHWM``, file pages it mapped included) is the case's own:

* ``baseline``: a NumPy memmap of the frames summed into one float64 frame,
  32 MiB at a time (the least work any full-data reduction can do);
* ``inline``: ``ctx.run_udf(ds, OverfocusUDF(params))`` on LiberTEM's inline executor;
* ``dask``: the same on ``Context.make_with("dask", cpus=2)``, a local cluster of
  two single-threaded workers; peak memory is the driving process's plus
  each worker's (read in the workers, reset before the timed passes).

Each case runs once untimed (the page cache, Numba), then ``--repeat`` times;
the best is printed, and the ratio to the baseline of the same scan in the
same run. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from live_chain import parse_scan, peak_gb, reset_peak  # noqa: E402
from run import best_of  # noqa: E402

SIG = (256, 256)
DEFAULT_SCANS = ((64, 64), (128, 128), (256, 256))
DOSE = 5.0
#: Workers of the dask row (one thread each).
DASK_WORKERS = 2








def time_baseline(path: str, repeat: int) -> tuple[float, float]:
    """(best seconds, peak RSS GB) of the memmap frame sum; runs in a fresh process."""
    import numpy as np
    from run import baseline_pass
    frames = np.load(path, mmap_mode="r")
    frames = frames.reshape((-1,) + frames.shape[-2:])
    reset_peak()
    return best_of(lambda: baseline_pass(frames), repeat), peak_gb()


def time_pass(path: str, executor: str, repeat: int) -> tuple[float, float]:
    """(best seconds, peak RSS GB) of one OverfocusUDF pass; runs in a fresh process.

    ``executor`` ``"dask"``: a local cluster of :data:`DASK_WORKERS` workers; the peak is
    this process's plus every worker's.
    """
    from libertem.api import Context

    from run import geometry, udf_pass
    from stemcal.formats import open_dataset
    ctx = (Context.make_with("inline") if executor == "inline"
           else Context.make_with("dask", cpus=DASK_WORKERS))
    try:
        ds = open_dataset(ctx, path)
        params = geometry(SIG)
        udf_pass(ctx, ds, params)   # untimed: Numba, page cache
        client = getattr(ctx.executor, "client", None)
        reset_peak()
        if client is not None:
            client.run(reset_peak)
        t = best_of(lambda: udf_pass(ctx, ds, params), repeat)
        peak = peak_gb()
        if client is not None:
            peak += sum(client.run(peak_gb).values())
        return t, peak
    finally:
        ctx.close()


def _in_fresh_process(fn, *args):
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def bench_scale(scans, repeat: int, directory: str) -> list[list[str]]:
    """Write each scan, time the baseline and both executors, print and return the rows."""
    from run import generate_large, table
    rows = []
    for nav in scans:
        path = _in_fresh_process(generate_large, directory, f"wide{nav[0]}x{nav[1]}", nav, SIG,
                                 DOSE)
        try:
            n = nav[0] * nav[1]
            nbytes = n * SIG[0] * SIG[1] * 2
            t_base, rss_base = _in_fresh_process(time_baseline, path, repeat)
            name = f"{nav[0]}x{nav[1]} x {SIG[0]}x{SIG[1]}"
            rows.append([name, "baseline", f"{t_base:.3f}", "1.00", f"{n / t_base:,.0f}",
                         f"{nbytes / 1e9:.1f}", f"{rss_base:.2f}"])
            for executor in ("inline", "dask"):
                t, rss = _in_fresh_process(time_pass, path, executor, repeat)
                rows.append([name, executor, f"{t:.3f}", f"{t / t_base:.2f}", f"{n / t:,.0f}",
                             f"{nbytes / 1e9:.1f}", f"{rss:.2f}"])
                print(f"  ... {name}, {executor}: {t:.3f} s", file=sys.stderr, flush=True)
        finally:
            Path(path).unlink(missing_ok=True)
    table(f"scale: one OverfocusUDF pass vs the NumPy memmap frame sum, 256x256 uint16 frames "
          f"(best of {repeat}, after 1 warm-up; each in a fresh process)",
          ["scan", "executor", "s", "ratio", "frames/s", "file GB", "peak RSS GB"], rows)
    print(f"  dask: Context.make_with('dask', cpus={DASK_WORKERS}), a local cluster of "
          f"{DASK_WORKERS} workers; its peak RSS adds the driving process and every worker. "
          f"Peak RSS counts the file pages a process mapped (the baseline maps the whole file)")
    return rows




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", nargs="+", type=parse_scan, default=list(DEFAULT_SCANS),
                    metavar="NYxNX", help="scans (default 64x64 128x128 256x256)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best taken")
    ap.add_argument("--dir", default=None, help="where the data go (default: system temp)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stemcal-scale-", dir=args.dir) as tmp:
        bench_scale(args.scans, args.repeat, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
