"""How many instances of a VNN-COMP benchmark `veracity verify` decides, and how fast.

Runs attack → IBP → CROWN → α-CROWN (→ input splitting unless --no-branch) on every instance of
BENCH_DIR/instances.csv (one process, sequential),
compares each verdict with BENCH_DIR/expected.csv and prints counts, contradictions and total time.

    python bench/vnncomp.py ../shared/benchmarks/acasxu [--timeout-scale 1.0] [--limit N] [--no-branch]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from pathlib import Path

from veracity.graph import load_onnx
from veracity.graph.onnx_import import resolve_path
from veracity.spec import load_vnnlib
from veracity.verify.driver import verify


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--no-branch", action="store_true", help="attack and bounds only (no input splitting)")
    args = ap.parse_args()
    expected = {}
    exp_file = args.bench / "expected.csv"
    if exp_file.exists():
        for row in csv.DictReader(exp_file.open()):
            expected[(row["onnx"], row["vnnlib"])] = row["majority"]
    rows = list(csv.reader((args.bench / "instances.csv").open()))
    if args.limit:
        rows = rows[: args.limit]
    counts: dict[str, int] = {}
    contradictions = []
    graphs = {}
    t_all = time.perf_counter()
    for onnx_rel, vnn_rel, timeout in rows:
        if onnx_rel not in graphs:
            path = resolve_path(args.bench / onnx_rel)
            data = path.read_bytes()
            graphs[onnx_rel] = (load_onnx(path), gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        graph, model = graphs[onnx_rel]
        spec = load_vnnlib(args.bench / vnn_rel)
        res = verify(graph, spec, timeout=float(timeout) * args.timeout_scale, onnx_model=model,
                     branch=not args.no_branch)
        counts[res.status] = counts.get(res.status, 0) + 1
        exp = expected.get((onnx_rel, vnn_rel), "unknown")
        if {res.status, exp} == {"sat", "unsat"}:
            contradictions.append((onnx_rel, vnn_rel, res.status, exp))
        print(f"{Path(onnx_rel).name} {Path(vnn_rel).name}: {res.status} ({res.method}) {res.time_s:.2f}s "
              f"[expected {exp}]", flush=True)
    total = time.perf_counter() - t_all
    decided = counts.get("sat", 0) + counts.get("unsat", 0)
    print(f"\n{args.bench.name}: {len(rows)} instances, decided {decided} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), contradictions {len(contradictions)}, "
          f"total {total:.1f} s")
    for c in contradictions:
        print("CONTRADICTION", *c)
    print(f"rerun: python bench/vnncomp.py {args.bench}")


if __name__ == "__main__":
    main()
