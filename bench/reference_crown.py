"""Compare veracity's CROWN and IBP bounds with a reference CROWN implementation (auto_LiRPA).

Both sides bound the raw network outputs (no specification matrix) over the first input box of a
real VNN-COMP instance, in float64. veracity runs in its own interpreter (a subprocess, with this
checkout's ``src`` first on PYTHONPATH); auto_LiRPA runs in this one, on a torch module rebuilt by
hand from the ONNX file (Sub/Div/Flatten/MatMul/Add/Gemm/Conv/Relu), which is checked against
veracity's own forward pass at the box centre before bounding.

The reference needs its own virtual environment. auto_LiRPA 0.3 (PyPI, 2022) pins torch<1.13 and
numpy<2-era APIs; installed with --no-deps it runs on torch 2.13 after three small patches (its
``parse_graph.py`` imports the TorchScript ONNX exporter's helpers from their new place and reads node
attributes with ``_node_get``; ``BoundedModule._named_members`` accepts torch's new keyword), which
the last step below applies to the installed copy:

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0 "numpy<2" onnx
    /tmp/refenv/bin/pip install --no-deps auto-lirpa==0.3
    /tmp/refenv/bin/pip install appdirs packaging pyyaml tqdm
    /tmp/refenv/bin/python bench/reference_crown.py --patch-auto-lirpa

Then, from the repository root (``shared/`` beside it, as in every clone of this project):

    /tmp/refenv/bin/python bench/reference_crown.py

Options: ``--python`` names the interpreter with veracity's dependencies (default: the first
``python3``/``python`` on PATH outside this venv), ``--benchmarks`` the benchmarks folder (default
``../shared/benchmarks``), ``--float32`` runs both sides in float32, ``--only LABEL...`` runs some
networks, ``--json FILE`` also writes the raw numbers, ``--sparse-always`` (see below).

Columns: ``fwd`` is the largest |torch - veracity| output at the box centre (checks the conversion);
``dlo``/``dhi`` are max over outputs of |ours - ref| / max(1, |ref|) for the lower/upper bounds;
``w`` are mean widths (upper - lower) over the outputs. veracity's reported bounds are widened by
1e-9 relative for rounding (bounds.ROUNDING_MARGIN), so 1e-9..2e-9 means agreement to rounding.

How intermediate bounds are chosen (CROWN, lines="adaptive"), the same on both sides: only the neurons
that IBP, taken one step from the already-refined bounds of the layer's inputs, leaves unstable get a
CROWN pass, and the others keep that IBP reference; but when more than 0.9 of a layer is unstable by
that reference (auto_LiRPA's ``minimum_sparsity``, veracity's ``crown.DENSE_SHARE``), every neuron of
it gets a pass and keeps CROWN's bounds, as textbook CROWN does. ``--sparse-always`` sets auto_LiRPA's
``minimum_sparsity=1``; the reference then keeps the IBP reference there and can be tighter.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (label, benchmark folder, onnx file, vnnlib file); the first box of each instance is bounded.
NETWORKS = [
    ("acasxu_1_1", "acasxu", "onnx/ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
    ("acasxu_3_3", "acasxu", "onnx/ACASXU_run2a_3_3_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
    ("acasxu_5_9", "acasxu", "onnx/ACASXU_run2a_5_9_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
    ("mnist_256x2", "mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_0_0.03.vnnlib"),
    ("mnist_256x4", "mnist_fc", "onnx/mnist-net_256x4.onnx", "vnnlib/prop_0_0.03.vnnlib"),
    ("mnist_256x6", "mnist_fc", "onnx/mnist-net_256x6.onnx", "vnnlib/prop_0_0.03.vnnlib"),
    ("oval21_base_kw", "oval21", "onnx/cifar_base_kw.onnx",
     "vnnlib/cifar_base_kw-img8194-eps0.018300653594771243.vnnlib"),
    ("eran_relu_9_200", "eran_2021", "onnx/mnist_relu_9_200.onnx",
     "vnnlib/mnist_spec_idx_8098_eps_0.01500.vnnlib"),
]

# Run by the veracity interpreter: reads [[onnx, vnnlib], ...] and a dtype on stdin, prints JSON.
VERACITY_SIDE = r"""
import json, sys, time
import torch
from veracity.graph import load_onnx
from veracity.spec import load_vnnlib
from veracity.bounds import bound_spec
job = json.load(sys.stdin)
dtype = getattr(torch, job["dtype"])
out = []
for onnx_path, vnn_path in job["instances"]:
    g = load_onnx(onnx_path)
    spec = load_vnnlib(vnn_path)
    box = spec.boxes[0]
    lo, hi = box.lower[None], box.upper[None]
    r = {"input_shape": list(g.input_shape), "lower": box.lower.tolist(), "upper": box.upper.tolist()}
    centre = torch.tensor((box.lower + box.upper) / 2, dtype=torch.float64)[None]
    r["y_centre"] = g.forward(centre).reshape(-1).tolist()
    for method in ("crown", "ibp"):
        t = time.perf_counter()
        l, u = bound_spec(g, lo, hi, None, method=method, lines="adaptive", dtype=dtype)
        r[method] = {"lower": l[0].tolist(), "upper": u[0].tolist(), "seconds": time.perf_counter() - t}
    out.append(r)
