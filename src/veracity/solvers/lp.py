"""A graph plus intermediate bounds as a HiGHS model: the exact LP relaxation and the base of the MILP.

:class:`Model` encodes one input box. Every node is added in topological order:

- the input and every nonlinear node get one variable per element, bounded by the node's bounds;
- a linear op is exact: it stays an affine expression of earlier variables (chains of single-consumer
  linear ops compose) and gets its own variables, tied by equality rows, where a nonlinear op, several
  consumers or a refinement need them. Convolutions become sparse matrices;
- a nonlinear op is encoded by an *encoder* ``encoder(model, node, ins, out)`` that adds rows linking the
  variables of its inputs (``ins``, one index array per input) to its own (``out``). The defaults: the
  triangle for unstable ReLU/LeakyReLU and equalities for stable ones (binaries with big-M rows when the
  model is integer), several tangents and chords for sigmoid/tanh, DeepPoly-style rows (or exact binaries)
  for max pooling, McCormick planes for products. Pass ``encoders={op: fn}`` to replace one.

Reported bounds never come from the solver's objective value. :meth:`Model.minimize` turns the row duals
into a Lagrangian lower bound evaluated in float64 from our own copy of the rows and column bounds,
``c0 + sum_i lam_i * (row bound) + sum_j min(d_j * lo_j, d_j * hi_j)`` with ``d = c - A^T lam`` and
each multiplier's sign matched to a finite row bound, minus a bound on its rounding error. Weak duality
makes this valid for any multipliers, however inaccurate the solve.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from veracity import relax
from veracity.bounds import rules
from veracity.bounds.crown import crown_bounds, ibp_exact, needs_bounds, spec_bounds
from veracity.bounds.ibp import Bounds, ibp_node, spec_interval
from veracity.graph import ops
from veracity.graph.ir import Graph, Node, UnsupportedError

INF = highspy.kHighsInf
EPS = float(np.finfo(np.float64).eps)
# Intercepts of relaxation rows are loosened by this much (relative to the bounds involved): a row computed
# in float64 must not cut off a point of the exact function.
ROW_SLACK = 1e-12
# Tangent points used for sigmoid/tanh (positions within the sound range of each line, see relax.s_shaped).
S_SHAPED_ALPHAS = (0.0, 0.5, 1.0)
PIECEWISE_LINEAR = ("relu", "leaky_relu", "maxpool")

Encoder = Callable[["Model", Node, list[np.ndarray], np.ndarray], None]


@dataclass
class Solution:
    """One LP solve: ``bound`` is a sound lower bound of the objective; ``value`` the solver's (unsound) one."""

    bound: float
    value: float
    status: str


# -- linear ops as sparse matrices ------------------------------------------------------------------

_MATRICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHUNK_ELEMENTS = 1 << 22


def linear_matrix(graph: Graph, node: Node, k: int) -> sp.csr_matrix:
    """The map ``L_k`` of linear node ``node`` on its input ``k`` as a (node.size, input size) CSR matrix.

    Fully connected layers, additions and element-wise scalings are read off their parameters; any other
    linear op (convolution, pooling, padding, reshaping...) is applied to chunks of identity columns and
    only its non-zeros are kept.
    """
    cache = _MATRICES.setdefault(graph, {})
    key = (node.name, k)
    if key in cache:
        return cache[key]
    op = ops.OPS[node.op]
    p = graph.params(node, torch.float64)
    in_shape = node.in_shapes[k]
    n_in = math.prod(in_shape)
    if node.op == "linear":
        M = sp.csr_matrix(p["W"].numpy())
    elif node.op in ("add", "sub") and tuple(in_shape) == tuple(node.shape):
        M = sp.identity(n_in, format="csr") * (-1.0 if node.op == "sub" and k == 1 else 1.0)
    elif node.op == "scale_shift" and tuple(in_shape) == tuple(node.shape):
        s = p.get("scale")
        d = np.ones(n_in) if s is None else torch.broadcast_to(s, in_shape).reshape(-1).numpy()
        M = sp.diags(d, format="csr")
    else:
        step = max(1, _CHUNK_ELEMENTS // max(1, node.size + n_in))
        rows, cols, vals = [], [], []
        for s in range(0, n_in, step):
            m = min(step, n_in - s)
            eye = torch.zeros(m, n_in, dtype=torch.float64)
            eye[torch.arange(m), torch.arange(s, s + m)] = 1.0
            y = op.apply(node, p, k, eye.reshape(m, *in_shape)).reshape(m, -1)
            j, i = torch.nonzero(y, as_tuple=True)  # column s+j of L has entry y[j, i] in row i
            rows.append(i.numpy())
            cols.append((j + s).numpy())
            vals.append(y[j, i].numpy())
        M = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(node.size, n_in))
    M = sp.csr_matrix(M, dtype=np.float64)
    M.eliminate_zeros()
    cache[key] = M
    return M


