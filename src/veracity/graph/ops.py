"""Op kinds of the IR: evaluation, and for linear ops the pieces every bound algorithm needs.

A linear op with inputs x_1..x_K computes ``y = sum_k L_k(x_k) + c``. It provides
- ``apply(node, p, k, x)``: L_k(x) for a batch x (no constant),
- ``abs(node, p, k, x)``: |L_k|(x), the map with every coefficient replaced by its magnitude; with
  ``apply`` it gives the positive and negative parts (``(L ± |L|)/2``) that interval arithmetic and
  forward linear bounds need. Ops whose coefficients are all non-negative set ``nonneg`` and skip it,
- ``adjoint(node, p, k, A)``: L_k^T A, which backward (CROWN) bounds need,
- ``const(node, p)``: c, or None.
Nonlinear ops (relu, sigmoid, maxpool, ...) only evaluate here; their relaxations live in
:mod:`veracity.relax`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPS: dict[str, Op] = {}


def _register(name):
    def deco(cls):
        OPS[name] = cls()
        cls.name = name
        return cls

    return deco


def _vjp(f, in_shape, A: torch.Tensor) -> torch.Tensor:
    """Adjoint of a linear map ``f`` applied to ``A`` (autograd; differentiable in A)."""
    x = torch.zeros(A.shape[0], *in_shape, dtype=A.dtype, device=A.device, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(x), x, A, create_graph=A.requires_grad)
    return g


def cached_abs(p: dict, key: str) -> torch.Tensor:
    a = p.get("_abs_" + key)
    if a is None:
        a = p["_abs_" + key] = p[key].abs()
    return a


class Op:
    linear = False
    n_inputs = 1

    def forward(self, node, p, *xs):
        raise NotImplementedError


class LinearOp(Op):
    linear = True

    def forward(self, node, p, *xs):
        y = self.apply(node, p, 0, xs[0])
        for k in range(1, len(xs)):
            y = y + self.apply(node, p, k, xs[k])
        c = self.const(node, p)
        return y if c is None else y + c

    def apply(self, node, p, k, x):
        raise NotImplementedError

    nonneg = True

    def abs(self, node, p, k, x):
        return self.apply(node, p, k, x)

    def adjoint(self, node, p, k, A):
        in_shape = node.in_shapes[k]
        return _vjp(lambda x: self.apply(node, p, k, x), in_shape, A)

    def const(self, node, p):
        return None


# -- nodes without inputs -------------------------------------------------------------------------


@_register("input")
class Input(Op):
    n_inputs = 0


@_register("const")
class Const(Op):
    """A per-sample constant tensor ``value`` (shape = node.shape), the same for every batch entry."""

    n_inputs = 0


# -- linear ops ----------------------------------------------------------------------------------


@_register("linear")
class Linear(LinearOp):
    """y = x @ W.T + b over the last axis; W (m, n), b (m,) or None."""

    def apply(self, node, p, k, x):
        return x @ p["W"].T

    nonneg = False

    def abs(self, node, p, k, x):
        return x @ cached_abs(p, "W").T

    def adjoint(self, node, p, k, A):
        return A @ p["W"]

    def const(self, node, p):
        return p.get("b")


def _conv(x, w, p):
    f = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return f(x, w, None, p["stride"], p["padding"], p["dilation"], p["groups"])


def _conv_t(x, w, p):
    f = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[w.dim()]
    return f(x, w, None, p["stride"], p["padding"], p["output_padding"], p["groups"], p["dilation"])


def _channel_bias(node, p):
    b = p.get("bias")
    if b is None:
        return None
    return b.reshape(-1, *([1] * (p["weight"].dim() - 2)))


@_register("conv")
class Conv(LinearOp):
    """N-d convolution (1-3 spatial dims); symmetric zero padding (asymmetric pads become a pad node)."""

    def apply(self, node, p, k, x):
        return _conv(x, p["weight"], p)

    nonneg = False

    def abs(self, node, p, k, x):
        return _conv(x, cached_abs(p, "weight"), p)

    def adjoint(self, node, p, k, A):
        in_shape = node.in_shapes[0]
        w = p["weight"]
        # The adjoint of a convolution is a transposed convolution whose output padding restores the
        # input size (the strided convolution may have ignored a few trailing rows/columns).
        out_pad = []
        for d in range(w.dim() - 2):
            full = (node.shape[1 + d] - 1) * p["stride"][d] - 2 * p["padding"][d]
            full += p["dilation"][d] * (w.shape[2 + d] - 1) + 1
            out_pad.append(in_shape[1 + d] - full)
        f = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[w.dim()]
        return f(A, w, None, p["stride"], p["padding"], out_pad, p["groups"], p["dilation"])

    def const(self, node, p):
        return _channel_bias(node, p)


@_register("conv_transpose")
class ConvTranspose(LinearOp):
    def apply(self, node, p, k, x):
        return _conv_t(x, p["weight"], p)

    nonneg = False

    def abs(self, node, p, k, x):
        return _conv_t(x, cached_abs(p, "weight"), p)

    def adjoint(self, node, p, k, A):
        return _conv(A, p["weight"], p)

    def const(self, node, p):
        return _channel_bias(node, p)


@_register("scale_shift")
class ScaleShift(LinearOp):
    """y = x * scale + shift, with constant tensors broadcast over one sample (either may be None)."""

    def apply(self, node, p, k, x):
        s = p.get("scale")
        return x if s is None else x * s

    nonneg = False

    def abs(self, node, p, k, x):
        s = p.get("scale")
        return x if s is None else x * cached_abs(p, "scale")

    def adjoint(self, node, p, k, A):
        return self.apply(node, p, k, A)

    def const(self, node, p):
        return p.get("shift")


@_register("add")
class Add(LinearOp):
    """Sum of K inputs of equal shape."""

    n_inputs = -1

    def apply(self, node, p, k, x):
        return x

    def adjoint(self, node, p, k, A):
        return A


@_register("sub")
class Sub(LinearOp):
    """x_0 - x_1 (equal shapes)."""

    n_inputs = 2

    def apply(self, node, p, k, x):
        return x if k == 0 else -x

    nonneg = False

    def abs(self, node, p, k, x):
        return x

    def adjoint(self, node, p, k, A):
        return A if k == 0 else -A


@_register("reshape")
class Reshape(LinearOp):
    def apply(self, node, p, k, x):
        return x.reshape(x.shape[0], *p["shape"])

    def adjoint(self, node, p, k, A):
        return A.reshape(A.shape[0], *node.in_shapes[0])


@_register("transpose")
class Transpose(LinearOp):
    """Permutes the per-sample axes by ``perm``."""

    def apply(self, node, p, k, x):
        return x.permute(0, *[a + 1 for a in p["perm"]])

    def adjoint(self, node, p, k, A):
        inv = [0] * len(p["perm"])
        for i, a in enumerate(p["perm"]):
            inv[a] = i
        return A.permute(0, *[a + 1 for a in inv])


@_register("concat")
class Concat(LinearOp):
    """Concatenation of K inputs along per-sample ``axis``."""

    n_inputs = -1

    def _span(self, node, k):
        sizes = [s[node.params["axis"]] for s in node.in_shapes]
        start = sum(sizes[:k])
        return start, start + sizes[k]

    def forward(self, node, p, *xs):
        return torch.cat(xs, dim=p["axis"] + 1)

    def apply(self, node, p, k, x):
        a, b = self._span(node, k)
        total = node.shape[p["axis"]]
        pad = [0, 0] * (len(node.shape) - 1 - p["axis"]) + [a, total - b]
        return F.pad(x, pad)

    def adjoint(self, node, p, k, A):
        a, b = self._span(node, k)
        return A.narrow(p["axis"] + 1, a, b - a)


@_register("gather")
class Gather(LinearOp):
    """Selects entries ``index`` (1-D long tensor) along per-sample ``axis`` (Slice, Split, Gather, Resize)."""

    def apply(self, node, p, k, x):
        return x.index_select(p["axis"] + 1, p["index"])

    def adjoint(self, node, p, k, A):
        in_shape = node.in_shapes[0]
        out = A.new_zeros(A.shape[0], *in_shape)
        return out.index_add(p["axis"] + 1, p["index"], A)


@_register("pad")
class Pad(LinearOp):
    """Zero padding; ``pads`` is a list of (before, after) per per-sample axis (non-negative)."""

    def _torch_pads(self, p):
        out = []
        for b, a in reversed(p["pads"]):
            out += [b, a]
        return out

    def apply(self, node, p, k, x):
        return F.pad(x, self._torch_pads(p))

    def adjoint(self, node, p, k, A):
        for ax, (b, a) in enumerate(p["pads"]):
            if b or a:
                A = A.narrow(ax + 1, b, A.shape[ax + 1] - b - a)
        return A


@_register("reduce_sum")
class ReduceSum(LinearOp):
    def apply(self, node, p, k, x):
        return x.sum(dim=[a + 1 for a in p["axes"]], keepdim=p["keepdims"])

    def adjoint(self, node, p, k, A):
        in_shape = node.in_shapes[0]
        if not p["keepdims"]:
            for a in sorted(p["axes"]):
                A = A.unsqueeze(a + 1)
        return A.expand(A.shape[0], *in_shape)


@_register("avgpool")
class AvgPool(LinearOp):
    """Average pooling without padding (padding is a separate pad node, plus a scale for exclusion)."""

    def apply(self, node, p, k, x):
        f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(p["kernel"])]
        return f(x, p["kernel"], p["stride"])


# -- nonlinear ops ---------------------------------------------------------------------------------


@_register("relu")
class Relu(Op):
    def forward(self, node, p, x):
        return torch.relu(x)


@_register("leaky_relu")
class LeakyRelu(Op):
    def forward(self, node, p, x):
        return F.leaky_relu(x, p["alpha"])


@_register("paramramp")
class ParamRamp(Op):
    """``eta*x`` below 0, ``x`` on [0, r], ``eta*x + (1 - eta)*r`` above r; ``r`` (one sample's shape) >= 0."""

    def forward(self, node, p, x):
        return p["eta"] * x + (1.0 - p["eta"]) * torch.minimum(x.clamp(min=0.0), p["r"])


@_register("sigmoid")
class Sigmoid(Op):
    def forward(self, node, p, x):
        return torch.sigmoid(x)


@_register("tanh")
class Tanh(Op):
    def forward(self, node, p, x):
        return torch.tanh(x)


@_register("maxpool")
class MaxPool(Op):
    """Max pooling with symmetric implicit -inf padding; kernel/stride/padding/dilation per spatial dim."""

    def forward(self, node, p, x):
        f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(p["kernel"])]
        return f(x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"])


@_register("mul")
class Mul(Op):
    """Elementwise product of two inputs of equal shape."""

    n_inputs = 2

    def forward(self, node, p, x, y):
        return x * y


@_register("div")
class Div(Op):
    """Elementwise quotient of two inputs of equal shape."""

    n_inputs = 2

    def forward(self, node, p, x, y):
        return x / y


NONLINEAR = sorted(k for k, v in OPS.items() if not v.linear and v.n_inputs != 0)
