"""The small simulated scan of the app's tests: its truth, and what an operator knows of it."""
from stemcal.app import Sizes
from stemcal.twin import OverfocusParams

NAV, SIG = (40, 40), (96, 96)
#: Rotation 23.5 deg, flipped, descan; a disk radius of 0.3 of the detector.
TRUTH = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9 * SIG[0] / 128, camera_length=0.2,
                        detector_pixel_size=55e-6, semiconv=0.3 * SIG[0] * 55e-6 / 0.2,
                        cy=SIG[0] / 2 + 2.3, cx=SIG[1] / 2 - 1.7, scan_rotation=23.5,
                        flip_y=True, descan=((0.03, -0.02), (0.01, 0.04)))
#: The sizes and an overfocus guess 30 % off.
SIZES = Sizes(scan_pixel_size=TRUTH.scan_pixel_size, camera_length=TRUTH.camera_length,
              detector_pixel_size=TRUTH.detector_pixel_size, overfocus=1.3 * TRUTH.overfocus)
