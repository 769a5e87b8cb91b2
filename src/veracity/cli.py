"""The ``veracity`` command: a thin layer over the library."""

from __future__ import annotations

import gzip
import importlib
import json
import pkgutil
import sys
import time
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from veracity import commands, examples
from veracity.bounds import METHODS, bound_spec
from veracity.graph import OnnxImportError, UnsupportedError, load_onnx
from veracity.graph.onnx_import import resolve_path
from veracity.spec import Box, Case, Spec, VnnlibError, load_vnnlib
from veracity.verify.driver import DEFAULT_METHODS, verify

app = typer.Typer(
    help="Sound bounds and verification for neural networks (ONNX + VNN-LIB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

Method = Enum("Method", {m.replace("-", "_"): m for m in METHODS}, type=str)


class Lines(str, Enum):
    tight = "tight"
    adaptive = "adaptive"


class BadInput(Exception):
    """Input a person must fix: reported in one line, exit code 2."""


def _load(model: Path, spec_path: Path | None):
    try:
        graph = load_onnx(model)
        spec = None
        if spec_path is not None:
            spec = load_vnnlib(spec_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
    except (FileNotFoundError, OnnxImportError, UnsupportedError, VnnlibError, ValueError) as e:
        raise BadInput(str(e)) from None
    return graph, spec


def guard(fn):
    """Run ``fn``; a :class:`BadInput` becomes one red line on stderr and exit code 2."""
    try:
        fn()
    except BadInput as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def bound(
    model: Annotated[Path, typer.Argument(help="ONNX network (.onnx or .onnx.gz)")],
    spec: Annotated[Path | None, typer.Argument(help="VNN-LIB property: its input boxes are bounded")] = None,
    method: Annotated[Method, typer.Option(help="bounding method")] = Method.crown,
    lines: Annotated[
        Lines, typer.Option(help="ReLU lower lines: tight (never looser than IBP) or adaptive")
    ] = Lines.tight,
    lower: Annotated[float, typer.Option(help="without SPEC: lower bound of every input")] = 0.0,
    upper: Annotated[float, typer.Option(help="without SPEC: upper bound of every input")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
):
    """Bound the raw outputs Y_0..Y_{n-1} over each input box of SPEC (or over --lower..--upper in every input)."""

    def go():
        graph, s = _load(model, spec)
        if s is None:
            if lower > upper:
                raise BadInput(f"--lower {lower} exceeds --upper {upper}")
            n = graph.n_inputs
            s = Spec((Case(Box(np.full(n, lower), np.full(n, upper)), ()),), n, graph.n_outputs)
        lo_in = np.stack([b.lower for b in s.boxes])
        hi_in = np.stack([b.upper for b in s.boxes])
        t = time.perf_counter()
        lo, hi = bound_spec(graph, lo_in, hi_in, None, method=method.value, lines=lines.value)
        dt = time.perf_counter() - t
        regions = [{"lower": lo[i].tolist(), "upper": hi[i].tolist()} for i in range(lo.shape[0])]
        if as_json:
            sys.stdout.write(json.dumps({"method": method.value, "time_s": dt, "regions": regions}) + "\n")
            return
        for i, r in enumerate(regions):
            table = Table(title=f"{method.value} bounds, input box {i + 1} of {len(regions)}")
            table.add_column("output")
            table.add_column("lower", justify="right")
            table.add_column("upper", justify="right")
            for j, (a, b) in enumerate(zip(r["lower"], r["upper"], strict=True)):
                table.add_row(f"Y_{j}", f"{a:.6g}", f"{b:.6g}")
            out.print(table)
        out.print(f"time: {dt:.4f} s")

    guard(go)


def _verify(graph, spec, model: Path, timeout: float, methods, result: Path | None, quiet: bool = False):
    data = resolve_path(model).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with err.status("verifying...", spinner="dots") if not quiet else nullcontext():
        res = verify(graph, spec, timeout=timeout, methods=methods, onnx_model=data)
    text = res.vnncomp()
    if result is not None:
        result.write_text(text)
    colour = {"unsat": "green", "sat": "red"}.get(res.status, "yellow")
    out.print(f"[bold {colour}]{res.status}[/]" + (f" (by {res.method})" if res.method else "")
              + f" in {res.time_s:.2f} s", highlight=False)
    if res.message:
        out.print(res.message, highlight=False)
    if res.status == "sat":
        out.print(text.split("\n", 1)[1], highlight=False, soft_wrap=True)
    return res


@app.command(name="verify")
def verify_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX network (.onnx or .onnx.gz)")],
    spec: Annotated[Path, typer.Argument(help="VNN-LIB property (.vnnlib or .vnnlib.gz)")],
    timeout: Annotated[float, typer.Option(help="seconds; 0 for none")] = 300.0,
    result: Annotated[Path | None, typer.Option(help="write the VNN-COMP result file here")] = None,
    methods: Annotated[str, typer.Option(help="bounding methods to try in order, comma-separated; add cegar for "
                                         "sigmoid/tanh abstraction refinement after them")] = ",".join(
        DEFAULT_METHODS
    ),
):
    """Decide a property: attack first, then the bounding methods, branch and bound and the exact MILP.

    Prints unsat (proven), sat with a witness checked on the network and onnxruntime, unknown or timeout,
    and the method that decided it.
    """

    def go():
        ms = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in ms if m not in METHODS and m != "cegar"]
        if bad:
            raise BadInput(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}, cegar")
        graph, s = _load(model, spec)
        _verify(graph, s, model, timeout, ms, result)

    guard(go)


@app.command()
def demo():
    """Verify the bundled digits network against its bundled robustness property."""
    model, spec_path = examples.path(examples.DIGITS_ONNX), examples.path(examples.DIGITS_SPEC)
    meta = json.loads(examples.path(examples.DIGITS_META).read_text())
    out.print(
        f"[bold]veracity demo[/]: a 64-32-32-10 ReLU network trained on scikit-learn's 8x8 digits "
        f"(test accuracy {meta['test_accuracy']:.1%}).\nProperty: test image {meta['image_index']} keeps "
        f"label {meta['label']} for every L-infinity perturbation of size {meta['eps']}.\n",
        highlight=False,
    )
    graph, spec = _load(model, spec_path)
    box = spec.cases[0].box
    C = np.concatenate([r.A for r in spec.cases[0].regions])  # rows y_label - y_j
    table = Table(title="lower bounds of y_label - y_j over the input box (> 0 for every j proves it)")
    table.add_column("method")
    table.add_column("worst margin", justify="right")
    table.add_column("time", justify="right")
    for m in ("ibp", "lbp", "crown-ibp", "crown", "alpha"):
        t = time.perf_counter()
        lo, _ = bound_spec(graph, box.lower[None], box.upper[None], C, method=m)
        worst = float(lo.min())
        table.add_row(m, f"[{'green' if worst > 0 else 'red'}]{worst:+.4f}[/]", f"{time.perf_counter() - t:.3f} s")
    out.print(table)
    _verify(graph, spec, model, 60.0, list(DEFAULT_METHODS), None)


def _register_commands():
    for m in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{m.name}").register(app)


_register_commands()


def main():
    app()


if __name__ == "__main__":
    main()
