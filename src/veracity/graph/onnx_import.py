"""Import ONNX models into the graph IR.

The first dimension of the model's input is the batch; every op must keep it separate (we check). Nodes
whose inputs are all constant are folded with onnx's reference evaluator, so shape arithmetic (Shape,
Gather, Concat, Cast, ...) on constants needs no special code. Everything else maps to the small set of
IR ops in :mod:`veracity.graph.ops`; ops like Clip, AveragePool with padding or broadcasting binary
ops are expressed exactly through several IR nodes. :class:`GraphBuilder` holds those expansions; the
torch importer (:mod:`veracity.graph.torch_import`) builds with it too.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from veracity.graph import ops
from veracity.graph.ir import Graph, Node, UnsupportedError


class OnnxImportError(ValueError):
    """The file is not a readable ONNX model."""


class _Var:
    """A non-constant value: the IR node computing it and its per-sample shape."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, tuple(int(d) for d in shape)

    @property
    def full(self) -> tuple[int, ...]:
        return (1, *self.shape)


def resolve_path(path) -> Path:
    """``path`` itself, or ``path.gz`` when only the compressed file exists (as in VNN-COMP)."""
    p = Path(path)
    if not p.exists() and Path(str(p) + ".gz").exists():
        return Path(str(p) + ".gz")
    return p


def load_onnx(path) -> Graph:
    """Read an ``.onnx`` or ``.onnx.gz`` file into a Graph."""
    p = resolve_path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    data = p.read_bytes()
    if p.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise OnnxImportError(f"{p}: not a valid gzip file ({e})") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises its own DecodeError
        raise OnnxImportError(f"{p}: not a valid ONNX model ({e})") from None
    if not model.graph.node:
        raise OnnxImportError(f"{p}: the ONNX model has no nodes")
    return from_onnx(model, source=str(p))


