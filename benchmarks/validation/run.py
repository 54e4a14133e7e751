"""Validation of the calibration against truth it did not write (``make validate``).

Run from the repository root::

    .venv/bin/python benchmarks/validation/run.py            # everything (see below)
    .venv/bin/python benchmarks/validation/run.py --quick    # fewer cases and files

Prints, as plain-text tables:

1. the multislice (abTEM) set of ``cases.py``: truth beside the cold-start fit, with the
   reported 1-sigma uncertainty, the error in units of it and the quality; then each
   noisy row's rotation error beyond 0.05 deg in units of the Cramer-Rao bound of its
   data (``bound.py``);
2. the low-dose geometric set: 30 seeded noise realisations at 3 counts/px
   (``stemcal.twin.simulate``), and a geometric case with descan up to 0.06 px/scan px;
   then the fits' errors against the Cramer-Rao bound of their data with the specimen
   unknown (``bound.py``, the ``disk95`` part the fits use; about 1.5 s per seed);
3. coverage: the share of fits with |error| <= 2 sigma, rotation and overfocus, and the
   overfocus within 2 sigma plus the truth's own ambiguity (half the specimen's thickness:
   a thick specimen has no single plane the overfocus refers to);
4. how many of 100 files of pure noise or blank specimens come back "ok";
5. the low-dose multislice rows again over more Poisson seeds of the same noise-free
   frames (``SEED_DOSE`` counts/px, seeds 1-``SEEDS``): per case the RMS, mean and
   scatter of the rotation and overfocus errors, the Cramer-Rao bound of the case's
   data (``bound.multislice_bound``: the specimen its noise-free frames show, unknown)
   and the coverage, so that one row of table 1 can be read as a draw from its case's
   spread, and the spread beside what the data allow.

Nothing is asserted (``tests/fit/test_wave.py`` and ``test_coverage.py`` assert the
same on smaller sets). ``--json PATH`` also writes every row.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))       # the multislice generator lives with the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bound  # noqa: E402
import cases  # noqa: E402
import multislice  # noqa: E402
from stemcal.fit.coarse import cold_start  # noqa: E402
from stemcal.fit.disk import NoFeaturesError  # noqa: E402
from stemcal.twin import OverfocusParams, SimulatedSpecimen, simulate  # noqa: E402

CACHE = cases.CACHE


def _fit(ctx, data, truth: dict) -> dict:
    """Cold start from sizes and an overfocus guess 20 % off; one row of the table."""
    t0 = time.perf_counter()
    try:
        fit = cold_start(data, ctx=ctx, scan_pixel_size=truth["scan_pixel_size"],
                         camera_length=truth["camera_length"],
                         detector_pixel_size=truth["detector_pixel_size"],
                         overfocus=1.2 * truth["overfocus"])
    except NoFeaturesError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - t0}
    p, unc = fit.params, fit.extra["uncertainty"]
    D = np.asarray(truth.get("descan", np.zeros((2, 2))))
    return {
        "seconds": time.perf_counter() - t0, "quality": fit.quality,
        "rot_fit": p.scan_rotation, "rot_sigma": unc.get("scan_rotation"),
        "rot_err": (p.scan_rotation - truth["scan_rotation"] + 180) % 360 - 180,
        "of_fit": p.overfocus, "of_sigma": unc.get("overfocus"),
        "of_err_rel": p.overfocus / truth["overfocus"] - 1,
        "flip_ok": p.flip_y == truth["flip_y"],
        "centre_err": float(math.hypot(p.cy - truth["cy"], p.cx - truth["cx"])),
        "descan_err": float(np.abs(p.descan_matrix - D).max()),
        "descan_fit": p.descan_matrix.tolist(),
        "significance": fit.extra.get("significance"),
        "used": {k: v["used"] for k, v in fit.extra.get("uncertainty_parts", {}).items()},
    }


def multislice_set(ctx, quick: bool) -> list[dict]:
    rows = []
    for name, (kwargs, kind, doses) in cases.MULTISLICE.items():
        if quick and name not in ("carbon_au", "smooth_wpo", "au_crystal"):
            continue
        kw = dict(kwargs)
        specimen = kw.pop("specimen")
        for dose in doses:
            data, truth = multislice.generate(specimen, dose=dose, noise_seed=1,
                                              cache_dir=CACHE, **kw)
            rows.append(_row(ctx, data, truth, "multislice", name, kind, dose))
    for row in rows:
        if row["dose"] is not None and abs(row.get("rot_err", 0.0)) > 0.05:
            row["bound"] = bound.multislice_bound(row["case"], row["dose"])["unknown"]
            print(f"   {row['case']} at {row['dose']:g} counts/px: rotation {row['rot_err']:+.3f} deg"
                  f" = {row['rot_err'] / row['bound'][0]:+.1f} x the bound {row['bound'][0]:.4f} of"
                  " its data (the specimen its noise-free frames show, unknown; bound.py)")
    return rows


#: Dose and number of Poisson seeds of section 5.
SEED_DOSE = 20.0
SEEDS = 8


def seeds_set(ctx, quick: bool) -> list[dict]:
    """Section 5: every multislice case with a :data:`SEED_DOSE` row, fitted on
    :data:`SEEDS` noise seeds (3 with ``quick``); one line per case."""
    rows = []
    n = 3 if quick else SEEDS
    print(f"{'case':<22}{'fits':>5}{'refused':>8} | {'rot RMS':>8} {'mean':>7} {'sd':>6}"
          f" {'bound':>6} {'sigma':>6} {'max':>6} {'<=0.05':>6} {'cover':>6} | {'of RMS%':>7}"
          f" {'mean':>6} {'sd':>5} {'bound':>6} {'sigma':>6} {'cover':>6} {'+amb':>6}")
    for name, (kwargs, kind, doses) in cases.MULTISLICE.items():
        if SEED_DOSE not in doses or (quick and name not in ("carbon_au", "smooth_wpo")):
            continue
        kw = dict(kwargs)
        specimen = kw.pop("specimen")
        fits = []
        for seed in range(1, n + 1):
            data, truth = multislice.generate(specimen, dose=SEED_DOSE, noise_seed=seed,
                                              cache_dir=CACHE, **kw)
            row = {"set": "seeds", "case": name, "kind": kind, "dose": SEED_DOSE, "seed": seed,
                   "truth": {"scan_rotation": truth["scan_rotation"],
                             "overfocus": truth["overfocus"],
                             "overfocus_ambiguity": truth.get("overfocus_ambiguity", 0.0)},
                   **_fit(ctx, data, truth)}
            rows.append(row)
            if "rot_err" in row:
                fits.append(row)
        refused = n - len(fits)
        bd = bound.multislice_bound(name, SEED_DOSE)["unknown"]
        for row in rows[len(rows) - n:]:
            row["bound"] = bd
        if not fits:
            print(f"{name:<22}{0:>5}{refused:>8} |")
            continue
        re = np.array([r["rot_err"] for r in fits])
        rs = np.array([r["rot_sigma"] or math.nan for r in fits])
        oe = 100 * np.array([r["of_err_rel"] for r in fits])
        os_ = 100 * np.array([(r["of_sigma"] or math.nan) / abs(r["truth"]["overfocus"])
                              for r in fits])
        sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else math.nan)
        cov = coverage(fits)
        print(f"{name:<22}{len(fits):>5}{refused:>8} | {math.sqrt((re ** 2).mean()):>8.3f}"
              f" {re.mean():>+7.3f} {sd(re):>6.3f} {bd[0]:>6.3f} {np.median(rs):>6.3f}"
              f" {np.abs(re).max():>6.3f}"
              f" {int((np.abs(re) <= 0.05).sum()):>3}/{len(fits):<2}"
              f" {cov['rotation']:>3}/{len(fits):<2} |"
              f" {math.sqrt((oe ** 2).mean()):>7.2f} {oe.mean():>+6.2f} {sd(oe):>5.2f}"
              f" {bd[1]:>6.2f} {np.median(os_):>6.2f} {cov['overfocus']:>3}/{len(fits):<2}"
              f" {cov['overfocus_ambiguity']:>3}/{len(fits):<2}",
              flush=True)
    return rows


def _row(ctx, data, truth: dict, group: str, name: str, kind: str, dose) -> dict:
    """Fit one dataset, print its line of the table, return the row."""
    row = {"set": group, "case": name, "kind": kind, "dose": dose,
           "truth": {**{k: truth[k] for k in ("scan_rotation", "flip_y", "overfocus", "cy", "cx",
                                             "descan")},
                     "overfocus_ambiguity": truth.get("overfocus_ambiguity", 0.0)},
           **_fit(ctx, data, truth)}
    _print_row(row, truth)
    return row


def geometric_set(ctx, quick: bool) -> list[dict]:
    rows = []
    nav, sig, dose = cases.LOW_DOSE["nav"], cases.LOW_DOSE["sig"], cases.LOW_DOSE["dose"]
    seeds = 8 if quick else cases.LOW_DOSE["seeds"]
    for seed in range(seeds + 1):
        descan = cases.GEOMETRIC_DESCAN if seed == seeds else ((0.0, 0.0), (0.0, 0.0))
        p = cases.geometric_truth(seed, descan)
        data = simulate(p, nav, sig, dose=dose, seed=seed)
        truth = {**p.to_dict(), "descan": [list(r) for r in p.descan]}
        name = "geometric descan" if seed == seeds else f"geometric seed {seed}"
        rows.append(_row(ctx, data, truth, "geometric", name, "geometric", dose))
        rows[-1]["bound"] = bound.bounds(seed, ("disk95",), descan)["disk95"]["unknown"]
    against_bound(rows)
    return rows


def against_bound(rows: list[dict]) -> None:
    """Print the geometric fits' errors against the Cramer-Rao bound of their data with
    the specimen unknown (``row["bound"]``: rotation deg, overfocus %; :mod:`bound`):
    the RMS of each over the fits, and every rotation error beyond 0.05 deg in units of
    its seed's bound (docs/accuracy.md, "Geometric data")."""
    fits = [r for r in rows if "rot_err" in r and "bound" in r]
    if not fits:
        return
    rms = lambda v: math.sqrt(sum(x * x for x in v) / len(v))  # noqa: E731
    rot, rot_b = rms([r["rot_err"] for r in fits]), rms([r["bound"][0] for r in fits])
    of, of_b = rms([100 * r["of_err_rel"] for r in fits]), rms([r["bound"][1] for r in fits])
    print(f"   against the Cramer-Rao bound with the specimen unknown (RMS over {len(fits)} "
          f"fits): rotation {rot:.4f} deg against {rot_b:.4f} ({rot / rot_b:.2f}x), "
          f"overfocus {of:.3f} % against {of_b:.3f} ({of / of_b:.2f}x)")
    for r in fits:
        if abs(r["rot_err"]) > 0.05:
            print(f"   {r['case']}: rotation {r['rot_err']:+.3f} deg = "
                  f"{r['rot_err'] / r['bound'][0]:+.1f} x its bound {r['bound'][0]:.4f}")


