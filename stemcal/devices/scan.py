"""The scan generator: scan shape, step, dwell time and scan rotation."""
from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device

from .signals import ScaledReadback, SettingSignal, finite, positive, positive_int

__all__ = ["ScanGenerator", "MAX_SCAN_SIDE"]

#: Largest scan side a setting may take, scan pixels: a 1e6 x 1e6 scan is refused at
#: ``set`` (before any acquisition or allocation), not discovered by the detector.
MAX_SCAN_SIDE = 65536


def scan_side(name: str, value: Any) -> None:
    """Accept an integer in ``1..MAX_SCAN_SIDE``; raise ``ValueError`` naming ``name``."""
    positive_int(name, value)
    if int(value) > MAX_SCAN_SIDE:
        raise ValueError(f"{name} must be <= {MAX_SCAN_SIDE} scan pixels, got {value!r}")


class ScanGenerator(Device):
    """Settings of the STEM scan generator (soft signals, validated on ``set``/``put``).

    Components
    ----------
    shape_y, shape_x : int
        Scan shape, scan pixels (1..:data:`MAX_SCAN_SIDE`); frames are acquired row by
        row, ``(y, x)``.
    pixel_size : float
        Scan step, metres per scan pixel (> 0).
    pixel_size_nm : float (read-only, hinted)
        The same in nanometres, for tables.
    dwell_time : float
        Time per scan position, seconds (> 0).
    rotation : float (hinted)
        Scan rotation set on the scan generator, degrees. It adds to the
        instrument's (unknown) detector-to-scan rotation.

    Examples
    --------
    >>> scan = ScanGenerator(name="scan")
    >>> scan.shape_y.set(24).wait(); scan.rotation.set(10.0).wait()
    """

    shape_y = Cpt(SettingSignal, value=32, validator=scan_side, kind="normal")
    shape_x = Cpt(SettingSignal, value=32, validator=scan_side, kind="normal")
    pixel_size = Cpt(SettingSignal, value=0.5e-9, validator=positive, units="m",
                     kind="normal")
    dwell_time = Cpt(SettingSignal, value=1e-3, validator=positive, units="s",
                     kind="normal")
    pixel_size_nm = Cpt(ScaledReadback, "pixel_size", scale=1e9, units="nm", precision=4,
                        kind="hinted")
    rotation = Cpt(SettingSignal, value=0.0, validator=finite, units="deg", precision=2,
                   kind="hinted")

    @property
    def nav_shape(self) -> tuple[int, int]:
        """The scan shape ``(shape_y, shape_x)``, scan pixels."""
        return int(self.shape_y.get()), int(self.shape_x.get())

    def state(self) -> dict[str, Any]:
        """Plain dict of the settings: ``shape_y``, ``shape_x`` (int), ``pixel_size`` (m),
        ``dwell_time`` (s), ``rotation`` (deg)."""
        return {"shape_y": int(self.shape_y.get()), "shape_x": int(self.shape_x.get()),
                "pixel_size": float(self.pixel_size.get()),
                "dwell_time": float(self.dwell_time.get()),
                "rotation": float(self.rotation.get())}
