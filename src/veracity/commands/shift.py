"""``veracity shift``: learn distribution shifts with a conditional VAE and certify classifiers against them.

``shift train`` fits G(x, z) and the prior p(z|x) for one shift family; ``shift classifier`` trains a small
MNIST classifier (optionally with shift augmentation); ``shift verify`` writes and verifies one VNN-COMP
instance per test image: the network z -> classifier(G(x, z)) over the latent box [mu - delta sigma,
mu + delta sigma]. A thin layer over :mod:`veracity.shift`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

DATASETS = ("mnist", "digits")


def _parse_images(text: str, n: int) -> range:
    """``a:b`` (test indices a..b-1), ``:b``, ``a:`` or a single index ``a``."""
    from veracity.cli import BadInput

    try:
        if ":" in text:
            a, b = text.split(":", 1)
            start = int(a) if a.strip() else 0
            stop = int(b) if b.strip() else n
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise BadInput(f"--images {text!r}: expected START:STOP (e.g. 0:100) or one index") from None
    if not 0 <= start < stop:
        raise BadInput(f"--images {text!r}: need 0 <= START < STOP")
    if stop > n:
        raise BadInput(f"--images {text!r}: the test set has {n} images")
    return range(start, stop)


def _load(dataset: str, data_dir: Path | None, split: str):
    from veracity.cli import BadInput
    from veracity.data import load

    if dataset not in DATASETS:
        raise BadInput(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if dataset != "digits" and data_dir is None:
        raise BadInput(f"--data-dir is needed for {dataset}")
    if data_dir is not None and dataset != "digits" and not data_dir.is_dir():
        raise BadInput(f"--data-dir {data_dir}: no such directory")
    try:
        return load(dataset, data_dir, split)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise BadInput(f"cannot read {dataset} from {data_dir}: {e}") from None


def _out_dir(out: Path) -> Path:
    from veracity.cli import BadInput

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {out}: {e}") from None
    return out


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from veracity.cli import err

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=False)


def _threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def register(app: typer.Typer) -> None:
    shift_app = typer.Typer(help="Distribution shifts: learn them (conditional VAE), certify classifiers against them.",
                            no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.add_typer(shift_app, name="shift")

    @shift_app.command(name="list")
    def list_cmd():
        """The shift families and their parameter ranges."""
        from veracity.cli import out
        from veracity.shift.families import SHIFTS

        for s in SHIFTS.values():
            out.print(s.describe(), highlight=False, soft_wrap=True)

    @shift_app.command(name="train")
    def train_cmd(
        shift: Annotated[str, typer.Option(help="shift family (see `veracity shift list`)")],
        out: Annotated[Path, typer.Option(help="output folder for generator.onnx, prior.onnx, the grid, meta")],
        data_dir: Annotated[Path | None, typer.Option(help="dataset folder (MNIST idx files)")] = None,
        dataset: Annotated[str, typer.Option(help="mnist or digits")] = "mnist",
        epochs: Annotated[int, typer.Option(help="passes over the training images")] = 3,
        latent: Annotated[int, typer.Option(help="latent dimension of z")] = 8,
        limit: Annotated[int, typer.Option(help="train on the first N training images only (0: all)")] = 0,
        batch: Annotated[int, typer.Option(help="batch size")] = 128,
        lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
        seed: Annotated[int, typer.Option(help="random seed (weights, batches, shift parameters)")] = 0,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
    ):
        """Fit a conditional VAE to (x, shift(x, theta)) pairs; save G(x, z) and p(z|x) as ONNX plus a picture grid.

        Writes OUT/generator.onnx (inputs x, z -> image), OUT/prior.onnx (x -> mu, logvar), OUT/cvae.pt,
        OUT/shift_grid.png (clean, real shifts, generated shifts) and OUT/meta.json (reconstruction errors).
        """
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            import numpy as np
            import torch

            from veracity.shift import cvae
            from veracity.shift.families import get

            try:
                get(shift)
            except ValueError as e:
                raise BadInput(str(e)) from None
            for name, v in (("--epochs", epochs), ("--latent", latent), ("--batch", batch)):
                if v < 1:
                    raise BadInput(f"{name} must be at least 1, got {v}")
            if limit < 0:
                raise BadInput(f"--limit must be 0 or more, got {limit}")
            if not lr > 0:
                raise BadInput(f"--lr must be positive, got {lr}")
            x_train, _ = _load(dataset, data_dir, "train")
            x_test, _ = _load(dataset, data_dir, "test")
            if limit:
                x_train = x_train[:limit]
            folder = _out_dir(out)
            _threads(threads)
            torch.manual_seed(seed)
            cfg = cvae.CvaeConfig(image_shape=tuple(x_train.shape[1:]), latent=latent)
            model = cvae.Cvae(cfg)
            t0 = time.perf_counter()
            with _progress() as progress:
                task = progress.add_task(f"training the {shift} CVAE", total=None)

                def tick(step, total, loss):
                    if step % 10 == 0 or step == total:
                        progress.update(task, completed=step, total=total,
                                        description=f"training the {shift} CVAE, loss {loss:.1f}")

                losses = cvae.train(model, x_train, shift, epochs=epochs, batch=batch, lr=lr, seed=seed,
                                    progress=tick)
            train_s = time.perf_counter() - t0
            errors = cvae.evaluate(model, x_test[:1000], shift)
            gen_path, prior_path = folder / "generator.onnx", folder / "prior.onnx"
            cvae.export_onnx(model, gen_path, prior_path)
            torch.save({"config": cfg, "state": model.state_dict()}, folder / "cvae.pt")
            grid = folder / "shift_grid.png"
            cvae.save_grid(model, x_test, shift, grid)
            cvae.save_meta(folder / "meta.json", cfg, shift=shift, dataset=dataset, epochs=epochs, seed=seed,
                           train_images=int(len(x_train)), train_s=train_s, final_loss=float(np.mean(losses[-50:])),
                           test_mean_abs_error=errors)
            console.print(f"[bold]{shift}[/]: trained on {len(x_train)} images, {epochs} epoch(s), {train_s:.1f} s",
                          highlight=False, soft_wrap=True)
            console.print(f"mean absolute pixel error on 1000 test images vs x' = shift(x, theta): "
                          f"reconstruction G(x, mean q(z|x,x')) {errors['reconstruction']:.4f}, "
                          f"prior mean G(x, mu(x)) {errors['prior_mean']:.4f}, "
                          f"unshifted x {errors['identity']:.4f}", highlight=False, soft_wrap=True)
            console.print(f"wrote {gen_path}, {prior_path}, {grid}, {folder / 'meta.json'}", highlight=False,
                          soft_wrap=True)

        guard(go)

    @shift_app.command(name="classifier")
    def classifier_cmd(
        out: Annotated[Path, typer.Option(help="ONNX file to write (input (1, 1, 28, 28), output logits)")],
        data_dir: Annotated[Path | None, typer.Option(help="dataset folder (MNIST idx files)")] = None,
        dataset: Annotated[str, typer.Option(help="mnist or digits")] = "mnist",
        arch: Annotated[str, typer.Option(help="mlp (784-32-32-10 ReLU) or conv (2 conv layers + 32 + 10)")] = "mlp",
        augment: Annotated[str, typer.Option(
            help="shift families to augment with, comma-separated, 'all', or 'none'")] = "none",
        epochs: Annotated[int, typer.Option(help="passes over the training images")] = 2,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
    ):
        """Train a small classifier, normally or with half of each batch shifted; print clean and shifted accuracy."""
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            import torch

            from veracity.shift import classifiers
            from veracity.shift.families import SHIFTS, get

            if arch not in classifiers.ARCHS:
                raise BadInput(f"unknown --arch {arch!r}; choose from {', '.join(classifiers.ARCHS)}")
            names = [] if augment == "none" else list(SHIFTS) if augment == "all" else [
                a.strip() for a in augment.split(",") if a.strip()]
            try:
                for n in names:
                    get(n)
            except ValueError as e:
                raise BadInput(f"--augment: {e}") from None
            if epochs < 1:
                raise BadInput(f"--epochs must be at least 1, got {epochs}")
            x_train, y_train = _load(dataset, data_dir, "train")
            x_test, y_test = _load(dataset, data_dir, "test")
            if out.parent and not out.parent.exists():
                _out_dir(out.parent)
            _threads(threads)
            torch.manual_seed(seed)
            model = classifiers.make(arch, tuple(x_train.shape[1:]))
            t0 = time.perf_counter()
            with _progress() as progress:
                task = progress.add_task(f"training {arch}", total=None)

                def tick(step, total, loss):
                    if step % 10 == 0 or step == total:
                        progress.update(task, completed=step, total=total, description=f"training {arch}, "
                                        f"loss {loss:.3f}")

                classifiers.train(model, x_train, y_train, augment=names, epochs=epochs, seed=seed, progress=tick)
            console.print(f"[bold]{arch}[/] ({'augmented: ' + ', '.join(names) if names else 'no augmentation'}), "
                          f"{time.perf_counter() - t0:.1f} s; test accuracy clean "
                          f"{classifiers.accuracy(model, x_test, y_test):.2%}", highlight=False, soft_wrap=True)
            console.print("shifted: " + ", ".join(
                f"{s} {classifiers.accuracy(model, x_test, y_test, s):.2%}" for s in SHIFTS), highlight=False,
                soft_wrap=True)
            classifiers.export_onnx(model, out, tuple(x_train.shape[1:]))
            console.print(f"wrote {out}", highlight=False, soft_wrap=True)

        guard(go)

    @shift_app.command(name="verify")
    def verify_cmd(
        generator: Annotated[Path, typer.Option(help="G(x, z) as ONNX: inputs image x and latent z")],
        prior: Annotated[Path, typer.Option(help="p(z|x) as ONNX: image -> (mu, logvar)")],
        classifier: Annotated[Path, typer.Option(help="classifier ONNX: image -> logits")],
        out: Annotated[Path, typer.Option(help="folder for onnx/, vnnlib/, instances.csv, verification.csv")],
        data_dir: Annotated[Path | None, typer.Option(help="dataset folder (MNIST idx files)")] = None,
        dataset: Annotated[str, typer.Option(help="mnist or digits")] = "mnist",
        delta: Annotated[float, typer.Option(help="latent box half-width in prior standard deviations")] = 0.13,
        images: Annotated[str, typer.Option(help="test images START:STOP")] = "0:100",
        method: Annotated[str, typer.Option(
            help="cegar (sigmoid CEGAR after bounds), driver (attack, bounds, branch and bound, MILP), crown or "
                 "alpha (these bounds, then an attack where they fail; no branching)")] = "cegar",
        timeout: Annotated[float, typer.Option(help="seconds per instance (also written to instances.csv)")] = 60.0,
        form: Annotated[str, typer.Option(
            help="z: one network per image over the latent z alone (image folded in); concat: one network over "
                 "concat(flatten(x), z) for all images, each property pinning x")] = "z",
        write_only: Annotated[bool, typer.Option("--write-only", help="write the instances, do not verify")] = False,
        threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
    ):
        """Certify a classifier against a learned shift, one VNN-COMP instance per test image.

        For each test image x (skipped when the classifier is wrong at z = mu): the latent box, each z_i
        between mu_i - delta sigma_i and mu_i + delta sigma_i from the prior; the network
        z -> classifier(G(x, z)) with x folded in (OUT/onnx/img<i>.onnx, input z only; with --form concat one
        OUT/onnx/shift_concat.onnx over concat(flatten(x), z) and x pinned in the property); the property
        "another class scores at least as high as the label" (OUT/vnnlib/img<i>_delta<d>.vnnlib) and a row of
        OUT/instances.csv, so `veracity run OUT` and other verifiers run the same problems. Each written
        instance is read back by veracity and onnxruntime and checked against the separate generator and
        classifier. Verdicts go to OUT/verification.csv (unsat = certified), the summary to OUT/summary.json.
        """
        from veracity.cli import BadInput, guard
        from veracity.cli import out as console

        def go():
            import csv
            import json

            import numpy as np

            from veracity.shift.compose import ComposeError
            from veracity.shift.latent import FORMS, VERIFY_METHODS, Networks, verify_instance, write_instance

            if method not in VERIFY_METHODS:
                raise BadInput(f"unknown --method {method!r}; choose from {', '.join(VERIFY_METHODS)}")
            if method == "cegar":
                try:
                    import veracity.verify.cegar  # noqa: F401
                except ImportError:
                    raise BadInput("--method cegar: veracity.verify.cegar is not available; use driver") from None
            if form not in FORMS:
                raise BadInput(f"unknown --form {form!r}; choose from {', '.join(FORMS)}")
            if not delta > 0:
                raise BadInput(f"--delta must be positive, got {delta}")
            if not timeout > 0:
                raise BadInput(f"--timeout must be positive, got {timeout}")
            for name, p in (("--generator", generator), ("--prior", prior), ("--classifier", classifier)):
                if not p.is_file():
                    raise BadInput(f"{name} {p}: no such file")
            try:
                nets = Networks(generator, prior, classifier)
            except (ComposeError, ValueError) as e:
                raise BadInput(str(e)) from None
            except Exception as e:  # onnx / onnxruntime raise their own types for unreadable files
                raise BadInput(f"cannot read the networks: {e}") from None
            x_test, y_test = _load(dataset, data_dir, "test")
            idx = _parse_images(images, len(x_test))
            if int(np.prod(x_test.shape[1:])) != int(np.prod(nets.x_shape[1:])):
                raise BadInput(f"the generator takes images of shape {nets.x_shape[1:]}, {dataset} has "
                               f"{list(x_test.shape[1:])}")
            folder = _out_dir(out)
            _threads(threads)
            rows, counts = [], {}
            inst_lines = []
            t_all = time.perf_counter()
            with _progress() as progress:
                task = progress.add_task("writing and verifying", total=len(idx))
                for i in idx:
                    x, y = x_test[i], int(y_test[i])
                    try:
                        inst = write_instance(nets, x, y, i, delta, folder, source=dataset, form=form)
                    except ComposeError as e:
                        raise BadInput(str(e)) from None
                    row = {"index": i, "label": y, "prediction": inst.prediction, "status": "misclassified",
                           "method": "", "time_s": "", "onnx": "", "vnnlib": "",
                           "ort_vs_graph": "", "ort_vs_pipeline": ""}
                    if inst.vnnlib_path is not None:
                        rel_o = inst.onnx_path.relative_to(folder).as_posix()
                        rel_v = inst.vnnlib_path.relative_to(folder).as_posix()
                        inst_lines.append(f"{rel_o},{rel_v},{timeout:g}")
                        row.update(onnx=rel_o, vnnlib=rel_v, ort_vs_graph=f"{inst.ort_vs_graph:.3g}",
                                   ort_vs_pipeline=f"{inst.ort_vs_pipeline:.3g}", status="written")
                        if not write_only:
                            res = verify_instance(inst.onnx_path, inst.vnnlib_path, method, timeout)
                            row.update(status=res.status, method=res.method, time_s=f"{res.time_s:.3f}")
                    rows.append(row)
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
                    progress.update(task, advance=1, description="  ".join(f"{k} {v}" for k, v in counts.items()))
            total_s = time.perf_counter() - t_all
            (folder / "instances.csv").write_text("\n".join(inst_lines) + ("\n" if inst_lines else ""))
            with (folder / "verification.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            n = len(rows)
            certified = counts.get("unsat", 0)
            times = [float(r["time_s"]) for r in rows if r["time_s"]]
            summary = {
                "images": n, "written": len(inst_lines), "counts": counts, "delta": delta, "method": method,
                "certified": certified, "certified_rate": certified / n,
                "verify_s_total": float(sum(times)), "verify_s_median": float(np.median(times)) if times else 0.0,
                "wall_s": total_s,
                "max_ort_vs_graph": max((float(r["ort_vs_graph"]) for r in rows if r["ort_vs_graph"]), default=0.0),
                "max_ort_vs_pipeline": max((float(r["ort_vs_pipeline"]) for r in rows if r["ort_vs_pipeline"]),
                                           default=0.0),
                "generator": str(generator), "prior": str(prior), "classifier": str(classifier),
            }
            (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            console.print(f"[bold]{n} image(s)[/], delta {delta:g}, method {method}: "
                          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                          + (f"; certified {certified}/{n} ({certified / n:.0%})" if not write_only else "")
                          + f"; {total_s:.1f} s", highlight=False, soft_wrap=True)
            console.print(f"onnxruntime vs veracity on the written networks: max |diff| "
                          f"{summary['max_ort_vs_graph']:.2g}; vs separate generator+classifier "
                          f"{summary['max_ort_vs_pipeline']:.2g}", highlight=False, soft_wrap=True)
            console.print(f"wrote {folder / 'instances.csv'} ({len(inst_lines)} instances), "
                          f"{folder / 'verification.csv'}, {folder / 'summary.json'}", highlight=False, soft_wrap=True)

        guard(go)
