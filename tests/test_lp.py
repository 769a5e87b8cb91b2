"""The LP relaxation (veracity.solvers.lp): exact MILP <= LP <= CROWN, sampled outputs inside, sound duals."""

from __future__ import annotations

import dataclasses
import random

import highspy
import numpy as np
import pytest
import torch
from tests import nets

from veracity.bounds import bound_spec
from veracity.bounds.crown import crown_bounds
from veracity.solvers.lp import Model, lp_bounds, refine_bounds
from veracity.solvers.milp import _set_cost, milp_bounds


def _tol(v: torch.Tensor) -> torch.Tensor:
    return 1e-6 * (1 + v.abs())


def _box(seed: int, n: int, radius: float = 0.6):
    gen = torch.Generator().manual_seed(seed)
    return nets.random_boxes(gen, 1, n, max_radius=radius, degenerate=0.0), gen


def _outputs(g, gen, lo, hi, C, n=3000):
    x = nets.sample_box(gen, lo[0], hi[0], n=n, all_corners_up_to=6)
    with torch.no_grad():
        y = g(x).reshape(x.shape[0], -1)
    return y @ C.T


@pytest.mark.parametrize("seed", range(20))
def test_milp_le_lp_le_crown_and_samples_inside(seed):
    rng = random.Random(seed)
    depth = rng.randint(1, 3)
    acts = [rng.choice(["relu", "relu", "leaky_relu"]) for _ in range(depth)]
    g = nets.mlp(seed, rng.randint(2, 4), [rng.randint(3, 7) for _ in range(depth)], acts, rng.randint(1, 3))
    (lo, hi), gen = _box(seed, g.n_inputs)
    C = torch.randn(2, g.n_outputs, generator=gen, dtype=torch.float64)
    pre = crown_bounds(g, lo, hi)
    c_lo, c_hi = bound_spec(g, lo, hi, C, method="crown")
    l_lo, l_hi = lp_bounds(g, lo, hi, C, pre=pre, intersect=False)  # the LP alone, same intermediate bounds
    m_lo, m_hi = milp_bounds(g, lo, hi, C)  # exact up to the MILP's margin (1e-6 relative)
    assert torch.all(l_lo >= c_lo - _tol(c_lo)) and torch.all(l_hi <= c_hi + _tol(c_hi))
    assert torch.all(l_lo <= m_lo + 2 * _tol(m_lo)) and torch.all(l_hi >= m_hi - 2 * _tol(m_hi))
    ys = _outputs(g, gen, lo, hi, C)
    assert torch.all(ys >= l_lo[0] - 1e-9) and torch.all(ys <= l_hi[0] + 1e-9)
    assert torch.all(ys.min(0).values >= m_lo[0] - 1e-6) and torch.all(ys.max(0).values <= m_hi[0] + 1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_lp_contains_samples_on_any_random_net(seed):
    """Conv, pooling, residual, sigmoid/tanh, products of the random-net zoo: the LP stays sound."""
    spec = nets.random_spec(random.Random(1000 + seed))
    g = nets.build(spec)
    (lo, hi), gen = _box(seed, g.n_inputs, radius=0.3)
    C = torch.eye(g.n_outputs, dtype=torch.float64)
    l_lo, l_hi = lp_bounds(g, lo, hi, C, intersect=False)
    ys = _outputs(g, gen, lo, hi, C, n=2000)
    assert torch.all(ys >= l_lo[0] - 1e-9), spec
    assert torch.all(ys <= l_hi[0] + 1e-9), spec


@pytest.mark.parametrize("seed", range(5))
def test_refined_bounds_inside_crown_and_contain_activations(seed):
    rng = random.Random(seed)
    g = nets.mlp(seed, 3, [6, 6, 5], [rng.choice(["relu", "leaky_relu"]) for _ in range(3)], 2)
    (lo, hi), gen = _box(seed, g.n_inputs, radius=0.8)
    pre = crown_bounds(g, lo, hi)
    ref = refine_bounds(g, lo, hi, pre=pre)
    x = nets.sample_box(gen, lo[0], hi[0], n=2000)
    with torch.no_grad():
        vals = g.forward_all(x)
    for name, (pl, pu) in pre.items():
        rl, ru = ref[name]
        assert torch.all(rl >= pl - 1e-12) and torch.all(ru <= pu + 1e-12)
        v = vals[name].reshape(x.shape[0], -1)
        assert torch.all(v >= rl.reshape(1, -1) - 1e-9) and torch.all(v <= ru.reshape(1, -1) + 1e-9), name


@pytest.mark.parametrize("seed", range(5))
def test_dual_bound_below_primal_value(seed):
    rng = np.random.default_rng(seed)
    g = nets.mlp(seed, 3, [8, 8], ["relu", "relu"], 3)
    (lo, hi), _ = _box(seed, g.n_inputs)
    m = Model(g, crown_bounds(g, lo, hi)).build()
    for _ in range(5):
        c = rng.normal(size=m.n_cols)
        sol = m.minimize(c, 0.3)
        assert sol.status == "Optimal"
        assert sol.bound <= sol.value + 1e-12 * (1 + abs(sol.value))
        assert sol.bound >= sol.value - 1e-6 * (1 + abs(sol.value))  # and close to it at an optimum
        # any multipliers give a valid (lower) bound: zero multipliers give the box bound
        assert m.dual_bound(c, 0.3, np.zeros(m.n_rows)) <= sol.bound + 1e-9


def test_refinement_tightens_a_deep_net():
    """Layer-by-layer LP refinement is strictly tighter than CROWN on a deeper random net (it can fail)."""
    g = nets.mlp(7, 4, [10, 10, 10, 10], ["relu"] * 4, 2)
    (lo, hi), _ = _box(7, g.n_inputs, radius=1.0)
    a = lp_bounds(g, lo, hi, intersect=False)
    b = lp_bounds(g, lo, hi, refine=True, intersect=False)
    assert torch.all(b[0] >= a[0] - 1e-9) and torch.all(b[1] <= a[1] + 1e-9)
    assert float((b[1] - b[0]).sum()) < float((a[1] - a[0]).sum()) - 1e-6


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("integer", [False, True])
def test_compact_model_has_the_optimum_of_the_full_one(seed, integer):
    """``compact=True`` (stable ReLUs as expressions, no variables for pre-activations) changes the model's
    size, not its optimum: the same LP and MILP minimum, on random small nets of every shape (redrawn until
    CROWN leaves at most 24 ReLUs unstable, so the MILP takes milliseconds)."""
    rng = random.Random(seed)
    while True:
        recipe = nets.random_spec(rng, piecewise_linear=True)
        g = nets.build(dataclasses.replace(recipe, width=min(recipe.width, 8 if recipe.kind == "mlp" else 4)))
        (lo, hi), gen = _box(seed, g.n_inputs, radius=0.5)
        pre = crown_bounds(g, lo, hi)
        relu_in = {n.inputs[0] for n in g.nodes.values() if n.op in ("relu", "leaky_relu")}
        if sum(int(((pre[k][0] < 0) & (pre[k][1] > 0)).sum()) for k in relu_in) <= 24:
            break
    pre[g.input_name] = (lo.reshape(1, *g.input_shape), hi.reshape(1, *g.input_shape))
    c = torch.randn(g.n_outputs, generator=gen, dtype=torch.float64).numpy()
    values = []
    for compact in (False, True):
        m = Model(g, pre, 0, integer=integer, compact=compact).build()
        cost, off = m.objective(g.output_name, c)
        if integer:
            m.h.setOptionValue("mip_rel_gap", 0.0)
            _set_cost(m, cost)
            m.h.run()
            assert m.h.getModelStatus() == highspy.HighsModelStatus.kOptimal
            values.append(m.h.getInfo().objective_function_value + off)
        else:
            values.append(m.minimize(cost, off).value)
    assert abs(values[0] - values[1]) <= 1e-6 * (1 + abs(values[0])), values
