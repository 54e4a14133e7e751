"""Cold starts on wave-optical (multislice) data: truth from abTEM's physics, not from
stemcal's own model (issue 15).

The datasets come from ``tests/multislice`` (abTEM 1.0 multislice, conventions written
down there) and are simulated once per test session (``multislice_cache``); Poisson
noise is added afterwards, so noisy realisations cost nothing. Each case is small
(16-32 px scans, 64 px detector). On a 24x24 scan of the carbon film with six Au
clusters at 20 counts/px the rotation scattered by 0.25 deg: too few features.
"""
from __future__ import annotations

import numpy as np
import pytest

import multislice
from stemcal.fit.coarse import cold_start
from stemcal.fit.disk import NoFeaturesError

pytestmark = pytest.mark.wave

#: name -> (generator arguments, kind): "weak" phase objects (the geometric model holds
#: on the inner disk) or "strong" scatterers (Au clusters, a crystal in zone axis).
CASES = {
    "smooth_wpo": (dict(specimen="smooth_wpo", nav_shape=(32, 32), sig_shape=(64, 64),
                        scan_rotation=130.0, flip_y=True, overfocus=500e-9, semiconv=6e-3,
                        seed=11), "weak"),
    "carbon_au": (dict(specimen="carbon_au", nav_shape=(32, 32), sig_shape=(64, 64),
                       scan_rotation=23.0, flip_y=False, overfocus=500e-9, semiconv=6e-3),
                  "strong"),
    "au_crystal": (dict(specimen="au_crystal", nav_shape=(16, 16), sig_shape=(64, 64),
                        scan_rotation=71.0, flip_y=True, overfocus=600e-9, semiconv=6e-3,
                        max_sampling=0.6), "strong"),
}
#: Noisy realisations fitted besides the noise-free frames: (name, dose per vacuum disk px).
NOISY = [("smooth_wpo", 20.0), ("carbon_au", 20.0), ("carbon_au", 200.0)]
#: A 64x64 scan with descan, fitted at 20 counts/px only (the geometric low-dose set's scan
#: size; simulated in about 30 s). On 32x32 scans at that dose the rotation scatters by
#: 0.06 deg from noise seed to noise seed (``make validate``, section 5), on this one by 0.02.
LARGE = {
    "carbon_au_descan_64": (dict(specimen="carbon_au", nav_shape=(64, 64), sig_shape=(64, 64),
                                 scan_rotation=41.0, flip_y=True, overfocus=550e-9,
                                 semiconv=6e-3, seed=9, descan=((0.06, -0.04), (0.03, 0.05))),
                            "strong"),
}



@pytest.fixture(scope="module")
def wave_fit(ctx, multislice_cache):
    """``(name, dose, noise seed) -> (truth, fit)``, each fitted once per module (seed 3
    unless given)."""
    done: dict = {}

    def fit(name: str, dose: float | None = None, seed: int = 3):
        if (name, dose, seed) not in done:
            kwargs = dict({**CASES, **LARGE}[name][0])
            specimen = kwargs.pop("specimen")
            data, truth = multislice.generate(specimen, dose=dose, noise_seed=seed,
                                              cache_dir=multislice_cache, **kwargs)
            # the overfocus guess 20 % off: only its sign counts in a cold start
            result = cold_start(data, ctx=ctx, scan_pixel_size=truth["scan_pixel_size"],
                                camera_length=truth["camera_length"],
                                detector_pixel_size=truth["detector_pixel_size"],
                                overfocus=1.2 * truth["overfocus"])
            done[(name, dose, seed)] = (truth, result)
        return done[(name, dose, seed)]

    return fit


def errors(truth: dict, fit) -> dict:
    p = fit.params
    return {"rotation": (p.scan_rotation - truth["scan_rotation"] + 180) % 360 - 180,
            "overfocus": p.overfocus / truth["overfocus"] - 1,
            "centre": float(np.hypot(p.cy - truth["cy"], p.cx - truth["cx"]))}


def overfocus_covered(err: dict, unc: dict, truth: dict) -> bool:
    """The overfocus error within 2 sigma of the truth, or of any plane within the truth's
    own ambiguity: a specimen of thickness t has no single plane its shadow image refers
    to, and the generator's truth (an atomic-number-weighted mean plane) is defined to
    ``overfocus_ambiguity`` = t / 2 (0 for the one-slice weak-phase objects; 1 nm, 0.13-0.2
    %, for the carbon film with Au clusters). Measured on the 64x64 carbon/Au scan: every
    part of the disk gives -0.15..-0.19 % noise-free, a plane 0.8-1 nm from the truth's."""
    return (abs(err["overfocus"]) * abs(truth["overfocus"])
            <= 2 * unc["overfocus"] + truth.get("overfocus_ambiguity", 0.0))


