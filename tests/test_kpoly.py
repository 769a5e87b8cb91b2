"""kPoly (veracity.solvers.kpoly) and the group hulls (veracity.solvers.hull).

Ordering on random nets: exact MILP <= kPoly <= triangle LP <= CROWN (for upper bounds; mirrored for lower
bounds), and every sampled output inside the kPoly bounds. Hulls: contain every lifted vertex of the exact
set and every sampled lifted point, and each facet touches a lifted vertex.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from tests import nets

from veracity.bounds import bound_spec
from veracity.solvers import hull
from veracity.solvers.kpoly import KPolyOptions, KPolyStats, kpoly_bounds, make_groups
from veracity.solvers.lp import lp_bounds
from veracity.solvers.milp import milp_minimum


def _octahedron(rng: np.random.Generator, k: int):
    """A random octahedron around a random cloud, and points of the cloud (all inside it)."""
    X = rng.normal(size=(rng.integers(5, 60), k)) * rng.uniform(0.3, 2.0, size=k) + rng.normal(size=k) * 0.5
    H = hull.octahedron_directions(k)
    return H, (X @ H.T).max(0), X


@pytest.mark.parametrize("seed", range(20))
def test_relu_hull_contains_lifted_set_and_facets_touch_it(seed):
    rng = np.random.default_rng(seed)
    k = 2 if seed % 4 == 0 else 3
    H, h, X = _octahedron(rng, k)
    G, g = hull.relu_hull(H, h)
    V = hull.lifted_points(H, h, hull.relu_lift, hull.orthants(k))
    gap = g[None] - V @ G.T  # >= 0: inside
    assert gap.min() >= 0
    assert np.all(gap.min(0) <= 2 * hull.HULL_SLACK * (1 + np.abs(V).max() * 2 * k) + 1e-12)  # each facet touches
    # random points of P (convex combinations of its vertices) lifted through the real ReLU
    P = hull.vertices(H, h)
    w = rng.dirichlet(np.ones(P.shape[0]), size=500)
    Y = np.vstack([X, w @ P])
    inside = np.hstack([Y, np.maximum(Y, 0)]) @ G.T - g[None]
    assert inside.max() <= 0


def test_hull_of_a_box_is_the_product_of_triangles():
    l, u = np.array([-1.0, -2.0]), np.array([3.0, 0.5])
    H = hull.octahedron_directions(2)
    h = np.maximum(H * l, H * u).sum(1)
    G, g = hull.relu_hull(H, h)
    # every facet involves one neuron only (x_i, y_i)
    for row in G:
        used = {i for i in range(2) if abs(row[i]) > 1e-9 or abs(row[2 + i]) > 1e-9}
        assert len(used) == 1
    assert G.shape[0] == 6  # y1 >= 0, y1 >= x1, chord 1; the same for neuron 2


def test_generic_lift_gives_leaky_relu_hull():
    rng = np.random.default_rng(3)
    H, h, X = _octahedron(rng, 3)
    f = lambda x: np.where(x >= 0, x, 0.2 * x)  # noqa: E731
    G, g = hull.lifted_hull(H, h, f, hull.orthants(3))
    assert (np.hstack([X, f(X)]) @ G.T - g).max() <= 0


@pytest.mark.parametrize("n,k,block", [(1, 3, 6), (2, 3, 6), (3, 3, 6), (7, 3, 6), (20, 3, 6), (25, 3, 10), (9, 2, 4)])
def test_groups_share_at_most_one_neuron(n, k, block):
    gs = make_groups(n, k, block)
    assert gs and all(len(set(g)) == len(g) == min(k, n) for g in gs)
    assert all(0 <= i < n for g in gs for i in g)
    for a, b in itertools.combinations(gs, 2):
        assert len(set(a) & set(b)) <= 1
    if n > k:  # groups stay inside their block (the last block may absorb a short tail)
        assert all(max(g) - min(g) < block + k for g in gs)


def _net(i: int):
    rng = random.Random(i)
    depth = rng.randint(1, 2)
    acts = [rng.choice(["relu", "relu", "relu", "leaky_relu"]) for _ in range(depth)]
    widths = [rng.randint(3, 6) for _ in range(depth)]
    return nets.mlp(i, rng.randint(2, 4), widths, acts, rng.randint(1, 2))


def test_ordering_milp_kpoly_lp_crown_on_200_random_nets():
    """Lower bounds: CROWN <= LP <= kPoly <= exact minimum; upper bounds mirrored. The exact optimum (MILP,
    attained by a real input evaluated on the network) is computed for one side per net, alternating."""
    tol = lambda v: 1e-6 * (1 + v.abs())  # noqa: E731
    strict = 0
    for i in range(200):
        refine = i % 4 == 0  # every fourth net with LP-refined intermediate bounds (both methods)
        opts = KPolyOptions(k=3, block=4, refine=refine)
        g = _net(i)
        gen = torch.Generator().manual_seed(i)
        lo, hi = nets.random_boxes(gen, 1, g.n_inputs, max_radius=0.8, degenerate=0.0)
        C = torch.randn(1, g.n_outputs, generator=gen, dtype=torch.float64)
        c_lo, c_hi = bound_spec(g, lo, hi, C, method="crown")
        l_lo, l_hi = lp_bounds(g, lo, hi, C, refine=refine)
        st = KPolyStats()
        k_lo, k_hi = kpoly_bounds(g, lo, hi, C, options=opts, stats=st)
        assert torch.all(c_lo <= l_lo + tol(l_lo)) and torch.all(l_lo <= k_lo + tol(k_lo)), i
        assert torch.all(c_hi >= l_hi - tol(l_hi)) and torch.all(l_hi >= k_hi - tol(k_hi)), i
        if i % 2 == 0:
            assert float(k_lo) <= milp_minimum(g, lo[0], hi[0], C[0].numpy()).upper + 1e-9, i
        else:
            assert float(k_hi) >= -milp_minimum(g, lo[0], hi[0], -C[0].numpy()).upper - 1e-9, i
        x = nets.sample_box(gen, lo[0], hi[0], n=300, all_corners_up_to=4)
        with torch.no_grad():
            ys = g(x).reshape(x.shape[0], -1) @ C.T
        assert torch.all(ys >= k_lo - 1e-9) and torch.all(ys <= k_hi + 1e-9), i
        strict += int(st.groups > 0 and bool((k_hi - k_lo < l_hi - l_lo - 1e-6).any()))
    assert strict >= 10  # the group constraints do cut: kPoly is strictly tighter than the LP on some nets


def test_kpoly_without_cuts_or_refinement_is_sound():
    g = nets.mlp(5, 3, [8, 8], ["relu", "relu"], 2)
    gen = torch.Generator().manual_seed(5)
    lo, hi = nets.random_boxes(gen, 2, g.n_inputs, max_radius=1.0, degenerate=0.0)
    x = torch.cat([nets.sample_box(gen, lo[b], hi[b], n=1000) for b in range(2)]).reshape(2, 1000, -1)
    for opts in (KPolyOptions(cuts=False, refine=True), KPolyOptions(), KPolyOptions(cuts=False)):
        k_lo, k_hi = kpoly_bounds(g, lo, hi, options=opts)
        for b in range(2):
            with torch.no_grad():
                ys = g(x[b])
            assert torch.all(ys >= k_lo[b] - 1e-9) and torch.all(ys <= k_hi[b] + 1e-9)


def test_kpoly_as_a_driver_stage():
    from veracity import examples
    from veracity.graph import load_onnx
    from veracity.spec import load_vnnlib
    from veracity.verify.driver import verify

    g = load_onnx(examples.path(examples.DIGITS_ONNX))
    spec = load_vnnlib(examples.path(examples.DIGITS_SPEC), n_inputs=g.n_inputs, n_outputs=g.n_outputs)
    res = verify(g, spec, methods=("kpoly",), attack=False, branch=False)
    assert res.status == "unsat" and res.method == "kpoly"
