"""ADMM on the triangle LP: every reported bound is below the exact LP optimum (HiGHS), and it gets there."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch
from nets import build, mlp, random_boxes, random_spec

from veracity.bounds import bound_spec
from veracity.bounds.crown import crown_bounds, spec_bounds
from veracity.graph import UnsupportedError
from veracity.solvers import admm
from veracity.solvers.admm import (
    _chain_bounds,
    _Problem,
    _project_relu,
    admm_bounds,
    admm_intermediate,
    admm_minimize,
    chain_of,
)
from veracity.solvers.lp import Model, lp_bounds

F64 = torch.float64


def _random_net(rng: random.Random):
    """A sequential ReLU network: an MLP or a conv net (conv, optional scale_shift/pad/avgpool, flatten, linear)."""
    if rng.random() < 0.6:
        depth = rng.randint(1, 3)
        return mlp(rng.randrange(2**31), rng.randint(2, 5), [rng.randint(2, 8) for _ in range(depth)],
                   ["relu"] * depth, rng.randint(1, 3))
    spec = random_spec(rng, piecewise_linear=True, kind="conv", pool=rng.choice(["none", "avg"]))
    spec = replace(spec, acts=("relu",), residual=False, concat=False, sub=False, width=min(spec.width, 4),
                   n_in=min(spec.n_in, 5))
    return build(spec)


def _problem(rng: random.Random, gen: torch.Generator):
    g = _random_net(rng)
    l, u = random_boxes(gen, 1, g.n_inputs, max_radius=rng.choice([0.1, 0.5, 1.0]))
    C = torch.randn(1, 2, g.n_outputs, generator=gen, dtype=F64)
    pre = crown_bounds(g, l, u)
    return g, l, u, C, pre, _lp_lower(g, l, u, C, pre)


def _lp_lower(g, l, u, C, pre):
    """HiGHS's sound LP lower bounds (1, S) of C · y with intermediate bounds ``pre``."""
    pre = dict(pre)
    pre[g.input_name] = (l.reshape(1, *g.input_shape), u.reshape(1, *g.input_shape))
    m = Model(g, pre, 0).build()
    return torch.tensor([[m.minimize(*m.objective(g.output_name, c.numpy())).bound for c in C[0]]], dtype=F64)


def test_relu_projection_is_nearest():
    """The projection lies in the hull and no vertex of the hull is closer in any direction (obtuse-angle test)."""
    gen = torch.Generator().manual_seed(0)
    n = 20000
    l = torch.randn(n, generator=gen, dtype=F64) * 2
    u = l + torch.rand(n, generator=gen, dtype=F64) * 3
    a, b = torch.randn(n, generator=gen, dtype=F64) * 3, torch.randn(n, generator=gen, dtype=F64) * 3
    z, x = _project_relu(a, b, l, u)
    tol = 1e-9
    assert bool(((z >= l - tol) & (z <= u + tol)).all())
    assert bool((x >= torch.relu(z) - tol).all())
    unstable = (l < 0) & (u > 0)
    chord = u / (u - l).clamp(min=1e-300) * (z - l)
    assert bool(torch.where(unstable, x <= chord + tol, (x - torch.relu(z)).abs() <= tol).all())
    zero = torch.zeros_like(l)
    verts = [(l, torch.relu(l)), (u, torch.relu(u)), (torch.clamp(zero, l, u), torch.clamp(zero, l, u).relu())]
    for vz, vx in verts:
        assert bool(((a - z) * (vz - z) + (b - x) * (vx - x) <= 1e-8).all())


