"""Build the tiny bundled digits example used by ``veracity demo``.

Run with ``python -m veracity.examples.make_digits``.  It is deterministic
(fixed seeds, single-threaded torch) and takes a few seconds on a laptop CPU.

It writes, next to this file:

* ``digits_mlp.onnx``       -- a 64-32-32-10 ReLU MLP trained on scikit-learn's
                               bundled 8x8 digits (pixels scaled to [0, 1]);
* ``digits_robust.vnnlib``  -- an L-infinity robustness property around one
                               correctly classified test image;
* ``digits_meta.json``      -- image index, label, eps and test accuracy.

The radius ``eps`` is chosen so that the property is true and interesting: a
PGD attack finds no counterexample, plain interval bound propagation (IBP) does
*not* prove it, but backward linear bound propagation (CROWN) does.  The tiny
IBP / CROWN implementations below exist only to choose eps; they are
deliberately independent of the rest of the package.

scikit-learn is only needed to run this script (it is a test extra), not to use
the files it produces.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_mlp.onnx"
SPEC_PATH = HERE / "digits_robust.vnnlib"
META_PATH = HERE / "digits_meta.json"

SEED = 0
N_TRAIN = 1500
EPOCHS = 40
BATCH = 64
LR = 3e-3
EPS_GRID = [round(0.005 * k, 3) for k in range(2, 21)]  # 0.01 .. 0.10


# --------------------------------------------------------------------------- data / model


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, x_test: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort

    dummy = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated, but it gives the plain Flatten/Gemm/Relu graph we want
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(ONNX_PATH),
            input_names=["input"],
            output_names=["output"],
            opset_version=13,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(m)
    allowed = {"Gemm", "MatMul", "Add", "Relu", "Flatten", "Reshape"}
    ops = [n.op_type for n in m.graph.node]
    bad = sorted(set(ops) - allowed)
    assert not bad, f"unexpected ONNX ops: {bad}"
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 8, 8], dims
    print(f"onnx ops: {ops}  ({ONNX_PATH.stat().st_size} bytes)")

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    got = np.concatenate([sess.run(["output"], {"input": x_test[i : i + 1]})[0] for i in range(len(x_test))])
    err = float(np.abs(got - ref).max())
    print(f"onnxruntime vs torch max abs diff on test set: {err:.2e}")
    assert err <= 1e-5, err


# --------------------------------------------------------------------------- tiny bounds


def linear_layers(model: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.weight.detach().double(), m.bias.detach().double()) for m in model if isinstance(m, nn.Linear)]


def spec_matrix(label: int) -> torch.Tensor:
    """Rows c_j = e_label - e_j for j != label; robust iff min_j c_j . y > 0."""
    rows = []
    for j in range(10):
        if j != label:
            c = torch.zeros(10, dtype=torch.float64)
            c[label], c[j] = 1.0, -1.0
            rows.append(c)
    return torch.stack(rows)


def with_spec(layers, label):
    """Fold the margin matrix into the last affine layer (as is standard for both IBP and CROWN)."""
    c = spec_matrix(label)
    w, b = layers[-1]
    return layers[:-1] + [(c @ w, c @ b)]


def ibp(layers, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for k, (w, b) in enumerate(layers):
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        lo, hi = wp @ lo + wn @ hi + b, wp @ hi + wn @ lo + b
        if k < len(layers) - 1:
            lo, hi = lo.clamp(min=0), hi.clamp(min=0)
    return lo, hi


def relu_relax(lo: torch.Tensor, hi: torch.Tensor):
    """Linear relaxation a_l*z <= relu(z) <= a_u*z + b_u on [lo, hi] (CROWN's adaptive lower slope)."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~(active | inactive)
    denom = torch.where(unstable, hi - lo, torch.ones_like(lo))
    a_u = torch.where(unstable, hi / denom, active.double())
    b_u = torch.where(unstable, -hi * lo / denom, torch.zeros_like(lo))
    a_l = torch.where(unstable, (hi > -lo).double(), active.double())
    return a_l, a_u, b_u


def crown_lower(layers, pre_bounds, x_lo, x_hi, n: int) -> torch.Tensor:
    """Lower bound of the output of ``layers[:n]`` (pre-activation of layer n-1) by backward propagation."""
    w, b = layers[n - 1]
    lam, const = w.clone(), b.clone()
    for k in range(n - 2, -1, -1):
        a_l, a_u, b_u = relu_relax(*pre_bounds[k])
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        const = const + neg @ b_u
        lam = pos * a_l + neg * a_u
        w, b = layers[k]
        const = const + lam @ b
        lam = lam @ w
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    return pos @ x_lo + neg @ x_hi + const


def crown(layers, x_lo: torch.Tensor, x_hi: torch.Tensor) -> torch.Tensor:
    pre_bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    for n in range(1, len(layers)):
        neg_layers = layers[: n - 1] + [(-layers[n - 1][0], -layers[n - 1][1])]
        lo = crown_lower(layers, pre_bounds, x_lo, x_hi, n)
        hi = -crown_lower(neg_layers, pre_bounds, x_lo, x_hi, n)
        pre_bounds.append((lo, hi))
    return crown_lower(layers, pre_bounds, x_lo, x_hi, len(layers))


def input_box(x: np.ndarray, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.from_numpy(x.reshape(-1).astype(np.float64))
    return (flat - eps).clamp(0.0, 1.0), (flat + eps).clamp(0.0, 1.0)


def pgd_min_margin(
    model: nn.Module, x: np.ndarray, label: int, eps: float, restarts: int = 20, steps: int = 100
) -> float:
    """Smallest margin y_label - max_{j!=label} y_j found by a multi-restart PGD attack."""
    gen = torch.Generator().manual_seed(SEED)
    x0 = torch.from_numpy(x).double().unsqueeze(0)
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    net = make_model().double()
    net.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    best = float("inf")
    for r in range(restarts):
        if r == 0:
            xa = x0.clone()
        else:
            xa = lo + (hi - lo) * torch.rand(x0.shape, generator=gen, dtype=torch.float64)
        step = eps / 10
        for _ in range(steps):
            xa.requires_grad_(True)
            out = net(xa)[0]
            other = torch.cat([out[:label], out[label + 1 :]])
            margin = out[label] - other.max()
            best = min(best, float(margin.detach()))
            (g,) = torch.autograd.grad(margin, xa)
            xa = torch.max(torch.min(xa.detach() - step * g.sign(), hi), lo)
        with torch.no_grad():
            out = net(xa)[0]
            best = min(best, float(out[label] - torch.cat([out[:label], out[label + 1 :]]).max()))
    return best


def choose_property(model: nn.Module, x_test: np.ndarray, y_test: np.ndarray):
    layers = linear_layers(model)
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    for idx in range(len(x_test)):
        label = int(y_test[idx])
        if pred[idx] != label:
            continue
        spec_layers = with_spec(layers, label)
        found = None
        for eps in EPS_GRID:
            x_lo, x_hi = input_box(x_test[idx], eps)
            ibp_lb = float(ibp(spec_layers, x_lo, x_hi)[0].min())
            crown_lb = float(crown(spec_layers, x_lo, x_hi).min())
            if crown_lb <= 0:
                break  # larger eps only gets harder for CROWN
            if ibp_lb <= 0:
                found = (eps, ibp_lb, crown_lb)
        if found is None:
            continue
        eps, ibp_lb, crown_lb = found
        pgd = pgd_min_margin(model, x_test[idx], label, eps)
        if pgd <= 0:  # cannot happen if CROWN is sound; kept as a sanity check
            raise AssertionError(f"PGD found a counterexample although CROWN proved robustness (idx {idx})")
        return idx, label, eps, ibp_lb, crown_lb, pgd
    raise RuntimeError("no test image with an eps that CROWN proves and IBP does not")


# --------------------------------------------------------------------------- VNN-LIB


def write_vnnlib(x: np.ndarray, idx: int, label: int, eps: float) -> None:
    flat = x.reshape(-1).astype(np.float64)
    lo, hi = np.clip(flat - eps, 0.0, 1.0), np.clip(flat + eps, 0.0, 1.0)
    lines = [
        "; veracity bundled example: L-infinity robustness of digits_mlp.onnx",
        "; network: digits_mlp.onnx (64-32-32-10 ReLU MLP, sklearn load_digits, pixels/16)",
        f"; image: test index {idx} (seeded split, see make_digits.py), label {label}",
        f"; eps: {eps} (L-infinity, clipped to [0, 1]); inputs X_0..X_63 are the 8x8 image row-major",
        "; the property is UNSAT (the network is robust): CROWN proves it, IBP does not",
        "",
    ]
    lines += [f"(declare-const X_{i} Real)" for i in range(64)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    lines.append("")
    lines.append("; input constraints")
    for i in range(64):
        lines.append(f"(assert (<= X_{i} {hi[i]:.9f}))")
        lines.append(f"(assert (>= X_{i} {lo[i]:.9f}))")
    lines.append("")
    lines.append("; unsafe region: some other class scores at least as high as the label")
    lines.append("(assert (or")
    for j in range(10):
        if j != label:
            lines.append(f"    (and (>= Y_{j} Y_{label}))")
    lines.append("))")
    SPEC_PATH.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def main() -> None:
    seed_everything()
    x_tr, y_tr, x_te, y_te = load_data()
    model = make_model()
    train(model, x_tr, y_tr)
    train_acc, test_acc = accuracy(model, x_tr, y_tr), accuracy(model, x_te, y_te)
    print(f"train accuracy {train_acc:.4f}  test accuracy {test_acc:.4f}  ({len(x_tr)}/{len(x_te)} images)")
    assert test_acc >= 0.95, test_acc

    export_onnx(model, x_te)

    idx, label, eps, ibp_lb, crown_lb, pgd = choose_property(model, x_te, y_te)
    print(f"image index {idx}  label {label}  eps {eps}")
    print(f"margin lower bound  IBP {ibp_lb:.4f}  CROWN {crown_lb:.4f}  (PGD best margin {pgd:.4f})")
    write_vnnlib(x_te[idx], idx, label, eps)
    META_PATH.write_text(
        json.dumps(
            {"image_index": idx, "label": label, "eps": eps, "test_accuracy": round(test_acc, 4)}, indent=2
        )
        + "\n"
    )
    for p in (ONNX_PATH, SPEC_PATH, META_PATH):
        print(f"wrote {p} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
