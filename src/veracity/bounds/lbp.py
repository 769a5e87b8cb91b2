"""LBP: forward linear bound propagation (Lyu et al., CVPR 2021).

Every node keeps a lower and an upper linear function of the (flattened) input,
``Lw·x + Lb <= v <= Uw·x + Ub``, pushed forward op by op; its interval is the minimum/maximum of those
functions over the input box. Cost grows linearly with depth (CROWN's grows quadratically).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from veracity.bounds import rules
from veracity.bounds.ibp import Bounds, ibp_node, spec_interval
from veracity.graph import ops
from veracity.graph.ir import Graph, UnsupportedError


@dataclass
class Affine:
    """Linear bounds of a node: weights (B, n_in, *shape), biases (B, *shape)."""

    Lw: torch.Tensor
    Lb: torch.Tensor
    Uw: torch.Tensor
    Ub: torch.Tensor


def _concretize(w: torch.Tensor, b: torch.Tensor, c: torch.Tensor, r: torch.Tensor, upper: bool) -> torch.Tensor:
    B, n = w.shape[:2]
    wf = w.reshape(B, n, -1)
    mid = torch.einsum("bn,bnk->bk", c, wf)
    rad = torch.einsum("bn,bnk->bk", r, wf.abs())
    return ((mid + rad) if upper else (mid - rad)).reshape(b.shape) + b


def _lin(op, node, p, k, x, lead: int):
    """Apply a linear op's map to a tensor with ``lead`` leading batch-like axes."""
    shape = x.shape[:lead]
    y = op.apply(node, p, k, x.reshape(-1, *node.in_shapes[k]))
    return y.reshape(*shape, *node.shape)


def _abs(op, node, p, k, x, lead: int):
    shape = x.shape[:lead]
    y = op.abs(node, p, k, x.reshape(-1, *node.in_shapes[k]))
    return y.reshape(*shape, *node.shape)


def _linear(op, node, p, ins: list[Affine]) -> Affine:
    lw = lb = uw = ub = None
    for k, f in enumerate(ins):
        if op.nonneg:
            terms = (_lin(op, node, p, k, f.Lw, 2), _lin(op, node, p, k, f.Lb, 1),
                     _lin(op, node, p, k, f.Uw, 2), _lin(op, node, p, k, f.Ub, 1))
        else:  # lower = L⁺·low + L⁻·up = (L(low + up) + |L|(low - up)) / 2, upper symmetric
            mw, dw = _lin(op, node, p, k, f.Lw + f.Uw, 2) / 2, _abs(op, node, p, k, f.Uw - f.Lw, 2) / 2
            mb, db = _lin(op, node, p, k, f.Lb + f.Ub, 1) / 2, _abs(op, node, p, k, f.Ub - f.Lb, 1) / 2
            terms = (mw - dw, mb - db, mw + dw, mb + db)
        lw, lb, uw, ub = terms if lw is None else (lw + terms[0], lb + terms[1], uw + terms[2], ub + terms[3])
    c = op.const(node, p)
    if c is not None:
        lb, ub = lb + c, ub + c
    return Affine(lw, lb, uw, ub)


def _nonlinear(node, p, ins: list[Affine], nl: rules.NodeLines) -> Affine:
    lw = uw = 0
    lb, ub = nl.lb, nl.ub
    for k, f in enumerate(ins):
        a, b = nl.lw[k], nl.uw[k]
        ap, an, bp, bn = a.clamp(min=0), a.clamp(max=0), b.clamp(min=0), b.clamp(max=0)
        lw = lw + ap.unsqueeze(1) * f.Lw + an.unsqueeze(1) * f.Uw
        uw = uw + bp.unsqueeze(1) * f.Uw + bn.unsqueeze(1) * f.Lw
        lb = lb + ap * f.Lb + an * f.Ub
        ub = ub + bp * f.Ub + bn * f.Lb
    return Affine(lw, lb, uw, ub)


def _maxpool(node, p, f: Affine, sel: rules.Selection) -> Affine:
    B, n = f.Lw.shape[:2]
    C = node.shape[0]
    idx_w = sel.index.unsqueeze(1).expand(B, n, C, -1)

    def pick_w(w):
        return w.reshape(B, n, C, -1).gather(3, idx_w).reshape(B, n, *node.shape)

    def pick_b(b):
        return b.reshape(B, C, -1).gather(2, sel.index).reshape(B, *node.shape)

    exact = sel.exact.reshape(B, *node.shape)
    uw = torch.where(exact.unsqueeze(1), pick_w(f.Uw), torch.zeros_like(pick_w(f.Uw)))
    ub = torch.where(exact, pick_b(f.Ub), sel.umax.reshape(B, *node.shape))
    return Affine(pick_w(f.Lw), pick_b(f.Lb), uw, ub)


