"""CROWN: backward linear bound propagation.

``backward`` bounds ``A0 · v`` from below for a node v by pushing the coefficients A (shape
(B, S, *node_shape)) from v back to the input through every op: adjoints of linear ops, and for a
nonlinear op the lower line where a coefficient is positive and the upper line where it is negative.
Intermediate bounds (needed for the relaxations) come from the caller: CROWN itself (full CROWN, see
:func:`crown_bounds`), IBP (CROWN-IBP) or LBP (CROWN-LBP).
"""

from __future__ import annotations

import torch

from veracity.bounds import rules
from veracity.bounds.ibp import Bounds, ibp_node, spec_interval
from veracity.graph import ops
from veracity.graph.ir import Graph, UnsupportedError

# Rows of A processed at once are chosen so a coefficient tensor stays below this many elements.
CHUNK_ELEMENTS = 1 << 24


def needs_bounds(graph: Graph) -> list[str]:
    """Nodes whose bounds the relaxations need (inputs of nonlinear ops), in topological order."""
    need = {i for n in graph.nodes.values() if not ops.OPS[n.op].linear and n.inputs for i in n.inputs}
    return [k for k in graph.nodes if k in need]


def _concretize(A: torch.Tensor, box: rules.Interval) -> torch.Tensor:
    """min over the box of A·x, for A (B, S, *input_shape)."""
    l, u = box
    B, S = A.shape[:2]
    A = A.reshape(B, S, -1)
    c, r = ((u + l) / 2).reshape(B, -1, 1), ((u - l) / 2).reshape(B, -1, 1)
    return (A @ c - A.abs() @ r).squeeze(-1)


