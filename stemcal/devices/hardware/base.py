"""What the real-protocol detector backends share: settings checks, fixed properties, and
the guarded ``acquire`` (one at a time, after ``prepare``, abortable, size-bounded).

Subclasses (:class:`~stemcal.devices.hardware.merlin.MerlinHardwareBackend`,
:class:`~stemcal.devices.hardware.dectris.DectrisHardwareBackend`) set :attr:`scheme`,
:attr:`depth_name` and :attr:`depth_dtypes`, call :meth:`_init_common` from their
``__init__`` and implement ``prepare``, ``_acquire(ny, nx, on_frames)``,
``_after_failed_acquire()`` and ``close``.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ...checks import is_integer, port, positive

#: Most frames per LiberTEM partition unless a backend is given ``frames_per_partition``
#: (LiberTEM-live's own default).
FRAMES_PER_PARTITION = 256
#: ... and at most the frames of this many seconds of the scan's dwell time, so that a slow
#: scan still hands frames on every so often.
PARTITION_SECONDS = 0.1


class HardwareBackend:
    """Base of the detector controllers that talk to a real (or simulated) detector.

    ``scan`` is anything with a ``nav_shape`` ``(ny, nx)`` property, read at
    every acquisition. Every parameter is checked at construction
    (``ValueError`` naming it); nothing is contacted before ``prepare()``.
    """

    #: Data-key source scheme, e.g. ``"merlin"`` (source ``merlin://host:port``).
    scheme: ClassVar[str] = ""
    #: Name of the counter/bit-depth argument, as it appears in messages.
    depth_name: ClassVar[str] = "bit_depth"
    #: Supported depth -> frame dtype.
    depth_dtypes: ClassVar[dict[int, np.dtype]] = {}

    def _init_common(self, scan: Any, *, api_host: str, api_port: int, data_host: str,
                     data_port: int, sig_shape: tuple[int, int], depth: int, pixel_size: float,
                     timeout: float, control_timeout: float, frames_per_partition: int | None,
                     max_bytes: int) -> None:
        try:
            nav = scan.nav_shape
        except AttributeError:
            raise ValueError(f"scan must have a nav_shape (ny, nx), got {scan!r}") from None
        if len(tuple(nav)) != 2:
            raise ValueError(f"scan.nav_shape must be (ny, nx), got {nav!r}")
        self.scan = scan
        for name, host in (("api_host", api_host), ("data_host", data_host)):
            if not isinstance(host, str) or not host:
                raise ValueError(f"{name} must be a non-empty host name or address, got {host!r}")
        self.api_host, self.data_host = api_host, data_host
        self.api_port = port("api_port", api_port)
        self.data_port = port("data_port", data_port)
        sig = tuple(sig_shape)
        if len(sig) != 2 or not all(is_integer(n) and n >= 1 for n in sig):
            raise ValueError(f"sig_shape must be two integers >= 1, got {sig_shape!r}")
        self._sig_shape = (int(sig[0]), int(sig[1]))
        if isinstance(depth, bool) or depth not in self.depth_dtypes:
            raise ValueError(f"{self.depth_name} must be one of {sorted(self.depth_dtypes)}, "
                             f"got {depth!r}")
        self.bit_depth = int(depth)
        self.dtype = self.depth_dtypes[self.bit_depth]
        self._pixel_size = positive("pixel_size", pixel_size)
        self.timeout = positive("timeout", timeout)
        self.control_timeout = positive("control_timeout", control_timeout)
        if frames_per_partition is not None and not (is_integer(frames_per_partition)
                                                     and frames_per_partition >= 1):
            raise ValueError(f"frames_per_partition must be None or an integer >= 1, "
                             f"got {frames_per_partition!r}")
        self.frames_per_partition = frames_per_partition
        self.max_bytes = int(positive("max_bytes", max_bytes))
        self._prepared = False
        self._lock = threading.Lock()        # one acquisition at a time
        self._abort = threading.Event()      # set by disarm() during an acquisition
        self._running = False

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(api={self.api_host}:{self.api_port}, "
                f"data={self.data_host}:{self.data_port}, sig_shape={self._sig_shape}, "
                f"{self.depth_name}={self.bit_depth})")

    # -- fixed properties -----------------------------------------------------------------
    @property
    def source(self) -> str:
        """Data-key source string."""
        return f"{self.scheme}://{self.api_host}:{self.api_port}"

    @property
    def sig_shape(self) -> tuple[int, int]:
        """Detector shape (sy, sx), pixels."""
        return self._sig_shape

    @property
    def pixel_size(self) -> float:
        """Detector pixel pitch, metres."""
        return self._pixel_size

    def frame_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(ny, nx, sy, sx)`` the next acquisition will have."""
        ny, nx = (int(n) for n in self.scan.nav_shape)
        return (ny, nx) + self._sig_shape

    # -- controller interface -------------------------------------------------------------
    def acquire(self, on_frames: Callable[[int, np.ndarray], None] | None = None
                ) -> np.ndarray | None:
        """Acquire one whole scan of ``scan.nav_shape`` (blocking).

        Parameters
        ----------
        on_frames : callable, optional
            ``on_frames(start, frames)`` with each block of frames ``(k, sy, sx)``
            as it arrives, in scan order (``start`` the flat scan position of
            the first), on the receiving thread; one LiberTEM partition at a
            time. ``frames`` is valid during the call only (its memory may be
            reused for later frames): copy what is to be kept.

        Returns
        -------
        (ny, nx, sy, sx) array of :attr:`dtype`, or None
            Without ``on_frames``, the frames in scan order, as the detector
            sent them (held in memory: at most ``max_bytes``). With
            ``on_frames``, None: the frames went there and none is kept.

        Raises
        ------
        RuntimeError
            Before :meth:`prepare`, during another acquisition, when disarmed
            meanwhile, or when the detector reports an error.
        ValueError
            Without ``on_frames``: the scan would exceed ``max_bytes``.
        ConnectionError
            The detector or its data connection went away.
        TimeoutError
            No frames for ``timeout`` seconds.
        """
        if not self._prepared:
            raise RuntimeError("acquire() before prepare(): stage the detector first")
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("acquire() while another acquisition is running")
        try:
            self._running = True
            if self._abort.is_set():
                raise RuntimeError("acquisition aborted: the detector was disarmed")
            ny, nx, sy, sx = self.frame_shape()
            kept = None
            sink = on_frames
            if sink is None:  # keep the whole scan
                size = ny * nx * sy * sx * self.dtype.itemsize
                if size > self.max_bytes:
                    raise ValueError(f"scan {ny}x{nx} of {sy}x{sx} frames needs {size} bytes, "
                                     f"more than max_bytes={self.max_bytes}")
                kept = np.empty((ny * nx, sy, sx), dtype=self.dtype)

                def sink(start: int, frames: np.ndarray) -> None:
                    kept[start:start + len(frames)] = frames
            try:
                self._acquire(ny, nx, sink)
            except BaseException:
                self._after_failed_acquire()
                raise
            return None if kept is None else kept.reshape(ny, nx, sy, sx)
        finally:
            self._running = False
            self._lock.release()

    def disarm(self) -> None:
        """Return to idle (idempotent); a running acquisition is aborted with ``RuntimeError``."""
        self._prepared = False
        if self._running:
            self._abort.set()

    # -- for subclasses -------------------------------------------------------------------
    def _partition(self, n: int) -> int:
        """Frames per LiberTEM partition of a scan of ``n`` frames: ``frames_per_partition``,
        else :data:`FRAMES_PER_PARTITION` but at most :data:`PARTITION_SECONDS` of the scan's
        ``dwell_time`` (where the scan has one)."""
        k = self.frames_per_partition
        if k is None:
            k = FRAMES_PER_PARTITION
            try:
                dwell = float(self.scan.dwell_time.get())
            except (AttributeError, TypeError, ValueError):
                dwell = 0.0
            if dwell > 0:
                k = min(k, int(PARTITION_SECONDS / dwell))
        return max(1, min(int(k), n))

    def _probe_data_port(self, what: str) -> None:
        """``ConnectionError`` unless the data port accepts a TCP connection (within
        ``control_timeout``); ``what`` names the server in the message."""
        try:
            socket.create_connection((self.data_host, self.data_port),
                                     timeout=self.control_timeout).close()
        except OSError as exc:
            raise ConnectionError(f"cannot reach the {what} at "
                                  f"{self.data_host}:{self.data_port}: {exc}") from exc

    def _check_detector(self, what: str, shape: tuple[int, int], depth: int) -> None:
        """``RuntimeError`` unless the detector's frame shape and depth are the configured ones."""
        if tuple(shape) != self._sig_shape or depth != self.bit_depth:
            raise RuntimeError(
                f"{what} at {self.api_host}:{self.api_port} has frames {tuple(shape)} at "
                f"{self.depth_name.replace('_', ' ')} {depth}; this backend is configured for "
                f"{self._sig_shape} at {self.bit_depth}")

    def _acquire(self, ny: int, nx: int, on_frames: Callable[[int, np.ndarray], None]) -> None:
        """Acquire ``ny * nx`` frames, handing each block to ``on_frames`` in scan order;
        return when all came, raise otherwise (see :meth:`acquire`)."""
        raise NotImplementedError

    def _after_failed_acquire(self) -> None:
        """Clean up after an acquisition that raised (drop connections, disarm)."""
