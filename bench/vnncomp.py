"""How many instances of a VNN-COMP benchmark veracity decides, and how fast: the same work as `veracity run`.

Runs every instance of BENCH_DIR/instances.csv through the full driver (attack, IBP, CROWN, α-CROWN,
branch and bound, MILP) one after another in this process, prints one line per instance, then the counts,
the contradictions with BENCH_DIR/expected.csv and the total wall time.

    python bench/vnncomp.py ../shared/benchmarks/acasxu [--timeout-scale 1.0] [--limit N] [--no-branch]
        [--match 256x4,prop_5_0.05] [--first-split-share 0.05] [--refine-share 0.8]
        [--refine-solve-limit 1.0] [--refine-last]

``--match``: only the instances whose network or property path contains every comma-separated part;
``--first-split-share``, ``--refine-share``, ``--refine-solve-limit``, ``--refine-last``: the driver's
``FIRST_SPLIT_SHARE``, ``REFINE_SHARE``, ``REFINE_SOLVE_LIMIT`` and ``REFINE_LAST``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from veracity.verify import driver
from veracity.verify.runner import instances_csv, read_expected, read_instances, run_one, summarise


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-branch", action="store_true", help="attack and bounds only (no branching, no MILP)")
    ap.add_argument("--match", default="", help="comma-separated parts every kept instance's paths contain")
    ap.add_argument("--first-split-share", type=float, default=driver.FIRST_SPLIT_SHARE)
    ap.add_argument("--refine-share", type=float, default=driver.REFINE_SHARE)
    ap.add_argument("--refine-solve-limit", type=float, default=driver.REFINE_SOLVE_LIMIT)
    ap.add_argument("--refine-last", action="store_true", default=driver.REFINE_LAST,
                    help="the refine stage also refines the last ReLU layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    driver.FIRST_SPLIT_SHARE, driver.REFINE_SHARE = args.first_split_share, args.refine_share
    driver.REFINE_SOLVE_LIMIT, driver.REFINE_LAST = args.refine_solve_limit, args.refine_last
    instances = read_instances(args.bench)
    parts = [p for p in args.match.split(",") if p]
    instances = [i for i in instances if all(p in f"{i.onnx} {i.vnnlib}" for p in parts)]
    if args.limit:
        instances = instances[: args.limit]
    exp_file = instances_csv(args.bench).parent / "expected.csv"
    expected = read_expected(exp_file) if exp_file.exists() else {}
    rows, cache = [], {}
    t_all = time.perf_counter()
    for inst in instances:
        row = run_one(inst, args.timeout_scale, cache, branch=not args.no_branch)
        rows.append(row)
        print(f"{Path(row.onnx).name} {Path(row.vnnlib).name}: {row.result} ({row.method}) {row.time_s:.2f}s "
              f"[expected {expected.get(row.key, 'unknown')}]", flush=True)
    total = time.perf_counter() - t_all
    s = summarise(rows, expected)
    print(f"\n{args.bench.name}: {s.n} instances, decided {s.decided} "
          f"({', '.join(f'{k} {v}' for k, v in s.counts.items() if v)}), contradictions {len(s.contradictions)}, "
          f"total {total:.1f} s, median {s.median_s:.2f} s")
    for r, exp in s.contradictions:
        print("CONTRADICTION", r.onnx, r.vnnlib, r.result, "expected", exp)
    print(f"rerun: python bench/vnncomp.py {args.bench}" + (" --no-branch" if args.no_branch else "")
          + (f" --match {args.match}" if args.match else "")
          + f" --first-split-share {args.first_split_share:g} --refine-share {args.refine_share:g}"
          f" --refine-solve-limit {args.refine_solve_limit:g}" + (" --refine-last" if args.refine_last else ""))


if __name__ == "__main__":
    main()
