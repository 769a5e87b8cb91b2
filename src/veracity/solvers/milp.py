"""Exact mixed-integer models of piecewise-linear graphs (ReLU, LeakyReLU, max pooling, any linear op).

Each unstable ReLU gets a binary and big-M rows built from intermediate bounds (default: full CROWN,
optionally refined by LPs), so the model's feasible outputs are exactly the network's outputs over the box.

Two entry points:

- :func:`milp_minimum` — the exact minimum of ``c · y`` over a box: a :class:`Minimum` with a lower
  bound, the value of the best input found (``x``, evaluated on the network in float64) and whether the
  solver proved optimality;
- :func:`decide_case` — a :class:`veracity.spec.Case` decided: ``("sat", x)`` with an input ``x`` whose
  network output (float64) lies in one of the case's regions (callers re-check it on the real network),
  ``("unsat",)``, or ``("unknown",)`` on a time limit or when the solver's point does not survive the
  float64 check.

Soundness: ``sat`` is checked on the network. ``unsat`` and the lower bounds rest on the solver's branch and
bound, which works to tolerances (1e-6 feasibility); the region is therefore relaxed by ``UNSAT_MARGIN``
(relative to its right-hand side) before infeasibility is taken as a proof, and lower bounds are lowered by
the same relative margin. Use the LP (:mod:`veracity.solvers.lp`) where a certificate-backed bound is needed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from veracity.bounds.crown import crown_bounds
from veracity.bounds.ibp import Bounds
from veracity.graph import ops
from veracity.graph.ir import Graph, UnsupportedError
from veracity.solvers.lp import INF, PIECEWISE_LINEAR, Encoder, Model, refine_model
from veracity.spec.core import Case

UNSAT_MARGIN = 1e-6
# HiGHS's MIP presolve does not check the time limit: with 918 binaries (mnist_fc 256x6) it ran 18 s past a
# 7 s limit; with 45 it took 0.6 s and was what let the solve finish. Larger models are solved without it.
PRESOLVE_MAX_BINARIES = 300
# A bound solve needs the dual bound only: without presolve and the primal heuristics (which took most of
# the LP iterations at the root), 20 s of refinement narrowed mnist_fc 256x4 prop_13_0.05's third ReLU layer
# by 27.8 in summed width, not 9.7, and 256x6 prop_9_0.03's fourth by 19.1, not 2.7
# (python bench/refine_options.py).
REFINE_OPTIONS = {"threads": 1, "presolve": "off", "mip_heuristic_effort": 0.0,
                  "mip_heuristic_run_feasibility_jump": False, "mip_heuristic_run_rens": False,
                  "mip_heuristic_run_rins": False, "mip_heuristic_run_root_reduced_cost": False}


@dataclass
class Minimum:
    """Result of :func:`milp_minimum`: ``lower <= min c·y <= upper``; ``upper = c·f(x)`` when x is set."""

    status: str  # "optimal" (proved) | "time_limit" | "infeasible" (never for a valid box) | solver's word
    lower: float
    upper: float
    x: np.ndarray | None


def _unsupported(graph: Graph, encoders: dict[str, Encoder] | None = None) -> list[str]:
    ok = set(PIECEWISE_LINEAR) | set(encoders or {}) | {"input", "const"}
    return sorted({n.op for n in graph.nodes.values() if n.op not in ok and not ops.OPS[n.op].linear})


def supports(graph: Graph) -> bool:
    """Whether the default encoders model ``graph`` exactly (every op linear or piecewise linear)."""
    return not _unsupported(graph)


def _check_graph(graph: Graph, encoders: dict[str, Encoder] | None) -> None:
    bad = _unsupported(graph, encoders)
    if bad:
        raise UnsupportedError(f"the MILP handles piecewise-linear graphs ({', '.join(PIECEWISE_LINEAR)} and linear "
                               f"ops); this graph has {', '.join(bad)} (pass encoders= for these)")


def _box(graph: Graph, lower, upper) -> tuple[torch.Tensor, torch.Tensor]:
    lo = lower.to(torch.float64) if torch.is_tensor(lower) else torch.tensor(np.array(lower, np.float64))
    hi = upper.to(torch.float64) if torch.is_tensor(upper) else torch.tensor(np.array(upper, np.float64))
    return lo.reshape(1, -1), hi.reshape(1, -1)


def build_milp(graph: Graph, lower, upper, pre: Bounds | None = None, refine: bool = False,
               encoders: dict[str, Encoder] | None = None, time_limit: float | None = None) -> Model:
    """The exact model of ``graph`` over one box (``lower``/``upper``: n_inputs values each).

    ``pre``: intermediate bounds with batch size 1 (default full CROWN); ``refine`` first tightens them with
    LPs (fewer, tighter big-M rows; worth it beyond a few dozen unstable neurons).
    """
    _check_graph(graph, encoders)
    lo, hi = _box(graph, lower, upper)
    pre = crown_bounds(graph, lo, hi) if pre is None else dict(pre)
    pre[graph.input_name] = (lo.reshape(1, *graph.input_shape), hi.reshape(1, *graph.input_shape))
    if refine:
        lp = refine_model(Model(graph, pre, 0, time_limit=time_limit))
        pre = _bounds_of(lp)
    m = Model(graph, pre, 0, encoders=encoders, integer=True, time_limit=time_limit)
    m.h.setOptionValue("mip_rel_gap", 0.0)
    m.h.setOptionValue("mip_abs_gap", 0.0)
    m.build()
    limit_presolve(m)
    return m


def limit_presolve(m: Model) -> None:
    """Switch HiGHS's MIP presolve off on a model with more than ``PRESOLVE_MAX_BINARIES`` binaries."""
    if sum(m.integrality) > PRESOLVE_MAX_BINARIES:
        m.h.setOptionValue("presolve", "off")


