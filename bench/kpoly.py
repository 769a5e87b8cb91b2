"""Certified MNIST images by CROWN, alpha-CROWN, the triangle LP and kPoly (k-ReLU groups).

Two networks: a 6x100 ReLU network trained here with plain cross-entropy (ERAN-like: the normalisation
mean 0.1307, std 0.3081 folded into the first layer, so the ONNX input is the [0, 1] image; saved as
bench/data/mnist_6x100.onnx on first use), and eran_2021's mnist_relu_9_200 at the epsilon of its
VNN-COMP properties. For the first --images test images that the network classifies correctly, each
method bounds y_label - y_j over the L-infinity ball (clipped to [0, 1]); an image counts as certified when
every lower bound is positive. Prints the count and mean seconds per image of each method.

    python bench/kpoly.py [--net 6x100|9x200|both] [--images 100] [--eps 0.026] [--methods crown,alpha,lp,kpoly]
                          [--skip-below T]

Methods: crown and alpha (veracity.bounds), lp (the triangle LP over full-CROWN intermediate bounds) and
kpoly (the same LP with k=3 group constraints as cutting planes); lp-refine / kpoly-refine first refine
every unstable pre-activation by LPs (slow: minutes per image).
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from veracity import data
from veracity.bounds import bound_spec
from veracity.graph import load_onnx
from veracity.spec import load_vnnlib

HERE = Path(__file__).resolve().parent
NET_6X100 = HERE / "data" / "mnist_6x100.onnx"
MEAN, STD = 0.1307, 0.3081


def train_6x100(mnist: Path, out: Path = NET_6X100, epochs: int = 4, seed: int = 0) -> None:
    """Train the 6x100 network (cross-entropy, Adam) on normalised MNIST and save it with the normalisation folded."""
    torch.manual_seed(seed)
    x, y = data.load("mnist", mnist, "train")
    x = torch.from_numpy((x.reshape(len(x), -1) - MEAN) / STD)
    y = torch.from_numpy(y)
    layers: list[nn.Module] = []
    width = 784
    for _ in range(6):
        layers += [nn.Linear(width, 100), nn.ReLU()]
        width = 100
    net = nn.Sequential(*layers, nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for s in range(0, len(x), 128):
            idx = perm[s : s + 128]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}")
    first = net[0]
    with torch.no_grad():  # W ((x - m) / s) + b = (W / s) x + (b - (m / s) W 1)
        first.bias -= (MEAN / STD) * first.weight.sum(1)
        first.weight /= STD
    model = nn.Sequential(nn.Flatten(), *net).eval()
    xt, yt = data.load("mnist", mnist, "test")
    with torch.no_grad():
        acc = (model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean()
    print(f"test accuracy {acc:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(out), input_names=["input"],
                          output_names=["output"], opset_version=13, dynamo=False)
    print(f"saved {out} ({out.stat().st_size} bytes)")


def margins(graph, method: str, lo: np.ndarray, hi: np.ndarray, label: int) -> np.ndarray:
    """Lower bounds of y_label - y_j (j != label) over the box [lo, hi] by ``method``."""
    from veracity.solvers.kpoly import KPolyOptions, kpoly_bounds
    from veracity.solvers.lp import lp_bounds

    C = np.zeros((1, 9, 10))
    for r, j in enumerate(j for j in range(10) if j != label):
        C[0, r, label], C[0, r, j] = 1.0, -1.0
    L, H, Ct = torch.tensor(lo[None]), torch.tensor(hi[None]), torch.tensor(C)
    if method in ("crown", "alpha"):
        return bound_spec(graph, L, H, Ct, method=method)[0][0].detach().numpy()
    refine = method.endswith("-refine")
    if method.startswith("lp"):
        return lp_bounds(graph, L, H, Ct, refine=refine, solve_upper=False)[0][0].numpy()
    return kpoly_bounds(graph, L, H, Ct, options=KPolyOptions(refine=refine), solve_upper=False)[0][0].numpy()


def run(name: str, graph, items, methods: list[str], skip_below: float | None = None) -> None:
    """items: (index, label, lo, hi) per image; prints a line per image and the totals.

    ``skip_below``: kPoly is not run (and counts as not certified) where the LP's worst margin is below
    ``-skip_below`` (a shortcut for long runs; it can only lower kPoly's count).
    """
    count = dict.fromkeys(methods, 0)
    secs = dict.fromkeys(methods, 0.0)
    runs = dict.fromkeys(methods, 0)
    n = 0
    for idx, label, lo, hi in items:
        n += 1
        line = []
        worst_by = {}
        for m in methods:
            lp_worst = worst_by.get(m.replace("kpoly", "lp"))
            if m.startswith("kpoly") and skip_below is not None and lp_worst is not None and lp_worst < -skip_below:
                line.append(f"{m} skipped")
                continue
            runs[m] += 1
            t = time.perf_counter()
            worst = float(margins(graph, m, lo, hi, label).min())
            dt = time.perf_counter() - t
            secs[m] += dt
            count[m] += worst > 0
            worst_by[m] = worst
            line.append(f"{m} {worst:+.3f} ({dt:.1f}s)")
        print(f"{name} image {idx}: " + ", ".join(line), flush=True)
    print(f"\n{name}: {n} images")
    for m in methods:
        print(f"  {m:14s} certified {count[m]:4d}   {secs[m] / max(runs[m], 1):8.2f} s/image (over {runs[m]} run)")


def mnist_items(graph, mnist: Path, n: int, eps: float):
    x, y = data.load("mnist", mnist, "test")
    for i in range(min(n, len(x))):
        xi = x[i].reshape(-1).astype(np.float64)
        with torch.no_grad():
            pred = int(graph(torch.from_numpy(xi)[None]).argmax())
        if pred != int(y[i]):
            print(f"image {i}: misclassified, skipped")
            continue
        yield i, int(y[i]), np.clip(xi - eps, 0, 1), np.clip(xi + eps, 0, 1)


def eran_items(bench: Path, n: int):
    """The mnist_relu_9_200 instances of eran_2021 (their own boxes and target labels, VNN-COMP epsilon)."""
    rows = [r for r in csv.reader((bench / "instances.csv").open()) if "mnist_relu_9_200" in r[0]][:n]
    for _onnx, vnn_rel, _ in rows:
        spec = load_vnnlib(bench / vnn_rel)
        box = spec.cases[0].box
        A = np.concatenate([r.A for r in spec.cases[0].regions])  # rows y_label - y_j (bad when <= 0)
        label = int(np.argmax(A.sum(0)))
        yield Path(vnn_rel).stem, label, box.lower.astype(np.float64), box.upper.astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared")
    ap.add_argument("--train", action="store_true", help="(re)train the 6x100 network and exit")
    ap.add_argument("--net", choices=["6x100", "9x200", "both"], default="both")
    ap.add_argument("--images", type=int, default=100, help="first N test images (6x100) / instances (9x200)")
    ap.add_argument("--eps", type=float, default=0.026)
    ap.add_argument("--methods", default="crown,alpha,lp,kpoly")
    ap.add_argument("--skip-below", type=float, default=None,
                    help="skip kPoly where the LP's worst margin is below -this (default: never skip)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train or not NET_6X100.exists():
        train_6x100(args.shared / "data" / "mnist")
        if args.train:
            return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    skip = f" --skip-below {args.skip_below}" if args.skip_below is not None else ""
    print("command: python bench/kpoly.py " + f"--net {args.net} --images {args.images} --eps {args.eps} "
          f"--methods {','.join(methods)}{skip}")
    if args.net in ("6x100", "both"):
        g = load_onnx(NET_6X100)
        items = mnist_items(g, args.shared / "data" / "mnist", args.images, args.eps)
        run(f"6x100 eps={args.eps}", g, items, methods, args.skip_below)
    if args.net in ("9x200", "both"):
        bench = args.shared / "benchmarks" / "eran_2021"
        g = load_onnx(bench / "onnx" / "mnist_relu_9_200.onnx")
        run("mnist_relu_9_200 (VNN-COMP eps)", g, eran_items(bench, args.images), methods, args.skip_below)


if __name__ == "__main__":
    main()
