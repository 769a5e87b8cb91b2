"""Gaussian loss smoothing (Balauca et al., TMLR 2025): gradients of ``E_ε[L(θ + σ ε)]``, ε ~ N(0, I).

- PGPE: antithetic pairs ``θ ± σ ε_i``; the gradient comes from loss values alone,
  ``g = Σ_i (L(θ + σε_i) − L(θ − σε_i)) ε_i / (2 σ n)``, so ``L`` may be non-differentiable (any relaxation,
  the LP bound included).
- RGS: the average of ``∇L(θ + σ ε_i)`` over n perturbed copies (cheaper, but the gradient of the smoothed
  loss only when L is differentiable almost everywhere).

``loss`` maps a dict of parameter tensors to a scalar (e.g. ``torch.func.functional_call`` of a module).
The population is evaluated with ``torch.func.vmap`` in chunks of ``chunk`` members; where the loss cannot be
vectorised (data-dependent control flow in a bound) the members are evaluated one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, vmap
from torch.utils._pytree import tree_map

Params = dict[str, torch.Tensor]


def _noise(params: Params, n: int, generator: torch.Generator | None) -> Params:
    return {k: torch.randn((n, *v.shape), generator=generator, dtype=v.dtype, device=v.device)
            for k, v in params.items()}


def _population(fn: Callable[[Params], torch.Tensor], members: Params, n: int, chunk: int, state: dict) -> list:
    """``fn`` at every member (dict of (n, ...) tensors): vectorised in chunks, else one by one."""
    outs = []
    for s in range(0, n, chunk):
        part = {k: v[s: s + chunk] for k, v in members.items()}
        if state.get("vmap", True):
            try:
                outs.append(vmap(fn, randomness="different")(part))
                continue
            except Exception:  # noqa: BLE001 - fall back to the loop on anything vmap cannot batch
                state["vmap"] = False
        m = next(iter(part.values())).shape[0]
        vals = [fn({k: v[i] for k, v in part.items()}) for i in range(m)]
        outs.append(tree_map(lambda *xs: torch.stack(xs), vals[0], *vals[1:]))
    return outs


def pgpe_grad(loss: Callable[[Params], torch.Tensor], params: Params, sigma: float, n: int = 16,
              generator: torch.Generator | None = None, chunk: int = 8, state: dict | None = None):
    """PGPE estimate of the smoothed loss's gradient from n antithetic pairs; returns (grads, mean loss)."""
    state = {} if state is None else state
    params = {k: v.detach() for k, v in params.items()}
    eps = _noise(params, n, generator)
    both = {k: torch.cat([params[k] + sigma * e, params[k] - sigma * e]) for k, e in eps.items()}
    with torch.no_grad():
        vals = torch.cat(_population(loss, both, 2 * n, chunk, state)).reshape(2 * n)
    diff = (vals[:n] - vals[n:]) / (2.0 * sigma * n)
    grads = {k: torch.tensordot(diff.to(e.dtype), e, dims=1) for k, e in eps.items()}
    return grads, vals.mean()


def rgs_grad(loss: Callable[[Params], torch.Tensor], params: Params, sigma: float, n: int = 4,
             generator: torch.Generator | None = None, chunk: int = 4, state: dict | None = None):
    """Randomised gradient smoothing: mean gradient at n Gaussian-perturbed copies; returns (grads, mean loss)."""
    state = {} if state is None else state
    params = {k: v.detach() for k, v in params.items()}
    eps = _noise(params, n, generator)
    members = {k: params[k] + sigma * e for k, e in eps.items()}

    def with_aux(p):
        v = loss(p)
        return v, v.detach()

    def fn(p):
        g, v = grad(with_aux, has_aux=True)(p)
        return {"grad": g, "value": v}

    outs = _population(fn, members, n, chunk, state)
    grads = {k: torch.cat([o["grad"][k] for o in outs]).mean(0) for k in params}
    value = torch.cat([o["value"].reshape(-1) for o in outs]).mean()
    return grads, value
