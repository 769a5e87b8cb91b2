"""The value every relaxation returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearBounds:
    """Element-wise lines: ``lw*z + lb <= f(z) <= uw*z + ub`` on the interval they were built for."""

    lw: torch.Tensor
    lb: torch.Tensor
    uw: torch.Tensor
    ub: torch.Tensor

    def lower(self, z: torch.Tensor) -> torch.Tensor:
        return self.lw * z + self.lb

    def upper(self, z: torch.Tensor) -> torch.Tensor:
        return self.uw * z + self.ub
