"""Verification results in the VNN-COMP format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STATUSES = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass
class Result:
    """``status``: sat | unsat | unknown | timeout | error; ``method``: what decided it."""

    status: str
    method: str = ""
    time_s: float = 0.0
    x: np.ndarray | None = None  # witness input (flat), for sat
    y: np.ndarray | None = None  # network output at x, for sat
    message: str = ""
    log: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def vnncomp(self) -> str:
        """The result file: first line the status; for sat the witness ``((X_0 v) ... (Y_0 v))``."""
        if self.status != "sat":
            return self.status + "\n"
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.x)]
        pairs += [f"(Y_{i} {float(v)!r})" for i, v in enumerate(self.y)]
        return "sat\n(" + "\n ".join(pairs) + ")\n"