def test_sound_at_every_checked_iteration():
    """200 random nets (dense and conv): every bound ADMM reports, at every checked iteration, is <= the LP optimum."""
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    worst = -float("inf")
    for i in range(200):
        g, l, u, C, pre, lp = _problem(rng, gen)
        res = admm_minimize(g, l, u, C, pre, max_iter=12, check_every=3, trace=True, tol=0.0,
                            solver=("dense", "cg")[i % 4 == 3], dtype=(torch.float32, F64)[i % 2],
                            rho=rng.choice([None, 0.3, 1.0, 3.0]), warm_start=i % 3 != 0)
        assert len(res.trace) == 5
        for _, _, b in res.trace:
            over = (b - lp) / (1 + lp.abs())
            worst = max(worst, over.max().item())
            assert bool((over <= 1e-7).all()), (i, b, lp)
    assert worst > -1.0  # the check is not vacuous: some bounds come close to the optimum


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_converges_to_lp(kind):
    """Run to convergence, the bound is within 1e-3 (relative, floor 1) of the LP optimum, and never above it.
    (bench/admm.py sweep runs this on 200 random nets.)"""
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    if kind == "mlp":
        g = mlp(11, 3, [6, 5], ["relu", "relu"], 2)
    else:
        spec = replace(random_spec(rng, piecewise_linear=True, kind="conv", pool="none"), acts=("relu",), depth=1,
                       residual=False, concat=False, sub=False, scale_shift=False, width=3, n_in=4)
        g = build(spec)
    l, u = random_boxes(gen, 1, g.n_inputs, max_radius=0.5)
    C = torch.randn(1, 2, g.n_outputs, generator=gen, dtype=F64)
    pre = crown_bounds(g, l, u)
    lp = _lp_lower(g, l, u, C, pre)
    assert torch.allclose(lp, lp_bounds(g, l, u, C, pre=pre, intersect=False)[0])
    res = admm_minimize(g, l, u, C, pre, max_iter=6000, tol=1e-4, dtype=F64)
    gap = (lp - res.lower) / lp.abs().clamp(min=1.0)
    assert bool((gap >= -1e-7).all())
    assert bool((gap <= 1e-3).all()), (gap, res.iterations)


def test_consistent_multipliers_give_crown():
    """The Lagrangian at the multipliers of a CROWN pass is that CROWN bound (adaptive slopes, same bounds); with
    other slopes in [0, 1] it stays below the LP optimum."""
    g = mlp(5, 4, [7, 6], ["relu", "relu"], 3)
    gen = torch.Generator().manual_seed(5)
    l, u = random_boxes(gen, 1, 4, max_radius=0.6)
    C = torch.randn(1, 3, 3, generator=gen, dtype=F64)
    pre = crown_bounds(g, l, u)
    chain = chain_of(g, dtype=F64)
    prob = _Problem(chain, l, u, _chain_bounds(chain, pre, l, u), C[0], torch.zeros(3, dtype=torch.long), F64, "cpu")
    bounds = {k: (v[0].to(F64), v[1].to(F64)) for k, v in {**pre, g.input_name: (l, u)}.items()}
    crown, _ = spec_bounds(g, g.output_name, C, bounds, lines="adaptive")
    assert torch.allclose(prob.lagrangian(*prob.backward()), crown[0], atol=1e-9)
    lp = _lp_lower(g, l, u, C, pre)[0]
    for _ in range(5):
        slopes = [torch.rand(lo.shape, generator=gen, dtype=F64) for lo, _ in prob.pre64]
        assert bool((prob.lagrangian(*prob.backward(slopes)) <= lp + 1e-9).all())


