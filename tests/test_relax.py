"""Relaxations (veracity.relax) against the true functions, densely sampled on many intervals.

Every relaxation promises ``lw*z + lb <= f(z) <= uw*z + ub`` for every z in [l, u]. The intervals below
include ones straddling 0, one-sided ones touching 0, tiny widths, huge magnitudes (±50 and beyond),
widths around the S-shaped "flat" threshold and degenerate l == u; each relaxation is checked with
``lines="tight"`` and ``"adaptive"`` and with α = 0, 0.5, 1 and random α.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veracity import relax

D = torch.float64
SLOPES = (0.0, 0.01, 0.2, 0.9)  # 0.0 is ReLU
ALPHAS = (None, 0.0, 0.5, 1.0, "random")
S_SHAPED = {"sigmoid": (relax.sigmoid, torch.sigmoid), "tanh": (relax.tanh, torch.tanh)}


def intervals(seed: int = 0, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Many intervals [l, u] of every kind the bound algorithms produce (1-D tensors, l <= u)."""
    g = torch.Generator().manual_seed(seed)

    def randn(scale=1.0):
        return torch.randn(n, generator=g, dtype=D) * scale

    def rand(scale=1.0):
        return torch.rand(n, generator=g, dtype=D) * scale

    ls, us = [], []

    def add(lo, hi):
        ls.append(torch.minimum(lo, hi))
        us.append(torch.maximum(lo, hi))

    add(randn(2), randn(2))  # generic
    add(-rand(5) - 1e-3, rand(5) + 1e-3)  # straddling 0
    add(-rand(50), rand(50))  # straddling, huge
    add(randn(50), randn(50))  # huge magnitudes, ±50
    add(randn(300), randn(300))  # beyond the saturation of sigmoid/tanh in float64
    c = randn(3)
    add(c, c + 10 ** (-14 * rand()))  # tiny widths, down to 1e-14
    c = randn(20)
    add(c, c + 10 ** (-11 + 4 * rand()) * (1 + c.abs()))  # around the S-shaped flat threshold 1e-9*(1+|l|)
    add(-10 ** (-12 * rand()), 10 ** (-12 * rand()))  # tiny, straddling 0
    c = randn(3)
    add(c, c)  # degenerate l == u
    z = torch.zeros(n, dtype=D)
    add(z, z)  # l == u == 0
    add(z, rand(4))  # touching 0 from above (ReLU alive, S-shaped concave)
    add(-rand(4), z)  # touching 0 from below (ReLU dead, S-shaped convex)
    u = rand(30)
    add(-u * (1 + 1e-9 * randn()), u)  # u ≈ -l: where the adaptive line switches
    edge = torch.tensor([[-50.0, 50.0], [-50.0, -50.0], [50.0, 50.0], [-1.0, 1.0], [-1e-300, 1e-300],
                         [0.0, 1e-300], [-5.0, 1e-12], [-1e-12, 5.0], [-1e3, 1e3], [-40.0, 1.0]], dtype=D)
    ls.append(edge[:, 0])
    us.append(edge[:, 1])
    return torch.cat(ls), torch.cat(us)



L, U = intervals()
T = torch.linspace(0.0, 1.0, 513, dtype=D)


