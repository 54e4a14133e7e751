# Every run of every plan carries the calibration in force for the optics at its start
# (start document keys `calibration` and `calibration_status`; see stemcal.attach).
# To refuse runs without a valid calibration: attach.require = True
# To switch it off for a while:              attach.enabled = False
from stemcal.attach import attach_calibration

attach = attach_calibration(catalog, optics, scan, tolerances=DEFAULT_TOLERANCES)
RE.preprocessors.append(attach)
