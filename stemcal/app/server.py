"""Serve the app: a Bokeh server in the foreground (``stemcal app``), in a background
thread (the IPython profile, tests), or in a Jupyter notebook cell.

The server listens on ``address`` (default 127.0.0.1: this machine only) and
accepts the page's websocket only from the origins it is opened as
(``127.0.0.1:PORT``, ``localhost:PORT``, and the address and host name when
bound elsewhere); ``allow_origin`` adds others (e.g. a tunnel's).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from bokeh.server.server import Server

from .application import StemcalApp

__all__ = ["AppServer", "serve", "show_in_notebook", "origins"]

log = logging.getLogger(__name__)


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def origins(address: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``host:port`` origins whose pages may open the app's websocket."""
    hosts = {"127.0.0.1", "localhost"}
    if address not in ("127.0.0.1", "localhost", "::1"):
        hosts |= {address, socket.gethostname(), socket.getfqdn()}
    return sorted({f"{h}:{port}" for h in hosts if h and h != "0.0.0.0"} | set(extra))


def _server(app: StemcalApp, address: str, port: int, allow_origin: Sequence[str]) -> Server:
    port = port or free_port(address)
    return Server({"/": app.application()}, port=port, address=address,
                  allow_websocket_origin=origins(address, port, allow_origin), num_procs=1)


def serve(app: StemcalApp, *, address: str = "127.0.0.1", port: int = 5006,
          allow_origin: Sequence[str] = (), on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` until interrupted (Ctrl-C); ``on_ready(url)`` once it listens."""
    server = _server(app, address, port, allow_origin)
    server.start()
    url = f"http://{'127.0.0.1' if address == '0.0.0.0' else address}:{server.port}/"
    if on_ready is not None:
        on_ready(url)
    try:
        server.run_until_shutdown()
    finally:
        app.close()


class AppServer:
    """``app`` served from a daemon thread with its own event loop.

    ``port`` 0: a free port. :attr:`url` is the page's address once :meth:`start` returned.
    """

    def __init__(self, app: StemcalApp, *, address: str = "127.0.0.1", port: int = 0,
                 allow_origin: Sequence[str] = ()) -> None:
        self.app, self.address, self._port = app, address, port
        self._allow = tuple(allow_origin)
        self.server: Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stemcal-app-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.set_event_loop(asyncio.new_event_loop())
            self.server = _server(self.app, self.address, self._port, self._allow)
            self.server.start()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.server.io_loop.start()

    def start(self, timeout: float = 30.0) -> "AppServer":
        """Start serving; returns once the server listens."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the app's server did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        log.info("stemcal app at %s", self.url)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{self.address}:{self.server.port}/"

    def stop(self) -> None:
        """Stop serving (the app itself stays usable)."""
        if self.server is None:
            return
        loop = self.server.io_loop

        def stop() -> None:
            self.server.stop()
            loop.stop()
        loop.add_callback(stop)
        self._thread.join(10)


def show_in_notebook(app: StemcalApp, notebook_url: str = "localhost:8888") -> Any:
    """Show the app in the current Jupyter notebook cell (the same tabs as in a browser).

    Bokeh starts a server for it inside the kernel; ``notebook_url`` is the
    notebook's ``host:port``. BokehJS is put into the notebook itself, so no
    internet connection is needed.
    """
    from bokeh.io import output_notebook, show
    from bokeh.resources import INLINE

    output_notebook(resources=INLINE, hide_banner=True)
    return show(app.build, notebook_url=notebook_url)
