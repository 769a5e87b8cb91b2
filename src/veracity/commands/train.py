"""``veracity train`` (certified training, ONNX out) and ``veracity certify-dataset`` (clean/PGD/certified table)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Data(str, Enum):
    digits = "digits"
    mnist = "mnist"
    cifar10 = "cifar10"


class ModelName(str, Enum):
    mlp = "mlp"
    cnn_small = "cnn-small"
    cnn_medium = "cnn-medium"
    cnn7 = "cnn7"


class Act(str, Enum):
    relu = "relu"
    leaky = "leaky"
    paramramp = "paramramp"


class Loss(str, Enum):
    ibp = "ibp"
    crown_ibp = "crown-ibp"
    lbp = "lbp"
    crown_lbp = "crown-lbp"
    crown = "crown"
    lp = "lp"


class Smoothing(str, Enum):
    none = "none"
    pgpe = "pgpe"
    rgs = "rgs"


class Shape(str, Enum):
    linear = "linear"
    smooth = "smooth"


class LinesOpt(str, Enum):
    tight = "tight"
    adaptive = "adaptive"


class CertMethod(str, Enum):
    ibp = "ibp"
    crown = "crown"
    crown_ibp = "crown-ibp"
    crown_lbp = "crown-lbp"
    alpha = "alpha"
    bab = "bab"


def _check_data(data: Data, data_dir: Path | None):
    from veracity.cli import BadInput

    if data != Data.digits and data_dir is None:
        raise BadInput(f"--data {data.value} needs --data-dir (a folder with the standard dataset files)")
    if data_dir is not None and not data_dir.is_dir():
        raise BadInput(f"--data-dir {data_dir} is not a folder")


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        data: Annotated[Data, typer.Option(help="dataset (digits is bundled with scikit-learn)")] = Data.digits,
        data_dir: Annotated[Path | None, typer.Option(help="folder of MNIST idx or CIFAR-10 pickle files")] = None,
        model: Annotated[ModelName, typer.Option(help="architecture")] = ModelName.cnn_small,
        act: Annotated[Act, typer.Option(help="activation")] = Act.relu,
        loss: Annotated[Loss, typer.Option(help="certified loss (lp: with pgpe only)")] = Loss.ibp,
        lines: Annotated[LinesOpt, typer.Option(help="relaxation lines for CROWN/LBP losses")] = LinesOpt.tight,
        smoothing: Annotated[Smoothing, typer.Option(help="Gaussian loss smoothing of the weights")] = Smoothing.none,
        eps: Annotated[float, typer.Option(help="L-inf radius to certify (pixels in [0, 1])")] = 0.1,
        train_eps: Annotated[float | None, typer.Option(help="radius trained at (default --eps)")] = None,
        epochs: Annotated[float, typer.Option(help="training length in epochs")] = 10.0,
        warmup: Annotated[float, typer.Option(help="clean epochs before the ε ramp")] = 1.0,
        ramp: Annotated[float, typer.Option(help="epochs over which ε, κ, β and η ramp")] = 3.0,
        ramp_shape: Annotated[Shape, typer.Option(help="ε ramp shape")] = Shape.linear,
        kappa: Annotated[float, typer.Option(help="final weight of the natural loss (κ: 1 -> this)")] = 0.5,
        batch: Annotated[int, typer.Option(help="batch size")] = 128,
        lr: Annotated[float, typer.Option(help="Adam learning rate (x0.2 at 75% and 90% of training)")] = 5e-4,
        population: Annotated[int, typer.Option(help="PGPE antithetic pairs / RGS perturbed copies")] = 8,
        sigma: Annotated[float, typer.Option(help="smoothing standard deviation of the weights")] = 0.01,
        sigma_end: Annotated[float | None, typer.Option(help="σ at the end (linear schedule)")] = None,
        time_budget: Annotated[float | None, typer.Option(help="seconds of training; schedules follow it")] = None,
        subset: Annotated[int | None, typer.Option(help="train on the first N training images")] = None,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
        out: Annotated[Path, typer.Option(help="ONNX file to write (.ckpt/.json/.csv/.png beside it)")] = Path(
            "model.onnx"),
        resume: Annotated[bool, typer.Option(help="continue from OUT's .ckpt checkpoint")] = False,
        quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    ):
        """Certified training (IBP, CROWN-IBP, LBP, CROWN-LBP or CROWN losses) with ε/κ/β/η schedules.

        Writes the ONNX model, a checkpoint after every epoch, a JSON and CSV log, and PNG training curves.
        """
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            _check_data(data, data_dir)
            if out.suffix != ".onnx":
                raise BadInput(f"--out must end in .onnx, got {out}")
            from veracity.train.loop import Config
            from veracity.train.loop import train as run

            cfg = Config(data=data.value, data_dir=None if data_dir is None else str(data_dir), model=model.value,
                         act=act.value, loss=loss.value, lines=lines.value, smoothing=smoothing.value, eps=eps,
                         train_eps=train_eps, epochs=epochs, warmup=warmup, ramp=ramp, ramp_shape=ramp_shape.value,
                         kappa_end=kappa, batch=batch, lr=lr, population=population, sigma=sigma,
                         sigma_end=sigma_end, time_budget=time_budget, train_subset=subset, seed=seed,
                         threads=threads)
            try:
                cfg.check()
                summary = run(cfg, out, resume=resume, progress=not quiet,
                              log=lambda s: console.print(s, highlight=False))
            except (ValueError, FileNotFoundError) as e:
                raise BadInput(str(e)) from None
            console.print(f"trained in {summary['train_time_s']:.0f} s ({summary['steps']} steps); wrote {out}, "
                          f"{out.with_suffix('.json')}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}",
                          highlight=False)

        guard(go)

    @app.command(name="certify-dataset")
    def certify_dataset(
        model: Annotated[Path, typer.Argument(help="ONNX classifier")],
        data: Annotated[Data, typer.Option(help="dataset")] = Data.digits,
        data_dir: Annotated[Path | None, typer.Option(help="folder of MNIST idx or CIFAR-10 pickle files")] = None,
        eps: Annotated[float, typer.Option(help="L-inf radius (pixels in [0, 1])")] = 0.1,
        method: Annotated[CertMethod, typer.Option(help="bounds, or bab for the complete verifier")] = CertMethod.crown,
        n: Annotated[int, typer.Option(help="first N test images")] = 1000,
        batch: Annotated[int, typer.Option(help="images bounded at once")] = 50,
        pgd_steps: Annotated[int, typer.Option(help="PGD steps")] = 50,
        pgd_restarts: Annotated[int, typer.Option(help="PGD restarts")] = 2,
        timeout: Annotated[float, typer.Option(help="with --method bab: seconds per open image")] = 10.0,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
        quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    ):
        """Clean, PGD and certified accuracy of MODEL on the first N test images at radius EPS.

        Certificates are float64 bounds widened for rounding; PGD points are re-checked in float64.
        """
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            _check_data(data, data_dir)
            if eps < 0 or n < 1 or batch < 1:
                raise BadInput("--eps must be >= 0 and --n, --batch at least 1")
            import json

            from veracity.graph import OnnxImportError, UnsupportedError, load_onnx
            from veracity.train.certify import certify_dataset as run

            try:
                graph = load_onnx(model)
                from veracity.data import load

                x, y = load(data.value, None if data_dir is None else str(data_dir), "test")
            except (FileNotFoundError, OnnxImportError, UnsupportedError, ValueError) as e:
                raise BadInput(str(e)) from None
            if tuple(x.shape[1:]) != tuple(graph.input_shape) and x[0].size != graph.n_inputs:
                raise BadInput(f"{model} takes inputs of shape {graph.input_shape}, the data has {x.shape[1:]}")
            res = run(graph, x[:n], y[:n], eps, method.value, batch=batch, pgd_steps=pgd_steps,
                      pgd_restarts=pgd_restarts, timeout=timeout, progress=not quiet and not as_json,
                      onnx_bytes=model.read_bytes())
            if as_json:
                typer.echo(json.dumps(res))
                return
            from rich.table import Table

            t = Table(title=f"{model.name} on {res['n']} {data.value} test images, ε = {eps}")
            for c in ("clean", "PGD", f"certified ({method.value})", "time"):
                t.add_column(c, justify="right")
            t.add_row(f"{res['clean']:.2%}", f"{res['pgd']:.2%}", f"{res['certified']:.2%}",
                      f"{res['time_s']:.1f} s")
            console.print(t)
            if res["contradictions"]:
                console.print(f"[bold red]{res['contradictions']} certified images broken by PGD[/]")

        guard(go)
