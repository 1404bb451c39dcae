"""Saved runs: `compress report` (re-render), `compress gate` (re-check, with CI outputs) and
`compress compare` (many runs side by side, Pareto front). Registered on the CLI's app when
`compress.cli` is imported."""

from __future__ import annotations

from pathlib import Path

import typer

from compress.cli import _fail, _print_gates, app, err, out
from compress.report.load import load_report

JUNIT = typer.Option(None, "--junit", help="Write JUnit XML: one test case per gate per variant.")
SUMMARY_MD = typer.Option(
    None, "--summary-md", help="Write a short link-free Markdown summary (a PR comment)."
)
INCONCLUSIVE_AS = typer.Option(
    None,
    "--inconclusive-as",
    help="CI policy for inconclusive gates: fail (exit 1) or pass (exit 0); default exit 3.",
)


def emit_gate_outputs(report, results, code: int, junit, summary_md, policy) -> int:
    """Write the CI files asked for and return the exit code under the policy."""
    from compress.report.ci_outputs import policy_exit_code, write_gate_outputs

    final = policy_exit_code(code, policy)
    write_gate_outputs(report, results, final, policy, junit=junit, summary_md=summary_md)
    for label, path in (("junit", junit), ("summary", summary_md)):
        if path is not None:
            out.print(f"{label}: {path}", highlight=False)
    if final != code:
        out.print(f"exit code {final} (inconclusive counted as {policy}; unmapped {code})")
    return final


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (or its report.json)"),
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML page here."),
) -> None:
    """Re-render a saved run's report.md from its report.json and print it (--html: and write
    its self-contained HTML page)."""
    try:
        from compress.report.ci_outputs import check_writable
        from compress.report.markdown import render

        check_writable(html)
        rep, _ = load_report(run_dir)
        if html is not None:
            from compress.report.html import render_html
            from compress.report.io import atomic_write_text

            atomic_write_text(html, render_html(rep), overwrite=True)
        out.print(render(rep), markup=False, highlight=False, soft_wrap=True)
        if html is not None:
            err.print(f"html: {html}", highlight=False)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)


def _recheck(rep, where: Path, gates: Path | None) -> dict:
    from compress.gate import check
    from compress.recipe import parse_gates, parse_recipe

    recipe = parse_recipe(
        {k: v for k, v in rep.recipe.items() if not k.startswith("_")},
        source=f"{where} (its recipe)",
    )
    extra = parse_gates(gates) if gates else None
    specs = {v.name: v for v in recipe.variant_list}
    results = {}
    for v in rep.variants:
        spec = specs.get(v.name)
        if extra is not None:
            gate_list = [] if v.control else extra
        else:
            gate_list = recipe.gates_for(spec) if spec else recipe.gates
        results[v.name] = check(gate_list, v.comparisons, v.record)
    return results


@app.command()
def gate(
    report_json: Path = typer.Argument(..., help="report.json (or its run folder)"),
    gates: Path | None = typer.Option(
        None, "--gates", help="YAML with `gates:` (else the recipe's)"
    ),
    junit: Path | None = JUNIT,
    summary_md: Path | None = SUMMARY_MD,
    inconclusive_as: str | None = INCONCLUSIVE_AS,
) -> None:
    """Re-check a saved report against gates; exit 0 pass, 1 fail, 3 inconclusive, 2 bad input.
    Each variant that is not a control is checked; the exit code is the worst."""
    try:
        from compress.gate import exit_code
        from compress.report.ci_outputs import check_policy, check_writable

        policy = check_policy(inconclusive_as)
        check_writable(junit, summary_md)
        rep, where = load_report(report_json)
        results = _recheck(rep, where, gates)
        code = exit_code([g for rs in results.values() for g in rs])
        for name, rs in results.items():
            title = "gates" if len(results) == 1 else f"gates: {name}"
            _print_gates(rs, exit_code(rs), title=title)
        if len(results) > 1:
            out.print(f"exit code {code} (the worst of the variants')")
        code = emit_gate_outputs(rep, results, code, junit, summary_md, policy)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
    raise typer.Exit(code)


@app.command()
def compare(
    runs_arg: list[Path] = typer.Argument(
        ..., metavar="RUN_DIR...", help="Run folders (or their report.json files)"
    ),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML page here."),
    md: Path | None = typer.Option(None, "--md", help="Write the Markdown table here."),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Compare runs whose baselines or eval data differ (the page says how).",
    ),
) -> None:
    """Many runs side by side: every variant's cost saving against its quality loss, with
    95% intervals, the Pareto-optimal variants marked. Runs must share the baseline model and
    the eval data, unless --allow-mismatch."""
    try:
        from compress.report import compare_page

        md_text, warnings = compare_page.compare(
            runs_arg, html=html, md=md, allow_mismatch=allow_mismatch
        )
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, typer.Exit):
            raise
        _fail(e)
    for w in warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    out.print(md_text, markup=False, highlight=False, soft_wrap=True)
