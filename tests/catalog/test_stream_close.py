"""The embedded catalog answers tiled's stream-close requests itself (no streaming cache,
no webhooks: tiled's own handler would only look the node up)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stemcal.catalog import open_catalog, record_images, write_record
from stemcal.catalog.embedded import STREAM_CLOSE_PREFIX, StreamCloseMiddleware
from stemcal.record import CalibrationRecord


def make_record() -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=None, scan_rotation=12.5, flip_y=True,
                             overfocus=1.05e-6, cy=51.3, cx=45.3, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=3.75e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.0158)


def call(app, method: str, path: str) -> tuple[list[dict], list[str]]:
    """One request through ``app``: the messages it sent, and what reached the inner app."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": []},
                    receive, send))
    return sent, app.app.seen


class Inner:
    """A stand-in for tiled's app: records the paths it is asked for, answers 204."""

    def __init__(self):
        self.seen: list[str] = []

    async def __call__(self, scope, receive, send):
        self.seen.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_the_middleware_answers_only_stream_close():
    app = StreamCloseMiddleware(Inner())
    sent, seen = call(app, "DELETE", STREAM_CLOSE_PREFIX + "abc/primary")
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"null"   # what tiled answers
    assert seen == []
    for method, path in (("GET", STREAM_CLOSE_PREFIX + "abc"), ("DELETE", "/api/v1/metadata/abc"),
                         ("POST", "/api/v1/metadata/")):
        sent, seen = call(app, method, path)
        assert sent[0]["status"] == 204 and seen[-1] == f"{method} {path}"


@pytest.mark.parametrize("middleware", [True, False])
def test_a_record_reaches_tiled_s_close_handler_only_without_it(tmp_path, monkeypatch,
                                                                 middleware):
    """A record with four images written to the embedded catalog: with the middleware
    tiled's close handler is never reached (without it, once per node the writer made:
    7 requests, which the middleware saves), and the record reads back complete."""
    from tiled.catalog.adapter import CatalogNodeAdapter

    import stemcal.catalog.embedded as embedded

    closed = []
    original = CatalogNodeAdapter.close_stream

    async def spy(self):
        closed.append(self.node.key)
        await original(self)

    monkeypatch.setattr(CatalogNodeAdapter, "close_stream", spy)
    if not middleware:
        monkeypatch.setattr(embedded.StreamCloseMiddleware, "__call__",
                            lambda self, scope, receive, send: self.app(scope, receive, send))
    client = open_catalog(tmp_path / "catalog")
    record = make_record()
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    images = {"point": image, "selected": image + 1, "shifted_sum_normalised": image + 2,
              "sum": 2 * image}
    assert write_record(client, record, images) == record.uid
    assert len(closed) == (0 if middleware else 7)
    back = record_images(client, record.uid)
    for name, want in images.items():
        np.testing.assert_array_equal(back[name], want)