def from_onnx(model: onnx.ModelProto, source: str = "<model>") -> Graph:
    return _Importer(model, source).run()


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _f64(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


FLOAT32_MAX = float(np.finfo(np.float32).max)


class GraphBuilder:
    """Builds IR nodes for an importer (ONNX, torch.fx): naming, shapes by evaluation, and the exact
    multi-node expansions (broadcasting, Clip, BatchNorm, padded pooling, ...) that both importers share.

    Values are ``_Var`` (depends on the network input) or ``np.ndarray`` (constant, of the *batched* shape
    where that matters: a constant broadcasts against ``(1, *shape)`` of a variable)."""

    def __init__(self, source: str):
        self.source = source
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.origin = ""

    # -- basics ----------------------------------------------------------------------------------
    def fail(self, msg: str):
        raise UnsupportedError(f"{self.source}: {self.origin}: {msg}")

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}#{i}", i + 1
        self.names.add(name)
        return name

    def input(self, name: str, shape, origin: str) -> _Var:
        name = self.fresh(name)
        self.nodes.append(Node(name, "input", (), tuple(int(d) for d in shape), {}, origin))
        return _Var(name, shape)

    def graph(self, inp: _Var, out) -> Graph:
        if not isinstance(out, _Var):
            raise UnsupportedError(f"{self.source}: the output does not depend on the input")
        return Graph(self.nodes, inp.name, out.name)

    def add(self, op: str, inputs, params=None, base: str = "v") -> _Var:
        """Append an IR node; its shape comes from evaluating it once on zeros."""
        params = params or {}
        ins = [self.as_var(i) for i in inputs]
        node = Node(self.fresh(base), op, tuple(v.name for v in ins), (), params, self.origin)
        node.in_shapes = tuple(v.shape for v in ins)
        if op == "const":
            node.shape = tuple(params["value"].shape)
        else:
            xs = [torch.zeros(1, *v.shape, dtype=torch.float64) for v in ins]
            try:
                y = ops.OPS[op].forward(node, params, *xs)
            except (RuntimeError, ValueError, IndexError) as e:
                self.fail(f"cannot evaluate as {op}: {e}")
            node.shape = tuple(y.shape[1:])
        self.nodes.append(node)
        return _Var(node.name, node.shape)

    def as_var(self, v) -> _Var:
        if isinstance(v, _Var):
            return v
        a = np.asarray(v, dtype=np.float64)
        return self.add("const", [], {"value": _f64(a)}, "const")

    def axis(self, a: int, rank: int) -> int:
        """Normalise an axis of the full, batched tensor to a per-sample axis."""
        a = a + rank if a < 0 else a
        if a == 0:
            self.fail("operating along the batch dimension (axis 0) is not supported")
        if not 0 < a < rank:
            self.fail(f"axis {a} out of range for rank {rank}")
        return a - 1

    def per_sample_const(self, c: np.ndarray, shape) -> np.ndarray:
        """A constant broadcast against a batched tensor of per-sample ``shape``, without the batch axis."""
        c = np.asarray(c, dtype=np.float64)
        full = np.broadcast_shapes(c.shape, (1, *shape))
        if full[0] != 1 or len(full) != len(shape) + 1:
            self.fail(f"a constant of shape {c.shape} would broadcast over the batch dimension")
        return np.ascontiguousarray(np.broadcast_to(c, full)[0], dtype=np.float64)

    def expand(self, v: _Var, shape) -> _Var:
        """Broadcast a variable to per-sample ``shape`` (reshape + repeating gathers, exact)."""
        shape = tuple(shape)
        if v.shape == shape:
            return v
        if len(v.shape) < len(shape):
            v = self.add("reshape", [v], {"shape": (1,) * (len(shape) - len(v.shape)) + v.shape}, "expand")
        for ax, (a, b) in enumerate(zip(v.shape, shape, strict=True)):
            if a != b:
                if a != 1:
                    self.fail(f"cannot broadcast shape {v.shape} to {shape}")
                v = self.add("gather", [v], {"axis": ax, "index": torch.zeros(b, dtype=torch.long)}, "expand")
        return v

    def gather_range(self, v: _Var, axis: int, idx, base: str = "gather") -> _Var:
        idx = np.array(idx, dtype=np.int64).reshape(-1)  # a copy: slices may have negative strides
        if idx.size == v.shape[axis] and np.array_equal(idx, np.arange(v.shape[axis])):
            return v
        return self.add("gather", [v], {"axis": axis, "index": torch.from_numpy(idx)}, base)

    def reshape(self, x: _Var, full, base) -> _Var:
        """Reshape to the batched shape ``full`` (its first entry must be 1, the batch)."""
        full = tuple(int(d) for d in full)
        if len(full) == 0 or full[0] != 1 or math.prod(full) != math.prod(x.full):
            self.fail(f"reshape of {x.full} to {full} would mix the batch dimension")
        if full[1:] == x.shape:
            return x
        return self.add("reshape", [x], {"shape": full[1:]}, base)

    def transpose(self, x: _Var, perm, base) -> _Var:
        """Permute the axes of the batched value by ``perm`` (which must keep axis 0 first)."""
        perm = [int(p) % len(x.full) for p in perm]
        if sorted(perm) != list(range(len(x.full))):
            self.fail(f"{perm} is not a permutation of the {len(x.full)} axes")
        if perm[0] != 0:
            self.fail(f"permutation {perm} moves the batch dimension")
        if perm == sorted(perm):
            return x
        return self.add("transpose", [x], {"perm": [p - 1 for p in perm[1:]]}, base)

    # -- element-wise ------------------------------------------------------------------------------
    def scale_shift(self, x: _Var, scale, shift, base) -> _Var:
        p = {}
        if scale is not None:
            p["scale"] = _f64(self.per_sample_const(scale, x.shape))
        if shift is not None:
            p["shift"] = _f64(self.per_sample_const(shift, x.shape))
        return self.add("scale_shift", [x], p, base)

    def binary(self, kind: str, xa, xb, base) -> _Var:
        """``xa (+ - * /) xb`` with numpy broadcasting; either may be a constant, not both."""
        if isinstance(xa, _Var) and isinstance(xb, _Var):
            shape = np.broadcast_shapes(xa.full, xb.full)
            if shape[0] != 1:
                self.fail("broadcasting over the batch dimension")
            xa, xb = self.expand(xa, shape[1:]), self.expand(xb, shape[1:])
            return self.add(kind, [xa, xb], base=base)
        swapped = not isinstance(xa, _Var)
        x, c = (xb, xa) if swapped else (xa, xb)
        c = np.asarray(c, dtype=np.float64)
        shape = np.broadcast_shapes(x.full, c.shape)
        if shape[0] != 1:
            self.fail(f"a constant of shape {c.shape} would broadcast over the batch dimension")
        x = self.expand(x, shape[1:])
        if kind == "add":
            return self.scale_shift(x, None, c, base)
        if kind == "sub":
            return self.scale_shift(x, -1.0, c, base) if swapped else self.scale_shift(x, None, -c, base)
        if kind == "mul":
            return self.scale_shift(x, c, None, base)
        if swapped:
            self.fail("dividing a constant by a network value is not supported")
        return self.scale_shift(x, 1.0 / c, None, base)

    def clip(self, x: _Var, lo, hi, base) -> _Var:
        """``min(max(x, lo), hi)`` as affine maps around ReLUs (exact).

        Bounds that are infinite or beyond the float32 range (exporters' stand-ins for "none") are dropped:
        ``lo + relu(x - lo)`` would cancel catastrophically for them."""
        lo = None if lo is None or not abs(float(lo)) < FLOAT32_MAX else float(lo)
        hi = None if hi is None or not abs(float(hi)) < FLOAT32_MAX else float(hi)
        # max(x, lo) = lo + relu(x - lo);  min(z, hi) = hi - relu(hi - z)   (lo > hi gives hi, as ONNX does)
        if lo is not None:
            r = self.add("relu", [self.scale_shift(x, None, -lo, base)], base=base)
            x = self.scale_shift(r, None, lo, base)
        if hi is not None:
            r = self.add("relu", [self.scale_shift(x, -1.0, hi, base)], base=base)
            x = self.scale_shift(r, -1.0, hi, base)
        return x

    def batchnorm(self, x: _Var, gamma, beta, mean, var, eps: float, base) -> _Var:
        """Inference-mode batch normalisation over axis 1 of the batched value."""
        if len(x.shape) < 1:
            self.fail("batch normalisation needs a channel axis")
        scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
        bshape = (1, -1) + (1,) * (len(x.shape) - 1)
        return self.scale_shift(x, scale.reshape(bshape), shift.reshape(bshape), base)

    # -- matrix products ---------------------------------------------------------------------------
    def linear(self, x: _Var, W, b, base) -> _Var:
        """``x @ W.T + b`` over the last axis; W (m, n)."""
        p = {"W": _f64(W)}
        if b is not None:
            p["b"] = _f64(np.broadcast_to(np.asarray(b, np.float64), (W.shape[0],)))
        return self.add("linear", [x], p, base)

    def concat(self, vals, axis: int, base) -> _Var:
        """Concatenation along batched ``axis`` of variables and constants (constants with batch size 1)."""
        ref = next(v for v in vals if isinstance(v, _Var))
        ax = self.axis(axis, len(ref.full))
        ins = []
        for v in vals:
            if isinstance(v, _Var):
                ins.append(v)
            else:
                v = np.asarray(v)
                if v.ndim != len(ref.full) or v.shape[0] != 1:
                    self.fail(f"concatenating a constant of shape {v.shape} with a batched value")
                if v.shape[ax + 1] > 0:
                    ins.append(v[0])
        if len(ins) == 1:
            return ins[0]
        return self.add("concat", ins, {"axis": ax}, base)

    # -- convolutions and pooling ------------------------------------------------------------------
    def pad(self, x: _Var, pads_b, pads_e, value: float, base) -> _Var:
        """Constant padding of the trailing ``len(pads_b)`` axes (negative pads crop)."""
        nd = len(pads_b)
        lead = len(x.shape) - nd
        for d, (b, e) in enumerate(zip(pads_b, pads_e, strict=True)):
            if b < 0 or e < 0:
                n = x.shape[lead + d]
                x = self.gather_range(x, lead + d, np.arange(n)[max(-b, 0) : n - max(-e, 0)], base)
        pp = [(0, 0)] * lead + [(max(b, 0), max(e, 0)) for b, e in zip(pads_b, pads_e, strict=True)]
        if not any(b or e for b, e in pp):
            return x
        y = self.add("pad", [x], {"pads": pp}, base)
        if value != 0.0:
            mask = 1.0 - ops.OPS["pad"].apply(None, {"pads": pp}, 0, torch.ones(1, *x.shape, dtype=torch.float64))
            y = self.scale_shift(y, None, (value * mask).numpy(), base)
        return y

    def conv(self, x: _Var, w, b, strides, pads_b, pads_e, dil, groups: int, base) -> _Var:
        w = np.asarray(w, np.float64)
        nd = w.ndim - 2
        if nd not in (1, 2, 3) or len(x.shape) != nd + 1:
            self.fail(f"convolution with weight {w.shape} on per-sample input {x.shape}")
        if list(pads_b) != list(pads_e) or min(pads_b) < 0:  # asymmetric (or cropping) pads: a pad node
            x = self.pad(x, pads_b, pads_e, 0.0, base)
            pads_b = [0] * nd
        p = {
            "weight": _f64(w),
            "stride": [int(s) for s in strides],
            "padding": [int(s) for s in pads_b],
            "dilation": [int(s) for s in dil],
            "groups": int(groups),
        }
        if b is not None:
            p["bias"] = _f64(b)
        return self.add("conv", [x], p, base)

    def conv_transpose(self, x: _Var, w, b, strides, pads_b, pads_e, out_pad, dil, groups: int, base) -> _Var:
        """Transposed convolution; asymmetric pads crop the symmetric result (exact)."""
        w = np.asarray(w, np.float64)
        nd = w.ndim - 2
        if nd not in (1, 2, 3) or len(x.shape) != nd + 1:
            self.fail(f"transposed convolution with weight {w.shape} on per-sample input {x.shape}")
        sym = [min(a, e) for a, e in zip(pads_b, pads_e, strict=True)]
        p = {
            "weight": _f64(w),
            "stride": [int(s) for s in strides],
            "padding": [int(s) for s in sym],
            "output_padding": [int(s) for s in out_pad],
            "dilation": [int(s) for s in dil],
            "groups": int(groups),
        }
        if b is not None:
            p["bias"] = _f64(b)
        y = self.add("conv_transpose", [x], p, base)
        extra_b = [a - s for a, s in zip(pads_b, sym, strict=True)]
        extra_e = [e - s for e, s in zip(pads_e, sym, strict=True)]
        if any(extra_b) or any(extra_e):
            y = self.pad(y, [-t for t in extra_b], [-t for t in extra_e], 0.0, base)
        return y

    def maxpool(self, x: _Var, kernel, strides, pads_b, pads_e, dil, base) -> _Var:
        if list(pads_b) != list(pads_e):
            self.fail(f"max pooling with asymmetric pads {list(pads_b) + list(pads_e)} is not supported")
        p = {
            "kernel": [int(k) for k in kernel],
            "stride": [int(s) for s in strides],
            "padding": [int(s) for s in pads_b],
            "dilation": [int(s) for s in dil],
            "ceil_mode": False,
        }
        return self.add("maxpool", [x], p, base)

    def avgpool(self, x: _Var, kernel, strides, pads_b, pads_e, count_include_pad: bool, base) -> _Var:
        """Average pooling: explicit zero padding, an unpadded average, and for ``count_include_pad=False``
        a rescaling of each window by kernel size / number of real (unpadded) entries."""
        kernel, strides = [int(k) for k in kernel], [int(s) for s in strides]
        padded = any(pads_b) or any(pads_e)
        y = self.pad(x, pads_b, pads_e, 0.0, base) if padded else x
        y = self.add("avgpool", [y], {"kernel": kernel, "stride": strides}, base)
        if padded and not count_include_pad:
            ones = torch.ones(1, *x.shape, dtype=torch.float64)
            lead = len(x.shape) - len(kernel)
            pp = [(0, 0)] * lead + list(zip(pads_b, pads_e, strict=True))
            frac = ops.OPS["avgpool"].apply(
                None, {"kernel": kernel, "stride": strides}, 0, ops.OPS["pad"].apply(None, {"pads": pp}, 0, ones)
            )
            y = self.scale_shift(y, (1.0 / frac).numpy(), None, base)
        return y

    def reduce_sum(self, x: _Var, axes, keepdims: bool, mean: bool, base) -> _Var:
        """Sum (or mean) over per-sample ``axes``."""
        axes = sorted(set(axes))
        y = self.add("reduce_sum", [x], {"axes": axes, "keepdims": bool(keepdims)}, base)
        if mean:
            y = self.scale_shift(y, 1.0 / math.prod(x.shape[t] for t in axes), None, base)
        return y