json.dump(out, sys.stdout)
"""


def default_python() -> str:
    here = Path(sys.prefix).resolve()
    for name in ("python3", "python"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            p = Path(d) / name
            if p.is_file() and os.access(p, os.X_OK) and here not in p.resolve().parents \
                    and not str(Path(d).resolve()).startswith(str(here)):
                return str(p)
    return shutil.which("python3") or "python3"


def default_benchmarks() -> Path:
    for p in (REPO.parent / "shared" / "benchmarks", REPO / "shared" / "benchmarks"):
        if p.is_dir():
            return p
    return REPO.parent / "shared" / "benchmarks"


def run_veracity(python: str, instances: list[tuple[str, str]], dtype: str) -> list[dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    job = json.dumps({"instances": instances, "dtype": dtype})
    p = subprocess.run([python, "-c", VERACITY_SIDE], input=job, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"veracity side failed ({python}):\n{p.stderr}")
    return json.loads(p.stdout)


# ------------------------------------------------------------------------------------------------
# Reference side: ONNX -> torch module (the few ops these networks use) -> auto_LiRPA
# ------------------------------------------------------------------------------------------------


def load_onnx_model(path: Path):
    import onnx

    gz = Path(f"{path}.gz")
    data = path.read_bytes() if path.exists() else gzip.decompress(gz.read_bytes())
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return onnx.load_from_string(data)


def onnx_to_torch(model, dtype):
    """A torch module that evaluates the ONNX graph node by node (traceable by auto_LiRPA)."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    nodes = []
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(attrs["value"])
        else:
            nodes.append((n.op_type, list(n.input), list(n.output), attrs))
    init_names = {i.name for i in g.initializer}
    input_name = next(i.name for i in g.input if i.name not in init_names)

    # Peephole: MatMul by a constant followed by Add of a constant -> one nn.functional.linear.
    consumers = {}
    for node in nodes:
        for i in node[1]:
            consumers.setdefault(i, []).append(node)
    fused, skip = [], set()
    for node in nodes:
        op, ins, outs, a = node
        if id(node) in skip:
            continue
        if op == "MatMul" and ins[1] in consts:
            W = consts[ins[1]].T
            nxt = consumers.get(outs[0], [])
            if len(nxt) == 1 and nxt[0][0] == "Add" and nxt[0][1][1] in consts:
                fused.append(("Linear", [ins[0]], nxt[0][2], {"W": W, "b": consts[nxt[0][1][1]]}))
                skip.add(id(nxt[0]))
            else:
                fused.append(("Linear", [ins[0]], outs, {"W": W, "b": None}))
        elif op == "Gemm" and ins[1] in consts and not a.get("transA", 0):
            W = consts[ins[1]] if a.get("transB", 0) else consts[ins[1]].T
            b = consts[ins[2]] * a.get("beta", 1.0) if len(ins) > 2 and ins[2] else None
            fused.append(("Linear", [ins[0]], outs, {"W": W * a.get("alpha", 1.0), "b": b}))
        elif op == "Conv":
            a = dict(a, W=consts[ins[1]], b=consts[ins[2]] if len(ins) > 2 else None)
            fused.append(("Conv", [ins[0]], outs, a))
        elif op in ("Sub", "Div", "Add", "Mul") and ins[1] in consts:
            fused.append((op, [ins[0]], outs, {"c": consts[ins[1]]}))
        else:
            fused.append(node)

    def tensor(v):
        return torch.tensor(np.asarray(v, dtype=np.float64), dtype=dtype)

    class OnnxNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []
            for k, (op, ins, outs, a) in enumerate(fused):
                a = dict(a)
                for key in ("W", "b"):  # weights as Parameters: auto_LiRPA reads its dtype from them
                    if a.get(key) is not None:
                        setattr(self, f"{key}{k}", torch.nn.Parameter(tensor(a[key]), requires_grad=False))
                        a[key] = f"{key}{k}"
                if "c" in a:  # normalisation constants as plain tensors: traced as ONNX Constants
                    a["c"] = tensor(a["c"])
                self.steps.append((op, ins, outs, a))
            # auto_LiRPA 0.3's broadcast_backward mishandles constants of lower rank than the data
            # (scalars) or with a leading batch dimension: give every constant the shape of one data item.
            dims = next(i for i in g.input if i.name == input_name).type.tensor_type.shape.dim
            shape = [d.dim_value or 1 for d in dims]
            self.forward(torch.zeros(shape, dtype=dtype), record=True)

        def forward(self, x, record=False):
            env = {input_name: x}
            for op, ins, outs, a in self.steps:
                v = [env[i] for i in ins if i]
                if record and "c" in a:
                    a["c"] = (a["c"] + torch.zeros_like(v[0])).reshape(v[0].shape[1:]).contiguous()
                W = getattr(self, a["W"]) if a.get("W") else None
                b = getattr(self, a["b"]) if a.get("b") else None
                if op == "Linear":
                    y = torch.nn.functional.linear(v[0], W, b)
                elif op == "Conv":
                    pads = a.get("pads", [0, 0, 0, 0])
                    assert pads[:2] == pads[2:], "asymmetric padding"
                    y = torch.nn.functional.conv2d(v[0], W, b, stride=a.get("strides", 1), padding=pads[:2],
                                                   dilation=a.get("dilations", 1), groups=a.get("group", 1))
                elif op == "Sub":
                    y = v[0] - a["c"]
                elif op == "Div":
                    y = v[0] / a["c"]
                elif op == "Add":
                    y = v[0] + a["c"]
                elif op == "Mul":
                    y = v[0] * a["c"]
                elif op == "Relu":
                    y = torch.relu(v[0])
                elif op == "Flatten" and a.get("axis", 1) == 1:
                    y = torch.flatten(v[0], 1)
                else:
                    raise NotImplementedError(f"ONNX op {op} {a} not supported by this converter")
                env[outs[0]] = y
            return env[g.output[0].name]

    return OnnxNet()


