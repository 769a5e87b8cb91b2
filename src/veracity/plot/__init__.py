"""Pictures of relaxations (matplotlib, headless ``Agg``): the lines of one neuron, and 2-D reachable sets.

:func:`lines_figure` draws an activation on [l, u] with its IBP box, the adaptive and tight CROWN lines
and the LP's region (the triangle for ReLU, the convex hull for ParamRamp, the tangent/chord polygon the LP
uses for sigmoid/tanh). :func:`reach_figure` draws, for two post-activation neurons of a network over an
input box, dense samples of their true values with the IBP box, the CROWN and triangle-LP regions and the
kPoly region (each the intersection of sound half-planes, one per direction, projected to the two neurons).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

ACTS = ("relu", "sigmoid", "tanh", "paramramp")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def activation_lines(act: str, l: float, u: float, r: float = 1.0, eta: float = 0.0):
    """(f, {name: LinearBounds}, lp_lines) for one neuron on [l, u]; lp_lines: the LP's (lower, upper) lines."""
    from veracity import relax
    from veracity.solvers.lp import S_SHAPED_ALPHAS

    L, U = torch.tensor([float(l)], dtype=torch.float64), torch.tensor([float(u)], dtype=torch.float64)
    if act == "relu":
        f = torch.relu
        named = {k: relax.relu(L, U, lines=k) for k in ("adaptive", "tight")}
    elif act == "paramramp":
        from veracity.relax.paramramp import ramp

        def f(z):
            return ramp(z, r, eta)

        named = {k: relax.paramramp(L, U, torch.tensor([float(r)], dtype=torch.float64), eta, lines=k)
                 for k in ("adaptive", "tight")}
    elif act in ("sigmoid", "tanh"):
        fn = relax.sigmoid if act == "sigmoid" else relax.tanh
        f = torch.sigmoid if act == "sigmoid" else torch.tanh
        named = {"crown": fn(L, U)}
        lp = [fn(L, U, torch.full_like(L, a), torch.full_like(L, a)) for a in S_SHAPED_ALPHAS]
        return f, named, lp
    else:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTS)}")
    return f, named, None


