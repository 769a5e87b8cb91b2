"""kPoly: multi-neuron (k-ReLU) constraints added to the LP relaxation (Singh et al. 2019; PRIMA's grouping).

For every ReLU/LeakyReLU node, once the model holds its pre-activation ``z`` (with bounds refined by LPs):

1. pick the unstable neurons with the largest ``-l*u`` (at most ``max_neurons``);
2. cut the sorted list into blocks of ``block`` neurons and, inside each block, choose k-subsets of which
   any two share at most one neuron (:func:`make_groups`);
3. bound ``a . z_group`` for every ``a in {-1, 0, 1}^k \\ {0}`` by one batched CROWN backward pass over the
   model's current bounds, intersected with the interval bound: the octahedron P of the group;
4. compute the exact hull of ``{(x, relu(x)) : x in P}`` (:func:`veracity.solvers.hull.relu_hull`, cached
   by the octahedron's offsets rounded up to a grid, which only enlarges P);
5. add its facets that involve the outputs as rows of the LP (by default as cutting planes: a pool whose
   rows enter the LP when a solution violates them, :class:`CutModel`; a full set is hundreds of rows per
   group and slows HiGHS down far more than it helps).

Later layers are then refined by LPs that see these rows, and the spec is bounded from the duals of the
final model (:meth:`veracity.solvers.lp.Model.minimize`), so every reported bound is certificate-backed.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from veracity.bounds.crown import backward
from veracity.bounds.ibp import Bounds
from veracity.graph.ir import Graph
from veracity.solvers import hull
from veracity.solvers.lp import INF, Model, Solution, lp_bounds

ROUNDING = 1e-9  # relative widening of the CROWN octahedron bounds (float64 rounding)
CACHE_GRID = 1e-7  # offsets are rounded up to multiples of this (relative to the group's scale) for the cache
CACHE_SIZE = 20_000
CUT_TOL = 1e-7  # a pool row enters the LP when the solution violates it by more than this (relative)


@dataclass(frozen=True)
class KPolyOptions:
    """k: neurons per group; block: PRIMA's n_s; max_neurons / max_groups: per layer; refine: LP refinement of
    intermediate bounds (two LPs per unstable neuron: minutes per MNIST 6x100 image with HiGHS, so off by
    default); cuts: group facets enter the LP only when violated."""

    k: int = 3
    block: int = 6
    max_neurons: int = 60
    max_groups: int | None = None
    refine: bool = False
    cuts: bool = True
    lines: str = "tight"


@dataclass
class KPolyStats:
    groups: int = 0
    rows: int = 0
    cache_hits: int = 0


def make_groups(n: int, k: int = 3, block: int = 6) -> list[tuple[int, ...]]:
    """k-subsets of positions 0..n-1, inside consecutive blocks of ``block``, any two sharing at most one position.

    Greedy over the subsets of each block in lexicographic order: a subset is kept when none of its pairs
    is in a kept subset. A block smaller than k is merged into the previous one; n < k gives one group of n.
    """
    if n == 0:
        return []
    if n <= k:
        return [tuple(range(n))]
    starts = list(range(0, n, block))
    if n - starts[-1] < k and len(starts) > 1:
        starts.pop()
    out: list[tuple[int, ...]] = []
    for bi, s in enumerate(starts):
        e = starts[bi + 1] if bi + 1 < len(starts) else n
        used: set[tuple[int, int]] = set()
        for c in itertools.combinations(range(s, e), k):
            pairs = list(itertools.combinations(c, 2))
            if not any(p in used for p in pairs):
                used.update(pairs)
                out.append(c)
    return out


_CACHE: OrderedDict = OrderedDict()


def _cached_hull(h: np.ndarray, k: int, slope: float, stats: KPolyStats) -> tuple[np.ndarray, np.ndarray]:
    H = hull.octahedron_directions(k)
    q = CACHE_GRID * (1.0 + np.abs(h).max())
    steps = np.ceil(h / q)
    key = (k, slope, float(q), steps.astype(np.int64).tobytes())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        stats.cache_hits += 1
        return _CACHE[key]
    hr = steps * q
    hr = np.where(hr < h, np.nextafter(hr, INF), hr)
    if slope == 0.0:
        res = hull.relu_hull(H, hr)
    else:
        res = hull.lifted_hull(H, hr, lambda x: np.where(x >= 0, x, slope * x), hull.orthants(k))
    _CACHE[key] = res
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return res


def _model_bounds(model: Model) -> Bounds:
    return {k: (torch.from_numpy(model.lower[k]).reshape(1, *n.shape),
                torch.from_numpy(model.upper[k]).reshape(1, *n.shape)) for k, n in model.graph.nodes.items()}


def octahedra(model: Model, zname: str, groups: list[np.ndarray], k: int, lines: str = "tight") -> np.ndarray:
    """Upper bounds (G, 3^k - 1) of ``a . z[group]`` for every direction a, by CROWN and the interval bounds."""
    graph = model.graph
    n = graph.nodes[zname]
    D = hull.octahedron_directions(k)
    idx = np.stack(groups)  # (G, k)
    G = idx.shape[0]
    A = torch.zeros(G, D.shape[0], n.size, dtype=torch.float64)
    rows = torch.arange(G)[:, None, None].expand(G, D.shape[0], k)
    dirs = torch.arange(D.shape[0])[None, :, None].expand(G, D.shape[0], k)
    cols = torch.from_numpy(idx)[:, None, :].expand(G, D.shape[0], k)
    A[rows, dirs, cols] = torch.from_numpy(D)[None].expand(G, -1, -1)
    A = A.reshape(1, G * D.shape[0], *n.shape)
    with torch.no_grad():
        up = -backward(graph, zname, -A, _model_bounds(model), lines)[0].reshape(G, D.shape[0]).numpy()
    up = up + ROUNDING * (1.0 + np.abs(up))
    lo, hi = model.lower[zname][idx], model.upper[zname][idx]  # (G, k)
    box = (np.maximum(D[None] * lo[:, None], D[None] * hi[:, None])).sum(-1)  # (G, D)
    return np.minimum(up, box)


class CutModel(Model):
    """A :class:`Model` whose group facets wait in a pool and enter the LP as cutting planes.

    :meth:`minimize` solves, adds the pool rows the solution violates most (``per_round`` at a time) and
    solves again, for at most ``rounds`` rounds; added rows stay for later solves. Every round's dual bound
    is valid for the final model (rows are only added), so the best of them is returned.
    """

    rounds = 30
    per_round = 200

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pool: list[sp.csr_matrix] = []
        self._pool_rhs: list[np.ndarray] = []
        self._P: tuple[sp.csr_matrix, np.ndarray] | None = None

    def add_cuts(self, A, rhs) -> None:
        """Rows ``A v <= rhs`` that are valid for the model but enter it only once a solution violates them."""
        A = sp.csr_matrix(A, dtype=np.float64)
        if A.shape[0]:
            self._pool.append(A)
            self._pool_rhs.append(np.asarray(rhs, np.float64))
            self._P = None

    @property
    def pool_size(self) -> int:
        return sum(a.shape[0] for a in self._pool) if self._P is None else self._P[0].shape[0]

    def _pool_matrix(self) -> tuple[sp.csr_matrix, np.ndarray]:
        if self._P is None:
            parts = []
            for A in self._pool:
                A = A.copy()
                A.resize(A.shape[0], self.n_cols)
                parts.append(A)
            P = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.n_cols))
            self._P = (P, np.concatenate(self._pool_rhs) if parts else np.zeros(0))
            self._pool, self._pool_rhs = [P], [self._P[1]]
        P, r = self._P
        if P.shape[1] != self.n_cols:
            P = P.copy()
            P.resize(P.shape[0], self.n_cols)
            self._P = (P, r)
            self._pool = [P]
        return self._P

    def minimize(self, cost, offset: float = 0.0) -> Solution:
        best = None
        for _ in range(self.rounds):
            sol = super().minimize(cost, offset)
            best = sol if best is None or sol.bound > best.bound else Solution(best.bound, sol.value, sol.status)
            P, r = self._pool_matrix()
            sv = self.h.getSolution()
            if P.shape[0] == 0 or not sv.value_valid:
                break
            viol = P @ np.asarray(sv.col_value, np.float64) - r
            bad = np.nonzero(viol > CUT_TOL * (1.0 + np.abs(r)))[0]
            if bad.size == 0:
                break
            pick = bad[np.argsort(-viol[bad])[: self.per_round]]
            self.add_rows(P[pick], np.full(pick.size, -INF), r[pick])
            keep = np.ones(P.shape[0], bool)
            keep[pick] = False
            self._P = (P[keep], r[keep])
            self._pool, self._pool_rhs = [self._P[0]], [self._P[1]]
        return best


def add_group_constraints(model: Model, name: str, options: KPolyOptions, stats: KPolyStats | None = None) -> None:
    """A refine hook: for ReLU/LeakyReLU node ``name`` (just added), add its k-ReLU group facets to the model
    (to its cut pool when it is a :class:`CutModel`)."""
    node = model.graph.nodes[name]
    if node.op not in ("relu", "leaky_relu"):
        return
    (zname,) = node.inputs
    l, u = model.lower[zname], model.upper[zname]
    unstable = np.nonzero((l < 0) & (u > 0))[0]
    if unstable.size < 2:
        return
    order = unstable[np.argsort(-(-l[unstable] * u[unstable]), kind="stable")][: options.max_neurons]
    groups = [order[list(g)] for g in make_groups(order.size, min(options.k, order.size), options.block)]
    if options.max_groups is not None:
        groups = groups[: options.max_groups]
    add_groups(model, name, groups, options, stats)


def add_groups(model: Model, name: str, groups: list[np.ndarray], options: KPolyOptions = KPolyOptions(),
               stats: KPolyStats | None = None) -> None:
    """Add the hull facets of the given groups (arrays of neuron indices, all of one size) of ReLU node ``name``."""
    stats = stats if stats is not None else KPolyStats()
    node = model.graph.nodes[name]
    if not groups or node.op not in ("relu", "leaky_relu"):
        return
    slope = float(node.params.get("alpha", 0.0)) if node.op == "leaky_relu" else 0.0
    (zname,) = node.inputs
    k = groups[0].size
    hs = octahedra(model, zname, groups, k, options.lines)
    z, y = model.var(zname), model.vars[name]
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    for g, h in zip(groups, hs, strict=True):
        if not np.all(np.isfinite(h)):
            continue
        try:
            G, b = _cached_hull(h, k, slope, stats)
        except (ValueError, RuntimeError):  # cdd failed or P empty (then the box rows already decide): skip
            continue
        keep = np.abs(G[:, k:]).max(1) > 0  # facets in z alone are implied by the octahedron's own bounds
        G, b = G[keep], b[keep]
        m = G.shape[0]
        if m == 0:
            continue
        rows.append(np.repeat(np.arange(r, r + m), 2 * k))
        cols.append(np.tile(np.concatenate([z[g], y[g]]), m))
        vals.append(G.reshape(-1))
        rhs.append(b)
        r += m
        stats.groups += 1
    if r:
        A = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, model.n_cols))
        if isinstance(model, CutModel):
            model.add_cuts(A, np.concatenate(rhs))
        else:
            model.add_rows(A, np.full(r, -INF), np.concatenate(rhs))
        stats.rows += r


def kpoly_bounds(graph: Graph, lower, upper, C=None, pre: Bounds | None = None,
                 options: KPolyOptions = KPolyOptions(), time_limit: float | None = None,
                 stats: KPolyStats | None = None, solve_upper: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds of ``C · y`` over each box by the LP with k-ReLU group constraints (see the module).

    Arguments as :func:`veracity.solvers.lp.lp_bounds`; ``options`` sets the grouping and refinement;
    ``stats`` (a :class:`KPolyStats`) receives the number of groups, rows and cache hits.
    Returns (lower, upper), each (B, S).
    """
    stats = stats if stats is not None else KPolyStats()

    def hook(model: Model, name: str) -> None:
        add_group_constraints(model, name, options, stats)

    return lp_bounds(graph, lower, upper, C, pre=pre, refine=options.refine, lines=options.lines,
                     time_limit=time_limit, hook=hook, solve_upper=solve_upper,
                     model_cls=CutModel if options.cuts else Model)


def clear_cache() -> None:
    _CACHE.clear()


__all__ = ["CutModel", "KPolyOptions", "KPolyStats", "add_group_constraints", "add_groups", "clear_cache",
           "kpoly_bounds", "make_groups", "octahedra"]
