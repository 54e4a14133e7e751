# Devices of the instrument (simulated unless configured otherwise; see [detector] in the
# configuration: kind = "merlin" | "arina", backend = "sim" | "hardware").
from stemcal.devices import ArinaDetector as _ArinaDetector

microscope = session.instrument.microscope
scan = session.instrument.scan
optics = session.instrument.optics
detector = session.instrument.detector  # the configured detector, whatever its kind
if isinstance(detector, _ArinaDetector):
    arina = detector
else:
    merlin = detector
