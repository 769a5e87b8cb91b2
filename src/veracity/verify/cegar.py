"""Counterexample-guided abstraction refinement (CEGAR) for sigmoid and tanh networks.

Every sigmoid/tanh element with pre-activation bounds [l, u] is abstracted by a disjunctive set that
contains the graph of the function on [l, u], encoded in a HiGHS MILP with the rest of the network
(:class:`veracity.solvers.lp.Model`, ReLUs exact):

- both functions are convex for z <= 0 and concave for z >= 0. An interval with l < 0 < u gets a binary
  ``s`` for the sign of z (``z <= u s``, ``z >= l (1 - s)``) and its two halves are encoded apart; a
  one-sided interval is one half;
- on a convex half, tangents (sound there at any point of the half) bound y from below and the secant
  chain through the half's breakpoints from above; on a concave half the other way round. A chain of k
  chords is ``y <= chord_j(z)`` for one of them (k binaries, or none when k = 1), which is exactly
  ``y <= chain(z)`` because a convex half's chain is the maximum of its chords' lines;
- every row of a half is switched off by a big-M term when z lies in the other half, and the lines of
  :mod:`veracity.relax` over the whole of [l, u] are always added, so the MILP's LP relaxation is never
  looser than the plain LP's. Intercepts are loosened by ``ROW_SLACK`` so rounding cannot cut off a
  point of the exact function.

The loop (:func:`cegar_verify`) solves one feasibility MILP per bad region ``A y <= b`` (relaxed by
``UNSAT_MARGIN`` as in :func:`veracity.solvers.milp.decide_case`). Infeasible: the region is unreachable.
Feasible: the candidate input x* is checked on the real network (:class:`veracity.verify.attack.Checker`);
a real counterexample is ``sat``; otherwise every element whose abstract value deviates from f at its
abstract pre-activation ẑ is refined: ẑ becomes a tangent point where the point lies on the tangent side
(below f on a convex half, above f on a concave one) and a new breakpoint of the chain otherwise. Either
way the new rows exclude (ẑ, ŷ), so the same spurious point cannot come back. The loop ends with a
verdict, the timeout, or ``max_refinements``.

Soundness: ``sat`` is re-checked on the network. ``unsat`` rests on HiGHS's branch and bound, which works
to tolerances; the region is relaxed by ``UNSAT_MARGIN`` before infeasibility is taken as a proof (the
same trust as the ReLU MILP).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np
import torch
from scipy.special import expit

from veracity import relax
from veracity.bounds.crown import crown_bounds
from veracity.bounds.ibp import Bounds
from veracity.graph import ops
from veracity.graph.ir import Graph, Node, UnsupportedError
from veracity.solvers.lp import EPS, INF, PIECEWISE_LINEAR, ROW_SLACK, S_SHAPED_ALPHAS, Model
from veracity.solvers.milp import limit_presolve, target_region
from veracity.spec.core import Spec
from veracity.verify.attack import Checker
from veracity.verify.result import Result

S_SHAPED = ("sigmoid", "tanh")
REFINE_TOL = 1e-6  # an element is refined when its abstract value is this far from f (absolute)
MIN_GAP = 1e-6  # breakpoints closer than this (relative to the interval) are not added
DEFAULT_MAX_REFINEMENTS = 30
DEFAULT_METHODS = ("crown", "alpha")


def _f(op: str, z):
    return expit(z) if op == "sigmoid" else np.tanh(z)


def _df(op: str, z):
    if op == "sigmoid":
        s = expit(z)
        return s * (1 - s)
    return 1 - np.tanh(z) ** 2


def _slack(a: float, b: float) -> float:
    return ROW_SLACK * (1 + abs(a) + abs(b))


# -- the abstraction ---------------------------------------------------------------------------------------


@dataclass
class Half:
    """One curvature side of an element's interval: z in [lo, hi], convex (hi <= 0) or concave (lo >= 0)."""

    lo: float
    hi: float
    convex: bool
    tangents: list[float] = field(default_factory=list)
    breaks: list[float] = field(default_factory=list)  # sorted, from lo to hi

    def tangent_line(self, op: str, t: float) -> tuple[float, float]:
        k = float(_df(op, t))
        return k, float(_f(op, t)) - k * t

    def chords(self, op: str) -> list[tuple[float, float, float, float]]:
        """(a, b, slope, intercept) of each chord of the chain."""
        out = []
        for a, b in zip(self.breaks[:-1], self.breaks[1:], strict=True):
            fa, fb = float(_f(op, a)), float(_f(op, b))
            k = (fb - fa) / (b - a)
            out.append((a, b, k, fa - k * a))
        return out

    def interval(self, op: str, z: float) -> tuple[float, float]:
        """The range of y the half allows at z (z within the half), slack included."""
        s = _slack(self.lo, self.hi)
        tan = [k * z + c for k, c in (self.tangent_line(op, t) for t in self.tangents)]
        chain = [k * z + c for a, b, k, c in self.chords(op) if a <= z <= b] if self.hi > self.lo else []
        if self.hi <= self.lo:  # a single point
            v = float(_f(op, self.lo))
            return v - s, v + s
        if self.convex:
            return (max(tan) - s if tan else -math.inf), (max(chain) + s if chain else math.inf)
        return (max(chain) - s if chain else -math.inf), (min(tan) + s if tan else math.inf)


