"""Reachable sets of a neural dynamical system x_{t+1} = f(x_t) over T steps, f a ReLU network.

:func:`unroll` composes the step graph T times into one graph (node copies, step t's output feeding step
t+1). :func:`reach_sets` bounds every step's state over the initial box on that one graph: intermediate
bounds by full CROWN, optionally tightened layer by layer by ADMM, then each step's state by ADMM (both
directions of every coordinate). :func:`stepwise_boxes` is the baseline that bounds one step at a time
from the previous step's box (it suffers from the wrapping effect). Every box is a sound over-approximation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from veracity.bounds.crown import crown_bounds
from veracity.graph import Graph, Node
from veracity.solvers.admm import admm_intermediate, admm_minimize


def unroll(step: Graph, T: int) -> Graph:
    """The T-fold composition of ``step`` (input and output of the same shape) as one graph.

    Step t's nodes are named ``s{t}/<name>``; ``output_names(step, T)`` lists each step's output node.
    """
    if step.input_shape != step.output_shape:
        raise ValueError(f"a step maps {step.input_shape} to {step.output_shape}; they must agree")
    if T < 1:
        raise ValueError("T must be at least 1")
    nodes = [Node("x0", "input", (), step.input_shape, origin="initial state")]
    prev = "x0"
    for t in range(T):
        rename = {step.input_name: prev}
        for n in step.nodes.values():
            if n.op == "input":
                continue
            name = f"s{t + 1}/{n.name}"
            rename[n.name] = name
            nodes.append(Node(name, n.op, tuple(rename[i] for i in n.inputs), n.shape, dict(n.params),
                              origin=f"step {t + 1}: {n.origin or n.name}"))
        prev = rename[step.output_name]
    return Graph(nodes, "x0", prev)


def output_names(step: Graph, T: int) -> list[str]:
    """Names of the state nodes x_0..x_T in :func:`unroll` (step, T)."""
    return ["x0"] + [f"s{t}/{step.output_name}" for t in range(1, T + 1)]


def _box_bounds(graph: Graph, lower, upper, pre, name: str, method: str, options: dict):
    """Bounds of node ``name`` (flat, (n,) each): ``pre``'s, intersected with ADMM's when asked."""
    l, u = pre[name][0].reshape(-1).clone(), pre[name][1].reshape(-1).clone()
    if method == "admm":
        n = l.numel()
        eye = torch.eye(n, dtype=torch.float64)
        res = admm_minimize(graph, lower, upper, torch.cat([eye, -eye])[None], pre, upto=name, **options)
        l, u = torch.maximum(l, res.lower[0, :n]), torch.minimum(u, -res.lower[0, n:])
    return l, u


@dataclass
class Reach:
    """Boxes (T+1, n) of the states x_0..x_T; ``seconds`` spent."""

    lower: torch.Tensor
    upper: torch.Tensor
    seconds: float


def reach_sets(step: Graph, lower, upper, T: int, method: str = "admm", tighten: bool = True,
               progress=None, **options) -> Reach:
    """Boxes of x_1..x_T from the initial box [lower, upper] on the unrolled graph (one bound problem).

    ``method``: "admm" (LP relaxation by ADMM) or "crown"; ``tighten``: ADMM intermediate bounds layer by layer
    (with method "admm"). ``progress(t)``, when given, is called after each step's box. ``options`` go to
    :func:`veracity.solvers.admm.admm_minimize`.
    """
    t0 = time.perf_counter()
    lower = torch.as_tensor(lower, dtype=torch.float64).reshape(1, -1)
    upper = torch.as_tensor(upper, dtype=torch.float64).reshape(1, -1)
    g = unroll(step, T)
    pre = crown_bounds(g, lower, upper)
    if method == "admm" and tighten:
        pre = admm_intermediate(g, lower, upper, pre, **options)
    pre = _complete(g, pre, lower, upper)
    lo, hi = [lower[0]], [upper[0]]
    for t, name in enumerate(output_names(step, T)[1:]):
        l, u = _box_bounds(g, lower, upper, pre, name, method, options)
        lo.append(l)
        hi.append(u)
        if progress is not None:
            progress(t + 1)
    return Reach(torch.stack(lo), torch.stack(hi), time.perf_counter() - t0)


def _complete(g: Graph, pre, lower, upper):
    """``pre`` with every node's bounds (IBP steps from the given bounds where refinements changed them)."""
    from veracity.bounds.ibp import ibp_node

    out = {g.input_name: (lower.reshape(1, *g.input_shape), upper.reshape(1, *g.input_shape))}
    for n in g.nodes.values():
        if n.op == "input":
            continue
        l, u = ibp_node(g, n, out, 1, torch.float64, "cpu")
        if n.name in pre:
            l, u = torch.maximum(l, pre[n.name][0].to(l)), torch.minimum(u, pre[n.name][1].to(u))
        out[n.name] = (l, torch.maximum(l, u))
    return out


