"""Hardware backends: detector controllers that speak a real detector's protocol.

Each is the controller half of a :class:`~stemcal.devices.PixelatedDetector`,
with the same interface as the simulated :class:`~stemcal.devices.SimBackend`:

* :class:`~.merlin.MerlinHardwareBackend` -- Quantum Detectors Merlin (TCP control and
  data, through LiberTEM-live); tested against ``libertem-live-mib-sim``;
* :class:`~.dectris.DectrisHardwareBackend` -- DECTRIS ARINA (SIMPLON REST + zmq, through
  LiberTEM-live); tested against ``libertem-live-dectris-sim``.

"Hardware" here means the protocol, not the peer: the same backend drives
the real detector and its simulator. ("Live" in stemcal means a scan whose
frames are streamed and shown while they arrive.)
"""
from .base import HardwareBackend
from .dectris import DectrisHardwareBackend
from .merlin import DetectorRefusedError, MerlinHardwareBackend

__all__ = ["HardwareBackend", "MerlinHardwareBackend", "DectrisHardwareBackend",
           "DetectorRefusedError"]
