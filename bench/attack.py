"""How many of a benchmark's known-sat instances the PGD attack alone finds, by where restarts start: only at
uniform points; every other one at a random vertex of the box; and that plus one at the vertex minimising
CROWN's bound of each region (the default), on the same seeds.

    python bench/attack.py ../shared/benchmarks/mnist_fc [--restarts 8] [--steps 50] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from veracity.spec import load_vnnlib
from veracity.verify.attack import Checker, pgd_attack
from veracity.verify.runner import _load_graph, instances_csv, read_expected, read_instances


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    expected = read_expected(instances_csv(args.bench).parent / "expected.csv")
    sat = [i for i in read_instances(args.bench) if expected.get(i.key) == "sat"]
    modes = {"uniform": (False, False), "vertices": (True, False), "guided": (True, True)}
    found = dict.fromkeys(modes, 0)
    seconds = dict.fromkeys(modes, 0.0)
    for inst in sat:
        graph, model = _load_graph(inst.onnx_path, None)
        spec = load_vnnlib(inst.vnnlib_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
        checker = Checker(graph, spec, model)
        line = []
        for mode in found:
            hits = 0
            for seed in range(args.seeds):
                t = time.perf_counter()
                vertices, guided = modes[mode]
                hits += pgd_attack(graph, spec, checker, args.restarts, args.steps, seed=seed,
                                   vertices=vertices, guided=guided) is not None
                seconds[mode] += time.perf_counter() - t
            found[mode] += hits
            line.append(f"{mode} {hits}/{args.seeds}")
        print(f"{Path(inst.onnx).name} {Path(inst.vnnlib).name}: {', '.join(line)}", flush=True)
    runs = len(sat) * args.seeds
    for mode in found:
        print(f"{mode}: found {found[mode]} of {runs} runs ({len(sat)} sat instances x {args.seeds} seeds), "
              f"{seconds[mode]:.1f} s")
    print(f"rerun: python bench/attack.py {args.bench} --restarts {args.restarts} --steps {args.steps} "
          f"--seeds {args.seeds}")


if __name__ == "__main__":
    main()
