"""The certified training loop: schedules, κ mixing, optional Gaussian smoothing, checkpoints, logs and curves."""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veracity.train.losses import LOSSES, certified_loss, margin_spec, margins, mixed_loss
from veracity.train.models import build_model, init_ramps, live_graph, ramps, set_eta
from veracity.train.schedule import Schedule
from veracity.train.smoothing import pgpe_grad, rgs_grad

SMOOTHING = ("none", "pgpe", "rgs")
MONITOR_EVERY = 5  # steps between running accuracy / certified estimates


@dataclass
class Config:
    data: str = "digits"
    data_dir: str | None = None
    model: str = "cnn-small"
    act: str = "relu"
    loss: str = "ibp"
    lines: str = "tight"
    smoothing: str = "none"
    eps: float = 0.1
    train_eps: float | None = None  # ε trained at (default eps)
    epochs: float = 10.0
    warmup: float = 1.0
    ramp: float = 3.0
    ramp_shape: str = "linear"
    kappa_end: float = 0.5
    batch: int = 128
    lr: float = 5e-4
    grad_clip: float = 10.0
    population: int = 8  # PGPE pairs / RGS copies
    sigma: float = 0.01
    sigma_end: float | None = None
    time_budget: float | None = None  # seconds; the schedules then follow the fraction of it used
    train_subset: int | None = None
    val_n: int = 500
    seed: int = 0
    threads: int | None = None
    hidden: tuple[int, ...] = (256, 256)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.smoothing not in SMOOTHING:
            raise ValueError(f"unknown smoothing {self.smoothing!r}; choose from {', '.join(SMOOTHING)}")
        for k in ("eps", "epochs", "sigma"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be non-negative")
        if self.loss == "lp" and self.smoothing != "pgpe":
            raise ValueError("the lp loss has no gradient: train it with --smoothing pgpe")
        if self.batch < 1 or self.population < 1:
            raise ValueError("batch and population must be at least 1")

    def schedule(self) -> Schedule:
        return Schedule(eps=self.eps if self.train_eps is None else self.train_eps, warmup=self.warmup,
                        ramp=self.ramp, shape=self.ramp_shape, kappa_end=self.kappa_end, lr=self.lr,
                        sigma_start=self.sigma, sigma_end=self.sigma if self.sigma_end is None else self.sigma_end,
                        epochs=self.epochs)


class Objective(nn.Module):
    """κ · natural CE + (1 − κ) · certified loss of the wrapped model, as a module (for torch.func)."""

    def __init__(self, model: nn.Sequential, in_shape, n_classes: int):
        super().__init__()
        self.model, self.in_shape, self.n_classes = model, tuple(in_shape), n_classes

    def forward(self, x, y, eps: float, kappa: float, method: str, lines: str, beta: float):
        logits = self.model(x)
        if eps <= 0 or kappa >= 1:
            return F.cross_entropy(logits, y)
        robust, _ = certified_loss(live_graph(self.model, self.in_shape), x, y, eps, method, lines, beta,
                                   self.n_classes)
        return mixed_loss(logits, y, robust, kappa)


def load_data(cfg: Config):
    from veracity.data import load

    xtr, ytr = load(cfg.data, cfg.data_dir, "train")
    xte, yte = load(cfg.data, cfg.data_dir, "test")
    if cfg.train_subset:
        xtr, ytr = xtr[: cfg.train_subset], ytr[: cfg.train_subset]
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)


@torch.no_grad()
def evaluate(model, x, y, eps: float, method: str = "ibp", lines: str = "tight", batch: int = 250) -> dict:
    """Clean accuracy and a float32 certified-accuracy estimate (not a sound claim; see certify)."""
    in_shape = tuple(x.shape[1:])
    n_classes = model[-1].out_features
    clean = cert = 0
    for s in range(0, x.shape[0], batch):
        xb, yb = x[s: s + batch], y[s: s + batch]
        ok = model(xb).argmax(1) == yb
        clean += int(ok.sum())
        if eps > 0:
            lo, hi = (xb - eps).clamp(0, 1), (xb + eps).clamp(0, 1)
            low = margins(live_graph(model, in_shape), lo.flatten(1), hi.flatten(1),
                          margin_spec(yb, n_classes), method, lines)
            cert += int((ok & (low > 0).all(1)).sum())
        else:
            cert += int(ok.sum())
    n = max(x.shape[0], 1)
    return {"clean": clean / n, "cert": cert / n}


