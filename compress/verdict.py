"""The last steps of a run: judge (records, comparisons, cost, gates, notes) and write."""

from __future__ import annotations

import hashlib
import logging
import time

from compress import __version__
from compress.data import WIKITEXT2_DEFINITION
from compress.environment import environment
from compress.handle import ModelHandle
from compress.metrics import definitions
from compress.placement import notes as placement_notes
from compress.report.io import atomic_write_text, utc_stamp
from compress.report.schema import Comparison, Measurement, Report, RunRecord, VariantResult
from compress.steps import RunState, VariantRun
from compress.stream.run import memory_notes

log = logging.getLogger(__name__)

COST_GROUPS = ("decode.", "prefill.", "memory.", "weights.", "disk.", "energy.", "cost.")


def judge(st: RunState) -> Report:
    """The baseline's record, then per variant: record, comparisons against the baseline
    (paired where samples are), cost, gates and exit code. The run's exit code is the worst."""
    import torch

    from compress.cost import cost_measurements
    from compress.gate import exit_code

    base, recipe = st.base, st.recipe
    torch_rt = f"torch {torch.__version__} eager on {st.device}"
    for m in st.base_ms:
        m.setdefault("runtime", torch_rt)
    baseline = RunRecord(
        label="baseline",
        model=base.source.describe(),
        dtype=base.dtype,
        measurements=[Measurement(**m) for m in st.base_ms],
        context=st.base_context,
    )
    baseline.measurements += cost_measurements(baseline, recipe.cost)
    results = [_judge_variant(st, v, baseline, torch_rt) for v in st.variants]
    if "memory" in st.run:
        from compress.stream.run import peak_rss_bytes

        st.run["memory"]["peak_rss_bytes"] = peak_rss_bytes()
    st.run.update(status="ok", finished_at=utc_stamp(), wall_s=time.perf_counter() - st.t0)
    recipe_dump = recipe.model_dump(mode="json")
    recipe_dump["_sha256"] = hashlib.sha256(st.recipe_text.encode()).hexdigest()
    recipe_dump["_text"] = st.recipe_text
    return Report(
        tool={"name": "compress", "version": __version__},
        run=st.run,
        recipe=recipe_dump,
        environment=environment(st.device),
        data=st.data,
        definitions=dict(definitions(), **{"wikitext2.perplexity": WIKITEXT2_DEFINITION}),
        baseline=baseline,
        variants=results,
        exit_code=exit_code([g for r in results for g in r.gates]),  # the worst
        notes=run_notes(base, st.quick, st.data) + memory_notes(st.run) + placement_notes(st.run),
    )


def _judge_variant(st: RunState, v: VariantRun, baseline: RunRecord, torch_rt: str):
    from compress.cost import cost_measurements, summarize
    from compress.gate import check, exit_code
    from compress.report.compare import compare

    for m in v.ms:
        m.setdefault("runtime", v.runtime or torch_rt)
    record = RunRecord(
        label=v.name,
        model={"spec": str(v.model_dir), "kind": "compressed"},
        dtype=v.handle.dtype,
        stages=v.handle.stages,
        measurements=[Measurement(**m) for m in v.ms],
        context=v.context,
    )
    record.measurements += cost_measurements(record, st.recipe.cost)
    comparisons = with_task_comparisons(compare(baseline, record, v.paired), baseline, record, v)
    gates = check(st.recipe.gates_for(v.spec), comparisons, record)
    basis = cost_basis(v.handle, v.runtime, v.policy)
    return VariantResult(
        name=v.name,
        description=v.spec.description,
        control=v.spec.control,
        record=record,
        comparisons=comparisons,
        cost=summarize(comparisons, st.recipe.cost, basis=basis),
        gates=gates,
        exit_code=exit_code(gates),
        notes=variant_notes(comparisons, v.handle.stages)
        + policy_notes(v.policy, v.context, st.recipe.profile.kernels)
        + export_notes(v.exports),
    )


def export_notes(exports: list[dict]) -> list[str]:
    """One line per `export:` format: where the file is and what it holds, or why not."""
    notes = []
    for e in exports:
        if not e["written"]:
            notes.append(f"not exported as {e['format']}: {e['reason']}")
            continue
        types = e.get("tensor_types") or e.get("schemes") or {}
        held = ", ".join(
            f"{n} x {t}" if isinstance(n, int) else f"{t}: {n}" for t, n in types.items()
        )
        notes.append(
            f"exported as {e['format']}: {e['path']} ({e['file_bytes'] / 1e6:.1f} MB"
            + (f"; {held}" if held else "")
            + ")"
        )
    return notes


def with_task_comparisons(
    comparisons: list[Comparison], baseline: RunRecord, record: RunRecord, v: VariantRun
) -> list[Comparison]:
    """Task metrics compared item by item (paired bootstrap, McNemar, flips), not as two
    independent means."""
    from compress.evaluate.item_stats import task_comparison

    out = []
    for c in comparisons:
        pair = v.task_pairs.get(c.metric)
        if pair is not None:
            b, m = baseline.get(c.metric), record.get(c.metric)
            c = task_comparison(b.model_dump(), m.model_dump(), pair)
        out.append(c)
    return out


def write(st: RunState, report: Report) -> None:
    """report.json, report.md and report.html, each written atomically, in that order: a
    page that fails to render costs the page, never the results (the error is logged and the
    run's exit code stands)."""
    from compress.report.html import render_html
    from compress.report.markdown import render

    atomic_write_text(st.run_dir / "report.json", report.model_dump_json(indent=2))
    atomic_write_text(st.run_dir / "report.md", render(report))
    try:
        page = render_html(report)
    except Exception:  # noqa: BLE001 - the page is a view; report.json holds the results
        log.exception("report.html could not be rendered; report.json and report.md are whole")
        return
    atomic_write_text(st.run_dir / "report.html", page)


def cost_basis(comp: ModelHandle, runtime: str | None, policy: dict | None) -> dict:
    import torch

    dtype = (policy or {}).get("float_dtype") or comp.dtype
    return {
        "batch": 1,
        "runtime": runtime or f"torch {torch.__version__} eager",
        "dtype": f"float32 baseline vs {dtype} compressed",
    }


def policy_notes(policy: dict | None, context: dict, kernels: str = "auto") -> list[str]:
    from compress.profile.kernels import describe

    if kernels == "fixed":
        return [
            "profile.kernels: fixed: every quantized module ran its default execution path "
            "(none was timed and chosen on this host), so the quality numbers are "
            "bit-reproducible run to run; `auto` may be faster."
        ]
    if not policy:
        return []
    return [
        f"Execution paths chosen on this host ({context.get('device_name', 'this device')}) by "
        f"timing the whole model before evaluation and profiling: {describe(policy)}. Every "
        "timing is in the report's compressed.context.kernel_policy."
    ]


def run_notes(base: ModelHandle, quick: bool, data: list[dict]) -> list[str]:
    out = []
    if base.source.note:
        out.append(base.source.note)
    if quick and data:
        out.append(
            f"--quick: quality scored on {data[0]['windows']} window(s) only and "
            "fewer timed repeats; intervals are wide, treat figures as indicative."
        )
    return out


def variant_notes(comparisons: list[Comparison], stages: list[dict]) -> list[str]:
    out = []
    kernels = "; ".join(dict.fromkeys(str(s["kernel"]) for s in stages if s.get("kernel")))
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