def _bounds_of(m: Model) -> Bounds:
    """The node bounds a model holds, as a Bounds dict with batch size 1."""
    return {k: (torch.from_numpy(m.lower[k]).reshape(1, *n.shape), torch.from_numpy(m.upper[k]).reshape(1, *n.shape))
            for k, n in m.graph.nodes.items()}


def _inputs(m: Model) -> np.ndarray:
    sol = m.h.getSolution()
    x = np.asarray(sol.col_value, np.float64)[m.vars[m.graph.input_name]]
    return np.clip(x, m.lower[m.graph.input_name], m.upper[m.graph.input_name])


def _evaluate(graph: Graph, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return graph(torch.from_numpy(x).reshape(1, -1)).reshape(-1).numpy()


def _status(m: Model) -> str:
    s = m.h.getModelStatus()
    return {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time_limit",
            highspy.HighsModelStatus.kInfeasible: "infeasible",
            # every variable is bounded, so "infeasible or unbounded" (from presolve) means infeasible
            highspy.HighsModelStatus.kUnboundedOrInfeasible: "infeasible",
            highspy.HighsModelStatus.kObjectiveTarget: "target"}.get(s, m.h.modelStatusToString(s))


def milp_minimum(graph: Graph, lower, upper, c, pre: Bounds | None = None, refine: bool = False,
                 time_limit: float | None = 60.0, encoders: dict[str, Encoder] | None = None) -> Minimum:
    """The minimum of ``c · f(x)`` over the box ``lower <= x <= upper`` (one box; c: n_outputs values)."""
    m = build_milp(graph, lower, upper, pre, refine, encoders, time_limit)
    cost, off = m.objective(graph.output_name, np.asarray(c, np.float64))
    if not any(m.integrality):  # every neuron stable: an LP, with a certificate-backed bound
        sol = m.minimize(cost, off)
        status, lower_v = _status(m), sol.bound
    else:
        _set_cost(m, cost)
        m.h.run()
        status = _status(m)
        bound = m.h.getInfo().mip_dual_bound + off if status in ("optimal", "time_limit") else -math.inf
        lower_v = bound - UNSAT_MARGIN * (1 + abs(bound)) if math.isfinite(bound) else -math.inf
    x, upper_v = None, math.inf
    if m.h.getSolution().value_valid and status != "infeasible":
        x = _inputs(m)
        upper_v = float(np.asarray(c, np.float64) @ _evaluate(graph, x))
    return Minimum(status, min(lower_v, upper_v), upper_v, x)


def milp_bounds(graph: Graph, lower, upper, C, pre: Bounds | None = None, refine: bool = False,
                time_limit: float | None = 60.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (B, S) of ``C · y`` by exact minima (boxes (B, n_inputs); C (S, n) or (B, S, n))."""
    lower = torch.as_tensor(lower, dtype=torch.float64).reshape(-1, graph.n_inputs)
    upper = torch.as_tensor(upper, dtype=torch.float64).reshape(-1, graph.n_inputs)
    B = lower.shape[0]
    C = torch.as_tensor(C, dtype=torch.float64)
    C = C.unsqueeze(0).expand(B, -1, -1) if C.dim() == 2 else C
    lo, hi = torch.empty(B, C.shape[1], dtype=torch.float64), torch.empty(B, C.shape[1], dtype=torch.float64)
    for b in range(B):
        p = None if pre is None else {k: (v[0][b : b + 1], v[1][b : b + 1]) for k, v in pre.items()}
        for s in range(C.shape[1]):
            c = C[b, s].numpy()
            lo[b, s] = milp_minimum(graph, lower[b], upper[b], c, p, refine, time_limit).lower
            hi[b, s] = -milp_minimum(graph, lower[b], upper[b], -c, p, refine, time_limit).lower
    return lo, hi


class NodeRefiner:
    """Exact bounds of intermediate nodes by MILP, one node at a time, over one box (α,β-CROWN's
    MILP-refined intermediate bounds): the model holds the graph up to the node being refined, every
    unstable ReLU before it with a binary, so each solve's dual bound is a bound of the node over the box.

    Each element gets a minimisation and (unless that already shows it is >= 0) a maximisation, each
    under ``solve_limit`` seconds; a solve stopped by its limit still gives HiGHS's dual bound, which is
    lowered by ``UNSAT_MARGIN`` (relative) for the solver's tolerances, like every MILP bound here.
    """

    def __init__(self, graph: Graph, lower, upper, bounds: Bounds, solve_limit: float = 1.0):
        _check_graph(graph, None)
        lo, hi = _box(graph, lower, upper)
        pre = dict(bounds)
        pre[graph.input_name] = (lo.reshape(1, *graph.input_shape), hi.reshape(1, *graph.input_shape))
        self.m = Model(graph, pre, 0, integer=True, compact=True)
        for option, value in REFINE_OPTIONS.items():
            self.m.h.setOptionValue(option, value)
        self.solve_limit = solve_limit
        self.solves = 0

    def tighten(self, bounds: Bounds) -> None:
        """Intersect the bounds the model holds (and will use for nodes not yet added) with ``bounds``."""
        for k, (lo, hi) in bounds.items():
            if k in self.m.lower:
                self.m.tighten(k, lo.reshape(-1).double().numpy(), hi.reshape(-1).double().numpy())

    def refine(self, name: str, deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bounds (flat float64) of node ``name``: those held, tightened by MILP at the elements they leave
        unstable (widest first), until ``deadline``."""
        m = self.m
        for k in m.graph.nodes:
            if k not in m.added:
                m.add_node(k)
            if k == name:
                break
        M, c0 = m.expr(name)
        lo, hi = m.lower[name].copy(), m.upper[name].copy()
        todo = np.nonzero((lo < 0) & (hi > 0))[0]
        todo = todo[np.argsort(-np.minimum(-lo[todo], hi[todo]), kind="stable")]
        for e in todo.tolist():
            for sign in (1.0, -1.0):
                left = math.inf if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                m.h.setOptionValue("time_limit", max(1e-3, min(self.solve_limit, left)))
                self.solves += 1
                if not any(m.integrality):  # no unstable ReLU before the node: an LP, certificate-backed
                    b = m.minimize(sign * M[e], sign * c0[e]).bound
                else:
                    _set_cost(m, sign * M[e])
                    m.h.run()
                    if _status(m) not in ("optimal", "time_limit"):
                        continue
                    b = m.h.getInfo().mip_dual_bound + sign * c0[e]
                    b -= UNSAT_MARGIN * (1 + abs(b))
                if not math.isfinite(b):
                    continue
                if sign > 0:
                    lo[e] = max(lo[e], b)
                    if lo[e] >= 0:
                        break
                else:
                    hi[e] = min(hi[e], -b)
        m.tighten(name, lo, hi)
        return m.lower[name], m.upper[name]


def _set_cost(m: Model, cost) -> None:
    c = np.asarray(sp.csr_matrix(cost).todense()).reshape(-1) if sp.issparse(cost) else np.asarray(cost)
    full = np.zeros(m.n_cols)
    full[: c.size] = c
    m.h.changeColsCost(m.n_cols, np.arange(m.n_cols, dtype=np.int32), full)


def decide_case(graph: Graph, case: Case, pre: Bounds | None = None, refine: bool = False,
                time_limit: float | None = 60.0, encoders: dict[str, Encoder] | None = None) -> tuple:
    """Decide whether some x in ``case.box`` maps into one of ``case.regions``.

    Returns ``("sat", x)`` (x: float64 array of n_inputs, checked in float64 on the graph), ``("unsat",)``,
    or ``("unknown",)``. Each region is one MILP: minimise t subject to ``A y - b <= t`` and
    ``t <= UNSAT_MARGIN * (1 + |b|)``; infeasible means no input reaches the region. The solver stops at the
    first point with t below ``-UNSAT_MARGIN`` (a counterexample with some room for rounding).
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    unknown = False
    base = None
    for region in case.regions:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return ("unknown",)
        if base is None:
            base = build_milp(graph, case.box.lower, case.box.upper, pre, refine, encoders, left)
            m = base
        else:  # a fresh model per region (HiGHS keeps MIP state); the bounds are reused
            pre = _bounds_of(base)
            m = build_milp(graph, case.box.lower, case.box.upper, pre, False, encoders, left)
        if left is not None:
            m.h.setOptionValue("time_limit", max(left, 1e-3))
        res = _decide_region(graph, m, region.A, region.b)
        if res[0] == "sat":
            return res
        unknown |= res[0] == "unknown"
    return ("unknown",) if unknown else ("unsat",)


def target_region(graph: Graph, m: Model, A, b) -> None:
    """Make ``m`` look for a point with ``A y <= b``: minimise t subject to ``A y - b <= t`` and
    ``t <= UNSAT_MARGIN * (1 + |b|)``, stopping at the first t below minus that margin."""
    M, c0 = m.expr(graph.output_name)
    A = np.asarray(A, np.float64)
    b = np.asarray(b, np.float64)
    margin = UNSAT_MARGIN * (1 + np.abs(b).max())
    t = m.add_cols([-INF], [margin])
    rows = sp.csr_matrix(A) @ M
    rows = sp.hstack([rows[:, : t[0]], -np.ones((A.shape[0], 1))], format="csr")
    m.add_rows(rows, np.full(A.shape[0], -INF), b - A @ c0)
    cost = np.zeros(m.n_cols)
    cost[t[0]] = 1.0
    _set_cost(m, cost)
    m.h.setOptionValue("objective_target", -margin)


def _decide_region(graph: Graph, m: Model, A: np.ndarray, b: np.ndarray) -> tuple:
    target_region(graph, m, A, b)
    m.h.run()
    status = _status(m)
    if status == "infeasible":
        return ("unsat",)
    if not m.h.getSolution().value_valid:
        return ("unknown",)
    x = _inputs(m)
    y = _evaluate(graph, x)
    if np.all(A @ y <= b):
        return ("sat", x)
    return ("unknown",)


__all__ = ["Minimum", "NodeRefiner", "UNSAT_MARGIN", "build_milp", "decide_case", "limit_presolve", "milp_bounds",
           "milp_minimum", "supports", "target_region"]
