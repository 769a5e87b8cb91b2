"""The benchmark runner: instances.csv in, results CSV / witnesses / summary out (`veracity run`, `veracity report`)."""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from veracity import examples
from veracity.cli import app
from veracity.spec import load_vnnlib
from veracity.verify import runner as rn

cli = CliRunner()
N_IN, N_OUT = 64, 10
LO, HI = 0.2, 0.3  # the input box of the sat property


def _easy_spec() -> str:
    """Trivially sat: every output satisfies Y_0 >= -1e9 over a small box."""
    lines = [f"(declare-const X_{i} Real)" for i in range(N_IN)] + [f"(declare-const Y_{i} Real)" for i in range(N_OUT)]
    for i in range(N_IN):
        lines += [f"(assert (>= X_{i} {LO}))", f"(assert (<= X_{i} {HI}))"]
    lines.append("(assert (>= Y_0 -1e9))")
    return "\n".join(lines) + "\n"


INSTANCES = [
    ("onnx/net.onnx", "vnnlib/robust.vnnlib", "30"),  # unsat (CROWN proves it)
    ("onnx/net.onnx", "vnnlib/easy.vnnlib.gz", "30"),  # sat (any point is a counterexample)
    ("onnx/missing.onnx", "vnnlib/robust.vnnlib", "5"),  # error: no such file
]
EXPECTED = {"robust": "unsat", "easy": "sat", "missing": "error"}
WITNESS = "net__easy.counterexample"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    (d / "onnx").mkdir()
    (d / "vnnlib").mkdir()
    shutil.copy(examples.path(examples.DIGITS_ONNX), d / "onnx" / "net.onnx")
    shutil.copy(examples.path(examples.DIGITS_SPEC), d / "vnnlib" / "robust.vnnlib")
    (d / "vnnlib" / "easy.vnnlib.gz").write_bytes(gzip.compress(_easy_spec().encode()))
    (d / "instances.csv").write_text("".join(",".join(r) + "\n" for r in INSTANCES))
    # majority verdicts, with one deliberate contradiction: the sat property is "expected" unsat
    (d / "expected.csv").write_text(
        "onnx,vnnlib,majority,disputed\n"
        "onnx/net.onnx,vnnlib/robust.vnnlib,unsat,no\n"
        "onnx/net.onnx,vnnlib/easy.vnnlib.gz,unsat,no\n"
        "onnx/missing.onnx,vnnlib/robust.vnnlib,sat,no\n"
    )
    return d


def _name(row) -> str:
    return "missing" if "missing" in row.onnx else ("easy" if "easy" in row.vnnlib else "robust")


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def inline_rows(bench):
    """The three instances run in this process (workers=0), the reference for the other modes."""
    return list(rn.run_instances(rn.read_instances(bench), workers=0))


# ------------------------------------------------------------------------------------------------ reading input


def test_read_instances_keeps_paths_as_written(bench):
    insts = rn.read_instances(bench)
    assert [(i.onnx, i.vnnlib, i.timeout) for i in insts] == [(a, b, float(t)) for a, b, t in INSTANCES]
    assert insts[0].onnx_path == bench.resolve() / "onnx" / "net.onnx"
    assert [i.line for i in insts] == [1, 2, 3]
    assert rn.read_instances(bench / "instances.csv") == insts


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("a.onnx,b.vnnlib,10\na.onnx,b.vnnlib\n", 2, "3 fields"),
        ("a.onnx,b.vnnlib,ten\n", 1, "not a number"),
        ("\na.onnx,b.vnnlib,-1\n", 2, "positive"),
        ("a.onnx,,10\n", 1, "empty"),
    ],
)
def test_malformed_instances_name_file_and_line(tmp_path, text, line, what):
    (tmp_path / "instances.csv").write_text(text)
    with pytest.raises(rn.BenchError, match=rf"instances\.csv:{line}: .*{what}"):
        rn.read_instances(tmp_path)


def test_missing_benchmark(tmp_path):
    with pytest.raises(rn.BenchError, match="no such benchmark"):
        rn.read_instances(tmp_path / "nope")
    with pytest.raises(rn.BenchError, match="no instances.csv"):
        rn.read_instances(tmp_path)


def test_witness_name_strips_extensions():
    assert rn.witness_name("onnx/a.b.onnx.gz", "vnnlib/prop_1.vnnlib.gz") == "a.b__prop_1.counterexample"
    assert rn.witness_name("n.onnx", "./p.vnnlib") == "n__p.counterexample"


# ------------------------------------------------------------------------------------------------ running