def complete_bounds(graph: Graph, bounds: Bounds) -> Bounds:
    """``bounds`` with every missing node filled in by one IBP step from its inputs (a new dict)."""
    out = dict(bounds)
    l0 = out[graph.input_name][0]
    B = l0.shape[0]
    for n in graph.nodes.values():
        if n.name not in out:
            out[n.name] = ibp_node(graph, n, out, B, l0.dtype, l0.device)
    return out


def _flat(t: torch.Tensor, b: int) -> np.ndarray:
    return t[b].detach().reshape(-1).to("cpu", torch.float64).numpy().copy()


# -- the model ----------------------------------------------------------------------------------------


_quiet_started = False


def new_highs() -> highspy.Highs:
    """A silent HiGHS instance. The first one a process makes prints a banner on file descriptor 1 (it
    would corrupt ``bound --json`` and witness output), so that one is made with fd 1 pointed at null."""
    global _quiet_started
    if _quiet_started:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        _quiet_started = True
    h.silent()
    return h


class Model:
    """The HiGHS model of ``graph`` over box ``box`` of ``bounds`` (a Bounds dict with a batch dimension).

    Build it all at once (:meth:`build`) or node by node (:meth:`add_node`, in topological order), tightening
    a node's bounds in between (:meth:`tighten`) so that later encoders see them. ``integer=True`` makes the
    default encoders exact (binaries); ``encoders`` replaces the encoding of the given op kinds.
    """

    def __init__(self, graph: Graph, bounds: Bounds, box: int = 0, encoders: dict[str, Encoder] | None = None,
                 integer: bool = False, time_limit: float | None = None, threads: int | None = None,
                 compact: bool = False):
        self.graph = graph
        self.integer = integer
        self.compact = compact
        self.encoders: dict[str, Encoder] = {**DEFAULT_ENCODERS, **(encoders or {})}
        self._custom = set(encoders or {})
        bounds = complete_bounds(graph, bounds)
        self.lower: dict[str, np.ndarray] = {}
        self.upper: dict[str, np.ndarray] = {}
        for name in graph.nodes:
            lo, hi = _flat(bounds[name][0], box), _flat(bounds[name][1], box)
            self.lower[name], self.upper[name] = np.minimum(lo, hi), np.maximum(lo, hi)
        self.h = new_highs()
        self.h.setOptionValue("presolve", "off" if not integer else "choose")
        if time_limit is not None:
            self.h.setOptionValue("time_limit", float(time_limit))
        if threads is not None:
            self.h.setOptionValue("threads", int(threads))
        self.col_lower: list[float] = []
        self.col_upper: list[float] = []
        self.integrality: list[bool] = []
        self._parts: list[sp.csr_matrix] = []
        self._row_lower: list[np.ndarray] = []
        self._row_upper: list[np.ndarray] = []
        self._A: tuple[sp.csr_matrix, np.ndarray, np.ndarray] | None = None
        self._absA: tuple[sp.csr_matrix, int] | None = None
        self.vars: dict[str, np.ndarray] = {}  # node name -> column indices of its elements (flat)
        self._exprs: dict[str, tuple[sp.csr_matrix, np.ndarray]] = {}
        self._cost_idx = np.zeros(0, dtype=np.int32)
        consumers = graph.consumers()
        relu = ("relu", "leaky_relu")
        self._materialise = {
            name for name, n in graph.nodes.items()
            if ops.OPS[n.op].linear and name != graph.output_name
            and (len(consumers[name]) != 1 or any(not ops.OPS[graph.nodes[c].op].linear for c in consumers[name]))
            and not (compact and all(graph.nodes[c].op in relu for c in consumers[name]))
        }
        self.added: list[str] = []

    # -- sizes and raw access ------------------------------------------------------------------------
    @property
    def n_cols(self) -> int:
        return len(self.col_lower)

    @property
    def n_rows(self) -> int:
        return sum(p.shape[0] for p in self._parts)

    def add_cols(self, lower, upper, integer: bool = False) -> np.ndarray:
        """New variables with the given bounds; returns their column indices."""
        lower = np.asarray(lower, np.float64).reshape(-1)
        upper = np.asarray(upper, np.float64).reshape(-1)
        n = lower.size
        start = self.n_cols
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        self.h.addCols(n, np.zeros(n), lower, upper, 0, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        idx = np.arange(start, start + n)
        if integer:
            self.h.changeColsIntegrality(n, idx.astype(np.int32),
                                         np.full(n, highspy.HighsVarType.kInteger, dtype=np.uint8))
        self.col_lower.extend(lower.tolist())
        self.col_upper.extend(upper.tolist())
        self.integrality.extend([integer] * n)
        return idx

    def add_rows(self, A, lower, upper) -> None:
        """Rows ``lower <= A v <= upper`` (A: anything scipy.sparse accepts, with at most n_cols columns)."""
        A = sp.csr_matrix(A, dtype=np.float64)
        m = A.shape[0]
        if m == 0:
            return
        if A.shape[1] != self.n_cols:
            A = A.copy()
            A.resize(m, self.n_cols)
        lower = np.broadcast_to(np.asarray(lower, np.float64), (m,)).copy()
        upper = np.broadcast_to(np.asarray(upper, np.float64), (m,)).copy()
        A.sort_indices()
        self.h.addRows(m, lower, upper, A.nnz, A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data)
        self._parts.append(A)
        self._row_lower.append(lower)
        self._row_upper.append(upper)
        self._A = None
        self._absA = None

    def add_coo(self, rows, cols, vals, lower, upper) -> None:
        """Rows given as (row index, column, value) triples; ``lower``/``upper`` per row."""
        lower = np.atleast_1d(np.asarray(lower, np.float64))
        m = lower.size
        self.add_rows(sp.coo_matrix((np.asarray(vals, np.float64), (np.asarray(rows), np.asarray(cols))),
                                    shape=(m, self.n_cols)), lower, upper)

    def pairs(self, a, coef_a, b, coef_b, lower, upper) -> None:
        """Rows ``lower_i <= coef_a_i * v[a_i] + coef_b_i * v[b_i] <= upper_i`` (vectorised)."""
        a = np.asarray(a).reshape(-1)
        m = a.size
        if m == 0:
            return
        r = np.arange(m)
        ca = np.broadcast_to(np.asarray(coef_a, np.float64), (m,))
        cb = np.broadcast_to(np.asarray(coef_b, np.float64), (m,))
        self.add_coo(np.concatenate([r, r]), np.concatenate([a, np.asarray(b).reshape(-1)]),
                     np.concatenate([ca, cb]), np.broadcast_to(lower, (m,)), np.broadcast_to(upper, (m,)))

    def set_col_bounds(self, idx, lower, upper) -> None:
        idx = np.asarray(idx).reshape(-1)
        lower = np.broadcast_to(np.asarray(lower, np.float64), idx.shape)
        upper = np.broadcast_to(np.asarray(upper, np.float64), idx.shape)
        if idx.size == 0:
            return
        self.h.changeColsBounds(idx.size, idx.astype(np.int32), lower.copy(), upper.copy())
        for j, lo, hi in zip(idx.tolist(), lower.tolist(), upper.tolist(), strict=True):
            self.col_lower[j], self.col_upper[j] = lo, hi

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """All rows as one CSR matrix with their lower and upper bounds (our float64 copy)."""
        if self._A is None:
            n = self.n_cols
            parts = []
            for P in self._parts:
                if P.shape[1] != n:
                    P = P.copy()
                    P.resize(P.shape[0], n)
                parts.append(P)
            A = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, n))
            lo = np.concatenate(self._row_lower) if parts else np.zeros(0)
            hi = np.concatenate(self._row_upper) if parts else np.zeros(0)
            self._A = (A, lo, hi)
        return self._A

    # -- building --------------------------------------------------------------------------------------
    def build(self) -> Model:
        for name in self.graph.nodes:
            if name not in self.added:
                self.add_node(name)
        return self

    def expr(self, name: str) -> tuple[sp.csr_matrix, np.ndarray]:
        """Node ``name`` as ``M v + c`` over the current columns."""
        if name in self.vars:
            idx = self.vars[name]
            M = sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, self.n_cols))
            return M, np.zeros(idx.size)
        M, c = self._exprs[name]
        if M.shape[1] != self.n_cols:
            M = M.copy()
            M.resize(M.shape[0], self.n_cols)
        return M, c

    def var(self, name: str) -> np.ndarray:
        """Column indices of node ``name``, giving it variables (tied by equality rows) if it has none."""
        if name not in self.vars:
            M, c = self.expr(name)
            lo, hi = self._interval(M, c)
            lo, hi = np.maximum(lo, self.lower[name]), np.minimum(hi, self.upper[name])
            self.lower[name], self.upper[name] = lo, np.maximum(lo, hi)
            idx = self.add_cols(lo, np.maximum(lo, hi))
            M = M.copy()
            M.resize(M.shape[0], self.n_cols)
            eye = sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, self.n_cols))
            self.add_rows(eye - M, c, c)
            self.vars[name] = idx
            del self._exprs[name]
        return self.vars[name]

    def _interval(self, M: sp.csr_matrix, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval of ``M v + c`` over the column bounds, widened for rounding."""
        lo, hi = np.asarray(self.col_lower), np.asarray(self.col_upper)
        Mp, Mn = M.maximum(0), M.minimum(0)
        a, b = Mp @ lo + Mn @ hi + c, Mp @ hi + Mn @ lo + c
        err = 4 * (M.shape[1] + 2) * EPS * (abs(M) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(c)) if M.nnz else 0
        return a - err, b + err

    def add_node(self, name: str) -> None:
        n = self.graph.nodes[name]
        self.added.append(name)
        if n.op == "input":
            self.vars[name] = self.add_cols(self.lower[name], self.upper[name])
        elif n.op == "const":
            v = self.graph.params(n, torch.float64)["value"].reshape(-1).numpy().astype(np.float64)
            self._exprs[name] = (sp.csr_matrix((n.size, self.n_cols)), v)
        elif ops.OPS[n.op].linear:
            M, c = None, np.zeros(n.size)
            for k, i in enumerate(n.inputs):
                Mi, ci = self.expr(i)
                L = linear_matrix(self.graph, n, k)
                M = L @ Mi if M is None else M + L @ Mi
                c = c + L @ ci
            const = ops.OPS[n.op].const(n, self.graph.params(n, torch.float64))
            if const is not None:
                c = c + torch.broadcast_to(const, n.shape).reshape(-1).numpy()
            self._exprs[name] = (sp.csr_matrix(M), c)
            if name in self._materialise:
                self.var(name)
        elif self.compact and n.op in ("relu", "leaky_relu") and n.op not in self._custom:
            self._relu_expr(n)
        else:
            enc = self.encoders.get(n.op)
            if enc is None:
                raise UnsupportedError(f"no LP encoding for op '{n.op}' ({n.origin or n.name}); "
                                       f"supported: {', '.join(sorted(self.encoders))}")
            ins = [self.var(i) for i in n.inputs]
            if n.op in MONOTONE_ELEMENTWISE:
                f = _monotone_fn(n, self.graph)
                (i,) = n.inputs
                # sigmoid/tanh in float64 are accurate to a few ulps; |f| <= 1
                slack = 0.0 if n.op in ("relu", "leaky_relu") else 4 * EPS
                lo = np.maximum(self.lower[name], f(self.lower[i]) - slack)
                hi = np.minimum(self.upper[name], f(self.upper[i]) + slack)
                self.lower[name], self.upper[name] = lo, np.maximum(lo, hi)
            out = self.add_cols(self.lower[name], self.upper[name])
            self.vars[name] = out
            enc(self, n, ins, out)

    def _relu_expr(self, n: Node) -> None:
        """``compact``: a ReLU/LeakyReLU node as an expression. Stable neurons are their input's expression
        (or its ``slope`` multiple); only unstable ones get a variable, tied to the input's expression by
        the rows of :func:`_unstable_relu_rows` (no variables for the input, no rows for stable neurons)."""
        (i,) = n.inputs
        a = float(n.params.get("alpha", 0.0)) if n.op == "leaky_relu" else 0.0
        M, c = self.expr(i)
        l, u = self.lower[i], self.upper[i]
        alive, dead = l >= 0, u <= 0
        unstable = np.nonzero(~(alive | dead))[0]
        scale = np.where(alive, 1.0, np.where(dead, a, 0.0))
        lo = np.where(alive | dead, np.where(alive, 1.0, a) * l, a * l)
        hi = np.where(alive | dead, np.where(alive, 1.0, a) * u, u)
        self.lower[n.name] = np.maximum(self.lower[n.name], np.minimum(lo, hi))
        self.upper[n.name] = np.maximum(self.lower[n.name], np.minimum(self.upper[n.name], np.maximum(lo, hi)))
        y = self.add_cols(self.lower[n.name][unstable], self.upper[n.name][unstable])
        m = y.size
        _unstable_relu_rows(self, y, M[unstable], c[unstable], l[unstable], u[unstable], a)
        M = sp.diags(scale) @ M
        M.resize(M.shape[0], self.n_cols)
        M = M + sp.csr_matrix((np.ones(m), (unstable, y)), shape=M.shape)
        self._exprs[n.name] = (sp.csr_matrix(M), scale * c)

    def tighten(self, name: str, lower: np.ndarray, upper: np.ndarray) -> None:
        """Intersect node ``name``'s bounds with sound new ones (and its variables' bounds, if it has any)."""
        lo = np.maximum(self.lower[name], lower)
        hi = np.maximum(lo, np.minimum(self.upper[name], upper))
        self.lower[name], self.upper[name] = lo, hi
        if name in self.vars:
            self.set_col_bounds(self.vars[name], lo, hi)

    # -- solving -----------------------------------------------------------------------------------------
    def minimize(self, cost: sp.spmatrix | np.ndarray, offset: float = 0.0) -> Solution:
        """Sound lower bound of ``cost · v + offset`` over the model (an LP: integrality is ignored)."""
        if any(self.integrality):
            raise ValueError("minimize() solves LPs; use veracity.solvers.milp for models with integer variables")
        cost = np.asarray(sp.csr_matrix(cost).todense()).reshape(-1) if sp.issparse(cost) else np.asarray(cost)
        c = np.zeros(self.n_cols)
        c[: cost.size] = cost
        idx = np.nonzero(c)[0].astype(np.int32)
        reset = np.setdiff1d(self._cost_idx, idx).astype(np.int32)
        if reset.size:
            self.h.changeColsCost(reset.size, reset, np.zeros(reset.size))
        if idx.size:
            self.h.changeColsCost(idx.size, idx, c[idx])
        self._cost_idx = idx
        self.h.run()
        status = self.h.modelStatusToString(self.h.getModelStatus())
        sol = self.h.getSolution()
        lam = np.asarray(sol.row_dual, np.float64) if sol.dual_valid else np.zeros(self.n_rows)
        if lam.size != self.n_rows or not np.all(np.isfinite(lam)):
            lam = np.zeros(self.n_rows)
        value = self.h.getInfo().objective_function_value + offset if sol.value_valid else math.nan
        return Solution(self.dual_bound(c, offset, lam), value, status)

    def dual_bound(self, c: np.ndarray, offset: float, lam: np.ndarray) -> float:
        """The Lagrangian lower bound of ``c · v + offset`` for row multipliers ``lam`` (any values)."""
        A, rlo, rhi = self.matrix()
        clo, chi = np.asarray(self.col_lower), np.asarray(self.col_upper)
        lam = np.where((lam > 0) & np.isfinite(rlo), lam, np.where((lam < 0) & np.isfinite(rhi), lam, 0.0))
        row_b = np.where(lam > 0, rlo, np.where(lam < 0, rhi, 0.0))
        row_b = np.where(np.isfinite(row_b), row_b, 0.0)
        row_terms = lam * row_b
        d = c - A.T @ lam
        with np.errstate(invalid="ignore"):
            col_terms = np.where(d > 0, d * clo, np.where(d < 0, d * chi, 0.0))
        if np.any(np.isnan(col_terms)) or np.any(np.isneginf(col_terms)):
            return -math.inf
        if self._absA is None or self._absA[0].shape != A.shape:
            col_nnz = np.diff(A.tocsc().indptr).max() if A.nnz else 0
            self._absA = (abs(A).T.tocsr(), int(col_nnz) + A.shape[0] + A.shape[1] + 4)
        absAT, K = self._absA
        vmax = np.maximum(np.abs(clo), np.abs(chi))
        scale = abs(offset) + np.abs(row_terms).sum() + (np.abs(c) + absAT @ np.abs(lam)) @ vmax
        bound = offset + row_terms.sum() + col_terms.sum()
        return float(bound - 2 * K * EPS * scale - 1e-300)

    def objective(self, name: str, coeffs: np.ndarray) -> tuple[sp.csr_matrix, float]:
        """Cost row and offset of ``coeffs · node`` (coeffs flat over the node's elements)."""
        M, c0 = self.expr(name)
        coeffs = np.asarray(coeffs, np.float64).reshape(1, -1)
        return sp.csr_matrix(coeffs) @ M, float((coeffs @ c0)[0])

    def bound_node(self, name: str, coeffs: np.ndarray) -> tuple[float, float]:
        """Sound (lower, upper) bounds of ``coeffs · node``."""
        cost, off = self.objective(name, coeffs)
        lo = self.minimize(cost, off).bound
        hi = -self.minimize(-cost, -off).bound
        return lo, hi

    def refine(self, name: str, elements: np.ndarray | None = None) -> None:
        """Tighten the bounds of elements of node ``name`` (default: all) by one LP per element and side."""
        idx = self.var(name)
        elements = np.arange(idx.size) if elements is None else np.asarray(elements).reshape(-1)
        lo, hi = self.lower[name].copy(), self.upper[name].copy()
        for e in elements.tolist():
            c = np.zeros(self.n_cols)
            c[idx[e]] = 1.0
            lo[e] = max(lo[e], self.minimize(c).bound)
            hi[e] = min(hi[e], -self.minimize(-c).bound)
        self.tighten(name, lo, hi)


# -- encoders ---------------------------------------------------------------------------------------------

MONOTONE_ELEMENTWISE = ("relu", "leaky_relu", "sigmoid", "tanh")


def _monotone_fn(n: Node, graph: Graph):
    if n.op == "relu":
        return lambda x: np.maximum(x, 0.0)
    if n.op == "leaky_relu":
        a = float(n.params["alpha"])
        return lambda x: np.where(x >= 0, x, a * x)
    f = torch.sigmoid if n.op == "sigmoid" else torch.tanh
    return lambda x: f(torch.from_numpy(np.asarray(x, np.float64))).numpy()


def encode_relu(model: Model, node: Node, ins: list[np.ndarray], out: np.ndarray) -> None:
    """ReLU/LeakyReLU: equalities for stable neurons; the triangle (or big-M rows with a binary) otherwise."""
    (z,), y = ins, out
    (zname,) = node.inputs
    a = float(node.params.get("alpha", 0.0)) if node.op == "leaky_relu" else 0.0
    l, u = model.lower[zname], model.upper[zname]
    alive, dead = l >= 0, u <= 0
    unstable = ~(alive | dead)
    model.pairs(y[alive], 1.0, z[alive], -1.0, 0.0, 0.0)
    model.pairs(y[dead], 1.0, z[dead], -a, 0.0, 0.0)
    if not unstable.any():
        return
    zu = z[unstable]
    m = zu.size
    Z = sp.csr_matrix((np.ones(m), (np.arange(m), zu)), shape=(m, model.n_cols))
    _unstable_relu_rows(model, y[unstable], Z, np.zeros(m), l[unstable], u[unstable], a)


def _unstable_relu_rows(model: Model, y: np.ndarray, Mz, cz: np.ndarray, l: np.ndarray, u: np.ndarray,
                        a: float) -> None:
    """Rows tying unstable ReLU/LeakyReLU outputs (columns ``y``) to their inputs ``z = Mz v + cz``, whose
    bounds ``l < 0 < u``: ``y >= z`` and ``y >= a z``, then the triangle's upper side, or on an integer
    model a binary d each and ``y <= z - (1-a) l (1-d)``, ``y <= a z + (1-a) u d``."""
    m = y.size
    d = model.add_cols(np.zeros(m), np.ones(m), integer=True) if model.integer else None
    n = model.n_cols
    Mz = sp.csr_matrix(Mz, dtype=np.float64, copy=True)
    Mz.resize(m, n)
    Y = sp.csr_matrix((np.ones(m), (np.arange(m), y)), shape=(m, n))
    model.add_rows(Y - Mz, cz, INF)  # y >= z
    model.add_rows(Y - a * Mz, a * cz, INF)  # y >= a z
    if d is None:
        k = (u - a * l) / (u - l)
        b = -(1 - a) * l * u / (u - l)
        slack = ROW_SLACK * (1 + np.abs(l) + np.abs(u) + np.abs(b))
        model.add_rows(Y - Mz.multiply(k[:, None]), -INF, k * cz + b + slack)
        return
    D = sp.csr_matrix((np.ones(m), (np.arange(m), d)), shape=(m, n))
    model.add_rows(Y - Mz - D.multiply((1 - a) * l[:, None]), -INF, cz - (1 - a) * l)
    model.add_rows(Y - a * Mz - D.multiply((1 - a) * u[:, None]), -INF, a * cz)


def encode_s_shaped(model: Model, node: Node, ins: list[np.ndarray], out: np.ndarray) -> None:
    """Sigmoid/tanh: the lines of :mod:`veracity.relax` at several tangent points (all sound)."""
    if model.integer:
        raise UnsupportedError(f"the MILP needs piecewise-linear activations; '{node.op}' ({node.origin or node.name})"
                               " needs a custom encoder")
    (z,), y = ins, out
    (zname,) = node.inputs
    l = torch.from_numpy(model.lower[zname])
    u = torch.from_numpy(model.upper[zname])
    fn = relax.sigmoid if node.op == "sigmoid" else relax.tanh
    for al in S_SHAPED_ALPHAS:
        lines = fn(l, u, torch.full_like(l, al), torch.full_like(l, al))
        model.pairs(y, 1.0, z, -lines.lw.numpy(), lines.lb.numpy(), INF)
        model.pairs(y, 1.0, z, -lines.uw.numpy(), -INF, lines.ub.numpy())


def encode_lines(model: Model, node: Node, ins: list[np.ndarray], out: np.ndarray) -> None:
    """Any element-wise op with lines in :func:`veracity.bounds.rules.lines_for` (products: McCormick)."""
    if model.integer:
        raise UnsupportedError(f"the MILP has no exact encoding of '{node.op}' ({node.origin or node.name})")
    p = model.graph.params(node, torch.float64)
    bounds_in = [(torch.from_numpy(model.lower[i]), torch.from_numpy(model.upper[i])) for i in node.inputs]
    nl = rules.lines_for(node, p, bounds_in, "tight")
    m = out.size
    r = np.arange(m)
    for ws, b, lo_side in ((nl.lw, nl.lb, True), (nl.uw, nl.ub, False)):
        rows, cols, vals = [r], [out], [np.ones(m)]
        for w, z in zip(ws, ins, strict=True):
            rows.append(r)
            cols.append(z)
            vals.append(-torch.broadcast_to(w, (m,)).numpy())
        b = torch.broadcast_to(torch.as_tensor(b, dtype=torch.float64), (m,)).numpy()
        slack = ROW_SLACK * (1 + np.abs(b))
        lo, hi = (b - slack, np.full(m, INF)) if lo_side else (np.full(m, -INF), b + slack)
        model.add_coo(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), lo, hi)


