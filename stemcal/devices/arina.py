"""A DECTRIS ARINA 4D-STEM detector: the generic detector with ARINA's defaults.

The ophyd structure, staging, triggering, HDF5 writing and the
StreamResource/StreamDatum documents are those of the generic
:class:`~stemcal.devices.PixelatedDetector` (one whole scan per ``trigger()``,
data key ``<name>_image``); only the controller differs. Real ARINA frames
come from :class:`~stemcal.devices.hardware.dectris.DectrisHardwareBackend` (SIMPLON
REST + zmq through LiberTEM-live); simulated ones from
:class:`~stemcal.devices.SimBackend` with a twin of ARINA's shape
(:func:`stemcal.devices.make_sim_instrument` with ``detector="arina"``).
"""
from __future__ import annotations

from typing import Any

from .detector import PixelatedDetector

__all__ = ["ArinaDetector", "ARINA_SIG_SHAPE", "ARINA_PIXEL_SIZE", "ARINA_BIT_DEPTH"]

#: ARINA sensor: 192 x 192 pixels (y, x).
ARINA_SIG_SHAPE = (192, 192)
#: ARINA pixel pitch, metres (100 um).
ARINA_PIXEL_SIZE = 100e-6
#: ARINA image bit depth (``bit_depth_image``) at full frame, bits.
ARINA_BIT_DEPTH = 16


class ArinaDetector(PixelatedDetector):
    """A DECTRIS ARINA acquiring one whole 4D-STEM scan per ``trigger()``.

    Same parameters, components and behaviour as
    :class:`~stemcal.devices.PixelatedDetector`: ``backend`` is a
    :class:`~stemcal.devices.hardware.dectris.DectrisHardwareBackend` for the real
    detector (its defaults are ARINA's: 192 x 192 pixels of 100 um, 16 bit)
    or a :class:`~stemcal.devices.SimBackend`. The configuration
    (``pixel_size`` in metres, ``sig_shape``, ``bit_depth``) comes from the
    backend and is what ``read_configuration()`` reports.
    """

    def __init__(self, name: str = "arina", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