@pytest.mark.parametrize("name, dose", [(n, None) for n in CASES] + NOISY)
def test_multislice_cold_start(wave_fit, name, dose):
    truth, fit = wave_fit(name, dose)
    err = errors(truth, fit)
    unc = fit.extra["uncertainty"]
    report = f"{name} dose {dose}: {err}, uncertainty {unc}, quality {fit.quality}"
    assert fit.params.flip_y == truth["flip_y"]
    # within 0.05 deg on every case here, 20 counts/px included (carbon_au at 20 counts/px:
    # -0.048 deg with a sigma of 0.078 since the final stage's rotation span follows the
    # scan's side and the rotation is sampled again where the overfocus moved; 0.15 was
    # allowed before)
    assert abs(err["rotation"]) <= 0.05, report
    assert err["centre"] <= 0.1, report
    # no descan in the data: every element reported as zero (not significant), or tiny
    assert np.abs(fit.params.descan_matrix).max() <= 1e-3, fit.extra["descan"]
    limit = 0.005 if CASES[name][1] == "weak" else 0.01
    assert abs(err["overfocus"]) <= limit, report
    # the uncertainty covers the error (2 sigma), for overfocus and rotation alike
    assert overfocus_covered(err, unc, truth), report
    assert abs(err["rotation"]) <= 2 * unc["scan_rotation"], report


@pytest.mark.parametrize("seed", (1, 2, 3))
def test_low_dose_64x64_scan_within_the_targets(wave_fit, seed):
    """20 counts/px on a 64x64 scan with a descan of up to 0.06 px/scan px: rotation within
    0.05 deg, centre within 0.1 px, overfocus within 1 % and covered, the descan right,
    quality ok (measured on seeds 1-3: rotation +0.017 +0.012 +0.005 deg, overfocus
    -0.22 -0.20 -0.04 %, descan elements within 0.0006 px/scan px)."""
    truth, fit = wave_fit("carbon_au_descan_64", 20.0, seed)
    err, unc = errors(truth, fit), fit.extra["uncertainty"]
    report = f"seed {seed}: {err}, uncertainty {unc}, quality {fit.quality}"
    assert fit.quality == "ok" and fit.params.flip_y == truth["flip_y"], report
    assert abs(err["rotation"]) <= 0.05 and err["centre"] <= 0.1, report
    assert abs(err["overfocus"]) <= 0.01, report
    assert overfocus_covered(err, unc, truth), report
    assert abs(err["rotation"]) <= 2 * unc["scan_rotation"], report
    off = np.abs(fit.params.descan_matrix - np.asarray(truth["descan"])).max()
    assert off <= 0.003, (off, fit.extra["descan"])


#: Poisson seeds of the low-dose coverage test (the other tests use seed 3).
COVERAGE_SEEDS = (4, 5, 6, 7, 8, 9)


def test_low_dose_multislice_uncertainty_covers_the_error_over_seeds(wave_fit):
    """carbon_au at 20 counts/px on six more noise seeds (``make validate``'s section 5 on
    a smaller set): the errors scatter about the truth, not about a bias, and the
    reported sigma covers each rotation error and all but at most one overfocus error."""
    rot, rot_ok, of, of_ok = [], 0, [], 0
    for seed in COVERAGE_SEEDS:
        truth, fit = wave_fit("carbon_au", 20.0, seed)
        err, unc = errors(truth, fit), fit.extra["uncertainty"]
        rot.append(err["rotation"])
        of.append(err["overfocus"])
        rot_ok += abs(err["rotation"]) <= 2 * unc["scan_rotation"]
        of_ok += overfocus_covered(err, unc, truth)
    rot, of = np.array(rot), np.array(of)
    report = f"rotation errors {np.round(rot, 3)}, overfocus errors % {np.round(100 * of, 2)}"
    assert rot_ok == len(COVERAGE_SEEDS) and of_ok >= len(COVERAGE_SEEDS) - 1, report
    # measured on seeds 4-9: rotation -0.061 +0.045 +0.019 +0.001 -0.047 +0.123 deg (RMS
    # 0.062), overfocus +0.03..+0.52 %; make validate, seeds 1-8: RMS 0.037 deg, overfocus
    # +0.24 +- 0.16 %. The bounds are the scatter's, with room for another draw.
    assert np.sqrt((rot ** 2).mean()) <= 0.08 and abs(rot.mean()) <= 0.05, report
    assert np.abs(of).max() <= 0.01, report


