"""CEGAR for sigmoid/tanh: the MILP encodes exactly the abstraction, the abstraction contains the function,
each refinement cuts the spurious point, and verdicts agree with sampling (sat) and a very fine one-shot
abstraction (unsat)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from nets import mlp
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from veracity.bounds.crown import crown_bounds
from veracity.cli import app
from veracity.graph import Graph, Node, load_onnx
from veracity.spec.core import Box, Case, Region, Spec
from veracity.verify import cegar
from veracity.verify.attack import Checker
from veracity.verify.driver import DEFAULT_METHODS, verify


def _f(op, z):
    return torch.sigmoid(torch.tensor(z, dtype=torch.float64)).item() if op == "sigmoid" else float(np.tanh(z))


def _layer(op: str, n: int) -> Graph:
    return Graph([Node("x", "input", (), (n,)), Node("s", op, ("x",), (n,))], "x", "s")


# -- the abstraction ------------------------------------------------------------------------------------------


INTERVALS = [(-3.0, 2.0), (-4.0, -0.5), (0.3, 5.0), (-0.2, 0.1), (-8.0, 8.0)]


def _refined_abstraction(op: str, seed: int) -> tuple[Graph, cegar.Abstraction, dict]:
    """A one-layer abstraction over INTERVALS with a few random tangents and breakpoints added."""
    g = _layer(op, len(INTERVALS))
    lo = torch.tensor([[a for a, _ in INTERVALS]], dtype=torch.float64)
    hi = torch.tensor([[b for _, b in INTERVALS]], dtype=torch.float64)
    pre = {"x": (lo, hi)}
    ab = cegar.Abstraction(g, points=seed % 2)
    cegar.build_model(g, ab, pre)  # initialises the abstraction from the model's bounds
    rng = np.random.default_rng(seed)
    for i, (a, b) in enumerate(INTERVALS):
        for _ in range(4):
            z = rng.uniform(a, b)
            ab.refine_element("s", i, z, _f(op, z) + rng.choice([-1, 1]) * 0.05)
    return g, ab, pre


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_abstraction_contains_the_function(op):
    """Every (z, f(z)) on a dense grid lies in the abstraction, initial and refined."""
    for seed in range(3):
        g, ab, _ = _refined_abstraction(op, seed)
        for i, (a, b) in enumerate(INTERVALS):
            for z in np.linspace(a, b, 801):
                assert ab.contains("s", i, float(z), _f(op, float(z))), (op, seed, i, z)


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_milp_encodes_exactly_the_abstraction(op):
    """With element i's (z, y) fixed, the MILP is feasible iff the point lies in the abstraction (points
    farther than 1e-6 from its boundary), and always for points of the function."""
    g, ab, pre = _refined_abstraction(op, 1)
    rng = np.random.default_rng(0)
    checked = 0
    for i, (a, b) in enumerate(INTERVALS):
        pts = [(z, _f(op, z)) for z in np.linspace(a, b, 7)]
        pts += [(rng.uniform(a, b), rng.uniform(_f(op, a), _f(op, b))) for _ in range(25)]
        for z, y in pts:
            inside = ab.contains("s", i, z, y, 1e-6)
            if inside != ab.contains("s", i, z, y, -1e-6) and abs(y - _f(op, z)) > 1e-9:
                continue  # too close to the boundary to call
            m = cegar.build_model(g, ab, pre)
            m.set_col_bounds(m.vars["x"][i : i + 1], z, z)
            m.set_col_bounds(m.vars["s"][i : i + 1], y, y)
            m.h.run()
            assert (cegar._status(m) == "feasible") == inside, (op, i, z, y, inside)
            checked += 1
    assert checked > 100


def _instance(seed: int, acts, eps: float, off: float, widths=(6, 6)) -> tuple[Graph, Spec]:
    """A random net over a box around a random point; bad region ``y_0 - y_1 <= b`` with b set ``off`` (as a
    share of the sampled range of y_0 - y_1) from its sampled minimum: near the boundary, beyond CROWN/α."""
    g = mlp(seed, 3, list(widths), list(acts), 3)
    x0 = np.random.default_rng(seed).uniform(-0.5, 0.5, 3)
    gen = torch.Generator().manual_seed(1)
    X = torch.tensor(x0 - eps) + torch.rand(20000, 3, dtype=torch.float64, generator=gen) * 2 * eps
    with torch.no_grad():
        m = (g(X)[:, 0] - g(X)[:, 1]).numpy()
    b = m.min() + off * (m.max() - m.min())
    return g, Spec([Case(Box(x0 - eps, x0 + eps), [Region([[1.0, -1.0, 0.0]], [b])])], 3, 3)


def _instances():
    """(seed, acts, eps, off) of 16 random instances, the same on every run."""
    rng = random.Random(0)
    out = []
    for seed in range(16):
        acts = rng.choice([["sigmoid", "tanh"], ["tanh", "tanh"], ["sigmoid", "sigmoid"], ["relu", "sigmoid"]])
        out.append((seed, acts, rng.choice([0.3, 0.6, 1.0]), rng.choice([-0.03, 0.01])))
    return out


def test_each_refinement_cuts_the_spurious_point():
    """Candidates lie in the abstraction they came from; after refinement every refined element excludes
    its candidate point, so no candidate comes back."""
    rounds = 0
    for seed, acts, eps, off in [_instances()[k] for k in (0, 4, 12)]:
        g, spec = _instance(seed, acts, eps, off)
        case = spec.cases[0]
        lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
        pre = crown_bounds(g, lo, hi, "both")
        pre[g.input_name] = (lo, hi)
        region = case.regions[0]
        ab = cegar.Abstraction(g)
        seen = []
        for _ in range(8):
            m = cegar.build_model(g, ab, pre)
            status, cand = cegar.solve_region(g, m, region.A, region.b)
            if cand is None:
                break
            for name, (zs, ys) in cand.points.items():
                for i in range(zs.size):
                    assert ab.contains(name, i, float(zs[i]), float(ys[i]), 1e-5)
            for old in seen:  # earlier spurious points stay cut off
                assert any(not ab.contains(name, i, z, y) for name, i, z, y in old)
            n = cegar.refine(ab, cand)
            if n == 0:
                break
            cut = []
            for name, (zs, ys) in cand.points.items():
                dev = np.abs(ys - cegar._f(g.nodes[name].op, zs))
                for i in np.nonzero(dev > cegar.REFINE_TOL)[0].tolist():
                    if not ab.contains(name, i, float(zs[i]), float(ys[i])):
                        cut.append((name, i, float(zs[i]), float(ys[i])))
            assert len(cut) >= n  # every refined element now excludes its point
            seen.append(cut)
            rounds += 1
    assert rounds >= 4


# -- verdicts ------------------------------------------------------------------------------------------------


def _sampled_counterexample(g: Graph, spec: Spec, n: int = 20000) -> bool:
    box = spec.cases[0].box
    x = torch.tensor(box.lower) + torch.rand(n, box.dim, dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(0)) * torch.tensor(
                                                 box.upper - box.lower)
    with torch.no_grad():
        y = g(x).reshape(n, -1).numpy()
    return any((y @ r.A.T <= r.b).all(1).any() for r in spec.cases[0].regions)


def test_verdicts_agree_with_exact_answers():
    """Random sigmoid/tanh (and mixed ReLU) nets near the decision boundary: CEGAR's sat carries a real
    witness and is never a case the fine one-shot abstraction proves; its unsat is never a case sampling
    breaks; it decides every case either reference decides."""
    stats = {"sat": 0, "unsat": 0, "agree": 0}
    for seed, acts, eps, off in [_instances()[k] for k in (0, 2, 4, 6, 8, 10, 12, 15)]:
        g, spec = _instance(seed, acts, eps, off)
        r = cegar.cegar_verify(g, spec, timeout=20, attack=False, methods=())
        sampled = _sampled_counterexample(g, spec)
        fine = cegar.cegar_verify(g, spec, timeout=20, attack=False, methods=(), max_refinements=0, points=4)
        assert not (sampled and fine.status == "unsat")
        if r.status == "sat":
            assert Checker(g, spec).check(r.x, 0) is not None
            assert fine.status != "unsat"
            stats["sat"] += 1
        elif r.status == "unsat":
            assert not sampled
            stats["unsat"] += 1
        exact = "sat" if sampled else "unsat" if fine.status == "unsat" else None
        if exact is not None:
            assert r.status == exact, (seed, acts, r.status, exact, r.log)
            stats["agree"] += 1
        assert r.method == ("cegar" if r.status in ("sat", "unsat") else "")
    assert stats["sat"] >= 3 and stats["unsat"] >= 3 and stats["agree"] >= 7, stats


def test_driver_runs_cegar_only_when_asked():
    g, spec = _instance(*_instances()[0])  # alpha-CROWN leaves it open
    assert "cegar" not in DEFAULT_METHODS
    r = verify(g, spec, timeout=30, methods=("crown", "cegar"), attack=False)
    assert r.status == "unsat" and r.method == "cegar", r.log
    r = verify(g, spec, timeout=30, methods=("crown", "alpha"), attack=False, branch=False)
    assert r.status == "unknown"


def test_timeout_inside_cegar_keeps_its_counts(monkeypatch):
    """The driver's alarm firing inside the CEGAR loop still reports the solves made so far."""
    g, spec = _instance(*_instances()[0])
    real = cegar.refine

    def slow(*args, **kwargs):
        time.sleep(30)  # after the first solve; the alarm (timeout 8 s) fires here
        return real(*args, **kwargs)

    monkeypatch.setattr(cegar, "refine", slow)
    r = verify(g, spec, timeout=8, methods=("crown", "cegar"), attack=False)
    assert r.status == "timeout" and "1 solve(s)" in r.message, (r.message, r.log)


# -- command line --------------------------------------------------------------------------------------------


def _sigmoid_onnx(path: Path, seed: int = 3) -> Graph:
    rng = np.random.default_rng(seed)
    W1, b1 = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    W2, b2 = rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "W2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_cli_verify_with_cegar(tmp_path):
    model, spec = tmp_path / "m.onnx", tmp_path / "p.vnnlib"
    _sigmoid_onnx(model)
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(3))
    text += "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    text += "".join(f"(assert (>= X_{i} -0.5))\n(assert (<= X_{i} 0.5))\n" for i in range(3))
    g = load_onnx(model)
    x = torch.rand(20000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        top = float(g(x)[:, 0].max())
    text += f"(assert (>= Y_0 {top + 0.02}))\n"  # just above the sampled maximum: IBP cannot prove it
    spec.write_text(text)
    runner = CliRunner()
    r = runner.invoke(app, ["verify", str(model), str(spec), "--methods", "ibp,cegar", "--timeout", "30"])
    assert r.exit_code == 0 and "unsat (by cegar)" in r.output, r.output
    r = runner.invoke(app, ["verify", str(model), str(spec), "--methods", "cegar,nope"])
    assert r.exit_code == 2 and "nope" in r.output
