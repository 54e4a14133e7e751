"""DECTRIS detectors (ARINA) over SIMPLON REST + zmq, through LiberTEM-live.

:class:`DectrisHardwareBackend` is the controller half of
:class:`stemcal.devices.ArinaDetector` (or any
:class:`~stemcal.devices.MerlinDetector`-style device) for a DECTRIS detector
control unit -- or ``libertem-live-dectris-sim``: the same interface as
:class:`stemcal.devices.SimBackend`, the frames coming from the DCU's zmq
stream while the detector is configured and armed over its SIMPLON HTTP API.

One acquisition, one whole scan of the scan generator's ``nav_shape``:
LiberTEM-live's active mode sets ``trigger_mode`` (default ``exte``: one frame
per scan-generator trigger) and ``ntrigger = ny*nx`` over REST, arms the
detector and collects the frames from the stream.

The receive runs in a child process (``_dectris_receiver.py``), started at
:meth:`DectrisHardwareBackend.prepare` and kept for later acquisitions: LiberTEM-
live's zmq receive has no timeout and cannot be interrupted from another
thread (a stopped or killed detector leaves it blocked for good, and a thread
left blocked there aborts the interpreter at exit). A child process can be
killed, so every wait here is bounded.
"""
from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...checks import positive
from ._frame_ring import FrameRing
from .base import HardwareBackend
from ..detector import FrameSink

__all__ = ["DectrisHardwareBackend"]

logger = logging.getLogger(__name__)

