"""CEGAR for sigmoid networks against CROWN/α alone and a one-shot fine abstraction.

For each instance (an ONNX network and a VNN-LIB property from an ``instances.csv``) three configurations:

- ``alpha``: attack (8 restarts), then CROWN, then α-CROWN, no refinement;
- ``fine``: the same, then one MILP per open region over a fine abstraction fixed up front (``--fine-points``
  breakpoints and tangents inside every half of every sigmoid/tanh, no refinement);
- ``lazy``: the same, then lazy CEGAR (the initial tangent/secant abstraction, refined at spurious points).

Prints one line per instance and configuration, then per configuration the decided count, the time over the
instances all configurations decide, and the solves and refinements; verdicts are compared with an
``expected.csv`` next to ``instances.csv`` when there is one (columns onnx, vnnlib, majority as in
../shared/benchmarks/eran_2021). ``--scale-box K`` widens every input interval K times about its centre
(pinned inputs stay pinned), to make easy instances (e.g. shift instances at δ = 0.13) harder.

    python bench/cegar.py                                   # eran_2021 ffnnSIGMOID__Point_6x200, 60 s
    python bench/cegar.py --limit 12 --timeout 30
    python bench/cegar.py --instances /tmp/shift_bench/verify_rotation_mlp --filter "" --scale-box 3 --limit 6
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from veracity.graph import load_onnx  # noqa: E402
from veracity.spec import load_vnnlib  # noqa: E402
from veracity.spec.core import Box, Case, Spec  # noqa: E402
from veracity.verify.attack import Checker, pgd_attack  # noqa: E402
from veracity.verify.cegar import cegar_verify  # noqa: E402
from veracity.verify.driver import open_regions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ERAN = ROOT.parent / "shared" / "benchmarks" / "eran_2021"
CONFIGS = ("alpha", "fine", "lazy")


def alpha_only(graph, spec, timeout: float) -> tuple[str, float, int, int]:
    t0 = time.monotonic()
    checker = Checker(graph, spec)
    with torch.no_grad():
        if pgd_attack(graph, spec, checker, restarts=8, deadline=t0 + timeout) is not None:
            return "sat", time.monotonic() - t0, 0, 0
        open_ = [[True] * len(c.regions) for c in spec.cases]
        for m in ("crown", "alpha"):
            open_regions(graph, spec, m, open_)
            if not any(map(any, open_)):
                return "unsat", time.monotonic() - t0, 0, 0
    return "unknown", time.monotonic() - t0, 0, 0


def run_cegar(graph, spec, timeout: float, **kw) -> tuple[str, float, int, int]:
    t0 = time.monotonic()
    r = cegar_verify(graph, spec, timeout=timeout, **kw)
    m = re.search(r"(\d+) solve\(s\), (\d+) refinement\(s\)", r.message)
    solves, refs = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return r.status, time.monotonic() - t0, solves, refs


def scaled(spec: Spec, k: float) -> Spec:
    cases = []
    for c in spec.cases:
        ctr, half = c.box.center, (c.box.upper - c.box.lower) / 2 * k
        cases.append(Case(Box(ctr - half, ctr + half), c.regions))
    return Spec(cases, spec.n_inputs, spec.n_outputs)


def read_instances(path: Path, pattern: str) -> tuple[Path, list[tuple[str, str]], dict]:
    csv_path = path / "instances.csv" if path.is_dir() else path
    root = csv_path.parent
    rows = [r for r in csv.reader(csv_path.open()) if r and pattern in r[0]]
    expected = {}
    exp = root / "expected.csv"
    if exp.exists():
        for r in csv.DictReader(exp.open()):
            expected[(r["onnx"], r["vnnlib"])] = r["majority"]
    return root, [(r[0], r[1]) for r in rows], expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=Path, default=ERAN, help="folder with instances.csv, or the csv")
    ap.add_argument("--filter", default="ffnnSIGMOID__Point_6x200", help="keep rows whose onnx path has this")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--limit", type=int, default=0, help="first N instances (0: all)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--fine-points", type=int, default=4)
    ap.add_argument("--max-refinements", type=int, default=30)
    ap.add_argument("--scale-box", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=None, help="write one CSV row per instance and configuration")
    a = ap.parse_args()
    if not a.instances.exists():
        sys.exit(f"no instances at {a.instances}")
    torch.set_num_threads(1)
    root, rows, expected = read_instances(a.instances, a.filter)
    rows = rows[: a.limit] if a.limit else rows
    configs = [c for c in a.configs.split(",") if c]
    print(f"rerun: python bench/cegar.py --instances {a.instances} --filter '{a.filter}' --timeout {a.timeout} "
          f"--limit {a.limit} --configs {a.configs} --fine-points {a.fine_points} "
          f"--max-refinements {a.max_refinements} --scale-box {a.scale_box}")
    print(f"{len(rows)} instance(s); machine load makes times upper bounds\n")
    results = []
    for onnx_rel, vnn_rel in rows:
        graph = load_onnx(root / onnx_rel)
        spec = load_vnnlib(root / vnn_rel, graph.n_inputs, graph.n_outputs)
        if a.scale_box != 1.0:
            spec = scaled(spec, a.scale_box)
        exp = expected.get((onnx_rel, vnn_rel), "")
        for c in configs:
            if c == "alpha":
                out = alpha_only(graph, spec, a.timeout)
            elif c == "fine":
                out = run_cegar(graph, spec, a.timeout, points=a.fine_points, max_refinements=0)
            elif c == "lazy":
                out = run_cegar(graph, spec, a.timeout, max_refinements=a.max_refinements)
            else:
                sys.exit(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
            status, dt, solves, refs = out
            bad = exp in ("sat", "unsat") and status in ("sat", "unsat") and status != exp
            results.append(dict(onnx=onnx_rel, vnnlib=vnn_rel, config=c, status=status, time_s=round(dt, 2),
                                solves=solves, refinements=refs, expected=exp, contradiction=bad))
            print(f"{Path(vnn_rel).stem:40s} {c:6s} {status:8s} {dt:7.1f}s solves {solves:3d} refinements "
                  f"{refs:4d} expected {exp or '-'}{'  CONTRADICTION' if bad else ''}", flush=True)
    if a.out:
        with a.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(results[0]))
            w.writeheader()
            w.writerows(results)
    print("\nconfig  decided (sat/unsat)  time on commonly decided  solves  refinements  contradictions")
    by = {c: {(r["onnx"], r["vnnlib"]): r for r in results if r["config"] == c} for c in configs}
    keys = [(o, v) for o, v in rows]
    common = [k for k in keys if all(by[c][k]["status"] in ("sat", "unsat") for c in configs)]
    for c in configs:
        rs = list(by[c].values())
        dec = [r for r in rs if r["status"] in ("sat", "unsat")]
        n_sat = sum(r["status"] == "sat" for r in dec)
        t_common = sum(by[c][k]["time_s"] for k in common)
        print(f"{c:6s}  {len(dec):3d}/{len(rs)} ({n_sat}/{len(dec) - n_sat})         "
              f"{t_common:8.1f}s over {len(common)}        {sum(r['solves'] for r in rs):5d}  "
              f"{sum(r['refinements'] for r in rs):6d}       {sum(r['contradiction'] for r in rs)}")
    print("mean time per instance: " + ", ".join(
        f"{c} {np.mean([r['time_s'] for r in by[c].values()]):.1f}s" for c in configs))


if __name__ == "__main__":
    main()
