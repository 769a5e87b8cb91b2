"""Shift families, the conditional VAE, the composed per-image instances and the `veracity shift` commands."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from veracity.cli import app
from veracity.data import load
from veracity.graph import load_onnx
from veracity.shift import SHIFTS, classifiers, cvae
from veracity.shift.compose import ComposeError, bind_image, compose
from veracity.shift.latent import Networks, verify_instance, write_instance
from veracity.spec import load_vnnlib

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    x, y = load("digits", split="test")
    return x[:64], y[:64]


def _mnist_like(n=6, seed=0):
    """Small random 'strokes' on a black 28x28 background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:16] = torch.rand(n, 1, 16, 4, generator=g) * 0.5 + 0.5
    x[:, :, 6:9, 8:20] = 0.9
    return x


# -- shift families ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SHIFTS))
def test_identity_parameter_gives_x_back(name):
    x = _mnist_like()
    s = SHIFTS[name]
    y = s(x, s.identity)
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-5)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shifts_stay_in_range_change_the_image_and_act_per_image(name):
    x = _mnist_like()
    s = SHIFTS[name]
    theta = s.sample(len(x), torch.Generator().manual_seed(1))
    assert torch.all((theta >= s.low) & (theta <= s.high))
    y = s(x, theta)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    for t in (s.low, s.high):
        if t != s.identity:
            assert float((s(x, t) - x).abs().mean()) > 1e-3, f"{name} at {t} leaves the image unchanged"
    one_by_one = torch.cat([s(x[i:i + 1], theta[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(y, one_by_one, atol=1e-6)


def test_shift_semantics():
    x = _mnist_like()
    # a quarter turn maps pixel centres onto pixel centres: exactly a 90 degree rotation (clockwise on screen)
    assert torch.allclose(SHIFTS["rotation"](x, 90.0), torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.all(SHIFTS["brightness"](x, 0.2) >= x)
    assert torch.allclose(SHIFTS["haze"](x, 1.0), torch.full_like(x, 0.7))
    c = SHIFTS["contrast"](x, 0.0)
    assert torch.allclose(c, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), atol=1e-6)
    b = SHIFTS["blur"](x, 1.0)
    assert torch.allclose(b.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-4)  # strokes far from the border
    assert float(b.max()) < float(x.max())
    sh = SHIFTS["shear"](x, 0.3)
    assert not torch.allclose(sh, x, atol=1e-3)
    assert torch.allclose(sh.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.02)  # moves mass, keeps it
    with pytest.raises(ValueError, match="choose from"):
        from veracity.shift import get

        get("snow")


# -- the conditional VAE -------------------------------------------------------------------------------------
def test_cvae_trains_and_exports(digits, tmp_path):
    x, _ = digits
    cfg = cvae.CvaeConfig(image_shape=(1, 8, 8), latent=2, prior_hidden=32, encoder_hidden=32, decoder_hidden=32)
    torch.manual_seed(0)  # the initial weights, independent of the tests run before
    model = cvae.Cvae(cfg)
    losses = cvae.train(model, np.repeat(x, 4, 0), "brightness", epochs=40, batch=32, lr=1e-2, seed=0)
    assert len(losses) == 40 * 8
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    err = cvae.evaluate(model, x, "brightness")
    assert err["reconstruction"] < min(err["identity"], err["prior_mean"])  # the latent carries the shift
    g, p = tmp_path / "g.onnx", tmp_path / "p.onnx"
    cvae.export_onnx(model, g, p)
    xs = torch.from_numpy(x[:1])
    z = torch.randn(1, 2)
    out = ort.InferenceSession(str(g)).run(None, {"x": x[:1], "z": z.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(out, model.decoder(xs, z).numpy(), atol=1e-5)
        mu, lv = ort.InferenceSession(str(p)).run(None, {"x": x[:1]})
        tm, tl = model.prior(xs)
    assert np.allclose(mu, tm.numpy(), atol=1e-5) and np.allclose(lv, tl.numpy(), atol=1e-5)
    assert 0.0 < out.min() and out.max() < 1.0  # sigmoid output
    cvae.save_grid(model, x, "brightness", tmp_path / "grid.png", n_rows=2, n_real=2, n_fake=2)
    assert (tmp_path / "grid.png").stat().st_size > 1000


# -- composed instances --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nets(digits, tmp_path_factory):
    """A briefly trained digits CVAE and classifier as ONNX files."""
    d = tmp_path_factory.mktemp("nets")
    x, y = load("digits", split="train")
    torch.manual_seed(0)
    cfg = cvae.CvaeConfig(image_shape=(1, 8, 8), latent=3, prior_hidden=32, encoder_hidden=32, decoder_hidden=24)
    model = cvae.Cvae(cfg)
    cvae.train(model, x, "brightness", epochs=3, batch=64, lr=3e-3)
    cvae.export_onnx(model, d / "generator.onnx", d / "prior.onnx")
    clf = classifiers.make("mlp", (1, 8, 8))
    classifiers.train(clf, x, y, epochs=3, augment=["brightness"])
    classifiers.export_onnx(clf, d / "classifier.onnx", (1, 8, 8))
    conv = classifiers.make("conv", (1, 8, 8))
    classifiers.train(conv, x, y, epochs=2)
    classifiers.export_onnx(conv, d / "conv.onnx", (1, 8, 8))
    return d


def _written(nets, x, index, delta, out, classifier="classifier.onnx"):
    n = Networks(nets / "generator.onnx", nets / "prior.onnx", nets / classifier)
    mu, _ = n.prior(x)
    label = int(np.argmax(n.pipeline(x, mu.astype(np.float32))))  # a label the classifier gets right
    return n, write_instance(n, x, label, index, delta, out, source="digits")


@pytest.mark.parametrize("classifier", ["classifier.onnx", "conv.onnx"])
def test_written_instance_is_a_valid_vnncomp_instance(nets, digits, tmp_path, classifier):
    x, _ = digits
    n, inst = _written(nets, x[0], 0, 0.13, tmp_path, classifier)
    m = onnx.load(str(inst.onnx_path))
    onnx.checker.check_model(m, full_check=True)
    ins = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    assert len(ins) == 1 and [d.dim_value for d in ins[0].type.tensor_type.shape.dim] == [1, 3]  # z only
    assert "Concat" not in {node.op_type for node in m.graph.node}  # x folded into the first layer's bias
    graph = load_onnx(inst.onnx_path)
    spec = load_vnnlib(inst.vnnlib_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
    mu, sigma = n.prior(x[0])
    box = spec.cases[0].box
    assert np.allclose(box.lower, mu - 0.13 * sigma, rtol=0, atol=1e-15)
    assert np.allclose(box.upper, mu + 0.13 * sigma, rtol=0, atol=1e-15)
    assert len(spec.cases) == 1 and len(spec.cases[0].regions) == 9
    # every region is "Y_j >= Y_label": -Y_label + Y_j >= 0, i.e. (Y_label - Y_j) <= 0
    for r in spec.cases[0].regions:
        assert r.A.shape == (1, 10) and r.A[0, inst.label] == 1.0 and r.A[0].sum() == 0.0 and r.b[0] == 0.0
    assert inst.ort_vs_graph < 1e-5 and inst.ort_vs_pipeline < 1e-5
    sess = ort.InferenceSession(str(inst.onnx_path))
    rng = np.random.default_rng(0)
    for z in rng.uniform(box.lower, box.upper, size=(5, 3)).astype(np.float32):
        a = sess.run(None, {sess.get_inputs()[0].name: z[None]})[0][0]
        with torch.no_grad():
            b = graph(torch.from_numpy(z.astype(np.float64))[None])[0].numpy()
        assert np.abs(a - b).max() < 1e-5
        assert np.abs(a - n.pipeline(x[0], z)).max() < 1e-5


def test_concat_form_is_the_same_problem(nets, digits, tmp_path):
    """One network over concat(flatten(x), z), x pinned by the property: same outputs, box and verdict."""
    x, _ = digits
    n, a = _written(nets, x[2], 2, 0.13, tmp_path / "z")
    b = write_instance(n, x[2], a.label, 2, 0.13, tmp_path / "c", form="concat")
    assert b.onnx_path.name == "shift_concat.onnx" and b.ort_vs_graph < 1e-5 and b.ort_vs_pipeline < 1e-5
    m = onnx.load(str(b.onnx_path))
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 64 + 3]
    box_a = load_vnnlib(a.vnnlib_path).cases[0].box
    box_b = load_vnnlib(b.vnnlib_path).cases[0].box
    assert np.array_equal(box_b.lower[64:], box_a.lower) and np.array_equal(box_b.upper[64:], box_a.upper)
    assert np.array_equal(box_b.lower[:64], box_b.upper[:64])
    sa, sb = ort.InferenceSession(str(a.onnx_path)), ort.InferenceSession(str(b.onnx_path))
    for z in np.random.default_rng(1).uniform(box_a.lower, box_a.upper, size=(5, 3)).astype(np.float32):
        ya = sa.run(None, {sa.get_inputs()[0].name: z[None]})[0]
        yb = sb.run(None, {sb.get_inputs()[0].name: np.concatenate([x[2].reshape(-1), z])[None]})[0]
        assert np.abs(ya - yb).max() < 1e-5
    ra = verify_instance(a.onnx_path, a.vnnlib_path, "driver", timeout=20)
    rb = verify_instance(b.onnx_path, b.vnnlib_path, "driver", timeout=20)
    assert {ra.status, rb.status} != {"sat", "unsat"}


def test_misclassified_images_are_not_written(nets, digits, tmp_path):
    x, _ = digits
    n = Networks(nets / "generator.onnx", nets / "prior.onnx", nets / "classifier.onnx")
    mu, _ = n.prior(x[1])
    wrong = (int(np.argmax(n.pipeline(x[1], mu.astype(np.float32)))) + 1) % 10
    inst = write_instance(n, x[1], wrong, 1, 0.13, tmp_path)
    assert inst.onnx_path is None and not (tmp_path / "onnx").exists()


def test_verdicts_hold_under_dense_sampling(nets, digits, tmp_path):
    """unsat: no sampled latent changes the label; sat: the witness is in the box and changes it."""
    x, _ = digits
    seen = set()
    for i in range(3):
        for delta in (0.13, 50.0):
            n, inst = _written(nets, x[i], i, delta, tmp_path / f"{i}_{delta}")
            if inst.onnx_path is None:
                continue
            res = verify_instance(inst.onnx_path, inst.vnnlib_path, "crown", timeout=20)
            seen.add(res.status)
            box = load_vnnlib(inst.vnnlib_path).cases[0].box
            sess = ort.InferenceSession(str(inst.onnx_path))
            name = sess.get_inputs()[0].name
            if res.status == "unsat":
                z = np.random.default_rng(i).uniform(box.lower, box.upper, size=(1000, 3)).astype(np.float32)
                y = np.concatenate([sess.run(None, {name: zi[None]})[0] for zi in z])
                others = np.delete(y, inst.label, axis=1)
                assert np.all(y[:, inst.label] > others.max(1))
            elif res.status == "sat":
                assert box.contains(res.x, 1e-6)
                y = sess.run(None, {name: res.x.astype(np.float32)[None]})[0][0]
                assert np.delete(y, inst.label).max() >= y[inst.label]
    assert seen == {"unsat", "sat"}  # small boxes are proven, huge ones broken


def test_compose_rejects_mismatched_networks(nets, tmp_path):
    g = onnx.load(str(nets / "generator.onnx"))
    with pytest.raises(ComposeError, match="expects shape"):
        bind_image(g, np.zeros(10, np.float32))
    bound = bind_image(g, np.zeros(64, np.float32))
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])
    small = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "c", [x],
                                                          [y]), opset_imports=[onnx.helper.make_opsetid("", 13)])
    with pytest.raises(ComposeError, match="64 values"):
        compose(bound, small)
    with pytest.raises(ComposeError, match="two inputs"):
        bind_image(small, np.zeros(5, np.float32))


# -- the commands --------------------------------------------------------------------------------------------
def test_cli_train_classifier_verify_end_to_end(tmp_path):
    from veracity.verify.runner import read_instances

    gen = tmp_path / "gen"
    r = runner.invoke(app, ["shift", "train", "--shift", "haze", "--dataset", "digits", "--out", str(gen),
                            "--epochs", "2", "--latent", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    for f in ("generator.onnx", "prior.onnx", "shift_grid.png", "meta.json", "cvae.pt"):
        assert (gen / f).is_file(), f
    meta = json.loads((gen / "meta.json").read_text())
    assert set(meta["test_mean_abs_error"]) == {"reconstruction", "prior_mean", "identity"}
    clf = tmp_path / "clf.onnx"
    r = runner.invoke(app, ["shift", "classifier", "--dataset", "digits", "--out", str(clf), "--epochs", "3",
                            "--augment", "haze", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and clf.is_file()
    out = tmp_path / "inst"
    r = runner.invoke(app, ["shift", "verify", "--generator", str(gen / "generator.onnx"), "--prior",
                            str(gen / "prior.onnx"), "--classifier", str(clf), "--dataset", "digits", "--images",
                            "0:4", "--out", str(out), "--timeout", "10"])  # default method: cegar
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and sum(summary["counts"].values()) == 4
    lines = (out / "verification.csv").read_text().strip().splitlines()
    assert len(lines) == 5
    if summary["written"]:
        rows = read_instances(out)
        assert len(rows) == summary["written"] and all(i.timeout == 10 for i in rows)
        assert all((out / i.onnx).is_file() and (out / i.vnnlib).is_file() for i in rows)


@pytest.mark.parametrize("args, needle", [
    (["train", "--shift", "snow", "--dataset", "digits", "--out", "{tmp}"], "snow"),
    (["train", "--shift", "blur", "--out", "{tmp}"], "--data-dir"),
    (["train", "--shift", "blur", "--data-dir", "{tmp}/missing", "--out", "{tmp}"], "missing"),
    (["train", "--shift", "blur", "--dataset", "digits", "--epochs", "0", "--out", "{tmp}"], "--epochs"),
    (["classifier", "--arch", "resnet", "--dataset", "digits", "--out", "{tmp}/c.onnx"], "resnet"),
    (["classifier", "--augment", "rain", "--dataset", "digits", "--out", "{tmp}/c.onnx"], "rain"),
    (["verify", "--generator", "{tmp}/g.onnx", "--prior", "{tmp}/p.onnx", "--classifier", "{tmp}/c.onnx",
      "--dataset", "digits", "--out", "{tmp}"], "g.onnx"),
    (["verify", "--generator", "{nets}/generator.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--dataset", "digits", "--out", "{tmp}", "--delta", "0"], "--delta"),
    (["verify", "--generator", "{nets}/generator.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--dataset", "digits", "--out", "{tmp}", "--images", "5:2"], "--images"),
    (["verify", "--generator", "{nets}/generator.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--dataset", "digits", "--out", "{tmp}", "--images", "0:99999"], "test set has"),
    (["verify", "--generator", "{nets}/generator.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--dataset", "digits", "--out", "{tmp}", "--method", "magic"], "magic"),
    (["verify", "--generator", "{nets}/classifier.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--dataset", "digits", "--out", "{tmp}"], "two inputs"),
    (["verify", "--generator", "{nets}/generator.onnx", "--prior", "{nets}/prior.onnx", "--classifier",
      "{nets}/classifier.onnx", "--data-dir", "{tmp}", "--out", "{tmp}"], "cannot read mnist"),
])
def test_cli_errors_are_one_clean_line(args, needle, tmp_path, nets):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{nets}", str(nets)) for a in args]
    r = runner.invoke(app, ["shift", *args])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert r.output.strip().startswith("error:")