def test_woodbury_projection_matches_direct(monkeypatch):
    """A map wider than tall projects alike through (I + AᵀA)⁻¹ and through the Woodbury form."""
    g = mlp(2, 12, [3], ["relu"], 2)
    monkeypatch.setattr(admm, "WOODBURY_MAX_NORM", 0.0)  # any norm is too large: the direct inverse
    direct = chain_of(g, dtype=F64).affines[0]
    monkeypatch.setattr(admm, "WOODBURY_MAX_NORM", math.inf)
    woodbury = chain_of(g, dtype=F64).affines[0]
    assert direct.direct and not woodbury.direct
    gen = torch.Generator().manual_seed(2)
    yh, zh = torch.randn(4, 12, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    for a, b in zip(direct.project(yh, zh, None, 0), woodbury.project(yh, zh, None, 0), strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_sparse_products_match_the_ops():
    """A conv map as sparse matrices applies A and Aᵀ as its ops do."""
    rng = random.Random(4)
    spec = replace(random_spec(rng, piecewise_linear=True, kind="conv", pool="avg"), acts=("relu",),
                   residual=False, concat=False, sub=False)
    a = next(a for a in chain_of(build(spec), dtype=F64).affines if not a.dense)
    S, ST = a.sparse()
    gen = torch.Generator().manual_seed(4)
    x, z = torch.randn(3, a.n_in, generator=gen, dtype=F64), torch.randn(3, a.n_out, generator=gen, dtype=F64)
    assert torch.allclose((S @ x.T).T, a._apply(x, F64), atol=1e-12)
    assert torch.allclose((ST @ z.T).T, a._adjoint(z, F64), atol=1e-12)


def test_cg_matches_dense_on_conv():
    rng = random.Random(7)
    spec = replace(random_spec(rng, piecewise_linear=True, kind="conv", pool="none"), acts=("relu",),
                   residual=False, concat=False, sub=False)
    g = build(spec)
    gen = torch.Generator().manual_seed(7)
    l, u = random_boxes(gen, 1, g.n_inputs, max_radius=0.3)
    C = torch.randn(1, 2, g.n_outputs, generator=gen, dtype=F64)
    pre = crown_bounds(g, l, u)
    a = admm_minimize(g, l, u, C, pre, max_iter=60, tol=0.0, solver="dense", dtype=F64)
    b = admm_minimize(g, l, u, C, pre, max_iter=60, tol=0.0, solver="cg", cg_iters=25, dtype=F64)
    assert torch.allclose(a.lower, b.lower, rtol=1e-4, atol=1e-4)


def test_bounds_intermediate_and_method():
    """Two-sided bounds contain sampled outputs; ADMM intermediate bounds contain sampled pre-activations and
    are never looser than CROWN's; ``bound_spec(method="admm")`` is never looser than CROWN."""
    g = mlp(3, 3, [6, 6], ["relu", "relu"], 2)
    gen = torch.Generator().manual_seed(3)
    l, u = random_boxes(gen, 2, 3, max_radius=0.7)
    x = l[:, None] + torch.rand(2, 500, 3, generator=gen, dtype=F64) * (u - l)[:, None]
    lo, hi = admm_bounds(g, l, u, max_iter=150)
    y = g(x.reshape(-1, 3)).reshape(2, 500, -1)
    assert bool((y >= lo[:, None] - 1e-9).all() and (y <= hi[:, None] + 1e-9).all())
    pre = crown_bounds(g, l, u)
    tight = admm_intermediate(g, l, u, pre, max_iter=150)
    vals = g.forward_all(x.reshape(-1, 3))
    for name in pre:
        v = vals[name].reshape(2, 500, -1)
        tl, tu = tight[name][0].reshape(2, 1, -1), tight[name][1].reshape(2, 1, -1)
        assert bool((v >= tl - 1e-9).all() and (v <= tu + 1e-9).all()), name
        assert bool((tight[name][0] >= pre[name][0] - 1e-12).all() and (tight[name][1] <= pre[name][1] + 1e-12).all())
    c_lo, c_hi = bound_spec(g, l, u, method="crown")
    a_lo, a_hi = bound_spec(g, l, u, method="admm")
    assert bool((a_lo >= c_lo - 1e-12).all() and (a_hi <= c_hi + 1e-12).all())


def test_unsupported_networks_are_named():
    rng = random.Random(5)
    branching = build(replace(random_spec(rng, piecewise_linear=True, kind="mlp"), residual=True, depth=2))
    with pytest.raises(UnsupportedError, match="sequential"):
        chain_of(branching)
    sig = mlp(0, 3, [4], ["sigmoid"], 2)
    with pytest.raises(UnsupportedError, match="sigmoid"):
        chain_of(sig)
