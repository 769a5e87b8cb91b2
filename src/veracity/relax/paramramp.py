"""ParamRamp (Lyu et al., CVPR 2021): ``f(z) = η z`` for z < 0, ``z`` on [0, r], ``η z + (1 − η) r`` above r.

A neuron on [l, u] is in one of six states: exact on one of the three pieces, or across the lower corner
(l < 0 < u <= r), the upper corner (0 <= l < r < u), or both (l < 0, u > r). Sound lines come in two
pivoted families: lower lines through the origin with slope in [η, f(u)/u], upper lines through (r, r)
with slope in [η, (r − f(l))/(r − l)]; the remaining line of a one-corner state is the chord.
``lines="tight"`` takes slope η in both families: every line then passes through (l, f(l)) or (u, f(u))
with a non-negative slope, so CROWN with them is never looser than IBP.
"""

from __future__ import annotations

import torch

from veracity.relax.lines import LinearBounds

LINES = ("tight", "adaptive")


def ramp(z: torch.Tensor, r, eta: float = 0.0) -> torch.Tensor:
    """The ParamRamp function itself, element-wise, for r >= 0 broadcasting against z."""
    r = torch.as_tensor(r, dtype=z.dtype, device=z.device)
    mid = torch.minimum(torch.clamp(z, min=0.0), r)  # relu(z) - relu(z - r)
    return eta * z + (1.0 - eta) * mid


def _split_alpha(alpha):
    if alpha is None:
        return None, None
    if isinstance(alpha, (tuple, list)):
        return alpha[0], alpha[1]
    if isinstance(alpha, dict):
        return alpha.get("lower"), alpha.get("upper")
    return alpha, alpha


def paramramp(l, u, r, eta: float = 0.0, lines: str = "tight", alpha=None) -> LinearBounds:
    """Lines for ParamRamp with corner ``r`` (>= 0, broadcasting against l) and outer slope ``eta`` in [0, 1).

    Returns ``lw*z + lb <= f(z) <= uw*z + ub`` on [l, u]. ``alpha`` (a tensor in [0, 1], a (lower, upper)
    pair or a dict with those keys) moves each pivoted line from slope η (0) to its steepest sound slope
    (1); ``lines="adaptive"`` picks either end by the larger side of each corner.
    """
    if lines not in LINES:
        raise ValueError(f"lines must be one of {LINES}, got {lines!r}")
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"eta must be in [0, 1), got {eta}")
    r = torch.as_tensor(r, dtype=l.dtype, device=l.device)
    try:
        negative = bool((r < 0).any())
    except RuntimeError:  # inside torch.func.vmap the check cannot run; the ParamRamp modules clamp r
        negative = False
    if negative:
        raise ValueError("paramramp needs r >= 0")
    l, u, r = torch.broadcast_tensors(l, u, r)
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    fl, fu = ramp(l, r, eta), ramp(u, r, eta)

    dead = u <= 0  # lower piece
    top = l >= r  # upper piece
    mid = (l >= 0) & (u <= r) & ~dead & ~top  # identity piece
    exact = dead | top | mid
    low_corner = (l < 0) & (u > 0) & (u <= r)
    high_corner = (l >= 0) & (l < r) & (u > r)

    # chord through (l, f(l)) and (u, f(u))
    width = torch.where(u > l, u - l, one)
    cw = torch.where(u > l, (fu - fl) / width, one)
    cb = fl - cw * l

    # lower family: through the origin, slope in [eta, f(u)/u]
    s_lo_max = torch.where(u > 0, fu / torch.where(u > 0, u, one), torch.full_like(l, eta))
    # upper family: through (r, r), slope in [eta, (r - f(l))/(r - l)]
    s_up_max = torch.where(r > l, (r - fl) / torch.where(r > l, r - l, one), torch.full_like(l, eta))
    a_lo, a_up = _split_alpha(alpha)
    if a_lo is None and lines == "adaptive":
        a_lo = (u > -l).to(l.dtype)
    if a_up is None and lines == "adaptive":
        a_up = (r - l > u - r).to(l.dtype)
    s_lo = eta + (zero if a_lo is None else a_lo) * (s_lo_max - eta)
    s_up = eta + (zero if a_up is None else a_up) * (s_up_max - eta)
    eta_t = torch.full_like(l, eta)
    top_b = (1.0 - eta) * r
    # exact pieces
    ew = torch.where(mid, one, eta_t)
    eb = torch.where(top, top_b, zero)
    lw = torch.where(exact, ew, torch.where(high_corner, cw, s_lo))
    lb = torch.where(exact, eb, torch.where(high_corner, cb, zero))
    uw = torch.where(exact, ew, torch.where(low_corner, cw, s_up))
    ub = torch.where(exact, eb, torch.where(low_corner, cb, (1.0 - s_up) * r))
    return LinearBounds(lw, lb, uw, ub)
