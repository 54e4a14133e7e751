"""Projection of overfocused frames: Numba kernels and the LiberTEM ``OverfocusUDF``."""
from .geometry import ProjectionGeometry
from .udf import OverfocusUDF, normalised

__all__ = ["OverfocusUDF", "ProjectionGeometry", "normalised"]