#: DECTRIS ``bit_depth_image`` -> frame dtype, as LiberTEM-live decodes it.
_DEPTH_DTYPES = {8: np.dtype("u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}
_TRIGGER_MODES = ("exte", "exts", "inte", "ints")
_RECEIVER = Path(__file__).with_name("_dectris_receiver.py")


class DectrisHardwareBackend(HardwareBackend):
    """Detector controller for a DECTRIS DCU (SIMPLON REST + zmq) through LiberTEM-live.

    Implements the controller half of :class:`stemcal.devices.MerlinDetector`
    like :class:`stemcal.devices.SimBackend`: ``prepare()`` (at stage: checks
    the detector over REST and the data port, starts the receiver process),
    ``acquire()`` (one whole scan of ``scan.nav_shape``, ``(ny, nx, sy, sx)``
    array of :attr:`dtype`), ``disarm()``, ``frame_shape()`` and the fixed
    properties ``sig_shape``, ``pixel_size`` (m), ``bit_depth`` and ``dtype``.

    Parameters
    ----------
    scan : ScanGenerator
        Whose ``nav_shape`` each acquisition takes (:class:`~.base.HardwareBackend`).
    api_host, api_port : str, int
        SIMPLON REST API of the DCU (``libertem-live-dectris-sim --port``).
    data_host, data_port : str, int
        zmq stream of the DCU (``--zmqport``).
    sig_shape : (int, int)
        Detector shape ``(sy, sx)``, pixels; default ARINA's 192 x 192.
        :meth:`prepare` checks it against ``y_pixels_in_detector`` /
        ``x_pixels_in_detector``.
    bit_depth : {8, 16, 32}
        ``bit_depth_image``, checked at :meth:`prepare`; frames are
        ``uint8``/``uint16``/``uint32``.
    pixel_size : float
        Detector pixel pitch, metres (ARINA: 100 um).
    trigger_mode : {'exte', 'exts', 'inte', 'ints'}
        Set at every acquisition; ``exte`` (one frame per external trigger,
        ``ntrigger = ny*nx``) is the 4D-STEM mode.
    compression : {None, 'bslz4', 'lz4'}
        Stream compression to set; ``None`` leaves the DCU's setting.
    timeout : float
        Seconds without progress before :meth:`acquire` gives up with
        ``TimeoutError``: from the request to the first partition of frames,
        and between partitions.
    control_timeout : float
        Seconds for each REST request and each connection probe.
    start_timeout : float
        Seconds the receiver process may take to start and connect
        (it imports LiberTEM).
    probe_interval : float
        Seconds between checks, during an acquisition, that the data port
        still accepts connections; a refused probe ends the acquisition at
        once with ``ConnectionError`` (the detector is gone).
    frames_per_partition : int, optional
        Frames per LiberTEM partition (progress granularity); default one
        scan row ``nx``.
    frame_stack_size : int
        Frames LiberTEM-live's receiver collects before handing them on (its
        latency: a partition is complete only when its last stack is).
    max_bytes : int
        Largest scan, in bytes of frames, that :meth:`acquire` accepts.
    buffer_size : int
        Receive buffer (shared memory) of the receiver, MiB.

    Notes
    -----
    *Errors.* No REST server or no data port: :meth:`prepare` raises
    ``ConnectionError`` within ``control_timeout``. The data port vanishing
    mid-scan (detector killed): ``ConnectionError`` within about
    ``probe_interval + control_timeout``. No frames for ``timeout`` seconds
    (detector stalled): ``TimeoutError``. In both cases the receiver process
    is killed, a best-effort ``disarm`` is sent over REST, and the next
    acquisition starts a new receiver. :meth:`disarm` during an acquisition
    aborts it with ``RuntimeError`` the same way.

    Checked against ``libertem-live-dectris-sim`` (which accepts a setting
    only when it equals the value in its dump file), not against a DCU.
    """

    scheme = "dectris"
    depth_dtypes = _DEPTH_DTYPES

    def __init__(self, scan: Any, *, api_host: str = "127.0.0.1", api_port: int = 80,
                 data_host: str = "127.0.0.1", data_port: int = 9999,
                 sig_shape: tuple[int, int] = (192, 192), bit_depth: int = 16,
                 pixel_size: float = 100e-6, trigger_mode: str = "exte",
                 compression: str | None = None, timeout: float = 10.0,
                 control_timeout: float = 2.0, start_timeout: float = 120.0,
                 probe_interval: float = 0.5, frames_per_partition: int | None = None,
                 frame_stack_size: int = 24, max_bytes: int = 8 * 2**30,
                 buffer_size: int = 256) -> None:
        self._init_common(scan, api_host=api_host, api_port=api_port, data_host=data_host,
                          data_port=data_port, sig_shape=sig_shape, depth=bit_depth,
                          pixel_size=pixel_size, timeout=timeout, control_timeout=control_timeout,
                          frames_per_partition=frames_per_partition, max_bytes=max_bytes)
        if trigger_mode not in _TRIGGER_MODES:
            raise ValueError(f"trigger_mode must be one of {_TRIGGER_MODES}, got {trigger_mode!r}")
        self.trigger_mode = trigger_mode
        if compression not in (None, "bslz4", "lz4"):
            raise ValueError(f"compression must be None, 'bslz4' or 'lz4', got {compression!r}")
        self.compression = compression
        self.start_timeout = positive("start_timeout", start_timeout)
        self.probe_interval = positive("probe_interval", probe_interval)
        fss_ok = isinstance(frame_stack_size, (int, np.integer)) \
            and not isinstance(frame_stack_size, bool) and frame_stack_size >= 1
        if not fss_ok:
            raise ValueError(f"frame_stack_size must be an integer >= 1, got {frame_stack_size!r}")
        self.frame_stack_size = int(frame_stack_size)
        self.buffer_size = int(positive("buffer_size", buffer_size))
        self._proc: subprocess.Popen | None = None
        self._handle_path: str | None = None  # the receiver's shared-memory socket
        self._ring: FrameRing | None = None    # the slots the receiver hands frames over in
        self._events: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)

    @property
    def is_connected(self) -> bool:
        """Whether the receiver process is running."""
        return self._proc is not None and self._proc.poll() is None

    # -- controller interface -------------------------------------------------------------
    def prepare(self) -> None:
        """Check the detector (REST) and its data port, and start the receiver if needed.

        Raises
        ------
        ConnectionError
            No SIMPLON API or no data stream at the configured addresses, or
            the receiver could not connect.
        TimeoutError
            The API does not answer within ``control_timeout``, or the
            receiver does not start within ``start_timeout``.
        RuntimeError
            The detector's shape or bit depth differs from the configured one.
        """
        shape = (int(self._config("y_pixels_in_detector")),
                 int(self._config("x_pixels_in_detector")))
        self._check_detector("DECTRIS detector", shape, int(self._config("bit_depth_image")))
        self._probe_data_port("DECTRIS data stream")
        self._ensure_receiver()
        self._abort.clear()
        self._prepared = True

    def _after_failed_acquire(self) -> None:
        self._stop_receiver(kill=True)
        self._send_disarm()

    def close(self) -> None:
        """Stop the receiver process (idempotent)."""
        self.disarm()
        with self._lock:
            self._stop_receiver(kill=False)

    # -- REST -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One SIMPLON request with bounded connect and read times; decoded JSON reply."""
        conn = http.client.HTTPConnection(self.api_host, self.api_port,
                                          timeout=self.control_timeout)
        where = f"DECTRIS SIMPLON API at {self.api_host}:{self.api_port}"
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            payload = reply.read()
        except TimeoutError:
            raise TimeoutError(f"{where}: no answer to {method} {path} within "
                               f"{self.control_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"cannot reach the {where}: {exc}") from exc
        finally:
            conn.close()
        if not 200 <= reply.status < 300:
            raise RuntimeError(f"{where}: {method} {path} failed ({reply.status}): "
                               f"{payload[:200]!r}")
        return json.loads(payload) if payload else None

    def _config(self, parameter: str) -> Any:
        return self._request("GET", f"/detector/api/1.8.0/config/{parameter}")["value"]

    def _send_disarm(self) -> None:
        """Best-effort ``disarm`` command (errors are logged, not raised)."""
        try:
            self._request("PUT", "/detector/api/1.8.0/command/disarm")
        except Exception as exc:  # the detector may be gone
            logger.info("DECTRIS disarm failed: %s", exc)

    # -- the receiver process -------------------------------------------------------------
    def _ensure_receiver(self) -> None:
        if self.is_connected:
            return
        self._stop_receiver(kill=True)
        sy, sx = self._sig_shape
        self._ring = FrameRing.create(self._sig_shape, self.dtype)
        cfg = {"parent": os.getpid(), "api_host": self.api_host, "api_port": self.api_port,
               "data_host": self.data_host, "data_port": self.data_port,
               "buffer_size": self.buffer_size,
               "bytes_per_frame": sy * sx * self.dtype.itemsize,
               "frame_stack_size": self.frame_stack_size,
               "ring": self._ring.layout.to_dict(),
               "controller": {"trigger_mode": self.trigger_mode,
                              "compression": self.compression}}
        self._events = queue.Queue()
        self._stderr.clear()
        # -P: the script's directory (this package's modules) must not shadow top-level ones
        proc = subprocess.Popen([sys.executable, "-P", str(_RECEIVER), json.dumps(cfg)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, bufsize=1)
        self._proc = proc
        threading.Thread(target=_pump_events, args=(proc.stdout, self._events), daemon=True,
                         name="dectris-receiver-events").start()
        threading.Thread(target=_pump_lines, args=(proc.stderr, self._stderr), daemon=True,
                         name="dectris-receiver-stderr").start()
        try:
            event = self._events.get(timeout=self.start_timeout)
        except queue.Empty:
            self._stop_receiver(kill=True)
            raise TimeoutError(f"the DECTRIS receiver did not start within "
                               f"{self.start_timeout:g} s") from None
        if event is None or event.get("event") != "ready":
            self._stop_receiver(kill=True)
            message = event.get("message") if event else self._stderr_tail()
            raise ConnectionError(f"the DECTRIS receiver could not connect to "
                                  f"{self.data_host}:{self.data_port}: {message}")
        self._handle_path = event.get("handle_path")
        self._ring.unlink()  # both processes have it mapped: its name is no longer needed

    def _stop_receiver(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.unlink()
            ring.close()
        if proc is None:
            return
        if proc.poll() is None and not kill:
            try:
                proc.stdin.write(json.dumps({"cmd": "close"}) + "\n")
                proc.stdin.flush()
                proc.wait(max(2.0, self.control_timeout))
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed process exits
            logger.warning("DECTRIS receiver %s did not exit", proc.pid)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        handle, self._handle_path = self._handle_path, None
        if handle:  # left behind by a killed receiver: a socket in a directory of its own
            Path(handle).unlink(missing_ok=True)
            shutil.rmtree(Path(handle).parent, ignore_errors=True)

    def _stderr_tail(self) -> str:
        return "\n".join(self._stderr) or "(no output)"

    def _send(self, command: dict[str, Any]) -> None:
        """One command to the receiver process; ``ConnectionError`` if it is gone."""
        proc = self._proc
        try:
            assert proc is not None and proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        except (AssertionError, OSError, ValueError) as exc:
            raise ConnectionError(f"the DECTRIS receiver process is gone ({exc!r}):\n"
                                  f"{self._stderr_tail()}") from exc

    def _acquire(self, ny: int, nx: int, on_frames: FrameSink) -> None:
        self._ensure_receiver()
        n = ny * nx
        self._send({"cmd": "acquire", "nav_shape": [ny, nx],
                    "frames_per_partition": self._partition(n)})
        self._watch(n, on_frames)

    def _watch(self, n: int, on_frames: FrameSink) -> None:
        """Hand each tile the receiver announces to ``on_frames`` and give its ring slot back,
        until the receiver's ``done``; fail on timeout, abort, error or lost port."""
        where = f"DECTRIS data {self.data_host}:{self.data_port}"
        ring = self._ring
        assert ring is not None
        last = next_probe = time.monotonic()
        done = 0
        while True:
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                event = {}
            now = time.monotonic()
            progress = f"{done}/{n} frames received"
            if event is None:  # the receiver exited
                raise ConnectionError(f"{where}: the receiver process died ({progress}):\n"
                                      f"{self._stderr_tail()}")
            kind = event.get("event")
            if kind == "frames":
                start, k, slot = int(event["start"]), int(event["count"]), int(event["slot"])
                if start != done:
                    raise RuntimeError(f"{where}: frames at {start} arrived out of scan order "
                                       f"({progress})")
                if not self._abort.is_set():  # disarmed: hand nothing more over
                    on_frames(start, ring.slot(slot, k))
                self._send({"cmd": "ack", "slot": slot})
                done, last = start + k, now
            elif kind == "done":
                if int(event["done"]) != n or done != n:
                    raise ConnectionError(f"{where}: acquisition ended early "
                                          f"({event['done']}/{n} frames received)")
                return
            elif kind == "error":
                done = int(event.get("done", done))
                progress = f"{done}/{n} frames received"
                cls = ConnectionError if event.get("kind") == "connection" else RuntimeError
                raise cls(f"{where}: acquisition failed ({progress}): {event['message']}")
            if self._abort.is_set():
                raise RuntimeError(f"{where}: acquisition aborted by disarm() ({progress})")
            if now - last > self.timeout:
                raise TimeoutError(f"{where}: no frames for {self.timeout:g} s ({progress})")
            if now >= next_probe:
                next_probe = now + self.probe_interval
                try:
                    self._probe_data_port("DECTRIS data stream")
                except ConnectionError as exc:
                    raise ConnectionError(f"{where}: connection lost ({progress}): "
                                          f"{exc}") from exc


def _pump_events(stream: Any, events: queue.Queue) -> None:
    """Put each JSON line of ``stream`` on ``events``; ``None`` at the end of the stream."""
    try:
        for line in stream:
            try:
                events.put(json.loads(line))
            except ValueError:
                logger.debug("receiver: %s", line.rstrip())
    except (OSError, ValueError):
        pass
    finally:
        events.put(None)


def _pump_lines(stream: Any, lines: collections.deque) -> None:
    """Keep the last lines of ``stream`` (the receiver's stderr) and log them at DEBUG."""
    try:
        for line in stream:
            lines.append(line.rstrip())
            logger.debug("receiver: %s", line.rstrip())
    except (OSError, ValueError):
        pass
