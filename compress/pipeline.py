"""One pass, top to bottom, as the steps in `compress.steps` and `compress.verdict`:

    recipe -> load (baseline, eval windows) -> compress (stages, artifact, host kernels)
           -> evaluate (quality, paired) -> profile (interleaved fresh processes)
           -> judge (comparisons, cost, gates) -> write (report.json, report.md)

`apply` sets up the run folder (never overwriting one) and, whatever fails, writes
failure.json naming the stage and the exit code before re-raising.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from compress import steps, verdict
from compress.data import wikitext2_test
from compress.environment import resolve_device
from compress.errors import EXIT_INTERNAL, failure_fields
from compress.recipe import Recipe
from compress.report.io import atomic_write_text, new_run_dir, utc_stamp
from compress.report.schema import Report
from compress.steps import RunState

log = logging.getLogger(__name__)

#: the steps before judging, in order; each reads and extends the RunState
STEPS = (steps.load, steps.compress, steps.evaluate, steps.profile, steps.export)


def apply(
    recipe: Recipe,
    *,
    recipe_text: str = "",
    out_root: str | Path = "reports",
    device: str = "auto",
    quick: bool = False,
    data_dir: str | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
    resume: str | Path | None = None,
    shared_node: bool = False,
    memory: Any = None,
) -> tuple[Report, Path]:
    """Run the recipe; write reports/<name>/<UTC>/report.{json,md,html} + model/. Never
    overwrites. `resume`: an interrupted or failed run folder of the same recipe to continue in
    (long stages such as distill pick up their last checkpoint from its scratch folder).
    `memory`: the --max-memory plan (compress.stream.budget.plan); a "stream" plan runs the
    model layer by layer from disk."""
    from compress import models

    device = resolve_device(device)
    source = models.resolve(recipe.model, pull=False)  # bad input fails before anything is written
    text = wikitext2_test(data_dir or recipe.eval.data_dir) if recipe.eval.wikitext2 else None
    earlier = check_resumable(Path(resume), recipe) if resume is not None else None
    run_dir = Path(resume) if resume is not None else new_run_dir(out_root, recipe.name)
    run = {
        "id": run_dir.name,
        "out_dir": str(run_dir),
        "started_at": utc_stamp(),
        "quick": quick,
        "argv": argv or [],
        "status": "running",
    }
    if earlier is not None:  # the earlier attempt's failure.json is kept, renamed
        run["resumed_after"] = earlier
    if memory is not None:
        run["memory"] = memory.describe()
    st = RunState(
        recipe=recipe,
        recipe_text=recipe_text,
        run=run,
        run_dir=run_dir,
        device=device,
        quick=quick,
        source=source,
        text=text,
        progress=progress,
        data_dir=data_dir or recipe.eval.data_dir,
        shared_node=shared_node,
        memory=memory,
    )
    try:
        report = _run(st)
    except BaseException as e:
        # error text, exit code, stage (and signal, if interrupted): see errors.failure_fields
        run.update(status="failed", wall_s=time.perf_counter() - st.t0, **failure_fields(e))
        if run["exit_code"] == EXIT_INTERNAL:
            run["traceback"] = traceback.format_exc()
        atomic_write_text(
            run_dir / "failure.json",
            json.dumps(
                {"run": run, "recipe": recipe.model_dump(mode="json")}, indent=2, default=str
            ),
        )
        raise
    return report, run_dir


def check_resumable(run_dir: Path, recipe: Recipe) -> dict:
    """A run folder `--resume` may continue: it exists, has no report (it did not finish) and
    its failure.json holds this very recipe. Its failure.json is renamed (kept) and its
    summary returned; BadInput otherwise, before anything changes."""
    from compress.errors import BadInput

    failure = run_dir / "failure.json"
    if (run_dir / "report.json").exists():
        raise BadInput(f"--resume {run_dir}: that run finished (it has report.json).")
    if not failure.is_file():
        raise BadInput(
            f"--resume {run_dir}: no failure.json there, so it is not an interrupted run.",
            fix="Pass the folder of a run that was interrupted or failed.",
        )
    try:
        earlier = json.loads(failure.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"--resume {run_dir}: failure.json cannot be read ({e}).") from None
    if earlier.get("recipe") != json.loads(json.dumps(recipe.model_dump(mode="json"))):
        raise BadInput(
            f"--resume {run_dir}: that run was made by another recipe (or another version "
            "of this one); its checkpoints are not mixed into this one.",
            fix="Resume with the recipe that made it, or start a fresh run.",
        )
    stamp = earlier.get("run", {}).get("started_at") or utc_stamp()
    kept = run_dir / f"failure.{stamp}.json"
    failure.rename(kept)
    for partial in (run_dir / "model", run_dir / "models"):  # an earlier attempt's artifacts
        if partial.exists():
            partial.rename(run_dir / f"{partial.name}.{stamp}.partial")
    info = earlier.get("run", {})
    return {k: info.get(k) for k in ("started_at", "stage", "exit_code", "error")} | {
        "failure_json": kept.name
    }


def _run(st: RunState) -> Report:
    from compress.stream.heap import large_frees_returned

    # a streamed run's peak is set by freed memory the heap keeps (see stream/heap.py)
    with large_frees_returned() if st.streamed else contextlib.nullcontext() as heap:
        if st.streamed:
            st.run["memory"]["large_frees_returned"] = bool(heap)
        _steps(st)
    report = verdict.judge(st)
    verdict.write(st, report)
    return report


def _steps(st: RunState) -> None:
    from compress.profile import nodelock

    for step in STEPS:
        log.debug("step %s", step.__name__)
        shared = st.shared_node and step is not steps.profile
        with nodelock.compute() if shared else contextlib.nullcontext():
            step(st)
        if "memory" in st.run:  # --max-memory: which step set the peak
            from compress.stream.run import peak_rss_bytes

            st.run["memory"].setdefault("peak_rss_after_step_bytes", {})[step.__name__] = (
                peak_rss_bytes()
            )
