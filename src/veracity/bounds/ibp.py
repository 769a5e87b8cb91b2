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
    mid = rad = None
    for k, (l, u) in enumerate(ins):
        m, r = op.apply(node, p, k, (l + u) / 2), op.abs(node, p, k, (u - l) / 2)
        mid, rad = (m, r) if mid is None else (mid + m, rad + r)
    c = op.const(node, p)
    if c is not None:
        mid = mid + c
    return mid - rad, mid + rad


def ibp(graph: Graph, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Interval bounds of every node for a batch of input boxes (B, *input_shape) or (B, n_inputs)."""
    B = lower.shape[0]
    lower, upper = lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape)
    out: Bounds = {}
    for n in graph.nodes.values():
        if n.op == "input":
            out[n.name] = (lower, upper)
        elif n.op == "const":
            v = graph.params(n, lower.dtype, lower.device)["value"].expand(B, *n.shape)
            out[n.name] = (v, v)
        elif ops.OPS[n.op].linear:
            out[n.name] = linear_interval(graph, n, [out[i] for i in n.inputs], lower.dtype, lower.device)
        else:
            out[n.name] = rules.interval(n, graph.params(n, lower.dtype, lower.device), [out[i] for i in n.inputs])
    return out