@dataclass
class Element:
    halves: list[Half]  # one (one-sided interval) or two (convex first, then concave)


@dataclass
class _Ctx:
    """Rows of one element: ``y = col yi``, ``z = col zi`` with z in [li, ui], y in [y0, y1]."""

    rows: list
    yi: int
    zi: int
    li: float
    ui: float
    y0: float
    y1: float
    slack: float

    def line(self, k: float, c: float, lower_side: bool, gate: tuple[float, list[int], list[float]]) -> None:
        """``y >= k z + c`` (lower side) or ``y <= k z + c``, switched off by big-M unless the gate
        ``g = off + vals . cols`` is 1."""
        off, gcols, gvals = gate
        lo_line, hi_line = min(k * self.li, k * self.ui) + c, max(k * self.li, k * self.ui) + c
        M = (hi_line - self.y0) if lower_side else (self.y1 - lo_line)
        M = max(M, 0.0) * (1 + 1e-9) + 1e-9
        cols = [self.yi, self.zi, *gcols]
        if lower_side:  # y - k z + M (1 - g) >= c - slack
            self.rows.append((cols, [1.0, -k, *[-M * v for v in gvals]], c - self.slack - M * (1 - off), INF))
        else:  # y - k z - M (1 - g) <= c + slack
            self.rows.append((cols, [1.0, -k, *[M * v for v in gvals]], -INF, c + self.slack + M * (1 - off)))


