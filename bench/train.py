"""Certified training variants on MNIST with one small CNN (DM-small) and one time budget per run.

Variants: IBP, CROWN-IBP and CROWN-LBP (tight lines), each with ReLU and ParamRamp; IBP + RGS; and
CROWN-IBP + PGPE (full CROWN inside PGPE does not fit a CPU budget on this CNN: one full-CROWN bound of 8
MNIST images takes over a minute on this machine). Each run trains for ``--budget`` seconds: the epoch
cap (``--epochs``) is set beyond what any variant reaches, so the budget binds for all, and the ε/κ/β/η
schedules follow the fraction of the budget used, in the proportions of the README's headline IBP run
(warm-up 1/30, ε ramp 5/12 of training, κ → 0, batch 256, trained at ε_train = min(1.5 ε, ε + 0.1)).
The ONNX export is then certified on the first ``--n`` test images with sound float64 bounds (IBP,
``--cert-method``, and the variant's own training bound where it is another, on the first ``--own-n``
images only when that is CROWN-LBP or full CROWN) and attacked with PGD.

    python bench/train.py --data-dir ../shared/data/mnist --budget 900 --eps 0.1 0.3 --n 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {
    "ibp": dict(loss="ibp", act="relu"),
    "crown-ibp": dict(loss="crown-ibp", act="relu"),
    "crown-lbp": dict(loss="crown-lbp", act="relu", batch=16),
    "ibp-paramramp": dict(loss="ibp", act="paramramp"),
    "crown-ibp-paramramp": dict(loss="crown-ibp", act="paramramp"),
    "crown-lbp-paramramp": dict(loss="crown-lbp", act="paramramp", batch=16),
    "ibp-rgs": dict(loss="ibp", act="relu", smoothing="rgs", population=2, sigma=0.002),
    "crown-ibp-pgpe": dict(loss="crown-ibp", act="relu", smoothing="pgpe", population=4, sigma=0.002, batch=64),
}


def reexport(path: Path) -> dict:
    from veracity.train.export import to_onnx
    from veracity.train.loop import Config
    from veracity.train.models import build_model, set_eta

    ck = torch.load(path.with_suffix(".ckpt"), weights_only=False)
    cfg = Config(**{**ck["config"], "hidden": tuple(ck["config"]["hidden"])})
    m = build_model(cfg.model, (1, 28, 28), 10, cfg.act, cfg.hidden)
    m.load_state_dict(ck["model"])
    set_eta(m, cfg.schedule().values(cfg.epochs)["eta"])
    to_onnx(m, (1, 28, 28), path)
    return {"steps": ck["state"]["step"], "train_time_s": ck["state"]["elapsed"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--n", type=int, default=1000, help="test images certified")
    ap.add_argument("--own-n", type=int, default=100,
                    help="test images certified by a variant's own bound when that is full CROWN or CROWN-LBP "
                         "(float64 CROWN-LBP on this CNN takes about 2.5 s per image on one core)")
    ap.add_argument("--cert-method", default="crown-ibp", help="ibp|crown-ibp|crown|crown-lbp|alpha")
    ap.add_argument("--out", default="bench/out/train")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=float, default=30.0, help="epoch cap (beyond the budget's reach)")
    ap.add_argument("--recertify", action="store_true", help="no training: re-export the checkpoints and certify")
    a = ap.parse_args(argv)
    if not Path(a.data_dir).is_dir():
        sys.exit(f"no MNIST folder at {a.data_dir}")
    torch.set_num_threads(a.threads)

    from veracity.data import load
    from veracity.graph import load_onnx
    from veracity.train.certify import certify_dataset
    from veracity.train.loop import Config, train

    xte, yte = load("mnist", a.data_dir, "test")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for eps in a.eps:
        for name in a.variants:
            kw = dict(VARIANTS[name])
            kw.setdefault("batch", a.batch)
            cfg = Config(data="mnist", data_dir=a.data_dir, model="cnn-small", eps=eps,
                         train_eps=min(1.5 * eps, eps + 0.1), epochs=a.epochs, warmup=a.epochs / 30,
                         ramp=a.epochs * 5 / 12, kappa_end=0.0, lr=1e-3, time_budget=a.budget, threads=a.threads,
                         val_n=200, **kw)
            path = out / f"{name}_eps{eps}.onnx"
            t = time.perf_counter()
            if a.recertify:  # export the finished run's checkpoint again, then certify it
                summary = reexport(path)
            else:
                summary = train(cfg, path, progress=False, log=lambda s: None)
            wall = time.perf_counter() - t
            g = load_onnx(path)
            res = {}
            own = kw["loss"] if kw["loss"] in ("crown", "crown-lbp") else a.cert_method
            for m in dict.fromkeys(["ibp", a.cert_method, own]):
                n = a.n if m in ("ibp", a.cert_method) else min(a.n, a.own_n)
                res[m] = certify_dataset(g, xte[:n], yte[:n], eps, m, pgd_steps=20, pgd_restarts=1)
            best = max(r["certified"] for r in res.values() if r["n"] == len(xte[: a.n]))
            row = {"variant": name, "eps": eps, "clean": res["ibp"]["clean"], "pgd": res["ibp"]["pgd"],
                   "cert_ibp": res["ibp"]["certified"], f"cert_{a.cert_method}": res[a.cert_method]["certified"],
                   "cert_own": res[own]["certified"], "own_n": res[own]["n"], "certified": best,
                   "steps": summary["steps"],
                   "train_s": round(summary["train_time_s"], 1), "wall_s": round(wall, 1),
                   "contradictions": sum(r["contradictions"] for r in res.values())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    cols = ["variant", "eps", "clean", "pgd", "cert_ibp", f"cert_{a.cert_method}", "cert_own", "own_n", "steps",
            "train_s"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1%}" if isinstance(r[c], float) and c not in ("eps", "train_s")
                                 else str(r[c]) for c in cols) + " |")
    print(f"\nrerun: python bench/train.py --data-dir {a.data_dir} --budget {a.budget:g} --eps "
          f"{' '.join(map(str, a.eps))} --n {a.n} --cert-method {a.cert_method} --threads {a.threads} "
          f"--batch {a.batch} --epochs {a.epochs:g} --own-n {a.own_n}")
    return np.asarray([r["contradictions"] for r in rows]).sum()


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
