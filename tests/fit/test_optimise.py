"""The search's optimiser: stemcal's own bounded Nelder-Mead against known minima and
against SciPy's implementation of the same method."""
import numpy as np
import pytest
from scipy import optimize

from stemcal.fit.optimise import minimise, nelder_mead


def rosenbrock(x):
    return float((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)


def tilted_bowl(x):
    return float((x[0] - 0.3) ** 2 + 2 * (x[1] + 0.2) ** 2 + 0.5 * x[0] * x[1] + 0.1 * x[2] ** 2)


def test_nelder_mead_finds_known_minima_inside_and_at_the_box():
    lo, hi = np.array([-2.0, -2.0]), np.array([2.0, 2.0])
    start = np.array([[-1.2, 1.0], [-0.7, 1.0], [-1.2, 1.5]])
    m = nelder_mead(rosenbrock, start, lo, hi, xatol=1e-8, fatol=1e-12, maxfev=2000)
    assert m.success and "converged" in m.message
    np.testing.assert_allclose(m.x, [1.0, 1.0], atol=1e-5)
    assert m.fun < 1e-10
    # a bowl whose minimum (3, 0.2) lies outside the box [-2, 2]^2: the box's best
    # point (2, 0.2), on its edge and not beyond it
    m = nelder_mead(lambda x: float((x[0] - 3) ** 2 + (x[1] - 0.2) ** 2), start, lo, hi,
                    xatol=1e-9, fatol=1e-12, maxfev=2000)
    assert m.success and m.x[0] == 2.0
    assert m.x[1] == pytest.approx(0.2, abs=1e-8)
    # out of evaluations: no success, and it says so
    m = nelder_mead(rosenbrock, start, lo, hi, xatol=1e-12, fatol=1e-12, maxfev=20)
    assert not m.success and "20 evaluations" in m.message and m.nfev >= 20


@pytest.mark.parametrize("fun, dims", [(rosenbrock, 2), (tilted_bowl, 3)])
@pytest.mark.parametrize("xatol, fatol", [(0.03, np.inf), (3e-3, 1e-12)])
def test_minimise_takes_the_same_steps_as_scipys_nelder_mead(fun, dims, xatol, fatol):
    """The same algorithm as SciPy's bounded Nelder-Mead (non-adaptive): the same
    evaluations in the same order, so the same point."""
    lo, hi = -np.ones(dims) * 1.5, np.ones(dims) * 2.0
    ours, theirs = [], []

    def logged(log):
        return lambda x: log.append(np.array(x)) or fun(x)

    m = minimise(logged(ours), list(zip(lo, hi)), x0=np.full(dims, 0.1), xatol=xatol,
                 fatol=fatol)
    # the same start (the sampled points), then SciPy's Nelder-Mead from the best of them
    n_start = 17
    best = min(ours[:n_start], key=fun)
    simplex = np.clip(np.vstack([best] + [best + (hi - lo) / 8 * e for e in np.eye(dims)]),
                      lo, hi)
    ref = optimize.minimize(logged(theirs), best, method="Nelder-Mead", bounds=list(zip(lo, hi)),
                            options={"xatol": xatol, "fatol": fatol, "maxfev": 300,
                                     "initial_simplex": simplex})
    np.testing.assert_array_equal(m.x, ref.x)
    assert m.fun == ref.fun and m.success == ref.success
    assert len(ours) - n_start == len(theirs)
    np.testing.assert_array_equal(np.array(ours[n_start:]), np.array(theirs))


def test_minimise_by_shgo_returns_the_same_kind_of_result():
    """``method="shgo"`` (SciPy's, imported only there) on a bowl whose minimum is known."""
    m = minimise(tilted_bowl, [(-1.5, 2.0)] * 3, method="shgo", xatol=1e-6, fatol=1e-12)
    # the minimum of the bowl: gradient zero
    A = np.array([[2.0, 0.5, 0.0], [0.5, 4.0, 0.0], [0.0, 0.0, 0.2]])
    b = np.array([0.6, -0.8, 0.0])
    np.testing.assert_allclose(m.x, np.linalg.solve(A, b), atol=1e-4)
    assert m.success and m.nfev > 0 and m.fun == pytest.approx(tilted_bowl(m.x))


def test_minimise_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'bfgs'"):
        minimise(tilted_bowl, [(-1.0, 1.0)] * 3, method="bfgs")
