"""Import ``torch.nn.Module`` networks into the graph IR by tracing them with :mod:`torch.fx`.

The module is traced symbolically (``torch.fx.symbolic_trace``), so its ``forward`` must not branch on
tensor values. Standard ``torch.nn`` layers arrive as ``call_module`` nodes, functions and tensor methods as
``call_function``/``call_method``; each maps to IR nodes through the same :class:`GraphBuilder` expansions
the ONNX importer uses (Clip/Hardtanh as affine maps around ReLUs, padded pooling, broadcasting, ...).

The network is imported with inference (``eval()``) semantics whatever the module's mode: batch norm uses
its running statistics and dropout is the identity. Values that do not depend on the input (sizes, buffers,
arithmetic on them) are computed while importing, with a batch size of 1, as in the ONNX importer.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from veracity.graph.ir import Graph, UnsupportedError
from veracity.graph.onnx_import import GraphBuilder, _Var

__all__ = ["from_torch"]


def from_torch(module: nn.Module, input_shape: Sequence[int]) -> Graph:
    """The IR graph of ``module`` for inputs of per-sample shape ``input_shape`` (without the batch axis)."""
    return _TorchImporter(module, tuple(int(d) for d in input_shape)).run()


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.to(torch.float64).numpy().copy()
    return t.numpy().copy()


def _tuple(v, n: int) -> list[int]:
    """An int or a sequence of ints as a list of ``n`` ints (torch's ``_pair`` and friends)."""
    if isinstance(v, (int, np.integer)):
        return [int(v)] * n
    v = [int(t) for t in v]
    return v * n if len(v) == 1 else v


def _name(obj) -> str:
    """A readable name for a traced call target (``torch.relu``, ``F.relu``, ``operator.add``)."""
    if isinstance(obj, str):
        return obj
    mod = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__name__", None) or repr(obj)
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod == "builtins":
        return name
    if mod.startswith("torch") or not mod:
        return f"torch.{name}"
    return f"{mod}.{name}"


class _TorchImporter(GraphBuilder):
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]):
        super().__init__(f"torch module {type(module).__name__}")
        self.module = module
        self.input_shape = input_shape
        self.functions = self._function_table()
        self.methods = self._method_table()
        self.modules = self._module_table()

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> Graph:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"from_torch expects a torch.nn.Module, got {type(self.module).__name__}")
        if not self.input_shape or any(d <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {self.input_shape}")
        module = self.module
        if type(module).__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential):
            module = nn.Sequential(module)  # a bare layer: trace it as a call, like inside a network
        try:
            gm = torch.fx.symbolic_trace(module)
        except Exception as e:  # TraceError, or any error raised by forward on proxies
            raise UnsupportedError(f"{self.source}: torch.fx cannot trace the module: {e}") from None
        env: dict[torch.fx.Node, object] = {}
        inp = out = None
        for n in gm.graph.nodes:
            self.origin = f"torch.fx {n.op} '{n.name}'"
            if n.op == "placeholder":
                if inp is None:
                    inp = self.input(n.name, self.input_shape, f"torch input '{n.name}'")
                    env[n] = inp
                elif n.args:  # an optional argument left at its default
                    env[n] = n.args[0]
                else:
                    self.fail("the module takes more than one input; only one is supported")
                continue
            if n.op == "output":
                out = torch.fx.node.map_arg(n.args[0], lambda a: env[a])
                if not isinstance(out, _Var):
                    if isinstance(out, (tuple, list, dict)):
                        self.fail("the module returns several values; only one output is supported")
                    self.fail("the output does not depend on the input")
                continue
            args = torch.fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a])
            if n.op == "get_attr":
                env[n] = self.get_attr(gm, n.target)
            elif n.op == "call_module":
                mod = gm.get_submodule(n.target)
                self.origin = f"torch module '{n.target}' ({type(mod).__name__})"
                env[n] = self.call_module(mod, n.name, args, kwargs)
            elif n.op == "call_function":
                self.origin = f"torch.fx call '{n.name}' ({_name(n.target)})"
                env[n] = self.call_function(n.target, n.name, args, kwargs)
            elif n.op == "call_method":
                self.origin = f"torch.fx call '{n.name}' (Tensor.{n.target})"
                env[n] = self.call_method(n.target, n.name, args, kwargs)
            else:  # pragma: no cover - fx has no other node kinds
                self.fail(f"unknown fx node kind {n.op!r}")
        return self.graph(inp, out)

    def get_attr(self, gm, target: str):
        obj = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return _np(obj) if torch.is_tensor(obj) else obj

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _has_var(v) -> bool:
        if isinstance(v, _Var):
            return True
        if isinstance(v, (list, tuple)):
            return any(_TorchImporter._has_var(t) for t in v)
        if isinstance(v, dict):
            return any(_TorchImporter._has_var(t) for t in v.values())
        return False

    @staticmethod
    def _to_torch(v):
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v)
        if isinstance(v, list):
            return [_TorchImporter._to_torch(t) for t in v]
        if isinstance(v, tuple) and not isinstance(v, torch.Size):
            return tuple(_TorchImporter._to_torch(t) for t in v)
        if isinstance(v, dict):
            return {k: _TorchImporter._to_torch(t) for k, t in v.items()}
        return v

    @staticmethod
    def _from_torch(v):
        if torch.is_tensor(v):
            return _np(v)
        if isinstance(v, (list, tuple)) and not isinstance(v, torch.Size):
            return type(v)(_TorchImporter._from_torch(t) for t in v)
        return v

    def fold(self, fn, args, kwargs):
        """Evaluate a call on constants (shape arithmetic, buffers) directly."""
        try:
            return self._from_torch(fn(*self._to_torch(args), **self._to_torch(kwargs)))
        except Exception as e:
            self.fail(f"cannot evaluate on constants: {e}")

    def var(self, v, what: str = "this argument") -> _Var:
        if not isinstance(v, _Var):
            self.fail(f"{what} must depend on the network input")
        return v

    @staticmethod
    def arg(args, kwargs, i: int, name: str, default=None):
        if len(args) > i:
            return args[i]
        return kwargs.get(name, default)

    def shape_args(self, args) -> list[int]:
        """``view(a, b, c)`` / ``view((a, b, c))`` arguments as a list of ints."""
        if len(args) == 1 and isinstance(args[0], (list, tuple, torch.Size)):
            args = args[0]
        if any(isinstance(a, _Var) for a in args):
            self.fail("a shape computed from network values is not supported")
        return [int(a) for a in args]

    def reshape_to(self, x: _Var, shape, base) -> _Var:
        shape = list(shape)
        if shape.count(-1) > 1:
            self.fail(f"shape {shape} has more than one -1")
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = math.prod(x.full) // max(known, 1)
        return self.reshape(x, shape, base)

    def flatten(self, x: _Var, start: int, end: int, base) -> _Var:
        r = len(x.full)
        start, end = start % r, end % r
        if start > end:
            self.fail(f"flatten from dim {start} to {end}")
        return self.reshape(x, x.full[:start] + (math.prod(x.full[start : end + 1]),) + x.full[end + 1 :], base)

    def clip(self, x, lo, hi, base) -> _Var:
        bounds = []
        for b in (lo, hi):
            if isinstance(b, _Var) or (b is not None and np.size(b) != 1):
                self.fail("clamping to tensor bounds is not supported (only to numbers)")
            bounds.append(None if b is None else float(np.asarray(b).reshape(-1)[0]))
        return super().clip(self.var(x, "the clamped value"), *bounds, base)

    def binary_op(self, kind: str, a, b, base, alpha=1):
        if alpha != 1:
            b = self.binary("mul", b, np.asarray(float(alpha)), base) if isinstance(b, _Var) else np.asarray(b) * alpha
        for v in (a, b):
            if not isinstance(v, (_Var, np.ndarray, int, float, bool, np.number)):
                self.fail(f"unsupported operand of type {type(v).__name__}")
        return self.binary(kind, a, b, base)

    def getitem(self, x: _Var, idx, base) -> _Var:
        """Basic indexing (ints, slices, None, Ellipsis) that keeps the batch axis."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(isinstance(i, (_Var, np.ndarray, list, torch.Tensor)) for i in idx):
            self.fail("advanced (tensor/list) indexing is not supported")
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        if idx.count(Ellipsis) > 1 or n_real > len(x.full):
            self.fail(f"index {idx} for a value of rank {len(x.full)}")
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (len(x.full) - n_real) + idx[k + 1 :]
        else:
            idx = idx + (slice(None),) * (len(x.full) - n_real)
        out, ax = [], 0
        for i in idx:
            if i is None:
                out.append(1)
                continue
            n = x.full[ax]
            if ax == 0:
                if not (isinstance(i, slice) and np.array_equal(np.arange(n)[i], [0])):
                    self.fail("indexing the batch dimension is not supported")
                out.append(1)
            elif isinstance(i, slice):
                sel = np.arange(n)[i]
                x = self.gather_range(x, ax - 1, sel, base)
                out.append(len(sel))
            elif isinstance(i, (int, np.integer)):
                if not -n <= i < n:
                    self.fail(f"index {i} out of range for a dimension of size {n}")
                x = self.gather_range(x, ax - 1, [int(i) % n], base)
            else:
                self.fail(f"unsupported index {i!r}")
            ax += 1
        return self.reshape(x, out, base)

    def permute(self, x: _Var, dims, base) -> _Var:
        return self.transpose(x, [int(d) for d in dims], base)

    def transpose2(self, x: _Var, d0: int, d1: int, base) -> _Var:
        perm = list(range(len(x.full)))
        d0, d1 = d0 % len(perm), d1 % len(perm)
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return self.transpose(x, perm, base)

    def cat(self, tensors, dim, base) -> _Var:
        if not any(isinstance(t, _Var) for t in tensors):
            return self.fold(torch.cat, (tensors,), {"dim": dim})
        return self.concat(list(tensors), int(dim), base)

    def squeeze(self, x: _Var, dim, base) -> _Var:
        r = len(x.full)
        dims = range(1, r) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        dims = {d % r for d in dims if x.full[d % r] == 1}
        if 0 in dims and dim is not None:
            self.fail("squeezing the batch dimension is not supported")
        dims.discard(0)
        return self.reshape(x, [d for i, d in enumerate(x.full) if i not in dims], base)

    def unsqueeze(self, x: _Var, dim: int, base) -> _Var:
        dim = dim % (len(x.full) + 1)
        if dim == 0:
            self.fail("unsqueezing at dim 0 would move the batch dimension")
        out = list(x.full)
        out.insert(dim, 1)
        return self.reshape(x, out, base)

    def reduce(self, x: _Var, dim, keepdim: bool, mean: bool, base) -> _Var:
        r = len(x.full)
        dims = list(range(r)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        return self.reduce_sum(x, [self.axis(int(d), r) for d in dims], keepdim, mean, base)

    def matmul(self, a, b, base) -> _Var:
        if isinstance(a, _Var) and isinstance(b, np.ndarray) and b.ndim in (1, 2):
            if b.ndim == 1:
                y = self.linear(a, b[None], None, base)
                return self.reshape(y, y.full[:-1], base)
            return self.linear(a, b.T, None, base)
        if isinstance(b, _Var) and isinstance(a, np.ndarray) and a.ndim == 2 and len(b.shape) >= 2:
            r = len(b.full)
            perm = list(range(r - 2)) + [r - 1, r - 2]
            y = self.linear(self.transpose(b, perm, base), a, None, base)
            return self.transpose(y, perm, base)
        self.fail("matmul of two network values (or of this constant shape) is not supported")

    # -- layers ------------------------------------------------------------------------------------
    def conv_layer(self, x, w, b, stride, padding, dilation, groups, base, padding_mode="zeros") -> _Var:
        x = self.var(x, "the convolution input")
        if padding_mode != "zeros":
            self.fail(f"padding_mode '{padding_mode}' is not supported (only 'zeros')")
        nd = w.ndim - 2
        stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
        if isinstance(padding, str):
            if padding == "valid":
                pb = pe = [0] * nd
            elif padding == "same":
                total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:], strict=True)]
                pb = [t // 2 for t in total]
                pe = [t - t // 2 for t in total]
            else:
                self.fail(f"padding '{padding}' is not supported")
        else:
            pb = pe = _tuple(padding, nd)
        return self.conv(x, w, b, stride, pb, pe, dilation, int(groups), base)

    def conv_module(self, m, base, x):
        w = _np(m.weight)
        b = None if m.bias is None else _np(m.bias)
        return self.conv_layer(x, w, b, m.stride, m.padding, m.dilation, m.groups, base, m.padding_mode)

    def conv_t_module(self, m, base, x):
        x = self.var(x, "the convolution input")
        if m.padding_mode != "zeros":
            self.fail(f"padding_mode '{m.padding_mode}' is not supported (only 'zeros')")
        w = _np(m.weight)
        nd = w.ndim - 2
        pad = _tuple(m.padding, nd)
        b = None if m.bias is None else _np(m.bias)
        return self.conv_transpose(
            x,
            w,
            b,
            _tuple(m.stride, nd),
            pad,
            pad,
            _tuple(m.output_padding, nd),
            _tuple(m.dilation, nd),
            m.groups,
            base,
        )

    def batchnorm_module(self, m, base, x):
        x = self.var(x, "the batch-norm input")
        if m.running_mean is None or m.running_var is None:
            self.fail("batch norm without running statistics (track_running_stats=False) is not supported")
        c = m.running_mean.numel()
        gamma = _np(m.weight) if m.weight is not None else np.ones(c)
        beta = _np(m.bias) if m.bias is not None else np.zeros(c)
        if not x.shape or x.shape[0] != c:
            self.fail(f"batch norm over {c} channels on per-sample input {x.shape}")
        return self.batchnorm(x, gamma, beta, _np(m.running_mean), _np(m.running_var), float(m.eps), base)

    def pool(
        self,
        kind: str,
        x,
        nd: int,
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
        base,
        count_include_pad=True,
        divisor_override=None,
        return_indices=False,
    ) -> _Var:
        x = self.var(x, "the pooling input")
        if ceil_mode:
            self.fail("pooling with ceil_mode=True is not supported")
        if return_indices:
            self.fail("max pooling with return_indices=True is not supported")
        if divisor_override is not None:
            self.fail("average pooling with divisor_override is not supported")
        if len(x.shape) not in (nd, nd + 1):
            self.fail(f"{nd}-d pooling on per-sample input {x.shape}")
        if len(x.shape) == nd:  # unbatched-style input without channels is not what we get here
            self.fail(f"{nd}-d pooling needs a channel axis; per-sample input is {x.shape}")
        kernel = _tuple(kernel, nd)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _tuple(stride, nd)
        pad = _tuple(padding, nd)
        if kind == "max":
            return self.maxpool(x, kernel, stride, pad, pad, _tuple(dilation, nd), base)
        return self.avgpool(x, kernel, stride, pad, pad, bool(count_include_pad), base)

    def adaptive_avg(self, x, nd: int, output_size, base) -> _Var:
        x = self.var(x, "the pooling input")
        if len(x.shape) != nd + 1:
            self.fail(f"{nd}-d adaptive pooling on per-sample input {x.shape}")
        ins = x.shape[1:]
        outs = [n if o is None else o for o, n in zip(_tuple_none(output_size, nd), ins, strict=True)]
        if any(n % o for n, o in zip(ins, outs, strict=True)):
            self.fail(f"adaptive average pooling from {ins} to {outs} (sizes not divisible) is not supported")
        if all(o == 1 for o in outs):
            return self.reduce_sum(x, list(range(1, nd + 1)), True, True, base)
        kernel = [n // o for n, o in zip(ins, outs, strict=True)]
        return self.avgpool(x, kernel, kernel, [0] * nd, [0] * nd, True, base)

    # -- dispatch tables ---------------------------------------------------------------------------
    def _module_table(self):
        act = lambda op: lambda m, base, x: self.add(op, [self.var(x)], base=base)  # noqa: E731
        ident = lambda m, base, x, *a, **k: x  # noqa: E731

        def pool(kind, nd):
            def f(m, base, x):
                if kind == "max":
                    return self.pool(
                        "max",
                        x,
                        nd,
                        m.kernel_size,
                        m.stride,
                        m.padding,
                        m.dilation,
                        m.ceil_mode,
                        base,
                        return_indices=m.return_indices,
                    )
                return self.pool(
                    "avg",
                    x,
                    nd,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    1,
                    m.ceil_mode,
                    base,
                    m.count_include_pad,
                    getattr(m, "divisor_override", None),
                )

            return f

        return [
            (
                nn.Linear,
                lambda m, base, x: self.linear(
                    self.var(x), _np(m.weight), None if m.bias is None else _np(m.bias), base
                ),
            ),
            ((nn.Conv1d, nn.Conv2d, nn.Conv3d), self.conv_module),
            ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), self.conv_t_module),
            ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), self.batchnorm_module),
            (nn.ReLU, act("relu")),
            (
                nn.LeakyReLU,
                lambda m, base, x: self.add("leaky_relu", [self.var(x)], {"alpha": float(m.negative_slope)}, base),
            ),
            (nn.Sigmoid, act("sigmoid")),
            (nn.Tanh, act("tanh")),
            (nn.Hardtanh, lambda m, base, x: self.clip(x, m.min_val, m.max_val, base)),  # ReLU6 too
            (nn.Flatten, lambda m, base, x: self.flatten(self.var(x), m.start_dim, m.end_dim, base)),
            (nn.Unflatten, lambda m, base, x: self.unflatten(self.var(x), m.dim, m.unflattened_size, base)),
            (nn.Identity, ident),
            ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), ident),
            (nn.MaxPool1d, pool("max", 1)),
            (nn.MaxPool2d, pool("max", 2)),
            (nn.AvgPool1d, pool("avg", 1)),
            (nn.AvgPool2d, pool("avg", 2)),
            (nn.AdaptiveAvgPool1d, lambda m, base, x: self.adaptive_avg(x, 1, m.output_size, base)),
            (nn.AdaptiveAvgPool2d, lambda m, base, x: self.adaptive_avg(x, 2, m.output_size, base)),
        ]

    def unflatten(self, x: _Var, dim: int, sizes, base) -> _Var:
        r = len(x.full)
        dim = dim % r
        return self.reshape_to(x, list(x.full[:dim]) + [int(s) for s in sizes] + list(x.full[dim + 1 :]), base)

    def _function_table(self):
        A = self.arg
        act = lambda op: lambda base, a, k: self.add(op, [self.var(a[0])], base=base)  # noqa: E731

        def binop(kind):
            return lambda base, a, k: self.binary_op(kind, a[0], A(a, k, 1, "other"), base, k.get("alpha", 1))

        def leaky(base, a, k):
            return self.add("leaky_relu", [self.var(a[0])], {"alpha": float(A(a, k, 1, "negative_slope", 0.01))}, base)

        def pool_f(kind, nd):
            def f(base, a, k):
                kernel = A(a, k, 1, "kernel_size")
                stride = A(a, k, 2, "stride")
                pad = A(a, k, 3, "padding", 0)
                if kind == "max":
                    return self.pool(
                        "max",
                        a[0],
                        nd,
                        kernel,
                        stride,
                        pad,
                        A(a, k, 4, "dilation", 1),
                        A(a, k, 5, "ceil_mode", False),
                        base,
                        return_indices=A(a, k, 6, "return_indices"),
                    )
                return self.pool(
                    "avg",
                    a[0],
                    nd,
                    kernel,
                    stride,
                    pad,
                    1,
                    A(a, k, 4, "ceil_mode", False),
                    base,
                    A(a, k, 5, "count_include_pad", True),
                    A(a, k, 6, "divisor_override"),
                )

            return f

        def conv_f(base, a, k):
            w = A(a, k, 1, "weight")
            if not isinstance(w, np.ndarray):
                self.fail("convolution weights must be constants")
            return self.conv_layer(
                a[0],
                w,
                A(a, k, 2, "bias"),
                A(a, k, 3, "stride", 1),
                A(a, k, 4, "padding", 0),
                A(a, k, 5, "dilation", 1),
                A(a, k, 6, "groups", 1),
                base,
            )

        def linear_f(base, a, k):
            w = A(a, k, 1, "weight")
            if not isinstance(w, np.ndarray) or w.ndim != 2:
                self.fail("linear weights must be a constant matrix")
            return self.linear(self.var(a[0]), w, A(a, k, 2, "bias"), base)

        def clamp_f(base, a, k):
            return self.clip(a[0], A(a, k, 1, "min"), A(a, k, 2, "max"), base)

        def hardtanh_f(base, a, k):
            return self.clip(a[0], A(a, k, 1, "min_val", -1.0), A(a, k, 2, "max_val", 1.0), base)

        def relu6_f(base, a, k):
            return self.clip(a[0], 0.0, 6.0, base)

        def flatten_f(base, a, k):
            return self.flatten(self.var(a[0]), int(A(a, k, 1, "start_dim", 0)), int(A(a, k, 2, "end_dim", -1)), base)

        def reshape_f(base, a, k):
            return self.reshape_to(self.var(a[0]), self.shape_args([A(a, k, 1, "shape")]), base)

        def cat_f(base, a, k):
            return self.cat(A(a, k, 0, "tensors"), A(a, k, 1, "dim", 0), base)

        def permute_f(base, a, k):
            return self.permute(self.var(a[0]), A(a, k, 1, "dims"), base)

        def transpose_f(base, a, k):
            return self.transpose2(self.var(a[0]), int(A(a, k, 1, "dim0")), int(A(a, k, 2, "dim1")), base)

        def neg_f(base, a, k):
            return self.scale_shift(self.var(a[0]), -1.0, None, base)

        def getitem_f(base, a, k):
            return self.getitem(self.var(a[0]), a[1], base)

        def matmul_f(base, a, k):
            return self.matmul(a[0], A(a, k, 1, "other"), base)

        def reduce_f(mean):
            return lambda base, a, k: self.reduce(
                self.var(a[0]), A(a, k, 1, "dim"), bool(A(a, k, 2, "keepdim", False)), mean, base
            )

        def getattr_f(base, a, k):
            x, name = self.var(a[0]), a[1]
            if name == "shape":
                return torch.Size(x.full)
            if name == "ndim":
                return len(x.full)
            return self.fail(f"tensor attribute .{name} is not supported")

        def squeeze_f(base, a, k):
            return self.squeeze(self.var(a[0]), A(a, k, 1, "dim"), base)

        def unsqueeze_f(base, a, k):
            return self.unsqueeze(self.var(a[0]), int(A(a, k, 1, "dim")), base)

        table = {
            torch.relu: act("relu"),
            F.relu: act("relu"),
            torch.sigmoid: act("sigmoid"),
            F.sigmoid: act("sigmoid"),
            torch.tanh: act("tanh"),
            F.tanh: act("tanh"),
            F.leaky_relu: leaky,
            F.hardtanh: hardtanh_f,
            F.relu6: relu6_f,
            torch.clamp: clamp_f,
            torch.clip: clamp_f,
            operator.add: binop("add"),
            operator.iadd: binop("add"),
            torch.add: binop("add"),
            operator.sub: binop("sub"),
            operator.isub: binop("sub"),
            torch.sub: binop("sub"),
            operator.mul: binop("mul"),
            operator.imul: binop("mul"),
            torch.mul: binop("mul"),
            operator.truediv: binop("div"),
            operator.itruediv: binop("div"),
            torch.div: binop("div"),
            operator.neg: neg_f,
            torch.neg: neg_f,
            torch.flatten: flatten_f,
            torch.reshape: reshape_f,
            torch.cat: cat_f,
            torch.concat: cat_f,
            torch.concatenate: cat_f,
            torch.permute: permute_f,
            torch.transpose: transpose_f,
            torch.squeeze: squeeze_f,
            torch.unsqueeze: unsqueeze_f,
            torch.sum: reduce_f(False),
            torch.mean: reduce_f(True),
            operator.getitem: getitem_f,
            getattr: getattr_f,
            operator.matmul: matmul_f,
            torch.matmul: matmul_f,
            F.linear: linear_f,
            F.conv1d: conv_f,
            F.conv2d: conv_f,
            F.max_pool1d: pool_f("max", 1),
            F.max_pool2d: pool_f("max", 2),
            F.avg_pool1d: pool_f("avg", 1),
            F.avg_pool2d: pool_f("avg", 2),
        }
        return table

    def _method_table(self):
        f = self.functions

        def size_m(base, a, k):
            full = self.var(a[0]).full
            d = self.arg(a, k, 1, "dim")
            return torch.Size(full) if d is None else full[int(d)]

        def view_m(base, a, k):
            return self.reshape_to(self.var(a[0]), self.shape_args(a[1:] or [k.get("size", k.get("shape"))]), base)

        def flatten_m(base, a, k):
            return self.flatten(
                self.var(a[0]), int(self.arg(a, k, 1, "start_dim", 0)), int(self.arg(a, k, 2, "end_dim", -1)), base
            )

        def permute_m(base, a, k):
            dims = a[1:] if len(a) > 2 or (len(a) == 2 and isinstance(a[1], int)) else self.arg(a, k, 1, "dims")
            return self.permute(self.var(a[0]), dims, base)

        def ident_m(base, a, k):
            return a[0]

        def dim_m(base, a, k):
            return len(self.var(a[0]).full)

        def unflatten_m(base, a, k):
            return self.unflatten(self.var(a[0]), int(self.arg(a, k, 1, "dim")), self.arg(a, k, 2, "sizes"), base)

        return {
            "relu": f[torch.relu],
            "sigmoid": f[torch.sigmoid],
            "tanh": f[torch.tanh],
            "clamp": f[torch.clamp],
            "clip": f[torch.clamp],
            "add": f[torch.add],
            "sub": f[torch.sub],
            "mul": f[torch.mul],
            "div": f[torch.div],
            "neg": f[torch.neg],
            "matmul": f[torch.matmul],
            "flatten": flatten_m,
            "view": view_m,
            "reshape": view_m,
            "permute": permute_m,
            "transpose": f[torch.transpose],
            "squeeze": f[torch.squeeze],
            "unsqueeze": f[torch.unsqueeze],
            "sum": f[torch.sum],
            "mean": f[torch.mean],
            "size": size_m,
            "dim": dim_m,
            "unflatten": unflatten_m,
            "contiguous": ident_m,
            "clone": ident_m,
            "detach": ident_m,
            "float": ident_m,
            "double": ident_m,
        }

    # -- calls -------------------------------------------------------------------------------------
    def call_module(self, mod: nn.Module, base: str, args, kwargs):
        for cls, fn in self.modules:
            if isinstance(mod, cls):
                if kwargs or len(args) != 1:
                    self.fail(f"{type(mod).__name__} called with extra arguments")
                return fn(mod, base, args[0])
        names = sorted({c.__name__ for cls, _ in self.modules for c in (cls if isinstance(cls, tuple) else (cls,))})
        self.fail(f"unsupported module nn.{type(mod).__name__}. Supported modules: {', '.join(names)}")

    def call_function(self, fn, base: str, args, kwargs):
        if not self._has_var(args) and not self._has_var(kwargs):
            return self.fold(fn, args, kwargs)
        handler = self.functions.get(fn)
        if handler is None:
            names = sorted({_name(f) for f in self.functions})
            self.fail(f"unsupported function {_name(fn)}. Supported functions: {', '.join(names)}")
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        return handler(base, args, kwargs)

    def call_method(self, name: str, base: str, args, kwargs):
        if not self._has_var(args) and not self._has_var(kwargs):
            obj = self._to_torch(args[0])
            return self.fold(getattr(obj, name), args[1:], kwargs)
        handler = self.methods.get(name)
        if handler is None or not isinstance(args[0], _Var):
            self.fail(f"unsupported tensor method .{name}(). Supported methods: {', '.join(sorted(self.methods))}")
        return handler(base, args, kwargs)


def _tuple_none(v, n: int) -> list:
    if v is None or isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v