def points(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Dense points of each interval, (N, K): a uniform grid, both endpoints exactly, and 0 when inside."""
    z = l[:, None] + T[None, :] * (u - l)[:, None]
    z[:, 0], z[:, -1] = l, u
    zero = torch.zeros_like(l).clamp(min=l, max=u)[:, None]
    return torch.cat([z, zero], 1)


def tolerance(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rounding allowance for evaluating a line in float64: a few ulps of the magnitudes involved."""
    return (1e-13 * (1 + l.abs() + u.abs()))[:, None]


def alpha_tensor(a, like: torch.Tensor, seed: int = 1):
    if a is None:
        return None
    if a == "random":
        return torch.rand(like.shape, generator=torch.Generator().manual_seed(seed), dtype=like.dtype)
    return torch.full_like(like, a)


def leaky(z: torch.Tensor, slope: float) -> torch.Tensor:
    return F.leaky_relu(z, slope)


def assert_sound(r: relax.LinearBounds, f, l: torch.Tensor, u: torch.Tensor, what: str) -> None:
    for t in (r.lw, r.lb, r.uw, r.ub):
        assert t.shape == l.shape, what
        assert torch.isfinite(t).all(), f"{what}: non-finite line coefficients"
    z = points(l, u)
    y = f(z)
    tol = tolerance(l, u)
    low = r.lw[:, None] * z + r.lb[:, None] - y
    up = y - (r.uw[:, None] * z + r.ub[:, None])
    for name, v in (("lower line above f", low), ("upper line below f", up)):
        bad = (v > tol).any(1)
        if bad.any():
            i = int(bad.nonzero()[0])
            pytest.fail(f"{what}: {name} by {float(v[i].max()):.3g} on [l, u] = [{float(l[i])!r}, {float(u[i])!r}] "
                        f"(lines {float(r.lw[i])!r}*z+{float(r.lb[i])!r}, {float(r.uw[i])!r}*z+{float(r.ub[i])!r})")


# -- ReLU / LeakyReLU -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("lines", ["tight", "adaptive"])
@pytest.mark.parametrize("slope", SLOPES)
def test_leaky_relu_lines_are_sound(slope, lines, alpha):
    """lw*z + lb <= max(z, slope*z) <= uw*z + ub on every sampled point of every interval."""
    a = alpha_tensor(alpha, L)
    r = relax.relu(L, U, lines, a) if slope == 0.0 else relax.leaky_relu(L, U, slope, lines, a)
    assert_sound(r, lambda z: leaky(z, slope), L, U, f"leaky_relu(slope={slope}, {lines}, alpha={alpha})")


@pytest.mark.parametrize("slope", SLOPES)
def test_tight_lines_stay_within_the_interval_image(slope):
    """Tight lines never leave IBP's box: on [l, u], min of the lower line >= f(l), max of the upper line <= f(u)
    (the property behind "CROWN with tight lines is never looser than IBP")."""
    r = relax.leaky_relu(L, U, slope, "tight")
    tol = tolerance(L, U)[:, 0]
    low_min = torch.minimum(r.lower(L), r.lower(U))  # a line's extremes on an interval are at its ends
    up_max = torch.maximum(r.upper(L), r.upper(U))
    assert (low_min >= leaky(L, slope) - tol).all()
    assert (up_max <= leaky(U, slope) + tol).all()


@pytest.mark.parametrize("slope", SLOPES)
def test_adaptive_lower_line_leaves_the_interval_image(slope):
    """The previous property is specific to tight lines: on [-1, 2] the adaptive lower line is z, whose minimum
    -1 is below f(-1) = -slope (so that test can tell the two apart)."""
    l, u = torch.tensor([-1.0], dtype=D), torch.tensor([2.0], dtype=D)
    r = relax.leaky_relu(l, u, slope, "adaptive")
    assert float(r.lower(l)) == -1.0 < float(leaky(l, slope))


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("lines", ["tight", "adaptive"])
def test_lower_slope_rule(slope, lines):
    """Unstable neurons (l < 0 < u): tight lower slope = slope; adaptive = 1 when u > -l, else slope.
    Lower intercepts are always 0."""
    r = relax.leaky_relu(L, U, slope, lines)
    unstable = (L < 0) & (U > 0)
    assert unstable.sum() > 100
    if lines == "tight":
        expected = torch.full_like(L, slope)
    else:
        expected = torch.where(U > -L, torch.ones_like(L), torch.full_like(L, slope))
    assert torch.equal(r.lw[unstable], expected[unstable])
    assert (r.lb == 0).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, "random"])
@pytest.mark.parametrize("slope", SLOPES)
def test_alpha_sets_the_unstable_lower_slope(slope, alpha):
    """With α, the lower slope of an unstable neuron is slope + α(1 - slope) whatever ``lines`` says."""
    a = alpha_tensor(alpha, L)
    unstable = (L < 0) & (U > 0)
    for lines in ("tight", "adaptive"):
        r = relax.leaky_relu(L, U, slope, lines, a)
        torch.testing.assert_close(r.lw[unstable], (slope + a * (1 - slope))[unstable], rtol=0, atol=1e-15)


@pytest.mark.parametrize("slope", SLOPES)
def test_upper_line_is_the_chord(slope):
    """For unstable neurons the upper line passes through (l, f(l)) and (u, f(u))."""
    r = relax.leaky_relu(L, U, slope, "tight")
    unstable = (L < 0) & (U > 0)
    l, u = L[unstable], U[unstable]
    tol = 1e-12 * (1 + l.abs() + u.abs())
    assert ((r.upper(L)[unstable] - leaky(l, slope)).abs() <= tol).all()
    assert ((r.upper(U)[unstable] - leaky(u, slope)).abs() <= tol).all()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("lines", ["tight", "adaptive"])
@pytest.mark.parametrize("slope", SLOPES)
def test_stable_neurons_get_exact_lines(slope, lines, alpha):
    """l >= 0: both lines are z; u <= 0: both lines are slope*z (α and ``lines`` do not matter)."""
    a = alpha_tensor(alpha, L)
    r = relax.leaky_relu(L, U, slope, lines, a)
    alive, dead = L >= 0, U <= 0
    for w, b in ((r.lw, r.lb), (r.uw, r.ub)):
        assert (w[alive] == 1).all() and (b[alive] == 0).all()
        assert (w[dead & ~alive] == slope).all() and (b[dead & ~alive] == 0).all()


def test_unknown_lines_rejected():
    with pytest.raises(ValueError, match="lines"):
        relax.relu(L, U, "loose")


