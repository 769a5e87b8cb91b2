"""Per-instance networks ``z -> classifier(G(x, z))`` built from ONNX files, with the image x folded in.

The route is plain ONNX graph surgery, so any generator and classifier ONNX work, not only ours:

1. :func:`bind_image`: the generator's image input becomes an initializer holding x; every node whose inputs
   are then all constant is evaluated once (onnx's reference evaluator) and replaced by its value; a
   ``Concat(constant, z) -> Gemm`` pair (how a decoder over ``concat(flatten(x), z)`` exports) becomes one
   ``Gemm`` over z whose bias absorbs ``W_x x`` (computed in float64). What is left has the single input z.
2. :func:`compose`: that network's image output feeds the classifier (through a ``Reshape`` when the shapes
   differ but the sizes agree) with :func:`onnx.compose.merge_models`.

For our generator the result is a plain MLP ``Gemm Relu Gemm Sigmoid (Reshape) <classifier>``: the form
every VNN-COMP verifier reads.

:func:`compose_concat` builds the other common form (the public ``dist_shift`` benchmark's): one network for
all images whose single input is ``concat(flatten(x), z)``; each property then pins the x entries.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator


class ComposeError(ValueError):
    """The generator or classifier ONNX does not fit the composition; the message says why."""


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def generator_io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """(image input, latent input) of a generator ONNX G(x, z): two inputs, x first, one output."""
    ins = graph_inputs(model)
    if len(ins) != 2:
        raise ComposeError(f"a generator takes two inputs (image x, latent z); this one has {len(ins)}: "
                           f"{[i.name for i in ins]}")
    if len(model.graph.output) != 1:
        raise ComposeError(f"a generator has one output (the image); this one has {len(model.graph.output)}")
    for vi in ins:
        if any(d is None or d <= 0 for d in _dims(vi)[1:]):
            raise ComposeError(f"generator input '{vi.name}' has a non-fixed shape {_dims(vi)}")
    return ins[0], ins[1]


def _const_nodes_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every node whose inputs are all constants; their outputs become initializers."""
    g = model.graph
    opset = _opset(model)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep = []
    for node in g.node:
        present = [i for i in node.input if i]
        if all(i in consts for i in present) and node.domain in ("", "ai.onnx"):
            outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, {i: consts[i] for i in present})
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    consts[name] = np.asarray(v)
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items() if name in used)
    return model