def maxpool_windows(node: Node) -> np.ndarray:
    """(C, L, K) flat input positions of each output's window (-1 for padding), for 2-d max pooling."""
    p = node.params
    if len(p["kernel"]) != 2:
        raise UnsupportedError(f"only 2-d max pooling has an LP encoding ({node.origin or node.name})")
    C, H, W = node.in_shapes[0]
    ph, pw = p["padding"]
    pos = torch.arange(H * W, dtype=torch.float64).reshape(1, 1, H, W)
    pos = F.pad(pos, (pw, pw, ph, ph), value=-1.0)
    win = F.unfold(pos, kernel_size=p["kernel"], dilation=p["dilation"], stride=p["stride"])[0]  # (K, L)
    if win.shape[1] != node.shape[1] * node.shape[2]:
        raise UnsupportedError(f"max pooling with ceil_mode has no LP encoding ({node.origin or node.name})")
    win = win.T.long().numpy()  # (L, K)
    offs = (np.arange(C) * H * W)[:, None, None]
    return np.where(win[None] >= 0, win[None] + offs, -1)


def encode_maxpool(model: Model, node: Node, ins: list[np.ndarray], out: np.ndarray) -> None:
    """y >= every input of its window; y <= sum_j (x_j - l_j) + max_j l_j; exact (binaries) when integer."""
    (x,), y = ins, out
    (xname,) = node.inputs
    l, u = model.lower[xname], model.upper[xname]
    win = maxpool_windows(node)
    win = win.reshape(-1, win.shape[-1])  # (outputs, K)
    for o in range(win.shape[0]):
        w = win[o][win[o] >= 0]
        lmax = l[w].max()
        w = w[u[w] >= lmax]  # inputs that can never reach the maximum are irrelevant
        k = w.size
        model.pairs(np.full(k, y[o]), 1.0, x[w], -1.0, 0.0, INF)
        if k == 1:
            model.pairs(y[o : o + 1], 1.0, x[w], -1.0, 0.0, 0.0)
            continue
        if not model.integer:
            rhs = lmax - l[w].sum()
            model.add_coo(np.zeros(k + 1, int), np.concatenate([[y[o]], x[w]]), np.concatenate([[1.0], -np.ones(k)]),
                          [-INF], [rhs + ROW_SLACK * (1 + np.abs(l[w]).sum())])
            continue
        d = model.add_cols(np.zeros(k), np.ones(k), integer=True)
        model.add_coo(np.zeros(k, int), d, np.ones(k), [1.0], [1.0])
        umax = u[w].max()
        r = np.arange(k)
        # y <= x_j + (umax - l_j)(1 - d_j)
        model.add_coo(np.concatenate([r, r, r]), np.concatenate([np.full(k, y[o]), x[w], d]),
                      np.concatenate([np.ones(k), -np.ones(k), umax - l[w]]), np.full(k, -INF), umax - l[w])


