"""The verification strategy: attack first, then bounds from cheap to expensive, until a verdict.

A bad region ``A y <= b`` of a case is proven unreachable when some row has a lower bound of ``A_i y``
above ``b_i`` over the case's box. The property is proven (``unsat``) when every region of every case is.
Each method only sees the regions still open.

After the bounding methods: branch and bound (input splitting for few inputs, ReLU splitting otherwise),
then the exact MILP for piecewise-linear networks. A network with at most ``MILP_FIRST_UNSTABLE`` unstable
ReLUs in every open case goes to the MILP straight away (it decides such problems in milliseconds, where
splitting can take long near the decision boundary); otherwise branch and bound gets ``BAB_SHARE`` of the
time left and the MILP the rest.

ReLU splitting under a timeout first runs from α-CROWN's intermediate bounds for ``FIRST_SPLIT_SHARE`` of the
time left (this closes the easier instances in seconds); if that does not decide, the intermediate bounds
are tightened by MILP (``refine_stage``, ``REFINE_SHARE`` of the time left), and splitting and the MILP
start again from them. On mnist_fc 256x4 prop_14_0.05, 190 s of refinement moved the worst root margin
from -1.80 to +0.035; splitting from α-CROWN's root did not close it in 60 s (``python bench/relu_split.py
256x4:prop_14_0.05 --refine 200 --refine-last --split 60 --roots alpha``). Refinement gets most of the time: on
256x4 prop_5_0.05, about 140 s of it (``REFINE_SHARE`` 0.5) left the instance undecided at its 300 s timeout, while
about 220 s (0.8) let splitting close it, 245 s in (``python bench/vnncomp.py ../shared/benchmarks/mnist_fc
--match 256x4,prop_5_0.05 --refine-last --refine-share 0.5``, and 0.8). After refinement, splitting gets
``REFINED_BAB_SHARE`` of the time left and the MILP the rest: in the full mnist_fc and eran ReLU runs before
this share was raised from ``BAB_SHARE``, the MILP decided none of the instances it got, while splitting from
refined bounds closed 256x4 prop_13_0.05 in 31.2 s (``python bench/relu_split.py 256x4:prop_13_0.05 --refine
210 --refine-last --split 60 --roots ''``); with ``BAB_SHARE`` the driver timed out on it, with 0.9 it decided it
271 s in (``veracity run ../shared/benchmarks/mnist_fc --workers 2``).

The refine stage leaves the last ReLU layer to splitting (``REFINE_LAST``): a split there makes that
neuron's relaxation exact and changes no other bound, while a refined earlier layer also tightens every
later layer's bounds. In a full mnist_fc run this decided 256x4 prop_12_0.05 (228 s), which timed out with the
last layer refined too (``veracity run ../shared/benchmarks/mnist_fc --workers 2``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from veracity.bounds import bound_spec, widen
from veracity.bounds.alpha import alpha_bounds, alpha_crown
from veracity.bounds.crown import crown_bounds, ibp_exact
from veracity.bounds.ibp import Bounds
from veracity.graph.ir import Graph
from veracity.solvers import milp
from veracity.spec.core import Case, Spec
from veracity.verify.attack import Checker, pgd_attack
from veracity.verify.bab import input_split, relu_inputs, relu_split
from veracity.verify.cegar import StageOutcome, cegar_stage
from veracity.verify.cegar import supports as cegar_supports
from veracity.verify.result import Result

DEFAULT_METHODS = ("ibp", "crown", "alpha")  # "cegar" may be added (sigmoid/tanh CEGAR after the bounds)
INPUT_SPLIT_MAX_DIM = 16  # input branch and bound for networks with at most this many inputs
LOW_DIM_RESTARTS = 256  # attack restarts for networks with few inputs (cheap, and finds narrow regions)
MILP_FIRST_UNSTABLE = 32  # the exact MILP before branch and bound up to this many unstable ReLUs per case
FIRST_SPLIT_SHARE = 0.05  # of the time left, for ReLU splitting from α-CROWN's bounds before MILP refinement
REFINE_SHARE = 0.8  # of the time left after that, for MILP-refined intermediate bounds
REFINE_SOLVE_LIMIT = 1.0  # seconds per MILP of one bound of one neuron
REFINE_LAST = False  # whether the refine stage also refines the last ReLU layer (else left to splitting)
BAB_SHARE = 0.7  # of the time left after the bounds, for branch and bound when the MILP follows it
REFINED_BAB_SHARE = 0.9  # the same, after the refine stage
BUDGET_SHARE = 0.97  # of the timeout the methods may use
ATTACK_SHARE = 0.1  # of the budget the first attack may use (its restarts are many where inputs are few)


class Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None, error: type[BaseException] = Timeout):
    """Raise ``error`` in the main thread after ``seconds`` (elsewhere, or for 0/None, callers check deadlines)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise error()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def open_regions(graph: Graph, spec: Spec, method: str, open_: list[list[bool]], lines: str = "tight") -> None:
    """Bound every still-open region with ``method``; mark the ones it proves unreachable (in place)."""
    todo = [ci for ci, flags in enumerate(open_) if any(flags)]
    if not todo:
        return
    rows = [np.concatenate([r.A for r, f in zip(spec.cases[ci].regions, open_[ci], strict=True) if f]) for ci in todo]
    S = max(r.shape[0] for r in rows)
    C = np.zeros((len(todo), S, spec.n_outputs))
    for k, r in enumerate(rows):
        C[k, : r.shape[0]] = r
    lower = np.stack([spec.cases[ci].box.lower for ci in todo])
    upper = np.stack([spec.cases[ci].box.upper for ci in todo])
    lo, _ = bound_spec(graph, lower, upper, C, method=method, lines=lines)
    lo = lo.detach().numpy()
    for k, ci in enumerate(todo):
        _mark_closed(spec, ci, open_, lo[k])


