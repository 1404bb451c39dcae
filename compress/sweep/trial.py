"""One sweep trial: one point of the space run as its own `compress apply`, the same code
whether a Ray worker or this process runs it.

A trial is a one-variant recipe (the base recipe with the point's stages), so its numbers are
those of a standalone `compress apply` of that variant: the same windows, the same paired
timing against the baseline. It runs with `shared_node=True`: its compute shares the node with
other trials and its timing holds the node alone (`compress.profile.nodelock`).

Its folder is <sweep>/trials/<point name>/: the run folder (report.json, report.md, model/)
and trial.json, the record the sweep reads back: status (done / failed / interrupted), exit
code, the key it was run for, the headline numbers. A re-run skips a trial whose trial.json is
`done` for the same key (the hash of everything that decides its result, and --quick); a failed
or interrupted one runs again. trial.json is written atomically after the run, so a trial
killed mid-way leaves no record and simply runs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD = "trial.json"
HEADLINE = (
    "wikitext2.perplexity",
    "weights.bytes",
    "decode.tokens_per_s",
    "prefill.tokens_per_s",
    "cost.usd_per_million_tokens",
)


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs, as plain data (it may run on another node)."""

    name: str  # the point's name: the variant's name and the trial folder's
    key: str  # what decides the result (the point's key + quick)
    values: dict[str, Any]
    recipe: dict[str, Any]  # the one-variant recipe, as JSON
    sweep_dir: str  # must be reachable from every node that runs trials
    quick: bool = False
    data_dir: str | None = None
    threads: int | None = None  # torch threads while computing (None: torch's default)
    progress: bool = False
    argv: list[str] = field(default_factory=list)
    rung: str = "trials"  # the folder: trials/ (full), screen/ (the cheap first rung)

    @property
    def folder(self) -> Path:
        return Path(self.sweep_dir) / self.rung / self.name


def trial_key(point_key: str, quick: bool, rung: str = "trials") -> str:
    return point_key + ("-quick" if quick else "") + ("" if rung == "trials" else f"-{rung}")


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or torn: the trial runs (again)


def finished(job: TrialJob) -> dict[str, Any] | None:
    """The trial's record when it already ran to the end for this very key."""
    rec = read_record(job.folder)
    if rec and rec.get("status") == "done" and rec.get("key") == job.key:
        return rec
    return None


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Run the trial (or return its finished record); never raises for a failed run, except
    an interruption, which is recorded and re-raised so the sweep stops resumably."""
    done = finished(job)
    if done is not None:
        return dict(done, skipped=True)
    from compress.errors import exit_code_for
    from compress.pipeline import apply
    from compress.recipe import parse_recipe

    job.folder.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"name": job.name, "key": job.key, "values": job.values}
    rec["host"] = os.uname().nodename
    t0 = time.perf_counter()
    try:
        recipe = parse_recipe(job.recipe, source=f"sweep trial {job.name}")
        with _threads(job.threads):
            report, run_dir = apply(
                recipe,
                recipe_text=json.dumps(job.recipe, indent=2),
                out_root=job.folder,
                quick=job.quick,
                data_dir=job.data_dir,
                progress=job.progress,
                argv=job.argv,
                shared_node=True,
            )
        rec.update(status="done", exit_code=report.exit_code, run_dir=_rel(run_dir, job))
        rec["headline"] = headline(report)
    except KeyboardInterrupt as e:
        rec.update(status="interrupted", exit_code=exit_code_for(e))
        _write(job, rec, t0)
        raise
    except BaseException as e:  # noqa: BLE001 - one trial's failure never stops the sweep
        log.warning("trial %s failed: %s", job.name, e)
        rec.update(status="failed", exit_code=exit_code_for(e), error=str(e))
        rec["stage"] = getattr(e, "stage", None)
    _write(job, rec, t0)
    return rec


def _write(job: TrialJob, rec: dict, t0: float) -> None:
    from compress.report.io import atomic_write_text

    rec["wall_s"] = round(time.perf_counter() - t0, 3)
    rec["job"] = {k: v for k, v in asdict(job).items() if k not in ("recipe", "argv")}
    atomic_write_text(job.folder / RECORD, json.dumps(rec, indent=2, default=str), overwrite=True)


def _rel(run_dir: Path, job: TrialJob) -> str:
    try:
        return str(Path(run_dir).relative_to(job.sweep_dir))
    except ValueError:
        return str(run_dir)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads while the trial computes; the timing subprocesses it starts
    get the node's default (they hold the node alone), not a Ray worker's OMP_NUM_THREADS."""
    import torch

    before = torch.get_num_threads()
    env = os.environ.pop("OMP_NUM_THREADS", None)
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env


def headline(report: Any) -> dict[str, Any]:
    """The variant's numbers a sweep table shows: each comparison's ratio with its interval
    and verdict, KLD, gates. Everything else is in the trial's report.json."""
    v = report.variants[0]
    out: dict[str, Any] = {"exit_code": v.exit_code}
    for c in v.comparisons:
        if c.metric in HEADLINE:
            out[c.metric] = {
                "baseline": c.baseline,
                "value": c.compressed,
                "ratio": c.ratio,
                "ratio_ci95": c.ratio_ci95,
                "verdict": c.verdict,
                "unit": c.unit,
                "higher_is_better": c.higher_is_better,
            }
    kld = v.record.get("kld.mean")
    if kld is not None:
        out["kld.mean"] = {"value": kld.value, "ci95": kld.ci95, "n": kld.n}
    out["gates"] = [{"metric": g.metric, "status": g.status} for g in v.gates]
    return out
