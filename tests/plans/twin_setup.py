"""The simulated instrument's truth shared by the plan tests (calibrate, live scans).

A 40x40 scan of 96x96 frames: scan rotation 23.5 deg, flipped, the beam 50 nm
more overfocused than the optics setting, a low-symmetry specimen; BLANK is a
specimen with nothing to calibrate on.
"""
import numpy as np

from stemcal.devices import MicroscopeTruth, PhysicalSpecimen

NAV = 40
SIG = 96
DET_PIXEL = 55e-6
CAMERA_LENGTH = 0.2
SCAN_PIXEL = 0.5e-9 * SIG / 128
SEMICONV = 0.3 * SIG * DET_PIXEL / CAMERA_LENGTH
TRUTH = MicroscopeTruth(scan_rotation=23.5, flip_y=True, overfocus_offset=0.05e-6,
                        detector_pixel_size=DET_PIXEL, semiconv=SEMICONV,
                        cy=SIG / 2 + 2.3, cx=SIG / 2 - 1.7)
SPECIMEN = PhysicalSpecimen.generate((256, 256), pixel_size=0.5 * SCAN_PIXEL,
                                     feature_size=0.8 * SCAN_PIXEL, seed=1)
BLANK = PhysicalSpecimen(np.ones((64, 64)), 0.5 * SCAN_PIXEL)
