"""PGD (L∞, Madry et al.) on a classifier, for adversarial accuracy and worst-case loss estimates."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20, restarts: int = 1,
        step_size: float | None = None, clip=(0.0, 1.0), loss: str = "ce",
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Points of the ε-ball (within ``clip``) maximising the loss: ``ce`` or the margin ``max_{j≠y} z_j − z_y``.

    Over ``restarts`` random starts, each sample keeps the point of highest loss (misclassified points win).
    """
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    best = x.clone()
    best_val = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)

    def objective(z):
        if loss == "ce":
            return F.cross_entropy(z, y, reduction="none")
        other = z.clone()
        other[torch.arange(z.shape[0]), y] = -torch.inf
        return other.max(1).values - z[torch.arange(z.shape[0]), y]

    for _ in range(max(restarts, 1)):
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        xa = (lo + u * (hi - lo)).detach() if eps > 0 else x.clone()
        for _ in range(steps if eps > 0 else 0):
            xa.requires_grad_(True)
            with torch.enable_grad():
                val = objective(model(xa)).sum()
                (g,) = torch.autograd.grad(val, xa)
            xa = torch.max(torch.min(xa.detach() + step_size * g.sign(), hi), lo)
        with torch.no_grad():
            z = model(xa)
            val = objective(z) + 1e6 * (z.argmax(1) != y).to(x.dtype)
            better = val > best_val
            best[better], best_val[better] = xa[better], val[better]
    return best.detach()
