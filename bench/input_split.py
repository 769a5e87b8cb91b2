"""Input splitting on ACAS Xu: look-ahead over the top-ranked inputs against splitting the top-ranked one alone.

For each instance (network i_j, property p), runs ``bab.input_split`` with ``look=8`` (the default: both halves
bounded along each candidate input, the best split kept) and with ``look=1`` (always the input ranked first by
|coefficient| x width), each under the same time limit, and prints verdict, boxes bounded and seconds.

    python bench/input_split.py [--shared ../shared] [--limit 60] [--threads 2] [1_4:1 2_9:1 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from veracity.graph import load_onnx
from veracity.spec import load_vnnlib
from veracity.verify.attack import Checker
from veracity.verify.bab import input_split

HARD = ["1_4:1", "2_8:1", "2_9:1", "3_2:1", "3_6:1", "2_7:1", "3_9:1", "1_1:3", "1_1:6", "3_3:9"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances", nargs="*", default=HARD, help="NET:PROP, e.g. 1_4:1 (default: ten hard ones)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds per run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = args.shared / "benchmarks" / "acasxu"
    totals = {8: 0.0, 1: 0.0}
    print(f"{'instance':10s}" + "".join(f"{f'look={k}':>32s}" for k in totals))
    for inst in args.instances:
        net, prop = inst.split(":")
        g = load_onnx(bench / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx")
        spec = load_vnnlib(bench / "vnnlib" / f"prop_{prop}.vnnlib")
        cells = []
        for look in totals:
            t = time.perf_counter()
            r = input_split(g, spec, Checker(g, spec), deadline=time.monotonic() + args.limit, look=look)
            dt = time.perf_counter() - t
            totals[look] += dt
            cells.append(f"{r.status} {r.boxes} boxes {dt:.1f}s")
        print(f"{inst:10s}" + "".join(f"{c:>32s}" for c in cells), flush=True)
    print("total seconds: " + ", ".join(f"look={k} {v:.1f}" for k, v in totals.items()))
    print("rerun: python bench/input_split.py")


if __name__ == "__main__":
    main()
