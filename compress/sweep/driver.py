"""A sweep's run: its folder, its trials, the summary and the comparison page.

    <out>/<sweep name>/
        sweep.json          every point, skipped ones with the reason, each trial's record
        compare.md/.html    `compress compare` over every finished trial (Pareto front marked)
        trials/<point>/     trial.json + the trial's run folder (report.json, model/, ...)
        ray/                Ray Tune's own experiment state (executor ray)

The folder is stable (no timestamp) so a re-run finds its finished trials.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from compress.errors import EXIT_INTERNAL, EXIT_SIGINT, BadInput
from compress.sweep import execute
from compress.sweep.local import plan
from compress.sweep.trial import finished, read_record

log = logging.getLogger(__name__)


def parse_bytes(text: str | None) -> int | None:
    """'4GiB', '512MiB', '2G', '1000000' -> bytes (None stays None)."""
    if text is None:
        return None
    units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    units |= {"kb": 1e3, "mb": 1e6, "gb": 1e9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise BadInput(f"memory {text!r}: expected a size such as 4GiB, 512MiB or 2G.") from None
    if value <= 0:
        raise BadInput(f"memory {text!r}: must be more than 0.")
    return int(value)


class SweepRun:
    def __init__(self, spec, points, base, out_dir: Path, *, quick: bool, data_dir=None):
        self.spec, self.points = spec, points
        self.sweep_dir = Path(out_dir) / spec.name
        self.jobs = plan(
            spec, base, points, self.sweep_dir, quick=quick,
            data_dir=str(data_dir) if data_dir else None, threads=None, argv=sys.argv,
        )  # fmt: skip
        self.records: dict[str, dict[str, Any]] = {}
        for j in self.jobs:  # what earlier runs left, so the summary is whole from the start
            rec = read_record(j.folder)
            if rec is not None:
                self.records[j.name] = rec

    def on_result(self, rec: dict[str, Any]) -> None:
        self.records[rec["name"]] = rec
        state = "finished earlier" if rec.get("skipped") else rec.get("status")
        log.info("trial %s: %s (exit %s)", rec["name"], state, rec.get("exit_code"))
        execute.write_summary(self.sweep_dir, self.spec, self.points, self.records)

    def execute(self, executor: str, *, address=None, cpus=None, gpus=None, memory=None) -> int:
        res = execute.default_resources(cpus, gpus, parse_bytes(memory))
        ray = executor == "ray"
        with execute.ray_session(address, res) if ray else contextlib.nullcontext():
            return self._execute(ray, res)

    def _execute(self, ray: bool, res: execute.Resources) -> int:
        try:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(
                f"Output folder '{self.sweep_dir}' cannot be created: {e.strerror or e}.",
                fix="Pass --out with a folder you can write to.",
            ) from None
        jobs = [_with_threads(j, res.cpus) if ray else j for j in self.jobs]
        pending = []
        for j in jobs:  # finished earlier for the same key: reported, not run again
            rec = finished(j)
            if rec is None:
                pending.append(j)
            else:
                self.records[j.name] = dict(rec, skipped=True)
        execute.write_summary(self.sweep_dir, self.spec, self.points, self.records)
        interrupted = False
        try:
            if not pending:
                log.info("every trial of this sweep finished earlier; nothing to run")
            elif ray:
                execute.run_ray(pending, self.on_result, res)
            else:
                execute.run_local(pending, self.on_result)
        except KeyboardInterrupt:
            interrupted = True
        self._refresh()
        execute.write_summary(self.sweep_dir, self.spec, self.points, self.records)
        self._compare()
        return self.exit_code(interrupted)

    def _refresh(self) -> None:
        """Read every trial's record from disk: what a worker wrote is the truth."""
        for j in self.jobs:
            rec = read_record(j.folder)
            if rec is not None and rec.get("key") == j.key:
                skipped = self.records.get(j.name, {}).get("skipped")
                self.records[j.name] = dict(rec, **({"skipped": True} if skipped else {}))

    def exit_code(self, interrupted: bool) -> int:
        """The worst finished trial's exit code; 130 when interrupted or a trial never ran
        to an end (a re-run picks those up)."""
        done = [self.records.get(j.name) for j in self.jobs]
        if interrupted or any(r is None or r.get("status") == "interrupted" for r in done):
            return EXIT_SIGINT
        return max(int(r.get("exit_code", EXIT_INTERNAL)) for r in done)

    def _compare(self) -> None:
        from compress.report import compare_page, runs

        dirs = [
            self.sweep_dir / r["run_dir"]
            for r in (self.records.get(j.name) for j in self.jobs)
            if r and r.get("status") == "done" and r.get("run_dir")
        ]
        if not dirs:
            return
        try:
            loaded = runs.load_runs(dirs)
            warnings = runs.check_compatible(loaded, allow_mismatch=True)
            rows = runs.build_rows(loaded)
            compare_page.write_outputs(
                self.sweep_dir / "compare.html",
                self.sweep_dir / "compare.md",
                compare_page.render_html(loaded, rows, warnings),
                compare_page.render_markdown(loaded, rows, warnings),
            )
        except Exception as e:  # noqa: BLE001 - the trials' results stand without the page
            log.warning("the sweep's comparison page was not written: %s", e)


def _with_threads(job, cpus: float):
    """A trial with fewer CPUs than the node computes with that many threads."""
    from dataclasses import replace

    if cpus >= execute.node_cpus():
        return job  # torch's default, as a standalone run
    return replace(job, threads=max(1, int(cpus)))
