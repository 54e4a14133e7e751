"""Parameters, the linear projection model, the ray-traced digital twin and the simulator.

The names below are loaded on first use (PEP 562), so that importing
:mod:`stemcal.twin.params` -- as the calibration record does -- costs no
Numba: reading commands (``stemcal history``) never compile or load the
simulator. The ray-traced twin (:mod:`stemcal.twin.optics`) imports JAX; it
is not among them either.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name -> submodule that defines it.
_HOMES = {
    "SpecimenMap": "model", "beam_centres": "model", "decompose_matrix": "model",
    "detector_to_scan": "model", "flip_matrix": "model", "rotation_matrix": "model",
    "scan_middle": "model", "specimen_map": "model", "specimen_matrix": "model",
    "OverfocusParams": "params", "overfocus_from_ratio": "params",
    "SimulatedSpecimen": "simulator", "default_specimen": "simulator", "simulate": "simulator",
    "test_specimen": "specimen",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