class Abstraction:
    """The current abstraction of every sigmoid/tanh element of a graph, keyed by node name.

    ``points`` interior breakpoints and tangent points are spread evenly over each half at the start
    (0: one chord and the tangent at the middle; the paper's initial abstraction is ``points=1``).
    """

    def __init__(self, graph: Graph, points: int = 0):
        self.graph = graph
        self.points = points
        self.nodes: dict[str, list[Element]] = {}
        self.bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # pre-activation bounds the abstraction is for
        self._lines: dict[str, tuple[list, tuple[np.ndarray, np.ndarray]]] = {}
        self._straddle: dict[str, np.ndarray] = {}
        self.refinements = 0

    def init_node(self, node: Node, l: np.ndarray, u: np.ndarray) -> list[Element]:
        els = []
        q = [(i + 1) / (self.points + 2) for i in range(self.points + 1)]  # interior fractions for tangents
        qb = [(i + 1) / (self.points + 1) for i in range(self.points)]  # interior fractions for breakpoints
        for lo, hi in zip(l.tolist(), u.tolist(), strict=True):
            parts = [(lo, min(hi, 0.0), True)] if hi <= 0 else [(max(lo, 0.0), hi, False)] if lo >= 0 else \
                [(lo, 0.0, True), (0.0, hi, False)]
            halves = []
            for a, b, convex in parts:
                tangents = [a + f * (b - a) for f in q] if b > a else [a]
                if len(parts) == 1 and b > a:  # also the ends: the whole-interval lines are then not needed
                    tangents = [a, *tangents, b]
                breaks = [a] + [a + f * (b - a) for f in qb] + [b] if b > a else [a, b]
                halves.append(Half(a, b, convex, tangents, breaks))
            els.append(Element(halves))
        self.nodes[node.name] = els
        self.bounds[node.name] = (l.copy(), u.copy())
        lt, ut = torch.from_numpy(l), torch.from_numpy(u)
        fn = relax.sigmoid if node.op == "sigmoid" else relax.tanh
        lines = [fn(lt, ut, torch.full_like(lt, al), torch.full_like(lt, al)) for al in S_SHAPED_ALPHAS]
        self._straddle[node.name] = np.array([len(e.halves) == 2 for e in els], dtype=bool)
        self._lines[node.name] = ([tuple(t.numpy() for t in (b.lw, b.lb, b.uw, b.ub)) for b in lines],
                                  (_f(node.op, l) - 4 * EPS, _f(node.op, u) + 4 * EPS))
        return els

    def _global_ok(self, name: str, i: int, z: float, y: float, tol: float) -> bool:
        """Whether (z, y) satisfies the whole-interval lines and the value bounds of element ``i``."""
        lines, (y0, y1) = self._lines[name]
        if not y0[i] - tol <= y <= y1[i] + tol:
            return False
        if not self._straddle[name][i]:
            return True
        return all(lw[i] * z + lb[i] - tol <= y <= uw[i] * z + ub[i] + tol for lw, lb, uw, ub in lines)

    def contains(self, name: str, i: int, z: float, y: float, tol: float = 0.0) -> bool:
        """Whether (z, y) lies in the abstraction of element ``i`` of node ``name`` (up to ``tol``): the set the
        encoder's rows describe (halves, whole-interval lines and value bounds)."""
        op = self.graph.nodes[name].op
        if not self._global_ok(name, i, z, y, tol):
            return False
        for h in self.nodes[name][i].halves:
            if h.lo - tol <= z <= h.hi + tol:
                zc = min(max(z, h.lo), h.hi)
                lo, hi = h.interval(op, zc)
                if lo - tol <= y <= hi + tol:
                    return True
        return False

    def refine_element(self, name: str, i: int, z: float, y: float) -> str | None:
        """Refine element ``i`` at the spurious point (z, y): "tangent", "breakpoint" or None (nothing to add)."""
        op = self.graph.nodes[name].op
        el = self.nodes[name][i]
        lo_all, hi_all = el.halves[0].lo, el.halves[-1].hi
        z = min(max(z, lo_all), hi_all)
        dev = y - float(_f(op, z))
        if abs(dev) <= REFINE_TOL:
            return None
        if len(el.halves) == 2:
            h = el.halves[0] if (z < 0 or (z == 0 and dev < 0)) else el.halves[1]
        else:
            h = el.halves[0]
        tangent_side = (dev < 0) == h.convex  # below f on a convex half, above f on a concave half
        if tangent_side:
            if z in h.tangents:
                return None
            h.tangents.append(z)
            return "tangent"
        gap = MIN_GAP * (1 + abs(h.lo) + abs(h.hi))
        if any(abs(z - b) <= gap for b in h.breaks):
            return None
        h.breaks = sorted([*h.breaks, z])
        return "breakpoint"

    def encoder(self, model: Model, node: Node, ins: list[np.ndarray], out: np.ndarray) -> None:
        """The abstraction of ``node`` as rows of ``model`` (binaries integer when the model is)."""
        (z,), y = ins, out
        (zname,) = node.inputs
        l, u = model.lower[zname], model.upper[zname]
        els = self.nodes.get(node.name)
        if els is None or len(els) != l.size:
            els = self.init_node(node, l, u)
        ylo, yhi = model.lower[node.name], model.upper[node.name]
        # the whole-interval lines where the interval straddles 0 (never looser than the plain LP; on one-sided
        # intervals they are the tangents at both ends and the middle and the chord, which the half has)
        st = self._straddle[node.name]
        for lw, lb, uw, ub in self._lines[node.name][0]:
            model.pairs(y[st], 1.0, z[st], -lw[st], lb[st], INF)
            model.pairs(y[st], 1.0, z[st], -uw[st], -INF, ub[st])
        rows: list[tuple[list[int], list[float], float, float]] = []  # (cols, vals, lower, upper)

        def binary(n: int) -> np.ndarray:
            return model.add_cols(np.zeros(n), np.ones(n), integer=model.integer)

        for i, el in enumerate(els):
            zi, yi = int(z[i]), int(y[i])
            li, ui = float(min(l[i], el.halves[0].lo)), float(max(u[i], el.halves[-1].hi))
            y0, y1 = float(ylo[i]), float(yhi[i])
            if len(el.halves) == 2:
                s = int(binary(1)[0])
                rows.append(([zi, s], [1.0, -ui], -INF, 0.0))  # z <= u s
                rows.append(([zi, s], [1.0, li], li, INF))  # z >= l (1 - s)
                # indicator g = a + b s of each half: convex 1 - s, concave s
                gates = [(1.0, -1.0), (0.0, 1.0)]
            else:
                s, gates = None, [(1.0, 0.0)]
            for h, (ga, gb) in zip(el.halves, gates, strict=True):
                ctx = _Ctx(rows, yi, zi, li, ui, y0, y1, _slack(li, ui))
                gate = (ga, [s] if (s is not None and gb != 0) else [], [gb] if (s is not None and gb != 0) else [])
                # tangents: lower on a convex half, upper on a concave one
                for t in h.tangents:
                    ctx.line(*h.tangent_line(node.op, t), h.convex, gate)
                chords = h.chords(node.op) if h.hi > h.lo else []
                if len(chords) == 1:
                    ctx.line(chords[0][2], chords[0][3], not h.convex, gate)
                elif len(chords) > 1:
                    d = binary(len(chords))
                    ga, gcols, gvals = gate
                    # sum_j d_j = g
                    rows.append(([*d.tolist(), *gcols], [1.0] * len(chords) + [-v for v in gvals], ga, ga))
                    for j, (_, _, k, c) in enumerate(chords):
                        ctx.line(k, c, not h.convex, (0.0, [int(d[j])], [1.0]))
        if rows:
            r = np.concatenate([np.full(len(c), k) for k, (c, _, _, _) in enumerate(rows)])
            cols = np.concatenate([np.asarray(c, np.int64) for c, _, _, _ in rows])
            vals = np.concatenate([np.asarray(v, np.float64) for _, v, _, _ in rows])
            model.add_coo(r, cols, vals, [lo for _, _, lo, _ in rows], [hi for _, _, _, hi in rows])

    def encoders(self) -> dict:
        return {op: self.encoder for op in S_SHAPED}


