"""Real-protocol detector controllers built on LiberTEM-live.

:class:`MerlinHardwareBackend` is the controller half of
:class:`stemcal.devices.MerlinDetector` for a Quantum Detectors Merlin (or
``libertem-live-mib-sim``): the same interface as
:class:`stemcal.devices.SimBackend`, but the frames come over the Merlin TCP
protocol -- commands on the control port (default 6341), the acquisition
header and frames on the data port (default 6342).

One acquisition, one whole scan of the scan generator's ``nav_shape``:

1. ``SET NUMFRAMESTOACQUIRE ny*nx``, ``CMD STARTACQUISITION`` and
   ``CMD SOFTTRIGGER`` on the control port (through LiberTEM-live's
   :class:`~libertem_live.detectors.merlin.control.MerlinControl`);
2. wait (at most ``timeout``) for the acquisition header on the data
   connection and check that it announces ``ny*nx`` frames;
3. run :class:`~._frame_sink.FrameSinkUDF` over a LiberTEM-live acquisition
   made from that pending acquisition on an inline executor: each tile of
   frames goes to ``on_frames`` as it is decoded, and nothing is kept; a
   watchdog fails the acquisition when no frames arrive for ``timeout``
   seconds.

The data connection stays open from :meth:`MerlinHardwareBackend.prepare` to
:meth:`MerlinHardwareBackend.close` (or to the next failure), and acquisitions
reuse it (LiberTEM-live's *passive* mode). Notes of the class explain why:
LiberTEM-live's active mode closes and reopens the data connection around
every acquisition, which makes a single-client server such as the simulator
lose a trigger and hang.
"""
from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ...checks import nonnegative
from ._frame_sink import FrameSinkUDF
from .base import HardwareBackend

__all__ = ["MerlinHardwareBackend", "DetectorRefusedError"]

logger = logging.getLogger(__name__)

#: Merlin ``COUNTERDEPTH`` -> frame dtype, as LiberTEM-live decodes it.
_DEPTH_DTYPES = {1: np.dtype("u1"), 6: np.dtype("u1"), 12: np.dtype("<u2"), 24: np.dtype("<u4")}


class DetectorRefusedError(RuntimeError):
    """The detector answered a command with an error code (busy, unknown, out of range)."""

    def __init__(self, where: str, command: str, code: int, meaning: str) -> None:
        super().__init__(f"{where} refused {command!r}: {meaning} (error code {code})")
        self.command, self.code, self.meaning = command, code, meaning


#: Merlin reply error codes (MerlinEM TCP/IP interface).
_MERLIN_ERRORS = {1: "detector busy", 2: "command not recognised", 3: "parameter out of range"}


@functools.cache
def _control_class() -> type:
    """:class:`MerlinControl` with bounded connect and reply times (imported lazily)."""
    from libertem_live.detectors.merlin.control import MerlinControl

    class _BoundedMerlinControl(MerlinControl):
        # MerlinControl connects without a timeout and retries a silent reply forever;
        # here both are bounded by ``timeout`` and a closed socket is an error.
        def connect(self) -> None:
            self._socket = socket.create_connection((self._host, self._port),
                                                    timeout=self._timeout)

        def _send(self, message: str) -> bytes:
            assert self._socket is not None, "must be connected to send"
            self._socket.sendall(message.encode("ascii"))
            try:
                resp = self._socket.recv(self._buffer_size)
            except TimeoutError:
                raise TimeoutError(
                    f"Merlin control {self._host}:{self._port}: no reply to {message!r} "
                    f"within {self._timeout:g} s") from None
            if not resp:
                raise ConnectionError(
                    f"Merlin control {self._host}:{self._port} closed the connection "
                    f"after {message!r}")
            self._last_command = message
            return resp

        def _parse_response(self, resp: bytes) -> bytes | None:
            # Reply: MPX,<len>,GET,<param>,<value>,<code> or MPX,<len>,SET|CMD,<param>,<code>
            parts = resp.split(b",")
            try:
                code = int(parts[5] if parts[2] == b"GET" else parts[4])
            except (IndexError, ValueError):
                raise ConnectionError(f"Merlin control {self._host}:{self._port}: malformed "
                                      f"reply {resp[:80]!r}") from None
            if code != 0:
                command = ",".join(getattr(self, "_last_command", "?").split(",")[2:])
                raise DetectorRefusedError(f"Merlin at {self._host}:{self._port}", command,
                                           code, _MERLIN_ERRORS.get(code, "unknown error"))
            return parts[4] if parts[2] == b"GET" else None

    return _BoundedMerlinControl


