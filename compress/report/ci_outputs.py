"""What a CI system reads from a gated run: JUnit XML (one test case per gate per variant), a
short link-free Markdown summary for a pull-request comment, and the exit code under a policy
for inconclusive gates.

Policy (`--inconclusive-as`): by default an inconclusive gate keeps its own exit code, 3, so a
pipeline can tell "not proven" from "proven bad". `fail` turns it into a failure (exit 1),
`pass` lets it through (exit 0); either way the JUnit file and the summary still say
"inconclusive" and name the policy that decided it, so no one mistakes it for a measured pass.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from compress.errors import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, BadInput
from compress.report.io import atomic_write_text
from compress.report.schema import GateResult, Report

Policy = Literal["fail", "pass"] | None
POLICIES = ("fail", "pass")
_STATUS_CODE = {"pass": EXIT_OK, "fail": EXIT_GATE_FAILED, "inconclusive": EXIT_INCONCLUSIVE}


def check_policy(value: str | None) -> Policy:
    if value is None or value in POLICIES:
        return value  # type: ignore[return-value]
    raise BadInput(f"--inconclusive-as '{value}': expected one of: fail, pass.")


def decided(status: str, policy: Policy) -> str:
    """The status CI acts on: an inconclusive gate becomes 'fail' or 'pass' under a policy."""
    return policy if status == "inconclusive" and policy else status


def policy_exit_code(code: int, policy: Policy) -> int:
    """A run's exit code under the policy: only 3 (inconclusive) changes; 1, 2, 4 and the
    signal codes stay what they are (a failed gate or a broken run is never excused)."""
    if code == EXIT_INCONCLUSIVE and policy:
        return _STATUS_CODE[policy]
    return code


def _observed(g: GateResult) -> str:
    if g.observed is None:
        return "n/a"
    iv = f" [95% CI {g.interval[0]:.4g}, {g.interval[1]:.4g}]" if g.interval else ""
    return f"{g.observed:.4g}{iv}"


def _case_name(g: GateResult) -> str:
    return f"{g.metric} {g.kind} {g.threshold:g}"


def junit_xml(report: Report, results: dict[str, list[GateResult]], policy: Policy) -> str:
    """JUnit XML: a test suite per variant, a test case per gate. A failed gate (or an
    inconclusive one under `fail`) is a <failure> whose message carries the observed value and
    its interval; an inconclusive gate with no policy is <skipped> (not decided); one let
    through by `pass` says so in <system-out>."""
    name = str(report.recipe.get("name", "compress"))
    root = ET.Element("testsuites", name=f"compress gates: {name}")
    totals = {"tests": 0, "failures": 0}
    for variant, gates in results.items():
        suite = ET.SubElement(root, "testsuite", name=f"{name}.{variant}")
        failures = 0
        for g in gates:
            case = ET.SubElement(
                suite, "testcase", classname=f"compress.{name}.{variant}", name=_case_name(g)
            )
            status = decided(g.status, policy)
            message = f"{g.status}: observed {_observed(g)}, threshold {g.threshold:g}"
            if status == "fail":
                failures += 1
                kind = "inconclusive" if g.status == "inconclusive" else "gate_failed"
                node = ET.SubElement(case, "failure", message=message, type=kind)
                node.text = g.explanation + (
                    " (inconclusive, failed by --inconclusive-as fail)"
                    if g.status == "inconclusive"
                    else ""
                )
            elif status == "inconclusive":  # no policy: neither proven good nor bad
                node = ET.SubElement(case, "skipped", message=message)
                node.text = g.explanation + " (not decided: exit 3 unless --inconclusive-as)"
            else:
                out = ET.SubElement(case, "system-out")
                note = " (inconclusive, passed by --inconclusive-as pass)"
                out.text = f"{message}. {g.explanation}" + (
                    note if g.status == "inconclusive" else ""
                )
        suite.set("tests", str(len(gates)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(sum(decided(g.status, policy) == "inconclusive" for g in gates)))
        totals["tests"] += len(gates)
        totals["failures"] += failures
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


_ICON = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def _md_cell(text: str) -> str:
    """Table-safe and link-free: pipes escaped, no autolinks, one line."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return text.replace("://", ":&#47;&#47;").replace("[", "\\[").replace("]", "\\]")


def summary_markdown(
    report: Report, results: dict[str, list[GateResult]], code: int, policy: Policy
) -> str:
    """A pull-request comment: the verdict, the headline per variant, every gate. No links,
    no images: it reads the same in any CI system's comment box."""
    name = str(report.recipe.get("name", "?"))
    verdict = {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE"}.get(code, f"exit {code}")
    lines = [f"### compress: {_md_cell(name)}: {verdict} (exit {code})", ""]
    model = report.baseline.model.get("spec")
    host = report.environment.get("cpu", "?")
    lines += [f"Model `{model}` on {_md_cell(str(host))}; run `{report.run.get('id')}`.", ""]
    if policy:
        lines += [f"Inconclusive gates are treated as **{policy}** (`--inconclusive-as`).", ""]
    for v in report.variants:
        if v.cost:
            lines += [f"- **{_md_cell(v.name)}**: {_md_cell(v.cost.headline)}"]
    if any(v.cost for v in report.variants):
        lines.append("")
    rows = [(variant, g) for variant, gates in results.items() for g in gates]
    if not rows:
        return "\n".join(lines + ["No gates were set: nothing to pass or fail."]) + "\n"
    lines += [
        "| variant | gate | observed [95% CI] | status |",
        "|---|---|---|---|",
    ]
    for variant, g in rows:
        status = _ICON[g.status]
        if decided(g.status, policy) != g.status:
            status += f" (counted as {policy})"
        lines.append(
            f"| {_md_cell(variant)} | {_md_cell(_case_name(g))} | {_observed(g)} | {status} |"
        )
    return "\n".join(lines) + "\n"


def check_writable(*paths: Path | None) -> None:
    """Refuse, before any work or any write, an output path that cannot be written: a folder,
    a missing or read-only parent. Raises BadInput naming the path (exit 2)."""
    for p in paths:
        if p is None:
            continue
        if p.is_dir():
            raise BadInput(f"Output path '{p}' is a folder; expected a file path.")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise BadInput(
                f"Output path '{p}': its folder '{parent}' does not exist.",
                fix="Create the folder first or pass another path.",
            )
        if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise BadInput(f"Output path '{p}' is not writable.")


def write_gate_outputs(
    report: Report,
    results: dict[str, list[GateResult]],
    code: int,
    policy: Policy,
    junit: Path | None = None,
    summary_md: Path | None = None,
) -> None:
    """Write the requested files atomically (both are checked before either is written)."""
    check_writable(junit, summary_md)
    if junit is not None:
        atomic_write_text(junit, junit_xml(report, results, policy), overwrite=True)
    if summary_md is not None:
        text = summary_markdown(report, results, code, policy)
        atomic_write_text(summary_md, text, overwrite=True)
