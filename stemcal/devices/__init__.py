"""Ophyd devices of an overfocused 4D-STEM instrument and their simulated backends.

* :class:`ScanGenerator` -- scan shape, step, dwell time, scan rotation.
* :class:`MicroscopeOptics` -- overfocus, camera length, high tension, magnification.
* :class:`MerlinDetector` -- controller + :class:`HDF5StreamWriter`; one whole scan
  per trigger, emitted as StreamResource/StreamDatum documents.
* :class:`SimulatedMicroscope` -- the digital twin shared by the simulated
  devices; :class:`SimBackend` is its detector controller.
* :func:`make_sim_instrument` -- all of the above wired together.
* :class:`MerlinLiveBackend` -- the real Merlin protocol (TCP control + data) through
  LiberTEM-live; tested against LiberTEM-live's Merlin simulator on 127.0.0.1.
* :class:`ArinaDetector` -- a DECTRIS ARINA (MerlinDetector's machinery, ARINA's
  defaults); :class:`DectrisLiveBackend` is its real controller (SIMPLON REST + zmq
  through LiberTEM-live), tested against ``libertem-live-dectris-sim``.
* :class:`MIBKeepingWriter` -- HDF5 for the catalog plus a MIB copy of each scan.
* :func:`make_live_detector` -- the real detector a ``[detector]`` table
  (:class:`stemcal.detector_config.DetectorSettings`) describes.
"""
from .arina import ARINA_BIT_DEPTH, ARINA_PIXEL_SIZE, ARINA_SIG_SHAPE, ArinaDetector
from .dectris_live import DectrisLiveBackend
from .factory import make_live_detector
from .instrument import DETECTOR_KINDS, SimInstrument, make_sim_instrument
from .live import MerlinLiveBackend
from .merlin import IMAGE_DIMS, DetectorController, DetectorWriter, HDF5StreamWriter, MerlinDetector
from .mib_writer import MIBKeepingWriter
from .optics import MicroscopeOptics
from .scan import ScanGenerator
from .signals import ReadbackSignal, SettingSignal
from .sim import ManualClock, MicroscopeTruth, PhysicalSpecimen, SimBackend, SimulatedMicroscope

__all__ = [
    "ScanGenerator", "MicroscopeOptics", "MerlinDetector", "HDF5StreamWriter",
    "DetectorController", "DetectorWriter", "IMAGE_DIMS", "SimulatedMicroscope", "SimBackend",
    "MicroscopeTruth", "PhysicalSpecimen", "ManualClock", "SimInstrument", "make_sim_instrument",
    "SettingSignal", "ReadbackSignal", "MerlinLiveBackend", "ArinaDetector", "DectrisLiveBackend",
    "ARINA_SIG_SHAPE", "ARINA_PIXEL_SIZE", "ARINA_BIT_DEPTH", "DETECTOR_KINDS", "MIBKeepingWriter",
    "make_live_detector",
]