def _fold_concat_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Gemm(Concat(c_1, .., z, .., c_n, axis=1), W, b)`` with constant c_i -> ``Gemm(z, W_z, b + sum W_i c_i)``."""
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    for cat in list(g.node):
        if cat.op_type != "Concat" or len(users.get(cat.output[0], [])) != 1:
            continue
        gemm = users[cat.output[0]][0]
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        axis = {a.name: helper.get_attribute_value(a) for a in cat.attribute}.get("axis")
        var = [i for i in cat.input if i not in consts]
        if (gemm.op_type != "Gemm" or gemm.input[0] != cat.output[0] or axis not in (1, -1) or len(var) != 1
                or attrs.get("transA", 0) or gemm.input[1] not in consts
                or (len(gemm.input) > 2 and gemm.input[2] and gemm.input[2] not in consts)
                or any(consts[i].ndim != 2 or consts[i].shape[0] != 1 for i in cat.input if i in consts)):
            continue
        W = consts[gemm.input[1]].astype(np.float64)
        W = W if attrs.get("transB", 0) else W.T  # (out, in)
        W = W * float(attrs.get("alpha", 1.0))
        b = np.zeros(W.shape[0])
        if len(gemm.input) > 2 and gemm.input[2]:
            b = np.broadcast_to(consts[gemm.input[2]].astype(np.float64) * float(attrs.get("beta", 1.0)),
                                (1, W.shape[0]))[0].copy()
        sizes = [consts[i].shape[1] if i in consts else None for i in cat.input]
        n_var = W.shape[1] - sum(s for s in sizes if s is not None)
        cols, start = None, 0
        for i, s in zip(cat.input, sizes, strict=True):
            if s is None:
                cols = (start, start + n_var)
                start += n_var
            else:
                b = b + W[:, start:start + s] @ consts[i][0].astype(np.float64)
                start += s
        dtype = consts[gemm.input[1]].dtype
        wname, bname = gemm.output[0] + "_Wz", gemm.output[0] + "_bz"
        g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(W[:, cols[0]:cols[1]]).astype(dtype),
                                                      wname),
                              numpy_helper.from_array(b.astype(dtype), bname)])
        new = helper.make_node("Gemm", [var[0], wname, bname], list(gemm.output), name=(gemm.name or "gemm") + "_z",
                               transB=1)
        nodes = [new if n is gemm else n for n in g.node if n is not cat]
        del g.node[:]
        g.node.extend(nodes)
        return _drop_unused(model)
    return model


def _drop_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def bind_image(generator: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """The generator with its image input fixed to ``x``: a network over the latent z alone."""
    m = onnx.ModelProto()
    m.CopyFrom(generator)
    xi, _ = generator_io(m)
    dims = _dims(xi)
    want = [1 if d is None else d for d in dims]
    x = np.asarray(x, dtype=np.float32)
    if x.size != int(np.prod(want)):
        raise ComposeError(f"the image has {x.size} values; generator input '{xi.name}' expects shape {dims}")
    keep = [i for i in m.graph.input if i.name != xi.name]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.append(numpy_helper.from_array(x.reshape(want), xi.name))
    m = _fold_concat_gemm(_const_nodes_folded(m))
    del m.graph.value_info[:]
    return m


def compose(bound_generator: onnx.ModelProto, classifier: onnx.ModelProto) -> onnx.ModelProto:
    """``z -> classifier(G(x, z))`` from a generator bound to its image and a classifier ONNX."""
    g = onnx.ModelProto()
    g.CopyFrom(bound_generator)
    c = onnx.ModelProto()
    c.CopyFrom(classifier)
    c_in = graph_inputs(c)
    if len(c_in) != 1 or len(c.graph.output) != 1:
        raise ComposeError(f"a classifier has one input and one output; this one has {len(c_in)} and "
                           f"{len(c.graph.output)}")
    g_out = g.graph.output[0]
    gd, cd = _dims(g_out), _dims(c_in[0])
    if any(d is None for d in cd[1:]):
        raise ComposeError(f"classifier input '{c_in[0].name}' has a non-fixed shape {cd}")
    n_img = int(np.prod([d for d in gd[1:] if d is not None])) if all(d is not None for d in gd[1:]) else None
    n_clf = int(np.prod(cd[1:]))
    if n_img is not None and n_img != n_clf:
        raise ComposeError(f"the generator makes images of shape {gd[1:]} ({n_img} values); the classifier "
                           f"expects {cd[1:]} ({n_clf} values)")
    link = g_out.name
    if gd[1:] != cd[1:]:
        shape_name, link = link + "_shape", link + "_for_classifier"
        g.graph.initializer.append(numpy_helper.from_array(np.array([-1, *cd[1:]], np.int64), shape_name))
        g.graph.node.append(helper.make_node("Reshape", [g_out.name, shape_name], [link], name="to_classifier"))
        del g.graph.output[:]
        g.graph.output.append(helper.make_tensor_value_info(link, g_out.type.tensor_type.elem_type,
                                                            [gd[0] or 1, *cd[1:]]))
    og, oc = _opset(g), _opset(c)
    if og != oc:
        from onnx import version_converter

        hi = max(og, oc)
        g, c = (version_converter.convert_version(m, hi) if _opset(m) != hi else m for m in (g, c))
    ir = max(g.ir_version, c.ir_version)
    g.ir_version = c.ir_version = ir
    keep = [o for o in g.opset_import if o.domain in ("", "ai.onnx")]
    del g.opset_import[:]
    g.opset_import.extend(keep)
    keep = [o for o in c.opset_import if o.domain in ("", "ai.onnx")]
    del c.opset_import[:]
    c.opset_import.extend(keep)
    m = onnx.compose.merge_models(g, c, io_map=[(link, c_in[0].name)], prefix1="g/", prefix2="c/",
                                  doc_string="classifier(G(x, z)) with the image x fixed; input: latent z")
    onnx.checker.check_model(m)
    return m


def compose_concat(generator: onnx.ModelProto, classifier: onnx.ModelProto) -> onnx.ModelProto:
    """``v -> classifier(G(x, z))`` with ``v = concat(flatten(x), z)`` of shape (1, n_x + n_z): one network."""
    xi, zi = generator_io(generator)
    xd, zd = _dims(xi), _dims(zi)
    n_x, n_z = int(np.prod(xd[1:])), int(np.prod(zd[1:]))
    opset = _opset(generator)
    v = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, n_x + n_z])
    inits = [numpy_helper.from_array(np.array(a, np.int64), n) for n, a in (
        ("x_start", [0]), ("x_end", [n_x]), ("z_end", [n_x + n_z]), ("axis1", [1]),
        ("x_shape", [1, *xd[1:]]), ("z_shape", [1, *zd[1:]]))]
    nodes = [
        helper.make_node("Slice", ["input", "x_start", "x_end", "axis1"], ["x_flat"], name="slice_x"),
        helper.make_node("Reshape", ["x_flat", "x_shape"], ["x"], name="reshape_x"),
        helper.make_node("Slice", ["input", "x_end", "z_end", "axis1"], ["z_flat"], name="slice_z"),
        helper.make_node("Reshape", ["z_flat", "z_shape"], ["z"], name="reshape_z"),
    ]
    outs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, *xd[1:]]),
            helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, *zd[1:]])]
    front = helper.make_model(helper.make_graph(nodes, "split", [v], outs, inits),
                              opset_imports=[helper.make_opsetid("", max(opset, 13))])
    g = onnx.ModelProto()
    g.CopyFrom(generator)
    if _opset(g) < 13:
        from onnx import version_converter

        g = version_converter.convert_version(g, 13)
    front.ir_version = g.ir_version = max(front.ir_version, g.ir_version)
    keep = [o for o in g.opset_import if o.domain in ("", "ai.onnx")]
    del g.opset_import[:]
    g.opset_import.extend(keep)
    both = onnx.compose.merge_models(front, g, io_map=[("x", xi.name), ("z", zi.name)], prefix2="gen/")
    return compose(both, classifier)
