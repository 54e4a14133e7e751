"""Parameters, the linear projection model, the ray-traced digital twin and the simulator.

The ray-traced twin (:mod:`stemcal.twin.optics`) imports JAX; it is not
imported here so that processing and fitting do not pay for it.
"""
from .model import (SpecimenMap, beam_centres, decompose_matrix, detector_to_scan, flip_matrix,
                    rotation_matrix, scan_middle, specimen_map, specimen_matrix)
from .params import OverfocusParams, overfocus_from_ratio
from .simulate import SimulatedSpecimen, default_specimen, simulate
from .specimen import test_specimen

__all__ = [
    "OverfocusParams", "overfocus_from_ratio", "SpecimenMap", "specimen_map", "specimen_matrix",
    "beam_centres", "decompose_matrix", "detector_to_scan", "flip_matrix", "rotation_matrix",
    "scan_middle", "simulate", "default_specimen", "SimulatedSpecimen", "test_specimen",
]
