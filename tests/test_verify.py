"""Complete verification against exact answers: brute force ⇒ MILP ⇒ driver, input splitting and ReLU splitting.

The exact MILP is checked against enumeration of every activation pattern (one LP each) on the tiniest nets;
then every verdict of the driver and of both branch-and-bound flavours must equal the MILP's verdict on
random small piecewise-linear networks (MLPs and conv nets with residual, concat and pooling layers) with
random properties whose thresholds sit near the sampled minimum, so sat and unsat both occur. Every sat
carries a witness inside the box whose output lies in a bad region.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from pathlib import Path

import nets
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from veracity.bounds.crown import crown_bounds
from veracity.graph import load_onnx
from veracity.solvers.milp import NodeRefiner, decide_case, milp_minimum
from veracity.spec import Box, Case, Region, Spec, load_vnnlib
from veracity.verify import bab, driver
from veracity.verify.attack import Checker, pgd_attack
from veracity.verify.bab import input_split, relu_split
from veracity.verify.driver import verify


def random_problem(seed: int, graph=None, maxpool: bool = True) -> tuple:
    """A random piecewise-linear net (unless given) and a one-case spec with one or two bad regions.

    Drawn nets are redrawn until CROWN leaves at most 24 ReLUs unstable, so the exact MILP takes milliseconds
    (and, with ``maxpool=False``, until they have no max pooling).
    """
    rng = random.Random(seed)
    while True:
        g = graph
        if g is None:
            recipe = nets.random_spec(rng, piecewise_linear=True)
            g = nets.build(dataclasses.replace(recipe, width=min(recipe.width, 8 if recipe.kind == "mlp" else 4)))
        spec = _random_spec(g, rng, seed)
        if graph is not None:
            return g, spec
        if (maxpool or "maxpool" not in g.op_counts()) and driver.max_unstable(g, spec, [[True]]) <= 24:
            return g, spec


def _random_spec(g, rng: random.Random, seed: int) -> Spec:
    n, m = g.n_inputs, g.n_outputs
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=gen, dtype=torch.float64)
    r = torch.rand(n, generator=gen, dtype=torch.float64) * rng.choice([0.1, 0.5, 1.0]) + 0.02
    lo, hi = c - r, c + r
    xs = nets.sample_box(gen, lo, hi, n=1000)
    with torch.no_grad():
        ys = g(xs).reshape(xs.shape[0], -1).numpy()
    regions = []
    for _ in range(rng.choice([1, 1, 2])):
        A = np.array([[rng.gauss(0, 1) for _ in range(m)] for _ in range(rng.randint(1, 2))])
        v = ys @ A.T  # threshold: from a little above the sampled minimum to well below it
        b = v.min(0) - np.array([rng.uniform(-0.05, 0.3) * (v[:, i].std() + 1e-3) for i in range(A.shape[0])])
        regions.append(Region(A, b))
    return Spec((Case(Box(lo.numpy(), hi.numpy()), tuple(regions)),), n, m)


def assert_witness(spec: Spec, x, y, graph) -> None:
    box = spec.cases[0].box
    assert box.contains(x)
    with torch.no_grad():
        y_true = graph(torch.tensor(x)[None]).reshape(-1).numpy()
    np.testing.assert_allclose(y, y_true, rtol=1e-9, atol=1e-9)
    assert any(r.contains(y_true) for r in spec.cases[0].regions)


# -- the oracle: MILP minimum equals the minimum over all activation patterns --------------------------


def brute_force_minimum(graph, lo: np.ndarray, hi: np.ndarray, c: np.ndarray) -> float:
    """min c·f(x) over the box: one LP per ReLU activation pattern of an MLP (linear and relu/leaky nodes)."""
    layers = [n for n in graph.nodes.values() if n.op != "input"]
    acts = [n for n in layers if n.op in ("relu", "leaky_relu")]
    sizes = [n.size for n in acts]
    best = np.inf
    for pattern in itertools.product([0, 1], repeat=sum(sizes)):
        M, off = np.eye(graph.n_inputs), np.zeros(graph.n_inputs)
        A_ub, b_ub, k = [], [], 0
        for n in layers:
            if n.op == "linear":
                W, b = n.params["W"].numpy(), n.params["b"].numpy()
                M, off = W @ M, W @ off + b
                continue
            s = np.array(pattern[k : k + n.size], dtype=float)
            k += n.size
            sign = 2 * s - 1  # active: z >= 0, i.e. -z <= 0; inactive: z <= 0
            A_ub.append(-sign[:, None] * M)
            b_ub.append(sign * off)
            slope = s + (1 - s) * (n.params.get("alpha", 0.0) if n.op == "leaky_relu" else 0.0)
            M, off = slope[:, None] * M, slope * off
        res = linprog(c @ M, A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub), bounds=list(zip(lo, hi, strict=True)),
                      method="highs")
        if res.status == 0:
            best = min(best, res.fun + c @ off)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_milp_minimum_equals_brute_force_on_tiny_nets(seed):
    rng = random.Random(seed)
    depth = rng.randint(1, 2)
    widths = [rng.randint(2, 5 if depth == 1 else 3) for _ in range(depth)]
    g = nets.mlp(seed, rng.randint(1, 3), widths, [rng.choice(["relu", "leaky_relu"]) for _ in widths], 2)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = nets.random_boxes(gen, 1, g.n_inputs, degenerate=0.0)
    lo, hi = lo[0].numpy(), hi[0].numpy()
    c = np.array([1.0, rng.gauss(0, 1)])
    exact = brute_force_minimum(g, lo, hi, c)
    m = milp_minimum(g, lo, hi, c)
    assert m.status == "optimal"
    assert m.lower <= exact + 1e-9 and exact <= m.upper + 1e-9
    assert m.upper - m.lower <= 1e-5 * (1 + abs(exact))
    assert abs(float(c @ g(torch.tensor(m.x)[None]).reshape(-1).numpy()) - m.upper) <= 1e-9 * (1 + abs(m.upper))


# -- every complete method agrees with the MILP -------------------------------------------------------

DRIVER_SEEDS = range(1000)


def test_driver_verdicts_equal_exact_milp_on_1000_random_nets(monkeypatch):
    """Every sixth problem skips the MILP-first shortcut: branch and bound runs (briefly) before the MILP."""
    counts = {"sat": 0, "unsat": 0}
    for seed in DRIVER_SEEDS:
        g, spec = random_problem(seed)
        exact = decide_case(g, spec.cases[0])[0]
        assert exact in ("sat", "unsat"), seed
        monkeypatch.setattr(driver, "MILP_FIRST_UNSTABLE", -1 if seed % 6 == 0 else 32)
        monkeypatch.setattr(driver, "BAB_SHARE", 0.02)
        res = verify(g, spec, timeout=30)
        assert res.status == exact, (seed, res.status, res.method, res.log)
        if exact == "sat":
            assert_witness(spec, res.x, res.y, g)
        counts[exact] += 1
    assert min(counts.values()) >= 50, counts


@pytest.mark.parametrize("flavour", ["relu", "input"])
def test_branch_and_bound_verdicts_equal_exact_milp(flavour):
    """ReLU splitting on random nets of every shape but max pooling (which it does not split: every leaf would
    fall to the MILP); input splitting on MLPs with at most 6 inputs."""
    counts = {"sat": 0, "unsat": 0}
    for seed in range(120):
        graph = None
        if flavour == "input":
            rng = random.Random(seed)
            depth = rng.randint(1, 3)
            graph = nets.mlp(seed, rng.randint(1, 6), [rng.randint(2, 10) for _ in range(depth)],
                             [rng.choice(["relu", "leaky_relu"]) for _ in range(depth)], rng.randint(1, 4))
        g, spec = random_problem(seed, graph, maxpool=False)
        exact = decide_case(g, spec.cases[0])[0]
        fn = relu_split if flavour == "relu" else input_split
        r = fn(g, spec, Checker(g, spec))
        assert r.status == exact, (seed, r.status)
        if exact == "sat":
            assert_witness(spec, *r.witness, g)
        counts[exact] += 1
    assert min(counts.values()) >= 10, counts


@pytest.mark.parametrize("rank", ["crown", "optimised"])
def test_relu_split_decides_with_the_exact_lp_once_every_relu_is_fixed(rank, monkeypatch):
    """Without α/β optimisation splitting can run out of unstable neurons before a bound closes: still decided,
    whichever coefficients rank the splits; a domain the exact LP closes leaves the batch, and only it (every
    domain split is open)."""
    split = bab._SplitBounder.split

    def open_only(self, d):
        assert bool((d.margin <= 0).all())
        return split(self, d)

    monkeypatch.setattr(bab._SplitBounder, "split", open_only)
    for seed in range(60):
        g, spec = random_problem(seed, nets.mlp(seed, 2, [2 + seed % 3, 2], ["relu", "relu"], 2))
        verdict = relu_split(g, spec, Checker(g, spec), iters=0, rank=rank, batch=4).status
        assert verdict == decide_case(g, spec.cases[0])[0], seed


ACASXU = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "acasxu"


@pytest.mark.skipif(not ACASXU.exists(), reason="needs ../shared/benchmarks")
@pytest.mark.parametrize("timeout", [2.0, 5.0])
def test_driver_honours_its_timeout_within_5_percent(timeout):
    """An ACAS Xu instance that input splitting cannot close in seconds: timeout, on time (and no verdict)."""
    g = load_onnx(ACASXU / "onnx" / "ACASXU_run2a_3_3_batch_2000.onnx")
    spec = load_vnnlib(ACASXU / "vnnlib" / "prop_2.vnnlib")
    t = time.monotonic()
    res = verify(g, spec, timeout=timeout)
    elapsed = time.monotonic() - t
    assert res.status == "timeout", res.log
    assert elapsed <= timeout * 1.05, elapsed


def test_attack_vertex_starts_leave_a_plateau_that_uniform_starts_stay_on():
    """y = sum relu(x_i - 0.9) on [0, 1]^20 is flat wherever no x_i exceeds 0.9; y >= 0.5 needs five x_i near 1.
    A random vertex has about ten ones; sign steps from a uniform point only raise the coordinates above 0.9."""
    g = nets.mlp(0, 20, [20], ["relu"], 1)
    first, out = (n for n in g.nodes.values() if n.op == "linear")
    first.params.update(W=torch.eye(20, dtype=torch.float64), b=torch.full((20,), -0.9, dtype=torch.float64))
    out.params.update(W=torch.ones(1, 20, dtype=torch.float64), b=torch.zeros(1, dtype=torch.float64))
    spec = Spec((Case(Box(np.zeros(20), np.ones(20)), (Region(np.array([[-1.0]]), np.array([-0.5])),)),), 20, 1)
    checker = Checker(g, spec)
    assert pgd_attack(g, spec, checker, restarts=4, vertices=False, guided=False) is None
    x, y = pgd_attack(g, spec, checker, restarts=4, guided=False)
    assert_witness(spec, x, y, g)


def test_attack_guided_start_reaches_a_corner_that_random_starts_miss():
    """y = relu(sum x_i - 19.5) on [0, 1]^20 is 0 (and flat) unless nearly every x_i is 1; y >= 0.25 holds only
    near the all-ones vertex, which is where CROWN's bound of -y is smallest."""
    g = nets.mlp(0, 20, [1], ["relu"], 1)
    first, out = (n for n in g.nodes.values() if n.op == "linear")
    first.params.update(W=torch.ones(1, 20, dtype=torch.float64), b=torch.full((1,), -19.5, dtype=torch.float64))
    out.params.update(W=torch.ones(1, 1, dtype=torch.float64), b=torch.zeros(1, dtype=torch.float64))
    spec = Spec((Case(Box(np.zeros(20), np.ones(20)), (Region(np.array([[-1.0]]), np.array([-0.25])),)),), 20, 1)
    checker = Checker(g, spec)
    assert pgd_attack(g, spec, checker, restarts=4, guided=False) is None
    x, y = pgd_attack(g, spec, checker, restarts=4)
    assert_witness(spec, x, y, g)


