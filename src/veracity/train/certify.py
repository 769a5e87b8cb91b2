"""Clean, PGD and certified accuracy of a graph on a labelled dataset at an L∞ radius.

Certificates come from :func:`veracity.bounds.bound_spec` (float64, box rounded outward, widened); ``ibp``
folds the spec into the last linear layer (elision, float64, widened the same way); ``bab`` adds the complete
verifier :func:`veracity.verify.driver.verify` on the images CROWN leaves open. A PGD point counts only
after a float64 re-check inside the float64 box; an image both certified and broken is counted as a
contradiction (it must never happen).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from veracity.bounds import bound_spec, rounding_margin, widen
from veracity.graph.ir import Graph
from veracity.train.attack import pgd
from veracity.train.losses import ibp_margins, margin_spec

METHODS = ("ibp", "crown", "crown-ibp", "crown-lbp", "lbp", "alpha", "bab")


def certify_dataset(graph: Graph, x, y, eps: float, method: str = "crown", batch: int = 50, pgd_steps: int = 50,
                    pgd_restarts: int = 2, timeout: float = 10.0, progress: bool = False,
                    onnx_bytes: bytes | None = None, seed: int = 0) -> dict:
    """Accuracies over the images ``x`` (N, ...) with labels ``y``; returns a dict with per-image flags too."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(len(x), *graph.input_shape)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    N, K = x.shape[0], graph.n_outputs
    clean = torch.zeros(N, dtype=torch.bool)
    robust = torch.zeros(N, dtype=torch.bool)
    cert = torch.zeros(N, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]certify[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[info]}"))
        task = bar.add_task("certify", total=N, info="")
        bar.start()
    try:
        for s in range(0, N, batch):
            xb, yb = x[s: s + batch], y[s: s + batch]
            sl = slice(s, s + xb.shape[0])
            with torch.no_grad():
                ok = graph.forward(xb).argmax(1) == yb
            clean[sl] = ok
            lo, hi = (xb - eps).clamp(0, 1), (xb + eps).clamp(0, 1)
            # PGD in float32, re-checked in float64 inside the float64 box
            xa = pgd(lambda z: graph.forward(z), xb.float(), yb, eps, steps=pgd_steps, restarts=pgd_restarts,
                     loss="margin", generator=gen).double()
            xa = torch.min(torch.max(xa, lo), hi)
            with torch.no_grad():
                broken = graph.forward(xa).argmax(1) != yb
            robust[sl] = ok & ~broken
            C = margin_spec(yb, K, torch.float64)
            if method == "ibp":  # the spec folded into the last linear layer (elision), widened for rounding
                with torch.no_grad():
                    low = ibp_margins(graph, lo.flatten(1), hi.flatten(1), C)
                low = widen((low, low), rounding_margin(torch.float64))[0]
            else:
                m = "crown" if method == "bab" else method
                low, _ = bound_spec(graph, lo.flatten(1), hi.flatten(1), C, method=m)
            cb = ok & (low > 0).all(1)
            if method == "bab":
                cb = cb | _bab(graph, xb, yb, eps, robust[sl] & ~cb, timeout, onnx_bytes)
            cert[sl] = cb
            if bar is not None:
                done = s + xb.shape[0]
                bar.update(task, completed=done, info=f"clean {clean[:done].float().mean():.3f} "
                           f"PGD {robust[:done].float().mean():.3f} certified {cert[:done].float().mean():.3f}")
    finally:
        if bar is not None:
            bar.stop()
    return {"n": N, "eps": eps, "method": method, "clean": float(clean.float().mean()),
            "pgd": float(robust.float().mean()), "certified": float(cert.float().mean()),
            "contradictions": int((cert & ~robust).sum()), "time_s": time.perf_counter() - t0,
            "per_image": {"clean": clean.tolist(), "pgd": robust.tolist(), "certified": cert.tolist()}}


def _bab(graph: Graph, xb, yb, eps: float, todo: torch.Tensor, timeout: float, onnx_bytes) -> torch.Tensor:
    from veracity.spec.core import robustness_spec
    from veracity.verify.driver import verify

    out = torch.zeros_like(todo)
    for i in todo.nonzero().flatten().tolist():
        spec = robustness_spec(xb[i].numpy().reshape(-1), eps, int(yb[i]), graph.n_outputs)
        res = verify(graph, spec, timeout=timeout, onnx_model=onnx_bytes)
        out[i] = res.status == "unsat"
    return out
