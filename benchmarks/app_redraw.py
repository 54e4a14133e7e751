"""Redraw time of the app (``stemcal app``) after a change of the rotation.

Run from the repository root::

    .venv/bin/python benchmarks/app_redraw.py            # 64x64 scan of 128x128 frames
    .venv/bin/python benchmarks/app_redraw.py --quick    # 32x32 scan of 64x64 frames

A simulated dataset (3 counts/px, descan) is written to a temporary ``.npy``
and loaded into the app as ``stemcal app`` does (one pass into the reduced
cache). Two tables follow (benchmarks/README.md, "app redraw"):

* **server**: the re-projection of the cache alone (``CacheProjector.project``),
  a preview and all cached frames, against the baseline of one OverfocusUDF
  pass over the raw data (what a redraw would cost without the cache);
* **page**: the app served on 127.0.0.1 and opened in headless Chromium (if
  installed, with Playwright); a rotation is set in the page as a slider drag
  does (a preview) and as a typed value or a released slider does (all
  frames), and the time is taken until the new image is in the page and until
  it is painted (two animation frames later).

Nothing is asserted: the script only prints tables.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from run import best_of, cpu_model, load_average, table, udf_pass, versions

REPO = Path(__file__).resolve().parents[1]

# Set a model's attribute in the page; resolve when the model ``watch`` changes (the server's
# answer) and again two animation frames later (painted). Milliseconds from the change.
JS_TIMED_CHANGE = """async ([name, attr, value, watch]) => {
    const doc = Bokeh.documents[0];
    const watched = doc.get_model_by_name(watch);
    return await new Promise((resolve) => {
        const t0 = performance.now();
        const done = () => {
            watched.change.disconnect(done);
            const t1 = performance.now();
            requestAnimationFrame(() => requestAnimationFrame(() =>
                resolve([t1 - t0, performance.now() - t0])));
        };
        watched.change.connect(done);
        doc.get_model_by_name(name)[attr] = value;
    });
}"""


def simulated(directory: Path, nav: tuple[int, int], sig: tuple[int, int]):
    """A dataset file and its true geometry."""
    from stemcal.formats import write_npy
    from stemcal.twin import OverfocusParams, simulate
    truth = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9 * sig[0] / 128,
                            camera_length=0.2, detector_pixel_size=55e-6,
                            semiconv=0.3 * sig[0] * 55e-6 / 0.2, cy=sig[0] / 2 + 3.3,
                            cx=sig[1] / 2 - 2.7, scan_rotation=23.5, flip_y=True,
                            descan=((0.03, -0.02), (0.01, 0.04)))
    path = write_npy(directory / "scan.npy", simulate(truth, nav, sig, dose=3.0, seed=0))
    return path, truth


def stats(ms: list[float]) -> tuple[str, str]:
    """Median and 90th percentile, milliseconds."""
    return f"{np.median(ms):.1f}", f"{np.percentile(ms, 90):.1f}"


def server_side(app, truth, repeat: int) -> tuple[list[list[str]], float]:
    """Re-projection times of the cache, and the raw pass baseline (seconds)."""
    projector = app.loaded.projector
    source = app.loaded.source
    rows, times, cpu = [], {}, {}
    for preview in (True, False):
        projector.project(truth, preview=preview)  # warm
        times[preview], cpu[preview] = [], []
        for k in range(repeat):
            c0 = time.process_time()  # all threads of this process: the projection's two
            shown = projector.project(truth.replace(scan_rotation=truth.scan_rotation + 0.37 * k),
                                      preview=preview)
            cpu[preview].append(1e3 * (time.process_time() - c0))
            times[preview].append(1e3 * shown.seconds)
    raw = best_of(lambda: udf_pass(app.ctx, source.dataset, truth), 3)
    cache = projector.cache
    for preview in (True, False):
        frames = len(cache.subsample(projector.preview_step).frames if preview else cache.frames)
        rows.append(["preview (drag)" if preview else "all frames (release, typed)", str(frames),
                     *stats(times[preview]), f"{np.median(cpu[preview]):.1f}",
                     f"{1e3 * raw:.0f}", f"{np.median(times[preview]) / 1e3 / raw:.2f}"])
    return rows, raw


def in_the_page(app, truth, repeat: int, raw: float) -> list[list[str]]:
    """Times from a change in Chromium to the new image in the page, and painted."""
    sys.path.insert(0, str(REPO / "tests" / "app"))
    from chromium import launch, wait_drawn, wait_ready
    from playwright.sync_api import sync_playwright

    from stemcal.app import AppServer
    server = AppServer(app).start()
    rows = []
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(server.url)
            wait_ready(page)
            wait_drawn(page)
            adjust = app.pages[-1].adjust
            for preview in (True, False):
                name, watch = (("scan_rotation", "adjust_shifted_sum") if preview
                               else ("scan_rotation_field", "drawn"))
                data, painted, server_ms = [], [], []
                for k in range(repeat + 1):
                    value = round(truth.scan_rotation + (0.21 if preview else -0.19) * (k + 1), 2)
                    before = adjust.shown_count
                    t_data, t_paint = page.evaluate(JS_TIMED_CHANGE, [name, "value", value, watch])
                    adjust.worker.wait_idle(30)
                    if k == 0:
                        continue  # the first change of each kind is a warm-up
                    data.append(t_data)
                    painted.append(t_paint)
                    new = adjust.shown_count - before
                    server_ms += [1e3 * s for _, _, s in list(adjust.shown)[-new:]] if new else []
                rows.append(["preview (slider dragged)" if preview
                             else "all frames (field typed)",
                             *stats(server_ms), *stats(data), *stats(painted),
                             f"{np.median(painted) / 1e3 / raw:.2f}"])
            browser.close()
    finally:
        server.stop()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32x32 scan of 64x64 frames")
    ap.add_argument("--repeat", type=int, default=20, help="changes timed per kind (default 20)")
    args = ap.parse_args(argv)
    nav, sig = ((32, 32), (64, 64)) if args.quick else ((64, 64), (128, 128))
    print(f"stemcal app redraw: {nav[0]}x{nav[1]} scan of {sig[0]}x{sig[1]} frames")
    print(f"machine: {cpu_model()}, load average {load_average()}")
    print(versions())
    from stemcal.app import Sizes, StemcalApp
    with tempfile.TemporaryDirectory(prefix="stemcal-bench-app-") as tmp:
        path, truth = simulated(Path(tmp), nav, sig)
        app = StemcalApp(catalog=Path(tmp) / "catalog")
        t0 = time.perf_counter()
        app.open_file(path, Sizes(truth.scan_pixel_size, truth.camera_length,
                                  truth.detector_pixel_size, truth.overfocus))
        cache = app.loaded.projector.cache
        print(f"cache: {len(cache.frames)} frames of {cache.frames.shape[1]}x"
              f"{cache.frames.shape[2]} (bin {cache.bin}), {cache.nbytes / 2**20:.0f} MiB, "
              f"read in {time.perf_counter() - t0:.1f} s")
        rows, raw = server_side(app, truth, args.repeat)
        table("server: re-projection of the cache (ms) against one raw OverfocusUDF pass",
              ["redraw", "frames", "median", "p90", "CPU", "raw pass", "ratio"], rows)
        try:
            rows = in_the_page(app, truth, args.repeat, raw)
        except (ImportError, RuntimeError) as exc:
            print(f"\npage: not measured ({exc})")
        else:
            table("page: a rotation change in Chromium until the new image is in the page and "
                  "painted (ms)",
                  ["redraw", "server", "p90", "in page", "p90", "painted", "p90", "ratio"], rows)
        app.close()
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