def _mark_closed(spec: Spec, ci: int, open_: list[list[bool]], lb: np.ndarray) -> None:
    """Close case ci's open regions with a row whose lower bound (``lb``: the open regions' rows, in
    order) exceeds its threshold."""
    start = 0
    for j, region in enumerate(spec.cases[ci].regions):
        if not open_[ci][j]:
            continue
        m = region.A.shape[0]
        if m and np.any(lb[start : start + m] > region.b):
            open_[ci][j] = False
        start += m


def max_unstable(graph: Graph, spec: Spec, open_: list[list[bool]]) -> int:
    """The most unstable ReLU/LeakyReLU inputs (by full CROWN) in any case with open regions."""
    todo = [ci for ci, flags in enumerate(open_) if any(flags)]
    if not todo:
        return 0
    lo = torch.tensor(np.stack([spec.cases[ci].box.lower for ci in todo]))
    hi = torch.tensor(np.stack([spec.cases[ci].box.upper for ci in todo]))
    bounds = crown_bounds(graph, lo, hi)
    count = torch.zeros(len(todo), dtype=torch.long)
    for p in relu_inputs(graph):
        l, u = bounds[p]
        count += ((l < 0) & (u > 0)).reshape(len(todo), -1).sum(1)
    return int(count.max())


def milp_stage(graph: Graph, spec: Spec, checker: Checker, open_: list[list[bool]], deadline: float | None,
               roots: dict[int, Bounds] | None = None):
    """Decide the open regions by the exact MILP: ("sat", (x, y)), ("unsat", None) or ("unknown", None).
    ``roots``: intermediate bounds per case (default: full CROWN, tight and adaptive lines)."""
    for ci, case in enumerate(spec.cases):
        regions = tuple(r for r, f in zip(case.regions, open_[ci], strict=True) if f)
        if not regions:
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return "unknown", None
        lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
        pre = (roots or {}).get(ci) or crown_bounds(graph, lo, hi, "both")
        verdict = milp.decide_case(graph, Case(case.box, regions), pre=pre, time_limit=left)
        if verdict[0] == "sat":
            hit = checker.check(verdict[1], ci)
            if hit is not None:
                return "sat", hit
        if verdict[0] != "unsat":
            return "unknown", None
        open_[ci] = [False] * len(case.regions)
    return "unsat", None


def alpha_roots(graph: Graph, spec: Spec, open_: list[list[bool]]) -> dict[int, Bounds]:
    """α-CROWN's intermediate bounds (``alpha_bounds``) of each case with open regions."""
    return {ci: alpha_bounds(graph, torch.tensor(c.box.lower)[None], torch.tensor(c.box.upper)[None])
            for ci, c in enumerate(spec.cases) if any(open_[ci])}