def noise_set(ctx, n: int) -> list[dict]:
    rows = []
    for label, item in cases.noise_files(n):
        if isinstance(item, tuple):
            _, shape, dose, seed = item
            det = shape[2]
            p = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9 * det / 128,
                                camera_length=0.2, detector_pixel_size=55e-6,
                                semiconv=0.3 * det * 55e-6 / 0.2, cy=det / 2 + 2.2,
                                cx=det / 2 - 1.4, scan_rotation=30.0, flip_y=False)
            blank = SimulatedSpecimen(np.ones((400, 400)), (-150.0, -150.0), 2.0)
            data = simulate(p, shape[:2], shape[2:], dose=dose, specimen=blank, seed=seed)
            label = f"{label} dose {dose}"
        else:
            data = item
        try:
            fit = cold_start(data, ctx=ctx, scan_pixel_size=0.5e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, overfocus=1e-6)
            outcome = fit.quality
        except NoFeaturesError as exc:
            outcome = f"refused: {exc}"
        rows.append({"set": "noise", "case": label, "outcome": outcome})
    for dose in (3.0, 20.0):   # multislice vacuum: a disk, nothing in it
        data, truth = multislice.generate("vacuum", nav_shape=(16, 16), sig_shape=(64, 64),
                                          dose=dose, noise_seed=2, cache_dir=CACHE)
        try:
            outcome = _fit(ctx, data, truth).get("quality", "refused")
        except NoFeaturesError as exc:
            outcome = f"refused: {exc}"
        rows.append({"set": "noise", "case": f"multislice vacuum dose {dose}", "outcome": outcome})
    return rows