def patch_auto_lirpa() -> None:
    """Make auto_LiRPA 0.3 work with torch >= 2.9 (idempotent).

    parse_graph.py: the TorchScript ONNX exporter's helpers moved to torch.onnx._internal, and
    ``Node.__getitem__`` became ``symbolic_helper._node_get``. bound_general.py: torch's
    ``Module._named_members`` gained a ``remove_duplicate`` argument that BoundedModule's override lacks.
    """
    import importlib.util

    spec = importlib.util.find_spec("auto_LiRPA")
    if spec is None:
        sys.exit("auto_LiRPA is not installed in this interpreter")
    root = Path(spec.origin).parent
    p = root / "bound_general.py"
    s = p.read_text()
    old = "def _named_members(self, get_members_fn, prefix='', recurse=True):"
    if old in s:
        p.write_text(s.replace(old, "def _named_members(self, get_members_fn, prefix='', recurse=True, **kwargs):"))
        print(f"patched {p}")
    p = root / "parse_graph.py"
    s = p.read_text()
    if "torchscript_exporter" in s:
        print(f"{p}: already patched")
        return
    s = s.replace(
        "from torch.onnx.utils import _optimize_graph\nfrom torch.onnx.symbolic_helper import _set_opset_version\n",
        "try:\n"
        "    from torch.onnx.utils import _optimize_graph\n"
        "    from torch.onnx.symbolic_helper import _set_opset_version\n"
        "    _node_get = lambda n, k: n[k]\n"
        "except ImportError:  # torch >= 2.9: the TorchScript exporter moved (local patch)\n"
        "    from torch.onnx._internal.torchscript_exporter.utils import _optimize_graph\n"
        "    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _GLOBALS\n"
        "    from torch.onnx._internal.torchscript_exporter.symbolic_helper import _node_get\n"
        "    def _set_opset_version(v):\n"
        "        _GLOBALS.export_onnx_opset_version = v\n",
    )
    s = s.replace("attrs = {k: n[k] for k in n.attributeNames()}",
                  "attrs = {k: _node_get(n, k) for k in n.attributeNames()}")
    if "torchscript_exporter" not in s or "_node_get(n, k)" not in s:
        sys.exit(f"{p}: unexpected contents, patch not applied")
    p.write_text(s)
    print(f"patched {p}")


