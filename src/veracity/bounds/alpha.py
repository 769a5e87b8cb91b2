"""α-CROWN: CROWN with the optimisable lines of every relaxation tuned per spec row by projected gradient.

The lower slopes of unstable ReLUs and the tangent points of sigmoid/tanh lines are parameters in [0, 1];
every value gives sound lines, so every iterate is a valid bound and the best one per row is kept. The
first iterate uses CROWN's own lines, so the result is never looser than CROWN.
"""

from __future__ import annotations

import torch

from veracity.bounds import rules
from veracity.bounds.crown import backward, crown_bounds
from veracity.bounds.ibp import Bounds
from veracity.graph.ir import Graph


def _init_alpha(op: str, key: str, l: torch.Tensor, u: torch.Tensor, lines: str) -> torch.Tensor:
    """The parameter value reproducing CROWN's default line."""
    if op in ("relu", "leaky_relu"):
        return (u > -l).to(l.dtype) if lines == "adaptive" else torch.zeros_like(l)
    if key == "lower":  # tangent at the midpoint when convex, at the largest sound point when straddling
        return torch.where(u <= 0, torch.full_like(l, 0.5), torch.ones_like(l))
    return torch.where(l >= 0, torch.full_like(l, 0.5), torch.zeros_like(l))


def alpha_crown(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, pre: Bounds | None = None,
                lines: str = "tight", iters: int = 20, lr: float = 0.5) -> rules.Interval:
    """Bounds of ``C · y`` (C of shape (B, S, n_outputs)) with lines optimised for each row."""
    B, S = C.shape[:2]
    bounds = dict(pre) if pre is not None else crown_bounds(graph, lower, upper, lines)
    bounds[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
    out = graph.output
    A0 = C.reshape(B, S, *out.shape)
    A0 = torch.cat([A0, -A0], 1)
    params: dict[str, dict[str, torch.Tensor]] = {}
    for n in graph.nodes.values():
        keys = rules.ALPHA_KEYS.get(n.op)
        if not keys:
            continue
        l, u = bounds[n.inputs[0]]
        params[n.name] = {
            k: _init_alpha(n.op, k, l, u, lines).unsqueeze(1).expand(B, 2 * S, *n.shape).clone().requires_grad_(True)
            for k in keys
        }
    with torch.no_grad():
        best = backward(graph, out.name, A0, bounds, lines, params)
    leaves = [t for d in params.values() for t in d.values()]
    if leaves and iters > 0:
        # Adam ascent on the bound, projected to [0, 1] (hand-written: torch.optim's first use is slow)
        m = [torch.zeros_like(t) for t in leaves]
        v = [torch.zeros_like(t) for t in leaves]
        b1, b2 = 0.9, 0.999
        for it in range(1, iters + 1):
            val = backward(graph, out.name, A0, bounds, lines, params)
            best = torch.maximum(best, val.detach())
            grads = torch.autograd.grad(val.sum(), leaves, allow_unused=True)
            with torch.no_grad():
                for t, g, mt, vt in zip(leaves, grads, m, v, strict=True):
                    if g is None:
                        continue
                    mt.mul_(b1).add_(g, alpha=1 - b1)
                    vt.mul_(b2).addcmul_(g, g, value=1 - b2)
                    step = lr * (mt / (1 - b1**it)) / ((vt / (1 - b2**it)).sqrt() + 1e-8)
                    t.add_(step).clamp_(0.0, 1.0)
        with torch.no_grad():
            best = torch.maximum(best, backward(graph, out.name, A0, bounds, lines, params))
    return best[:, :S], -best[:, S:]
