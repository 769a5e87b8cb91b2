"""ADMM against HiGHS on the triangle LP, with the same intermediate bounds (full CROWN).

``nets``: for each network, the input box and spec rows of its first instance. HiGHS (simplex; presolve on
unless --presolve off) builds the LP and minimises every row, warm-started row to row: its time and optimum.
ADMM bounds all rows at once; reported is the time at which every row's bound is within 1e-3 of the LP
optimum (relative, floor 1: (lp - bound) <= 1e-3 * max(|lp|, 1)), or "not reached" within
max(--time-limit, HiGHS's time). Writes docs/img/admm_bound_vs_time.png (worst relative gap vs time).

``sweep``: random small sequential ReLU nets (the generator of tests/test_admm.py); the share whose ADMM
bound reaches 1e-3 of the LP optimum within --max-iter iterations, and the largest excess over the optimum.

    python bench/admm.py nets [--shared ../shared] [--time-limit 300] [--lp-time-limit 900] [--presolve on]
                              [--nets cifar_base_kw,...]
    python bench/admm.py sweep [--n 200] [--max-iter 20000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from veracity.bounds.crown import crown_bounds
from veracity.graph import load_onnx
from veracity.solvers.admm import admm_minimize
from veracity.solvers.lp import Model
from veracity.spec import load_vnnlib

BENCH_OF = {"cifar_base_kw": "oval21", "cifar_wide_kw": "oval21", "cifar_deep_kw": "oval21",
            "mnist-net_256x2": "mnist_fc", "mnist-net_256x4": "mnist_fc"}
REL = 1e-3


def first_instance(bench: Path, net: str):
    for onnx_rel, vnn_rel, _ in csv.reader((bench / "instances.csv").open()):
        if Path(onnx_rel).name == net + ".onnx":
            g = load_onnx(bench / onnx_rel)
            spec = load_vnnlib(bench / vnn_rel, n_inputs=g.n_inputs, n_outputs=g.n_outputs)
            case = spec.cases[0]
            C = np.concatenate([r.A for r in case.regions])
            return g, case.box, C
    raise SystemExit(f"{net} not in {bench}/instances.csv")


def gap(lp: torch.Tensor, b: torch.Tensor) -> float:
    return float(((lp - b) / lp.abs().clamp(min=1.0)).max())


def run_nets(args) -> None:
    shared = Path(args.shared)
    if not shared.exists():
        sys.exit(f"{shared} not found: pass --shared")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    print(f"{'net':18s} {'rows':>4s} {'HiGHS s':>9s} {'ADMM s to 1e-3':>15s} {'ADMM iters':>10s} {'final gap':>10s}")
    for net in args.nets.split(","):
        g, box, C = first_instance(shared / "benchmarks" / BENCH_OF[net], net)
        lower = torch.tensor(box.lower)[None]
        upper = torch.tensor(box.upper)[None]
        pre = crown_bounds(g, lower, upper)
        t = time.perf_counter()
        m = Model(g, pre, 0, time_limit=args.lp_time_limit).build()
        m.h.setOptionValue("presolve", args.presolve)
        sols = [m.minimize(*m.objective(g.output_name, c)) for c in C]
        lp = torch.tensor([s.bound for s in sols])[None]
        t_lp = time.perf_counter() - t
        if any(s.status != "Optimal" for s in sols):
            print(f"{net}: HiGHS stopped before the optimum ({sols[0].status}, {t_lp:.0f} s); no reference")
            continue
        res = admm_minimize(g, lower, upper, torch.tensor(C)[None], pre, trace=True, check_every=args.check_every,
                            time_limit=max(args.time_limit, t_lp), max_iter=10**9, tol=1e-6, solver=args.solver,
                            device=args.device)
        hit = next(((s, it) for s, it, b in res.trace if gap(lp, b) <= REL), None)
        hit_s = f"{hit[0]:.2f}" if hit else "not reached"
        print(f"{net:18s} {C.shape[0]:4d} {t_lp:9.2f} {hit_s:>15s} {res.iterations:10d} "
              f"{gap(lp, res.lower):10.2e}", flush=True)
        ts = [s for s, _, _ in res.trace]
        gs = [max(gap(lp, b), 1e-8) for _, _, b in res.trace]
        (line,) = ax.semilogy(ts, gs, label=f"{net} ADMM")
        ax.axvline(t_lp, color=line.get_color(), ls="--", lw=1, label=f"{net} HiGHS (all rows)")
    ax.axhline(REL, color="k", lw=0.8)
    ax.set_xlabel("seconds (1 thread)")
    ax.set_ylabel("worst relative gap to the LP optimum")
    ax.set_title("ADMM bound vs time (final spec rows, CROWN intermediate bounds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.plot)
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


def run_sweep(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_admm import _problem

    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    reached, worst_over, iters, gaps = 0, -float("inf"), [], []
    t0 = time.perf_counter()
    for _ in range(args.n):
        g, l, u, C, pre, lp = _problem(rng, gen)
        res = admm_minimize(g, l, u, C, pre, max_iter=args.max_iter, tol=1e-5, dtype=torch.float64)
        gp = gap(lp, res.lower)
        worst_over = max(worst_over, float(((res.lower - lp) / (1 + lp.abs())).max()))
        gaps.append(gp)
        reached += gp <= REL
        iters.append(res.iterations)
        if len(iters) % 20 == 0:
            print(f"  {len(iters)} nets: {reached} within {REL:g}, worst excess {worst_over:.2e}", flush=True)
    print(f"{args.n} nets: {reached} within {REL:g} of the LP optimum after at most {args.max_iter} iterations; "
          f"median iterations {int(np.median(iters))}, worst gap {max(gaps):.2e}, "
          f"largest excess over the optimum {worst_over:.2e} (relative to 1+|lp|); {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("nets")
    a.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    a.add_argument("--nets", default="cifar_base_kw,cifar_wide_kw,cifar_deep_kw,mnist-net_256x2")
    a.add_argument("--time-limit", type=float, default=300.0, help="ADMM seconds (at least HiGHS's time)")
    a.add_argument("--lp-time-limit", type=float, default=900.0, help="HiGHS seconds for the model's solves")
    a.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs/img/admm_bound_vs_time.png"))
    a.add_argument("--presolve", choices=["on", "off"], default="on",
                   help="HiGHS presolve (on: its fastest here; Model's own default is off)")
    a.add_argument("--check-every", type=int, default=25)
    a.add_argument("--solver", default="auto")
    a.add_argument("--device", default="cpu")
    a.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("sweep")
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--max-iter", type=int, default=20000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_nets(args) if args.cmd == "nets" else run_sweep(args)


if __name__ == "__main__":
    main()