def _match(t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Line coefficients are (B, *shape) or, when optimised per row, (B, S, *shape)."""
    return t if t.dim() == a.dim() else t.unsqueeze(1)


def _dot(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum over a node's elements of a·t, for a (B, S, *shape) and t (B, *shape) or (B, S, *shape)."""
    B, S = a.shape[:2]
    if t.dim() == a.dim():
        return (a * t).reshape(B, S, -1).sum(-1)
    return torch.bmm(a.reshape(B, S, -1), t.reshape(B, -1, 1)).squeeze(-1)


def backward(graph: Graph, start: str, A0: torch.Tensor, bounds: Bounds, lines: str = "tight",
             alphas: dict | None = None, return_input_coeffs: bool = False, extra: dict | None = None,
             record: dict | None = None, memo: dict | None = None):
    """Lower bounds (B, S) of ``A0 · start`` over the input box ``bounds[graph.input_name]``.

    With ``return_input_coeffs`` also the coefficients (B, S, n_inputs) of the final linear bound in x.
    ``extra`` maps node names to coefficients (B, S, *shape) added to that node's: the bound is then of
    ``A0 · start + sum extra[v] · v`` (β-CROWN adds split constraints this way). ``record``, when given,
    receives the coefficient of every nonlinear element-wise node's output. ``memo``: see
    :func:`veracity.bounds.rules.lines_for` (for repeated passes over the same ``bounds``).
    """
    B, S = A0.shape[:2]
    dtype, device = A0.dtype, A0.device
    names = list(graph.nodes)
    A: dict[str, torch.Tensor] = {start: A0}
    bias = torch.zeros(B, S, dtype=dtype, device=device)
    lower = None
    coeffs = torch.zeros(B, S, graph.n_inputs, dtype=dtype, device=device)

    def push(name, a):
        A[name] = a if name not in A else A[name] + a

    for name in reversed(names[: names.index(start) + 1]):
        a = A.pop(name, None)
        if extra is not None and name in extra:
            a = extra[name] if a is None else a + extra[name]
        if a is None:
            continue
        n = graph.nodes[name]
        p = graph.params(n, dtype, device)
        flat = (B * S, *n.shape)
        if n.op == "input":
            lower = _concretize(a, bounds[name])
            coeffs = a.reshape(B, S, -1)
        elif n.op == "const":
            bias = bias + (a * p["value"]).reshape(B, S, -1).sum(-1)
        elif ops.OPS[n.op].linear:
            op = ops.OPS[n.op]
            for k, i in enumerate(n.inputs):
                push(i, op.adjoint(n, p, k, a.reshape(flat)).reshape(B, S, *n.in_shapes[k]))
            c = op.const(n, p)
            if c is not None:
                bias = bias + (a * c).reshape(B, S, -1).sum(-1)
        elif n.op == "maxpool":
            bias = bias + _maxpool_back(n, p, a, bounds[n.inputs[0]], push)
        elif n.op in rules.ELEMENTWISE:
            ins = [bounds[i] for i in n.inputs]
            alpha = (alphas or {}).get(name)
            if alpha is not None:
                ins = [(l.unsqueeze(1), u.unsqueeze(1)) for l, u in ins]
            nl = rules.lines_for(n, p, ins, lines, alpha, memo)
            if record is not None:
                record[name] = a
            # lower line where the coefficient is positive, upper line where negative: a·l + min(a, 0)·(u − l)
            an = a.clamp(max=0)
            for k, i in enumerate(n.inputs):
                push(i, a * _match(nl.lw[k], a) + an * _match(nl.uw[k] - nl.lw[k], a))
            bias = bias + _dot(a, nl.lb) + _dot(an, nl.ub - nl.lb)
        else:
            raise UnsupportedError(f"CROWN has no relaxation for op '{n.op}' ({n.origin or n.name})")
    if lower is None:  # the node does not depend on the input
        lower = torch.zeros_like(bias)
    return (lower + bias, coeffs) if return_input_coeffs else lower + bias


def _maxpool_back(n, p, a, box, push) -> torch.Tensor:
    sel = rules.maxpool_select(n, p, *box)
    B, S, C = a.shape[:3]
    a = a.reshape(B, S, C, -1)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    exact = sel.exact.unsqueeze(1)
    coef = ap + torch.where(exact, an, torch.zeros_like(an))
    H, W = n.in_shapes[0][1:]
    out = a.new_zeros(B, S, C, H * W)
    out.scatter_add_(3, sel.index.unsqueeze(1).expand(B, S, C, -1), coef)
    push(n.inputs[0], out.reshape(B, S, C, H, W))
    return torch.where(exact, torch.zeros_like(an), an * sel.umax.unsqueeze(1)).reshape(B, S, -1).sum(-1)


def spec_bounds(graph: Graph, start: str, C: torch.Tensor, bounds: Bounds, lines: str = "tight",
                alphas: dict | None = None) -> rules.Interval:
    """Lower and upper bounds of ``C · start`` for C (B, S, *node_shape), in chunks of rows."""
    B, S = C.shape[:2]
    size = max(graph.nodes[k].size for k in graph.nodes)
    step = max(1, CHUNK_ELEMENTS // max(1, 2 * B * size))
    lo, hi = [], []
    for s in range(0, S, step):
        c = C[:, s : s + step]
        r = backward(graph, start, torch.cat([c, -c], 1), bounds, lines, alphas)
        k = c.shape[1]
        lo.append(r[:, :k])
        hi.append(-r[:, k:])
    return torch.cat(lo, 1), torch.cat(hi, 1)


MONOTONE = ("relu", "leaky_relu", "sigmoid", "tanh")
DENSE_SHARE = 0.9
SPARSE_SHARE = 0.5  # pairs of their own when fewer than this share of (box, neuron) entries need a pass
_REINDEX = ("scale_shift", "reshape", "transpose", "pad", "gather")  # keep IBP exact (diagonal maps)


def ibp_exact(graph: Graph) -> set[str]:
    """Nodes that are an affine map of the input with at most one mixing op: there IBP equals CROWN."""
    diag, exact = {graph.input_name}, {graph.input_name}
    for n in graph.nodes.values():
        if len(n.inputs) != 1 or not ops.OPS[n.op].linear:
            continue
        i = n.inputs[0]
        if n.op in _REINDEX and i in diag:
            diag.add(n.name)
        if i in diag or (n.op in _REINDEX and i in exact):
            exact.add(n.name)
    return exact


def node_bounds(graph: Graph, name: str, bounds: Bounds, lines: str = "tight", rows: torch.Tensor | None = None,
                pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> rules.Interval:
    """Bounds of node ``name`` by backward passes from it: of the flat elements ``rows`` (default all) in
    every box, (B, rows), or of the (box, element) ``pairs`` only, (P,), each pair a row of its own."""
    n = graph.nodes[name]
    l0 = bounds[graph.input_name][0]
    size = max(graph.nodes[k].size for k in graph.nodes)
    if pairs is None:
        B = l0.shape[0]
        rows = torch.arange(n.size, device=l0.device) if rows is None else rows
        step = max(1, CHUNK_ELEMENTS // max(1, 2 * B * size))
        lo, hi = [], []
        for s in range(0, rows.numel(), step):
            idx = rows[s : s + step]
            k = idx.numel()
            C = torch.zeros(B, k, n.size, dtype=l0.dtype, device=l0.device)
            C[:, torch.arange(k), idx] = 1.0
            r = backward(graph, name, torch.cat([C, -C], 1).reshape(B, 2 * k, *n.shape), bounds, lines)
            lo.append(r[:, :k])
            hi.append(-r[:, k:])
        return torch.cat(lo, 1), torch.cat(hi, 1)
    box, elem = pairs
    held = sum(v[0][0].numel() for v in bounds.values())  # each pair carries its box's bounds
    step = max(1, CHUNK_ELEMENTS // (2 * max(size, held)))
    lo, hi = [], []
    for s in range(0, box.numel(), step):
        b, e = box[s : s + step], elem[s : s + step]
        P = b.numel()
        C = torch.zeros(P, 2, n.size, dtype=l0.dtype, device=l0.device)
        C[torch.arange(P), 0, e] = 1.0
        C[torch.arange(P), 1, e] = -1.0
        sub = {k: (v[0][b], v[1][b]) for k, v in bounds.items()}
        r = backward(graph, name, C.reshape(P, 2, *n.shape), sub, lines)
        lo.append(r[:, 0])
        hi.append(-r[:, 1])
    return torch.cat(lo), torch.cat(hi)


def crown_bounds(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, lines: str = "tight",
                 outer: Bounds | None = None) -> Bounds:
    """Full CROWN: bounds of every node a relaxation needs, each by its own backward pass.

    Nodes are visited in order; each first gets one IBP step from the (already refined) bounds of its
    inputs, its reference. Three shortcuts then give the same relaxations at a fraction of the cost:
    nodes where IBP is exact keep the reference; a monotone activation's bounds are the activation of
    its input's bounds (that is its IBP step); and when every consumer is a ReLU, only the neurons
    the reference leaves unstable in a box get a backward pass there, and the others keep the reference
    (with adaptive lines, unless more than ``DENSE_SHARE`` of the node is unstable in the box: then every
    neuron of that box gets CROWN's bounds, the choice of the reference CROWN implementation, auto_LiRPA).
    Where few boxes need a neuron, each (box, neuron) pair is a row of its own; otherwise every box
    computes every neuron some box needs. With tight lines CROWN's bounds are also intersected with the
    reference. ``lines="both"`` intersects, node by node, the bounds of a tight and an adaptive pass (twice the cost;
    much tighter intermediate bounds on ACAS Xu sub-boxes). ``outer``: bounds known to hold on these boxes
    (a parent box's, in branch and bound) that every node's bounds are intersected with as they are made.
    """
    B, dtype, device = lower.shape[0], lower.dtype, lower.device
    bounds: Bounds = {graph.input_name: (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))}
    exact = ibp_exact(graph)
    need = set(needs_bounds(graph))
    consumers = graph.consumers()
    for name, n in graph.nodes.items():
        if n.op == "input":
            continue
        bounds[name] = l, u = _within(ibp_node(graph, n, bounds, B, dtype, device), outer, name)
        if name not in need or name in exact or n.op in MONOTONE:
            continue
        l, u = l.reshape(B, -1), u.reshape(B, -1)
        rows = pairs = sel = None
        if all(graph.nodes[c].op in ("relu", "leaky_relu") for c in consumers[name]):
            sel = (l < 0) & (u > 0)
            if lines == "adaptive":
                sel = sel | (sel.sum(1, keepdim=True) > DENSE_SHARE * l.shape[1])
            rows = sel.any(0).nonzero().flatten()
            if rows.numel() == 0:
                continue
            if int(sel.sum()) < SPARSE_SHARE * B * rows.numel():  # each selected (box, neuron) pair on its own
                pairs, rows = sel.nonzero(as_tuple=True), None
            else:
                sel = sel[:, rows]
        if lines == "both":
            lo, hi = node_bounds(graph, name, bounds, "tight", rows, pairs)
            lo2, hi2 = node_bounds(graph, name, bounds, "adaptive", rows, pairs)
            lo, hi = torch.maximum(lo, lo2), torch.minimum(hi, hi2)
        else:
            lo, hi = node_bounds(graph, name, bounds, lines, rows, pairs)
        if pairs is not None:
            l_ref, u_ref = l[pairs], u[pairs]
        else:
            l_ref, u_ref = (l, u) if rows is None else (l[:, rows], u[:, rows])
        if lines in ("tight", "both"):
            lo, hi = torch.maximum(lo, l_ref), torch.minimum(hi, u_ref)
        elif rows is not None:  # adaptive: a neuron not selected in its box keeps the reference there
            lo, hi = torch.where(sel, lo, l_ref), torch.where(sel, hi, u_ref)
        if pairs is not None:
            l, u = l.index_put(pairs, lo), u.index_put(pairs, hi)
        elif rows is None:
            l, u = lo, hi
        else:
            l, u = l.clone(), u.clone()
            l[:, rows], u[:, rows] = lo, hi
        bounds[name] = _within((l.reshape(B, *n.shape), u.reshape(B, *n.shape)), outer, name)
    return bounds


def _within(box: rules.Interval, outer: Bounds | None, name: str) -> rules.Interval:
    if outer is None or name not in outer:
        return box
    return torch.maximum(box[0], outer[name][0]), torch.minimum(box[1], outer[name][1])


def crown(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, pre: Bounds | None = None,
          lines: str = "tight") -> rules.Interval:
    """Bounds of ``C · y`` (C of shape (B, S, n_outputs)); intermediate bounds from ``pre`` or full CROWN."""
    bounds = dict(pre) if pre is not None else crown_bounds(graph, lower, upper, lines)
    B = lower.shape[0]
    bounds[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
    out = graph.output
    lo, hi = spec_bounds(graph, out.name, C.reshape(B, C.shape[1], *out.shape), bounds, lines)
    if lines == "tight" and out.name in bounds:  # never looser than these bounds, also off the theorem
        l_ibp, u_ibp = spec_interval(C, bounds[out.name])
        lo, hi = torch.maximum(lo, l_ibp), torch.minimum(hi, u_ibp)
    return lo, hi