DEFAULT_ENCODERS: dict[str, Encoder] = {
    "relu": encode_relu,
    "leaky_relu": encode_relu,
    "sigmoid": encode_s_shaped,
    "tanh": encode_s_shaped,
    "maxpool": encode_maxpool,
    "mul": encode_lines,
}


# -- public functions ---------------------------------------------------------------------------------------


def _as_boxes(graph: Graph, lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    lower = torch.as_tensor(lower).detach().to("cpu", torch.float64)
    upper = torch.as_tensor(upper).detach().to("cpu", torch.float64)
    B = lower.shape[0] if lower.dim() > 1 else 1
    return lower.reshape(B, -1), upper.reshape(B, -1)


def _refine_order(graph: Graph) -> tuple[list[str], dict[str, bool]]:
    """Nodes whose bounds relaxations use, and for each whether only unstable elements matter (ReLU-like)."""
    consumers = graph.consumers()
    need = needs_bounds(graph)
    relu_only = {k: all(graph.nodes[c].op in ("relu", "leaky_relu") for c in consumers[k]) for k in need}
    return need, relu_only


def refine_model(model: Model, hook: Callable[[Model, str], None] | None = None, refine: bool = True) -> Model:
    """Build ``model`` node by node, refining each pre-activation's bounds by LPs before it is used.

    Only elements that are unstable (for ReLU-like consumers) are refined; nodes where IBP is exact (an
    affine map of the input box) get their exact interval instead of LPs. ``hook(model, name)`` runs after
    each node is added (kPoly adds its group constraints there). ``refine=False``: no LPs, only the hook.
    """
    need, relu_only = _refine_order(model.graph)
    need = set(need) if refine else set()
    exact = ibp_exact(model.graph)
    for name in model.graph.nodes:
        model.add_node(name)
        n = model.graph.nodes[name]
        if name in need and name in exact and n.op not in ("input", "const"):
            box = {i: (torch.from_numpy(model.lower[i]).reshape(1, *model.graph.nodes[i].shape),
                       torch.from_numpy(model.upper[i]).reshape(1, *model.graph.nodes[i].shape)) for i in n.inputs}
            lo, hi = ibp_node(model.graph, n, box, 1, torch.float64, "cpu")
            model.tighten(name, lo.reshape(-1).numpy(), hi.reshape(-1).numpy())
        elif name in need and n.op not in ("input", "const"):
            model.var(name)
            lo, hi = model.lower[name], model.upper[name]
            rows = np.nonzero((lo < 0) & (hi > 0))[0] if relu_only[name] else np.nonzero(hi > lo)[0]
            model.refine(name, rows)
        if hook is not None:
            hook(model, name)
    return model


def bounds_from_models(graph: Graph, models: list[Model], like: torch.Tensor) -> Bounds:
    """The Bounds dict (batch of boxes) held by one model per box."""
    out: Bounds = {}
    for name, n in graph.nodes.items():
        lo = torch.stack([torch.from_numpy(m.lower[name]) for m in models]).reshape(len(models), *n.shape)
        hi = torch.stack([torch.from_numpy(m.upper[name]) for m in models]).reshape(len(models), *n.shape)
        out[name] = (lo.to(like.dtype), hi.to(like.dtype))
    return out


def refine_bounds(graph: Graph, lower, upper, pre: Bounds | None = None, lines: str = "tight",
                  time_limit: float | None = None) -> Bounds:
    """Intermediate bounds tightened layer by layer with LPs (starting from ``pre``, default full CROWN)."""
    lower, upper = _as_boxes(graph, lower, upper)
    pre = crown_bounds(graph, lower, upper, lines) if pre is None else pre
    models = [refine_model(Model(graph, pre, b, time_limit=time_limit)) for b in range(lower.shape[0])]
    return bounds_from_models(graph, models, lower)


def model_bounds(model: Model, C: np.ndarray, upper: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sound lower and upper bounds of each row of C (S, n_outputs) times the output, from a built model.

    ``upper=False`` solves only the lower bounds (the upper ones are then +inf).
    """
    lo, hi = np.empty(C.shape[0]), np.full(C.shape[0], math.inf)
    for s in range(C.shape[0]):
        if upper:
            lo[s], hi[s] = model.bound_node(model.graph.output_name, C[s])
        else:
            cost, off = model.objective(model.graph.output_name, C[s])
            lo[s] = model.minimize(cost, off).bound
    return lo, hi


def lp_bounds(graph: Graph, lower, upper, C=None, pre: Bounds | None = None, refine: bool = False,
              lines: str = "tight", encoders: dict[str, Encoder] | None = None,
              time_limit: float | None = None, intersect: bool = True,
              hook: Callable[[Model, str], None] | None = None,
              solve_upper: bool = True, model_cls: type[Model] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds of ``C · y`` over each box by the LP relaxation (triangle for ReLU).

    ``lower``/``upper``: (B, n_inputs); ``C``: (B, S, n_outputs) or (S, n_outputs), default identity.
    ``pre``: intermediate bounds (default full CROWN with ``lines``); ``refine`` tightens them with LPs
    first. With ``intersect`` the result is also intersected with CROWN's bounds from the same intermediate
    bounds (both sound). ``hook(model, name)`` runs after each node is added (see :func:`refine_model`);
    ``solve_upper=False`` solves only the lower bounds (the upper ones then come from CROWN alone, or are +inf).
    ``model_cls``: a :class:`Model` subclass to build (kPoly's adds cutting planes to ``minimize``).
    Returns (lower, upper), each (B, S), in the dtype of ``lower``.
    """
    dtype = torch.as_tensor(lower).dtype if torch.is_tensor(lower) else torch.float64
    lower, upper = _as_boxes(graph, lower, upper)
    B = lower.shape[0]
    C = torch.eye(graph.n_outputs, dtype=torch.float64) if C is None else torch.as_tensor(C).to(torch.float64)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    pre = crown_bounds(graph, lower, upper, lines) if pre is None else pre
    pre = {k: (v[0].to(torch.float64), v[1].to(torch.float64)) for k, v in pre.items()}
    pre[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
    lo, hi = torch.empty(B, C.shape[1], dtype=torch.float64), torch.empty(B, C.shape[1], dtype=torch.float64)
    models = []
    for b in range(B):
        m = (model_cls or Model)(graph, pre, b, encoders=encoders, time_limit=time_limit)
        m = refine_model(m, hook, refine) if refine or hook is not None else m.build()
        models.append(m)
        lb, ub = model_bounds(m, C[b].numpy(), solve_upper)
        lo[b], hi[b] = torch.from_numpy(lb), torch.from_numpy(ub)
    if intersect:
        bounds = bounds_from_models(graph, models, lower)
        out = graph.output
        bounds[graph.input_name] = (lower.reshape(B, *graph.input_shape), upper.reshape(B, *graph.input_shape))
        c_lo, c_hi = spec_bounds(graph, out.name, C.reshape(B, C.shape[1], *out.shape), bounds, lines)
        i_lo, i_hi = spec_interval(C, bounds[out.name])
        lo = torch.maximum(lo, torch.maximum(c_lo, i_lo))
        hi = torch.minimum(hi, torch.minimum(c_hi, i_hi))
    if dtype != torch.float64:
        lo = torch.nextafter(lo.to(dtype), torch.tensor(-math.inf, dtype=dtype))
        hi = torch.nextafter(hi.to(dtype), torch.tensor(math.inf, dtype=dtype))
    return lo, hi