def refine_stage(graph: Graph, spec: Spec, open_: list[list[bool]], deadline: float,
                 solve_limit: float | None = None, start: dict[int, Bounds] | None = None,
                 last: bool | None = None) -> dict[int, Bounds]:
    """Intermediate bounds of each case with open regions, tightened by MILP (``milp.NodeRefiner``) node by
    node until ``deadline``: after each node, every later node's bounds are recomputed by α-CROWN from the
    refined ones, and the open regions are bounded again (those proven are closed in ``open_``). The last
    ReLU layer's inputs are refined only with ``last``. Starts from ``start[case]`` where given, else from
    α-CROWN's bounds. Returns the bounds per case (for ReLU splitting and the MILP). ``solve_limit`` and
    ``last`` default to ``REFINE_SOLVE_LIMIT`` and ``REFINE_LAST`` as they are at the call."""
    solve_limit = REFINE_SOLVE_LIMIT if solve_limit is None else solve_limit
    last = REFINE_LAST if last is None else last
    roots = {}
    exact = ibp_exact(graph)
    for ci, case in enumerate(spec.cases):
        if not any(open_[ci]):
            continue
        lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
        bounds = dict(start[ci]) if start and ci in start else alpha_bounds(graph, lo, hi)
        refiner = milp.NodeRefiner(graph, lo, hi, bounds, solve_limit)
        nodes = relu_inputs(graph)
        for p in nodes if last else nodes[:-1]:
            if time.monotonic() > deadline or not any(open_[ci]):
                break
            if p in exact:  # an affine map of the box: its interval is exact already
                continue
            l, u = refiner.refine(p, deadline)
            shape = bounds[p][0].shape
            bounds[p] = torch.from_numpy(l).reshape(shape), torch.from_numpy(u).reshape(shape)
            bounds = alpha_bounds(graph, lo, hi, pre=bounds)
            refiner.tighten(bounds)
            _close(graph, spec, ci, open_, bounds)
        roots[ci] = bounds
    return roots


def _close(graph: Graph, spec: Spec, ci: int, open_: list[list[bool]], bounds: Bounds) -> None:
    """Bound case ci's open regions by α-CROWN over intermediate bounds ``bounds``; close those proven."""
    case = spec.cases[ci]
    lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
    rows = [r.A for r, f in zip(case.regions, open_[ci], strict=True) if f]
    C = torch.tensor(np.concatenate(rows))[None]
    if C.shape[1]:
        with torch.enable_grad():
            lb = widen(alpha_crown(graph, lo, hi, C, pre=bounds, lines="adaptive"))[0][0].detach().numpy()
        _mark_closed(spec, ci, open_, lb)