def stepwise_boxes(step: Graph, lower, upper, T: int, method: str = "admm", progress=None, **options) -> Reach:
    """Boxes of x_1..x_T, each bounded over the previous step's box only (the baseline)."""
    t0 = time.perf_counter()
    l = torch.as_tensor(lower, dtype=torch.float64).reshape(1, -1)
    u = torch.as_tensor(upper, dtype=torch.float64).reshape(1, -1)
    lo, hi = [l[0]], [u[0]]
    for t in range(T):
        pre = _complete(step, crown_bounds(step, l, u), l, u)
        nl, nu = _box_bounds(step, l, u, pre, step.output_name, method, options)
        lo.append(nl)
        hi.append(nu)
        l, u = nl[None], nu[None]
        if progress is not None:
            progress(t + 1)
    return Reach(torch.stack(lo), torch.stack(hi), time.perf_counter() - t0)


def trajectories(step: Graph, lower, upper, T: int, n: int = 200, seed: int = 0) -> torch.Tensor:
    """States (n, T+1, d) of sampled runs of the network from the initial box: its corners, then uniform."""
    lower = torch.as_tensor(lower, dtype=torch.float64).reshape(-1)
    upper = torch.as_tensor(upper, dtype=torch.float64).reshape(-1)
    d = lower.numel()
    gen = torch.Generator().manual_seed(seed)
    bits = torch.tensor([[(i >> k) & 1 for k in range(d)] for i in range(min(2**d, n))], dtype=torch.float64)
    x = torch.cat([lower + bits * (upper - lower),
                   lower + torch.rand(max(0, n - bits.shape[0]), d, generator=gen, dtype=torch.float64)
                   * (upper - lower)])
    states = [x]
    with torch.no_grad():
        for _ in range(T):
            x = step(x.reshape(x.shape[0], *step.input_shape)).reshape(x.shape[0], -1)
            states.append(x)
    return torch.stack(states, 1)


def inside(runs: torch.Tensor, sets: Reach, tol: float = 1e-9) -> torch.Tensor:
    """Per run, whether every state x_t lies in box t."""
    lo, hi = sets.lower[None], sets.upper[None]
    return ((runs >= lo - tol) & (runs <= hi + tol)).all(-1).all(-1)


def plot(path, runs: torch.Tensor, sets: Reach, baseline: Reach | None = None, labels=("x_0", "x_1"),
         title: str = "") -> None:
    """Sampled runs (lines) inside the reachable boxes (unrolled in blue; step-by-step baseline in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(7, 5.5))
    boxes = [(baseline, "0.55", "step-by-step boxes", 0.8)] if baseline is not None else []
    boxes.append((sets, "tab:blue", "unrolled (one graph)", 1.2))
    for r, colour, label, lw in boxes:
        for t in range(r.lower.shape[0]):
            l, u = r.lower[t].numpy(), r.upper[t].numpy()
            ax.add_patch(Rectangle((l[0], l[1]), u[0] - l[0], u[1] - l[1], fill=False, ec=colour, lw=lw,
                                   label=label if t == 0 else None))
    for run in runs.numpy():
        ax.plot(run[:, 0], run[:, 1], color="tab:orange", lw=0.4, alpha=0.5)
    ax.plot([], [], color="tab:orange", lw=1, label=f"{runs.shape[0]} sampled runs")
    allb = [sets] + ([baseline] if baseline is not None else [])
    lo = torch.stack([r.lower for r in allb]).amin((0, 1)).numpy()
    hi = torch.stack([r.upper for r in allb]).amax((0, 1)).numpy()
    pad = 0.05 * (hi - lo)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