def _print_row(row: dict, truth: dict) -> None:
    head = f"{row['case']:<22}{str(row['dose']):>6}"
    if "error" in row:
        print(f"{head}  refused: {row['error']}", flush=True)
        return
    rs, os_ = row["rot_sigma"] or math.nan, row["of_sigma"] or math.nan
    of_rel_sigma = 100 * os_ / abs(truth["overfocus"])
    print(f"{head} {truth['scan_rotation']:>8.2f} {row['rot_fit']:>9.3f} {row['rot_err']:>+7.3f}"
          f" {rs:>6.3f} {abs(row['rot_err']) / rs:>5.1f} | {1e9 * truth['overfocus']:>7.1f}"
          f" {1e9 * row['of_fit']:>8.2f} {100 * row['of_err_rel']:>+6.2f} {of_rel_sigma:>5.2f}"
          f" {100 * abs(row['of_err_rel']) / of_rel_sigma:>5.1f} | {row['centre_err']:>5.3f}"
          f" {row['descan_err']:>7.4f} {'ok' if row['flip_ok'] else 'WRONG':>4} "
          f"{row['seconds']:>5.1f}  {row['quality'][:48]}", flush=True)


HEADER = (f"{'case':<22}{'dose':>6} {'rot':>8} {'fit':>9} {'err':>7} {'sigma':>6} {'e/s':>5} |"
          f" {'of nm':>7} {'fit nm':>8} {'err%':>6} {'s%':>5} {'e/s':>5} | {'c px':>5}"
          f" {'D err':>7} {'flip':>4} {'s':>5}  quality")


