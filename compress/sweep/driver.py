"""A sweep's run: its folder, its trials, the summary and the comparison page.

    <out>/<sweep name>/
        sweep.json          every point, skipped ones with the reason, each trial's record
                            (objective cheapest: the screen, the selection and the choice)
        screen/<point>/     objective cheapest: the quick, untimed first rung
        compare.md/.html    `compress compare` over every finished trial (Pareto front marked)
        trials/<point>/     trial.json + the trial's run folder (report.json, model/, ...)
        tune/               Ray Tune's own experiment state (executor ray)

The folder is stable (no timestamp) so a re-run finds its finished trials.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from compress.errors import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SIGINT,
    BadInput,
)
from compress.sweep import execute, search
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
        self.spec, self.points, self.base, self.quick = spec, points, base, quick
        self.data_dir = str(Path(data_dir).resolve()) if data_dir else None
        self.sweep_dir = Path(out_dir) / spec.name
        self.records: dict[str, dict[str, Any]] = {}  # full trials
        self.screen: dict[str, dict[str, Any]] = {}  # the budgeted search's first rung
        self.selection: dict[str, tuple[bool, str]] = {}
        self.chosen: tuple[str | None, str] | None = None
        self.ray: execute.RaySession | None = None  # started only when a trial must run
        self.jobs = self._jobs("trials", points if spec.objective == "all" else [])
        # the rung that runs first: every point (all), or every point's screen (cheapest)
        self.first = self.jobs if spec.objective == "all" else self._jobs("screen", points)

    def _jobs(self, rung: str, points: list) -> list:
        return plan(
            self.spec, self.base, points, self.sweep_dir, quick=self.quick,
            data_dir=self.data_dir, argv=sys.argv, rung=rung,
        )  # fmt: skip

    def execute(self, executor: str, *, address=None, cpus=None, gpus=None, memory=None) -> int:
        res = execute.default_resources(cpus, gpus, parse_bytes(memory))
        self.ray = execute.RaySession(address, res) if executor == "ray" else None
        try:
            if self.ray and any(finished(j) is None for j in self.first):
                self.ray.start()  # a bad cluster fails here, before anything is written
            try:
                self.sweep_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BadInput(
                    f"Output folder '{self.sweep_dir}' cannot be created: {e.strerror or e}.",
                    fix="Pass --out with a folder you can write to.",
                ) from None
            if self.spec.objective == "cheapest":
                return self._search(res)
            return self._finish(self._rung(self.jobs, self.records, res))
        finally:
            if self.ray:
                self.ray.close()

    def _search(self, res) -> int:
        """Screen every point, then run the candidates fully and choose (`search.py`)."""
        screen = self.first
        if self._rung(screen, self.screen, res):
            return self._finish(True)
        rows = [search.screened(j.name, self.screen.get(j.name)) for j in screen]
        cfg = self.spec.search
        self.selection = search.select_candidates(
            rows, margin=cfg.margin, max_candidates=cfg.max_candidates
        )
        picked = [p for p in self.points if self.selection.get(p.name, (False, ""))[0]]
        log.info("screen: %d of %d point(s) go to full trials", len(picked), len(screen))
        self.jobs = self._jobs("trials", picked)
        interrupted = self._rung(self.jobs, self.records, res)
        if not interrupted:
            self.chosen = search.choose({j.name: self.records.get(j.name, {}) for j in self.jobs})
            log.info("chosen: %s (%s)", *self.chosen)
        return self._finish(interrupted)

    def _rung(self, jobs: list, records: dict, res) -> bool:
        """Run the rung's unfinished trials; True when interrupted."""
        jobs = [_with_threads(j, res.cpus) if self.ray else j for j in jobs]
        pending = []
        for j in jobs:  # finished earlier for the same key: reported, not run again
            rec = finished(j)
            if rec is None:
                pending.append(j)
            else:
                records[j.name] = dict(rec, skipped=True)
        self._summary()

        def on_result(rec: dict[str, Any]) -> None:
            records[rec["name"]] = rec
            state = "finished earlier" if rec.get("skipped") else rec.get("status")
            log.info("trial %s: %s (exit %s)", rec["name"], state, rec.get("exit_code"))
            self._summary()

        try:
            if not pending:
                log.info("every trial of this rung finished earlier; nothing to run")
            elif self.ray:
                self.ray.start()
                execute.run_ray(pending, on_result, res)
            else:
                execute.run_local(pending, on_result)
        except KeyboardInterrupt:
            return True
        finally:
            _refresh(jobs, records)
            self._summary()
        return any((records.get(j.name) or {}).get("status") in (None, "interrupted") for j in jobs)

    def _summary(self) -> None:
        search_part = None
        if self.spec.objective == "cheapest":
            search_part = {
                "screen": self.screen,
                "selection": {n: {"selected": s, "why": w} for n, (s, w) in self.selection.items()},
                "chosen": None
                if self.chosen is None
                else {"name": self.chosen[0], "why": self.chosen[1]},
            }
        execute.write_summary(self.sweep_dir, self.spec, self.points, self.records, search_part)

    def _finish(self, interrupted: bool) -> int:
        self._summary()
        self._compare()
        return self.exit_code(interrupted)

    def exit_code(self, interrupted: bool) -> int:
        """130 when interrupted or a trial never ran to an end (a re-run picks those up);
        `cheapest`: 0 when a candidate passing every gate was chosen; otherwise the worst
        trial's exit code, as `compress apply` gives the worst variant's."""
        done = [self.records.get(j.name) for j in self.jobs]
        if interrupted or any(r is None or r.get("status") == "interrupted" for r in done):
            return EXIT_SIGINT
        if self.chosen is not None and self.chosen[0] is not None:
            return EXIT_OK
        if not done:
            return EXIT_GATE_FAILED  # a search whose screen left no candidate
        return worst_exit(int(r.get("exit_code", EXIT_INTERNAL)) for r in done)

    def _compare(self) -> None:
        from compress.report import compare_page

        dirs = [
            self.sweep_dir / r["run_dir"]
            for r in (self.records.get(j.name) for j in self.jobs)
            if r and r.get("status") == "done" and r.get("run_dir")
        ]
        if not dirs:
            return
        chosen = self.chosen if self.chosen and self.chosen[0] else None
        try:
            compare_page.compare(
                dirs,
                html=self.sweep_dir / "compare.html",
                md=self.sweep_dir / "compare.md",
                allow_mismatch=True,
                chosen=chosen,
            )
        except Exception as e:  # noqa: BLE001 - the trials' results stand without the page
            log.warning("the sweep's comparison page was not written: %s", e)


#: how bad each exit code is, worst first: a crash, bad input, a failed gate, inconclusive
SEVERITY = (EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK)


def worst_exit(codes) -> int:
    """The worst of the trials' exit codes, ranked as `compress apply` ranks its variants'
    (a failed gate outranks an inconclusive one) with crashes and bad input above both."""
    codes = list(codes)
    ranked = [c for c in SEVERITY if c in codes]
    return ranked[0] if ranked else max(codes, default=EXIT_OK)


def _refresh(jobs: list, records: dict) -> None:
    """Every trial's record as on disk: what a worker wrote is the truth."""
    for j in jobs:
        rec = read_record(j.folder)
        if rec is not None and rec.get("key") == j.key:
            skipped = records.get(j.name, {}).get("skipped")
            records[j.name] = dict(rec, **({"skipped": True} if skipped else {}))


def _with_threads(job, cpus: float):
    """A trial with fewer CPUs than the node computes with that many threads."""
    from dataclasses import replace

    if cpus >= execute.node_cpus():
        return job  # torch's default, as a standalone run
    return replace(job, threads=max(1, int(cpus)))
