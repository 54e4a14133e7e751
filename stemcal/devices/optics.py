"""The microscope's probe-forming and projection optics settings."""
from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device

from .signals import ScaledReadback, SettingSignal, nonzero, positive

__all__ = ["MicroscopeOptics"]


class MicroscopeOptics(Device):
    """Optics settings (soft signals, validated on ``set``/``put``).

    Components
    ----------
    overfocus : float
        Focus setting as the microscope reports it: crossover distance above the
        specimen, metres; positive is overfocus. Non-finite values and 0 raise
        ``ValueError``. The true overfocus may differ by an instrument offset.
    overfocus_nm : float (read-only, hinted)
        The same setting in nanometres, for tables (bluesky's
        BestEffortCallback shows the hinted fields with their precision).
    camera_length : float
        Nominal specimen-to-detector distance, metres (> 0).
    high_tension : float
        Accelerating voltage, volts (> 0).
    magnification : float
        Nominal magnification (> 0), dimensionless; recorded, not used by the twin.
    """

    overfocus = Cpt(SettingSignal, value=1e-6, validator=nonzero, units="m",
                    kind="normal")
    overfocus_nm = Cpt(ScaledReadback, "overfocus", scale=1e9, units="nm", precision=1,
                       kind="hinted")
    camera_length = Cpt(SettingSignal, value=0.2, validator=positive, units="m", precision=3,
                        kind="hinted")
    high_tension = Cpt(SettingSignal, value=200e3, validator=positive, units="V",
                       kind="normal")
    magnification = Cpt(SettingSignal, value=1e6, validator=positive, kind="normal")

    def state(self) -> dict[str, Any]:
        """Plain dict of the settings: ``overfocus`` (m), ``camera_length`` (m),
        ``high_tension`` (V), ``magnification``."""
        return {"overfocus": float(self.overfocus.get()),
                "camera_length": float(self.camera_length.get()),
                "high_tension": float(self.high_tension.get()),
                "magnification": float(self.magnification.get())}
