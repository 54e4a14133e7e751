"""Benchmarks of stemcal: one OverfocusUDF pass against a NumPy memmap baseline, fits, scaling,
and the live chain against LiberTEM-live's SumUDF (benchmarks/live_chain.py).

Run from the repository root::

    .venv/bin/python benchmarks/run.py            # default sizes, about 5 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # small sizes, well under a minute
    .venv/bin/python benchmarks/run.py --cases npy:64x64:256x256 mib:32x32:128x128

All data are simulated into a temporary directory (removed at the end) by a
separate process, so that the peak memory reported for this process is that of
the benchmarks, not of the simulation. Nothing is asserted: the script only
prints tables (see benchmarks/README.md for the columns).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The cases of the performance issue: 2.1 GB each.
DEFAULT_CASES = ("npy:64x64:512x512", "mib:64x64:512x512", "npy:128x128:256x256")
QUICK_CASES = ("npy:32x32:128x128", "mib:32x32:128x128", "npy:64x64:64x64")
FORMATS = ("npy", "mib")
PASS_DOSE = 5.0
FIT_DOSE = 3.0
FIT_DESCAN = ((0.03, -0.02), (0.01, 0.04))
SCALING_SIG = (128, 128)
SCALING_NAVS = ((64, 64), (128, 128))


# -- set-up -----------------------------------------------------------------------------------

def parse_case(text: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """``"npy:64x64:256x256"`` -> ``("npy", (64, 64), (256, 256))``."""
    try:
        fmt, nav, sig = text.lower().split(":")
        nav_t = tuple(int(v) for v in nav.split("x"))
        sig_t = tuple(int(v) for v in sig.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"case must look like npy:64x64:256x256, got {text!r}") from None
    if fmt not in FORMATS or len(nav_t) != 2 or len(sig_t) != 2 or min(nav_t + sig_t) < 1:
        raise argparse.ArgumentTypeError(f"case must look like {{npy,mib}}:NYxNX:SYxSX, got {text!r}")
    if min(sig_t) < 16:
        raise argparse.ArgumentTypeError(f"detector of {text!r} too small (at least 16x16)")
    return fmt, nav_t, sig_t  # type: ignore[return-value]


def case_name(fmt: str, nav: tuple[int, int], sig: tuple[int, int]) -> str:
    return f"{fmt} {nav[0]}x{nav[1]} x {sig[0]}x{sig[1]}"


def geometry(sig: tuple[int, int], descan=((0.0, 0.0), (0.0, 0.0))):
    """A realistic geometry for a ``sig`` detector: disk radius 0.3 x detector size,
    shadow-image magnification ~0.55 specimen px per detector px at 128x128."""
    from stemcal.twin.params import OverfocusParams
    det = min(sig)
    return OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9 * (det / 128), camera_length=0.2,
                           detector_pixel_size=55e-6, semiconv=0.3 * det * 55e-6 / 0.2,
                           cy=sig[0] / 2 + 3, cx=sig[1] / 2 - 2, scan_rotation=23.0, flip_y=True,
                           descan=descan)


def generate(directory: str, name: str, nav: tuple[int, int], sig: tuple[int, int], dose: float,
             descan, formats: tuple[str, ...]) -> dict[str, str]:
    """Simulate one dataset and write it in ``formats``; runs in the generator process."""
    from stemcal.twin.simulator import simulate
    from stemcal.formats import write_mib, write_npy
    data = simulate(geometry(sig, descan), nav, sig, dose=dose, dtype="uint16")
    out = {}
    for fmt in formats:
        if fmt == "npy":
            out[fmt] = str(write_npy(Path(directory) / f"{name}.npy", data))
        else:
            out[fmt] = str(write_mib(Path(directory) / f"{name}.mib", data))  # returns the .hdr
    return out


def generate_large(directory: str, name: str, nav: tuple[int, int], sig: tuple[int, int],
                   dose: float, strip_rows: int = 8) -> str:
    """A large ``.npy`` written strip by strip: one simulated strip of ``strip_rows`` scan
    rows repeated down the scan (the content only has to be realistic, not unique)."""
    from stemcal.twin.simulator import simulate
    strip_rows = min(strip_rows, nav[0])
    strip = simulate(geometry(sig), (strip_rows, nav[1]), sig, dose=dose, dtype="uint16")
    path = Path(directory) / f"{name}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=nav + sig)
    for y in range(0, nav[0], strip_rows):
        rows = min(strip_rows, nav[0] - y)
        out[y:y + rows] = strip[:rows]
    out.flush()
    del out
    return str(path)


def remove_case(paths: dict[str, str]) -> None:
    """Delete a case's files (``.npy``; ``.hdr`` with its ``.mib``)."""
    for path in paths.values():
        for p in (Path(path), Path(path).with_suffix(".mib")):
            p.unlink(missing_ok=True)


