"""Schedules over training progress ``t`` (in epochs): ε, κ, β, η, σ and the learning rate."""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("linear", "smooth")


def ramp(t: float, start: float, length: float, shape: str = "linear") -> float:
    """0 before ``start``, 1 after ``start + length``; linear or smoothstep (3s² − 2s³) in between."""
    if shape not in SHAPES:
        raise ValueError(f"ramp shape must be one of {SHAPES}, got {shape!r}")
    if length <= 0:
        return 0.0 if t < start else 1.0
    s = min(1.0, max(0.0, (t - start) / length))
    return s if shape == "linear" else s * s * (3.0 - 2.0 * s)


@dataclass
class Schedule:
    """Clean warm-up for ``warmup`` epochs, then ε, κ, β and η ramp over ``ramp`` epochs."""

    eps: float
    warmup: float = 1.0
    ramp: float = 3.0
    shape: str = "linear"
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0
    eta_start: float = 0.01
    eta_end: float = 0.0
    sigma_start: float = 0.01
    sigma_end: float = 0.01
    lr: float = 5e-4
    lr_decay: tuple[float, ...] = (0.75, 0.9)  # fractions of the training length; x0.2 at each
    epochs: float = 10.0

    def s(self, t: float) -> float:
        return ramp(t, self.warmup, self.ramp, self.shape)

    def values(self, t: float) -> dict[str, float]:
        s = self.s(t)
        lr = self.lr
        for f in self.lr_decay:
            if t >= f * self.epochs:
                lr *= 0.2
        return {
            "eps": self.eps * s,
            "kappa": self.kappa_start + (self.kappa_end - self.kappa_start) * s if t >= self.warmup else 1.0,
            "beta": self.beta_start + (self.beta_end - self.beta_start) * s,
            "eta": self.eta_start + (self.eta_end - self.eta_start) * s,
            "sigma": self.sigma_start + (self.sigma_end - self.sigma_start) * min(1.0, t / max(self.epochs, 1e-9)),
            "lr": lr,
        }
