"""End to end on MNIST: `veracity shift train` + `veracity shift verify` per shift, timed; then certified rates
of four classifiers (784-32-32-10 MLP and a small conv net, each trained normally and with shift
augmentation over all six families) per shift.

Every step runs the real command in a subprocess (one torch thread each), so the times include start-up.

    python bench/shift.py [--data-dir ../shared/data/mnist] [--out /tmp/shift_bench] [--shifts rotation,haze]
                          [--images 0:100] [--epochs 3] [--method cegar] [--compare] [--docs]

--compare adds the classifier comparison (reusing the generators); --docs copies the picture grids to
docs/img/shift_<name>.png. ``--methods N`` only compares the verification methods (cegar, driver, crown,
alpha) on the first N instances already written by a previous run under --out:

    python bench/shift.py --out /tmp/shift_bench --methods 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], log: Path) -> float:
    """Run ``veracity ARGS``; returns its wall time; stops the bench on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "veracity.cli", *args, "--threads", "1"]
    t = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{log.read_text()[-2000:]}")
    return dt


def compare_methods(a) -> None:
    import torch

    from veracity.shift.latent import VERIFY_METHODS, verify_instance
    from veracity.verify.runner import read_instances

    torch.set_num_threads(1)
    print(f"rerun: python bench/shift.py --out {a.out} --shifts {a.shifts} --methods {a.methods} --timeout {a.timeout}")
    print(f"{'shift':<11}{'method':<8}{'unsat':>7}{'sat':>5}{'other':>7}{'total s':>9}{'median s':>10}")
    for s in [s.strip() for s in a.shifts.split(",") if s.strip()]:
        folder = a.out / f"verify_{s}_mlp"
        if not (folder / "instances.csv").is_file():
            sys.exit(f"{folder}/instances.csv missing: run the bench without --methods first")
        insts = read_instances(folder)[:a.methods]
        for m in VERIFY_METHODS:
            res = [verify_instance(folder / i.onnx, folder / i.vnnlib, m, a.timeout) for i in insts]
            st = [r.status for r in res]
            ts = sorted(r.time_s for r in res)
            other = len(st) - st.count("unsat") - st.count("sat")
            print(f"{s:<11}{m:<8}{st.count('unsat'):>7}{st.count('sat'):>5}{other:>7}"
                  f"{sum(ts):>9.1f}{ts[len(ts) // 2]:>10.2f}")


