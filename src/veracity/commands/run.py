"""``veracity run`` (a whole VNN-COMP benchmark, results to CSV) and ``veracity report`` (summaries, cactus plot).

A thin layer over :mod:`veracity.verify.runner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

COLOURS = {"unsat": "green", "sat": "red", "unknown": "yellow", "timeout": "magenta", "error": "bold red"}
ORDER = ("unsat", "sat", "unknown", "timeout", "error")


def _counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"[{COLOURS[s]}]{s} {counts.get(s, 0)}[/]" for s in ORDER)


def _fmt_time(t: float) -> str:
    return f"{t:.1f} s" if t >= 10 else f"{t:.2f} s"


def _summary_table(named: list[tuple[str, object]]):
    """One column per results file, one row per count (narrow enough for a terminal with a few files)."""
    from rich.table import Table

    with_expected = any(s.has_expected for _, s in named)
    table = Table()
    table.add_column("")
    for name, _ in named:
        table.add_column(name, justify="right", overflow="fold")
    table.add_row("instances", *(str(s.n) for _, s in named))
    for st in ORDER:
        table.add_row(f"[{COLOURS[st]}]{st}[/]", *(str(s.counts.get(st, 0)) for _, s in named))
    table.add_row("[bold]decided[/]", *(f"[bold]{s.decided}[/]" for _, s in named))
    table.add_row("total time", *(_fmt_time(s.total_s) for _, s in named))
    table.add_row("median time", *(_fmt_time(s.median_s) for _, s in named))
    if with_expected:
        table.add_row("expected decided", *(str(s.expected_decided) if s.has_expected else "-" for _, s in named))
        table.add_row("agreed", *(str(s.agreed) if s.has_expected else "-" for _, s in named))
        table.add_row("contradictions", *(
            (f"[bold red]{len(s.contradictions)}[/]" if s.contradictions else "0") if s.has_expected else "-"
            for _, s in named))
    return table


def _print_contradictions(out, s, prefix: str = "") -> None:
    for r, exp in s.contradictions:
        out.print(f"[bold red]CONTRADICTION[/] {prefix}{r.onnx} {r.vnnlib}: {r.result}, expected {exp}",
                  highlight=False, soft_wrap=True)


def _run(runner, instances, expected, previous, *, bench_name, timeout_scale, workers, ray, results, witness_dir,
         resume, limit):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from veracity.cli import BadInput, err, out

    if limit:
        instances = instances[:limit]
    keys = {i.key for i in instances}
    earlier = [r for r in runner.latest(previous) if r.key in keys] if resume else []
    done = {r.key for r in earlier}
    todo = [i for i in instances if i.key not in done]
    if earlier:
        err.print(f"resuming {results}: {len(earlier)} of {len(instances)} instances already done",
                  highlight=False)
    elif previous and not resume:
        err.print(f"appending to {results} ({len(previous)} rows; --resume would skip finished instances)",
                  highlight=False)
    try:
        writer = runner.ResultsWriter(results)
    except (runner.BenchError, OSError) as e:
        raise BadInput(str(e)) from None
    new: list = []
    counts = {s: 0 for s in runner.STATUSES}
    for r in earlier:
        counts[r.result] += 1
    interrupted = False
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    try:
        with writer, progress:
            task = progress.add_task(_counts_text(counts), total=len(instances), completed=len(earlier))
            gen = runner.run_instances(todo, timeout_scale=timeout_scale, workers=workers, ray=ray)
            try:
                for row in gen:
                    writer.append(row)
                    new.append(row)
                    counts[row.result] += 1
                    if row.result == "sat" and witness_dir is not None:
                        try:
                            runner.write_witness(witness_dir, row)
                        except OSError as e:
                            progress.console.print(f"[bold red]error[/] writing the witness: {e}", highlight=False)
                    if row.result == "error":
                        progress.console.print(f"[bold red]error[/] {row.onnx} {row.vnnlib}: {row.message}",
                                               highlight=False, soft_wrap=True)
                    exp = expected.get(row.key) if expected else None
                    if row.decided and exp in ("sat", "unsat") and exp != row.result:
                        progress.console.print(
                            f"[bold red]CONTRADICTION[/] {row.onnx} {row.vnnlib}: {row.result}, expected {exp}",
                            highlight=False, soft_wrap=True)
                    progress.update(task, advance=1, description=_counts_text(counts))
            finally:
                gen.close()
    except KeyboardInterrupt:
        interrupted = True
    except (ImportError, RuntimeError) as e:
        raise BadInput(str(e)) from None
    s = runner.summarise(earlier + new, expected)
    name = f"{results}" + (" (interrupted)" if interrupted else "")
    out.print(f"[bold]{bench_name}[/]: {len(new)} run now" + (f", {len(earlier)} earlier" if earlier else "")
              + f", {len(instances)} listed", highlight=False)
    out.print(_summary_table([(name, s)]))
    _print_contradictions(out, s)
    if interrupted:
        out.print(f"[yellow]interrupted[/]: {len(instances) - s.n} instance(s) left; "
                  f"rerun with --resume to continue", highlight=False)
        raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    @app.command(name="run")
    def run_cmd(
        bench: Annotated[Path, typer.Argument(help="benchmark folder (with instances.csv) or an instances.csv")],
        timeout_scale: Annotated[float, typer.Option(help="multiply every instance timeout by this")] = 1.0,
        workers: Annotated[
            int | None,
            typer.Option(
                help="worker processes (default 1; 0: in this process); with --ray, actors (default: all CPUs)",
                show_default=False,
            ),
        ] = None,
        ray: Annotated[
            str | None, typer.Option("--ray", help="run on Ray: a cluster ADDRESS, or 'local' to start one here")
        ] = None,
        results: Annotated[Path, typer.Option(help="results CSV, appended to row by row")] = Path("results.csv"),
        witness_dir: Annotated[
            Path | None, typer.Option(help="write each sat witness to DIR/<onnx>__<vnnlib>.counterexample")
        ] = None,
        resume: Annotated[bool, typer.Option("--resume", help="skip instances already in the results CSV")] = False,
        limit: Annotated[int, typer.Option(help="only the first N instances (0: all)")] = 0,
    ):
        """Verify every instance of a VNN-COMP benchmark, each with its own timeout, appending results to a CSV.

        Compares with expected.csv beside instances.csv when there is one. Ctrl-C stops cleanly (exit code 130):
        every finished result is already in the CSV, and --resume continues from there.
        """
        from veracity.cli import BadInput, guard

        def go():
            from veracity.verify import runner

            if not timeout_scale > 0:
                raise BadInput(f"--timeout-scale must be positive, got {timeout_scale}")
            if workers is not None and workers < 0:
                raise BadInput(f"--workers must be 0 or more, got {workers}")
            if limit < 0:
                raise BadInput(f"--limit must be 0 or more, got {limit}")
            if ray is not None:
                why = runner.ray_missing()
                if why is not None:
                    raise BadInput(f"--ray needs the ray package (pip install 'veracity[ray]'): {why}")
            try:
                csv_path = runner.instances_csv(bench)
                instances = runner.read_instances(csv_path)
                exp_path = csv_path.parent / "expected.csv"
                expected = runner.read_expected(exp_path) if exp_path.is_file() else None
                previous = runner.read_results(results)
            except runner.BenchError as e:
                raise BadInput(str(e)) from None
            if witness_dir is not None:
                try:
                    witness_dir.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise BadInput(f"--witness-dir {witness_dir}: {e}") from None
            _run(runner, instances, expected, previous, bench_name=csv_path.resolve().parent.name,
                 timeout_scale=timeout_scale, workers=workers, ray=ray,
                 results=results, witness_dir=witness_dir, resume=resume, limit=limit)

        guard(go)

    @app.command(name="report")
    def report_cmd(
        files: Annotated[list[Path], typer.Argument(help="results CSV files written by `veracity run`")],
        expected: Annotated[
            Path | None, typer.Option(help="expected.csv (or its benchmark folder) to count contradictions")
        ] = None,
        plot: Annotated[Path | None, typer.Option(help="write the cactus plot (PNG) here")] = None,
    ):
        """Summarise results CSV files (one table column each) and optionally draw their cactus plot."""
        from veracity.cli import BadInput, guard, out

        def go():
            from veracity.verify import runner

            try:
                exp = runner.read_expected(expected) if expected is not None else None
                runs = []
                for f in files:
                    if not f.is_file():
                        raise runner.BenchError(f"{f}: no such results file")
                    runs.append((f, runner.read_results(f)))
            except runner.BenchError as e:
                raise BadInput(str(e)) from None
            labels = [f.stem for f, _ in runs]
            if len(set(labels)) < len(labels):
                labels = [str(f) for f, _ in runs]
            named = [(lab, runner.summarise(rows, exp)) for lab, (_, rows) in zip(labels, runs, strict=True)]
            out.print(_summary_table(named))
            for lab, s in named:
                _print_contradictions(out, s, prefix=f"{lab}: " if len(named) > 1 else "")
            if plot is not None:
                try:
                    p = runner.cactus_plot(list(zip(labels, [rows for _, rows in runs], strict=True)), plot)
                except OSError as e:
                    raise BadInput(f"{plot}: {e}") from None
                out.print(f"cactus plot: {p}", highlight=False)

        guard(go)
