"""Train the bundled pendulum surrogate ``pendulum_step.onnx`` (run: ``python -m veracity.examples.pendulum_train``).

The plant: a damped pendulum under a saturation-free linear state feedback,
``θ'' = −(g/ℓ) sin θ − b θ' + u`` with ``u = −k₁ θ − k₂ θ'``, integrated by 4 RK4 sub-steps over
``DT`` seconds. The surrogate ``f: (θ, θ') ↦ (θ, θ')`` after ``DT`` is a 2-32-32-2 ReLU MLP (plain
sequential, so the ADMM solver takes it), fitted on uniform samples of ``DOMAIN`` with Adam. Deterministic
(seeded). ``pendulum_meta.json`` records the constants and the fit error.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "pendulum_step.onnx"
META_PATH = HERE / "pendulum_meta.json"
G_OVER_L, DAMPING, K1, K2 = 9.81, 0.2, 12.0, 3.0
DT = 0.1
DOMAIN = ((-1.2, 1.2), (-2.5, 2.5))  # θ (rad), θ' (rad/s)


def true_step(x: torch.Tensor) -> torch.Tensor:
    """One DT of the closed-loop pendulum (RK4, 4 sub-steps), for states x of shape (N, 2)."""

    def rhs(s):
        th, om = s[:, 0], s[:, 1]
        u = -K1 * th - K2 * om
        return torch.stack([om, -G_OVER_L * torch.sin(th) - DAMPING * om + u], 1)

    h = DT / 4
    for _ in range(4):
        k1 = rhs(x)
        k2 = rhs(x + h / 2 * k1)
        k3 = rhs(x + h / 2 * k2)
        k4 = rhs(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def sample(gen: torch.Generator, n: int) -> torch.Tensor:
    lo = torch.tensor([d[0] for d in DOMAIN])
    hi = torch.tensor([d[1] for d in DOMAIN])
    return lo + torch.rand(n, 2, generator=gen) * (hi - lo)


def train(steps: int = 6000, seed: int = 0) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x = sample(gen, 512)
        loss = ((net(x) - true_step(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    x = sample(gen, 20000)
    with torch.no_grad():
        err = float((net(x) - true_step(x)).abs().max())
    return net, err


def export(net: nn.Module) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 2),), str(ONNX_PATH), input_names=["state"],
                          output_names=["next_state"], opset_version=13, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(str(ONNX_PATH)))


def main() -> None:
    torch.set_num_threads(1)
    net, err = train()
    export(net)
    META_PATH.write_text(json.dumps({
        "plant": "damped pendulum, theta'' = -(g/l) sin(theta) - b theta' + u, u = -k1 theta - k2 theta'",
        "g_over_l": G_OVER_L, "damping": DAMPING, "k1": K1, "k2": K2, "dt": DT, "domain": DOMAIN,
        "architecture": "2-32-32-2 ReLU MLP", "max_abs_error_on_domain": err,
        "default_initial_box": [[0.5, 0.6], [-0.1, 0.1]], "period_s": 2 * math.pi / math.sqrt(G_OVER_L + K1),
    }, indent=1) + "\n")
    print(f"wrote {ONNX_PATH.name} ({ONNX_PATH.stat().st_size} bytes); max |error| on the domain {err:.4f}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