def _hull_polygon(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Convex hull (closed polygon) of 2-D points."""
    from veracity.solvers.hull import facets, vertices

    G, g = facets(np.stack([xs, ys], 1))
    V = vertices(G, g)
    c = V.mean(0)
    V = V[np.argsort(np.arctan2(V[:, 1] - c[1], V[:, 0] - c[0]))]
    return np.vstack([V, V[:1]])


def lines_figure(act: str, l: float, u: float, out: Path, r: float = 1.0, eta: float = 0.0) -> Path:
    """Draw the relaxations of one neuron with pre-activation bounds [l, u] to ``out`` (PNG)."""
    if not l < u:
        raise ValueError(f"need lower < upper, got {l} and {u}")
    if act == "paramramp" and r < 0:
        raise ValueError("paramramp needs r >= 0")
    plt = _pyplot()
    f, named, lp = activation_lines(act, l, u, r, eta)
    pad = 0.15 * (u - l)
    z = torch.linspace(l - pad, u + pad, 801, dtype=torch.float64)
    zi = torch.linspace(l, u, 801, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(z, f(z), color="black", lw=2.2, label=act, zorder=5)
    fl, fu = float(f(torch.tensor(l, dtype=torch.float64))), float(f(torch.tensor(u, dtype=torch.float64)))
    lo_ibp, hi_ibp = min(fl, fu, float(f(zi).min())), max(fl, fu, float(f(zi).max()))
    ax.add_patch(plt.Rectangle((l, lo_ibp), u - l, hi_ibp - lo_ibp, fill=False, ls=":", lw=1.5, color="tab:gray",
                               label="IBP box"))
    colours = {"adaptive": "tab:orange", "tight": "tab:blue", "crown": "tab:blue"}
    for name, lb in named.items():
        label = {"adaptive": "adaptive CROWN", "tight": "tight CROWN", "crown": "CROWN"}[name]
        ax.plot(zi, lb.lw * zi + lb.lb, color=colours[name], lw=1.4, ls="--", label=f"{label} lower")
        ax.plot(zi, lb.uw * zi + lb.ub, color=colours[name], lw=1.4, ls="-.", label=f"{label} upper")
    if lp is None:  # piecewise linear: the exact hull of the graph (the triangle for ReLU)
        kinks = [0.0] + ([float(r)] if act == "paramramp" else [])
        xs = np.array([l, u] + [k for k in kinks if l < k < u])
        poly = _hull_polygon(xs, f(torch.from_numpy(xs)).numpy())
        label = "triangle (LP)" if act == "relu" else "convex hull (LP)"
    else:  # the LP's lines for sigmoid/tanh: the region between the highest lower and lowest upper line
        low = torch.stack([b.lw * zi + b.lb for b in lp]).max(0).values
        up = torch.stack([b.uw * zi + b.ub for b in lp]).min(0).values
        poly = np.vstack([np.stack([zi, low], 1), np.stack([zi.flip(0), up.flip(0)], 1)])
        label = f"LP region ({len(lp)} tangent points)"
    ax.fill(poly[:, 0], poly[:, 1], color="tab:green", alpha=0.25, label=label, zorder=1)
    ax.axvline(l, color="tab:gray", lw=0.6)
    ax.axvline(u, color="tab:gray", lw=0.6)
    ax.set_xlabel("pre-activation z")
    ax.set_ylabel("f(z)")
    extra = f", r = {r:g}, eta = {eta:g}" if act == "paramramp" else ""
    ax.set_title(f"{act} on [{l:g}, {u:g}]{extra}")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out)


def _save(fig, out) -> Path:
    """Write ``fig`` to ``out`` (parents created) as a PNG and close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


# -- reachable sets ---------------------------------------------------------------------------------------


def activation_nodes(graph) -> list[str]:
    """Names of the graph's activation nodes in order (the layers ``L`` of ``L:i``)."""
    return [n.name for n in graph.nodes.values() if n.op in ("relu", "leaky_relu", "sigmoid", "tanh", "paramramp")]


def _directions(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _polygon(D: np.ndarray, h: np.ndarray) -> np.ndarray:
    from veracity.solvers.hull import vertices

    V = vertices(D, h)
    c = V.mean(0)
    V = V[np.argsort(np.arctan2(V[:, 1] - c[1], V[:, 0] - c[0]))]
    return np.vstack([V, V[:1]])


def reach_regions(graph, lower: np.ndarray, upper: np.ndarray, layer: int, i: int, j: int,
                  n_dirs: int = 48, samples: int = 20000, seed: int = 0) -> dict:
    """Samples and sound regions of (y_i, y_j) at activation layer ``layer`` over the box [lower, upper].

    Returns {"samples": (n, 2), "ibp": (lo, hi), "crown" / "lp" / "kpoly": closed polygons (m, 2)}; each
    polygon is {p : d . p <= h_d} for ``n_dirs`` directions d, h_d a sound upper bound by that method.
    """
    from veracity.bounds import ibp
    from veracity.bounds.crown import crown_bounds, spec_bounds
    from veracity.solvers.kpoly import CutModel, KPolyOptions, add_group_constraints, add_groups
    from veracity.solvers.lp import Model

    names = activation_nodes(graph)
    if not 0 <= layer < len(names):
        raise ValueError(f"layer {layer} out of range: the network has {len(names)} activation layers (0..)")
    name = names[layer]
    node = graph.nodes[name]
    for k in (i, j):
        if not 0 <= k < node.size:
            raise ValueError(f"neuron {k} out of range: activation layer {layer} has {node.size} neurons")
    if i == j:
        raise ValueError("choose two different neurons")
    L = torch.tensor(np.asarray(lower, np.float64)).reshape(1, -1)
    U = torch.tensor(np.asarray(upper, np.float64)).reshape(1, -1)
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(samples, L.shape[1], generator=gen, dtype=torch.float64)
    t[: samples // 2] = (t[: samples // 2] > 0.5).double()  # half the samples on vertices of the box
    x = L + t * (U - L)
    with torch.no_grad():
        v = graph.forward_all(x)[name].reshape(samples, -1)[:, [i, j]].numpy()
    D = _directions(n_dirs)
    out: dict = {"samples": v, "name": name}
    b_ibp = ibp(graph, L, U)[name]
    out["ibp"] = (b_ibp[0].reshape(-1)[[i, j]].numpy(), b_ibp[1].reshape(-1)[[i, j]].numpy())
    pre = crown_bounds(graph, L, U)
    C = torch.zeros(1, n_dirs, node.size, dtype=torch.float64)
    C[0, :, i], C[0, :, j] = torch.from_numpy(D[:, 0]), torch.from_numpy(D[:, 1])
    with torch.no_grad():
        _, hi = spec_bounds(graph, name, C.reshape(1, n_dirs, *node.shape), pre)
    out["crown"] = _polygon(D, hi[0].numpy() + 1e-9 * (1 + hi[0].abs().numpy()))
    coeffs = C[0].numpy()
    lp = Model(graph, pre).build()
    out["lp"] = _polygon(D, np.array([-lp.minimize(*_neg(lp.objective(name, c))).bound for c in coeffs]))
    opts = KPolyOptions()
    km = CutModel(graph, pre)
    for n in graph.nodes:
        km.add_node(n)
        add_group_constraints(km, n, opts)
        if n == name and node.op in ("relu", "leaky_relu"):  # the pair itself as a group, so its hull shows
            add_groups(km, n, [np.array([i, j])], opts)
    out["kpoly"] = _polygon(D, np.array([-km.minimize(*_neg(km.objective(name, c))).bound for c in coeffs]))
    return out


def _neg(obj):
    cost, off = obj
    return -cost, -off


def reach_figure(graph, lower, upper, layer: int, i: int, j: int, out: Path, title: str = "",
                 n_dirs: int = 48, samples: int = 20000) -> Path:
    """Draw :func:`reach_regions` to ``out`` (PNG)."""
    plt = _pyplot()
    reg = reach_regions(graph, lower, upper, layer, i, j, n_dirs, samples)
    fig, ax = plt.subplots(figsize=(6.0, 5.4))
    s = reg["samples"]
    ax.scatter(s[:, 0], s[:, 1], s=1.5, color="black", alpha=0.35, label="sampled (true reachable set)", zorder=5)
    lo, hi = reg["ibp"]
    ax.add_patch(plt.Rectangle(lo, *(hi - lo), fill=False, ls=":", lw=1.5, color="tab:gray", label="IBP box"))
    for key, colour, label in (("crown", "tab:orange", "CROWN"), ("lp", "tab:blue", "triangle LP"),
                               ("kpoly", "tab:green", "kPoly (k-ReLU groups)")):
        p = reg[key]
        ax.plot(p[:, 0], p[:, 1], color=colour, lw=1.6, label=label)
    ax.set_xlabel(f"y_{i} (activation layer {layer})")
    ax.set_ylabel(f"y_{j}")
    ax.set_title(title or f"neurons {layer}:{i} and {layer}:{j}")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


__all__ = ["ACTS", "activation_lines", "activation_nodes", "lines_figure", "reach_figure", "reach_regions"]
