"""ParamRamp relaxation: sound on dense samples in every neuron state, exact on stable pieces, tight lines."""

import pytest
import torch

from veracity.relax import paramramp
from veracity.relax.paramramp import ramp


def _boxes(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n, generator=g, dtype=torch.float64) * 2.0
    r[: n // 20] = 0.0  # degenerate ramp: f is eta*z
    a = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
    b = torch.randn(n, generator=g, dtype=torch.float64) * 2.0
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    u[: n // 10] = l[: n // 10]  # points
    return l, u, r


def _check(lines, l, u, r, eta, alpha=None):
    lb = paramramp(l, u, r, eta, lines, alpha)
    t = torch.linspace(0, 1, 401, dtype=torch.float64)[:, None]
    z = l + t * (u - l)
    f = ramp(z, r, eta)
    assert bool((lb.lower(z) <= f + 1e-12).all())
    assert bool((lb.upper(z) >= f - 1e-12).all())
    return lb, z, f


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("lines", ["tight", "adaptive"])
def test_paramramp_lines_contain_the_function(lines, eta):
    l, u, r = _boxes()
    _check(lines, l, u, r, eta)


@pytest.mark.parametrize("eta", [0.0, 0.05])
def test_paramramp_alpha_family_is_sound(eta):
    l, u, r = _boxes(seed=1)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        alpha = (torch.rand(l.shape, generator=g, dtype=torch.float64),
                 torch.rand(l.shape, generator=g, dtype=torch.float64))
        _check("tight", l, u, r, eta, alpha)
    _check("tight", l, u, r, eta, torch.ones_like(l))


def test_paramramp_states_are_all_covered_and_stable_ones_exact():
    l, u, r = _boxes(seed=2)
    lb, z, f = _check("tight", l, u, r, 0.01)
    states = {
        "dead": u <= 0, "top": l >= r, "mid": (l >= 0) & (u <= r),
        "low": (l < 0) & (u > 0) & (u <= r), "high": (l >= 0) & (l < r) & (u > r), "both": (l < 0) & (u > r),
    }
    for name, m in states.items():
        assert int(m.sum()) > 20, name
    stable = states["dead"] | states["top"] | states["mid"]
    assert torch.allclose(lb.lower(z)[:, stable], f[:, stable], atol=1e-12)
    assert torch.allclose(lb.upper(z)[:, stable], f[:, stable], atol=1e-12)


def test_paramramp_tight_lines_are_never_looser_than_the_interval():
    l, u, r = _boxes(seed=3)
    lb = paramramp(l, u, r, 0.02, "tight")
    assert bool((lb.lw >= 0).all()) and bool((lb.uw >= 0).all())
    # with non-negative slopes the line's extremes sit at the box ends
    assert bool((lb.lower(l) >= ramp(l, r, 0.02) - 1e-12).all())
    assert bool((lb.upper(u) <= ramp(u, r, 0.02) + 1e-12).all())


def test_paramramp_broadcasts_per_neuron_r_and_rejects_bad_input():
    l = -torch.rand(5, 3, dtype=torch.float64)
    u = torch.rand(5, 3, dtype=torch.float64) * 3
    r = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    out = paramramp(l, u, r)
    assert out.lw.shape == (5, 3)
    # alpha per spec row, as alpha-CROWN passes it: l (B, 1, n), alpha (B, S, n)
    out = paramramp(l[:, None], u[:, None], r, 0.0, "tight", torch.rand(5, 4, 3, dtype=torch.float64))
    assert out.lw.shape == (5, 4, 3)
    with pytest.raises(ValueError):
        paramramp(l, u, -r)
    with pytest.raises(ValueError):
        paramramp(l, u, r, lines="loose")
    with pytest.raises(ValueError):
        paramramp(l, u, r, eta=1.0)
