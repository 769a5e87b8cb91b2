"""``veracity plot lines`` and ``veracity plot reach``: pictures of relaxations (PNG, headless)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Act(str, Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    paramramp = "paramramp"


def register(app: typer.Typer) -> None:
    plot = typer.Typer(help="Pictures of relaxations: one neuron's lines, two neurons' reachable sets.",
                       no_args_is_help=True)
    app.add_typer(plot, name="plot")

    @plot.command(name="lines")
    def lines_cmd(
        act: Annotated[Act, typer.Option(help="activation")] = Act.relu,
        lower: Annotated[float, typer.Option(help="pre-activation lower bound l")] = -1.0,
        upper: Annotated[float, typer.Option(help="pre-activation upper bound u")] = 2.0,
        r: Annotated[float, typer.Option(help="paramramp: the upper corner r (>= 0)")] = 1.0,
        eta: Annotated[float, typer.Option(help="paramramp: the outer slope eta in [0, 1)")] = 0.0,
        out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("lines.png"),
    ):
        """One neuron on [l, u]: the activation, its IBP box, adaptive and tight CROWN lines and the LP region."""
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            from veracity.plot import lines_figure

            if not lower < upper:
                raise BadInput(f"--lower {lower} must be below --upper {upper}")
            if act is Act.paramramp and (r < 0 or not 0 <= eta < 1):
                raise BadInput("paramramp needs --r >= 0 and --eta in [0, 1)")
            console.print(f"wrote {lines_figure(act.value, lower, upper, out, r, eta)}")

        guard(go)

    @plot.command(name="reach")
    def reach_cmd(
        model: Annotated[Path, typer.Argument(help="ONNX network (.onnx or .onnx.gz)")],
        spec: Annotated[Path | None, typer.Argument(help="VNN-LIB property: its first input box is the region")] = None,
        neurons: Annotated[str, typer.Option(help="two neurons L:i,L:j of activation layer L (0 = first)")] = "0:0,0:1",
        lower: Annotated[float, typer.Option(help="without SPEC: lower bound of every input")] = 0.0,
        upper: Annotated[float, typer.Option(help="without SPEC: upper bound of every input")] = 1.0,
        directions: Annotated[int, typer.Option(help="half-planes per region")] = 48,
        samples: Annotated[int, typer.Option(help="sampled inputs (half on vertices of the box)")] = 20000,
        out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("reach.png"),
    ):
        """Two post-activation neurons over an input box: sampled true values, the IBP box and the CROWN,
        triangle-LP and kPoly regions (each sound: an intersection of bounded half-planes)."""
        import numpy as np

        from veracity.cli import BadInput, _load, guard
        from veracity.cli import out as console

        def go():
            from veracity.plot import reach_figure

            try:
                (la, i), (lb, j) = [tuple(int(v) for v in p.split(":")) for p in neurons.split(",")]
            except ValueError:
                raise BadInput(f"--neurons must look like 2:5,2:7 (layer:index), got {neurons!r}") from None
            if la != lb:
                raise BadInput("both neurons must be in the same activation layer")
            if directions < 3 or samples < 1:
                raise BadInput("--directions must be at least 3 and --samples at least 1")
            graph, s = _load(model, spec)
            if s is None:
                if lower > upper:
                    raise BadInput(f"--lower {lower} exceeds --upper {upper}")
                lo, hi = np.full(graph.n_inputs, lower), np.full(graph.n_inputs, upper)
            else:
                lo, hi = s.boxes[0].lower, s.boxes[0].upper
            try:
                path = reach_figure(graph, lo, hi, la, i, j, out, title=f"{model.name}: neurons {la}:{i}, {la}:{j}",
                                    n_dirs=directions, samples=samples)
            except ValueError as e:
                raise BadInput(str(e)) from None
            console.print(f"wrote {path}")

        guard(go)
