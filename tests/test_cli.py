"""The command line: demo, bound --json, verify, and errors a person can act on (exit code 2)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from veracity import examples
from veracity.bounds import bound_spec
from veracity.cli import app
from veracity.graph import load_onnx
from veracity.spec import load_vnnlib

runner = CliRunner()
MODEL = str(examples.path(examples.DIGITS_ONNX))
SPEC = str(examples.path(examples.DIGITS_SPEC))


def test_demo_proves_the_bundled_property():
    r = runner.invoke(app, ["demo"])
    assert r.exit_code == 0, r.output
    assert "unsat" in r.output and "crown" in r.output


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp", "lbp", "crown-lbp", "alpha"])
def test_bound_json_matches_the_library(method):
    r = runner.invoke(app, ["bound", MODEL, SPEC, "--method", method, "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert set(obj) == {"method", "time_s", "regions"} and obj["method"] == method
    assert len(obj["regions"]) == 1 and len(obj["regions"][0]["lower"]) == 10
    box = load_vnnlib(SPEC).cases[0].box
    lo, hi = bound_spec(load_onnx(MODEL), box.lower[None], box.upper[None], method=method)
    np.testing.assert_allclose(obj["regions"][0]["lower"], lo[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(obj["regions"][0]["upper"], hi[0].numpy(), rtol=1e-6, atol=1e-6)
    assert all(a <= b for a, b in zip(obj["regions"][0]["lower"], obj["regions"][0]["upper"], strict=True))


def test_bound_without_spec_uses_the_unit_box():
    r = runner.invoke(app, ["bound", MODEL, "--method", "ibp"])
    assert r.exit_code == 0 and "Y_9" in r.output


def test_verify_writes_vnncomp_result(tmp_path):
    res = tmp_path / "out.txt"
    r = runner.invoke(app, ["verify", MODEL, SPEC, "--result", str(res)])
    assert r.exit_code == 0, r.output
    assert res.read_text() == "unsat\n"


def test_verify_sat_witness_is_real(tmp_path):
    text = examples.path(examples.DIGITS_SPEC).read_text()
    spec = load_vnnlib(SPEC)
    c = spec.cases[0].box.center
    # a large ball: the label surely changes somewhere in it
    lines = [ln for ln in text.splitlines() if not ln.startswith("(assert (<=") and not ln.startswith("(assert (>=")]
    lines += [f"(assert (>= X_{i} {max(0.0, v - 0.5)}))\n(assert (<= X_{i} {min(1.0, v + 0.5)}))" for i, v in
              enumerate(c)]
    p = tmp_path / "big.vnnlib"
    p.write_text("\n".join(lines))
    res = tmp_path / "out.txt"
    r = runner.invoke(app, ["verify", MODEL, str(p), "--result", str(res)])
    assert r.exit_code == 0, r.output
    out = res.read_text()
    assert out.startswith("sat\n")
    vals = dict((k, float(v)) for k, v in (t.strip("() \n").split() for t in out.split("\n", 1)[1].split(")")
                                           if t.strip("() \n")))
    x = np.array([vals[f"X_{i}"] for i in range(64)])
    y = load_onnx(MODEL)(__import__("torch").from_numpy(x)[None]).numpy()[0]
    assert load_vnnlib(p).violated_by(x, y)


def test_missing_file_exit_2(tmp_path):
    r = runner.invoke(app, ["verify", str(tmp_path / "nope.onnx"), SPEC])
    assert r.exit_code == 2 and "nope.onnx" in r.output


def test_vnnlib_typo_reports_line_and_column(tmp_path):
    p = tmp_path / "typo.vnnlib"
    p.write_text(examples.path(examples.DIGITS_SPEC).read_text().replace("(assert (<= X_3 ", "(assert (=< X_3 ", 1))
    r = runner.invoke(app, ["verify", MODEL, str(p)])
    assert r.exit_code == 2
    assert "typo.vnnlib:" in r.output and "=<" in r.output


def test_unsupported_op_names_op_and_node(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    node = onnx.helper.make_node("Softmax", ["x"], ["y"], name="my_softmax")
    p = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y])), p)
    r = runner.invoke(app, ["bound", str(p)])
    assert r.exit_code == 2
    assert "Softmax" in r.output and "my_softmax" in r.output and "Relu" in r.output


def test_spec_model_size_mismatch(tmp_path):
    p = tmp_path / "small.vnnlib"
    p.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n(assert (>= X_0 0))\n"
                 "(assert (<= Y_0 0))\n")
    r = runner.invoke(app, ["verify", MODEL, str(p)])
    assert r.exit_code == 2 and "1" in r.output


def test_unknown_method_exit_2():
    r = runner.invoke(app, ["verify", MODEL, SPEC, "--methods", "ibp,magic"])
    assert r.exit_code == 2 and "magic" in r.output
