"""Latent specs and VNN-COMP instances for shift robustness: z in [mu - delta sigma, mu + delta sigma].

For a test image x with label y, the prior p(z|x) gives (mu, log sigma^2); the instance is the composed
network ``z -> classifier(G(x, z))`` (:mod:`veracity.shift.compose`) with the input box above and the
usual robustness property: the property file describes the bad outputs, "some other class scores at least
as high as y", so ``unsat`` means every latent in the box keeps the label on top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from veracity.shift.compose import bind_image, compose, compose_concat, generator_io, graph_inputs

VERIFY_METHODS = ("cegar", "driver", "crown", "alpha")
FORMS = ("z", "concat")  # per-image networks over z alone, or one network over concat(flatten(x), z)


def _session(model):
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


class Networks:
    """The generator, prior and classifier ONNX files, with onnxruntime sessions for each."""

    def __init__(self, generator: Path, prior: Path, classifier: Path):
        self.generator = onnx.load(str(generator))
        self.classifier = onnx.load(str(classifier))
        prior_model = onnx.load(str(prior))
        xi, zi = generator_io(self.generator)
        self.x_name, self.z_name = xi.name, zi.name
        self.x_shape = [d.dim_value or 1 for d in xi.type.tensor_type.shape.dim]
        self.latent = int(np.prod([d.dim_value for d in zi.type.tensor_type.shape.dim][1:]))
        p_in = graph_inputs(prior_model)
        if len(p_in) != 1 or len(prior_model.graph.output) != 2:
            raise ValueError(f"{prior}: a prior takes one input (the image) and has two outputs (mu, logvar)")
        self.prior_in = p_in[0].name
        c_in = graph_inputs(self.classifier)
        if len(c_in) != 1:
            raise ValueError(f"{classifier}: a classifier has one input, this one has {len(c_in)}")
        self.c_name = c_in[0].name
        self.c_shape = [d.dim_value or 1 for d in c_in[0].type.tensor_type.shape.dim]
        self.gen_s, self.prior_s = _session(self.generator), _session(prior_model)
        self.clf_s = _session(self.classifier)
        n_classes = self.clf_s.get_outputs()[0].shape
        self.n_classes = int(n_classes[-1]) if isinstance(n_classes[-1], int) else None
        self._concat_written: Path | None = None  # where the shared concat-form network was saved

    def prior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) in float64 for one image."""
        mu, logvar = self.prior_s.run(None, {self.prior_in: x.reshape(self.x_shape).astype(np.float32)})
        if mu.size != self.latent or logvar.size != self.latent:
            raise ValueError(f"the prior gives {mu.size} means and {logvar.size} log-variances; the generator's "
                             f"latent has {self.latent} entries")
        mu, logvar = mu.reshape(-1).astype(np.float64), logvar.reshape(-1).astype(np.float64)
        return mu, np.exp(0.5 * logvar)

    def pipeline(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """classifier(G(x, z)) by the two separate onnxruntime sessions (the reference for the composition)."""
        img = self.gen_s.run(None, {self.x_name: x.reshape(self.x_shape).astype(np.float32),
                                    self.z_name: z.reshape(1, -1).astype(np.float32)})[0]
        return self.clf_s.run(None, {self.c_name: img.reshape(self.c_shape)})[0].reshape(-1)

    def composed(self, x: np.ndarray) -> onnx.ModelProto:
        return compose(bind_image(self.generator, x), self.classifier)

    def composed_concat(self) -> onnx.ModelProto:
        return compose_concat(self.generator, self.classifier)


def latent_box(mu: np.ndarray, sigma: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    return mu - delta * sigma, mu + delta * sigma


def vnnlib_text(lower: np.ndarray, upper: np.ndarray, label: int, n_classes: int, comments: list[str] = ()) -> str:
    """VNN-LIB for "z in [lower, upper] and some Y_j >= Y_label" (the standard robustness form)."""
    lines = [f"; {c}" for c in comments] + [""]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [""] + [f"(declare-const Y_{j} Real)" for j in range(n_classes)] + ["", "; latent box"]
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        lines.append(f"(assert (<= X_{i} {float(hi)!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo)!r}))")
    lines += ["", "; bad outputs: another class scores at least as high as the label", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label]
    lines += ["))", ""]
    return "\n".join(lines)


@dataclass
class Instance:
    index: int
    label: int
    prediction: int  # the classifier's top class at z = mu
    onnx_path: Path | None = None
    vnnlib_path: Path | None = None
    ort_vs_graph: float = float("nan")  # max |onnxruntime - veracity Graph| on the composed network
    ort_vs_pipeline: float = float("nan")  # max |composed - classifier(G(x, z)) by separate sessions|


def probe_points(lower: np.ndarray, upper: np.ndarray, n: int = 4, seed: int = 0) -> np.ndarray:
    """The box centre, both corners and ``n`` random points in the box, as rows."""
    rng = np.random.default_rng(seed)
    pts = [(lower + upper) / 2, lower, upper] + [rng.uniform(lower, upper) for _ in range(n)]
    return np.stack(pts)


def check_instance(nets: Networks, x: np.ndarray, onnx_path: Path, vnnlib_path: Path,
                   n_fixed: int = 0) -> tuple[float, float]:
    """Load the written files back (veracity importer, VNN-LIB parser, onnxruntime) and compare outputs.

    ``n_fixed``: leading inputs pinned to the image (the concat form). Returns (max |onnxruntime - Graph|,
    max |composed - separate pipeline|) over :func:`probe_points`.
    """
    from veracity.graph import load_onnx
    from veracity.spec import load_vnnlib

    graph = load_onnx(onnx_path)
    spec = load_vnnlib(vnnlib_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
    box = spec.cases[0].box
    if n_fixed and not (np.array_equal(box.lower[:n_fixed], box.upper[:n_fixed])
                        and np.array_equal(box.lower[:n_fixed], x.reshape(-1).astype(np.float32).astype(np.float64))):
        raise ValueError(f"{vnnlib_path}: the image inputs are not pinned to the image")
    sess = _session(onnx_path.read_bytes())
    name = sess.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    d_graph = d_pipe = 0.0
    for z in probe_points(box.lower, box.upper):
        z32 = z.astype(np.float32)
        y = sess.run(None, {name: z32.reshape(shape)})[0].reshape(-1)
        with torch.no_grad():
            g = graph(torch.from_numpy(z32.astype(np.float64))[None]).reshape(-1).numpy()
        d_graph = max(d_graph, float(np.abs(y - g).max()))
        d_pipe = max(d_pipe, float(np.abs(y - nets.pipeline(x, z32[n_fixed:])).max()))
    return d_graph, d_pipe


def write_instance(nets: Networks, x: np.ndarray, label: int, index: int, delta: float, out: Path,
                   source: str = "", form: str = "z") -> Instance:
    """Write the network and ``vnnlib/img<index>_delta<delta>.vnnlib`` under ``out``.

    ``form`` "z": the network ``onnx/img<index>.onnx`` over z alone; "concat": the shared network
    ``onnx/shift_concat.onnx`` over ``concat(flatten(x), z)`` (written once) and a property pinning x.
    Images the classifier gets wrong at z = mu are not written (their ``onnx_path`` stays None).
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
    mu, sigma = nets.prior(x)
    pred = int(np.argmax(nets.pipeline(x, mu.astype(np.float32))))
    inst = Instance(index, int(label), pred)
    if pred != label:
        return inst
    lower, upper = latent_box(mu, sigma, delta)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    inst.vnnlib_path = out / "vnnlib" / f"img{index}_delta{delta:g}.vnnlib"
    n_fixed = 0
    if form == "z":
        inst.onnx_path = out / "onnx" / f"img{index}.onnx"
        onnx.save(nets.composed(x), str(inst.onnx_path))
        inputs = f"inputs X_0..X_{len(mu) - 1}: the latent z"
    else:
        inst.onnx_path = out / "onnx" / "shift_concat.onnx"
        if nets._concat_written != inst.onnx_path:
            onnx.save(nets.composed_concat(), str(inst.onnx_path))
            nets._concat_written = inst.onnx_path
        pixels = x.reshape(-1).astype(np.float32).astype(np.float64)
        n_fixed = len(pixels)
        lower, upper = np.concatenate([pixels, lower]), np.concatenate([pixels, upper])
        inputs = (f"inputs X_0..X_{n_fixed - 1}: the image (pinned), X_{n_fixed}..X_{n_fixed + len(mu) - 1}: "
                  f"the latent z")
    comments = [
        "veracity shift robustness instance: classifier(G(x, z)) with the image x fixed",
        f"image: {source} test index {index}, label {label}",
        f"{inputs}, in [mu - delta sigma, mu + delta sigma], delta = {delta:g}",
        "unsat means the label stays on top for every z in the box",
    ]
    n_classes = nets.n_classes or int(nets.pipeline(x, mu.astype(np.float32)).size)
    inst.vnnlib_path.write_text(vnnlib_text(lower, upper, int(label), n_classes, comments))
    inst.ort_vs_graph, inst.ort_vs_pipeline = check_instance(nets, x, inst.onnx_path, inst.vnnlib_path, n_fixed)
    return inst


def verify_instance(onnx_path: Path, vnnlib_path: Path, method: str, timeout: float | None):
    """Verify a written instance (read back from its files) with ``method`` in :data:`VERIFY_METHODS`."""
    from veracity.graph import load_onnx
    from veracity.spec import load_vnnlib
    from veracity.verify.driver import verify

    graph = load_onnx(onnx_path)
    spec = load_vnnlib(vnnlib_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
    data = onnx_path.read_bytes()
    t0 = time.monotonic()
    if method == "cegar":
        from veracity.verify.cegar import cegar_verify

        res = cegar_verify(graph, spec, timeout=timeout, onnx_model=data)
    elif method == "driver":
        res = verify(graph, spec, timeout=timeout, onnx_model=data)
    elif method in ("crown", "alpha"):
        # bounds first (cheap here), the attack only where they leave a region open
        ms = ("crown",) if method == "crown" else ("crown", "alpha")
        res = verify(graph, spec, timeout=timeout, methods=ms, onnx_model=data, attack=False, branch=False)
        if res.status == "unknown":
            left = None if not timeout else max(1e-3, timeout - (time.monotonic() - t0))
            hit = verify(graph, spec, timeout=left, methods=("ibp",), onnx_model=data, branch=False)
            if hit.status == "sat":
                res = hit
            elif hit.status == "timeout":
                res.status = "timeout"
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(VERIFY_METHODS)}")
    res.time_s = max(res.time_s, time.monotonic() - t0)
    return res
