"""Branch and bound over the input box, for networks with few inputs.

Sub-boxes are bounded in batches by CROWN. A box is closed once every bad region still open on it has a
row whose lower bound exceeds its threshold; otherwise the network is evaluated at a few candidate points
of the box (confirmed counterexamples end the search) and the box is split in two along the input whose
coefficient in the most promising row's linear bound, times the box's width there, is largest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from veracity.bounds import widen
from veracity.bounds.crown import backward, crown_bounds
from veracity.graph.ir import Graph
from veracity.spec.core import Spec
from veracity.verify.attack import Checker


@dataclass
class BabResult:
    status: str  # "sat" | "unsat" | "timeout" | "unknown"
    witness: tuple[np.ndarray, np.ndarray] | None = None
    boxes: int = 0  # sub-boxes bounded


def _bound(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, lines: str):
    """Lower bounds (N, S) of C·y on each box and the input coefficients (N, S, n) of those bounds."""
    bounds = crown_bounds(graph, lo, hi, lines)
    N = lo.shape[0]
    A0 = C.unsqueeze(0).expand(N, -1, -1).reshape(N, C.shape[0], *graph.output_shape)
    lb, coeffs = backward(graph, graph.output_name, A0, bounds, lines, return_input_coeffs=True)
    return widen((lb, lb))[0], coeffs


def input_split(graph: Graph, spec: Spec, checker: Checker, open_: list[list[bool]] | None = None,
                deadline: float | None = None, batch: int = 256, lines: str = "adaptive",
                max_boxes: int = 2_000_000) -> BabResult:
    """Decide the still-open regions (``open_[case][region]``, default all) by splitting input boxes.

    Adaptive lines by default: on ACAS Xu they close sub-boxes with several times fewer splits than tight
    lines (bench/vnncomp.py).
    """
    total = 0
    for ci, case in enumerate(spec.cases):
        regions = [r for j, r in enumerate(case.regions) if open_ is None or open_[ci][j]]
        if not regions:
            continue
        if any(r.A.shape[0] == 0 for r in regions):  # the whole output space is bad
            hit = checker.check(case.box.center, ci)
            return BabResult("sat", hit, total) if hit else BabResult("unknown", None, total)
        C = torch.tensor(np.concatenate([r.A for r in regions]))
        b = torch.tensor(np.concatenate([r.b for r in regions]))
        region_of_row = torch.tensor(np.concatenate([[k] * r.A.shape[0] for k, r in enumerate(regions)]))
        R = len(regions)
        row_in = torch.nn.functional.one_hot(region_of_row, R).bool()  # (S, R)
        lo_q = torch.tensor(case.box.lower)[None]
        hi_q = torch.tensor(case.box.upper)[None]
        open_q = torch.ones(1, R, dtype=torch.bool)
        while lo_q.shape[0]:
            if deadline is not None and time.monotonic() > deadline:
                return BabResult("timeout", None, total)
            if lo_q.shape[0] > max_boxes:
                return BabResult("unknown", None, total)
            lo, hi, op = lo_q[-batch:], hi_q[-batch:], open_q[-batch:]
            lo_q, hi_q, open_q = lo_q[:-batch], hi_q[:-batch], open_q[:-batch]
            total += lo.shape[0]
            lb, coeffs = _bound(graph, lo, hi, C, lines)
            proven_row = lb > b  # (N, S)
            proven = (proven_row.unsqueeze(2) & row_in.unsqueeze(0)).any(1)  # (N, R)
            op = op & ~proven
            keep = op.any(1)
            if not keep.any():
                continue
            lo, hi, op, lb, coeffs = lo[keep], hi[keep], op[keep], lb[keep], coeffs[keep]
            # candidate counterexamples: box centres and the minimisers of each open row's linear bound
            rows_open = (row_in.unsqueeze(0) & op.unsqueeze(1)).any(2)  # (N, S)
            score = torch.where(rows_open, lb - b, torch.full_like(lb, -torch.inf))
            best = score.argmax(1)  # per box, the open row closest to being proven
            a = coeffs[torch.arange(len(best)), best]  # (N, n)
            corner = torch.where(a > 0, lo, hi)
            cands = torch.cat([(lo + hi) / 2, corner])
            with torch.no_grad():
                y = graph(cands).reshape(cands.shape[0], -1)
            viol = (y @ C.T - b <= 0)  # (2N, S)
            inside = (viol.unsqueeze(2) | ~row_in.unsqueeze(0)).all(1) & torch.cat([op, op])  # (2N, R)
            for k in inside.any(1).nonzero().flatten().tolist()[:16]:
                hit = checker.check(cands[k].numpy(), ci)
                if hit is not None:
                    return BabResult("sat", hit, total)
            # split along the input with the largest |coefficient| x width
            dim = ((a.abs() + 1e-12) * (hi - lo)).argmax(1)
            mid = ((lo + hi) / 2).gather(1, dim[:, None])
            hi_left, lo_right = hi.clone(), lo.clone()
            hi_left.scatter_(1, dim[:, None], mid)
            lo_right.scatter_(1, dim[:, None], mid)
            lo_q = torch.cat([lo_q, lo, lo_right])
            hi_q = torch.cat([hi_q, hi_left, hi])
            open_q = torch.cat([open_q, op, op])
    return BabResult("unsat", None, total)
