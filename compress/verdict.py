"""The last steps of a run: judge (records, comparisons, cost, gates, notes) and write."""

from __future__ import annotations

import hashlib
import time

from compress import __version__
from compress.data import WIKITEXT2_DEFINITION
from compress.environment import environment
from compress.handle import ModelHandle
from compress.metrics import definitions
from compress.report.io import atomic_write_text, utc_stamp
from compress.report.schema import Measurement, Report, RunRecord
from compress.steps import RunState

COST_GROUPS = ("decode.", "prefill.", "memory.", "weights.", "disk.", "energy.", "cost.")


def judge(st: RunState) -> Report:
    """Both models' records, comparisons (paired where samples are), cost, gates, exit code."""
    import torch

    from compress.cost import cost_measurements, summarize
    from compress.gate import check, exit_code
    from compress.report.compare import compare

    base, comp, recipe = st.base, st.comp, st.recipe
    torch_rt = f"torch {torch.__version__} eager on {st.device}"
    for ms, rt in ((st.base_ms, torch_rt), (st.comp_ms, st.comp_runtime or torch_rt)):
        for m in ms:
            m.setdefault("runtime", rt)
    baseline = RunRecord(
        label="baseline",
        model=base.source.describe(),
        dtype=base.dtype,
        measurements=[Measurement(**m) for m in st.base_ms],
        context=st.contexts.get("baseline", {}),
    )
    compressed = RunRecord(
        label="compressed",
        model={"spec": str(st.model_dir), "kind": "compressed"},
        dtype=comp.dtype,
        stages=comp.stages,
        measurements=[Measurement(**m) for m in st.comp_ms],
        context=st.contexts.get("compressed", {}),
    )
    for rec in (baseline, compressed):
        rec.measurements += cost_measurements(rec, recipe.cost)
    comparisons = compare(baseline, compressed, st.paired)
    gates = check(recipe.gates, comparisons, compressed)
    st.run.update(status="ok", finished_at=utc_stamp(), wall_s=time.perf_counter() - st.t0)
    recipe_dump = recipe.model_dump(mode="json")
    recipe_dump["_sha256"] = hashlib.sha256(st.recipe_text.encode()).hexdigest()
    recipe_dump["_text"] = st.recipe_text
    basis = cost_basis(comp, st.comp_runtime, st.policy)
    return Report(
        tool={"name": "compress", "version": __version__},
        run=st.run,
        recipe=recipe_dump,
        environment=environment(st.device),
        data=st.data,
        definitions=dict(definitions(), **{"wikitext2.perplexity": WIKITEXT2_DEFINITION}),
        baseline=baseline,
        compressed=compressed,
        comparisons=comparisons,
        cost=summarize(comparisons, recipe.cost, basis=basis),
        gates=gates,
        exit_code=exit_code(gates),
        notes=notes(base, comparisons, st.quick, st.data, comp.stages)
        + policy_notes(st.policy, st.contexts.get("compressed", {})),
    )


def write(st: RunState, report: Report) -> None:
    """report.json and report.md, each written atomically."""
    from compress.report.markdown import render

    atomic_write_text(st.run_dir / "report.json", report.model_dump_json(indent=2))
    atomic_write_text(st.run_dir / "report.md", render(report))


def cost_basis(comp: ModelHandle, runtime: str | None, policy: dict | None) -> dict:
    import torch

    dtype = (policy or {}).get("float_dtype") or comp.dtype
    return {
        "batch": 1,
        "runtime": runtime or f"torch {torch.__version__} eager",
        "dtype": f"float32 baseline vs {dtype} compressed",
    }


def policy_notes(policy: dict | None, context: dict) -> list[str]:
    from compress.profile.kernels import describe

    if not policy:
        return []
    return [
        f"Execution paths chosen on this host ({context.get('device_name', 'this device')}) by "
        f"timing the whole model before evaluation and profiling: {describe(policy)}. Every "
        "timing is in the report's compressed.context.kernel_policy."
    ]


def notes(base, comparisons, quick: bool, data: list[dict], stages: list[dict]) -> list[str]:
    out = []
    kernels = "; ".join(dict.fromkeys(str(s["kernel"]) for s in stages if s.get("kernel")))
    if base.source.note:
        out.append(base.source.note)
    if quick and data:
        out.append(
            f"--quick: quality scored on {data[0]['windows']} window(s) only and "
            "fewer timed repeats; intervals are wide, treat figures as indicative."
        )
    for c in comparisons:
        cost_metric = c.metric.startswith(COST_GROUPS)
        if cost_metric and c.verdict in ("worse", "no significant change"):
            speed = c.metric.startswith(("decode.", "prefill."))
            out.append(
                f"{c.metric} did NOT improve ({c.verdict}): baseline "
                f"{c.baseline:.4g}, compressed {c.compressed:.4g} {c.unit}."
                + (
                    f" The compressed model's kernels ({kernels}) are not faster than the "
                    "baseline's float matmuls on this hardware."
                    if speed and kernels
                    else ""
                )
            )
    return out
