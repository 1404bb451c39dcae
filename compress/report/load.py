"""Reading a saved report.json: a clear BadInput (exit 2) naming the file for a missing,
truncated or corrupt, foreign, too old or too new report, or a run that failed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from compress.errors import BadInput
from compress.report.schema import (
    REPORT_SCHEMA_VERSION,
    Report,
    check_schema_version,
    parse_report,
)


def report_path(arg: Path) -> Path:
    if arg.is_dir():
        path = arg / "report.json"
        if path.is_file():
            return path
        if (arg / "failure.json").is_file():
            raise BadInput(
                f"Run '{arg}' failed (it has failure.json, no report.json): it has no results.",
                fix="Leave it out, or re-run it.",
            )
        raise BadInput(
            f"No report.json in '{arg}'.", fix="Pass run folders (reports/<name>/<stamp>/)."
        )
    if not arg.exists():
        raise BadInput(f"'{arg}' does not exist.", fix="Pass run folders or report.json files.")
    return arg


def check_version(path: Path, data: Any) -> None:
    """A BadInput unless `data` looks like a report of a schema version this tool reads."""
    keys = {"schema_version", "baseline", "run", "recipe"}
    if not isinstance(data, dict) or not keys & set(data):
        raise BadInput(
            f"'{path}' is JSON but not a compress report (expected an object with "
            "'schema_version', 'run', 'recipe', 'baseline', 'variants').",
            fix="Pass the report.json of a run.",
        )
    try:
        version = check_schema_version(data.get("schema_version", 1))
    except ValueError as e:
        raise BadInput(f"'{path}' has {e}.") from None
    if version < 3 and "compressed" not in data and "variants" not in data:
        raise BadInput(
            f"'{path}' is a schema v{version} report without 'compressed', which migrating it "
            f"to v{REPORT_SCHEMA_VERSION} needs.",
            fix="Re-run the recipe to get a current report.",
        )


def read_report(path: Path) -> tuple[Report, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInput(f"Cannot read '{path}': {e.strerror or e}.") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(
            f"'{path}' is truncated or corrupt (not valid JSON: {e}).",
            fix="Restore it from the run, or re-run the recipe.",
        ) from None
    check_version(path, data)
    try:
        report = parse_report(text)
    except ValidationError as e:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in e.errors()[:3]
        )
        more = f" (and {e.error_count() - 3} more)" if e.error_count() > 3 else ""
        raise BadInput(
            f"'{path}' does not match the report schema: {where}{more}.",
            fix="Pass an unmodified report.json written by compress.",
        ) from None
    except ValueError as e:
        raise BadInput(f"'{path}': {e}.") from None
    return report, hashlib.sha256(raw).hexdigest()


def load_report(arg: Path) -> tuple[Report, Path]:
    """One saved report (a run folder or its report.json) and the file it came from."""
    path = report_path(Path(arg))
    report, _ = read_report(path)
    return report, path
