"""One pass, top to bottom: recipe -> baseline -> stages -> eval -> profile -> report -> gates."""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import shutil
import time
import traceback
from pathlib import Path

from compress import __version__, stats
from compress.checks import check_finite_output
from compress.data import WIKITEXT2_DEFINITION, token_windows, wikitext2_test
from compress.environment import environment, resolve_device
from compress.errors import EXIT_INTERNAL, failure_fields, stage_errors
from compress.handle import ModelHandle
from compress.metrics import definitions
from compress.recipe import Recipe
from compress.report.io import atomic_write_text, new_run_dir, utc_stamp
from compress.report.schema import Measurement, Report, RunRecord

log = logging.getLogger(__name__)

COST_GROUPS = ("decode.", "prefill.", "memory.", "weights.", "disk.", "energy.", "cost.")


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
) -> tuple[Report, Path]:
    """Run the recipe; write reports/<name>/<UTC>/report.{json,md} + model/. Never overwrites."""
    from compress import models

    device = resolve_device(device)
    source = models.resolve(recipe.model, pull=False)  # bad input fails before anything is written
    text = wikitext2_test(data_dir or recipe.eval.data_dir) if recipe.eval.wikitext2 else None
    run_dir = new_run_dir(out_root, recipe.name)
    run = {
        "id": run_dir.name,
        "out_dir": str(run_dir),
        "started_at": utc_stamp(),
        "quick": quick,
        "argv": argv or [],
        "status": "running",
    }
    t0 = time.perf_counter()
    try:
        report = _run(
            recipe,
            recipe_text,
            run,
            run_dir,
            device,
            quick,
            source,
            text,
            progress,
            data_dir or recipe.eval.data_dir,
        )
    except BaseException as e:
        # error text, exit code, stage (and signal, if interrupted): see errors.failure_fields
        run.update(status="failed", wall_s=time.perf_counter() - t0, **failure_fields(e))
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


