"""Reachable sets of the bundled pendulum surrogate: the unrolled graph, soundness against sampled runs, the CLI."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from veracity import examples, reach
from veracity.cli import app
from veracity.graph import load_onnx

F64 = torch.float64
BOX = (torch.tensor([0.5, -0.1], dtype=F64), torch.tensor([0.6, 0.1], dtype=F64))


def _step():
    return load_onnx(examples.path("pendulum_step.onnx"))


def test_unroll_is_the_composition():
    step = _step()
    g = reach.unroll(step, 4)
    x = torch.randn(50, 2, dtype=F64)
    y = x
    for _ in range(4):
        y = step(y)
    assert torch.allclose(g(x), y, atol=1e-12)
    vals = g.forward_all(x)
    names = reach.output_names(step, 4)
    assert torch.allclose(vals[names[2]], step(step(x)), atol=1e-12)


def test_sets_contain_sampled_runs_and_beat_step_by_step():
    """Every sampled run stays in every box (unrolled ADMM, unrolled CROWN, step-by-step); after 4 steps the
    unrolled ADMM boxes are narrower than the step-by-step ones (the wrapping effect), at T=1 they agree."""
    step, T = _step(), 4
    runs = reach.trajectories(step, *BOX, T, n=400)
    unrolled = reach.reach_sets(step, *BOX, T, method="admm", max_iter=60)
    stepwise = reach.stepwise_boxes(step, *BOX, T, method="admm", max_iter=60)
    crown = reach.reach_sets(step, *BOX, T, method="crown")
    for sets in (unrolled, stepwise, crown):
        assert bool(reach.inside(runs, sets).all())
        assert bool((sets.lower <= sets.upper).all())
    w_u, w_s = unrolled.upper - unrolled.lower, stepwise.upper - stepwise.lower
    assert bool((w_u[T] < 0.8 * w_s[T]).all()), (w_u[T], w_s[T])
    assert torch.allclose(w_u[1], w_s[1], rtol=0.05)
    assert bool((w_u[T] <= (crown.upper - crown.lower)[T] + 1e-9).all())


def test_reach_command(tmp_path):
    out = tmp_path / "reach.png"
    r = CliRunner().invoke(app, ["reach", "--steps", "2", "--iterations", "30", "--samples", "50", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "50 of 50 sampled runs inside" in r.output
    assert out.stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["reach", "--lower", "0.7,0", "--upper", "0.6,0.1"])
    assert bad.exit_code == 2 and "exceeds" in bad.output
    assert "Traceback" not in bad.output