def test_relu_broadcasts_over_shapes_and_alpha():
    """Any tensor shape works; α broadcasts against l (as α-CROWN uses it, with an extra spec axis)."""
    l, u = L[:240].reshape(2, 3, 40), U[:240].reshape(2, 3, 40)
    r = relax.relu(l, u, "tight")
    flat = relax.relu(l.reshape(-1), u.reshape(-1), "tight")
    for a, b in zip((r.lw, r.lb, r.uw, r.ub), (flat.lw, flat.lb, flat.uw, flat.ub), strict=True):
        assert torch.equal(a.reshape(-1), b)
    alpha = torch.rand(2, 5, 3, 40, dtype=D, generator=torch.Generator().manual_seed(3))
    ra = relax.relu(l.unsqueeze(1), u.unsqueeze(1), "tight", alpha)
    assert ra.lw.shape == (2, 5, 3, 40)


# -- sigmoid / tanh ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha_u", ALPHAS)
@pytest.mark.parametrize("alpha_l", ALPHAS)
@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_s_shaped_lines_are_sound(name, alpha_l, alpha_u):
    """Tangent/chord lines of sigmoid and tanh hold on every sampled point of every interval, for any
    tangent-point parameters α_l, α_u in [0, 1]."""
    fn, f = S_SHAPED[name]
    r = fn(L, U, alpha_tensor(alpha_l, L, 1), alpha_tensor(alpha_u, L, 2))
    assert_sound(r, f, L, U, f"{name}(alpha_l={alpha_l}, alpha_u={alpha_u})")


@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_s_shaped_one_sided_chord(name):
    """Convex side (u <= 0): the upper line is the chord; concave side (l >= 0): the lower line is the chord
    (up to the 1e-12 slack)."""
    fn, f = S_SHAPED[name]
    r = fn(L, U)
    wide = (U - L) > 1e-6  # the chord through two close points is ill-conditioned; flat intervals are separate
    for side, line in (((U <= 0) & wide, r.upper), ((L >= 0) & wide, r.lower)):
        assert side.sum() > 50
        for ends in (L, U):
            err = (line(ends) - f(ends))[side].abs()
            assert (err <= 1e-10).all(), float(err.max())


@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_s_shaped_alpha_moves_the_tangent_point(name):
    """On a convex interval α_l = 0 / 1 puts the lower tangent at l / u; on a concave one α_u = 0 / 1 puts the upper
    tangent at l / u (the line touches f there)."""
    fn, f = S_SHAPED[name]
    l = torch.tensor([-3.0, -2.0, 0.5, 1.0], dtype=D)
    u = torch.tensor([-1.0, -0.5, 2.0, 4.0], dtype=D)
    convex, concave = u <= 0, l >= 0
    for a, at in ((0.0, l), (1.0, u)):
        al = torch.full_like(l, a)
        r = fn(l, u, al, al)
        assert ((r.lower(at) - f(at))[convex].abs() < 1e-11).all()
        assert ((r.upper(at) - f(at))[concave].abs() < 1e-11).all()


@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_s_shaped_degenerate_interval(name):
    """l == u: constant lines f(l) ∓ slack, within 1e-11 of f(l)."""
    fn, f = S_SHAPED[name]
    l = torch.tensor([-60.0, -3.0, 0.0, 1e-300, 2.5, 60.0], dtype=D)
    r = fn(l, l)
    assert (r.lw == 0).all() and (r.uw == 0).all()
    assert (r.lb <= f(l)).all() and (r.ub >= f(l)).all()
    assert ((r.ub - r.lb) <= 1e-11).all()


@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_s_shaped_float32(name):
    """float32 in, float32 out; the lines hold up to float32 rounding (a few ulps of 1)."""
    fn, f = S_SHAPED[name]
    mild = (L.abs() < 100) & (U.abs() < 100)
    l, u = L[mild].float(), U[mild].float()
    r = fn(l, u)
    assert r.lw.dtype == torch.float32
    z = points(l.double(), u.double()).float()
    y = f(z)
    tol = 1e-6 * (1 + z.abs())
    assert (r.lw[:, None] * z + r.lb[:, None] - y <= tol).all()
    assert (y - (r.uw[:, None] * z + r.ub[:, None]) <= tol).all()


# -- random intervals by hypothesis --------------------------------------------------------------------

finite = st.floats(-80, 80, allow_nan=False, allow_infinity=False)
widths = st.one_of(st.just(0.0), st.floats(0, 1e-6), st.floats(0, 100), st.sampled_from([1e-300, 5e-324, 1e-9]))
unit = st.floats(0, 1)


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(l=finite, w=widths, a_l=unit, a_u=unit, slope=st.sampled_from(SLOPES),
       lines=st.sampled_from(["tight", "adaptive"]), use_alpha=st.booleans())
def test_random_interval_every_relaxation_is_sound(l, w, a_l, a_u, slope, lines, use_alpha):
    """One random interval at a time (hypothesis shrinks a failure to a readable [l, u])."""
    lt = torch.tensor([l], dtype=D)
    ut = lt + w
    al = torch.tensor([a_l], dtype=D) if use_alpha else None
    au = torch.tensor([a_u], dtype=D) if use_alpha else None
    assert_sound(relax.leaky_relu(lt, ut, slope, lines, al), lambda z: leaky(z, slope), lt, ut, "leaky_relu")
    for name, (fn, f) in S_SHAPED.items():
        assert_sound(fn(lt, ut, al, au), f, lt, ut, name)