# -- measurements -----------------------------------------------------------------------------

def best_of(fn, repeat: int, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def frames_memmap(path: str, fmt: str) -> np.ndarray:
    """The frames of a file as a read-only (n, sy, sx) memmap, header bytes skipped."""
    if fmt == "npy":
        arr = np.load(path, mmap_mode="r")
        return arr.reshape((-1,) + arr.shape[-2:])
    mib = Path(path).with_suffix(".mib")
    with open(mib, "rb") as fh:
        head = fh.read(512).split(b",")  # MQ1,seq,header size,chips,width,height,pixel type,...
    header, width, height = int(head[2]), int(head[4]), int(head[5])
    pixel = {b"U08": ">u1", b"U16": ">u2", b"U32": ">u4"}[head[6].upper()]
    frame = np.dtype([("header", f"V{header}"), ("pixels", pixel, (height, width))])
    return np.memmap(mib, dtype=frame, mode="r")["pixels"]


def baseline_pass(frames: np.ndarray, chunk_bytes: int = 32 * 2**20) -> np.ndarray:
    """Sum all frames into one float64 frame, reading ``chunk_bytes`` of frames at a time."""
    n = max(1, chunk_bytes // (frames[0].size * frames.dtype.itemsize))
    acc = np.zeros(frames.shape[1:], dtype=np.float64)
    for i in range(0, len(frames), n):
        acc += frames[i:i + n].sum(axis=0, dtype=np.float64)
    return acc


def udf_pass(ctx, ds, params) -> None:
    from stemcal.processing.udf import OverfocusUDF
    ctx.run_udf(dataset=ds, udf=OverfocusUDF(params))


def angle_error(a: float, b: float) -> float:
    return (a - b + 180.0) % 360.0 - 180.0


# -- output -----------------------------------------------------------------------------------

def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Print a plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]

    def line(cells):
        out = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "-" * len(line(headers))
    print(f"\n{title}\n{rule}\n{line(headers)}\n{rule}")
    for r in rows:
        print(line(r))
    print(rule, flush=True)


def cpu_model() -> str:
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    import libertem
    import numba

    import stemcal
    try:
        import dask
        dask_v = dask.__version__
    except ImportError:  # pragma: no cover
        dask_v = "-"
    return (f"stemcal {stemcal.__version__}, libertem {libertem.__version__}, "
            f"numba {numba.__version__}, numpy {np.__version__}, dask {dask_v}, "
            f"python {platform.python_version()}")


def load_average() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "-"


def peak_rss_gb(who) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


# -- the benchmarks ---------------------------------------------------------------------------

def bench_passes(cases, files, executors, contexts, repeat):
    from stemcal.formats import open_dataset
    rows = []
    load_before = load_average()
    for fmt, nav, sig in cases:
        path = files[(nav, sig)][fmt]
        frames = frames_memmap(path, fmt)
        n = len(frames)
        nbytes = frames.size * frames.dtype.itemsize
        t_base = best_of(lambda f=frames: baseline_pass(f), repeat)  # warm-up warms the page cache
        del frames
        params = geometry(sig)
        for ex in executors:
            ctx = contexts[ex]
            ds = open_dataset(ctx, path)
            t = best_of(lambda: udf_pass(ctx, ds, params), repeat)
            rows.append([case_name(fmt, nav, sig), ex, f"{t:.3f}", f"{t_base:.3f}",
                         f"{t / t_base:.2f}", f"{n / t:,.0f}", f"{nbytes / t / 1e9:.2f}",
                         f"{nbytes / t_base / 1e9:.2f}"])
            print(f"  ... {rows[-1][0]}, {ex}: {t:.3f} s", file=sys.stderr, flush=True)
    table(f"one pass: OverfocusUDF over the whole file vs a NumPy memmap frame sum "
          f"(best of {repeat}, after 1 warm-up)",
          ["case", "executor", "stemcal s", "baseline s", "ratio", "frames/s", "GB/s",
           "baseline GB/s"], rows)
    print(f"  load average (1/5/15 min) before {load_before}, after {load_average()}: other work "
          f"on the machine makes the two-thread passes slower than the one-thread baseline")


def warmup_fit():
    """A tiny refine and cold start on an in-memory array (compiles whatever Numba has not cached)."""
    from stemcal.fit import refine
    from stemcal.fit.coarse import cold_start
    from stemcal.twin.simulator import simulate
    sig = (64, 64)
    truth = geometry(sig, FIT_DESCAN)
    data = simulate(truth, (16, 16), sig, dose=20)
    for fn in (lambda: refine(data, truth.replace(scan_rotation=truth.scan_rotation + 1)),
               lambda: cold_start(data, scan_pixel_size=truth.scan_pixel_size,
                                  camera_length=truth.camera_length,
                                  detector_pixel_size=truth.detector_pixel_size,
                                  overfocus=truth.overfocus)):
        try:
            fn()
        except Exception as exc:  # only compilation matters here, not the result
            print(f"  (warm-up fit: {type(exc).__name__}: {exc})", file=sys.stderr)


def bench_fit(path, nav, sig, ctx):
    from stemcal.fit import refine
    from stemcal.fit.coarse import cold_start
    from stemcal.formats import open_dataset
    truth = geometry(sig, FIT_DESCAN)
    warmup_fit()
    baseline_pass(frames_memmap(path, "npy"))  # a warm page cache, as for the passes
    ds = open_dataset(ctx, path)
    one_pass = best_of(lambda: udf_pass(ctx, ds, truth), 3)  # the baseline: one raw pass
    start = truth.replace(scan_rotation=truth.scan_rotation + 3.0, overfocus=truth.overfocus * 1.08)
    rows = []
    runs = [("refine", "rot +3 deg, overfocus +8 %; flip, centre, descan right",
             lambda: refine(ds, start, ctx=ctx)),
            ("cold_start", "sizes + overfocus guess x1.3 only",
             lambda: cold_start(ds, ctx=ctx, scan_pixel_size=truth.scan_pixel_size,
                                camera_length=truth.camera_length,
                                detector_pixel_size=truth.detector_pixel_size,
                                overfocus=1.3 * truth.overfocus))]
    notes = []
    for name, what, fn in runs:
        t0 = time.perf_counter()
        fit = fn()
        wall = time.perf_counter() - t0
        p = fit.params
        centre = "given" if name == "refine" else f"{math.hypot(p.cy - truth.cy, p.cx - truth.cx):.3f}"
        rows.append([name, f"{wall:.2f}", f"{wall / one_pass:.1f}", str(fit.passes), str(fit.nfev),
                     f"{angle_error(p.scan_rotation, truth.scan_rotation):+.3f}",
                     f"{100 * (p.overfocus / truth.overfocus - 1):+.3f}", centre,
                     "ok" if p.flip_y == truth.flip_y else "WRONG", fit.quality])
        notes.append(f"  {name}: {what}")
        print(f"  ... {name}: {wall:.2f} s", file=sys.stderr, flush=True)
    table(f"fit: {nav[0]}x{nav[1]} scan x {sig[0]}x{sig[1]} detector, {FIT_DOSE:g} counts/px, "
          f"descan {FIT_DESCAN}, inline executor, one run each",
          ["method", "wall s", "x one pass", "raw passes", "nfev", "rot err deg", "overfocus err %",
           "centre err px", "flip", "quality"], rows)
    print("\n".join(notes))
    print(f"  one pass: an OverfocusUDF pass over the same file, {one_pass:.3f} s (best of 3); "
          "targets: refine <= 1 s, cold_start <= 2 s")
    t_ref, t_cold = float(rows[0][1]), float(rows[1][1])
    print(f"  cold_start / refine time: {t_cold / t_ref:.2f}")


def bench_scaling(paths, ctx, repeat):
    from stemcal.formats import open_dataset
    times = []
    for nav, path in zip(SCALING_NAVS, paths):
        ds = open_dataset(ctx, path)
        params = geometry(SCALING_SIG)
        # short passes (0.1 s): more repetitions, so that the best is not one noisy sample
        times.append(best_of(lambda: udf_pass(ctx, ds, params), 3 * repeat))
    (a, b), (ta, tb) = SCALING_NAVS, times
    ideal = math.prod(b) / math.prod(a)
    print(f"\nscaling (inline, {SCALING_SIG[0]}x{SCALING_SIG[1]} detector, best of {3 * repeat}): "
          f"scan {a[0]}x{a[1]} {ta:.3f} s, {b[0]}x{b[1]} {tb:.3f} s, "
          f"time ratio {tb / ta:.2f} (ideal {ideal:g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--cases", nargs="+", type=parse_case, metavar="FMT:NYxNX:SYxSX",
                    help=f"one-pass cases (default {' '.join(DEFAULT_CASES)}; "
                         f"--quick: {' '.join(QUICK_CASES)})")
    ap.add_argument("--executors", nargs="+", choices=("inline", "dask"), default=["inline", "dask"])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best taken (default 3)")
    ap.add_argument("--no-fit", action="store_true", help="skip the fit table")
    ap.add_argument("--no-scale", action="store_true",
                    help="skip the scale table (benchmarks/scale.py; it writes an 8.6 GB file)")
    ap.add_argument("--dir", default=None, help="where to write the data (default: system temp)")
    ap.add_argument("--no-live", action="store_true",
                    help="skip the live chain (benchmarks/live_chain.py)")
    ap.add_argument("--live-scans", nargs="+", metavar="NYxNX", default=None,
                    help="scans of the live chain (default 64x64 128x128; --quick: 32x32)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    cases = args.cases or [parse_case(c) for c in (QUICK_CASES if args.quick else DEFAULT_CASES)]
    # The fit case of the performance issue: 64x64 scan x 128x128 frames.
    fit_nav, fit_sig = ((32, 32), (128, 128)) if args.quick else ((64, 64), (128, 128))

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("stemcal benchmarks")
    print(f"machine   {ncpu} cores ({cpu_model()}), "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{platform.system()} {platform.release()}")
    print(f"versions  {versions()}")
    print(f"data      simulated uint16, {PASS_DOSE:g} counts/px (passes); geometry: overfocus 1 um, "
          f"camera length 0.2 m, 55 um pixels, disk radius 0.3 x detector, scan rotation 23 deg, "
          f"flip_y", flush=True)

    with tempfile.TemporaryDirectory(prefix="stemcal-bench-", dir=args.dir) as tmp:
        # Simulate in a child process (the simulator holds float64 copies of the whole array).
        t0 = time.perf_counter()
        jobs = {}
        shapes: dict = {}
        for fmt, nav, sig in cases:
            shapes.setdefault((nav, sig), set()).add(fmt)
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            for i, ((nav, sig), fmts) in enumerate(shapes.items()):
                jobs[(nav, sig)] = pool.submit(generate, tmp, f"case{i}", nav, sig, PASS_DOSE,
                                               ((0.0, 0.0), (0.0, 0.0)), tuple(sorted(fmts)))
            if not args.no_fit:
                jobs["fit"] = pool.submit(generate, tmp, "fit", fit_nav, fit_sig, FIT_DOSE,
                                          FIT_DESCAN, ("npy",))
            for nav in SCALING_NAVS:
                jobs[("scaling", nav)] = pool.submit(generate, tmp, f"scale{nav[0]}x{nav[1]}", nav,
                                                     SCALING_SIG, PASS_DOSE, ((0.0, 0.0), (0.0, 0.0)), ("npy",))
            files = {k: f.result() for k, f in jobs.items()}
        print(f"(data simulated and written in {time.perf_counter() - t0:.1f} s)", flush=True)

        from stemcal.executors import make_context
        contexts = {}
        try:
            for ex in ["inline"] + [e for e in args.executors if e != "inline"]:
                contexts[ex] = make_context(ex)
            bench_passes(cases, files, args.executors, contexts, args.repeat)
            # Free the page cache the pass files hold: on a 24 GiB machine the files of a
            # full run do not all fit, and evicted pages would be read from disk again.
            for nav, sig in shapes:
                remove_case(files[(nav, sig)])
            if not args.no_fit:
                bench_fit(files["fit"]["npy"], fit_nav, fit_sig, contexts["inline"])
            bench_scaling([files[("scaling", nav)]["npy"] for nav in SCALING_NAVS],
                          contexts["inline"], args.repeat)
            if not args.no_scale:
                remove_case(files["fit"])
                import scale
                scale.bench_scale([(32, 32), (64, 64)] if args.quick else scale.DEFAULT_SCANS,
                                  args.repeat, tmp)
        finally:
            for ctx in contexts.values():
                ctx.close()
        if not args.no_live:
            import live_chain
            scans = [live_chain.parse_scan(v) for v in args.live_scans] if args.live_scans \
                else ([(32, 32)] if args.quick else list(live_chain.DEFAULT_SCANS))
            live_chain.bench_live(scans, live_chain.PROTOCOLS, args.repeat, tmp)

    print(f"\npeak RSS  this process {peak_rss_gb(resource.RUSAGE_SELF):.2f} GB; largest child "
          f"process (data simulation, dask workers) {peak_rss_gb(resource.RUSAGE_CHILDREN):.2f} GB")
    print(f"total wall time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