@pytest.mark.parametrize("seed", range(20))
def test_milp_refined_bounds_contain_activations_and_tighten(seed):
    """``NodeRefiner``: every ReLU input node refined in turn (as the driver's refine stage does) keeps every
    sampled activation inside, and is never looser than the bounds it started from."""
    g, spec = random_problem(seed, maxpool=False)
    case = spec.cases[0]
    lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
    pre = crown_bounds(g, lo, hi)
    refiner = NodeRefiner(g, lo, hi, pre, solve_limit=5.0)
    x = nets.sample_box(torch.Generator().manual_seed(seed), lo[0], hi[0], n=2000)
    with torch.no_grad():
        vals = g.forward_all(x)
    for p in bab.relu_inputs(g):
        l, u = refiner.refine(p)
        pl, pu = (t.reshape(-1).numpy() for t in pre[p])
        assert np.all(l >= pl - 1e-12) and np.all(u <= pu + 1e-12), p
        v = vals[p].reshape(x.shape[0], -1).numpy()
        assert np.all(v >= l - 1e-9) and np.all(v <= u + 1e-9), p


def test_refine_stage_leaves_the_last_relu_layer_to_splitting(monkeypatch):
    """The refine stage refines every ReLU layer's inputs after the first (an affine map of the box), the
    last one only with ``last``."""
    g = nets.mlp(0, 4, [6, 6, 6], ["relu"] * 3, 2)
    spec = Spec((Case(Box(-np.ones(4), np.ones(4)), (Region(np.array([[1.0, 0.0]]), np.array([1e9])),)),), 4, 2)
    calls = []
    real = NodeRefiner.refine
    monkeypatch.setattr(NodeRefiner, "refine", lambda self, name, deadline=None: calls.append(name)
                        or real(self, name, deadline))
    layers = bab.relu_inputs(g)
    for last in (False, True):
        calls.clear()
        driver.refine_stage(g, spec, [[True]], time.monotonic() + 60, last=last)
        assert calls == (layers[1:] if last else layers[1:-1])


