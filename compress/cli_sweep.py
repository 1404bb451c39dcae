"""`compress sweep SWEEP.yaml`: a base recipe plus a search space, every point a trial.
Registered on the CLI's app when `compress.cli` is imported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from compress.cli import _fail, _print_summary, _sigterm_as_interrupt, app, out

EXECUTORS = ("ray", "local", "one-run")


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="YAML sweep: recipe + space"),
    out_dir: Path = typer.Option(Path("reports"), "--out", help="The sweep folder's parent."),
    executor: str = typer.Option(
        "ray",
        "--executor",
        help="ray: trials on Ray Tune (this machine, or --address); local: the same trials one "
        "after another in this process; one-run: every point a variant of one run",
    ),
    address: str | None = typer.Option(None, "--address", help="A Ray cluster to join."),
    cpus: float | None = typer.Option(
        None,
        "--cpus-per-trial",
        help="Default: a whole node (numbers identical to a standalone run).",
    ),
    gpus: float | None = typer.Option(None, "--gpus-per-trial", help="Default: 1 with CUDA."),
    memory: str | None = typer.Option(None, "--memory-per-trial", help="e.g. 4GiB"),
    quick: bool = typer.Option(False, "--quick", help="Few eval windows and repeats."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local eval data."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the points; run nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Expand the space into trials (invalid points listed with the reason) and run them; a
    re-run skips finished trials. Exit code: the worst trial's (as `compress apply`)."""
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        from compress.errors import BadInput
        from compress.sweep.local import load_sweep

        if executor not in EXECUTORS:
            raise BadInput(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}.")
        spec, base, points = load_sweep(sweep_file)
        _print_points(spec.name, points)
        if dry_run:
            raise typer.Exit(0)
        with _sigterm_as_interrupt():
            if executor == "one-run":
                code = _one_run(spec, base, points, out_dir, quick, data_dir, progress)
            else:
                from compress.sweep.driver import SweepRun

                run = SweepRun(spec, points, base, out_dir, quick=quick, data_dir=data_dir)
                code = run.execute(executor, address=address, cpus=cpus, gpus=gpus, memory=memory)
                _print_trials(run)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
    raise typer.Exit(code)


def _one_run(spec, base, points, out_dir, quick, data_dir, progress) -> int:
    import yaml

    from compress.pipeline import apply as run_apply
    from compress.sweep.local import sweep_recipe

    recipe = sweep_recipe(spec, base, points)
    report, run_dir = run_apply(
        recipe,
        recipe_text=yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
        out_root=out_dir,
        quick=quick,
        data_dir=str(data_dir) if data_dir else None,
        progress=progress,
        argv=sys.argv,
    )
    _print_summary(report)
    out.print(f"\nreport: [bold]{run_dir / 'report.md'}[/]")
    return report.exit_code


def _print_points(name: str, points) -> None:
    t = Table(
        title=f"sweep {name}: {sum(p.invalid is None for p in points)} of "
        f"{len(points)} point(s) run"
    )
    for col in ("variant", "trial", "status"):
        t.add_column(col)
    for p in points:
        t.add_row(p.name, p.key, "run" if p.invalid is None else f"skipped: {escape(p.invalid)}")
    out.print(t)


def _print_trials(run) -> None:
    from compress.report.readme import ratio_text

    t = Table(title=f"sweep {run.spec.name}: trials")
    for col in ("trial", "status", "exit", "ppl ratio", "weights ratio", "decode ratio"):
        t.add_column(col)
    for name, rec in run.records.items():
        h = rec.get("headline", {})
        status = rec.get("status", "?") + (" (earlier)" if rec.get("skipped") else "")
        t.add_row(
            name, status, str(rec.get("exit_code", "-")),
            ratio_text(h.get("wikitext2.perplexity")), ratio_text(h.get("weights.bytes")),
            ratio_text(h.get("decode.tokens_per_s")),
        )  # fmt: skip
    out.print(t)
    if run.spec.objective == "cheapest":
        _print_search(run)
    out.print(f"\nsweep: [bold]{run.sweep_dir / 'sweep.json'}[/]")
    if (run.sweep_dir / "compare.md").exists():
        out.print(f"compare: [bold]{run.sweep_dir / 'compare.md'}[/]")


def _print_search(run) -> None:
    from compress.sweep.search import screened

    t = Table(title="screen (quick eval, no timing)")
    for col in ("point", "ppl loss", "weights ratio", "full trial", "why"):
        t.add_column(col, overflow="fold")
    for name, (selected, why) in run.selection.items():
        s = screened(name, run.screen.get(name))
        loss = "-" if s.loss is None else f"{100 * s.loss:+.2f}%"
        w = "-" if s.weights is None else f"{s.weights:.3f}x"
        t.add_row(name, loss, w, "yes" if selected else "no", escape(why))
    out.print(t)
    if run.chosen is not None:
        name, why = run.chosen
        out.print(f"[bold]chosen:[/] {escape(name or 'none')}: {escape(why)}")
