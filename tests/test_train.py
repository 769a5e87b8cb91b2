"""Certified training: losses bound the attacked loss, tight lines vs IBP, smoothing gradients, export, CLI."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.func import functional_call
from typer.testing import CliRunner

from veracity.bounds import crown, ibp
from veracity.cli import app
from veracity.graph import load_onnx
from veracity.train.attack import pgd
from veracity.train.certify import certify_dataset
from veracity.train.export import to_onnx
from veracity.train.loop import Config, Objective, train
from veracity.train.losses import DIFFERENTIABLE, ball, certified_loss, margin_spec, margins
from veracity.train.models import build_model, init_ramps, live_graph, ramps, set_eta
from veracity.train.schedule import Schedule, ramp
from veracity.train.smoothing import pgpe_grad, rgs_grad

SHAPE = (1, 8, 8)


def _digits(n=64):
    from veracity.data import load

    x, y = load("digits", split="test")
    return torch.from_numpy(x[:n]), torch.from_numpy(y[:n])


def _model(name="mlp", act="relu", seed=0, shape=SHAPE):
    torch.manual_seed(seed)
    m = build_model(name, shape, 10, act, hidden=(32, 32))
    if act == "paramramp":
        x, _ = _digits(200)
        init_ramps(m, x)
        set_eta(m, 0.01)
    return m


@pytest.mark.parametrize("act", ["relu", "leaky", "paramramp"])
def test_every_certified_loss_bounds_the_attacked_loss(act):
    x, y = _digits(24)
    eps = 0.05
    for name in ("mlp", "cnn-small"):
        m = _model(name, act)
        for method in DIFFERENTIABLE:
            if name == "cnn-small" and method in ("crown", "crown-lbp", "lbp"):
                continue  # the costly ones on the MLP only
            robust, low = certified_loss(live_graph(m, SHAPE), x, y, eps, method, reduction="none")
            xa = pgd(m, x, y, eps, steps=30, restarts=2)
            lo, hi = ball(x, eps)
            assert bool(((xa >= lo) & (xa <= hi)).all())
            attacked = torch.nn.functional.cross_entropy(m(xa), y, reduction="none")
            assert bool((robust >= attacked - 1e-4).all()), (name, method)
            assert robust.requires_grad and low.shape == (24, 9)


@pytest.mark.parametrize("act", ["relu", "paramramp"])
def test_tight_lines_are_never_looser_than_ibp_in_training_mode(act):
    x, y = _digits(32)
    m = _model("mlp", act, seed=1)
    g = live_graph(m, SHAPE)
    lo, hi = ball(x, 0.03)
    lo, hi = lo.flatten(1), hi.flatten(1)
    C = margin_spec(y, 10)
    base = margins(g, lo, hi, C, "ibp")
    for method in ("crown-ibp", "crown", "lbp", "crown-lbp"):
        low = margins(g, lo, hi, C, method)
        assert low.requires_grad
        assert bool((low >= base - 1e-4).all()), method
    # and never below the plain interval of the output box
    box = ibp(g, lo, hi)[g.output_name]
    plain = (C.clamp(min=0) @ box[0][..., None] + C.clamp(max=0) @ box[1][..., None]).squeeze(-1)
    assert bool((crown(g, lo, hi, C, pre=ibp(g, lo, hi))[0] >= plain - 1e-4).all())


def test_live_graph_shares_parameters_and_gradients_reach_them():
    m = _model("cnn-small", "paramramp")
    g = live_graph(m, SHAPE)
    conv = next(n for n in g.nodes.values() if n.op == "conv")
    assert conv.params["weight"] is m[0].weight
    x, y = _digits(8)
    loss, _ = certified_loss(g, x, y, 0.05, "crown-ibp")
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.parameters())


@pytest.mark.parametrize("act", ["relu", "paramramp"])
def test_live_graph_bounds_contain_sampled_outputs_in_float64(act):
    m = _model("cnn-small", act, seed=2).double()
    g = live_graph(m, SHAPE)
    x, y = _digits(6)
    x = x.double()
    lo, hi = ball(x, 0.05)
    C = margin_spec(y, 10, torch.float64)
    with torch.no_grad():
        lows = {k: margins(g, lo.flatten(1), hi.flatten(1), C, k) for k in DIFFERENTIABLE}
        for _ in range(20):
            z = lo + torch.rand_like(lo) * (hi - lo)
            val = (C @ m(z)[..., None]).squeeze(-1)
            for k, low in lows.items():
                assert bool((val >= low - 1e-9).all()), k


def _smooth_fn():
    torch.manual_seed(0)
    A = torch.randn(30, 30, dtype=torch.float64)
    A = A @ A.T / 30 + torch.eye(30, dtype=torch.float64)

    def f(p):
        w = p["w"]
        return 0.5 * w @ A @ w + torch.sin(3 * w).sum() + (p["b"] ** 2).sum()

    params = {"w": torch.randn(30, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float64)}
    w, b = (params[k].clone().requires_grad_(True) for k in ("w", "b"))
    f({"w": w, "b": b}).backward()
    return f, params, torch.cat([w.grad, b.grad])


@pytest.mark.parametrize("estimator,n", [(pgpe_grad, 3000), (rgs_grad, 60)])
def test_smoothing_gradients_point_along_the_true_gradient(estimator, n):
    f, params, true = _smooth_fn()
    state = {}
    g, _ = estimator(f, params, 0.01, n, torch.Generator().manual_seed(0), chunk=1000, state=state)
    est = torch.cat([g["w"], g["b"]])
    assert torch.nn.functional.cosine_similarity(est, true, 0) > 0.9
    assert state.get("vmap", True)  # the population ran vectorised
    if estimator is pgpe_grad:  # few samples: much noisier
        g, _ = estimator(f, params, 0.01, 2, torch.Generator().manual_seed(0))
        assert torch.nn.functional.cosine_similarity(torch.cat([g["w"], g["b"]]), true, 0) < 0.9


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_smoothing_runs_vectorised_on_certified_losses(method):
    m = _model("mlp", "paramramp")
    obj = Objective(m, SHAPE, 10)
    x, y = _digits(16)
    params = dict(obj.named_parameters())
    for est in (pgpe_grad, rgs_grad):
        state = {}
        g, v = est(lambda p: functional_call(obj, p, (x, y, 0.05, 0.5, method, "tight", 0.5)), params, 0.01, 4,
                   state=state)
        assert state.get("vmap", True) and set(g) == set(params) and torch.isfinite(v)


def test_export_matches_torch_veracity_and_onnxruntime(tmp_path):
    x, _ = _digits(16)
    for act, eta in (("relu", 0.0), ("paramramp", 0.0), ("paramramp", 0.05), ("leaky", 0.0)):
        m = _model("cnn-small", act)
        set_eta(m, eta)
        p = tmp_path / f"{act}{eta}.onnx"
        to_onnx(m, SHAPE, p)
        with torch.no_grad():
            ref = m(x).double()
        g = load_onnx(p)
        assert "paramramp" not in g.op_counts()
        assert torch.allclose(g.forward(x.double()), ref, atol=1e-4)
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        assert np.allclose(got, ref.numpy(), atol=1e-4)
        # the exported ramp keeps interval bounds exact: IBP of the ONNX graph = IBP with the ramp op
        lo, hi = ball(x.double(), 0.05)
        C = margin_spec(torch.zeros(16, dtype=torch.long), 10, torch.float64)
        with torch.no_grad():
            exported = margins(g, lo.flatten(1), hi.flatten(1), C, "ibp")
            live = margins(live_graph(m.double(), SHAPE), lo.flatten(1), hi.flatten(1), C, "ibp")
        assert torch.allclose(exported, live, atol=1e-9), act


def test_ramps_start_at_mean_activation_and_stay_inside_their_relaxation():
    m = build_model("mlp", SHAPE, 10, "paramramp", hidden=(16,))
    x, _ = _digits(100)
    init_ramps(m, x)
    r = ramps(m)[0].r
    with torch.no_grad():
        pre = m[1](m[0](x))
    assert torch.allclose(r, torch.relu(pre).mean(0).clamp(min=1e-2))


def test_schedules():
    assert ramp(0.5, 1.0, 2.0) == 0.0 and ramp(4.0, 1.0, 2.0) == 1.0
    assert 0 < ramp(1.5, 1.0, 2.0, "smooth") < ramp(1.5, 1.0, 2.0) < 1
    s = Schedule(eps=0.3, warmup=1, ramp=2, epochs=4)
    v0, v1, v2 = s.values(0.5), s.values(2.0), s.values(3.5)
    assert v0["eps"] == 0 and v0["kappa"] == 1 and v2["eps"] == pytest.approx(0.3)
    assert v0["eps"] < v1["eps"] < v2["eps"] and v1["beta"] == pytest.approx(0.5) and v2["eta"] == 0
    assert v2["lr"] < v0["lr"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "m.onnx"
    cfg = Config(data="digits", model="mlp", hidden=(64, 64), loss="ibp", eps=0.02, epochs=12, warmup=2, ramp=4,
                 batch=64, lr=2e-3, kappa_end=0.5, val_n=100)
    summary = train(cfg, out, progress=False, log=lambda s: None)
    return out, summary


def test_training_writes_its_files_and_learns(trained):
    out, summary = trained
    for suffix in (".onnx", ".ckpt", ".json", ".csv", ".png"):
        assert out.with_suffix(suffix).exists(), suffix
    log = json.loads(out.with_suffix(".json").read_text())["log"]
    assert len(log) == 12 and log[-1]["val_clean"] > 0.7


def test_certified_images_are_never_broken_by_pgd(trained):
    out, _ = trained
    g = load_onnx(out)
    from veracity.data import load

    x, y = load("digits", split="test")
    res = certify_dataset(g, x[:150], y[:150], 0.02, "crown", pgd_steps=30)
    assert res["certified"] > 0.3
    assert res["contradictions"] == 0
    assert res["certified"] <= res["pgd"] <= res["clean"]
    ibp_res = certify_dataset(g, x[:150], y[:150], 0.02, "ibp", pgd_steps=5)
    assert ibp_res["certified"] <= res["certified"]


def test_cli_train_resume_and_certify(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.onnx"
    args = ["train", "--data", "digits", "--model", "mlp", "--loss", "crown-ibp", "--act", "paramramp", "--eps",
            "0.02", "--warmup", "0.5", "--ramp", "0.5", "--batch", "256", "--out", str(out), "--quiet"]
    r = runner.invoke(app, [*args, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    first = json.loads(out.with_suffix(".json").read_text())["steps"]
    r = runner.invoke(app, [*args, "--epochs", "2", "--resume"])
    assert r.exit_code == 0 and "resumed" in r.output, r.output
    assert json.loads(out.with_suffix(".json").read_text())["steps"] == 2 * first
    r = runner.invoke(app, ["certify-dataset", str(out), "--data", "digits", "--eps", "0.01", "--n", "40",
                            "--method", "ibp", "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["n"] == 40 and res["contradictions"] == 0


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--data", "mnist", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "needs --data-dir" in r.output
    r = runner.invoke(app, ["train", "--eps", "-1", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "m.txt")])
    assert r.exit_code == 2
    r = runner.invoke(app, ["certify-dataset", str(tmp_path / "none.onnx")])
    assert r.exit_code == 2


def test_lp_loss_is_tighter_than_crown_and_trains_through_pgpe():
    x, y = _digits(2)
    torch.manual_seed(3)
    m = build_model("mlp", SHAPE, 10, "relu", hidden=(12, 12))
    g = live_graph(m, SHAPE)
    lo, hi = ball(x, 0.03)
    C = margin_spec(y, 10)
    with torch.no_grad():
        low_lp = margins(g, lo.flatten(1), hi.flatten(1), C, "lp")
        low_crown = margins(g, lo.flatten(1), hi.flatten(1), C, "crown")
    assert bool((low_lp >= low_crown - 1e-4).all())
    obj = Objective(m, SHAPE, 10)
    state = {}
    grads, v = pgpe_grad(lambda p: functional_call(obj, p, (x, y, 0.03, 0.0, "lp", "tight", 1.0)),
                         dict(obj.named_parameters()), 0.01, 2, state=state)
    assert not state["vmap"] and all(torch.isfinite(t).all() for t in grads.values()) and torch.isfinite(v)
    with pytest.raises(ValueError, match="pgpe"):
        Config(loss="lp").check()
