"""`compress export RUN_DIR --format gguf|onnx`: deployable artifacts from a finished run.
Registered on the CLI's app when `compress.cli` is imported."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from compress.cli import _fail, app, out


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder (or one saved model folder)."),
    fmt: str = typer.Option(
        ...,
        "--format",
        help="gguf (llama.cpp, Ollama), compressed-tensors (vLLM, transformers) or onnx.",
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Default: RUN_DIR/exports."),
    variant: str | None = typer.Option(None, "--variant", help="Only this variant."),
    float_type: str = typer.Option(
        "f16", "--float-type", help="gguf: f16 or f32 for weights that stay float."
    ),
) -> None:
    """Write each variant's model in a format other runtimes load, with a record of what
    kept its exact codes and the error of anything re-quantised."""
    try:
        from compress.export import export_run

        records = export_run(run_dir, fmt, out_dir, variant=variant, float_type=float_type)
        t = Table(title=f"exported ({fmt})")
        for col in ("variant", "file", "MiB", "tensor types", "re-quantised", "max |dw|"):
            t.add_column(col)
        for r in records:
            types = ", ".join(f"{k} {v}" for k, v in sorted(r.get("tensor_types", {}).items()))
            err = r.get("max_abs_error")
            t.add_row(
                r["variant"],
                escape(r["path"]),
                f"{r['file_bytes'] / 2**20:.1f}",
                types or "-",
                str(len(r.get("requantized", []))) if "requantized" in r else "-",
                f"{err:.2e}" if err is not None else "-",
            )
        out.print(t)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
