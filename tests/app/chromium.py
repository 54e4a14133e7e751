"""Headless Debian Chromium under Playwright, and the app's page as the tests read it.

Chromium is Debian's package (``make chromium`` installs it where missing;
``$STEMCAL_CHROMIUM`` names another), driven through ``executable_path``:
Playwright's own browser download is never used. The page is read through
BokehJS's document (models found by name) and through what it renders (the
blur text, the buttons), never by sleeping: every wait is on a condition.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

CHROMIUM = (os.environ.get("STEMCAL_CHROMIUM") or shutil.which("chromium")
            or "/usr/bin/chromium")

# Playwright adds --headless, --no-sandbox and a fresh --user-data-dir itself. These keep
# Chromium off the network (it tries Google's hosts at start otherwise).
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def launch(playwright):
    """A headless Chromium browser from Debian's package."""
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: run `make chromium` "
                           "(apt-get install chromium) or set STEMCAL_CHROMIUM")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=CHROMIUM_ARGS, timeout=60_000)


def model(page, name: str, attr: str):
    """An attribute of the page's Bokeh model ``name``."""
    return page.evaluate("([n, a]) => Bokeh.documents[0].get_model_by_name(n)[a]", [name, attr])


def wait_ready(page, timeout_ms: int = 60_000) -> None:
    """The app's document is in the page and idle."""
    page.wait_for_function("""() => window.Bokeh !== undefined && Bokeh.documents.length > 0
        && Bokeh.documents[0].is_idle && Bokeh.documents[0].get_model_by_name('blur') != null""",
                           timeout=timeout_ms)


def wait_drawn(page, timeout_ms: int = 60_000) -> dict:
    """Wait until the final images on show were made for the rotation on the page (its slider
    and its field, which follow each other through the server) and the flip; the values,
    blur and contrast they were made with (the app's hidden ``drawn`` marker)."""
    page.wait_for_function("""() => { const d = Bokeh.documents[0];
        const t = d.get_model_by_name('drawn').text;
        if (t === '') return false;
        const drawn = JSON.parse(t);
        return drawn.scan_rotation == d.get_model_by_name('scan_rotation').value
            && drawn.scan_rotation == d.get_model_by_name('scan_rotation_field').value
            && drawn.flip_y == d.get_model_by_name('flip_y').active; }""", timeout=timeout_ms)
    return json.loads(model(page, "drawn", "text"))


def press(page, button: str, timeout_ms: int = 180_000) -> str:
    """Click the button labelled ``button`` and wait until the job it starts has finished;
    the status line (the app's hidden ``jobs`` marker counts finished jobs)."""
    before = json.loads(model(page, "jobs", "text"))["finished"]
    page.get_by_role("button", name=button).click()
    page.wait_for_function("""(n) => { const j = JSON.parse(
        Bokeh.documents[0].get_model_by_name('jobs').text); return j.finished > n; }""",
                           arg=before, timeout=timeout_ms)
    jobs = json.loads(model(page, "jobs", "text"))
    status = model(page, "status", "text")
    assert jobs["ok"], status
    return status


def blur_on_page(page) -> float:
    """The blur as the page shows it (the rendered text, not the model)."""
    text = page.get_by_text(re.compile(r"^blur: ")).inner_text()
    return float(re.match(r"blur: ([0-9.]+)", text).group(1))


class Screenshots:
    """Numbered screenshots of the steps of a test, kept under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, page, step: str) -> Path:
        path = self.directory / f"{len(self.paths) + 1:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        print(f"screenshot: {path}")
        return path
