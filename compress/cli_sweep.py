"""`compress sweep SWEEP.yaml`: a base recipe plus a search space, every point a variant.
Registered on the CLI's app when `compress.cli` is imported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from compress.cli import _fail, _print_summary, _sigterm_as_interrupt, app, out


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="YAML sweep: recipe + space"),
    out_dir: Path = typer.Option(Path("reports"), "--out", help="Folder for <name>/<UTC>/"),
    executor: str = typer.Option(
        "local", "--executor", help="local: every point as a variant of one run, in this process"
    ),
    quick: bool = typer.Option(False, "--quick", help="Few eval windows and repeats."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Local eval data."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the points; run nothing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Expand the space into variants (invalid points listed with the reason), then run them
    against one shared baseline; the report and exit code are those of `compress apply`."""
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        import yaml

        from compress.errors import BadInput
        from compress.sweep.local import load_sweep, sweep_recipe

        if executor != "local":
            raise BadInput(f"--executor {executor!r}: this version runs sweeps with 'local'.")
        spec, base, points = load_sweep(sweep_file)
        _print_points(spec.name, points)
        if dry_run:
            raise typer.Exit(0)
        recipe = sweep_recipe(spec, base, points)
        from compress.pipeline import apply as run_apply

        with _sigterm_as_interrupt():
            report, run_dir = run_apply(
                recipe,
                recipe_text=yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
                out_root=out_dir,
                quick=quick,
                data_dir=str(data_dir) if data_dir else None,
                progress=progress,
                argv=sys.argv,
            )
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
    _print_summary(report)
    out.print(f"\nreport: [bold]{run_dir / 'report.md'}[/]")
    raise typer.Exit(report.exit_code)


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