def _run(
    recipe, recipe_text, run, run_dir: Path, device, quick, source, text, progress, data_dir
) -> Report:
    import torch

    from compress import models
    from compress.cost import cost_measurements, summarize
    from compress.evaluate.perplexity import evaluate_perplexity
    from compress.gate import check, exit_code
    from compress.profile.memory import dir_bytes, weight_bytes
    from compress.profile.paired import Arm, profile_paired
    from compress.quant.serialize import save_compressed
    from compress.report.compare import compare
    from compress.report.markdown import render

    t0 = time.perf_counter()
    ev = recipe.eval

    log.info("loading baseline %s", recipe.model)
    base = models.load(
        source, dtype="float32", device=device, trust_remote_code=recipe.trust_remote_code
    )
    data = []
    windows = None
    if text is not None:
        seq_len = ev.wikitext2.seq_len or min(2048, base.max_positions or 2048)
        max_w = ev.wikitext2.quick_windows if quick else ev.wikitext2.max_windows
        windows, n_tokens, ids_sha = token_windows(base.tokenizer, text.text, seq_len, max_w)
        data.append(
            dict(
                text.describe(),
                tokens_total=n_tokens,
                seq_len=seq_len,
                windows=int(windows.shape[0]),
                token_ids_sha256=ids_sha,
            )
        )

    torch.manual_seed(recipe.seed)
    comp = ModelHandle(
        model=copy.deepcopy(base.model),
        tokenizer=base.tokenizer,
        source=base.source,
        dtype=base.dtype,
        device=device,
    )
    _compress(recipe, base, comp, run_dir, device, data_dir, data)
    model_dir = save_compressed(comp, run_dir / "model")
    policy = _kernel_policy(comp, recipe.profile, device)

    base_ms: list[dict] = [
        _exact(
            "weights.bytes",
            weight_bytes(base.model),
            "bytes",
            "parameters and buffers as held in memory, shared storage once",
        )
    ]
    comp_ms: list[dict] = [
        _exact(
            "weights.bytes",
            weight_bytes(comp.model),
            "bytes",
            "parameters and buffers as held in memory, shared storage once",
        )
    ]
    paired = {}
    if windows is not None:
        res = evaluate_perplexity(
            base.model,
            comp.model,
            windows,
            device=device,
            kld=ev.kld is not None and ev.kld.enabled,
            progress=progress,
        )
        base_ms += res["baseline"]
        comp_ms += res["compressed"]
        pw = res["per_window"]
        paired = {
            "wikitext2.perplexity": (pw["nll_base"], pw["nll_comp"]),
            "wikitext2.nll": (pw["nll_base"], pw["nll_comp"]),
        }
    comp_runtime = getattr(comp.model, "runtime", None) if comp.runtime != "torch" else None
    timing_copy = _baseline_for_timing(base, run_dir) if recipe.profile.enabled else None
    del base.model, comp.model
    gc.collect()

    contexts: dict[str, dict] = {}
    if recipe.profile.enabled:
        arms = [
            Arm("baseline", str(timing_copy or recipe.model), "float32"),
            Arm("compressed", str(model_dir), comp.dtype, policy),
        ]
        try:
            with stage_errors("profile"):
                prof = profile_paired(
                    arms, recipe.profile, quick=quick, device=device, seed=recipe.seed
                )
        finally:
            if timing_copy is not None:
                shutil.rmtree(timing_copy, ignore_errors=True)
        for label, ms in (("baseline", base_ms), ("compressed", comp_ms)):
            ms += [m for m in prof["measurements"][label] if m["name"] != "weights.bytes"]
            contexts[label] = dict(prof["context"][label], timing_protocol=prof["protocol"])
        if timing_copy is not None:
            contexts["baseline"]["timed_from"] = (
                f"an fp32 safetensors copy of the loaded baseline (identical tensors), saved "
                f"once so each timing process loads it directly instead of converting "
                f"'{recipe.model}' again; deleted after profiling"
            )
        paired.update(prof["paired"]["compressed"])
    src_bytes = base.source.file_bytes
    base_ms.append(
        _exact(
            "disk.artifact_bytes",
            src_bytes,
            "bytes",
            f"size of the source weights file ({base.source.kind})",
        )
    )
    comp_ms.append(
        _exact(
            "disk.artifact_bytes",
            dir_bytes(model_dir),
            "bytes",
            "size of the saved compressed model folder",
        )
    )

    torch_rt = f"torch {torch.__version__} eager on {device}"
    for ms, rt in ((base_ms, torch_rt), (comp_ms, comp_runtime or torch_rt)):
        for m in ms:
            m.setdefault("runtime", rt)
    baseline = RunRecord(
        label="baseline",
        model=base.source.describe(),
        dtype=base.dtype,
        measurements=[Measurement(**m) for m in base_ms],
        context=contexts.get("baseline", {}),
    )
    compressed = RunRecord(
        label="compressed",
        model={"spec": str(model_dir), "kind": "compressed"},
        dtype=comp.dtype,
        stages=comp.stages,
        measurements=[Measurement(**m) for m in comp_ms],
        context=contexts.get("compressed", {}),
    )
    for rec in (baseline, compressed):
        rec.measurements += cost_measurements(rec, recipe.cost)
    comparisons = compare(baseline, compressed, paired)
    gates = check(recipe.gates, comparisons, compressed)
    code = exit_code(gates)
    run.update(status="ok", finished_at=utc_stamp(), wall_s=time.perf_counter() - t0)
    recipe_dump = recipe.model_dump(mode="json")
    recipe_dump["_sha256"] = hashlib.sha256(recipe_text.encode()).hexdigest()
    recipe_dump["_text"] = recipe_text
    report = Report(
        tool={"name": "compress", "version": __version__},
        run=run,
        recipe=recipe_dump,
        environment=environment(device),
        data=data,
        definitions=dict(definitions(), **{"wikitext2.perplexity": WIKITEXT2_DEFINITION}),
        baseline=baseline,
        compressed=compressed,
        comparisons=comparisons,
        cost=summarize(comparisons, recipe.cost, basis=_cost_basis(comp, comp_runtime, policy)),
        gates=gates,
        exit_code=code,
        notes=_notes(base, comparisons, quick, data, comp.stages)
        + _policy_notes(policy, contexts.get("compressed", {})),
    )
    atomic_write_text(run_dir / "report.json", report.model_dump_json(indent=2))
    atomic_write_text(run_dir / "report.md", render(report))
    return report