def test_rim_left_out_where_it_disagrees(wave_fit):
    """The weak-phase object's rim ring pulls the overfocus up (wave optics at the aperture
    edge); the fit measures that and takes the overfocus from the disk inside 0.7 R."""
    truth, fit = wave_fit("smooth_wpo")
    parts = fit.extra["uncertainty_parts"]["overfocus"]
    est = {k: v["value"] / truth["overfocus"] - 1 for k, v in parts["estimates"].items()}
    assert est["rim"] > est["disk70"] + 0.005, est   # the rim alone: about +2 %
    assert parts["used"] == "disk70"
    assert abs(est["disk70"]) <= 0.005


def test_quality_flags_disagreeing_parts(wave_fit):
    """Where the two halves of the used disk differ beyond their noise the quality is not
    'ok' and says why; where they agree it is 'ok' (or names another reason)."""
    for name in CASES:
        _, fit = wave_fit(name)
        parts = fit.extra["uncertainty_parts"]
        disagree = [k for k, v in parts.items() if v["parts_z"] > 3.5]
        if disagree:
            assert fit.quality != "ok" and "disagree" in fit.quality, (name, fit.quality)
        elif fit.quality != "ok":
            assert "disagree" not in fit.quality


#: An Au nanocrystal in [001] zone axis at 300 kV with a 10 mrad probe, 500 nm, rotation
#: 33 deg: the shadow moves by (1.525, 0.990) detector px per scan step, nearly (1.5, 1.0),
#: a sampling resonance (docs/accuracy.md). Simulated in about 10 s.
RESONANT = dict(specimen="au_crystal", nav_shape=(16, 16), sig_shape=(80, 80), scan_rotation=33.0,
                flip_y=False, overfocus=500e-9, semiconv=10e-3, energy=300e3, seed=3,
                max_sampling=0.6)


def test_sampling_resonance_is_flagged_and_nine_groups_remove_it(ctx, multislice_cache,
                                                                  monkeypatch):
    """Where the shadow moves by nearly half-integer detector px per scan step, the loss's
    four interleaved groups (2x2) each see the specimen at one sub-pixel phase of the
    detector, and the crystal's pixel-scale detail aliases alike in every frame: the
    rotation comes out 0.1 deg off, the rim's 1.6 deg from the inner disk's. The rim rule
    flags it (the edge effect cannot turn the shadow) and the sigma covers it (it said
    "ok" before). Nine groups (3x3, the default: parts.GROUPS) mix the phases: right and
    "ok"."""
    from stemcal.fit import parts

    kwargs = dict(RESONANT)
    specimen = kwargs.pop("specimen")
    data, truth = multislice.generate(specimen, cache_dir=multislice_cache, **kwargs)

    def fit():
        return cold_start(data, ctx=ctx, scan_pixel_size=truth["scan_pixel_size"],
                          camera_length=truth["camera_length"],
                          detector_pixel_size=truth["detector_pixel_size"],
                          overfocus=1.2 * truth["overfocus"])

    def report(f):
        return (f"{errors(truth, f)}, uncertainty {f.extra['uncertainty']}, quality "
                f"{f.quality}, rotation parts {f.extra['uncertainty_parts']['scan_rotation']}")

    assert parts.GROUPS["scan_rotation"] == 9   # the default
    nine = fit()
    err, unc = errors(truth, nine), nine.extra["uncertainty"]
    assert abs(err["rotation"]) <= 0.02 and nine.quality == "ok", report(nine)
    assert abs(err["rotation"]) <= 2 * unc["scan_rotation"], report(nine)
    assert nine.params.flip_y == truth["flip_y"] and err["centre"] <= 0.1, report(nine)

    monkeypatch.setitem(parts.GROUPS, "scan_rotation", 4)
    four = fit()
    err, unc = errors(truth, four), four.extra["uncertainty"]
    rot = four.extra["uncertainty_parts"]["scan_rotation"]
    est = {k: v["value"] for k, v in rot["estimates"].items()}
    assert abs(err["rotation"]) > 0.05, report(four)                  # the resonance
    assert abs(est["rim"] - est["disk70"]) > 0.1 and rot["used"] == "disk70", report(four)
    assert "disagree" in four.quality and "scan_rotation" in four.quality, report(four)
    assert abs(err["rotation"]) <= 2 * unc["scan_rotation"], report(four)


@pytest.mark.parametrize("dose", [3.0, 20.0])
def test_multislice_vacuum_is_never_ok(ctx, multislice_cache, dose):
    """A blank (vacuum) scan: refused, or at least not 'ok'."""
    data, truth = multislice.generate("vacuum", nav_shape=(16, 16), sig_shape=(64, 64),
                                      dose=dose, noise_seed=5, cache_dir=multislice_cache)
    try:
        fit = cold_start(data, ctx=ctx, scan_pixel_size=truth["scan_pixel_size"],
                         camera_length=truth["camera_length"],
                         detector_pixel_size=truth["detector_pixel_size"],
                         overfocus=truth["overfocus"])
    except NoFeaturesError:
        return
    assert fit.quality != "ok"
