"""Convex hulls of a function's graph over a small polytope, with pycddlib (the group hull of k-ReLU/PRIMA).

:func:`lifted_hull` takes a polytope ``P = {x in R^k : H x <= h}``, a list of *pieces* (extra rows that cut
P into regions) and a lifting function ``lift`` (points of R^k -> R^m). It enumerates the vertices of P on
each piece (cdd, H -> V), lifts each vertex ``v`` to ``(v, lift(v))`` and returns the facets of the hull of
all lifted vertices (cdd, V -> H) as rows ``G (x, y) <= g``. The hull is exactly conv{(x, f(x)) : x in P}
when ``lift`` is linear on every piece (ReLU on the sign orthants, :func:`orthants`); for other functions
the same code serves once the lift or the offsets over-approximate (sigmoid/tanh groups, later).

Floating point: cdd works in floats, so each facet's offset is raised to the row's largest value over the
lifted vertices (float64) and then loosened by ``HULL_SLACK`` relative to the magnitudes involved, a margin
for small errors in cdd's vertex positions (a heuristic margin, not a proof: the tests check the facets
against the lifted vertices and against sampled points of the exact set).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import cdd
import numpy as np

HULL_SLACK = 1e-7
Lift = Callable[[np.ndarray], np.ndarray]


def octahedron_directions(k: int) -> np.ndarray:
    """All a in {-1, 0, 1}^k except 0, as rows (3^k - 1, k); unit vectors included (the box)."""
    return np.array([a for a in itertools.product((-1.0, 0.0, 1.0), repeat=k) if any(a)])


def orthants(k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 2^k sign orthants as pieces: rows ``s_i x_i <= 0`` (s_i = +1 for x_i <= 0, -1 for x_i >= 0)."""
    out = []
    for signs in itertools.product((1.0, -1.0), repeat=k):
        out.append((np.diag(signs), np.zeros(k)))
    return out


def relu_lift(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def vertices(H: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Vertices (n, k) of the bounded polytope ``H x <= h`` (empty (0, k) when it is empty)."""
    k = H.shape[1]
    mat = cdd.matrix_from_array(np.hstack([h[:, None], -H]), rep_type=cdd.RepType.INEQUALITY)
    gen = np.array(cdd.copy_generators(cdd.polyhedron_from_matrix(mat)).array, dtype=np.float64).reshape(-1, k + 1)
    if np.any(gen[:, 0] == 0):
        raise ValueError("the polytope is unbounded")
    return gen[:, 1:]


def lifted_points(H: np.ndarray, h: np.ndarray, lift: Lift,
                  pieces: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """``(v, lift(v))`` for every vertex v of P on each piece (all of P when ``pieces`` is None)."""
    pts = []
    for Hp, hp in pieces if pieces is not None else [(np.zeros((0, H.shape[1])), np.zeros(0))]:
        V = vertices(np.vstack([H, Hp]), np.concatenate([h, hp]))
        if V.size:
            pts.append(np.hstack([V, lift(V)]))
    if not pts:
        raise ValueError("the polytope is empty")
    return np.unique(np.vstack(pts), axis=0)


def facets(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``G p <= g`` of the convex hull of ``points`` (n, d); equalities become two rows."""
    n, d = points.shape
    mat = cdd.matrix_from_array(np.hstack([np.ones((n, 1)), points]), rep_type=cdd.RepType.GENERATOR)
    ineq = cdd.copy_inequalities(cdd.polyhedron_from_matrix(mat))
    arr = np.array(ineq.array, dtype=np.float64).reshape(-1, d + 1)  # b + A p >= 0
    lin = sorted(ineq.lin_set)
    arr = np.vstack([arr, -arr[lin]]) if lin else arr
    return -arr[:, 1:], arr[:, 0]


def lifted_hull(H: np.ndarray, h: np.ndarray, lift: Lift = relu_lift,
                pieces: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Facets ``G (x, y) <= g`` of conv{(v, lift(v)) : v vertex of P on a piece}, sound for every such point.

    Rows are scaled to a largest coefficient of 1; each offset is at least the largest value of its row
    over the lifted vertices, plus ``HULL_SLACK`` times the row's magnitude there.
    """
    H = np.asarray(H, np.float64)
    h = np.asarray(h, np.float64)
    pts = lifted_points(H, h, lift, pieces)
    G, g = facets(pts)
    scale = np.abs(G).max(1)
    keep = scale > 0
    G, g = G[keep] / scale[keep, None], g[keep] / scale[keep]
    vals = pts @ G.T  # (n_points, n_rows)
    mag = np.abs(pts) @ np.abs(G).T
    g = np.maximum(g, vals.max(0)) + HULL_SLACK * (1.0 + mag.max(0))
    return G, g


def relu_hull(H: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact convex hull of ReLU over ``H x <= h`` (k inputs): rows ``G (x, relu(x)) <= g``."""
    return lifted_hull(H, h, relu_lift, orthants(np.asarray(H).shape[1]))


__all__ = ["HULL_SLACK", "facets", "lifted_hull", "lifted_points", "octahedron_directions", "orthants",
           "relu_hull", "relu_lift", "vertices"]
