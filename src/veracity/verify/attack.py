"""Projected gradient attack on every bad region of a spec, batched over restarts, regions and cases.

Restarts begin at the box centre, at the box vertex that minimises CROWN's linear lower bound of the
region's most binding row (``guided``), and at random points or vertices. The guided start matters where
the network is flat over much of the box: on mnist_fc's 18 sat instances, 8 restarts of 50 steps find a
counterexample in 54 of 54 runs (18 instances x 3 seeds) with it and in 45 without it; 256x6 prop_1_0.05,
where random restarts end on a plateau short of the region, is found only with it (``python
bench/attack.py ../shared/benchmarks/mnist_fc``).

A candidate counts only once it is re-checked: the float64 graph evaluation must put the output in the
region, and so must onnxruntime on the ONNX model when one is given. The witness is a float32-representable
point inside the box, so both evaluations see exactly the same input.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from veracity.bounds.crown import backward, crown_bounds
from veracity.graph.ir import Graph, UnsupportedError
from veracity.spec.core import Spec


def _inside_f32(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Round x to float32 values that stay inside [lo, hi] (when the box admits one)."""
    x32 = np.clip(x, lo, hi).astype(np.float32)
    below = x32.astype(np.float64) < lo
    x32[below] = np.nextafter(x32[below], np.float32(np.inf))
    above = x32.astype(np.float64) > hi
    x32[above] = np.nextafter(x32[above], np.float32(-np.inf))
    return x32


class Checker:
    """Confirms counterexamples on the graph in float64 and, when given, on onnxruntime."""

    def __init__(self, graph: Graph, spec: Spec, onnx_model: bytes | None = None):
        self.graph, self.spec = graph, spec
        self.session = None
        if onnx_model is not None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])

    def check(self, x: np.ndarray, case_index: int):
        """(x, y) with x as float64 of a float32 point, when it violates the spec; else None."""
        box = self.spec.cases[case_index].box
        x32 = _inside_f32(x, box.lower, box.upper)
        x64 = x32.astype(np.float64)
        if not box.contains(x64):
            return None
        with torch.no_grad():
            y = self.graph(torch.from_numpy(x64)[None]).reshape(-1).numpy()
        if not self.spec.violated_by(x64, y):
            return None
        if self.session is not None:
            inp = self.session.get_inputs()[0]
            shape = [1, *self.graph.input_shape]
            y_ort = self.session.run(None, {inp.name: x32.reshape(shape)})[0].reshape(-1).astype(np.float64)
            if not self.spec.violated_by(x64, y_ort):
                return None
        return x64, y


def _region_tensors(spec: Spec, dtype):
    """Stack every (case, region) pair: boxes (R, n), A (R, m, n_out), b (R, m); padding rows never bind."""
    pairs = [(ci, r) for ci, c in enumerate(spec.cases) for r in c.regions]
    m = max([r.A.shape[0] for _, r in pairs] + [1])
    A = np.zeros((len(pairs), m, spec.n_outputs))
    b = np.full((len(pairs), m), -np.inf)
    for k, (_, r) in enumerate(pairs):
        A[k, : r.A.shape[0]] = r.A
        b[k, : r.A.shape[0]] = r.b
    lo = np.stack([spec.cases[ci].box.lower for ci, _ in pairs])
    hi = np.stack([spec.cases[ci].box.upper for ci, _ in pairs])
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return [ci for ci, _ in pairs], t(lo), t(hi), t(A), t(b)


def bound_minimisers(graph: Graph, spec: Spec) -> torch.Tensor | None:
    """Per (case, region) pair, in ``_region_tensors``' order, the vertex of the case's box that minimises
    CROWN's linear lower bound of the region's row furthest from holding; None where CROWN cannot bound
    the graph."""
    case_of, lo, hi, A, b = _region_tensors(spec, torch.float64)
    boxes = [c.box for c in spec.cases]
    sel = torch.tensor(case_of)
    try:
        with torch.no_grad():
            bounds = crown_bounds(graph, torch.tensor(np.stack([x.lower for x in boxes])),
                                  torch.tensor(np.stack([x.upper for x in boxes])))
            bounds = {k: (l[sel], u[sel]) for k, (l, u) in bounds.items()}
            lb, coeffs = backward(graph, graph.output_name, A.reshape(*A.shape[:2], *graph.output_shape), bounds,
                                  "adaptive", return_input_coeffs=True)
    except UnsupportedError:
        return None
    row = torch.where(torch.isinf(b), -torch.inf, lb - b).argmax(1)
    return torch.where(coeffs[torch.arange(len(row)), row] > 0, lo, hi)


def pgd_attack(graph: Graph, spec: Spec, checker: Checker, restarts: int = 8, steps: int = 50,
               deadline: float | None = None, seed: int = 0, vertices: bool = True, guided: bool = True):
    """Search for a counterexample; returns (x, y) confirmed by ``checker`` or None.

    ``vertices``: every other random restart starts at a random vertex of the box (else all are uniform);
    ``guided``: one restart starts at the vertex minimising CROWN's bound of the region (``bound_minimisers``)."""
    if not any(c.regions for c in spec.cases):
        return None
    gen = torch.Generator().manual_seed(seed)
    case_of, lo, hi, A, b = _region_tensors(spec, torch.float64)
    R = lo.shape[0]
    # the box centre first, then random restarts; vertices help where the network is flat inside the box
    # and sign steps from a uniform point stay on that plateau
    def start(k):
        u = torch.rand(lo.shape, generator=gen, dtype=lo.dtype)
        return lo + (u < 0.5).to(lo.dtype) * (hi - lo) if vertices and k % 2 else lo + u * (hi - lo)

    starts = [(lo + hi) / 2] + [start(k) for k in range(1, restarts)]
    guide = bound_minimisers(graph, spec) if guided and restarts > 1 else None
    if guide is not None:
        starts[1] = guide
    x = torch.cat(starts)  # (restarts * R, n)
    idx = torch.arange(R).repeat(restarts)
    lo_r, hi_r, A_r, b_r = lo[idx], hi[idx], A[idx], b[idx]
    width = hi_r - lo_r
    finite_b = torch.where(torch.isinf(b_r), torch.zeros_like(b_r), b_r)

    def violation(x):
        y = graph(x).reshape(x.shape[0], -1)
        v = torch.einsum("rmo,ro->rm", A_r, y) - finite_b
        v = torch.where(torch.isinf(b_r), torch.full_like(v, -torch.inf), v)
        return v.max(dim=1).values  # <= 0 means the output is in the region

    def try_confirm(x, v):
        for k in torch.argsort(v).tolist()[:10]:
            if v[k] > 0:
                break
            hit = checker.check(x[k].numpy(), case_of[int(idx[k])])
            if hit is not None:
                return hit
        return None

    for step in range(steps + 1):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = violation(x)
            grad = torch.autograd.grad(v.sum(), x)[0] if step < steps else None
        hit = try_confirm(x.detach(), v.detach())
        if hit is not None or grad is None or (deadline is not None and time.monotonic() > deadline):
            return hit
        lr = 0.25 * (1 - step / steps) + 0.01
        x = torch.minimum(torch.maximum(x.detach() - lr * width * grad.sign(), lo_r), hi_r)
    return None
