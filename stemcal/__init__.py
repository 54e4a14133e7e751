"""stemcal: scan-to-detector calibration of overfocused 4D-STEM data.

Subpackages: :mod:`stemcal.twin` (parameters, projection model, digital twin,
simulator), :mod:`stemcal.processing` (LiberTEM UDF and Numba kernels),
:mod:`stemcal.fit` (blur metric, loss, refinement, cold start).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("stemcal")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