def verify(graph: Graph, spec: Spec, timeout: float | None = None, methods: Sequence[str] = DEFAULT_METHODS,
           onnx_model: bytes | None = None, attack: bool = True, lines: str = "tight", branch: bool = True,
           restarts: int | None = None, cegar: dict | None = None) -> Result:
    """Decide ``spec`` on ``graph``: sat (with a confirmed witness), unsat, unknown or timeout.

    ``restarts``: of the first attack (default: many for few inputs); ``cegar``: options of the CEGAR stage
    (:func:`veracity.verify.cegar.cegar_stage`), which runs when ``methods`` names "cegar"."""
    if spec.n_inputs != graph.n_inputs or spec.n_outputs != graph.n_outputs:
        raise ValueError(
            f"the spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs, "
            f"the network {graph.n_inputs} and {graph.n_outputs}"
        )
    t0 = time.monotonic()
    budget = timeout and timeout * BUDGET_SHARE  # the rest: slack for the step in flight and for reporting
    deadline = None if not budget else t0 + budget
    log: list[str] = []

    def done(status, method="", x=None, y=None, message=""):
        return Result(status, method, time.monotonic() - t0, x, y, message, log)

    checker = Checker(graph, spec, onnx_model)
    stage = StageOutcome("unsat")  # the CEGAR stage's counts, kept if the alarm interrupts it

    def cegar_note() -> str:
        return f"{stage.solves} solve(s), {stage.refinements} refinement(s)" if stage.solves else ""

    if not spec.cases:
        return done("unsat", "spec", message="no input satisfies the input constraints")
    try:
        with time_limit(budget), torch.no_grad():
            if attack:
                if restarts is None:
                    restarts = LOW_DIM_RESTARTS if graph.n_inputs <= INPUT_SPLIT_MAX_DIM else 8
                # vertex starts find more on image networks, fewer on low-dimensional ones (bench/attack.py)
                hit = pgd_attack(graph, spec, checker, restarts=restarts,
                                 deadline=deadline and t0 + ATTACK_SHARE * budget,
                                 vertices=graph.n_inputs > INPUT_SPLIT_MAX_DIM)
                log.append(f"attack: {'counterexample' if hit else 'none'} ({time.monotonic() - t0:.2f}s)")
                if hit is not None:
                    return done("sat", "attack", *hit)
            open_ = [[True] * len(c.regions) for c in spec.cases]
            n_open = sum(map(sum, open_))
            for method in (m for m in methods if m != "cegar"):
                open_regions(graph, spec, method, open_, lines)
                n_open = sum(map(sum, open_))
                log.append(f"{method}: {n_open} region(s) open ({time.monotonic() - t0:.2f}s)")
                if n_open == 0:
                    return done("unsat", method)
                if deadline is not None and time.monotonic() > deadline:
                    return done("timeout")
            note = ""
            if "cegar" in methods and cegar_supports(graph):  # opt-in: sigmoid/tanh abstraction refinement
                r = cegar_stage(graph, spec, checker, open_, deadline, out=stage, **(cegar or {}))
                log.extend(r.log)
                note = cegar_note() + (f"; {r.message}" if r.message else "")
                if r.status in ("sat", "unsat"):
                    return done(r.status, "cegar", *(r.witness or ()), message=note)
                if r.status == "timeout":
                    return done("timeout", message=note)
                n_open = sum(map(sum, open_))
            if not branch:
                return done("unknown", message=f"{n_open} region(s) not proven by {', '.join(methods)}"
                            + (f" ({note})" if note else ""))
            exact = milp.supports(graph)
            roots = None
            if not (exact and max_unstable(graph, spec, open_) <= MILP_FIRST_UNSTABLE):
                relu = graph.n_inputs > INPUT_SPLIT_MAX_DIM
                name, fn = ("relu-split", relu_split) if relu else ("input-split", input_split)
                if relu and exact and deadline is not None:  # a short search first, then MILP-refined bounds
                    alpha = alpha_roots(graph, spec, open_)
                    r = relu_split(graph, spec, checker, open_, roots=alpha,
                                   deadline=time.monotonic() + FIRST_SPLIT_SHARE * (deadline - time.monotonic()))
                    log.append(f"{name}: {r.status} after {r.boxes} sub-problems ({time.monotonic() - t0:.2f}s)")
                    if r.status in ("sat", "unsat"):
                        return done(r.status, name, *(r.witness or ()))
                    roots = refine_stage(graph, spec, open_,
                                         time.monotonic() + REFINE_SHARE * (deadline - time.monotonic()), start=alpha)
                    n_open = sum(map(sum, open_))
                    log.append(f"milp-refine: {n_open} region(s) open ({time.monotonic() - t0:.2f}s)")
                    if n_open == 0:
                        return done("unsat", "milp-refine")
                share = deadline
                if exact and deadline is not None:
                    bab_share = REFINED_BAB_SHARE if roots else BAB_SHARE
                    share = time.monotonic() + bab_share * (deadline - time.monotonic())
                r = fn(graph, spec, checker, open_, deadline=share, **({"roots": roots} if roots else {}))
                log.append(f"{name}: {r.status} after {r.boxes} sub-problems ({time.monotonic() - t0:.2f}s)")
                if r.status == "sat":
                    return done("sat", name, *r.witness)
                if r.status == "unsat":
                    return done("unsat", name)
                if not exact:
                    return done(r.status)
            status, witness = milp_stage(graph, spec, checker, open_, deadline, roots)
            log.append(f"milp: {status} ({time.monotonic() - t0:.2f}s)")
            if status == "sat":
                return done("sat", "milp", *witness)
            if status == "unsat":
                return done("unsat", "milp")
            timed_out = deadline is not None and time.monotonic() >= deadline
            return done("timeout" if timed_out else "unknown", message="" if timed_out else "the MILP gave no verdict")
    except Timeout:
        return done("timeout", message=cegar_note())
