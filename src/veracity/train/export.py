"""ONNX export of the training models (Conv, Gemm, Flatten, Relu, LeakyRelu; ParamRamp as ReLUs).

ParamRamp is written as ``η z + (1 − η)(r − relu(r − relu(z)))`` (``min(relu(z), r)`` by two ReLUs in sequence),
so that any verifier, veracity's importer and onnxruntime included, sees only standard ops, and interval
bounds of each ramp stay exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from veracity.train.models import ParamRamp

OPSET = 13


def to_onnx(model: nn.Sequential, in_shape: tuple[int, ...], path=None, doc: str = "") -> onnx.ModelProto:
    """The ONNX model of ``model`` (float32, batch axis ``N``); written to ``path`` when given."""
    nodes, inits = [], []
    cur = "input"
    k = 0

    def name(base):
        nonlocal k
        k += 1
        return f"{base}_{k}"

    def const(base, arr):
        n = name(base)
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), n))
        return n

    for i, m in enumerate(model):
        w = lambda t: t.detach().cpu().numpy()  # noqa: E731
        if isinstance(m, nn.Conv2d):
            ins = [cur, const(f"conv{i}_W", w(m.weight))] + ([const(f"conv{i}_B", w(m.bias))] if m.bias is not None
                                                               else [])
            out = name(f"conv{i}")
            p = list(m.padding)
            nodes.append(helper.make_node("Conv", ins, [out], strides=list(m.stride), pads=p + p,
                                          dilations=list(m.dilation), group=m.groups,
                                          kernel_shape=list(m.kernel_size)))
        elif isinstance(m, nn.Linear):
            ins = [cur, const(f"fc{i}_W", w(m.weight))] + ([const(f"fc{i}_B", w(m.bias))] if m.bias is not None
                                                           else [])
            out = name(f"fc{i}")
            nodes.append(helper.make_node("Gemm", ins, [out], transB=1))
        elif isinstance(m, nn.Flatten):
            out = name("flatten")
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif isinstance(m, nn.ReLU):
            out = name("relu")
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif isinstance(m, nn.LeakyReLU):
            out = name("leaky")
            nodes.append(helper.make_node("LeakyRelu", [cur], [out], alpha=float(m.negative_slope)))
        elif isinstance(m, ParamRamp):
            # min(relu(z), r) = r - relu(r - relu(z)): two ReLUs in sequence, so interval bounds stay exact
            r = const(f"ramp{i}_r", w(m.corner()))
            a, s, b, mid = name("ramp_relu"), name("ramp_gap"), name("ramp_relu_gap"), name("ramp")
            nodes += [helper.make_node("Relu", [cur], [a]),
                      helper.make_node("Sub", [r, a], [s]),
                      helper.make_node("Relu", [s], [b]),
                      helper.make_node("Sub", [r, b], [mid])]
            out = mid
            if m.eta > 0:
                s1, s2, out = name("ramp_mid"), name("ramp_lin"), name("ramp_out")
                nodes += [helper.make_node("Mul", [mid, const("one_minus_eta", [1.0 - m.eta])], [s1]),
                          helper.make_node("Mul", [cur, const("eta", [m.eta])], [s2]),
                          helper.make_node("Add", [s1, s2], [out])]
        else:
            raise ValueError(f"cannot export module {type(m).__name__}")
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["output"]))
    n_out = [m for m in model if isinstance(m, nn.Linear)][-1].out_features
    graph = helper.make_graph(
        nodes, "veracity_trained",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="veracity",
                              doc_string=doc)
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    if path is not None:
        Path(path).write_bytes(proto.SerializeToString())
    return proto