class _Importer(GraphBuilder):
    def __init__(self, model: onnx.ModelProto, source: str):
        super().__init__(source)
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.env: dict[str, object] = {}  # ONNX value name -> np.ndarray (constant) or _Var

    def const(self, name: str, what: str = "this input") -> np.ndarray:
        v = self.env.get(name)
        if not isinstance(v, np.ndarray):
            self.fail(f"{what} ('{name}') must be a constant")
        return v

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        for init in g.initializer:
            self.env[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in g.input if i.name not in self.env]
        if len(inputs) != 1:
            raise UnsupportedError(
                f"{self.source}: expected exactly one non-constant input, found {[i.name for i in inputs]}"
            )
        inp = inputs[0]
        dims = inp.type.tensor_type.shape.dim
        if len(dims) < 2:
            raise UnsupportedError(
                f"{self.source}: input '{inp.name}' has rank {len(dims)}; a leading batch dimension is required"
            )
        if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, 1):
            raise UnsupportedError(f"{self.source}: input batch dimension is {dims[0].dim_value}, expected 1")
        shape = []
        for d in dims[1:]:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise UnsupportedError(f"{self.source}: input '{inp.name}' has a non-fixed dimension")
            shape.append(d.dim_value)
        x = self.input(inp.name, shape, "ONNX graph input")
        self.env[inp.name] = x

        for node in g.node:
            self.origin = f"ONNX {node.op_type} node '{node.name or node.output[0]}'"
            if node.domain not in ("", "ai.onnx"):
                self.unsupported(node)
            present = [i for i in node.input if i]
            if all(isinstance(self.env.get(i), np.ndarray) for i in present):
                self.fold(node)
                continue
            for i in present:
                if i not in self.env:
                    self.fail(f"input '{i}' is not defined")
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                self.unsupported(node)
            outs = handler(node, _attrs(node))
            if isinstance(outs, (_Var, np.ndarray)):
                outs = [outs]
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    self.env[name] = v

        if len(g.output) != 1:
            raise UnsupportedError(f"{self.source}: expected one graph output, found {len(g.output)}")
        return self.graph(x, self.env.get(g.output[0].name))

    def unsupported(self, node):
        supported = sorted(n[3:] for n in dir(self) if n.startswith("op_"))
        self.fail(f"unsupported op '{node.op_type}'. Supported ops: {', '.join(supported)}")

    def fold(self, node):
        feeds = {i: self.env[i] for i in node.input if i}
        try:
            outs = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception as e:
            self.fail(f"cannot evaluate constant node: {e}")
        for name, v in zip(node.output, outs, strict=False):
            if name:
                self.env[name] = np.asarray(v)

    def v(self, node, i=0) -> _Var:
        x = self.env[node.input[i]]
        if not isinstance(x, _Var):
            self.fail(f"input {i} must depend on the network input")
        return x

    def opt_input(self, node, i):
        """Optional constant input i (None when absent)."""
        if len(node.input) > i and node.input[i]:
            return self.const(node.input[i], f"input {i}")
        return None

    # -- element-wise ------------------------------------------------------------------------------
    def op_Identity(self, node, a):
        return self.env[node.input[0]]

    op_Dropout = op_Identity

    def op_Cast(self, node, a):
        if a["to"] not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            self.fail("casting a network value to a non-float type is not supported")
        return self.v(node)

    def op_Relu(self, node, a):
        return self.add("relu", [self.v(node)], base=node.output[0])

    def op_LeakyRelu(self, node, a):
        return self.add("leaky_relu", [self.v(node)], {"alpha": float(a.get("alpha", 0.01))}, node.output[0])

    def op_Sigmoid(self, node, a):
        return self.add("sigmoid", [self.v(node)], base=node.output[0])

    def op_Tanh(self, node, a):
        return self.add("tanh", [self.v(node)], base=node.output[0])

    def op_Neg(self, node, a):
        return self.scale_shift(self.v(node), -1.0, None, node.output[0])

    def op_Clip(self, node, a):
        x = self.v(node)
        if self.opset < 11:
            lo, hi = a.get("min"), a.get("max")
        else:
            lo, hi = self.opt_input(node, 1), self.opt_input(node, 2)
        lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
        hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
        return self.clip(x, lo, hi, node.output[0])

    def op_Add(self, node, a):
        return self.binary("add", self.env[node.input[0]], self.env[node.input[1]], node.output[0])

    def op_Sub(self, node, a):
        return self.binary("sub", self.env[node.input[0]], self.env[node.input[1]], node.output[0])

    def op_Mul(self, node, a):
        return self.binary("mul", self.env[node.input[0]], self.env[node.input[1]], node.output[0])

    def op_Div(self, node, a):
        return self.binary("div", self.env[node.input[0]], self.env[node.input[1]], node.output[0])

    def op_Sum(self, node, a):
        vs = [self.env[i] for i in node.input]
        if not all(isinstance(v, _Var) for v in vs):
            self.fail("Sum of constants and network values is not supported")
        shape = np.broadcast_shapes(*[v.full for v in vs])[1:]
        return self.add("add", [self.expand(v, shape) for v in vs], base=node.output[0])

    def op_BatchNormalization(self, node, a):
        x = self.v(node)
        if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
            self.fail("BatchNormalization in training mode is not supported")
        gamma, beta, mean, var = (self.const(node.input[i]) for i in range(1, 5))
        return self.batchnorm(x, gamma, beta, mean, var, float(a.get("epsilon", 1e-5)), node.output[0])

    # -- matrix products -------------------------------------------------------------------------
    def op_Gemm(self, node, a):
        x = self.v(node)
        if a.get("transA", 0):
            self.fail("Gemm with transA=1 on a network value is not supported")
        if len(x.shape) != 1:
            self.fail(f"Gemm expects a 2-D input, got per-sample shape {x.shape}")
        B = self.const(node.input[1], "the weight B").astype(np.float64)
        W = (B if a.get("transB", 0) else B.T) * float(a.get("alpha", 1.0))
        C = self.opt_input(node, 2)
        if C is not None:
            C = np.broadcast_to(C.astype(np.float64) * float(a.get("beta", 1.0)), (1, W.shape[0]))[0]
        return self.linear(x, W, C, node.output[0])

    def op_MatMul(self, node, a):
        xa, xb = self.env[node.input[0]], self.env[node.input[1]]
        base = node.output[0]
        if isinstance(xa, _Var) and not isinstance(xb, _Var):
            if len(xa.shape) == 0:
                self.fail("MatMul on a scalar")
            xb = np.asarray(xb, np.float64)
            if xb.ndim == 1:  # x @ v contracts the last axis away
                y = self.linear(xa, xb[None], None, base)
                return self.reshape(y, y.full[:-1], base)
            extra = xb.ndim - len(xa.full)  # a higher-rank constant adds leading (size-1) axes
            while xb.ndim > 2 and xb.shape[0] == 1:
                xb = xb[0]
            if xb.ndim != 2:
                self.fail(f"MatMul with a constant of shape {xb.shape} is not supported")
            y = self.linear(xa, xb.T, None, base)
            return self.reshape(y, (1,) * extra + y.full, base) if extra > 0 else y
        if isinstance(xb, _Var) and not isinstance(xa, _Var) and np.ndim(xa) == 2 and len(xb.shape) >= 2:
            # A @ x = (x^T A^T)^T over the last two axes
            r = len(xb.full)
            perm = list(range(r - 2)) + [r - 1, r - 2]
            t = self.transpose(xb, perm, base)
            y = self.linear(t, np.asarray(xa, np.float64), None, base)
            return self.transpose(y, perm, base)
        self.fail("MatMul of two network values (or of this constant shape) is not supported")

    # -- shapes ------------------------------------------------------------------------------------
    def op_Reshape(self, node, a):
        x = self.v(node)
        target = [int(d) for d in self.const(node.input[1], "the target shape")]
        out = []
        for i, d in enumerate(target):
            if d == 0 and not a.get("allowzero", 0):
                d = x.full[i]
            out.append(d)
        if out.count(-1) > 1:
            self.fail(f"Reshape target {target} has more than one -1")
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = math.prod(x.full) // max(known, 1)
        return self.reshape(x, out, node.output[0])

    def op_Flatten(self, node, a):
        x = self.v(node)
        ax = a.get("axis", 1)
        ax = ax + len(x.full) if ax < 0 else ax
        return self.reshape(x, (math.prod(x.full[:ax]), math.prod(x.full[ax:])), node.output[0])

    def axes_arg(self, node, a, i=1):
        """The axes attribute or (opset 13/18) input; None when absent or empty."""
        if "axes" in a:
            axes = list(a["axes"])
        else:
            v = self.opt_input(node, i)
            axes = None if v is None else [int(t) for t in v.reshape(-1)]
        return axes or None

    def op_Squeeze(self, node, a):
        x = self.v(node)
        axes = self.axes_arg(node, a)
        r = len(x.full)
        axes = [i for i in range(r) if x.full[i] == 1 and i > 0] if axes is None else [t % r for t in axes]
        if any(x.full[t] != 1 for t in axes):
            self.fail(f"Squeeze of axes {axes} of a value of shape {x.full}")
        return self.reshape(x, [d for i, d in enumerate(x.full) if i not in axes], node.output[0])

    def op_Unsqueeze(self, node, a):
        x = self.v(node)
        axes = self.axes_arg(node, a) or []
        r = len(x.full) + len(axes)
        axes = sorted(t % r for t in axes)
        if 0 in axes:
            self.fail("Unsqueeze at axis 0 would move the batch dimension")
        out = list(x.full)
        for t in axes:
            out.insert(t, 1)
        return self.reshape(x, out, node.output[0])

    def op_Transpose(self, node, a):
        x = self.v(node)
        perm = list(a.get("perm", reversed(range(len(x.full)))))
        return self.transpose(x, perm, node.output[0])

    def op_Shape(self, node, a):
        full = np.array(self.v(node).full, dtype=np.int64)
        start, end = a.get("start", 0), a.get("end", None)
        return full[start:end]

    def op_Concat(self, node, a):
        return self.concat([self.env[i] for i in node.input], a["axis"], node.output[0])

    def op_Slice(self, node, a):
        x = self.v(node)
        if self.opset < 10:
            starts, ends = a["starts"], a["ends"]
            axes = a.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts = [int(t) for t in self.const(node.input[1], "starts")]
            ends = [int(t) for t in self.const(node.input[2], "ends")]
            ax_in, st_in = self.opt_input(node, 3), self.opt_input(node, 4)
            axes = list(range(len(starts))) if ax_in is None else [int(t) for t in ax_in]
            steps = [1] * len(starts) if st_in is None else [int(t) for t in st_in]
        r = len(x.full)
        for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
            if st == 0:
                self.fail("Slice with step 0")
            ax = ax % r
            idx = np.arange(x.full[ax])[s:e:st]  # Python slicing clamps exactly as ONNX does
            if ax == 0:
                if not np.array_equal(idx, [0]):
                    self.fail("Slice along the batch dimension")
                continue
            x = self.gather_range(x, ax - 1, idx, node.output[0])
        return x

    def op_Split(self, node, a):
        x = self.v(node)
        ax = self.axis(a.get("axis", 0), len(x.full))
        sizes = a.get("split")
        if sizes is None and len(node.input) > 1 and node.input[1]:
            sizes = [int(t) for t in self.const(node.input[1], "split")]
        n = x.shape[ax]
        if sizes is None:
            k = len(node.output)
            chunk = -(-n // k)
            sizes = [min(chunk, n - i * chunk) for i in range(k)]
        if sum(sizes) != n or len(sizes) != len(node.output):
            self.fail(f"Split sizes {list(sizes)} do not fit axis length {n} and {len(node.output)} outputs")
        outs, start = [], 0
        for s, name in zip(sizes, node.output, strict=True):
            outs.append(self.gather_range(x, ax, np.arange(start, start + s), name or node.output[0]))
            start += s
        return outs

    def op_Gather(self, node, a):
        x = self.v(node)
        idx = self.const(node.input[1], "the indices").astype(np.int64)
        ax = self.axis(a.get("axis", 0), len(x.full))
        idx = np.where(idx < 0, idx + x.shape[ax], idx)
        if idx.size and (idx.min() < 0 or idx.max() >= x.shape[ax]):
            self.fail(f"Gather indices out of range for an axis of length {x.shape[ax]}")
        y = self.gather_range(x, ax, idx.reshape(-1), node.output[0])
        out = (1, *x.shape[:ax], *idx.shape, *x.shape[ax + 1 :])
        return self.reshape(y, out, node.output[0])

    def op_Pad(self, node, a):
        x = self.v(node)
        if _decode(a.get("mode", "constant")) != "constant":
            self.fail(f"Pad mode '{_decode(a['mode'])}' is not supported (only constant)")
        r = len(x.full)
        if self.opset < 11:
            pads, value = [int(t) for t in a["pads"]], float(a.get("value", 0.0))
            axes = None
        else:
            pads = [int(t) for t in self.const(node.input[1], "pads")]
            cv = self.opt_input(node, 2)
            value = 0.0 if cv is None or cv.size == 0 else float(np.asarray(cv).reshape(-1)[0])
            ax_in = self.opt_input(node, 3)
            axes = None if ax_in is None else [int(t) % r for t in ax_in]
        axes = axes or list(range(r))
        k = len(axes)
        if len(pads) != 2 * k:
            self.fail(f"Pad has {len(pads)} pads for {k} axes")
        per_axis = {ax: (pads[i], pads[i + k]) for i, ax in enumerate(axes)}
        if per_axis.get(0, (0, 0)) != (0, 0):
            self.fail("Pad along the batch dimension")
        pb = [per_axis.get(ax, (0, 0))[0] for ax in range(1, r)]
        pe = [per_axis.get(ax, (0, 0))[1] for ax in range(1, r)]
        return self.pad(x, pb, pe, value, node.output[0])

    # -- convolutions and pooling ----------------------------------------------------------------
    def spatial_pads(self, node, a, x: _Var, kernel, strides, dilations):
        nd = len(kernel)
        auto = _decode(a.get("auto_pad", "NOTSET"))
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads_b, pads_e = [], []
            for d in range(nd):
                n = x.shape[1 + d]
                out = -(-n // strides[d])
                total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - n)
                small, big = total // 2, total - total // 2
                pads_b.append(small if auto == "SAME_UPPER" else big)
                pads_e.append(big if auto == "SAME_UPPER" else small)
            return pads_b, pads_e
        if auto == "VALID":
            return [0] * nd, [0] * nd
        if auto != "NOTSET":
            self.fail(f"auto_pad '{auto}' is not supported")
        pads = [int(t) for t in a.get("pads", [0] * (2 * nd))]
        return pads[:nd], pads[nd:]

    def op_Conv(self, node, a):
        x = self.v(node)
        w = self.const(node.input[1], "the weight").astype(np.float64)
        nd = w.ndim - 2
        if nd not in (1, 2, 3) or len(x.shape) != nd + 1:
            self.fail(f"Conv with weight {w.shape} on per-sample input {x.shape}")
        kernel = list(w.shape[2:])
        strides = list(a.get("strides", [1] * nd))
        dil = list(a.get("dilations", [1] * nd))
        pb, pe = self.spatial_pads(node, a, x, kernel, strides, dil)
        b = self.opt_input(node, 2)
        return self.conv(x, w, b, strides, pb, pe, dil, int(a.get("group", 1)), node.output[0])

    def op_ConvTranspose(self, node, a):
        x = self.v(node)
        w = self.const(node.input[1], "the weight").astype(np.float64)
        nd = w.ndim - 2
        strides = list(a.get("strides", [1] * nd))
        dil = list(a.get("dilations", [1] * nd))
        if "output_shape" in a or _decode(a.get("auto_pad", "NOTSET")) != "NOTSET":
            self.fail("ConvTranspose with output_shape or auto_pad is not supported")
        pads = [int(t) for t in a.get("pads", [0] * (2 * nd))]
        out_pad = list(a.get("output_padding", [0] * nd))
        b = self.opt_input(node, 2)
        return self.conv_transpose(
            x, w, b, strides, pads[:nd], pads[nd:], out_pad, dil, int(a.get("group", 1)), node.output[0]
        )

    def pool_args(self, node, a, x):
        kernel = list(a["kernel_shape"])
        nd = len(kernel)
        if len(x.shape) != nd + 1:
            self.fail(f"{nd}-d pooling on per-sample input {x.shape}")
        strides = list(a.get("strides", [1] * nd))
        dil = list(a.get("dilations", [1] * nd))
        if a.get("ceil_mode", 0):
            self.fail("pooling with ceil_mode=1 is not supported")
        pb, pe = self.spatial_pads(node, a, x, kernel, strides, dil)
        return kernel, strides, dil, pb, pe

    def op_MaxPool(self, node, a):
        x = self.v(node)
        if len(node.output) > 1 and node.output[1]:
            self.fail("MaxPool's Indices output is not supported")
        if a.get("storage_order", 0):
            self.fail("MaxPool with storage_order=1 is not supported")
        kernel, strides, dil, pb, pe = self.pool_args(node, a, x)
        return self.maxpool(x, kernel, strides, pb, pe, dil, node.output[0])

    def op_AveragePool(self, node, a):
        x = self.v(node)
        kernel, strides, dil, pb, pe = self.pool_args(node, a, x)
        if any(d != 1 for d in dil):
            self.fail("AveragePool with dilation is not supported")
        return self.avgpool(x, kernel, strides, pb, pe, bool(a.get("count_include_pad", 0)), node.output[0])

    def op_GlobalAveragePool(self, node, a):
        x = self.v(node)
        return self.reduce_sum(x, list(range(1, len(x.shape))), True, True, node.output[0])

    def reduce(self, node, a, mean: bool):
        x = self.v(node)
        axes = self.axes_arg(node, a)
        r = len(x.full)
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(r))
        axes = [self.axis(t, r) for t in axes]
        return self.reduce_sum(x, axes, bool(a.get("keepdims", 1)), mean, node.output[0])

    def op_ReduceSum(self, node, a):
        return self.reduce(node, a, mean=False)

    def op_ReduceMean(self, node, a):
        return self.reduce(node, a, mean=True)

    # -- resizing ----------------------------------------------------------------------------------
    def op_Resize(self, node, a):
        x = self.v(node)
        if _decode(a.get("mode", "nearest")) != "nearest":
            self.fail(f"{node.op_type} mode '{_decode(a['mode'])}' is not supported (only nearest)")
        full = x.full
        r = len(full)
        if node.op_type == "Upsample" or self.opset < 11:
            # Upsample and Resize-10: asymmetric coordinates, onnxruntime's "simple" rounding (floor when
            # upsampling, ceil when downsampling)
            scales = a.get("scales") if node.op_type == "Upsample" else None
            if scales is None:
                scales = self.const(node.input[1], "scales")
            sizes = None
            ctm, nm = "asymmetric", "simple"
        else:
            scales, sizes = self.opt_input(node, 2), self.opt_input(node, 3)
            ctm = _decode(a.get("coordinate_transformation_mode", "half_pixel"))
            nm = _decode(a.get("nearest_mode", "round_prefer_floor"))
            if _decode(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch" and sizes is not None:
                self.fail("Resize with keep_aspect_ratio_policy other than 'stretch' is not supported")
        if scales is not None and np.size(scales) == 0:
            scales = None
        if sizes is not None and np.size(sizes) == 0:
            sizes = None
        if scales is None and sizes is None:
            self.fail("Resize needs scales or sizes")
        axes = [int(t) % r for t in a["axes"]] if "axes" in a else list(range(r))
        if sizes is not None:
            sz = list(full)
            for ax, s in zip(axes, np.asarray(sizes).reshape(-1), strict=True):
                sz[ax] = int(s)
            sizes = sz
            scales = [s / n for s, n in zip(sizes, full, strict=True)]
        else:
            sc = [1.0] * r
            for ax, s in zip(axes, np.asarray(scales, dtype=np.float64).reshape(-1), strict=True):
                sc[ax] = float(s)
            scales = sc
            sizes = [int(math.floor(n * s)) for n, s in zip(full, scales, strict=True)]
        if sizes[0] != 1:
            self.fail("Resize along the batch dimension")
        for ax in range(1, r):
            n, m, s = full[ax], sizes[ax], scales[ax]
            if n == m and s == 1.0:
                continue
            i = np.arange(m, dtype=np.float64)
            if ctm in ("half_pixel", "pytorch_half_pixel"):
                src = (i + 0.5) / s - 0.5
                if ctm == "pytorch_half_pixel" and m == 1:
                    src = np.zeros_like(i)
            elif ctm == "asymmetric":
                src = i / s
            elif ctm == "align_corners":
                src = i * (n - 1) / (m - 1) if m > 1 else np.zeros_like(i)
            else:
                self.fail(f"Resize coordinate_transformation_mode '{ctm}' is not supported")
            if nm == "round_prefer_floor":
                idx = np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src))
            elif nm == "round_prefer_ceil":
                idx = np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))
            elif nm == "floor":
                idx = np.floor(src)
            elif nm == "ceil":
                idx = np.ceil(src)
            elif nm == "simple":
                idx = np.ceil(src) if s < 1 else np.floor(src)
            else:
                self.fail(f"Resize nearest_mode '{nm}' is not supported")
            x = self.gather_range(x, ax - 1, np.clip(idx, 0, n - 1), node.output[0])
        return x

    op_Upsample = op_Resize
