"""``python -m multislice OUT --specimen ...``: write one dataset and its truth."""
from __future__ import annotations

import argparse
import json
import logging

from . import SPECIMENS, generate, write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p.add_argument("out", help="output stem: writes OUT.npy and OUT.json")
    p.add_argument("--specimen", choices=SPECIMENS, default="carbon_au")
    p.add_argument("--nav-shape", type=int, nargs=2, default=(32, 32))
    p.add_argument("--sig-shape", type=int, nargs=2, default=(64, 64))
    p.add_argument("--scan-rotation", type=float, default=23.0)
    p.add_argument("--flip-y", action="store_true")
    p.add_argument("--overfocus", type=float, default=500e-9)
    p.add_argument("--semiconv", type=float, default=6e-3)
    p.add_argument("--scan-pixel-size", type=float, default=0.25e-9)
    p.add_argument("--camera-length", type=float, default=0.2)
    p.add_argument("--detector-pixel-size", type=float, default=55e-6)
    p.add_argument("--cy", type=float)
    p.add_argument("--cx", type=float)
    p.add_argument("--oversample", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dose", type=float)
    p.add_argument("--noise-seed", type=int, default=1)
    a = p.parse_args(argv)
    data, truth = generate(a.specimen, nav_shape=tuple(a.nav_shape), sig_shape=tuple(a.sig_shape),
                           scan_rotation=a.scan_rotation, flip_y=a.flip_y, overfocus=a.overfocus,
                           semiconv=a.semiconv, scan_pixel_size=a.scan_pixel_size,
                           camera_length=a.camera_length,
                           detector_pixel_size=a.detector_pixel_size, cy=a.cy, cx=a.cx,
                           oversample=a.oversample, seed=a.seed, dose=a.dose,
                           noise_seed=a.noise_seed, verbose=True)
    paths = write(a.out, data, truth)
    print(json.dumps({"npy": str(paths[0]), "json": str(paths[1]),
                      "seconds": truth["seconds"], "cached": truth["cached"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
