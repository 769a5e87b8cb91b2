"""Time and mean bound width per bounding method on real VNN-COMP networks.

For each network: the input box of its first instance's property, bounds on the raw outputs by every
method (tight lines; CROWN and α also with adaptive lines), the median time of --repeat runs and the mean
width upper − lower. Also: CROWN on an mnist_fc 256x6 spec (one L∞ region, 9 rows; target < 50 ms) and
IBP against a plain forward pass of the same batch (target < 3x).

    python bench/bounds.py [--shared ../shared] [--repeat 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from veracity.bounds import METHODS, bound_spec, ibp
from veracity.graph import load_onnx
from veracity.spec import load_vnnlib

NETS = {
    "acasxu": ["ACASXU_run2a_1_1_batch_2000", "ACASXU_run2a_3_3_batch_2000"],
    "mnist_fc": ["mnist-net_256x2", "mnist-net_256x4", "mnist-net_256x6"],
    "eran_2021": ["mnist_relu_9_200", "ffnnSIGMOID__Point_6x200"],
    "oval21": ["cifar_base_kw", "cifar_wide_kw", "cifar_deep_kw"],
}


def first_box(bench: Path, net: str):
    for onnx_rel, vnn_rel, _ in csv.reader((bench / "instances.csv").open()):
        if Path(onnx_rel).name == net + ".onnx":
            spec = load_vnnlib(bench / vnn_rel)
            return spec.cases[0].box, spec
    raise SystemExit(f"{net} not in {bench}/instances.csv")


def median_time(repeat, fn, *args, **kwargs):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = [(m, "tight") for m in METHODS] + [("crown", "adaptive"), ("alpha", "adaptive")]
    header = f"{'network':32s}" + "".join(f"{m + ('/a' if ln == 'adaptive' else ''):>20s}" for m, ln in runs)
    print("mean width (median seconds)\n" + header)
    for bench, nets in NETS.items():
        for net in nets:
            g = load_onnx(args.shared / "benchmarks" / bench / "onnx" / f"{net}.onnx")
            box, _ = first_box(args.shared / "benchmarks" / bench, net)
            cells = []
            for m, ln in runs:
                rep = 1 if m in ("alpha",) else args.repeat
                t, (lo, hi) = median_time(rep, bound_spec, g, box.lower[None], box.upper[None], method=m, lines=ln)
                cells.append(f"{float((hi - lo).mean()):.4g} ({t:.3f})")
            print(f"{net:32s}" + "".join(f"{c:>20s}" for c in cells), flush=True)

    print("\nspeed targets")
    bench = args.shared / "benchmarks" / "mnist_fc"
    g = load_onnx(bench / "onnx" / "mnist-net_256x6.onnx")
    box, spec = first_box(bench, "mnist-net_256x6")
    C = np.concatenate([r.A for r in spec.cases[0].regions])
    bound_spec(g, box.lower[None], box.upper[None], C, method="crown")
    t, _ = median_time(max(args.repeat, 10), bound_spec, g, box.lower[None], box.upper[None], C, method="crown")
    print(f"CROWN, mnist_fc 256x6, {C.shape[0]} spec rows: {t * 1e3:.1f} ms (target < 50 ms)")
    for batch in (1, 64):
        l = torch.tensor(np.repeat(box.lower[None], batch, 0))
        u = torch.tensor(np.repeat(box.upper[None], batch, 0))
        with torch.no_grad():
            tf, _ = median_time(50, g, (l + u) / 2)
            ti, _ = median_time(50, ibp, g, l, u)
        print(f"IBP vs forward, batch {batch}: {ti * 1e3:.3f} ms vs {tf * 1e3:.3f} ms = {ti / tf:.2f}x (target < 3x)")
    print("\nrerun: python bench/bounds.py")


if __name__ == "__main__":
    main()