def lbp_forward(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, lines: str = "tight"):
    """Linear bounds of the output node and interval bounds of every node."""
    B = lower.shape[0]
    n_in = graph.n_inputs
    dtype, device = lower.dtype, lower.device
    c, r = ((upper + lower) / 2).reshape(B, n_in), ((upper - lower) / 2).reshape(B, n_in)
    forms: dict[str, Affine] = {}
    bounds: Bounds = {}
    consumers = graph.consumers()
    remaining = {k: len(v) for k, v in consumers.items()}
    for n in graph.nodes.values():
        p = graph.params(n, dtype, device)
        if n.op == "input":
            eye = torch.eye(n_in, dtype=dtype, device=device).reshape(1, n_in, *n.shape).expand(B, -1, *n.shape)
            zero = torch.zeros(B, *n.shape, dtype=dtype, device=device)
            f = Affine(eye, zero, eye, zero)
        elif n.op == "const":
            v = p["value"].expand(B, *n.shape)
            w = torch.zeros(B, n_in, *n.shape, dtype=dtype, device=device)
            f = Affine(w, v, w, v)
        elif ops.OPS[n.op].linear:
            f = _linear(ops.OPS[n.op], n, p, [forms[i] for i in n.inputs])
        elif n.op == "maxpool":
            f = _maxpool(n, p, forms[n.inputs[0]], rules.maxpool_select(n, p, *bounds[n.inputs[0]]))
        elif n.op in rules.ELEMENTWISE:
            nl = rules.lines_for(n, p, [bounds[i] for i in n.inputs], lines)
            f = _nonlinear(n, p, [forms[i] for i in n.inputs], nl)
        else:
            raise UnsupportedError(f"LBP has no relaxation for op '{n.op}' ({n.origin or n.name})")
        forms[n.name] = f
        if n.op == "input":
            bounds[n.name] = (lower.reshape(B, *n.shape), upper.reshape(B, *n.shape))
        else:
            lo, hi = _concretize(f.Lw, f.Lb, c, r, False), _concretize(f.Uw, f.Ub, c, r, True)
            if lines == "tight":  # never looser than one IBP step (LBP's theorem covers ReLU nets only)
                l_ibp, u_ibp = ibp_node(graph, n, bounds, B, dtype, device)
                lo, hi = torch.maximum(lo, l_ibp), torch.minimum(hi, u_ibp)
            bounds[n.name] = lo, hi
        for i in n.inputs:  # free forms no later node needs
            remaining[i] -= 1
            if remaining[i] == 0 and i != graph.output_name:
                forms.pop(i, None)
    return forms[graph.output_name], bounds


def lbp_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, lines: str = "tight") -> Bounds:
    """Interval bounds of every node from LBP (e.g. as intermediate bounds for CROWN-LBP)."""
    return lbp_forward(graph, lower, upper, lines)[1]


def lbp(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
        lines: str = "tight") -> rules.Interval:
    """Bounds of ``C · y`` (C of shape (B, S, n_outputs)) from the output's forward linear bounds."""
    f, bounds = lbp_forward(graph, lower, upper, lines)
    B, n_in = lower.shape[0], graph.n_inputs
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    Lw, Uw = f.Lw.reshape(B, n_in, -1), f.Uw.reshape(B, n_in, -1)
    Lb, Ub = f.Lb.reshape(B, -1, 1), f.Ub.reshape(B, -1, 1)
    low_w = Lw @ Cp.transpose(1, 2) + Uw @ Cn.transpose(1, 2)  # (B, n_in, S)
    up_w = Uw @ Cp.transpose(1, 2) + Lw @ Cn.transpose(1, 2)
    low_b = (Cp @ Lb + Cn @ Ub).squeeze(-1)
    up_b = (Cp @ Ub + Cn @ Lb).squeeze(-1)
    c, r = ((upper + lower) / 2).reshape(B, 1, n_in), ((upper - lower) / 2).reshape(B, 1, n_in)
    lo = (c @ low_w - r @ low_w.abs()).squeeze(1) + low_b
    hi = (c @ up_w + r @ up_w.abs()).squeeze(1) + up_b
    if lines == "tight":
        l_ibp, u_ibp = spec_interval(C, bounds[graph.output_name])
        lo, hi = torch.maximum(lo, l_ibp), torch.minimum(hi, u_ibp)
    return lo, hi
