"""Ophyd devices of an overfocused 4D-STEM instrument and their backends.

* :class:`ScanGenerator` -- scan shape, step, dwell time, scan rotation.
* :class:`MicroscopeOptics` -- overfocus, camera length, high tension, magnification.
* :class:`PixelatedDetector` -- the generic detector: a controller (backend) plus
  HDF5 writers (:mod:`.writers`); one whole scan per trigger (one 4D event), or a
  live scan (``kickoff``: frames streamed and announced while they arrive).
  :class:`MerlinDetector` and :class:`ArinaDetector` are its leaves (defaults only).
* Backends: :class:`SimBackend` -- the digital twin (:class:`SimulatedMicroscope`);
  :mod:`.hardware` -- the detectors' own protocols (:class:`MerlinHardwareBackend`,
  :class:`DectrisHardwareBackend`), tested against LiberTEM-live's simulators on
  127.0.0.1.
* :func:`make_sim_instrument` -- the simulated instrument wired together;
  :func:`make_hardware_detector` -- the detector a ``[detector]`` table
  (:class:`stemcal.config.DetectorSettings`) describes.
* :class:`MIBKeepingWriter` -- HDF5 for the catalog plus a MIB copy of each scan.
* :class:`CalibrationReadout` -- a calibration's fitted values as a readable row.
"""
from .arina import ARINA_BIT_DEPTH, ARINA_PIXEL_SIZE, ARINA_SIG_SHAPE, ArinaDetector
from .detector import DetectorController, DetectorWriter, PixelatedDetector
from .factory import make_hardware_detector
from .hardware import DectrisHardwareBackend, MerlinHardwareBackend
from .instrument import DETECTOR_KINDS, SimInstrument, make_sim_instrument
from .merlin import MerlinDetector
from .optics import MicroscopeOptics
from .readout import CalibrationReadout
from .scan import ScanGenerator
from .signals import ReadbackSignal, SettingSignal
from .sim import ManualClock, MicroscopeTruth, PhysicalSpecimen, SimBackend, SimulatedMicroscope
from .writers.mib_copy import MIBKeepingWriter
from .writers.scan_file import IMAGE_DIMS, HDF5StreamWriter

__all__ = [
    "ScanGenerator", "MicroscopeOptics", "PixelatedDetector", "MerlinDetector", "ArinaDetector",
    "HDF5StreamWriter", "DetectorController", "DetectorWriter", "IMAGE_DIMS",
    "SimulatedMicroscope", "SimBackend", "MicroscopeTruth", "PhysicalSpecimen", "ManualClock",
    "SimInstrument", "make_sim_instrument", "SettingSignal", "ReadbackSignal",
    "MerlinHardwareBackend", "DectrisHardwareBackend", "ARINA_SIG_SHAPE", "ARINA_PIXEL_SIZE",
    "ARINA_BIT_DEPTH", "DETECTOR_KINDS", "MIBKeepingWriter", "make_hardware_detector",
    "CalibrationReadout",
]
