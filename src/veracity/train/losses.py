"""Certified losses: upper bounds of the worst-case cross-entropy, composed from :mod:`veracity.bounds`.

For a sample (x, y) and the ball ``B = [x − ε, x + ε] ∩ [0, 1]``, each method gives lower bounds ``m_j`` of the
margins ``z_y − z_j`` over B (rows of the spec ``C = e_y − e_j``). Since
``CE(z, y) = log(1 + Σ_j exp(−(z_y − z_j)))``, the cross-entropy of the logits ``(0, −m_j)`` bounds the
cross-entropy of every point of B from above. The bounds run in the parameters' dtype (float32 when
training) and are differentiable in the weights; the claims a user sees come from
:mod:`veracity.train.certify`, in float64 and widened.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from veracity.bounds import crown, ibp, lbp, lbp_bounds
from veracity.bounds.ibp import spec_interval
from veracity.graph.ir import Graph

LOSSES = ("ibp", "crown-ibp", "lbp", "crown-lbp", "crown", "lp")
DIFFERENTIABLE = ("ibp", "crown-ibp", "lbp", "crown-lbp", "crown")  # "lp" only through PGPE


def margin_spec(y: torch.Tensor, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """C (B, K−1, K) with rows ``e_y − e_j`` for every j ≠ y."""
    B = y.shape[0]
    eye = torch.eye(n_classes, dtype=dtype, device=y.device)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, K, K)
    keep = torch.ones(B, n_classes, dtype=torch.bool, device=y.device)
    keep[torch.arange(B), y] = False
    return C[keep].reshape(B, n_classes - 1, n_classes)


def ball(x: torch.Tensor, eps: float, clip: tuple[float, float] | None = (0.0, 1.0)):
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return lo, hi


def ibp_margins(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, bounds=None) -> torch.Tensor:
    """IBP lower margins with the spec folded into a final linear layer (elision), else on the output box."""
    bounds = ibp(graph, lo, hi) if bounds is None else bounds
    out = graph.output
    if out.op == "linear":
        p = graph.params(out, lo.dtype, lo.device)
        CW = C @ p["W"]  # (B, S, n_hidden)
        low = spec_interval(CW, bounds[out.inputs[0]])[0]
        if "b" in p:
            low = low + C @ p["b"]
        return low
    return spec_interval(C, bounds[graph.output_name])[0]


def margins(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, method: str = "ibp",
            lines: str = "tight", beta: float = 1.0) -> torch.Tensor:
    """Lower bounds (B, S) of ``C · f(x)`` over the boxes [lo, hi] by ``method``.

    ``crown-ibp`` mixes ``beta`` × CROWN-IBP with (1 − beta) × IBP (Zhang et al., 2020); ``crown`` is full
    CROWN, ``crown-lbp`` CROWN with LBP's intermediate bounds, ``lp`` the LP relaxation (values only: train
    it with PGPE).
    """
    if method == "ibp":
        return ibp_margins(graph, lo, hi, C)
    if method == "crown-ibp":
        pre = ibp(graph, lo, hi)
        low_ibp = ibp_margins(graph, lo, hi, C, pre)
        if beta <= 0:
            return low_ibp
        low = crown(graph, lo, hi, C, pre=pre, lines=lines)[0]
        return beta * low + (1.0 - beta) * low_ibp if beta < 1 else low
    if method == "lbp":  # LBP applies C after the output's forms, so the IBP with C folded in can be tighter
        low = lbp(graph, lo, hi, C, lines=lines)[0]
        return torch.maximum(low, ibp_margins(graph, lo, hi, C)) if lines == "tight" else low
    if method == "crown-lbp":
        return crown(graph, lo, hi, C, pre=lbp_bounds(graph, lo, hi, lines), lines=lines)[0]
    if method == "crown":
        return crown(graph, lo, hi, C, lines=lines)[0]
    if method == "lp":  # HiGHS LP (triangle relaxation) on CROWN's intermediate bounds; no gradient
        from veracity.solvers.lp import lp_bounds

        with torch.no_grad():
            low = lp_bounds(graph, lo.detach().double(), hi.detach().double(), C.detach().double(), lines=lines,
                            solve_upper=False)[0]
        return low.to(lo.dtype)
    raise ValueError(f"unknown loss {method!r}; choose from {', '.join(LOSSES)}")


def robust_ce(low: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the worst-case logits (0, −m_1, ..., −m_{K−1}) for lower margins ``low``."""
    logits = torch.cat([torch.zeros_like(low[:, :1]), -low], 1)
    target = torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def certified_loss(graph: Graph, x: torch.Tensor, y: torch.Tensor, eps: float, method: str = "ibp",
                   lines: str = "tight", beta: float = 1.0, n_classes: int | None = None,
                   reduction: str = "mean", clip=(0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(robust cross-entropy upper bound, lower margins) over the ε-ball around each sample."""
    n_classes = graph.n_outputs if n_classes is None else n_classes
    lo, hi = ball(x, eps, clip)
    C = margin_spec(y, n_classes, x.dtype)
    low = margins(graph, lo.reshape(x.shape[0], -1), hi.reshape(x.shape[0], -1), C, method, lines, beta)
    return robust_ce(low, reduction), low


def mixed_loss(clean_logits: torch.Tensor, y: torch.Tensor, robust: torch.Tensor, kappa: float) -> torch.Tensor:
    """κ · natural cross-entropy + (1 − κ) · certified loss."""
    nat = F.cross_entropy(clean_logits, y)
    return kappa * nat + (1.0 - kappa) * robust