@pytest.mark.parametrize("last", [False, True])
def test_driver_verdicts_through_the_refine_stage_equal_exact_milp(monkeypatch, last):
    """ReLU splitting forced (no input splitting, no MILP first) with no time for the first split: what the
    root's bounds and first candidates leave open is decided after the MILP refine stage (with and without
    the last ReLU layer refined), by it, by splitting or by the MILP over its bounds; every verdict equals
    the exact MILP's."""
    monkeypatch.setattr(driver, "REFINE_LAST", last)
    monkeypatch.setattr(driver, "INPUT_SPLIT_MAX_DIM", 0)
    monkeypatch.setattr(driver, "MILP_FIRST_UNSTABLE", -1)
    monkeypatch.setattr(driver, "FIRST_SPLIT_SHARE", 0.0)
    counts = {"sat": 0, "unsat": 0, "refined": 0}
    for seed in range(80):
        g, spec = random_problem(seed)
        exact = decide_case(g, spec.cases[0])[0]
        res = verify(g, spec, timeout=30, attack=False)
        assert res.status == exact, (seed, res.status, res.method, res.log)
        counts["refined"] += any(line.startswith("milp-refine") for line in res.log)
        if exact == "sat":
            assert_witness(spec, res.x, res.y, g)
        counts[exact] += 1
    assert min(counts.values()) >= 10, counts
