"""docs/ci.md's workflows: valid YAML, the structure GitHub Actions / GitLab CI need, and
every `compress` command and flag in them exists on the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from compress.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
GITHUB = DOCS / "ci" / "github-actions.yml"
GITLAB = DOCS / "ci" / "gitlab-ci.yml"
KNOWN_ACTIONS = {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}


def _cli_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    return {
        name: {opt for p in cmd.params for opt in getattr(p, "opts", []) + p.secondary_opts}
        for name, cmd in group.commands.items()
    }


def _compress_calls(script: str) -> list[list[str]]:
    joined = script.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("compress "):
            calls.append(shlex.split(line))
    return calls


def _check_calls(scripts: list[str]) -> list[list[str]]:
    options = _cli_options()
    calls = [c for s in scripts for c in _compress_calls(s)]
    assert calls, "the workflow runs no compress command"
    for argv in calls:
        command = argv[1]
        assert command in options, f"unknown command: compress {command}"
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in options[command], f"compress {command}: {arg}?"
    return calls


def test_docs_embed_the_workflow_files_verbatim():
    text = (DOCS / "ci.md").read_text()
    for path in (GITHUB, GITLAB):
        assert path.read_text().rstrip() in text, f"{path.name} differs from docs/ci.md"


def test_github_workflow_structure_and_commands():
    wf = yaml.safe_load(GITHUB.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "pull_request" in triggers
    steps = wf["jobs"]["gate"]["steps"]
    assert wf["jobs"]["gate"]["runs-on"] == "ubuntu-latest"
    for step in steps:
        assert ("uses" in step) != ("run" in step), step
        if "uses" in step:
            name, _, version = step["uses"].partition("@")
            assert name in KNOWN_ACTIONS and re.fullmatch(r"v\d+", version), step["uses"]
    calls = _check_calls([s["run"] for s in steps if "run" in s])
    apply = next(c for c in calls if c[1] == "apply")
    assert apply[2] == "$RECIPE"
    assert wf["jobs"]["gate"]["env"]["RECIPE"] == "recipes/int4.yaml"
    assert (DOCS.parent / "recipes/int4.yaml").is_file()
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    paths = upload["with"]["path"]
    for produced in ("report.html", apply[apply.index("--junit") + 1]):
        assert produced in paths
    gate_id = next(s["id"] for s in steps if "compress apply" in s.get("run", ""))
    last = steps[-1]
    assert f"steps.{gate_id}.outputs.code" in last["if"] and "exit 1" in last["run"]


def test_gitlab_job_structure_and_commands():
    job = yaml.safe_load(GITLAB.read_text())["compress-gate"]
    calls = _check_calls(job["script"])
    apply = next(c for c in calls if c[1] == "apply")
    assert (DOCS.parent / apply[2]).is_file()
    assert job["artifacts"]["reports"]["junit"] == apply[apply.index("--junit") + 1]
    assert job["artifacts"]["when"] == "always"


@pytest.mark.parametrize("flag", ["--junit", "--summary-md", "--inconclusive-as"])
def test_apply_and_gate_both_take_the_ci_flags(flag):
    options = _cli_options()
    assert flag in options["apply"] and flag in options["gate"]
