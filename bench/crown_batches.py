"""Full CROWN on batches of ACAS Xu sub-boxes: (box, neuron) pairs of their own against every box computing
every neuron some box needs (``crown.SPARSE_SHARE = 0``), on the same boxes in one run.

    python bench/crown_batches.py [--shared ../shared] [--boxes 640] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import torch

from veracity.graph import load_onnx

crown = importlib.import_module("veracity.bounds.crown")  # the package re-exports a function of that name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--boxes", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = load_onnx(a.shared / "benchmarks" / "acasxu" / "onnx" / "ACASXU_run2a_3_3_batch_2000.onnx")
    gen = torch.Generator().manual_seed(0)
    lo0 = torch.tensor([-0.3, -0.5, -0.5, 0.3, 0.3], dtype=torch.float64)
    print(f"{'width':>7s} {'lines':>9s} {'pairs s':>9s} {'union s':>9s}")
    for width in (0.5, 0.05, 0.005):
        lo = lo0 + torch.rand(a.boxes, 5, generator=gen, dtype=torch.float64) * 0.5
        hi = lo + width * torch.rand(a.boxes, 5, generator=gen, dtype=torch.float64)
        for lines in ("tight", "adaptive", "both"):
            times = []
            for share in (crown.SPARSE_SHARE, 0.0):
                old, crown.SPARSE_SHARE = crown.SPARSE_SHARE, share
                t = time.perf_counter()
                crown.crown_bounds(g, lo, hi, lines)
                times.append(time.perf_counter() - t)
                crown.SPARSE_SHARE = old
            print(f"{width:7g} {lines:>9s} {times[0]:9.3f} {times[1]:9.3f}")
    print(f"\nrerun: python bench/crown_batches.py --boxes {a.boxes} --threads {a.threads}")


if __name__ == "__main__":
    main()
