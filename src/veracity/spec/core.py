"""Specifications: input sets (boxes) and output properties (disjunctions of bad polytopes).

A property in VNN-COMP style asks whether some input x in the input set maps to an output y = f(x)
inside a *bad* region. A bad region is a conjunction of linear constraints ``A y <= b``. The property
holds (answer ``unsat``) when no input of any case reaches any of its case's bad regions.

Vectors are flat: ``Box.lower`` has one entry per input scalar, in the row-major order of the network's
input tensor without its batch dimension (X_0, X_1, ... in VNN-LIB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _vec(a) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64).reshape(-1)
    v.setflags(write=False)
    return v


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned box ``lower <= x <= upper`` over the flattened input."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        lo, up = _vec(self.lower), _vec(self.upper)
        if lo.shape != up.shape:
            raise ValueError(f"box bounds differ in size: {lo.size} lower vs {up.size} upper")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(up))):
            raise ValueError("box bounds must be finite")
        if np.any(lo > up):
            i = int(np.argmax(lo > up))
            raise ValueError(f"empty box: lower[{i}] = {lo[i]} > upper[{i}] = {up[i]}")
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", up)

    @property
    def dim(self) -> int:
        return self.lower.size

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    def contains(self, x, tol: float = 0.0) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))


@dataclass(frozen=True, eq=False)
class Region:
    """A bad region ``{y : A y <= b}`` (a conjunction of linear constraints on the outputs)."""

    A: np.ndarray
    b: np.ndarray

    def __post_init__(self):
        A = np.asarray(self.A, dtype=np.float64)
        if A.ndim == 1:
            A = A[None, :]
        b = _vec(self.b)
        if A.ndim != 2 or A.shape[0] != b.size:
            raise ValueError(f"region needs A of shape (m, n_out) and b of size m, got {A.shape} and {b.size}")
        A = A.copy()
        A.setflags(write=False)
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "b", b)

    def contains(self, y, tol: float = 0.0) -> bool:
        """True when y satisfies every constraint (y is a counterexample output)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.all(self.A @ y - self.b <= tol))


@dataclass(frozen=True, eq=False)
class Case:
    """One input box with the bad regions that must be unreachable from it."""

    box: Box
    regions: tuple[Region, ...]

    def __post_init__(self):
        object.__setattr__(self, "regions", tuple(self.regions))


@dataclass(frozen=True, eq=False)
class Spec:
    """A property: violated iff some case has an x in its box with f(x) in one of its regions."""

    cases: tuple[Case, ...]
    n_inputs: int
    n_outputs: int

    def __post_init__(self):
        object.__setattr__(self, "cases", tuple(self.cases))
        for i, c in enumerate(self.cases):
            if c.box.dim != self.n_inputs:
                raise ValueError(f"case {i}: box has {c.box.dim} inputs, spec declares {self.n_inputs}")
            for r in c.regions:
                if r.A.shape[1] != self.n_outputs:
                    raise ValueError(
                        f"case {i}: region constrains {r.A.shape[1]} outputs, spec declares {self.n_outputs}"
                    )

    @property
    def boxes(self) -> list[Box]:
        return [c.box for c in self.cases]

    def violated_by(self, x, y, tol: float = 0.0) -> bool:
        """True when (x, y) is a counterexample: x in a case's box and y in one of its regions."""
        return any(
            c.box.contains(x, tol) and any(r.contains(y, tol) for r in c.regions) for c in self.cases
        )


# ---------------------------------------------------------------------------------------------------
# Python API for building specifications without VNN-LIB
# ---------------------------------------------------------------------------------------------------


def box(lower, upper) -> Box:
    return Box(lower, upper)


def linf_ball(center, eps: float, clip: tuple[float, float] | None = None) -> Box:
    """The L-infinity ball of radius ``eps`` around ``center``, optionally clipped to ``[lo, hi]``."""
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    lo, up = c - eps, c + eps
    if clip is not None:
        lo, up = np.clip(lo, *clip), np.clip(up, *clip)
    return Box(lo, up)


def robustness_regions(label: int, n_outputs: int) -> tuple[Region, ...]:
    """Bad regions for "``label`` stays the top output": one region ``y_label - y_j <= 0`` per j != label."""
    if not 0 <= label < n_outputs:
        raise ValueError(f"label {label} outside 0..{n_outputs - 1}")
    regions = []
    for j in range(n_outputs):
        if j == label:
            continue
        a = np.zeros(n_outputs)
        a[label], a[j] = 1.0, -1.0
        regions.append(Region(a[None, :], [0.0]))
    return tuple(regions)


def output_constraint(coeffs: Sequence[float], rhs: float) -> Region:
    """A single bad half-space ``coeffs . y <= rhs``."""
    return Region(np.asarray(coeffs, dtype=np.float64)[None, :], [rhs])


def robustness_spec(center, eps: float, label: int, n_outputs: int, clip=(0.0, 1.0)) -> Spec:
    """Local robustness of ``label`` on the L-infinity ball around ``center``."""
    b = linf_ball(center, eps, clip)
    return Spec((Case(b, robustness_regions(label, n_outputs)),), b.dim, n_outputs)
