"""ReLU splitting on mnist_fc: CROWN against alpha-optimised intermediate bounds at the root, and the MILP's
time limit with HiGHS's MIP presolve on and off.

For each instance (NET:PROP, e.g. 256x4:prop_1_0.03) prints the unstable neurons per ReLU layer under full
CROWN (tight and adaptive lines intersected) and under ``alpha_bounds``, with the time of each; with
``--split S`` also ``relu_split`` from each root (``--roots``) with each batch size (``--batch``) and
each ranking of splits (``--rank``) and α/β optimisation (``--opt`` iterations:step) for S seconds
(after attack-free ibp/crown/alpha bounding), with the
domains bounded per second;
with ``--milp S`` the exact MILP under an S-second limit, presolve as chosen by ``build_milp`` and forced on;
with ``--refine S`` the intermediate bounds tightened by MILP for S seconds (the driver's refine stage): the
unstable neurons and the worst region's margin under α-CROWN, and with ``--split`` ReLU splitting from them.

    python bench/relu_split.py [--shared ../shared] [--split 40 [--roots crown,alpha] [--batch 64,1024]
        [--rank crown,optimised] [--opt 10:0.1,15:0.2]]
        [--milp 7] [--refine 120 [--refine-last]] [--threads 1] [256x4:prop_1_0.03 ...]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from veracity.bounds import widen
from veracity.bounds.alpha import alpha_bounds, alpha_crown
from veracity.bounds.crown import crown_bounds
from veracity.graph import load_onnx
from veracity.solvers import milp
from veracity.spec import load_vnnlib
from veracity.verify import bab, driver
from veracity.verify.attack import Checker

DEFAULT = ["256x4:prop_1_0.03", "256x6:prop_2_0.03"]


def unstable(bounds, names) -> list[int]:
    return [int(((bounds[p][0] < 0) & (bounds[p][1] > 0)).sum()) for p in names]


def worst_margin(g, spec, lo, hi, bounds) -> float:
    """The worst region's best row: α-CROWN's lower bound minus threshold, over intermediate ``bounds``."""
    case = spec.cases[0]
    C = torch.tensor(np.concatenate([r.A for r in case.regions]))[None]
    with torch.enable_grad():
        lb = widen(alpha_crown(g, lo, hi, C, pre=bounds, lines="adaptive"))[0][0].detach().numpy()
    per_row = lb - np.concatenate([r.b for r in case.regions])
    rows = np.cumsum([0] + [r.A.shape[0] for r in case.regions])
    return float(min(per_row[a:b].max() for a, b in zip(rows[:-1], rows[1:], strict=True)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances", nargs="*", default=DEFAULT, help="NET:PROP (default: two mnist_fc instances)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--split", type=float, default=0.0, help="seconds of relu_split from each root (0: skip)")
    ap.add_argument("--roots", default="crown,alpha", help="roots of --split: crown, alpha, both or none (\"\")")
    ap.add_argument("--batch", default="1024", help="comma-separated batch sizes of --split")
    ap.add_argument("--rank", default="crown", help="comma-separated rankings of splits of --split")
    ap.add_argument("--opt", default="15:0.2", help="comma-separated ITERS:LR of each domain's α/β optimisation")
    ap.add_argument("--refine-last", action="store_true", help="--refine also refines the last ReLU layer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--milp", type=float, default=0.0, help="time limit of the MILP comparison (0: skip)")
    ap.add_argument("--refine", type=float, default=0.0,
                    help="seconds of MILP refinement of the intermediate bounds (driver.refine_stage; 0: skip); "
                         "prints the unstable neurons and worst margin against alpha's; adds root 'milp' to --split")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = args.shared / "benchmarks" / "mnist_fc"
    for inst in args.instances:
        net, prop = inst.split(":")
        g = load_onnx(d / "onnx" / f"mnist-net_{net}.onnx")
        spec = load_vnnlib(d / "vnnlib" / f"{prop}.vnnlib")
        case = spec.cases[0]
        lo, hi = torch.tensor(case.box.lower)[None], torch.tensor(case.box.upper)[None]
        names = bab.relu_inputs(g)
        t = time.perf_counter()
        ref = crown_bounds(g, lo, hi, "both")
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        opt = alpha_bounds(g, lo, hi, pre=ref)
        t_opt = time.perf_counter() - t + t_ref
        print(f"{inst}: unstable per layer crown {unstable(ref, names)} ({t_ref:.2f}s), "
              f"alpha {unstable(opt, names)} ({t_opt:.2f}s)", flush=True)
        open_ = [[True] * len(c.regions) for c in spec.cases]
        for m in ("ibp", "crown", "alpha"):
            driver.open_regions(g, spec, m, open_)
        roots = {}
        if args.refine:
            t = time.perf_counter()
            roots = driver.refine_stage(g, spec, [list(o) for o in open_], time.monotonic() + args.refine,
                                        last=args.refine_last)
            t_mip = time.perf_counter() - t
            print(f"  milp-refined ({args.refine:g}s budget, {t_mip:.1f}s): unstable {unstable(roots[0], names)}, "
                  f"worst margin alpha {worst_margin(g, spec, lo, hi, opt):.3f} -> "
                  f"refined {worst_margin(g, spec, lo, hi, roots[0]):.3f}", flush=True)
        if args.split:
            real = bab.alpha_bounds
            cells = []
            for root in [r for r in args.roots.split(",") if r] + (["milp"] if roots else []):
                bab.alpha_bounds = real if root == "alpha" else (lambda g, lo, hi: crown_bounds(g, lo, hi, "both"))
                for batch, rank, opt in itertools.product(map(int, args.batch.split(",")), args.rank.split(","),
                                                          args.opt.split(",")):
                    iters, lr = opt.split(":")
                    t = time.monotonic()
                    r = bab.relu_split(g, spec, Checker(g, spec), [list(o) for o in open_], deadline=t + args.split,
                                       batch=batch, rank=rank, iters=int(iters), lr=float(lr),
                                       roots=roots if root == "milp" else None)
                    dt = time.monotonic() - t
                    cells.append(f"{root} root, batch {batch}, rank {rank}, opt {opt}: {r.status} after "
                                 f"{r.boxes} domains, {dt:.1f}s ({r.boxes / dt:.0f}/s)")
            bab.alpha_bounds = real
            print("  relu_split " + "\n  relu_split ".join(cells), flush=True)
        if args.milp:
            cells = []
            for mode in ("as built", "presolve on"):
                build = milp.build_milp
                if mode == "presolve on":
                    def forced(*a, _build=build, **k):
                        m = _build(*a, **k)
                        m.h.setOptionValue("presolve", "choose")
                        return m
                    milp.build_milp = forced
                t = time.monotonic()
                v = milp.decide_case(g, case, pre=ref, time_limit=args.milp)
                cells.append(f"{mode}: {v[0]} in {time.monotonic() - t:.1f}s")
                milp.build_milp = build
            print(f"  milp, {args.milp:g}s limit: " + " | ".join(cells), flush=True)
    print("rerun: python bench/relu_split.py " + " ".join(args.instances)
          + (f" --split {args.split:g} --roots '{args.roots}' --batch {args.batch} --rank {args.rank} --opt {args.opt}"
             if args.split else "")
          + f" --threads {args.threads}" + (f" --milp {args.milp:g}" if args.milp else "")
          + (f" --refine {args.refine:g}" if args.refine else "") + (" --refine-last" if args.refine_last else ""))


if __name__ == "__main__":
    main()
