"""HiGHS options for the MILP bound solves of the refine stage: how far each setting tightens neuron bounds.

For each instance (NET:PROP:LAYER, LAYER counting ReLU inputs from 0) builds ``milp.NodeRefiner``'s model up to
that layer over α-CROWN's intermediate bounds, and minimises the N widest unstable neurons of the layer one by
one under a LIMIT-second limit with each option set. Prints the time taken and the sum of the gains of the
neurons' lower bounds over α-CROWN's (larger is tighter).

    python bench/refine_options.py [--shared ../shared] [--limit 1] [--neurons 10] [256x4:prop_13_0.05:2 ...]
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

DEFAULT = ["256x4:prop_13_0.05:1", "256x4:prop_13_0.05:2", "256x6:prop_9_0.03:3"]
_HIGHS = highspy.Highs()
_DEFAULTS = {k: _HIGHS.getOptionValue(k)[1] for k in milp.REFINE_OPTIONS}
SETTINGS = {
    "HiGHS defaults (1 thread)": {**_DEFAULTS, "threads": 1},
    "heuristics off": {**milp.REFINE_OPTIONS, "presolve": _DEFAULTS["presolve"]},
    "heuristics and presolve off (REFINE_OPTIONS)": milp.REFINE_OPTIONS,
}


def gains(g, lo, hi, bounds, node, options, limit, n) -> tuple[float, float]:
    """Seconds taken and summed lower-bound gain of the n widest unstable neurons of ``node``."""
    r = milp.NodeRefiner(g, lo, hi, bounds, limit)
    m = r.m
    for option, value in options.items():
        m.h.setOptionValue(option, value)
    for k in g.nodes:
        if k not in m.added:
            m.add_node(k)
        if k == node:
            break
    M, c0 = m.expr(node)
    lo0, hi0 = m.lower[node], m.upper[node]
    todo = np.nonzero((lo0 < 0) & (hi0 > 0))[0]
    todo = todo[np.argsort(-np.minimum(-lo0[todo], hi0[todo]), kind="stable")][:n]
    t, total = time.monotonic(), 0.0
    for e in todo.tolist():
        m.h.setOptionValue("time_limit", limit)
        milp._set_cost(m, M[e])
        m.h.run()
        total += max(0.0, m.h.getInfo().mip_dual_bound + c0[e] - lo0[e])
    return time.monotonic() - t, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances", nargs="*", default=DEFAULT, help="NET:PROP:LAYER (default: three mnist_fc layers)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--limit", type=float, default=1.0, help="seconds per solve")
    ap.add_argument("--neurons", type=int, default=10, help="neurons minimised per layer")
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
            dt, gain = gains(g, lo, hi, bounds, node, options, args.limit, args.neurons)
            print(f"{inst} {name}: lower-bound gain {gain:.2f} in {dt:.1f}s", flush=True)
    print("rerun: python bench/refine_options.py " + " ".join(args.instances)
          + f" --limit {args.limit:g} --neurons {args.neurons}")


if __name__ == "__main__":
    main()
