"""Pictures (veracity.plot, ``veracity plot``): regions are sound and nested; commands write PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests import nets
from typer.testing import CliRunner

from veracity import examples
from veracity.cli import app
from veracity.plot import ACTS, activation_lines, lines_figure, reach_regions

runner = CliRunner()


def _area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def _inside(p: np.ndarray, pts: np.ndarray, tol: float = 1e-7) -> bool:
    """Points inside the closed convex polygon p (counter-clockwise)."""
    a, b = p[:-1], p[1:]
    cross = (b[:, 0] - a[:, 0])[None] * (pts[:, 1:2] - a[None, :, 1]) - (b[:, 1] - a[:, 1])[None] * (
        pts[:, 0:1] - a[None, :, 0])
    return bool(np.all(cross >= -tol * (1 + np.abs(pts).max())))


@pytest.mark.parametrize("seed", range(4))
def test_reach_regions_contain_samples_and_nest(seed):
    g = nets.mlp(seed, 3, [6, 6], ["relu", "relu"], 2)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = nets.random_boxes(gen, 1, 3, max_radius=1.0, degenerate=0.0)
    r = reach_regions(g, lo[0].numpy(), hi[0].numpy(), 1, 0, 1, n_dirs=16, samples=2000)
    s = r["samples"]
    assert np.all(s >= r["ibp"][0] - 1e-9) and np.all(s <= r["ibp"][1] + 1e-9)
    for key in ("crown", "lp", "kpoly"):
        assert _inside(r[key], s), key
    assert _area(r["kpoly"]) <= _area(r["lp"]) + 1e-6 <= _area(r["crown"]) + 2e-6


@pytest.mark.parametrize("act", ACTS)
def test_activation_lines_are_sound(act):
    l, u = -1.5, 2.0
    f, named, lp = activation_lines(act, l, u, r=1.0, eta=0.1)
    z = torch.linspace(l, u, 2001, dtype=torch.float64)
    for lb in list(named.values()) + (lp or []):
        assert torch.all(lb.lw * z + lb.lb <= f(z) + 1e-9) and torch.all(lb.uw * z + lb.ub >= f(z) - 1e-9)


def test_lines_figure_writes_png(tmp_path):
    p = lines_figure("sigmoid", -2.0, 3.0, tmp_path / "s.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_commands(tmp_path):
    out = tmp_path / "l.png"
    args = ["plot", "lines", "--act", "paramramp", "--lower", "-1", "--upper", "2", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["plot", "lines", "--lower", "2", "--upper", "1", "--out", str(out)])
    assert res.exit_code == 2 and "error" in res.output
    model, spec = str(examples.path(examples.DIGITS_ONNX)), str(examples.path(examples.DIGITS_SPEC))
    res = runner.invoke(app, ["plot", "reach", model, spec, "--neurons", "0:1,0:99"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = runner.invoke(app, ["plot", "reach", model, spec, "--neurons", "0:1,x"])
    assert res.exit_code == 2
    out = tmp_path / "r.png"
    res = runner.invoke(app, ["plot", "reach", model, spec, "--neurons", "0:1,0:2", "--directions", "8",
                              "--samples", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:4] == b"\x89PNG"