def print_table(results: dict, shifts: list[str]) -> None:
    """Certified / images per classifier and shift, with the misclassified, sat and undecided counts."""
    print(f"{'classifier':<12}" + "".join(f"{s:>40}" for s in shifts))
    for name in ("mlp_none", "mlp_all", "conv_none", "conv_all"):
        cells = []
        for s in shifts:
            m = results[(name, s)]
            c = m["counts"]
            rest = m["written"] - c.get("unsat", 0) - c.get("sat", 0)
            cells.append(f"{c.get('unsat', 0)}/{m['images']} ({c.get('misclassified', 0)} wrong, "
                         f"{c.get('sat', 0)} sat, {rest} open; {m['verify_s_total']:.0f} s)")
        print(f"{name:<12}" + "".join(f"{c:>40}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--out", type=Path, default=Path("/tmp/shift_bench"))
    ap.add_argument("--shifts", default="rotation,haze")
    ap.add_argument("--images", default="0:100")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--delta", type=float, default=0.13)
    ap.add_argument("--method", default="cegar")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--docs", action="store_true")
    ap.add_argument("--methods", type=int, default=0, help="compare the methods on N written instances per shift")
    a = ap.parse_args()
    if a.methods:
        compare_methods(a)
        return
    if not a.data_dir.is_dir():
        sys.exit(f"no MNIST at {a.data_dir} (pass --data-dir)")
    a.out.mkdir(parents=True, exist_ok=True)
    shifts = [s.strip() for s in a.shifts.split(",") if s.strip()]
    data = ["--data-dir", str(a.data_dir)]
    print(f"rerun: python bench/shift.py --data-dir {a.data_dir} --out {a.out} --shifts {a.shifts} "
          f"--images {a.images} --epochs {a.epochs} --method {a.method}" + (" --compare" if a.compare else ""))

    t_all = time.perf_counter()
    clf = a.out / "mlp.onnx"
    t_clf = run(["shift", "classifier", *data, "--arch", "mlp", "--out", str(clf)], a.out / "mlp.log")
    rows = []
    for s in shifts:
        g = a.out / s
        t_train = run(["shift", "train", "--shift", s, *data, "--out", str(g), "--epochs", str(a.epochs)],
                      a.out / f"train_{s}.log")
        v = a.out / f"verify_{s}_mlp"
        t_verify = run(["shift", "verify", "--generator", str(g / "generator.onnx"), "--prior", str(g / "prior.onnx"),
                        "--classifier", str(clf), *data, "--images", a.images, "--delta", str(a.delta),
                        "--method", a.method, "--timeout", str(a.timeout), "--out", str(v)], a.out / f"verify_{s}.log")
        meta = json.loads((g / "meta.json").read_text())
        summ = json.loads((v / "summary.json").read_text())
        rows.append((s, t_train, t_verify, meta["test_mean_abs_error"], summ))
        if a.docs:
            (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(g / "shift_grid.png", ROOT / "docs" / "img" / f"shift_{s}.png")
    total = time.perf_counter() - t_all

    print(f"\nclassifier mlp trained in {t_clf:.1f} s")
    print(f"{'shift':<11}{'train s':>9}{'verify s':>10}{'rec err':>9}{'prior err':>10}{'id err':>8}"
          f"{'images':>8}{'written':>8}{'unsat':>7}{'sat':>5}{'other':>7}{'certified':>11}{'ort diff':>10}")
    for s, tt, tv, e, m in rows:
        c = m["counts"]
        other = m["written"] - c.get("unsat", 0) - c.get("sat", 0)
        print(f"{s:<11}{tt:>9.1f}{tv:>10.1f}{e['reconstruction']:>9.4f}{e['prior_mean']:>10.4f}{e['identity']:>8.4f}"
              f"{m['images']:>8}{m['written']:>8}{c.get('unsat', 0):>7}{c.get('sat', 0):>5}{other:>7}"
              f"{m['certified_rate']:>11.0%}{m['max_ort_vs_pipeline']:>10.1e}")
    print(f"total wall time (classifier + {len(shifts)} x (train + verify)): {total:.1f} s = {total / 60:.1f} min")

    if not a.compare:
        return
    print("\nclassifier comparison: certified rate (unsat / images) per shift, method "
          f"{a.method}, images {a.images}, delta {a.delta}")
    results = {}
    for arch in ("mlp", "conv"):
        for aug in ("none", "all"):
            name = f"{arch}_{aug}"
            path = a.out / f"{name}.onnx"
            if not (arch == "mlp" and aug == "none"):
                run(["shift", "classifier", *data, "--arch", arch, "--augment", aug, "--out", str(path)],
                    a.out / f"{name}.log")
            else:
                shutil.copy(clf, path)
                shutil.copy(a.out / "mlp.log", a.out / f"{name}.log")
            for s in shifts:
                g = a.out / s
                v = a.out / f"verify_{s}_{name}"
                if name == "mlp_none":
                    summ = json.loads((a.out / f"verify_{s}_mlp" / "summary.json").read_text())
                else:
                    run(["shift", "verify", "--generator", str(g / "generator.onnx"), "--prior",
                         str(g / "prior.onnx"), "--classifier", str(path), *data, "--images", a.images, "--delta",
                         str(a.delta), "--method", a.method, "--timeout", str(a.timeout), "--out", str(v)],
                        a.out / f"verify_{s}_{name}.log")
                    summ = json.loads((v / "summary.json").read_text())
                results[(name, s)] = summ
            acc = (a.out / f"{name}.log").read_text().split("test accuracy clean", 1)[-1].strip().splitlines()
            print(f"{name:<10} accuracy: clean {acc[0].strip()}; {acc[1].strip() if len(acc) > 1 else ''}")
    print_table(results, shifts)
    print(f"total wall time with the comparison: {(time.perf_counter() - t_all) / 60:.1f} min")


if __name__ == "__main__":
    main()
