"""Sound lines for S-shaped activations (sigmoid, tanh): convex for z <= 0, concave for z >= 0.

On a one-sided interval the chord bounds one side and a tangent the other. On an interval straddling 0
the upper line is the tangent at the point d >= 0 whose tangent passes through (l, f(l)) (or the chord
when d lies beyond u), and symmetrically for the lower line (the CROWN construction). Tangent points
may move within the range where the tangent stays sound; ``alpha`` in [0, 1] picks the point, which is
what α-CROWN optimises. A small absolute slack covers floating-point rounding.
"""

from __future__ import annotations

import torch

from veracity.relax.lines import LinearBounds

_SLACK = 1e-12  # absolute widening of intercepts; f is bounded by 1 in magnitude
_ITERS = 60


def _sigmoid_d(z):
    s = torch.sigmoid(z)
    return s * (1 - s)


def _tanh_d(z):
    return 1 - torch.tanh(z) ** 2


def _tangent(f, df, t):
    k = df(t)
    return k, f(t) - k * t


def _bisect(pred, lo, hi):
    """Smallest t in [lo, hi] (to bisection accuracy, erring towards hi) with pred(t) true; pred monotone."""
    for _ in range(_ITERS):
        mid = (lo + hi) / 2
        ok = pred(mid)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def _relax(f, df, l, u, alpha_l=None, alpha_u=None) -> LinearBounds:
    l, u = torch.broadcast_tensors(l, u)
    fl, fu = f(l), f(u)
    flat = (u - l) <= 1e-9 * (1 + l.abs())
    width = torch.where(flat, torch.ones_like(u), u - l)
    k = torch.where(flat, torch.zeros_like(u), (fu - fl) / width)
    chord_b = fl - k * l
    convex, concave = u <= 0, l >= 0
    straddle = ~(convex | concave)
    zero = torch.zeros_like(u)

    # Upper tangent range [tu_lo, u]: whole interval if concave; [d_u, u] if straddling, where d_u >= 0 is
    # the smallest point whose tangent lies above (l, f(l)).
    def above_left(t):
        kt, bt = _tangent(f, df, t)
        return kt * l + bt >= fl

    d_u = _bisect(above_left, torch.where(straddle, zero, l), u)
    chord_up = convex | (straddle & ~above_left(u))
    tu_lo = torch.where(concave, l, d_u)
    t_u = tu_lo + alpha_u * (u - tu_lo) if alpha_u is not None else torch.where(concave, (l + u) / 2, tu_lo)
    ku, bu = _tangent(f, df, t_u)

    # Lower tangent range [l, tl_hi]: whole interval if convex; [l, d_l] if straddling, d_l <= 0 the largest
    # point whose tangent lies below (u, f(u)).
    def below_right(t):
        kt, bt = _tangent(f, df, t)
        return kt * u + bt <= fu

    neg_d_l = _bisect(lambda s: below_right(-s), torch.where(straddle, zero, -u), -l)
    d_l = -neg_d_l
    chord_low = concave | (straddle & ~below_right(l))
    tl_hi = torch.where(convex, u, d_l)
    t_l = l + alpha_l * (tl_hi - l) if alpha_l is not None else torch.where(convex, (l + u) / 2, tl_hi)
    kl, bl = _tangent(f, df, t_l)

    uw = torch.where(chord_up, k, ku)
    ub = torch.where(chord_up, chord_b, bu) + _SLACK
    lw = torch.where(chord_low, k, kl)
    lb = torch.where(chord_low, chord_b, bl) - _SLACK
    # Degenerate intervals: constant lines (f is increasing).
    uw, lw = torch.where(flat, zero, uw), torch.where(flat, zero, lw)
    ub, lb = torch.where(flat, fu + _SLACK, ub), torch.where(flat, fl - _SLACK, lb)
    return LinearBounds(lw, lb, uw, ub)


def sigmoid(l, u, alpha_l=None, alpha_u=None) -> LinearBounds:
    return _relax(torch.sigmoid, _sigmoid_d, l, u, alpha_l, alpha_u)


def tanh(l, u, alpha_l=None, alpha_u=None) -> LinearBounds:
    return _relax(torch.tanh, _tanh_d, l, u, alpha_l, alpha_u)
