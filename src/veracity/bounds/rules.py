"""What every bound algorithm needs to know about a nonlinear node: its lines, given its input bounds.

A node ``y = f(x_1, ..., x_K)`` gets :class:`NodeLines`: per-input coefficient tensors and a bias for
a lower and an upper line, ``sum_k lw[k]*x_k + lb <= y <= sum_k uw[k]*x_k + ub``, element-wise.
Max pooling is not element-wise; it is described by a selection (:func:`maxpool_select`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from veracity import relax
from veracity.graph import ops
from veracity.graph.ir import Node, UnsupportedError

ELEMENTWISE = ("relu", "leaky_relu", "paramramp", "sigmoid", "tanh", "mul")
# For each op, the optimisable line parameters α-CROWN may set (each a tensor in [0, 1]).
ALPHA_KEYS = {"relu": ("lower",), "leaky_relu": ("lower",), "sigmoid": ("lower", "upper"), "tanh": ("lower", "upper")}

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class NodeLines:
    lw: list[torch.Tensor]
    lb: torch.Tensor
    uw: list[torch.Tensor]
    ub: torch.Tensor


def lines_for(node: Node, p: dict, ins: list[Interval], lines: str = "tight", alpha=None,
              memo: dict | None = None) -> NodeLines:
    """Lines of an element-wise nonlinear node from the bounds of its inputs.

    ``memo``: a dict kept over calls with the same bounds (the steps of one α optimisation). A ReLU's lower
    slope is affine in its α and nothing else depends on α, so its lines at α = 0 and the slope's change
    per unit α are computed once, and each call only blends in α (two tensor ops instead of a dozen)."""
    alpha = alpha or {}
    if memo is not None and node.op in ("relu", "leaky_relu") and "lower" in alpha:
        if node.name not in memo:
            at0 = lines_for(node, p, ins, lines, {"lower": 0.0})
            memo[node.name] = at0, lines_for(node, p, ins, lines, {"lower": 1.0}).lw[0] - at0.lw[0]
        at0, per_alpha = memo[node.name]
        return NodeLines([at0.lw[0] + per_alpha * alpha["lower"]], at0.lb, at0.uw, at0.ub)
    if node.op in ("relu", "leaky_relu"):
        (l, u), = ins
        slope = p.get("alpha", 0.0) if node.op == "leaky_relu" else 0.0
        r = relax.leaky_relu(l, u, slope, lines, alpha.get("lower"))
    elif node.op == "paramramp":
        (l, u), = ins
        r = relax.paramramp(l, u, p["r"], p["eta"], lines)
    elif node.op in ("sigmoid", "tanh"):
        (l, u), = ins
        fn = relax.sigmoid if node.op == "sigmoid" else relax.tanh
        r = fn(l, u, alpha.get("lower"), alpha.get("upper"))
    elif node.op == "mul":
        return _mccormick(*ins)
    else:
        raise UnsupportedError(f"no linear relaxation for op '{node.op}' ({node.origin or node.name})")
    return NodeLines([r.lw], r.lb, [r.uw], r.ub)


def _mccormick(bx: Interval, by: Interval) -> NodeLines:
    """x*y >= ly*x + lx*y - lx*ly and x*y <= uy*x + lx*y - lx*uy (two McCormick planes)."""
    (lx, _), (ly, uy) = bx, by
    return NodeLines([ly, lx], -lx * ly, [uy, lx], -lx * uy)


def interval(node: Node, p: dict, ins: list[Interval]) -> Interval:
    """Interval image of a nonlinear node (IBP)."""
    op = node.op
    if op in ("relu", "leaky_relu", "sigmoid", "tanh"):
        (l, u), = ins
        f = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}.get(op)
        if f is None:
            return F.leaky_relu(l, p["alpha"]), F.leaky_relu(u, p["alpha"])
        return f(l), f(u)
    if op == "paramramp":
        (l, u), = ins
        return ops.OPS[op].forward(node, p, l), ops.OPS[op].forward(node, p, u)
    if op == "maxpool":
        (l, u), = ins
        f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(p["kernel"])]
        args = (p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"])
        return f(l, *args), f(u, *args)
    if op in ("mul", "div"):
        (lx, ux), (ly, uy) = ins
        if op == "div":
            if bool(((ly <= 0) & (uy >= 0)).any()):
                raise UnsupportedError(f"division by an interval containing 0 ({node.origin or node.name})")
            ly, uy = 1.0 / uy, 1.0 / ly
        c = torch.stack([lx * ly, lx * uy, ux * ly, ux * uy])
        return c.min(0).values, c.max(0).values
    raise UnsupportedError(f"no interval rule for op '{op}' ({node.origin or node.name})")


@dataclass
class Selection:
    """Max pooling relaxed (DeepPoly): y >= x[index]; y <= x[index] where ``exact``, else y <= ``umax``.

    ``index`` (B, C, L) holds flat positions in each channel's input plane; L = output positions.
    """

    index: torch.Tensor
    exact: torch.Tensor
    umax: torch.Tensor


def maxpool_select(node: Node, p: dict, l: torch.Tensor, u: torch.Tensor) -> Selection:
    if len(p["kernel"]) != 2:
        raise UnsupportedError(f"bounds for {len(p['kernel'])}-d max pooling are not supported ({node.origin})")
    B, C, H, W = l.shape
    ph, pw = p["padding"]
    pads = (pw, pw, ph, ph)
    unf = dict(kernel_size=p["kernel"], dilation=p["dilation"], stride=p["stride"])
    lp = F.pad(l, pads, value=-torch.inf)
    up = F.pad(u, pads, value=-torch.inf)
    lw = F.unfold(lp.reshape(B * C, 1, *lp.shape[2:]), **unf).reshape(B, C, -1, node.shape[1] * node.shape[2])
    uw = F.unfold(up.reshape(B * C, 1, *up.shape[2:]), **unf).reshape(B, C, -1, node.shape[1] * node.shape[2])
    j = lw.argmax(dim=2, keepdim=True)  # (B, C, 1, L)
    lj = lw.gather(2, j)
    others = uw.scatter(2, j, -torch.inf).max(dim=2, keepdim=True).values
    exact = (lj >= others).squeeze(2)
    umax = uw.max(dim=2).values
    # flat input position of every window entry (padding entries never win the argmax of l)
    pos = torch.arange(H * W, dtype=l.dtype, device=l.device).reshape(1, 1, H, W)
    pos = F.pad(pos, pads, value=-1.0)
    pos = F.unfold(pos, **unf)[0]  # (K, L)
    index = torch.gather(pos.expand(B, C, *pos.shape), 2, j).squeeze(2).long()
    return Selection(index, exact, umax)