# -- one region ---------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A solution of the abstraction: the input and every sigmoid/tanh element's (ẑ, ŷ)."""

    x: np.ndarray
    points: dict[str, tuple[np.ndarray, np.ndarray]]


def _status(m: Model) -> str:
    s = m.h.getModelStatus()
    if s in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return "infeasible"
    if s == highspy.HighsModelStatus.kTimeLimit:
        return "time_limit"
    return "feasible" if m.h.getSolution().value_valid else m.h.modelStatusToString(s)


def build_model(graph: Graph, abstraction: Abstraction, pre: Bounds, time_limit: float | None = None,
                integer: bool = True) -> Model:
    """The graph over the box of ``pre`` (batch 1) with sigmoid/tanh encoded by ``abstraction``."""
    m = Model(graph, pre, 0, encoders=abstraction.encoders(), integer=integer, time_limit=time_limit)
    m.h.setOptionValue("mip_rel_gap", 0.0)
    m.h.setOptionValue("mip_abs_gap", 0.0)
    m.build()
    limit_presolve(m)  # HiGHS's MIP presolve ignores the time limit (tens of seconds on 784 sigmoids)
    return m


def solve_region(graph: Graph, m: Model, A: np.ndarray, b: np.ndarray,
                 deadline: float | None = None) -> tuple[str, Candidate | None]:
    """Look for a point of the model with ``A y <= b`` (relaxed by UNSAT_MARGIN): (status, candidate)."""
    target_region(graph, m, A, b)
    if deadline is not None:
        m.h.setOptionValue("time_limit", max(deadline - time.monotonic(), 1e-3))
    m.h.run()
    status = _status(m)
    if status != "feasible":
        return status, None
    v = np.asarray(m.h.getSolution().col_value, np.float64)
    inp = graph.input_name
    x = np.clip(v[m.vars[inp]], m.lower[inp], m.upper[inp])
    pts = {}
    for name, n in graph.nodes.items():
        if n.op in S_SHAPED:
            pts[name] = (v[m.vars[n.inputs[0]]], v[m.vars[name]])
    return "feasible", Candidate(x, pts)


