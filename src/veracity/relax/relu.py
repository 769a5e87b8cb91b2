"""ReLU and LeakyReLU relaxations (Lyu et al., CVPR 2021 "tight" lines, or classic adaptive CROWN lines)."""

from __future__ import annotations

import torch

from veracity.relax.lines import LinearBounds

LINES = ("tight", "adaptive")


def leaky_relu(l, u, slope: float = 0.0, lines: str = "tight", alpha=None) -> LinearBounds:
    """Lines for ``f(z) = max(z, slope*z)`` (0 <= slope < 1) on [l, u].

    Stable neurons get exact lines. For an unstable one (l < 0 < u) the upper line is the chord; the
    lower line is ``slope*z`` with ``lines="tight"`` (never looser than IBP), or the classic CROWN
    choice with ``lines="adaptive"``: ``z`` when u > -l, else ``slope*z``. ``alpha`` in [0, 1] (any
    shape broadcasting against l) overrides the lower slope as ``slope + alpha*(1 - slope)``.
    """
    if lines not in LINES:
        raise ValueError(f"lines must be one of {LINES}, got {lines!r}")
    if not torch.isfinite((u - l).sum()):  # one float reduction: finite unless some bound is infinite
        return _leaky_relu_masked(l, u, slope, lines, alpha)
    # 0/1 masks as floats and blends instead of torch.where: on CPU, ops on bool tensors are several times
    # slower than float arithmetic, and this runs in every step of every α/β optimisation
    alive = (l.sign() + 1).clamp(max=1)  # l >= 0
    dead = (1 - u.sign()).clamp(max=1) * (1 - alive)  # u <= 0 (and not alive)
    unstable = 1 - alive - dead
    lc, uc = l.clamp(max=0), u.clamp(min=0)
    width = (uc - lc).clamp(min=torch.finfo(l.dtype).tiny)
    chord = (uc - slope * lc) / width
    ub = -(1.0 - slope) * lc * uc / width  # 0 unless unstable
    if alpha is not None:
        unstable_lw = slope + alpha * (1.0 - slope)
    elif lines == "adaptive":
        unstable_lw = slope + (u + l).sign().clamp(min=0) * (1.0 - slope)  # z when u > -l, else slope*z
    else:
        unstable_lw = torch.full_like(u, slope)
    exact = alive + slope * dead
    return LinearBounds(exact + unstable * unstable_lw, torch.zeros_like(ub), exact + unstable * chord, ub)


def _leaky_relu_masked(l, u, slope, lines, alpha) -> LinearBounds:
    """:func:`leaky_relu` where bounds may be infinite (selections, no arithmetic on the infinities)."""
    dead, alive = u <= 0, l >= 0
    unstable = ~(dead | alive)
    width = torch.where(unstable, u - l, torch.ones_like(u))
    chord = torch.where(unstable, (u - slope * l) / width, torch.zeros_like(u))
    uw = torch.where(alive, torch.ones_like(u), torch.where(dead, torch.full_like(u, slope), chord))
    ub = torch.where(unstable, -(1.0 - slope) * l * u / width, torch.zeros_like(u))
    if alpha is not None:
        unstable_lw = slope + alpha * (1.0 - slope)
    elif lines == "adaptive":
        unstable_lw = torch.where(u > -l, torch.ones_like(u), torch.full_like(u, slope))
    else:
        unstable_lw = torch.full_like(u, slope)
    lw = torch.where(alive, torch.ones_like(u), torch.where(dead, torch.full_like(u, slope), unstable_lw))
    return LinearBounds(lw, torch.zeros_like(lw), uw, ub)


def relu(l, u, lines: str = "tight", alpha=None) -> LinearBounds:
    return leaky_relu(l, u, 0.0, lines, alpha)
