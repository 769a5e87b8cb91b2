"""HiGHS options for the MILP bound solves of the refine stage: how far each setting tightens neuron bounds.

For each instance (NET:PROP:LAYER, LAYER counting ReLU inputs from 0) runs ``milp.NodeRefiner`` on that layer
over α-CROWN's intermediate bounds for SECONDS with each option set (1 s per solve, widest neurons first, as
the refine stage does). Prints the solves made and how much the summed width of the layer's unstable neurons
shrank (larger is tighter).

    python bench/refine_options.py [--shared ../shared] [--seconds 20] [256x4:prop_13_0.05:2 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import highspy
import numpy as np
import torch

from veracity.bounds.alpha import alpha_bounds
from veracity.graph import load_onnx
from veracity.solvers import milp
from veracity.spec import load_vnnlib
from veracity.verify import bab

DEFAULT = ["256x4:prop_13_0.05:2", "256x6:prop_9_0.03:3"]
_HIGHS = highspy.Highs()
_DEFAULTS = {k: _HIGHS.getOptionValue(k)[1] for k in milp.REFINE_OPTIONS}
SETTINGS = {
    "HiGHS defaults (1 thread)": {**_DEFAULTS, "threads": 1},
    "heuristics off": {**milp.REFINE_OPTIONS, "presolve": _DEFAULTS["presolve"]},
    "heuristics and presolve off (REFINE_OPTIONS)": milp.REFINE_OPTIONS,
}


def shrink(g, lo, hi, bounds, node, options, seconds) -> tuple[int, float]:
    """Solves made and the summed width the layer's unstable neurons lose in ``seconds`` of refinement."""
    r = milp.NodeRefiner(g, lo, hi, bounds)
    for option, value in options.items():
        r.m.h.setOptionValue(option, value)
    l0, u0 = (t.reshape(-1).double().numpy() for t in bounds[node])
    unstable = (l0 < 0) & (u0 > 0)
    l, u = r.refine(node, time.monotonic() + seconds)
    return r.solves, float(np.sum((u0 - l0)[unstable]) - np.sum((u - l)[unstable]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances", nargs="*", default=DEFAULT, help="NET:PROP:LAYER (default: three mnist_fc layers)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of refinement per layer and setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = args.shared / "benchmarks" / "mnist_fc"
    for inst in args.instances:
        net, prop, layer = inst.split(":")
        g = load_onnx(d / "onnx" / f"mnist-net_{net}.onnx")
        case = load_vnnlib(d / "vnnlib" / f"{prop}.vnnlib").cases[0]
        lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
        bounds = alpha_bounds(g, lo, hi)
        node = bab.relu_inputs(g)[int(layer)]
        for name, options in SETTINGS.items():
            solves, gain = shrink(g, lo, hi, bounds, node, options, args.seconds)
            print(f"{inst} {name}: {solves} solves, summed width {gain:.2f} narrower", flush=True)
    print("rerun: python bench/refine_options.py " + " ".join(args.instances)
          + f" --seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
