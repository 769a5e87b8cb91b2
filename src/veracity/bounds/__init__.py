"""Sound bounds on every node of a graph over a box of inputs.

The methods compose a few functions:
- ``ibp``: interval bound propagation;
- ``crown``: backward linear bounds with intermediate bounds from full CROWN (default), or from any
  other method's bounds passed as ``pre`` (CROWN-IBP: ``pre=ibp(...)``, CROWN-LBP: ``pre=lbp_bounds(...)``);
- ``lbp``: forward linear bounds;
- ``alpha_crown``: CROWN with optimised lines.
:func:`bound_spec` names these compositions for the command line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from veracity.bounds.alpha import alpha_crown
from veracity.bounds.crown import backward, crown, crown_bounds, needs_bounds
from veracity.bounds.ibp import Bounds, ibp, spec_interval
from veracity.bounds.lbp import lbp, lbp_bounds
from veracity.bounds.rules import Interval
from veracity.graph.ir import Graph

# Relative and absolute widening of reported bounds, covering rounding in the propagation: 1e-9 in float64,
# 1024 machine epsilons (1.2e-4) in float32.
ROUNDING_MARGIN = 1e-9


def rounding_margin(dtype: torch.dtype) -> float:
    return max(ROUNDING_MARGIN, 1024 * torch.finfo(dtype).eps)


def _float64(x) -> torch.Tensor:
    return x.detach().to("cpu", torch.float64) if torch.is_tensor(x) else torch.tensor(np.asarray(x, np.float64))


def _outward(x: torch.Tensor, dtype: torch.dtype, direction: float) -> torch.Tensor:
    """``x`` (float64) in ``dtype``, rounded away from the box (direction -inf for lower, +inf for upper)."""
    y = x.to(dtype)
    off = (y.double() > x) if direction < 0 else (y.double() < x)
    return torch.where(off, torch.nextafter(y, torch.full_like(y, direction)), y)


def _admm(graph, lower, upper, C, lines):
    from veracity.solvers.admm import admm_bounds  # the solvers import this package

    return admm_bounds(graph, lower, upper, C, pre=crown_bounds(graph, lower, upper, lines), max_iter=2000)


def _ibp_spec(graph, lower, upper, C, lines):
    return spec_interval(C, ibp(graph, lower, upper)[graph.output_name])


METHODS: dict[str, Callable[..., Interval]] = {
    "ibp": _ibp_spec,
    "crown": lambda g, l, u, C, lines: crown(g, l, u, C, lines=lines),
    "crown-ibp": lambda g, l, u, C, lines: crown(g, l, u, C, pre=ibp(g, l, u), lines=lines),
    "lbp": lambda g, l, u, C, lines: lbp(g, l, u, C, lines=lines),
    "crown-lbp": lambda g, l, u, C, lines: crown(g, l, u, C, pre=lbp_bounds(g, l, u, lines), lines=lines),
    "alpha": lambda g, l, u, C, lines: alpha_crown(g, l, u, C, lines=lines),
    "admm": lambda g, l, u, C, lines: _admm(g, l, u, C, lines),
    "lp": lambda g, l, u, C, lines: _lp(g, l, u, C, lines),
    "kpoly": lambda g, l, u, C, lines: _kpoly(g, l, u, C, lines),
}


def _lp(graph, lower, upper, C, lines):
    """The triangle LP (HiGHS, dual-certified) over full-CROWN intermediate bounds."""
    from veracity.solvers.lp import lp_bounds

    lo, hi = lp_bounds(graph, lower, upper, C, lines=lines)
    return lo.to(lower.dtype), hi.to(lower.dtype)


def _kpoly(graph, lower, upper, C, lines):
    """The LP with k-ReLU group constraints (k = 3) over full-CROWN intermediate bounds."""
    from veracity.solvers.kpoly import KPolyOptions, kpoly_bounds

    lo, hi = kpoly_bounds(graph, lower, upper, C, options=KPolyOptions(lines=lines))
    return lo.to(lower.dtype), hi.to(lower.dtype)


def widen(bounds: Interval, margin: float = ROUNDING_MARGIN) -> Interval:
    l, u = bounds
    return l - margin * (1 + l.abs()), u + margin * (1 + u.abs())


def bound_spec(graph: Graph, lower, upper, C=None, method: str = "crown", lines: str = "tight",
               dtype: torch.dtype = torch.float64) -> Interval:
    """Sound bounds of ``C · y`` over each input box, widened for rounding.

    The box is rounded outward to ``dtype``; the arithmetic's rounding is covered by a relative margin
    (:func:`rounding_margin`), not by directed rounding.

    ``lower``/``upper``: (B, n_inputs) boxes; ``C``: (B, S, n_outputs) or (S, n_outputs), default identity.
    Returns (lower, upper), each (B, S).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    lower = _outward(_float64(lower), dtype, -torch.inf)
    upper = _outward(_float64(upper), dtype, torch.inf)
    B = lower.shape[0]
    C = torch.eye(graph.n_outputs, dtype=dtype) if C is None else _float64(C).to(dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    with torch.no_grad() if method != "alpha" else torch.enable_grad():
        return widen(METHODS[method](graph, lower, upper, C, lines), rounding_margin(dtype))


__all__ = [
    "METHODS",
    "Bounds",
    "Interval",
    "alpha_crown",
    "backward",
    "bound_spec",
    "crown",
    "crown_bounds",
    "ibp",
    "lbp",
    "lbp_bounds",
    "needs_bounds",
    "widen",
]
