"""`compress evals` (list the tasks) and `compress eval` (run tasks on one model, no recipe).
Registered on the CLI's app when `compress.cli` is imported."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from compress.cli import _fail, app, out
from compress.errors import BadInput

_INCLUDE = typer.Option(None, "--include-path", help="A folder of your own task YAMLs.")
_DATA = typer.Option(None, "--data-dir", help="Local data (else $COMPRESS_DATA_DIR, ../shared).")


@app.command()
def evals(
    include_path: list[Path] | None = _INCLUDE,
    data_dir: Path | None = _DATA,
) -> None:
    """List eval tasks: name, type, items, metrics, where the data is found."""
    try:
        from compress.evaluate.docs import load_docs
        from compress.evaluate.taskspec import load_specs

        t = Table(title="eval tasks (evals/ and --include-path)")
        for col in ("task", "type", "items", "metrics", "data", "spec"):
            t.add_column(col)
        for name, ls in sorted(load_specs(include_path).items()):
            try:
                data = load_docs(ls.spec, data_dir)
                items, where = str(len(data.items)), data.location
            except Exception as e:  # noqa: BLE001 - listed with the reason, not fatal
                items, where = "-", f"not available: {e}"
            metrics = ", ".join(ls.spec.metric_names)
            t.add_row(name, ls.spec.output_type, items, metrics, escape(where), str(ls.path))
        out.print(t)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)


@app.command("eval")
def eval_(
    model: str = typer.Argument(..., help="Alias, local folder, .gguf or a compress model/"),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated task names."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N items per task."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    include_path: list[Path] | None = _INCLUDE,
    data_dir: Path | None = _DATA,
    output: Path | None = typer.Option(None, "--output", help="Per-task results as JSON."),
    max_length: int | None = typer.Option(
        None, "--max-length", min=2, help="Context limit in tokens (default: the model's)."
    ),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached results."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run eval tasks on one model, without a recipe (accuracy with 95% intervals)."""
    try:
        from compress import models
        from compress.environment import resolve_device
        from compress.evaluate.tasks import run_task
        from compress.evaluate.taskspec import get_specs
        from compress.report.io import atomic_write_text

        names = [n.strip() for n in tasks.split(",") if n.strip()]
        specs = get_specs(names, include_path)  # unknown task: exit 2 before loading a model
        if output is not None and output.exists():
            raise BadInput(
                f"--output '{output}' exists; an earlier result is never overwritten.",
                fix="Pass a new file name.",
            )
        dev = resolve_device(device)
        handle = models.load(models.resolve(model), dtype="float32", device=dev)
        results = [
            run_task(ls, {"model": handle.model}, handle.tokenizer, data_dir=data_dir,
                     limit=limit, batch_size=batch_size, device=dev, progress=progress,
                     max_length=max_length, cache=cache)
            for ls in specs
        ]  # fmt: skip
        if output is not None:
            slim = [{k: v for k, v in r.items() if k != "paired"} for r in results]
            doc = {"model": model, "device": dev, "limit": limit, "tasks": slim}
            atomic_write_text(output, json.dumps(doc, indent=2))
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
    _print_results(results)


def _print_results(results: list[dict]) -> None:
    t = Table(title="eval results (zero-shot)")
    width = max((len(m["name"]) for r in results for m in r["measurements"]["model"]), default=6)
    t.add_column("metric", no_wrap=True, min_width=width)
    for col in ("unit", "value", "95% CI", "stderr", "n", "seconds"):
        t.add_column(col, no_wrap=col in ("value", "95% CI"))
    for r in results:
        for m in r["measurements"]["model"]:
            lo, hi = m["ci95"]
            se = "n/a" if m["stderr"] is None else f"{m['stderr']:.4f}"
            secs = f"{r['seconds']['model']:.1f}" + (" (cached)" if r["cached"] else "")
            t.add_row(
                m["name"], m["unit"], f"{m['value']:.4f}", f"[{lo:.4f}, {hi:.4f}]", se,
                str(m["n"]), secs,
            )  # fmt: skip
    out.print(t)
