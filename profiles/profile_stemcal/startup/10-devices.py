# Devices of the instrument (simulated unless configured otherwise).
microscope = session.instrument.microscope
scan = session.instrument.scan
optics = session.instrument.optics
merlin = session.instrument.detector
