"""Build the hardware detector a ``[detector]`` table describes.

See :class:`stemcal.config.DetectorSettings` for the table. A
simulated detector (``backend = "sim"``) is built with the twin by
:func:`stemcal.devices.make_sim_instrument` instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import DetectorSettings

__all__ = ["make_hardware_detector"]


def make_hardware_detector(settings: DetectorSettings, scan: Any,
                       write_dir: str | os.PathLike) -> Any:
    """A :class:`~stemcal.devices.MerlinDetector` or :class:`~stemcal.devices.ArinaDetector`
    with its hardware backend (:mod:`stemcal.devices.hardware`), named after
    ``settings.kind``.

    Nothing is contacted here: the backend checks the detector when the
    device is staged.

    Parameters
    ----------
    settings : DetectorSettings
        With ``backend = "hardware"``.
    scan : ScanGenerator
        The scan generator whose ``nav_shape`` each acquisition uses.
    write_dir : path
        Where the files go.
    """
    from .arina import ArinaDetector
    from .hardware.dectris import DectrisHardwareBackend
    from .hardware.merlin import MerlinHardwareBackend
    from .merlin import MerlinDetector
    from .writers.mib_copy import MIBKeepingFrameWriter, MIBKeepingWriter

    if not settings.is_hardware:
        raise ValueError(f"make_hardware_detector needs backend = 'hardware', "
                         f"got {settings.backend!r}")
    r = settings.resolved()
    common = dict(api_host=r["api_host"], api_port=r["api_port"], data_host=r["data_host"],
                  data_port=r["data_port"], sig_shape=r["sig_shape"],
                  pixel_size=r["pixel_size"], timeout=settings.timeout)
    if settings.kind == "merlin":
        backend = MerlinHardwareBackend(scan, counter_depth=r["bit_depth"], **common)
        if settings.keep_mib:
            writer, stream_writer = MIBKeepingWriter(write_dir), MIBKeepingFrameWriter(write_dir)
        else:
            writer = stream_writer = None
        return MerlinDetector("merlin", backend=backend, write_dir=Path(write_dir), writer=writer,
                              stream_writer=stream_writer)
    backend = DectrisHardwareBackend(scan, bit_depth=r["bit_depth"], **common)
    return ArinaDetector("arina", backend=backend, write_dir=Path(write_dir))
