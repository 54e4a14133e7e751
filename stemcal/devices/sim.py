"""The simulated microscope: one digital twin shared by every simulated device.

:class:`SimulatedMicroscope` holds what a real instrument hides from its user --
the *true* geometry (:class:`MicroscopeTruth`), a fixed specimen
(:class:`PhysicalSpecimen`) and a dose -- plus an injectable clock and sleep.
It turns device *settings* into an :class:`~stemcal.twin.OverfocusParams` and
frames with :func:`stemcal.twin.simulate`:

* true overfocus = optics ``overfocus`` setting + ``truth.overfocus_offset``;
* true camera length = optics ``camera_length`` setting x ``truth.camera_length_scale``;
* true scan rotation = ``truth.scan_rotation`` + scan-generator ``rotation`` setting;
* scan shape and scan pixel size are the scan generator's;
* detector pixel size, convergence semi-angle, beam centre, flip and descan
  are the truth's.

The specimen is fixed in the laboratory frame: rotating the scan rotates the
specimen in the scan's frame, changing the scan step rescales it, and the
frame at the scan middle (the shadow of the same patch of specimen) does not
depend on the scan rotation. :class:`SimBackend` is the detector controller
that acquires from the twin (see :class:`stemcal.devices.MerlinDetector`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..checks import finite, positive
from ..twin import OverfocusParams, SimulatedSpecimen, simulate, test_specimen
from ..twin.model import rotation_matrix, scan_middle
from ..twin.params import ZERO_DESCAN, Matrix2

__all__ = ["MicroscopeTruth", "PhysicalSpecimen", "SimulatedMicroscope", "SimBackend",
           "ManualClock"]


@dataclasses.dataclass(frozen=True)
class MicroscopeTruth:
    """The geometry a simulated instrument really has (what calibration must find).

    Parameters
    ----------
    scan_rotation : float
        Detector-to-scan rotation at scan-generator rotation 0, degrees
        (LiberTEM's convention, see :class:`~stemcal.twin.OverfocusParams`).
    flip_y : bool
        Detector y axis flipped relative to the scan.
    overfocus_offset : float
        True overfocus minus the optics' ``overfocus`` setting, metres.
    camera_length_scale : float
        True camera length divided by the optics' ``camera_length`` setting (> 0).
    detector_pixel_size : float
        Detector pixel pitch, metres (> 0).
    semiconv : float
        Convergence semi-angle, radians (> 0).
    cy, cx : float or None
        Beam centre at the scan middle, detector pixels; ``None`` puts it at
        ``sig_shape / 2``.
    descan : 2x2
        Linear descan error, detector px per scan px (rows detector (y, x),
        columns scan (y, x)).
    """

    scan_rotation: float = 0.0
    flip_y: bool = False
    overfocus_offset: float = 0.0
    camera_length_scale: float = 1.0
    detector_pixel_size: float = 55e-6
    semiconv: float = 10e-3
    cy: float | None = None
    cx: float | None = None
    descan: Matrix2 = ZERO_DESCAN

    def __post_init__(self) -> None:
        object.__setattr__(self, "overfocus_offset",
                           finite("overfocus_offset", self.overfocus_offset))
        # OverfocusParams validates every other field (finite, > 0, bool, 2x2 descan).
        probe = OverfocusParams(
            overfocus=1.0, scan_pixel_size=1.0, camera_length=self.camera_length_scale,
            detector_pixel_size=self.detector_pixel_size, semiconv=self.semiconv,
            cy=0.0 if self.cy is None else self.cy, cx=0.0 if self.cx is None else self.cx,
            scan_rotation=self.scan_rotation, flip_y=self.flip_y, descan=self.descan)
        for name in ("scan_rotation", "flip_y", "detector_pixel_size", "semiconv", "descan"):
            object.__setattr__(self, name, getattr(probe, name))
        object.__setattr__(self, "camera_length_scale", probe.camera_length)
        for name in ("cy", "cx"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, getattr(probe, name))


@dataclasses.dataclass(frozen=True)
class PhysicalSpecimen:
    """A transmission image fixed in the laboratory frame, centred on the optical axis.

    ``image[j, i]`` is the transmission at ``((j, i) - centre) * pixel_size``
    metres from the axis, ``centre = ((h - 1) / 2, (w - 1) / 2)``; the scan
    middle (``(ny // 2, nx // 2)``) sits on the axis. Outside the image the
    transmission is 1 (vacuum).
    """

    image: np.ndarray
    pixel_size: float

    def __post_init__(self) -> None:
        img = np.asarray(self.image, dtype=np.float64)
        if img.ndim != 2 or min(img.shape) < 4:
            raise ValueError(f"specimen image must be 2D and at least 4x4, got shape {img.shape}")
        object.__setattr__(self, "pixel_size", positive("specimen pixel_size", self.pixel_size))
        img.setflags(write=False)
        object.__setattr__(self, "image", img)

    @classmethod
    def generate(cls, shape: tuple[int, int] = (512, 512), *, pixel_size: float = 0.25e-9,
                 feature_size: float = 0.4e-9, seed: int = 0) -> "PhysicalSpecimen":
        """The built-in low-symmetry test specimen (:func:`stemcal.twin.test_specimen`).

        Parameters
        ----------
        shape : (h, w)
            Image shape, specimen pixels.
        pixel_size : float
            Specimen pixel pitch, metres.
        feature_size : float
            Smoothing of the finest features, metres.
        seed : int
            Same seed, same specimen.
        """
        img = test_specimen(shape, seed=seed, feature_size=feature_size / pixel_size)
        return cls(img, pixel_size)

    def in_scan_frame(self, nav_shape: tuple[int, int], scan_pixel_size: float,
                      rotation_deg: float = 0.0) -> SimulatedSpecimen:
        """The specimen as :func:`stemcal.twin.simulate` wants it: in scan pixels.

        Parameters
        ----------
        nav_shape : (ny, nx)
            Scan shape; its middle ``(ny // 2, nx // 2)`` is put on the axis.
        scan_pixel_size : float
            Scan step, metres.
        rotation_deg : float
            Scan-generator rotation, degrees: a vector ``v`` fixed in the
            specimen appears as ``rotate_deg(rotation_deg) @ v`` in the scan
            frame, so the scan rotation adds to the detector-to-scan rotation.
        """
        from scipy import ndimage

        img = self.image
        centre = (np.array(img.shape, dtype=float) - 1) / 2
        if (rotation_deg % 360.0) != 0.0:
            # out[o] = img[R(-a) (o - c) + c]: the scan-frame image of the lab-fixed specimen.
            m = rotation_matrix(-rotation_deg)
            img = ndimage.affine_transform(img, m, offset=centre - m @ centre, order=1,
                                           mode="constant", cval=1.0)
        per_scan_px = scan_pixel_size / self.pixel_size
        origin = scan_middle(nav_shape) - centre / per_scan_px
        return SimulatedSpecimen(img, (float(origin[0]), float(origin[1])), float(per_scan_px))


class ManualClock:
    """A clock for tests: ``sleep(dt)`` advances ``time()`` by ``dt`` at once.

    Pass ``clock=c.time, sleep=c.sleep`` to :class:`SimulatedMicroscope`.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def time(self) -> float:
        """Current simulated time, seconds."""
        with self._lock:
            return self._t

    def sleep(self, seconds: float) -> None:
        """Advance the simulated time by ``seconds`` (>= 0) without waiting."""
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time, got {seconds!r}")
        with self._lock:
            self._t += float(seconds)
            self.slept.append(float(seconds))


class SimulatedMicroscope:
    """The digital twin behind every simulated device.

    Parameters
    ----------
    truth : MicroscopeTruth, optional
        The true geometry; default :class:`MicroscopeTruth()`.
    sig_shape : (int, int)
        Detector shape, pixels (y, x).
    specimen : PhysicalSpecimen, optional
        Default :meth:`PhysicalSpecimen.generate` with ``seed``.
    seed : int
        Seeds the default specimen and the shot noise (acquisition ``n`` uses
        ``seed + n``, so repeated acquisitions differ but a session is reproducible).
    dose : float or None
        Mean counts per detector pixel at full transmission; with a dose the
        frames get Poisson noise, with ``None`` they are noise-free at 100 counts.
    background : float
        Counts added to every pixel before noise.
    clock, sleep : callables
        ``clock() -> seconds`` and ``sleep(seconds)``; an acquisition sleeps
        ``ny * nx * dwell_time``. Inject :class:`ManualClock` in tests.

    Notes
    -----
    Attach the scan generator and optics the devices read from with
    :meth:`attach`; :meth:`frames` itself is a pure function of the settings
    passed in (plus the noise seed).
    """

    def __init__(self, truth: MicroscopeTruth | None = None, *,
                 sig_shape: tuple[int, int] = (256, 256),
                 specimen: PhysicalSpecimen | None = None, seed: int = 0,
                 dose: float | None = None, background: float = 0.0,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.truth = truth if truth is not None else MicroscopeTruth()
        if not isinstance(self.truth, MicroscopeTruth):
            raise ValueError(f"truth must be a MicroscopeTruth, got {type(self.truth).__name__}")
        sig = tuple(int(n) for n in sig_shape)
        if len(sig) != 2 or min(sig) < 2:
            raise ValueError(f"sig_shape must be two integers >= 2, got {sig_shape!r}")
        self.sig_shape: tuple[int, int] = (sig[0], sig[1])
        self.dose = None if dose is None else positive("dose", dose)
        self.background = float(background)
        self.seed = int(seed)
        self.specimen = specimen if specimen is not None else PhysicalSpecimen.generate(seed=seed)
        self.clock = clock
        self.sleep = sleep
        self.scan: Any = None
        self.optics: Any = None
        self.n_acquired = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(truth={self.truth!r}, sig_shape={self.sig_shape}, "
                f"seed={self.seed}, dose={self.dose})")

    def attach(self, *, scan: Any, optics: Any) -> "SimulatedMicroscope":
        """Name the scan generator and optics whose ``state()`` acquisitions use; returns self."""
        for what, dev in (("scan", scan), ("optics", optics)):
            if not callable(getattr(dev, "state", None)):
                raise ValueError(f"{what} must have a state() method, got {dev!r}")
        self.scan, self.optics = scan, optics
        return self

    # -- pure part ------------------------------------------------------------------------
    def geometry(self, scan_state: Mapping[str, Any],
                 optics_state: Mapping[str, Any]) -> OverfocusParams:
        """The true :class:`~stemcal.twin.OverfocusParams` for these settings.

        Parameters
        ----------
        scan_state : mapping
            :meth:`ScanGenerator.state`: ``pixel_size`` (m) and ``rotation`` (deg) are used.
        optics_state : mapping
            :meth:`MicroscopeOptics.state`: ``overfocus`` and ``camera_length`` (m) are used.

        Raises
        ------
        ValueError
            If the settings give an impossible geometry (e.g. a true overfocus of 0).
        """
        t = self.truth
        rot = (t.scan_rotation + float(scan_state["rotation"]) + 180.0) % 360.0 - 180.0
        return OverfocusParams(
            overfocus=float(optics_state["overfocus"]) + t.overfocus_offset,
            scan_pixel_size=float(scan_state["pixel_size"]),
            camera_length=float(optics_state["camera_length"]) * t.camera_length_scale,
            detector_pixel_size=t.detector_pixel_size, semiconv=t.semiconv,
            cy=self.sig_shape[0] / 2 if t.cy is None else t.cy,
            cx=self.sig_shape[1] / 2 if t.cx is None else t.cx,
            scan_rotation=rot, flip_y=t.flip_y, descan=t.descan)

    def frames(self, scan_state: Mapping[str, Any], optics_state: Mapping[str, Any], *,
               seed: int | None = None) -> np.ndarray:
        """Simulate one whole scan for these settings (no sleeping, no counting).

        Parameters
        ----------
        scan_state, optics_state : mapping
            As :meth:`geometry`; ``shape_y``/``shape_x`` give the scan shape.
        seed : int, optional
            Noise seed (default ``self.seed``); irrelevant without a dose.

        Returns
        -------
        (ny, nx, sy, sx) uint16 array.
        """
        params = self.geometry(scan_state, optics_state)
        nav = (int(scan_state["shape_y"]), int(scan_state["shape_x"]))
        specimen = self.specimen.in_scan_frame(nav, params.scan_pixel_size,
                                               float(scan_state["rotation"]))
        return simulate(params, nav, self.sig_shape, specimen=specimen, dose=self.dose,
                        background=self.background,
                        seed=self.seed if seed is None else int(seed), dtype="uint16")

    # -- the instrument -------------------------------------------------------------------
    def states(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(scan.state(), optics.state())`` of the attached devices."""
        if self.scan is None or self.optics is None:
            raise RuntimeError("no scan generator/optics attached: "
                               "call attach(scan=..., optics=...)")
        return dict(self.scan.state()), dict(self.optics.state())

    def acquire(self, on_frames: Callable[[int, np.ndarray], None] | None = None,
                abort: Callable[[], bool] | None = None) -> np.ndarray:
        """Acquire a whole scan with the attached devices' current settings.

        The scan is taken row by row: each row takes ``nx * dwell_time`` on
        the injected clock (``ny * nx * dwell_time`` in all), then its frames
        are handed to ``on_frames``. Acquisition ``n`` (counting from 0) uses
        noise seed ``seed + n``.

        Parameters
        ----------
        on_frames : callable, optional
            ``on_frames(start, frames)``: the ``nx`` frames ``(nx, sy, sx)``
            of each row as it ends, ``start`` its first flat scan position.
        abort : callable, optional
            Asked after each row's dwell; if it returns True the acquisition
            stops there (that row is lost) with ``RuntimeError``.

        Returns
        -------
        (ny, nx, sy, sx) uint16 array.
        """
        scan_state, optics_state = self.states()
        with self._lock:
            n = self.n_acquired
            self.n_acquired += 1
        data = self.frames(scan_state, optics_state, seed=self.seed + n)
        ny, nx = data.shape[:2]
        for y in range(ny):
            self.sleep(nx * scan_state["dwell_time"])
            if abort is not None and abort():
                raise RuntimeError(f"acquisition aborted after {y * nx} of {ny * nx} frames")
            if on_frames is not None:
                on_frames(y * nx, data[y])
        return data


class SimBackend:
    """Detector controller that acquires from a :class:`SimulatedMicroscope`.

    Implements the controller half of :class:`stemcal.devices.MerlinDetector`:
    ``prepare()`` (at stage; fails loudly if the twin has no scan/optics
    attached), ``acquire(on_frames)`` (a whole scan, (ny, nx, sy, sx) uint16,
    handed row by row to ``on_frames``; raises before ``prepare`` and when
    disarmed midway), ``disarm()``, ``frame_shape()`` and the detector's
    fixed properties ``sig_shape``, ``pixel_size`` (m), ``bit_depth``, ``dtype``.
    """

    bit_depth = 16
    dtype = np.dtype("<u2")

    def __init__(self, microscope: SimulatedMicroscope) -> None:
        if not isinstance(microscope, SimulatedMicroscope):
            raise ValueError(f"microscope must be a SimulatedMicroscope, got {microscope!r}")
        self.microscope = microscope
        self._prepared = False
        self._abort = threading.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.microscope!r})"

    @property
    def source(self) -> str:
        """Data-key source string."""
        return "sim:stemcal.devices.SimulatedMicroscope"

    @property
    def sig_shape(self) -> tuple[int, int]:
        """Detector shape (sy, sx), pixels."""
        return self.microscope.sig_shape

    @property
    def pixel_size(self) -> float:
        """Detector pixel pitch, metres."""
        return self.microscope.truth.detector_pixel_size

    def frame_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(ny, nx, sy, sx)`` the next acquisition will have."""
        scan_state, _ = self.microscope.states()
        return (int(scan_state["shape_y"]), int(scan_state["shape_x"])) + self.sig_shape

    def prepare(self) -> None:
        """Get ready to acquire; ``RuntimeError`` if the twin has no scan/optics attached."""
        self.microscope.states()
        self._abort.clear()
        self._prepared = True

    def acquire(self, on_frames: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
        """Acquire one whole scan, row by row (see :meth:`SimulatedMicroscope.acquire`).

        Raises
        ------
        RuntimeError
            Before :meth:`prepare`, or when :meth:`disarm` stops it (after the
            current row's dwell; the rows before it went to ``on_frames``).
        """
        if not self._prepared:
            raise RuntimeError("acquire() before prepare(): stage the detector first")
        return self.microscope.acquire(on_frames, abort=self._abort.is_set)

    @property
    def abort_requested(self) -> bool:
        """Whether :meth:`disarm` asked a running acquisition to stop (cleared by prepare)."""
        return self._abort.is_set()

    def disarm(self) -> None:
        """Return to idle (idempotent); a running acquisition stops after its current row."""
        self._prepared = False
        self._abort.set()

    def time(self) -> float:
        """The twin's clock, seconds."""
        return self.microscope.clock()
