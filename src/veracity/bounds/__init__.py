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
from veracity.bounds.ibp import Bounds, ibp
from veracity.bounds.lbp import lbp, lbp_bounds
from veracity.bounds.rules import Interval
from veracity.graph.ir import Graph

# Relative and absolute widening of reported bounds, covering float64 rounding in the propagation.
ROUNDING_MARGIN = 1e-9


def _ibp_spec(graph, lower, upper, C, lines):
    l, u = ibp(graph, lower, upper)[graph.output_name]
    B = l.shape[0]
    l, u = l.reshape(B, -1, 1), u.reshape(B, -1, 1)
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    return (Cp @ l + Cn @ u).squeeze(-1), (Cp @ u + Cn @ l).squeeze(-1)


METHODS: dict[str, Callable[..., Interval]] = {
    "ibp": _ibp_spec,
    "crown": lambda g, l, u, C, lines: crown(g, l, u, C, lines=lines),
    "crown-ibp": lambda g, l, u, C, lines: crown(g, l, u, C, pre=ibp(g, l, u), lines=lines),
    "lbp": lambda g, l, u, C, lines: lbp(g, l, u, C, lines=lines),
    "crown-lbp": lambda g, l, u, C, lines: crown(g, l, u, C, pre=lbp_bounds(g, l, u, lines), lines=lines),
    "alpha": lambda g, l, u, C, lines: alpha_crown(g, l, u, C, lines=lines),
}


def widen(bounds: Interval, margin: float = ROUNDING_MARGIN) -> Interval:
    l, u = bounds
    return l - margin * (1 + l.abs()), u + margin * (1 + u.abs())


def bound_spec(graph: Graph, lower, upper, C=None, method: str = "crown", lines: str = "tight",
               dtype: torch.dtype = torch.float64) -> Interval:
    """Sound bounds of ``C · y`` over each input box, widened for rounding.

    ``lower``/``upper``: (B, n_inputs) boxes; ``C``: (B, S, n_outputs) or (S, n_outputs), default identity.
    Returns (lower, upper), each (B, S).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    lower = torch.tensor(np.asarray(lower), dtype=dtype)
    upper = torch.tensor(np.asarray(upper), dtype=dtype)
    B = lower.shape[0]
    if C is None:
        C = torch.eye(graph.n_outputs, dtype=dtype)
    C = torch.tensor(np.asarray(C), dtype=dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    with torch.no_grad() if method != "alpha" else torch.enable_grad():
        return widen(METHODS[method](graph, lower, upper, C, lines))


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
