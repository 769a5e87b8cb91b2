"""Models for certified training, and the graph IR over their live parameters.

Every model is an ``nn.Sequential`` of Conv2d, Linear, Flatten and activation modules (ReLU, LeakyReLU or
:class:`ParamRamp`). :func:`live_graph` turns one into a :class:`veracity.graph.Graph` whose node
parameters *are* the module's tensors (no copy), so the bound functions of :mod:`veracity.bounds` run on
it in the parameters' dtype with gradients flowing to the weights. Build a fresh graph after every
optimiser step: a graph caches derived tensors such as |W|.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from veracity.graph.ir import Graph, Node
from veracity.relax.paramramp import ramp

MODELS = ("mlp", "cnn-small", "cnn-medium", "cnn7")
ACTIVATIONS = ("relu", "leaky", "paramramp")
R_FLOOR = 1e-2  # smallest ramp corner kept by initialisation and clamping


class ParamRamp(nn.Module):
    """ParamRamp with one learnable corner ``r`` per neuron and a scheduled outer slope ``eta``.

    ``r`` starts large (the module behaves as a LeakyReLU with slope ``eta``) until :func:`init_ramps`
    sets it to each neuron's mean activation.
    """

    def __init__(self, shape: tuple[int, ...], eta: float = 0.01, r0: float = 1e3):
        super().__init__()
        self.r = nn.Parameter(torch.full(tuple(shape), float(r0)))
        self.eta = float(eta)

    def corner(self) -> torch.Tensor:
        return self.r.clamp(min=0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ramp(z, self.corner(), self.eta)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.r.shape)}, eta={self.eta}"


def _act(kind: str, shape: tuple[int, ...]) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky":
        return nn.LeakyReLU(0.01)
    if kind == "paramramp":
        return ParamRamp(shape)
    raise ValueError(f"unknown activation {kind!r}; choose from {', '.join(ACTIVATIONS)}")


def _conv_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def build_model(name: str, in_shape: tuple[int, int, int], n_classes: int = 10, act: str = "relu",
                hidden: tuple[int, ...] = (256, 256)) -> nn.Sequential:
    """A model by name for images of shape (C, H, W).

    ``mlp``: fully connected layers ``hidden``. ``cnn-small`` (DM-small): conv16 4x4/2, conv32 4x4/1, fc100.
    ``cnn-medium`` (DM-medium): conv32 3x3/1, conv32 4x4/2, conv64 3x3/1, conv64 4x4/2, fc512, fc512.
    ``cnn7``: conv64, conv64, conv128/2, conv128, conv128 (3x3, padding 1), fc512 (without batch norm).
    On inputs smaller than 16 pixels the CNNs pad every convolution by 1 so their shapes stay valid.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")
    C, H, W = in_shape
    layers: list[nn.Module] = []
    if name == "mlp":
        layers.append(nn.Flatten())
        width = C * H * W
        for h in hidden:
            layers += [nn.Linear(width, h), _act(act, (h,))]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    small = min(H, W) < 16
    specs = {
        "cnn-small": ([(16, 4, 2, 0), (32, 4, 1, 0)], [100]),
        "cnn-medium": ([(32, 3, 1, 0), (32, 4, 2, 1), (64, 3, 1, 0), (64, 4, 2, 1)], [512, 512]),
        "cnn7": ([(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)], [512]),
    }
    if name not in specs:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    convs, fcs = specs[name]
    ch, h, w = C, H, W
    for out, k, s, p in convs:
        p = max(p, 1) if small else p
        layers.append(nn.Conv2d(ch, out, k, stride=s, padding=p))
        ch, h, w = out, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        if h < 1 or w < 1:
            raise ValueError(f"{name} does not fit inputs of shape {in_shape}")
        layers.append(_act(act, (ch, h, w)))
    layers.append(nn.Flatten())
    width = ch * h * w
    for f in fcs:
        layers += [nn.Linear(width, f), _act(act, (f,))]
        width = f
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def ramps(model: nn.Module) -> list[ParamRamp]:
    return [m for m in model.modules() if isinstance(m, ParamRamp)]


def set_eta(model: nn.Module, eta: float) -> None:
    for m in ramps(model):
        m.eta = float(eta)


@torch.no_grad()
def init_ramps(model: nn.Sequential, x: torch.Tensor) -> None:
    """Set every ramp's corner to its neuron's mean activation (ReLU of the pre-activation) on ``x``."""
    h = x
    for m in model:
        if isinstance(m, ParamRamp):
            m.r.copy_(torch.relu(h).mean(0).clamp(min=R_FLOOR))
        h = m(h)


def _shapes(model: nn.Sequential, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    cached = getattr(model, "_veracity_shapes", None)
    if cached is not None and cached[0] == tuple(in_shape):
        return cached[1]
    out = []
    with torch.no_grad():
        h = torch.zeros(1, *in_shape, dtype=next(model.parameters()).dtype)
        for m in model:
            h = m(h)
            out.append(tuple(h.shape[1:]))
    model._veracity_shapes = (tuple(in_shape), out)
    return out


def live_graph(model: nn.Sequential, in_shape: tuple[int, ...]) -> Graph:
    """The graph of ``model`` whose parameters are the module's own tensors (autograd flows through them)."""
    nodes = [Node("x", "input", (), tuple(in_shape))]
    prev = "x"
    for i, (m, shape) in enumerate(zip(model, _shapes(model, in_shape), strict=True)):
        name = f"{i}"
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError("only numeric zero padding is supported")
            p = {"weight": m.weight, "stride": list(m.stride), "padding": list(m.padding),
                 "dilation": list(m.dilation), "groups": m.groups}
            if m.bias is not None:
                p["bias"] = m.bias
            op = "conv"
        elif isinstance(m, nn.Linear):
            p = {"W": m.weight} if m.bias is None else {"W": m.weight, "b": m.bias}
            op = "linear"
        elif isinstance(m, nn.Flatten):
            op, p = "reshape", {"shape": (math.prod(shape),)}
        elif isinstance(m, nn.ReLU):
            op, p = "relu", {}
        elif isinstance(m, nn.LeakyReLU):
            op, p = "leaky_relu", {"alpha": float(m.negative_slope)}
        elif isinstance(m, ParamRamp):
            op, p = "paramramp", {"r": m.corner(), "eta": m.eta}
        else:
            raise ValueError(f"live_graph does not know module {type(m).__name__}")
        nodes.append(Node(name, op, (prev,), tuple(shape), p, origin=f"{type(m).__name__} {i}"))
        prev = name
    return Graph(nodes, "x", prev)
