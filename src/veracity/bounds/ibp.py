"""Interval bound propagation: each node's box from its inputs' boxes."""

from __future__ import annotations

import torch

from veracity.bounds import rules
from veracity.graph import ops
from veracity.graph.ir import Graph

Bounds = dict[str, rules.Interval]


def linear_interval(graph: Graph, node, ins: list[rules.Interval], dtype, device) -> rules.Interval:
    """Exact interval image of a linear op, in centre-radius form."""
    op, p = ops.OPS[node.op], graph.params(node, dtype, device)
    if node.op == "linear" and ins[0][0].dim() == 2 and "b" in p:  # the common dense layer, in two fused products
        l, u = ins[0]
        mid = torch.addmm(p["b"], l + u, p["W"].T, alpha=0.5)
        rad = torch.addmm(p["b"], u - l, ops.cached_abs(p, "W").T, beta=0, alpha=0.5)
        return mid - rad, mid + rad
    mid = rad = None
    for k, (l, u) in enumerate(ins):
        m, r = op.apply(node, p, k, (l + u) / 2), op.abs(node, p, k, (u - l) / 2)
        mid, rad = (m, r) if mid is None else (mid + m, rad + r)
    c = op.const(node, p)
    if c is not None:
        mid = mid + c
    return mid - rad, mid + rad


def ibp_node(graph: Graph, n, bounds: Bounds, B: int, dtype, device) -> rules.Interval:
    """One IBP step: the box of node ``n`` from the boxes of its inputs in ``bounds``."""
    if n.op == "const":
        v = graph.params(n, dtype, device)["value"].expand(B, *n.shape)
        return v, v
    ins = [bounds[i] for i in n.inputs]
    if ops.OPS[n.op].linear:
        return linear_interval(graph, n, ins, dtype, device)
    return rules.interval(n, graph.params(n, dtype, device), ins)


def ibp(graph: Graph, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Interval bounds of every node for a batch of input boxes (B, *input_shape) or (B, n_inputs)."""
    B = lower.shape[0]
    out: Bounds = {graph.input_name: (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))}
    for n in graph.nodes.values():
        if n.op != "input":
            out[n.name] = ibp_node(graph, n, out, B, lower.dtype, lower.device)
    return out


def spec_interval(C: torch.Tensor, box: rules.Interval) -> rules.Interval:
    """Interval bounds of ``C · y`` (C of shape (B, S, n)) from a box on y."""
    l, u = box
    B = l.shape[0]
    l, u = l.reshape(B, -1, 1), u.reshape(B, -1, 1)
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    return (Cp @ l + Cn @ u).squeeze(-1), (Cp @ u + Cn @ l).squeeze(-1)
