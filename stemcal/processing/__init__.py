"""Projection of overfocused frames into the specimen plane.

* :mod:`.kernels` -- splatting and sampling kernels, each with a NumPy twin;
* :mod:`.pass_kernel` -- the one-read bin-sum-splat kernel of a pass;
* :mod:`.threads` -- the thread pool the kernels share;
* :mod:`.window` -- the disk window and the bin side;
* :mod:`.tile` -- one block of frames into a pass's accumulators;
* :mod:`.images` -- the images from the accumulators;
* :mod:`.udf` -- :class:`OverfocusUDF`, a pass over a LiberTEM data set;
* :mod:`.live_projection` -- :class:`LiveProjection`, the same pass built up as
  the frames of a live scan arrive.
"""
from .geometry import ProjectionGeometry
from .images import normalised
from .live_projection import LiveProjection
from .udf import OverfocusUDF

__all__ = ["OverfocusUDF", "LiveProjection", "ProjectionGeometry", "normalised"]