def reference_bounds(onnx_path: Path, r: dict, dtype_name: str, bound_opts: dict | None = None) -> dict:
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    dtype = getattr(torch, dtype_name)
    model = load_onnx_model(onnx_path)
    net = onnx_to_torch(model, dtype).eval()
    shape = [1, *r["input_shape"]]
    xl = torch.tensor(np.asarray(r["lower"]), dtype=dtype).reshape(shape)
    xu = torch.tensor(np.asarray(r["upper"]), dtype=dtype).reshape(shape)
    x0 = (xl + xu) / 2
    with torch.no_grad():
        y0 = net(x0).reshape(-1).double().numpy()
    fwd_err = float(np.max(np.abs(y0 - np.asarray(r["y_centre"]))))
    bm = BoundedModule(net, x0, bound_opts=bound_opts, device="cpu", verbose=False)
    if dtype == torch.float64:
        bm = bm.double()
    out = {"forward_max_abs_diff": fwd_err}
    for method, key in (("CROWN", "crown"), ("IBP", "ibp")):
        bx = BoundedTensor(x0, PerturbationLpNorm(norm=float("inf"), x_L=xl, x_U=xu))
        # C=None means identity, but auto_LiRPA 0.3 builds that identity in float32 (bound_general.py,
        # compute_bounds), which breaks a float64 run when the output node is a ReLU: pass it explicitly.
        C = torch.eye(len(r["y_centre"]), dtype=dtype)[None] if method == "CROWN" else None
        with torch.no_grad():
            l, u = bm.compute_bounds(x=(bx,), C=C, method=method)
        out[key] = {"lower": l.reshape(-1).double().tolist(), "upper": u.reshape(-1).double().tolist()}
    return out


def rel(ours, ref) -> float:
    import numpy as np

    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


def width(b) -> float:
    import numpy as np

    return float(np.mean(np.asarray(b["upper"]) - np.asarray(b["lower"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=None, help="interpreter that runs veracity")
    ap.add_argument("--benchmarks", type=Path, default=None)
    ap.add_argument("--float32", action="store_true", help="bound in float32 on both sides")
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers to this file")
    ap.add_argument("--sparse-always", action="store_true",
                    help="auto_LiRPA bound_opts minimum_sparsity=1: CROWN only on IBP-unstable neurons, always")
    ap.add_argument("--only", nargs="*", default=None, help="labels of the networks to run")
    ap.add_argument("--patch-auto-lirpa", action="store_true", help="patch auto_LiRPA for torch>=2.9, exit")
    args = ap.parse_args()
    if args.patch_auto_lirpa:
        patch_auto_lirpa()
        return
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError as e:
        sys.exit(f"auto_LiRPA cannot be imported in {sys.executable} ({e}): see the steps at the top of {__file__}")
    bench = args.benchmarks or default_benchmarks()
    dtype = "float32" if args.float32 else "float64"
    nets = [n for n in NETWORKS if not args.only or n[0] in args.only]
    inst = [(str(bench / d / o), str(bench / d / v)) for _, d, o, v in nets]
    python = args.python or default_python()
    print(f"veracity: {python} (PYTHONPATH={REPO / 'src'}); auto_LiRPA: {sys.executable}; {dtype}"
          + ("; auto_LiRPA minimum_sparsity=1" if args.sparse_always else ""))
    ours = run_veracity(python, inst, dtype)

    head = (f"{'network':<16} {'fwd':>8} | {'CROWN dlo':>9} {'dhi':>9} {'w ours':>10} {'w ref':>10} | "
            f"{'IBP dlo':>9} {'dhi':>9} {'w ours':>10} {'w ref':>10}")
    print(head)
    print("-" * len(head))
    rows = []
    for (label, d, o, _), r in zip(nets, ours, strict=True):
        ref = reference_bounds(bench / d / o, r, dtype, {"minimum_sparsity": 1.0} if args.sparse_always else None)
        row = {"network": label, "forward_max_abs_diff": ref["forward_max_abs_diff"]}
        cells = []
        for key in ("crown", "ibp"):
            a, b = r[key], ref[key]
            row[key] = {"d_lower": rel(a["lower"], b["lower"]), "d_upper": rel(a["upper"], b["upper"]),
                        "width_ours": width(a), "width_ref": width(b), "seconds_ours": a["seconds"],
                        "ours": a, "ref": b}
            c = row[key]
            cells.append(f"{c['d_lower']:9.2e} {c['d_upper']:9.2e} {c['width_ours']:10.4g} {c['width_ref']:10.4g}")
        rows.append(row)
        print(f"{label:<16} {row['forward_max_abs_diff']:8.1e} | {cells[0]} | {cells[1]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