def refine(abstraction: Abstraction, cand: Candidate) -> int:
    """Refine every element whose candidate value deviates from the function; the number refined."""
    n = 0
    for name, (zs, ys) in cand.points.items():
        op = abstraction.graph.nodes[name].op
        dev = np.abs(ys - _f(op, zs))
        for i in np.nonzero(dev > REFINE_TOL)[0].tolist():
            if abstraction.refine_element(name, i, float(zs[i]), float(ys[i])) is not None:
                n += 1
    abstraction.refinements += n
    return n


@dataclass
class RegionOutcome:
    status: str  # "sat" | "unsat" | "unknown" | "timeout"
    witness: tuple | None = None
    iterations: int = 0
    refinements: int = 0
    message: str = ""


def cegar_region(graph: Graph, pre: Bounds, A: np.ndarray, b: np.ndarray, check, max_refinements: int,
                 deadline: float | None, points: int = 0, tally: StageOutcome | None = None) -> RegionOutcome:
    """The CEGAR loop for one bad region; ``check(x)`` returns a confirmed (x, y) or None. ``tally``
    counts solves and refinements as they happen (so they survive an interrupt)."""
    ab = Abstraction(graph, points)
    it = 0
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return RegionOutcome("timeout", iterations=it, refinements=ab.refinements)
        m = build_model(graph, ab, pre)
        if deadline is not None and time.monotonic() >= deadline:
            return RegionOutcome("timeout", iterations=it, refinements=ab.refinements)
        status, cand = solve_region(graph, m, A, b, deadline)
        it += 1
        if tally is not None:
            tally.solves += 1
        if status == "infeasible":
            return RegionOutcome("unsat", iterations=it, refinements=ab.refinements)
        if status == "time_limit":
            return RegionOutcome("timeout", iterations=it, refinements=ab.refinements)
        if cand is None:
            return RegionOutcome("unknown", iterations=it, refinements=ab.refinements, message=f"HiGHS: {status}")
        hit = check(cand.x)
        if hit is not None:
            return RegionOutcome("sat", hit, it, ab.refinements)
        if it > max_refinements:
            return RegionOutcome("unknown", iterations=it, refinements=ab.refinements,
                                 message=f"refinement cap ({max_refinements}) reached")
        n = refine(ab, cand)
        if tally is not None:
            tally.refinements += n
        if n == 0:
            return RegionOutcome("unknown", iterations=it, refinements=ab.refinements,
                                 message="spurious candidate within tolerance of the function; nothing to refine")


# -- the verifier ----------------------------------------------------------------------------------------------


def _unsupported(graph: Graph) -> list[str]:
    ok = set(PIECEWISE_LINEAR) | set(S_SHAPED) | {"input", "const"}
    return sorted({n.op for n in graph.nodes.values() if n.op not in ok and not ops.OPS[n.op].linear})


def supports(graph: Graph) -> bool:
    """Whether CEGAR can encode ``graph`` (linear ops, ReLU-like, max pooling, sigmoid, tanh)."""
    return not _unsupported(graph)


def _check_graph(graph: Graph) -> None:
    bad = _unsupported(graph)
    if bad:
        raise UnsupportedError(f"CEGAR handles linear ops, {', '.join(PIECEWISE_LINEAR)} and sigmoid/tanh; "
                               f"this graph has {', '.join(bad)}")