class MerlinHardwareBackend(HardwareBackend):
    """Detector controller that acquires from a Merlin over its TCP protocol (LiberTEM-live).

    Implements the controller half of :class:`stemcal.devices.MerlinDetector`
    like :class:`stemcal.devices.SimBackend`: ``prepare()`` (at stage: checks
    the detector over the control port and opens the data connection),
    ``acquire()`` (one whole scan of ``scan.nav_shape``, soft-triggered,
    ``(ny, nx, sy, sx)`` array of :attr:`dtype`), ``disarm()``,
    ``frame_shape()`` and the fixed properties ``sig_shape``, ``pixel_size``
    (m), ``bit_depth`` and ``dtype``.

    Parameters
    ----------
    scan : ScanGenerator
        Whose ``nav_shape`` each acquisition takes (:class:`~.base.HardwareBackend`).
    api_host, api_port : str, int
        Merlin control server (``libertem-live-mib-sim --control-port``).
    data_host, data_port : str, int
        Merlin data server (``--data-port``).
    sig_shape : (int, int)
        Detector shape ``(sy, sx)``, pixels; :meth:`prepare` checks it against
        the detector's ``IMAGEY``/``IMAGEX``.
    counter_depth : {1, 6, 12, 24}
        Merlin ``COUNTERDEPTH``, checked at :meth:`prepare`; 1 and 6 give
        ``uint8`` frames, 12 ``uint16``, 24 ``uint32``. It is the ``bit_depth``.
    pixel_size : float
        Detector pixel pitch, metres.
    settings : mapping, optional
        Merlin parameters to ``SET`` once at :meth:`prepare`, e.g.
        ``{"TRIGGERSTART": 5, "CONTINUOUSRW": 1}`` (see the MerlinEM manual);
        by default the detector settings are left as they are.
    timeout : float
        Seconds: the longest wait for the acquisition header after the
        trigger, and then for each partition of frames. LiberTEM-live hands
        frames over in stacks of about 2 MiB (16 frames of 256x256 at 16 bit,
        a few hundred small frames), so ``timeout`` must exceed the time the
        detector takes for a partition and for a stack. Past it,
        :meth:`acquire` raises ``TimeoutError``.
    control_timeout : float
        Seconds to connect to the control port and for each reply.
    settle_time : float
        Seconds to wait after opening the data connection before the first
        trigger; see Notes.
    frames_per_partition : int, optional
        Frames per LiberTEM partition; default
        :data:`~.base.FRAMES_PER_PARTITION` (256, LiberTEM-live's own default)
        or the frames of :data:`~.base.PARTITION_SECONDS` (0.1 s) of the
        scan's ``dwell_time``, whichever is fewer. A partition is handed on
        once all its frames came (then tile by tile); fewer, larger
        partitions cost less (64x64 frames of 256x256: 64 partitions of one
        scan row took 0.35-0.45 CPU s, 16 of 256 frames 0.26-0.35 s).
    max_bytes : int
        Largest scan, in bytes of frames, that :meth:`acquire` without
        ``on_frames`` accepts (it holds the frames in memory).
    ctx : libertem_live.api.LiveContext, optional
        The context to run on; default a ``LiveContext`` with an inline
        executor, made at the first :meth:`prepare` and closed by
        :meth:`close`.

    Notes
    -----
    *Errors.* No server on the control or data port: :meth:`prepare` raises
    ``ConnectionError`` (within ``control_timeout``). The server closing the
    data connection mid-scan: ``ConnectionError`` at once. No acquisition
    header or no frames for ``timeout`` seconds: ``TimeoutError``; the
    watchdog shuts the data socket down (LiberTEM-live's receive call cannot
    be interrupted from another thread otherwise). After any failure the data
    connection is dropped and the next acquisition reconnects.

    *Why one persistent data connection.* LiberTEM-live 0.3's active mode
    (``make_acquisition`` with a ``Hooks.on_ready_for_data`` soft-trigger
    hook) closes the data connection at the end of every acquisition and
    opens a new one at the start of the next, then calls the hook at once.
    ``libertem-live-mib-sim`` serves one data client at a time, keeps its
    STARTACQUISITION/SOFTTRIGGER flags in process-wide events, and notices a
    closed client only at its next poll (every ~0.1-0.2 s). So the next
    STARTACQUISITION is often consumed by the handler of the *old*, closed
    connection (the header goes into a dead socket: ``BrokenPipeError``), and
    the new connection waits for a STARTACQUISITION that already came: the
    acquisition hangs, since the active mode also waits for the header
    without a timeout. Which acquisition hangs (second, third...) depends on
    timing. Here the connection stays open between acquisitions, the header
    wait is bounded, and after (re)connecting the backend waits
    ``settle_time`` so that a server still busy with an earlier, closed
    client has noticed it before the trigger comes.

    The frame count is set with ``SET NUMFRAMESTOACQUIRE``; trigger and
    counter settings come from ``settings``. Checked against
    ``libertem-live-mib-sim`` (which stores but ignores settings), not
    against a Merlin.
    """

    scheme = "merlin"
    depth_name = "counter_depth"
    depth_dtypes = _DEPTH_DTYPES

    def __init__(self, scan: Any, *, api_host: str = "127.0.0.1", api_port: int = 6341,
                 data_host: str = "127.0.0.1", data_port: int = 6342,
                 sig_shape: tuple[int, int] = (256, 256), counter_depth: int = 12,
                 pixel_size: float = 55e-6, settings: Mapping[str, Any] | None = None,
                 timeout: float = 10.0, control_timeout: float = 2.0, settle_time: float = 0.5,
                 frames_per_partition: int | None = None, max_bytes: int = 8 * 2**30,
                 ctx: Any = None) -> None:
        self._init_common(scan, api_host=api_host, api_port=api_port, data_host=data_host,
                          data_port=data_port, sig_shape=sig_shape, depth=counter_depth,
                          pixel_size=pixel_size, timeout=timeout, control_timeout=control_timeout,
                          frames_per_partition=frames_per_partition, max_bytes=max_bytes)
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"settings must be a mapping of Merlin parameters, got {settings!r}")
        self.settings = {str(k).upper(): v for k, v in (settings or {}).items()}
        self.settle_time = nonnegative("settle_time", settle_time)
        self._ctx = ctx
        self._own_ctx = ctx is None
        self._conn: Any = None

    @property
    def is_connected(self) -> bool:
        """Whether the data connection is open."""
        return self._conn is not None

    # -- controller interface -------------------------------------------------------------
    def prepare(self) -> None:
        """Check the detector over the control port, apply ``settings``, open the data connection.

        Raises
        ------
        ConnectionError
            No Merlin control or data server at the configured address.
        TimeoutError
            The control server does not reply within ``control_timeout``.
        RuntimeError
            The detector's shape or counter depth differs from the configured one.
        """
        with self._control() as c:
            shape = (int(c.get("IMAGEY")), int(c.get("IMAGEX")))
            self._check_detector("Merlin", shape, int(c.get("COUNTERDEPTH")))
            for key, value in self.settings.items():
                c.set(key, value)
        self._ensure_connection()
        self._abort.clear()
        self._prepared = True

    def _after_failed_acquire(self) -> None:
        self._drop_connection()

    def close(self) -> None:
        """Close the data connection and, if this backend made it, the context (idempotent)."""
        self.disarm()
        with self._lock:
            self._drop_connection()
            if self._own_ctx and self._ctx is not None:
                self._ctx.close()
                self._ctx = None

    # -- internals ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _control(self) -> Iterator[Any]:
        """A connected control client; ``ConnectionError`` if the server is unreachable."""
        client = _control_class()(host=self.api_host, port=self.api_port,
                                  timeout=self.control_timeout)
        try:
            client.connect()
        except TimeoutError:
            raise TimeoutError(f"Merlin control server {self.api_host}:{self.api_port}: no "
                               f"connection within {self.control_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"cannot reach the Merlin control server at "
                                  f"{self.api_host}:{self.api_port}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()

    def _context(self) -> Any:
        if self._ctx is None:
            from libertem.executor.inline import InlineJobExecutor
            from libertem_live.api import LiveContext

            self._ctx = LiveContext(executor=InlineJobExecutor())
        return self._ctx

    def _ensure_connection(self) -> Any:
        """The open data connection, (re)connecting (and settling) if needed."""
        if self._conn is not None:
            if not self._conn.get_data_socket().is_running():
                return self._conn
            self._drop_connection()  # mid-acquisition state: start afresh
        # Probe first: LiberTEM-live's connect waits forever (and cannot be closed)
        # when nothing listens on the data port.
        self._probe_data_port("Merlin data server")
        self._conn = self._context().make_connection("merlin").open(
            api_host=self.api_host, api_port=self.api_port,
            data_host=self.data_host, data_port=self.data_port)
        if self.settle_time:
            time.sleep(self.settle_time)
        return self._conn

    def _drop_connection(self) -> None:
        """Close the data connection, giving up on it after a bounded wait."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        closer = threading.Thread(target=_close_quietly, args=(conn,), daemon=True,
                                  name="merlin-live-close")
        closer.start()
        closer.join(max(2.0, self.control_timeout))
        if closer.is_alive():  # pragma: no cover - depends on LiberTEM-live internals
            logger.warning("data connection to %s:%s did not close; abandoned",
                           self.data_host, self.data_port)

    def _acquire(self, ny: int, nx: int, on_frames: Callable[[int, np.ndarray], None]) -> None:
        from libertem_live.detectors.merlin.connection import MerlinPendingAcquisition

        n = ny * nx
        conn = self._ensure_connection()
        with self._control() as c:
            c.set("NUMFRAMESTOACQUIRE", n)
            c.cmd("STARTACQUISITION")
            c.cmd("SOFTTRIGGER")
        try:
            header = conn.get_data_socket().wait_for_arm(timeout=self.timeout)
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            raise ConnectionError(f"Merlin data connection {self.data_host}:{self.data_port} "
                                  f"failed while waiting for the acquisition: {exc}") from exc
        if header is None:
            raise TimeoutError(f"Merlin at {self.data_host}:{self.data_port}: no acquisition "
                               f"header within {self.timeout:g} s of the soft trigger")
        pending = MerlinPendingAcquisition(header)
        if pending.nimages != n:
            raise RuntimeError(f"the detector announced {pending.nimages} frames; the scan "
                               f"{ny}x{nx} needs {n}")
        aq = self._context().make_acquisition(conn=conn, nav_shape=(ny, nx), pending_aq=pending,
                                              frames_per_partition=self._partition(n))
        self._run_watched(aq, n, on_frames)

    def _run_watched(self, aq: Any, n: int, on_frames: Callable[[int, np.ndarray], None]) -> None:
        """Run :class:`FrameSinkUDF` on ``aq`` in a worker thread, under the watchdog.

        ``on_frames`` gets each tile's frames (in scan order), until disarmed.
        """
        ctx = self._context()
        state: dict[str, Any] = {"last": time.monotonic(), "done": 0}
        finished = threading.Event()

        def sink(start: int, frames: np.ndarray) -> None:
            if start != state["done"]:
                raise RuntimeError(f"frames at {start} arrived out of scan order "
                                   f"({state['done']} received)")
            if not self._abort.is_set():  # disarmed: hand nothing more over
                on_frames(start, frames)
            state["done"] = start + len(frames)
            state["last"] = time.monotonic()

        def work() -> None:
            try:
                ctx.run_udf(dataset=aq, udf=FrameSinkUDF(sink))
            except BaseException as exc:  # handed to the caller below
                state["error"] = exc
            finally:
                finished.set()

        worker = threading.Thread(target=work, daemon=True, name="merlin-live-acquire")
        worker.start()
        reason = None
        while not finished.wait(0.05):
            if self._abort.is_set():
                reason = "aborted"
            elif time.monotonic() - state["last"] > self.timeout:
                reason = "timeout"
            else:
                continue
            self._interrupt_data_socket()
            threading.Thread(target=self._stop_detector, daemon=True,
                             name="merlin-live-stop").start()
            finished.wait(max(2.0, self.control_timeout))
            break
        where = f"Merlin data {self.data_host}:{self.data_port}"
        progress = f"{state['done']}/{n} frames received"
        if not finished.is_set():  # pragma: no cover - socket shutdown did not unblock it
            self._conn = None  # still borrowed by the stuck worker: abandon it
        if reason == "timeout":
            raise TimeoutError(f"{where}: no frames for {self.timeout:g} s ({progress})") \
                from state.get("error")
        if reason == "aborted":
            raise RuntimeError(f"{where}: acquisition aborted by disarm() ({progress})") \
                from state.get("error")
        error = state.get("error")
        if error is not None and _is_connection_error(error):
            raise ConnectionError(f"{where}: connection lost ({progress}): {error}") from error
        if error is not None:
            raise error
        if state["done"] != n:
            raise ConnectionError(f"{where}: acquisition ended early ({progress})")

    def _stop_detector(self) -> None:
        """Best effort ``CMD STOPACQUISITION`` (errors are logged, not raised)."""
        try:
            with self._control() as c:
                c.cmd("STOPACQUISITION")
        except Exception as exc:  # the detector may be gone; the data socket is already shut
            logger.info("STOPACQUISITION failed: %s", exc)

    def _interrupt_data_socket(self) -> int:
        """Shut down this process's TCP sockets to the data server; return how many.

        LiberTEM-live blocks in a receive call that holds the connection object,
        so ``close()`` from another thread fails; a socket shutdown makes that
        receive fail at once.
        """
        import psutil

        try:
            ips = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(
                self.data_host, self.data_port, proto=socket.IPPROTO_TCP)}
        except OSError:
            return 0
        count = 0
        for c in psutil.Process().net_connections(kind="tcp"):
            if not c.raddr or c.fd < 0 or c.raddr.port != self.data_port:
                continue
            if ipaddress.ip_address(c.raddr.ip) not in ips:
                continue
            try:
                with socket.socket(fileno=os.dup(c.fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
                count += 1
            except OSError:
                pass
        return count


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the data stream broke (LiberTEM-live raises several kinds)."""
    from libertem.common.executor import JobCancelledError

    # libertem_qd_mpx's PyConnectionError is not importable by name from the package.
    return (isinstance(exc, (ConnectionError, JobCancelledError))
            or type(exc).__name__ == "PyConnectionError")


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        logger.info("closing the data connection failed: %s", exc)