def _ckpt_path(out: Path) -> Path:
    return out.with_suffix(".ckpt")


def train(cfg: Config, out, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train per ``cfg``; writes ``out`` (.onnx), ``.ckpt``, ``.json``, ``.csv`` and ``.png`` next to it."""
    cfg.check()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    xtr, ytr, xte, yte = load_data(cfg)
    in_shape = tuple(xtr.shape[1:])
    n_classes = int(max(int(ytr.max()), int(yte.max())) + 1)
    model = build_model(cfg.model, in_shape, n_classes, cfg.act, tuple(cfg.hidden))
    objective = Objective(model, in_shape, n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = cfg.schedule()
    steps_per_epoch = math.ceil(xtr.shape[0] / cfg.batch)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    state = {"step": 0, "elapsed": 0.0, "rows": [], "ramps_init": False}
    if resume and _ckpt_path(out).exists():
        ck = torch.load(_ckpt_path(out), weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        torch.set_rng_state(ck["rng"])
        log(f"resumed from {_ckpt_path(out)} at step {state['step']}")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 2)
    smooth_state: dict = {}
    xval, yval = xte[: cfg.val_n], yte[: cfg.val_n]

    def progress_frac() -> float:
        p = state["step"] / total_steps
        if cfg.time_budget:
            p = max(p, state["elapsed"] / cfg.time_budget)
        return min(p, 1.0)

    bar = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
        task = bar.add_task("train", total=1000, info="")
        bar.start()
    run = {"loss": 0.0, "acc": 0.0, "cert": 0.0, "n": 0, "m": 0}
    t_last = time.perf_counter()
    epoch_seen = int(state["step"] // steps_per_epoch)
    perm = None
    try:
        while progress_frac() < 1.0:
            epoch = int(state["step"] // steps_per_epoch)
            pos = state["step"] % steps_per_epoch
            if perm is None or pos == 0 or epoch != epoch_seen:
                perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(cfg.seed + 100 + epoch))
            idx = perm[pos * cfg.batch: (pos + 1) * cfg.batch]
            xb, yb = xtr[idx], ytr[idx]
            t = progress_frac() * cfg.epochs
            v = sched.values(t)
            if ramps(model):
                if not state["ramps_init"] and t >= cfg.warmup:
                    init_ramps(model, xtr[torch.randperm(xtr.shape[0], generator=gen)[:1000]])
                    state["ramps_init"] = True
                set_eta(model, v["eta"])
            for g in opt.param_groups:
                g["lr"] = v["lr"]
            args = (xb, yb, v["eps"], v["kappa"], cfg.loss, cfg.lines, v["beta"])
            opt.zero_grad(set_to_none=True)
            if cfg.smoothing == "none" or v["eps"] <= 0:
                loss = objective(*args)
                loss.backward()
            else:
                loss = _smoothed_step(objective, args, cfg, v["sigma"], noise_gen, smooth_state)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                for m in ramps(model):
                    m.r.clamp_(min=0.0)
            now = time.perf_counter()
            state["elapsed"] += now - t_last
            t_last = now
            state["step"] += 1
            if state["step"] % MONITOR_EVERY == 0:  # running estimates on every few batches
                with torch.no_grad():
                    ok = model(xb).argmax(1) == yb
                    run["acc"] += float(ok.float().sum())
                    if v["eps"] > 0:
                        low = margins(live_graph(model, in_shape), (xb - v["eps"]).clamp(0, 1).flatten(1),
                                      (xb + v["eps"]).clamp(0, 1).flatten(1), margin_spec(yb, n_classes), "ibp")
                        ok = ok & (low > 0).all(1)
                    run["cert"] += float(ok.float().sum())
                    run["m"] += xb.shape[0]
            run["loss"] += float(loss.detach()) * xb.shape[0]
            run["n"] += xb.shape[0]
            if bar is not None:
                m = max(run["m"], 1)
                bar.update(task, completed=int(1000 * progress_frac()),
                           info=f"ep {t:.2f} ε {v['eps']:.3f} κ {v['kappa']:.2f} loss {run['loss'] / run['n']:.3f} "
                                f"acc {run['acc'] / m:.3f} cert@ε(IBP) {run['cert'] / m:.3f}")
            end_epoch = state["step"] % steps_per_epoch == 0 or progress_frac() >= 1.0
            if end_epoch:
                t_eval = time.perf_counter()
                ev = evaluate(model, xval, yval, cfg.eps, "ibp")
                row = {"epoch": round(t, 3), "step": state["step"], "time_s": round(state["elapsed"], 1),
                       "eps": v["eps"], "kappa": v["kappa"], "beta": v["beta"], "eta": v["eta"],
                       "sigma": v["sigma"], "lr": v["lr"], "loss": run["loss"] / max(run["n"], 1),
                       "train_acc": run["acc"] / max(run["m"], 1), "train_cert": run["cert"] / max(run["m"], 1),
                       "val_clean": ev["clean"], "val_cert_ibp": ev["cert"]}
                state["rows"].append(row)
                run = {"loss": 0.0, "acc": 0.0, "cert": 0.0, "n": 0, "m": 0}
                log(f"epoch {t:.2f}: loss {row['loss']:.4f}, train acc {row['train_acc']:.3f}, val clean "
                    f"{ev['clean']:.3f}, val certified (IBP, float32, ε={cfg.eps}) {ev['cert']:.3f}, "
                    f"{state['elapsed']:.0f} s")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                            "rng": torch.get_rng_state(), "config": asdict(cfg)}, _ckpt_path(out))
                t_last += time.perf_counter() - t_eval  # evaluation does not count against the budget
                epoch_seen = int(state["step"] // steps_per_epoch)
    finally:
        if bar is not None:
            bar.stop()
    return finish(model, cfg, in_shape, out, state)


def _smoothed_step(objective: Objective, args, cfg: Config, sigma: float, gen, smooth_state) -> torch.Tensor:
    from torch.func import functional_call

    params = dict(objective.named_parameters())

    def loss_of(p):
        return functional_call(objective, p, args)

    fn = pgpe_grad if cfg.smoothing == "pgpe" else rgs_grad
    grads, value = fn(loss_of, params, sigma, cfg.population, gen, state=smooth_state)
    for k, p in params.items():
        p.grad = grads[k].to(p.dtype)
    return value.detach()


def finish(model, cfg: Config, in_shape, out: Path, state: dict) -> dict:
    """Export ONNX, the JSON/CSV log and the PNG curves."""
    from veracity.train.export import to_onnx

    model.eval()
    to_onnx(model, in_shape, out, doc=json.dumps(asdict(cfg)))
    rows = state["rows"]
    summary = {"config": asdict(cfg), "train_time_s": state["elapsed"], "steps": state["step"], "log": rows,
               "onnx": str(out)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    if rows:
        with open(out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        plot_curves(rows, out.with_suffix(".png"), title=f"{cfg.model} {cfg.act} {cfg.loss} ε={cfg.eps}")
    return summary


def plot_curves(rows: list[dict], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(ep, [r["loss"] for r in rows], marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    b.plot(ep, [r["val_clean"] for r in rows], marker="o", label="clean")
    b.plot(ep, [r["val_cert_ibp"] for r in rows], marker="o", label="certified (IBP)")
    b.plot(ep, [r["train_acc"] for r in rows], ls="--", label="train clean")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.set_ylim(0, 1)
    b.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