def test_inline_run_statuses_and_summary(bench, inline_rows):
    got = {_name(r): r for r in inline_rows}
    assert {k: r.result for k, r in got.items()} == EXPECTED
    assert got["robust"].method and got["easy"].method
    assert "no such ONNX file" in got["missing"].message
    assert got["easy"].witness.startswith("sat\n") and not got["robust"].witness
    assert all(0 <= r.time_s < 30 for r in inline_rows)
    s = rn.summarise(inline_rows, rn.read_expected(bench / "expected.csv"))
    assert (s.n, s.decided, s.counts["unsat"], s.counts["sat"], s.counts["error"]) == (3, 2, 1, 1, 1)
    assert s.total_s == pytest.approx(sum(r.time_s for r in inline_rows))
    assert s.median_s == pytest.approx(sorted(r.time_s for r in inline_rows)[1])
    assert (s.expected_decided, s.agreed) == (3, 1)
    assert [(_name(r), exp) for r, exp in s.contradictions] == [("easy", "unsat")]  # error vs sat is no contradiction


def test_witness_lies_in_the_box(bench, inline_rows, tmp_path):
    row = next(r for r in inline_rows if r.result == "sat")
    p = rn.write_witness(tmp_path / "w", row)
    assert p.name == WITNESS
    text = p.read_text()
    assert text.startswith("sat\n")
    xs = {int(i): float(v) for i, v in re.findall(r"\(X_(\d+) ([^)\s]+)\)", text)}
    ys = re.findall(r"\(Y_(\d+) ([^)\s]+)\)", text)
    assert sorted(xs) == list(range(N_IN)) and len(ys) == N_OUT
    box = load_vnnlib(bench / "vnnlib" / "easy.vnnlib.gz").cases[0].box
    x = np.array([xs[i] for i in range(N_IN)])
    assert np.all(x >= box.lower) and np.all(x <= box.upper)
    assert np.all(x >= LO) and np.all(x <= HI)


def test_results_csv_round_trip_and_append(tmp_path, inline_rows):
    p = tmp_path / "r.csv"
    with rn.ResultsWriter(p) as w:
        for r in inline_rows:
            w.append(r)
    with rn.ResultsWriter(p) as w:  # continued: no second header
        w.append(inline_rows[0])
    lines = p.read_text().splitlines()
    assert lines[0] == ",".join(rn.FIELDS) and sum(line.startswith("onnx,") for line in lines) == 1
    back = rn.read_results(p)
    assert [(r.onnx, r.vnnlib, r.result, r.method) for r in back] == [
        (r.onnx, r.vnnlib, r.result, r.method) for r in [*inline_rows, inline_rows[0]]
    ]
    assert len(rn.latest(back)) == 3
    # a row cut short by a crash does not glue onto the next one
    with p.open("a") as f:
        f.write("onnx/x.onnx,vnnlib/y.vnnlib,uns")
    with rn.ResultsWriter(p) as w:
        w.append(inline_rows[1])
    assert p.read_text().splitlines()[-1].startswith("onnx/net.onnx,vnnlib/easy.vnnlib.gz,sat,")
    with pytest.raises(rn.BenchError, match=r"r\.csv:6: expected 7 fields"):
        rn.read_results(p)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(rn.BenchError, match="not a results file"):
        rn.ResultsWriter(bad)


def test_a_hanging_load_times_out(tmp_path):
    """Loading runs under the instance's alarm too: a vnnlib that never arrives (a FIFO) is a timeout."""
    shutil.copy(examples.path(examples.DIGITS_ONNX), tmp_path / "net.onnx")
    os.mkfifo(tmp_path / "p.vnnlib")
    t = time.monotonic()
    row = rn.run_one(rn.Instance("net.onnx", "p.vnnlib", 0.5, tmp_path))
    assert row.result == "timeout" and row.time_s < 0.5 * 1.05 + 0.2 and time.monotonic() - t < 2


class FakeBackend:
    """Workers that answer instantly, hang (never answer) or die, by the instance's name."""

    def __init__(self):
        self.started, self.killed, self.inbox, self.closed = [], [], [], None

    def start(self, i):
        self.started.append(i)
        self.inbox.append((i, "ready", None))

    def send(self, i, inst, scale):
        if inst.onnx == "ok":
            self.inbox.append((i, "row", rn.Row(inst.onnx, inst.vnnlib, "unsat", 0.01, "crown", inst.timeout * scale)))
        elif inst.onnx == "dies":
            self.inbox.append((i, "died", "worker process died (exit code -9)"))

    def poll(self, timeout):
        out, self.inbox = self.inbox, []
        if not out:
            time.sleep(timeout)
        return out

    def kill(self, i):
        self.killed.append(i)

    def close(self, graceful):
        self.closed = graceful