def coverage(rows: list[dict]) -> dict:
    """How many fits' errors are within 2 sigma: rotation, overfocus, and the overfocus
    within 2 sigma plus the truth's own ambiguity (``overfocus_ambiguity``: half the
    specimen's thickness, 0 for one-slice and geometric specimens; see the multislice
    generator's docstring)."""
    fits = [r for r in rows if "rot_err" in r]
    rot = [abs(r["rot_err"]) <= 2 * (r["rot_sigma"] or 0) for r in fits]
    # overfocus: (error, 2 sigma) in metres
    err = [(abs(r["of_err_rel"] * r["truth"]["overfocus"]), 2 * (r["of_sigma"] or 0))
           for r in fits]
    of = [e <= s for e, s in err]
    amb = [e <= s + r["truth"].get("overfocus_ambiguity", 0.0) for (e, s), r in zip(err, fits)]
    return {"fits": len(fits), "refused": len(rows) - len(fits), "rotation": sum(rot),
            "overfocus": sum(of), "overfocus_ambiguity": sum(amb)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 multislice cases, 8 seeds, 20 files")
    ap.add_argument("--json", metavar="PATH", help="write every row as JSON")
    ap.add_argument("--skip", nargs="*", default=(),
                    choices=("multislice", "geometric", "noise", "seeds"))
    args = ap.parse_args(argv)
    from libertem.api import Context
    import stemcal
    ctx = Context.make_with("inline")
    print(f"stemcal {stemcal.__version__}, abTEM {__import__('abtem').__version__}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; cache {CACHE}")
    out: dict = {}
    if "multislice" not in args.skip:
        print("\n1. multislice (abTEM) cases: cold start, overfocus guess +20 %\n" + HEADER)
        out["multislice"] = multislice_set(ctx, args.quick)
    if "geometric" not in args.skip:
        print("\n2. geometric (stemcal.twin.simulate), 64x64 x 128x128, 3 counts/px\n" + HEADER)
        out["geometric"] = geometric_set(ctx, args.quick)
    if "noise" not in args.skip:
        n = 20 if args.quick else 100
        out["noise"] = noise_set(ctx, n)
        ok = [r for r in out["noise"] if r["outcome"] == "ok"]
        refused = sum(r["outcome"].startswith("refused") for r in out["noise"])
        print(f"\n4. noise and blank files: {len(ok)} of {len(out['noise'])} 'ok' "
              f"({refused} refused, {len(out['noise']) - refused - len(ok)} flagged)")
        for r in ok:
            print(f"   ok: {r['case']}")
    if "seeds" not in args.skip:
        print(f"\n5. the multislice cases at {SEED_DOSE:g} counts/px over Poisson seeds: errors "
              "(rotation deg, overfocus %), median sigma, coverage (|error| <= 2 sigma; "
              "+amb: overfocus <= 2 sigma + the truth's ambiguity)")
        out["seeds"] = seeds_set(ctx, args.quick)
    print("\n3. coverage (|error| <= 2 sigma; overfocus also <= 2 sigma + the truth's "
          "ambiguity, half the specimen's thickness)")
    for name in ("multislice", "geometric", "seeds"):
        if name in out:
            c = coverage(out[name])
            print(f"   {name:<11} rotation {c['rotation']}/{c['fits']}, overfocus "
                  f"{c['overfocus']}/{c['fits']}, with the ambiguity "
                  f"{c['overfocus_ambiguity']}/{c['fits']} ({c['refused']} refused)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
