"""``veracity reach``: reachable sets of x_{t+1} = f(x_t) for a ReLU network f, with a plot of sampled runs.

A thin layer over :mod:`veracity.reach`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PENDULUM = "pendulum_step.onnx"


def _vector(text: str, name: str, n: int):
    from veracity.cli import BadInput

    try:
        v = [float(s) for s in text.split(",")]
    except ValueError:
        raise BadInput(f"--{name} {text!r}: expected {n} comma-separated numbers") from None
    if len(v) != n:
        raise BadInput(f"--{name} has {len(v)} numbers; the state has {n}")
    return v


def register(app: typer.Typer) -> None:
    @app.command()
    def reach(
        model: Annotated[Path | None, typer.Option(help="ONNX step network (state -> next state); default: the "
                                                        "bundled pendulum surrogate")] = None,
        steps: Annotated[int, typer.Option(help="time steps T")] = 8,
        lower: Annotated[str, typer.Option(help="initial box, lower corner (comma-separated)")] = "0.5,-0.1",
        upper: Annotated[str, typer.Option(help="initial box, upper corner (comma-separated)")] = "0.6,0.1",
        method: Annotated[str, typer.Option(help="admm (LP relaxation) or crown")] = "admm",
        iterations: Annotated[int, typer.Option(help="ADMM iterations per bound problem")] = 200,
        tighten: Annotated[bool, typer.Option(help="ADMM intermediate bounds layer by layer (slower, tighter)")] = True,
        baseline: Annotated[bool, typer.Option(help="also compute step-by-step boxes for comparison")] = True,
        samples: Annotated[int, typer.Option(help="sampled runs drawn and checked against the sets")] = 300,
        out: Annotated[Path, typer.Option(help="PNG plot of the first two state coordinates")] = Path("reach.png"),
    ):
        """Over-approximate the states reachable in T steps from a box by bounding the T-fold composition of the
        step network as one graph; compare with boxes bounded one step at a time; draw sampled runs inside them.

        Exit code 1 if a sampled run leaves the computed sets (that would be a soundness bug).
        """
        from veracity.cli import BadInput, err, guard
        from veracity.cli import out as console

        def go():
            import torch
            from rich.table import Table

            from veracity import examples
            from veracity import reach as R
            from veracity.graph import OnnxImportError, UnsupportedError, load_onnx

            if steps < 1:
                raise BadInput(f"--steps {steps}: must be at least 1")
            if method not in ("admm", "crown"):
                raise BadInput(f"--method {method!r}: choose admm or crown")
            if iterations < 1 or samples < 1:
                raise BadInput("--iterations and --samples must be at least 1")
            path = model if model is not None else examples.path(PENDULUM)
            try:
                step = load_onnx(path)
                lo, hi = _vector(lower, "lower", step.n_inputs), _vector(upper, "upper", step.n_inputs)
                if any(a > b for a, b in zip(lo, hi, strict=True)):
                    raise BadInput(f"--lower {lower} exceeds --upper {upper} somewhere")
                R.unroll(step, 1)
                if step.n_inputs < 2:
                    raise BadInput("the plot needs a state of at least 2 coordinates")
                torch.set_num_threads(1)
                opts = {"max_iter": iterations}
                with err.status(f"bounding {steps} steps on the unrolled graph ({method})...", spinner="dots"):
                    sets = R.reach_sets(step, lo, hi, steps, method=method, tighten=tighten, **opts)
                base = None
                if baseline:
                    with err.status("bounding step by step...", spinner="dots"):
                        base = R.stepwise_boxes(step, lo, hi, steps, method=method, **opts)
            except (FileNotFoundError, OnnxImportError, UnsupportedError, ValueError) as e:
                raise BadInput(str(e)) from None
            runs = R.trajectories(step, lo, hi, steps, samples)
            ok = R.inside(runs, sets)
            table = Table(title=f"reachable boxes, {method}: width of each coordinate")
            table.add_column("t", justify="right")
            table.add_column("unrolled", justify="right")
            if base is not None:
                table.add_column("step by step", justify="right")
            for t in range(steps + 1):
                w = (sets.upper[t] - sets.lower[t]).tolist()
                row = [str(t), ", ".join(f"{v:.4f}" for v in w)]
                if base is not None:
                    row.append(", ".join(f"{v:.4f}" for v in (base.upper[t] - base.lower[t]).tolist()))
                table.add_row(*row)
            console.print(table)
            timing = f"unrolled {sets.seconds:.1f} s" + (f", step by step {base.seconds:.1f} s" if base else "")
            console.print(f"time: {timing}")
            R.plot(out, runs, sets, base, title=f"{Path(path).name}: {steps} steps from [{lower}] .. [{upper}]")
            n_in = int(ok.sum())
            colour = "green" if n_in == runs.shape[0] else "bold red"
            console.print(f"[{colour}]{n_in} of {runs.shape[0]} sampled runs inside the unrolled sets[/]; plot: {out}",
                          highlight=False)
            if n_in != runs.shape[0]:
                raise typer.Exit(1)

        guard(go)