def test_scheduler_kills_a_worker_past_the_hard_limit(monkeypatch):
    monkeypatch.setattr(rn, "HARD_SLACK_S", 0.2)
    insts = [rn.Instance(n, f"p{k}.vnnlib", 0.1) for k, n in enumerate(["ok", "hangs", "dies", "ok"])]
    be = FakeBackend()
    t = time.monotonic()
    rows = list(rn._schedule(be, 2, insts, 1.0))
    assert time.monotonic() - t < 3
    got = {r.vnnlib: r for r in rows}
    assert [got[f"p{k}.vnnlib"].result for k in range(4)] == ["unsat", "timeout", "error", "unsat"]
    assert "killed" in got["p1.vnnlib"].message and "died" in got["p2.vnnlib"].message
    assert got["p1.vnnlib"].time_s == pytest.approx(rn.hard_limit(0.1), abs=0.6)
    assert len(be.killed) == 1 and len(be.started) == 2 + 2  # a fresh worker after the kill and the death
    assert be.closed is True


def test_two_worker_processes_give_the_same_results(bench, inline_rows, tmp_path):
    os.mkfifo(tmp_path / "hang.vnnlib")
    insts = [*rn.read_instances(bench), rn.Instance("onnx/net.onnx", str(tmp_path / "hang.vnnlib"), 1.0, bench)]
    rows = list(rn.run_instances(insts, workers=2))
    assert len(rows) == 4
    by_key = {r.key: r.result for r in rows}
    assert {r.key: r.result for r in inline_rows}.items() <= by_key.items()
    assert by_key[insts[-1].key] == "timeout"
    assert all(r.time_s <= rn.hard_limit(float(r.timeout_s)) for r in rows)


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_run_resume_and_report(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli.invoke(app, ["run", str(bench), "--witness-dir", "w"])  # default: one worker process, results.csv
    assert r.exit_code == 0, r.output
    rows = _csv_rows(tmp_path / "results.csv")
    assert set(rn.FIELDS) <= set(rows[0])
    assert [(x["onnx"], x["vnnlib"]) for x in rows] == [(a, b) for a, b, _ in INSTANCES]
    assert {x["vnnlib"]: x["result"] for x in rows if "net" in x["onnx"]} == {
        "vnnlib/robust.vnnlib": "unsat", "vnnlib/easy.vnnlib.gz": "sat"}
    assert rows[2]["result"] == "error" and "missing.onnx" in r.output  # the error is printed too
    assert "CONTRADICTION" in r.output and "easy.vnnlib.gz: sat, expected unsat" in r.output
    assert "contradictions" in r.output
    assert (tmp_path / "w" / WITNESS).read_text().startswith("sat\n")
    assert sorted(os.listdir(tmp_path / "w")) == [WITNESS]

    size = (tmp_path / "results.csv").stat().st_size
    r = cli.invoke(app, ["run", str(bench), "--resume", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "results.csv").stat().st_size == size  # nothing run again
    assert "3 earlier" in r.output

    r = cli.invoke(app, ["run", str(bench / "instances.csv"), "--results", "one.csv", "--limit", "1", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert [x["result"] for x in _csv_rows(tmp_path / "one.csv")] == ["unsat"]

    r = cli.invoke(app, ["report", "results.csv", "one.csv", "--expected", str(bench), "--plot", "cactus.png"])
    assert r.exit_code == 0, r.output
    assert "results" in r.output and "one" in r.output and "CONTRADICTION" in r.output
    png = (tmp_path / "cactus.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "{tmp}/nope"], "no such benchmark"),
        (["run", "{tmp}/badrow"], "instances.csv:2:"),
        (["run", "{bench}", "--timeout-scale", "0"], "--timeout-scale"),
        (["run", "{bench}", "--results", "{tmp}/badrow/instances.csv"], "lacks column"),
        (["report", "{tmp}/nope.csv"], "no such results file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(bench, tmp_path, args, message):
    (tmp_path / "badrow").mkdir()
    (tmp_path / "badrow" / "instances.csv").write_text("a.onnx,b.vnnlib,1\na.onnx,b.vnnlib,x\n")
    r = cli.invoke(app, [a.format(tmp=tmp_path, bench=bench) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_ctrl_c_keeps_finished_rows_and_exits_130(bench, tmp_path, monkeypatch):
    def interrupted(instances, **kw):
        inst = instances[0]
        yield rn.Row(inst.onnx, inst.vnnlib, "unsat", 0.5, "crown", inst.timeout)
        raise KeyboardInterrupt

    monkeypatch.setattr(rn, "run_instances", interrupted)
    r = cli.invoke(app, ["run", str(bench), "--results", str(tmp_path / "r.csv")])
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output and "2 instance(s) left" in r.output
    assert [x["result"] for x in _csv_rows(tmp_path / "r.csv")] == ["unsat"]


def test_ray_local(bench, inline_rows, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray.csv"
    r = cli.invoke(app, ["run", str(bench), "--ray", "local", "--workers", "2", "--results", str(out)])
    assert r.exit_code == 0, r.output
    got = {(x["onnx"], x["vnnlib"]): x["result"] for x in _csv_rows(out)}
    assert got == {(x.onnx, x.vnnlib): x.result for x in inline_rows}
