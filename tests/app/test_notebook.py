"""The app in a Jupyter notebook cell: the same objects, run by a real IPython kernel.

The cell makes a :class:`~stemcal.app.StemcalApp` and calls
:func:`~stemcal.app.show_in_notebook`, which starts a Bokeh server inside the
kernel and publishes the cell's output (BokehJS inline, and the script that
loads the app). A stand-in for the notebook's front end serves that output from
the notebook's origin; Chromium loads it, and a change of the rotation is
re-projected by the kernel.
"""
from __future__ import annotations

import http.server
import os
import threading

from jupyter_client.manager import KernelManager
from playwright.sync_api import sync_playwright

from app_process import REPO
from chromium import Screenshots, blur_on_page, launch, model, wait_drawn, wait_ready
from scan_setup import SIZES
from stemcal.app.server import free_port

CELL = """
from stemcal.app import Sizes, StemcalApp, show_in_notebook
app = StemcalApp(catalog={catalog!r}, operator="notebook")
app.open_file({path!r}, Sizes(**{sizes!r}))
show_in_notebook(app, notebook_url="localhost:{port}")
"""


def run_cell(code: str) -> str:
    """Run ``code`` in a fresh kernel; its outputs as the HTML a notebook would show."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(REPO))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        kc.execute(code)
        parts = []
        while True:
            msg = kc.get_iopub_msg(timeout=180)
            content = msg["content"]
            if msg["msg_type"] == "error":
                raise AssertionError("\n".join(content["traceback"]))
            if msg["msg_type"] in ("display_data", "execute_result"):
                data = content["data"]
                if "application/javascript" in data:
                    js = data["application/javascript"].replace("</script>", "<\\/script>")
                    parts.append(f"<script>{js}</script>")
                elif "text/html" in data:
                    parts.append(data["text/html"])
            if msg["msg_type"] == "status" and content["execution_state"] == "idle":
                return "\n".join(parts), (km, kc)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise


def serve_page(port: int, body: str) -> http.server.ThreadingHTTPServer:
    page = f"<!doctype html><html><body>{body}</body></html>".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_app_in_a_notebook_cell(small_scan, tmp_path, capsys):
    path, truth = small_scan
    port = free_port()
    html, (km, kc) = run_cell(CELL.format(catalog=str(tmp_path / "catalog"), path=str(path),
                                          sizes=SIZES.cold_start_kwargs(), port=port))
    httpd = serve_page(port, html)
    shots = Screenshots(tmp_path / "screenshots")
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://localhost:{port}/")  # the notebook's origin (notebook_url)
            wait_ready(page)
            first = wait_drawn(page)
            assert first["scan_rotation"] == 0.0 and model(page, "operator", "value") == "notebook"
            # the kernel re-projects for the true geometry typed into the fields
            page.evaluate("""(t) => { const d = Bokeh.documents[0];
                d.get_model_by_name('flip_y').active = t.flip;
                for (const [k, v] of Object.entries(t.values))
                    d.get_model_by_name(k + '_field').value = v; }""",
                          {"flip": truth.flip_y,
                           "values": {"overfocus": truth.overfocus * 1e9, "cy": truth.cy,
                                      "cx": truth.cx, "descan_yy": truth.descan[0][0],
                                      "descan_yx": truth.descan[0][1],
                                      "descan_xy": truth.descan[1][0],
                                      "descan_xx": truth.descan[1][1],
                                      "scan_rotation": truth.scan_rotation}})
            sharp = wait_drawn(page)
            shots.take(page, "notebook-cell")
            assert sharp["scan_rotation"] == truth.scan_rotation and sharp["flip_y"] is True
            assert sharp["contrast"] > 5 * first["contrast"]
            assert blur_on_page(page) == round(sharp["blur"], 4)
            assert not errors, errors
            browser.close()
    finally:
        httpd.shutdown()
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        with capsys.disabled():
            print(f"\nnotebook test screenshot: {', '.join(map(str, shots.paths))}")