def _compress(
    recipe: Recipe,
    base: ModelHandle,
    comp: ModelHandle,
    run_dir: Path,
    device: str,
    data_dir: str | None,
    data: list[dict],
) -> None:
    """Run the recipe's stages on `comp` through the stage contract; records land in
    `comp.stages` (weights bytes around each stage measured here, not claimed)."""
    from compress.methods import METHODS, StageContext, needs_calibration
    from compress.methods.calibrate import load_calibration
    from compress.profile.memory import weight_bytes

    calib_holder: dict = {}

    def calibration():  # loaded once, on first use by a stage that needs it
        if "set" not in calib_holder:
            calib_holder["set"] = load_calibration(base.tokenizer, recipe.calibration, data_dir)
            data.append(calib_holder["set"].provenance)
        return calib_holder["set"]

    ctx = StageContext(
        model=comp,
        baseline=base,
        device=device,
        seed=recipe.seed,
        scratch_dir=run_dir / ".scratch",
        calibration_loader=calibration
        if any(needs_calibration(s) for s in recipe.stages)
        else None,
    )
    for i, stage in enumerate(recipe.stages):
        log.info("stage %d: %s", i, stage.method)
        name = f"compress: stages.{i} ({stage.method})"
        before = weight_bytes(comp.model)
        with stage_errors(name):  # a crash: exit 4 naming the stage; BadInput stays 2
            record = METHODS[stage.method].apply(ctx, stage)
            check_finite_output(comp, stage=name)  # NaN/inf output: exit 1 naming the stage
        record = record.measured(before, weight_bytes(comp.model))
        config = stage.model_dump(mode="json")
        comp.stages.append(record.model_copy(update={"config": config}).model_dump(mode="json"))
    shutil.rmtree(run_dir / ".scratch", ignore_errors=True)


def _baseline_for_timing(base: ModelHandle, run_dir: Path) -> Path | None:
    """An fp32 safetensors copy of a causal-LM baseline for the timing processes (a GGUF
    is dequantized anew by every load: ~20 s per process on 2 cores)."""
    from compress.quant.serialize import save_compressed

    if base.source.architecture != "causal_lm" or base.runtime != "torch":
        return None
    return save_compressed(base, run_dir / ".baseline-fp32")


def _kernel_policy(comp: ModelHandle, profile, device: str) -> dict | None:
    """Time the compressed model's execution paths on this host (torch runtime only)."""
    if comp.runtime != "torch":
        return None
    from compress.profile.kernels import choose_policy

    with stage_errors("kernel choice"):
        policy = choose_policy(
            comp.model,
            prompt_tokens=profile.prompt_tokens,
            batch_sizes=profile.batch_sizes,
            device=device,
        )
    return policy


def _cost_basis(comp: ModelHandle, runtime: str | None, policy: dict | None) -> dict:
    import torch

    dtype = (policy or {}).get("float_dtype") or comp.dtype
    return {
        "batch": 1,
        "runtime": runtime or f"torch {torch.__version__} eager",
        "dtype": f"float32 baseline vs {dtype} compressed",
    }


def _policy_notes(policy: dict | None, context: dict) -> list[str]:
    from compress.profile.kernels import describe

    if not policy:
        return []
    return [
        f"Execution paths chosen on this host ({context.get('device_name', 'this device')}) by "
        f"timing the whole model before evaluation and profiling: {describe(policy)}. Every "
        "timing is in the report's compressed.context.kernel_policy."
    ]


def _exact(name: str, value, unit: str, method: str) -> dict:
    if value is None:
        return stats.unavailable(name, unit, False, "size unknown for this source", method)
    return stats.exact(name, value, unit, False, method)


def _notes(base, comparisons, quick: bool, data: list[dict], stages: list[dict]) -> list[str]:
    notes = []
    kernels = "; ".join(dict.fromkeys(str(s["kernel"]) for s in stages if s.get("kernel")))
    if base.source.note:
        notes.append(base.source.note)
    if quick and data:
        notes.append(
            f"--quick: quality scored on {data[0]['windows']} window(s) only and "
            "fewer timed repeats; intervals are wide, treat figures as indicative."
        )
    for c in comparisons:
        cost_metric = c.metric.startswith(COST_GROUPS)
        if cost_metric and c.verdict in ("worse", "no significant change"):
            speed = c.metric.startswith(("decode.", "prefill."))
            notes.append(
                f"{c.metric} did NOT improve ({c.verdict}): baseline "
                f"{c.baseline:.4g}, compressed {c.compressed:.4g} {c.unit}."
                + (
                    f" The compressed model's kernels ({kernels}) are not faster than the "
                    "baseline's float matmuls on this hardware."
                    if speed and kernels
                    else ""
                )
            )
    return notes
