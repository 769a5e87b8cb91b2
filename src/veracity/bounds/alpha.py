"""α-CROWN: CROWN with the optimisable lines of every relaxation tuned per spec row by projected gradient.

The lower slopes of unstable ReLUs and the tangent points of sigmoid/tanh lines are parameters in [0, 1];
every value gives sound lines, so every iterate is a valid bound and the best one per row is kept. The
first iterate uses CROWN's own lines, so the result is never looser than CROWN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from veracity.bounds import rules
from veracity.bounds.crown import backward, crown_bounds, needs_bounds
from veracity.bounds.ibp import Bounds
from veracity.graph.ir import Graph


def _init_alpha(op: str, key: str, l: torch.Tensor, u: torch.Tensor, lines: str) -> torch.Tensor:
    """The parameter value reproducing CROWN's default line."""
    if op in ("relu", "leaky_relu"):
        return (u > -l).to(l.dtype) if lines == "adaptive" else torch.zeros_like(l)
    if key == "lower":  # tangent at the midpoint when convex, at the largest sound point when straddling
        return torch.where(u <= 0, torch.full_like(l, 0.5), torch.ones_like(l))
    return torch.where(l >= 0, torch.full_like(l, 0.5), torch.zeros_like(l))


def init_alphas(graph: Graph, bounds: Bounds, rows: int, lines: str) -> dict[str, dict[str, torch.Tensor]]:
    """One set of optimisable line parameters per row, (B, rows, *shape), reproducing CROWN's lines."""
    params: dict[str, dict[str, torch.Tensor]] = {}
    for n in graph.nodes.values():
        keys = rules.ALPHA_KEYS.get(n.op)
        if not keys:
            continue
        l, u = bounds[n.inputs[0]]
        B = l.shape[0]
        params[n.name] = {
            k: _init_alpha(n.op, k, l, u, lines).unsqueeze(1).expand(B, rows, *n.shape).clone().requires_grad_(True)
            for k in keys
        }
    return params


def maximise(value: Callable[[], torch.Tensor], params: list[tuple[torch.Tensor, float, float]], iters: int,
             lr: float, keep: bool = False):
    """Projected Adam ascent of ``value()`` (B, S) over ``params`` (tensor, low, high); every value of the
    parameters in their ranges gives a valid bound, so the best value seen per entry is returned.
    ``keep``: the parameters are left at their best values per entry (each tensor's first two dimensions
    index the entries). (Hand-written: torch.optim's first use is slow.)"""
    leaves = [t for t, _, _ in params]
    with torch.no_grad():
        best = value()
    if not leaves or iters <= 0:
        return best
    kept = [t.detach().clone() for t in leaves] if keep else []

    def remember(val):
        nonlocal best
        better = (val > best).to(val.dtype)  # (B, S): small; the blend below is exact for 0/1
        best = torch.maximum(best, val)
        for t, k in zip(leaves if keep else [], kept, strict=True):
            b = better.reshape(*better.shape, *[1] * (t.dim() - 2))
            k.mul_(1 - b).add_(t.detach() * b)

    def finish():
        with torch.no_grad():
            remember(value())
            for t, k in zip(leaves if keep else [], kept, strict=True):
                t.copy_(k)
        return best

    m = [torch.zeros_like(t) for t in leaves]
    v = [torch.zeros_like(t) for t in leaves]
    b1, b2 = 0.9, 0.999
    for it in range(1, iters + 1):
        val = value()
        remember(val.detach())
        if not val.requires_grad:  # no parameter reaches the bound (every line it uses is exact)
            return finish()
        grads = torch.autograd.grad(val.sum(), leaves, allow_unused=True)
        with torch.no_grad():
            for (t, lo, hi), g, mt, vt in zip(params, grads, m, v, strict=True):
                if g is None:
                    continue
                # (+1e-20: CPU sqrt is ~8x slower on exact zeros, and most entries' gradients are 0)
                mt.mul_(b1).add_(g, alpha=1 - b1)
                vt.mul_(b2).addcmul_(g, g, value=1 - b2)
                t.add_(lr * (mt / (1 - b1**it)) / ((vt / (1 - b2**it) + 1e-20).sqrt() + 1e-8)).clamp_(lo, hi)
    return finish()


def alpha_crown(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, pre: Bounds | None = None,
                lines: str = "tight", iters: int = 20, lr: float = 0.5) -> rules.Interval:
    """Bounds of ``C · y`` (C of shape (B, S, n_outputs)) with lines optimised for each row."""
    B, S = C.shape[:2]
    bounds = dict(pre) if pre is not None else crown_bounds(graph, lower, upper, lines)
    bounds[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
    out = graph.output
    A0 = C.reshape(B, S, *out.shape)
    A0 = torch.cat([A0, -A0], 1)
    params = init_alphas(graph, bounds, 2 * S, lines)
    leaves = [(t, 0.0, 1.0) for d in params.values() for t in d.values()]
    memo: dict = {}
    best = maximise(lambda: backward(graph, out.name, A0, bounds, lines, params, memo=memo), leaves, iters, lr)
    return best[:, :S], -best[:, S:]


def alpha_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, lines: str = "adaptive", iters: int = 20,
                 lr: float = 0.5, pre: Bounds | None = None) -> Bounds:
    """Intermediate bounds with optimised lines: full CROWN (``pre``, default ``crown_bounds(..., "both")``),
    then, layer by layer, the neurons it leaves unstable bounded by α-CROWN (lines optimised per neuron and
    side) and intersected with CROWN's. Each layer's pass uses the refined bounds of the layers before it."""
    bounds = dict(pre) if pre is not None else crown_bounds(graph, lower, upper, "both")
    consumers, order = graph.consumers(), list(graph.nodes)
    for name in needs_bounds(graph):
        if not all(graph.nodes[c].op in ("relu", "leaky_relu") for c in consumers[name]):
            continue
        l, u = bounds[name]
        B, shape = l.shape[0], l.shape[1:]
        lf, uf = l.reshape(B, -1), u.reshape(B, -1)
        rows = ((lf < 0) & (uf > 0)).any(0).nonzero().flatten()
        if rows.numel() == 0:
            continue
        r = rows.numel()
        C = torch.zeros(B, r, lf.shape[1], dtype=l.dtype, device=l.device)
        C[:, torch.arange(r), rows] = 1.0
        C = C.reshape(B, r, *shape)
        A0 = torch.cat([C, -C], 1)
        params = {k: v for k, v in init_alphas(graph, bounds, 2 * r, lines).items()
                  if order.index(k) < order.index(name)}
        leaves = [(t, 0.0, 1.0) for d in params.values() for t in d.values()]
        memo: dict = {}
        with torch.enable_grad():
            best = maximise(lambda: backward(graph, name, A0, bounds, lines, params, memo=memo),  # noqa: B023
                            leaves, iters, lr)
        lf, uf = lf.clone(), uf.clone()
        lf[:, rows] = torch.maximum(lf[:, rows], best[:, :r].detach())
        uf[:, rows] = torch.minimum(uf[:, rows], -best[:, r:].detach())
        bounds[name] = lf.reshape(B, *shape), uf.reshape(B, *shape)
    return bounds
