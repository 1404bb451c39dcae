"""Run a sweep's trials: on Ray Tune (default), or one after another in this process
(`--executor local`, the same trial code without Ray, for debugging and as the reference).

The sweep folder <out>/<name>/ is stable, so a re-run finds the trials it already finished
(trial.json, keyed by the point's hash) and skips them; a failed trial is recorded and the others
go on; after every trial the summary (sweep.json) is rewritten atomically. Ray Tune schedules
the trials (a grid over the points, each trial declaring CPUs, GPUs and memory) but resuming
is ours, not `Tuner.restore`: our key survives an edited sweep file (added points, another
order), Tune's experiment state does not. Timing is serialised per node by a file lock
(`compress.profile.nodelock`), not by a Ray resource, because a Ray resource is held for a
whole trial, and the trials only need to take turns for the minutes they time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import EXIT_INTERNAL, BadInput
from compress.sweep.trial import TrialJob, run_trial

log = logging.getLogger(__name__)

SUMMARY = "sweep.json"
RAY_INSTALL = 'pip install "compress[sweep]"  (or: pip install "ray[tune]")'


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None  # bytes; None: not declared

    def as_ray(self) -> dict[str, float]:
        res = {"cpu": self.cpus, "gpu": self.gpus}
        if self.memory:
            res["memory"] = float(self.memory)
        return res


def run_local(jobs: list[TrialJob], on_result: Callable[[dict], None]) -> None:
    """Every trial in turn, in this process (an interruption stops after recording it)."""
    for job in jobs:
        on_result(run_trial(job))


class RaySession:
    """Ray started (or joined) only when a trial must run, and checked when it starts: a
    cluster that cannot be reached, or one where no trial could ever get its resources, is bad
    input (the address is checked at once; the resources when Ray starts, which the sweep
    does before writing anything when it has trials to run)."""

    def __init__(self, address: str | None, resources: Resources):
        _import_ray()
        _check_address(address)
        self.address, self.resources, self.started = address, resources, False

    def start(self) -> None:
        if self.started:
            return
        ray, _ = _import_ray()
        ray.init(
            address=self.address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
        self.started = True
        _check_resources(ray.cluster_resources(), self.resources)

    def close(self) -> None:
        if self.started:
            ray, _ = _import_ray()
            ray.shutdown()
            self.started = False


def run_ray(jobs: list[TrialJob], on_result: Callable[[dict], None], resources: Resources) -> None:
    """The trials as a Ray Tune grid (after `RaySession.start`); on_result gets each trial's
    record as Tune reports it."""
    _, tune = _import_ray()
    by_name = {j.name: j for j in jobs}
    tuner = tune.Tuner(
        tune.with_resources(_trainable(by_name), resources.as_ray()),
        param_space={"trial": tune.grid_search(list(by_name))},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name="experiment",
            storage_path=str(Path(jobs[0].sweep_dir).resolve() / "tune"),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_Relay(tune, on_result)],
            verbose=0,
        ),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:  # run_trial records a trial's own failure; these are Ray's (a worker died)
        log.warning("%d trial(s) ended with a Ray error, e.g. %s", len(errors), errors[0])


def _trainable(by_name: dict[str, TrialJob]):
    cwd = os.getcwd()  # Tune moves a trial into its own folder; relative paths mean ours

    def trial(config: dict) -> dict:
        if os.path.isdir(cwd):
            os.chdir(cwd)
        rec = run_trial(by_name[config["trial"]])
        code = rec.get("exit_code", EXIT_INTERNAL)
        return {"record": json.dumps(rec, default=str), "exit_code": code}

    return trial


def _Relay(tune, on_result):  # noqa: N802 - a class made on demand (Ray is optional)
    class Relay(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "record" in result:
                on_result(json.loads(result["record"]))

    return Relay()


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise BadInput(
            "--executor ray needs Ray Tune, which is not installed.",
            fix=f"Install it: {RAY_INSTALL}; or run with --executor local.",
        ) from None
    return ray, tune


def _check_address(address: str | None) -> None:
    """An unreachable cluster is bad input before anything is written (Ray would retry a while)."""
    if address in (None, "", "local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BadInput(f"--address {address!r}: expected host:port or ray://host:port.")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise BadInput(
            f"--address {address!r}: cannot reach the Ray cluster ({e.strerror or e}).",
            fix="Check that `ray start --head` runs there and the port is open, or leave "
            "--address out to run on this machine.",
        ) from None


def _check_resources(cluster: dict[str, float], res: Resources) -> None:
    """A trial that asks for more than the whole cluster has would wait forever."""
    asked = {"CPU": res.cpus, "GPU": res.gpus, "memory": float(res.memory or 0)}
    flags = {"CPU": "--cpus-per-trial", "GPU": "--gpus-per-trial", "memory": "--memory-per-trial"}
    for what, need in asked.items():
        have = cluster.get(what, 0.0)
        if need > have:
            shown = f"{need / 2**30:.1f} GiB" if what == "memory" else f"{need:g}"
            has = f"{have / 2**30:.1f} GiB" if what == "memory" else f"{have:g}"
            raise BadInput(
                f"each trial asks for {shown} {what}, but the Ray cluster has {has} in all: "
                "no trial could ever start.",
                fix=f"Lower {flags[what]}.",
            )


def node_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_resources(cpus: float | None, gpus: float | None, memory: int | None) -> Resources:
    """By default a trial takes a whole CPU node: torch then runs with the thread count a
    standalone `compress apply` uses, so its numbers are bit-identical to one (the thread count
    changes the order of floating-point sums). Fewer CPUs per trial run trials side by side;
    their quality numbers then differ from a standalone run in the last digits. A GPU each
    when this machine has one."""
    if gpus is None:
        try:
            import torch

            gpus = 1.0 if torch.cuda.is_available() else 0.0
        except ImportError:  # pragma: no cover
            gpus = 0.0
    return Resources(cpus=cpus or float(node_cpus()), gpus=gpus, memory=memory)


def write_summary(
    sweep_dir: Path, spec: Any, points: list, records: dict[str, dict], search: dict | None = None
) -> Path:
    """sweep.json: every point (skipped ones with their reason), its trial's record, and for a
    budgeted search the screen, the selection and the choice."""
    from compress.report.io import atomic_write_text

    rows = []
    for p in points:
        row: dict[str, Any] = {"name": p.name, "values": p.values, "point_key": p.key}
        if p.invalid is not None:
            row.update(status="skipped", reason=p.invalid)
        else:
            row.update(records.get(p.name) or {"status": "not run"})
        rows.append(row)
    data = {"sweep": spec.model_dump(mode="json"), "trials": rows}
    if search is not None:
        data["search"] = search
    path = sweep_dir / SUMMARY
    atomic_write_text(path, json.dumps(data, indent=2, default=str), overwrite=True)
    return path