def _case_bounds(pre: Bounds | None, graph: Graph, ci: int, n_cases: int, lo: np.ndarray, hi: np.ndarray) -> Bounds:
    lo_t, hi_t = torch.tensor(lo)[None], torch.tensor(hi)[None]
    if pre is None:
        out = crown_bounds(graph, lo_t, hi_t, "both")
    else:
        k = ci if next(iter(pre.values()))[0].shape[0] == n_cases else 0
        out = {name: (v[0][k : k + 1].to(torch.float64), v[1][k : k + 1].to(torch.float64)) for name, v in pre.items()}
    out = dict(out)
    out[graph.input_name] = (lo_t.reshape(1, *graph.input_shape), hi_t.reshape(1, *graph.input_shape))
    return out


@dataclass
class StageOutcome:
    """What :func:`cegar_stage` found: status, witness (x, y) for sat, solves and refinements, log lines."""

    status: str
    witness: tuple | None = None
    solves: int = 0
    refinements: int = 0
    message: str = ""
    log: list[str] = field(default_factory=list)


def cegar_stage(graph: Graph, spec: Spec, checker: Checker, open_: list[list[bool]], deadline: float | None = None,
                pre: Bounds | None = None, max_refinements: int = DEFAULT_MAX_REFINEMENTS,
                points: int = 0, out: StageOutcome | None = None) -> StageOutcome:
    """Decide the open regions (``open_[case][region]``, updated in place) by the CEGAR loop; ``out``, when
    given, is filled as the stage goes (its counts survive a timeout raised inside)."""
    _check_graph(graph)
    out = StageOutcome("unsat") if out is None else out
    undecided = []
    t0 = time.monotonic()
    for ci, case in enumerate(spec.cases):
        if not any(open_[ci]):
            continue
        case_pre = _case_bounds(pre, graph, ci, len(spec.cases), case.box.lower, case.box.upper)
        for ri, region in enumerate(case.regions):
            if not open_[ci][ri]:
                continue
            r = cegar_region(graph, case_pre, region.A, region.b, lambda x, ci=ci: checker.check(x, ci),
                             max_refinements, deadline, points, out)
            out.log.append(f"cegar case {ci} region {ri}: {r.status} after {r.iterations} solve(s), "
                           f"{r.refinements} refinement(s) ({time.monotonic() - t0:.2f}s)")
            if r.status in ("sat", "timeout"):
                out.status, out.witness = r.status, r.witness
                return out
            if r.status == "unsat":
                open_[ci][ri] = False
            else:
                undecided.append(r.message)
    if undecided:
        out.status, out.message = "unknown", f"{len(undecided)} region(s) undecided: {undecided[0]}"
    return out


def cegar_verify(graph: Graph, spec: Spec, timeout: float | None = None,
                 max_refinements: int = DEFAULT_MAX_REFINEMENTS, pre: Bounds | None = None,
                 methods: Sequence[str] = DEFAULT_METHODS, attack: bool = True, points: int = 0,
                 onnx_model: bytes | None = None) -> Result:
    """Decide ``spec`` on ``graph`` by CEGAR over sigmoid/tanh abstractions.

    Regions are first attacked (``attack``) and bounded by ``methods`` (e.g. crown, alpha); the open ones
    go through the CEGAR loop. ``pre``: intermediate bounds (batch 1 or one per case; default CROWN,
    tight and adaptive lines intersected). ``max_refinements``: refinement rounds per region (0: the
    initial abstraction only). ``points``: interior breakpoints/tangents per half at the start. The
    result's ``method`` is "cegar" when the loop decides, else the step that did ("attack", a bound
    method); ``log`` has one line per step and ``message`` the solves and refinements. This is the driver
    (:func:`veracity.verify.driver.verify`) with the CEGAR stage after the bounds and no branching.
    """
    from veracity.verify.driver import verify

    _check_graph(graph)
    options = {"pre": pre, "max_refinements": max_refinements, "points": points}
    return verify(graph, spec, timeout, methods=(*methods, "cegar"), onnx_model=onnx_model, attack=attack,
                  branch=False, restarts=8, cegar=options)


__all__ = ["Abstraction", "Candidate", "Half", "build_model", "cegar_region", "cegar_stage", "cegar_verify", "refine",
           "solve_region", "supports"]
