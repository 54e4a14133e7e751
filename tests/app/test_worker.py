"""The redraw thread: the newest request wins; a preview never replaces or repeats a final."""
from __future__ import annotations

import threading

from stemcal.app.worker import LatestRequestWorker


class Recorder:
    """Work that blocks until released, so that requests pile up meanwhile."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.done: list[tuple[object, bool]] = []

    def work(self, key, preview):
        self.started.set()
        self.gate.wait(10)
        if key == "bad":
            raise ValueError("cannot project")
        return key

    def deliver(self, key, preview, result):
        self.done.append((result, preview))


def test_requests_made_while_busy_collapse_to_the_newest():
    r = Recorder()
    w = LatestRequestWorker(r.work, r.deliver)
    w.request(0, preview=True)
    assert r.started.wait(10)
    for k in range(1, 50):  # a drag: many previews while the first is computed
        w.request(k, preview=True)
    r.gate.set()
    assert w.wait_idle(10)
    assert r.done == [(0, True), (49, True)]


def test_a_final_is_not_replaced_by_a_preview_of_the_same_values():
    r = Recorder()
    w = LatestRequestWorker(r.work, r.deliver)
    w.request("a", preview=True)
    assert r.started.wait(10)
    w.request("b")               # the slider released at b
    w.request("b", preview=True)  # its last drag event arriving late
    r.gate.set()
    assert w.wait_idle(10)
    w.request("b", preview=True)  # drawn in full already: nothing to do
    assert w.wait_idle(10)
    assert r.done == [("a", True), ("b", False)]


def test_a_failed_redraw_does_not_stop_the_next():
    r = Recorder()
    r.gate.set()
    w = LatestRequestWorker(r.work, r.deliver)
    w.request("bad")
    assert w.wait_idle(10)
    w.request("good")
    assert w.wait_idle(10)
    assert r.done == [("good", False)] and w.errors == 1
