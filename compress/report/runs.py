"""Many saved runs side by side: load and check their report.json files, then one row per
variant per run (plus the baseline). The Pareto front and its plot are in `pareto`, the pages
in `compare_page`.

Axes of the trade-off, both fractions:

- quality loss (x, lower is better): relative perplexity increase, perplexity ratio - 1;
- saving (y, higher is better): serving-cost saving at the cost summary's batch size,
  1 - (variant's USD per 1M decoded tokens / its baseline's); positive = cheaper. A variant
  without a cost summary (no price in the recipe) falls back to 1 - its decode latency ratio
  (ms per token), the ratio the cost model is built from. The baseline is the point (0, 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from compress.errors import BadInput
from compress.report.load import read_report, report_path
from compress.report.markdown import _STATUS
from compress.report.schema import Comparison, Report, VariantResult

log = logging.getLogger(__name__)

QUALITY_METRIC = "wikitext2.perplexity"
LATENCY_METRIC = "decode.latency_ms_per_token"
SPEED_METRIC = "decode.tokens_per_s"
WEIGHTS_METRIC = "weights.bytes"
#: baseline.model fields that identify the model (paths differ between machines)
MODEL_FIELDS = ("spec", "sha256", "file_bytes", "gguf_file")
#: eval data fields that identify what was scored
DATA_FIELDS = ("text_sha256", "token_ids_sha256", "spec_sha256", "items", "windows", "seq_len")
#: data entries that are compression inputs, not eval data (a method may choose its own)
NOT_EVAL_DATA = ("calibration",)
_OVERRIDE = (
    "Compare runs of one baseline on the same eval data, or pass --allow-mismatch to compare "
    "them anyway (the page then lists what differs)."
)

Kind = Literal["baseline", "variant", "control"]
Key = tuple[str, str]


@dataclass(frozen=True)
class LoadedRun:
    """One run's report, where it came from, and a label unique among the compared runs."""

    path: Path
    report: Report
    label: str
    sha256: str

    @property
    def run_id(self) -> str:
        return str(self.report.run.get("id", "?"))

    @property
    def recipe_name(self) -> str:
        return str(self.report.recipe.get("name", "?"))


@dataclass(frozen=True)
class Row:
    """One variant of one run (or a baseline) in the comparison; fractions, not percent."""

    run: str  # LoadedRun.label
    run_id: str
    recipe: str
    variant: str
    kind: Kind
    status: str
    saving_basis: Literal["cost", "latency", "baseline", "none"]
    saving_batch: int | None = None  # the batch size the saving is at
    methods: tuple[str, ...] = ()
    exit_code: int | None = None
    cost_saving: float | None = None
    cost_saving_ci95: tuple[float, float] | None = None
    quality_loss: float | None = None
    quality_loss_ci95: tuple[float, float] | None = None
    decode_speed_ratio: float | None = None
    decode_speed_ratio_ci95: tuple[float, float] | None = None
    weights_ratio: float | None = None
    perplexity_ratio: float | None = None
    perplexity_ratio_ci95: tuple[float, float] | None = None
    gates: str = ""
    note: str = ""

    @property
    def key(self) -> Key:
        return (self.run, self.variant)

    @property
    def label(self) -> str:
        return "baseline" if self.kind == "baseline" else f"{self.run}/{self.variant}"

    @property
    def plotted(self) -> bool:
        return self.cost_saving is not None and self.quality_loss is not None


def _labels(reports: list[Report]) -> list[str]:
    """Recipe names; name@run id where a name repeats; a #k suffix where that repeats too."""
    names = [str(r.recipe.get("name", "?")) for r in reports]
    labels = [
        n if names.count(n) == 1 else f"{n}@{r.run.get('id', '?')}"
        for n, r in zip(names, reports, strict=True)
    ]
    out: list[str] = []
    for lab in labels:
        k = 1
        unique = lab
        while unique in out:
            k += 1
            unique = f"{lab}#{k}"
        out.append(unique)
    return out


def load_runs(paths: list[Path]) -> list[LoadedRun]:
    """Each path (a run folder or a report.json) as a LoadedRun; BadInput naming the file for
    a missing, corrupt, foreign, too old or too new report, a failed run, or a repeat."""
    if not paths:
        raise BadInput("Nothing to compare.", fix="Pass one or more run folders.")
    loaded: list[tuple[Path, Report, str]] = []
    seen: dict[str, Path] = {}
    for arg in paths:
        path = report_path(Path(arg))
        report, sha = read_report(path)
        if report.run.get("status") == "failed":
            raise BadInput(
                f"Run '{path}' failed ({report.run.get('error', 'no error recorded')}): it has "
                "no results.",
                fix="Leave it out, or re-run it.",
            )
        if sha in seen:
            raise BadInput(
                f"'{path}' is the same report as '{seen[sha]}' (given twice).",
                fix="Pass each run once.",
            )
        seen[sha] = path
        loaded.append((path, report, sha))
    labels = _labels([r for _, r, _ in loaded])
    runs = [LoadedRun(p, r, lab, s) for (p, r, s), lab in zip(loaded, labels, strict=True)]
    log.debug("loaded %d runs: %s", len(runs), ", ".join(labels))
    return runs


# -- compatibility ------------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256
    return "missing" if value is None else repr(value)


def baseline_identity(r: Report) -> tuple[Any, ...]:
    """What makes two runs' baselines the same model: its identifying fields, the compute
    dtype and the weight bytes measured."""
    weights = r.baseline.get(WEIGHTS_METRIC)
    return (
        *(r.baseline.model.get(f) for f in MODEL_FIELDS),
        r.baseline.dtype,
        weights.value if weights else None,
    )


def _baseline_diffs(a: LoadedRun, b: LoadedRun) -> list[str]:
    names = [f"model {f}" for f in MODEL_FIELDS] + ["dtype", f"{WEIGHTS_METRIC} (measured)"]
    ia, ib = baseline_identity(a.report), baseline_identity(b.report)
    return [
        f"run {b.label}'s baseline {name} is {_show(vb)}, run {a.label}'s is {_show(va)}"
        for name, va, vb in zip(names, ia, ib, strict=True)
        if va != vb
    ]


def eval_data(r: Report) -> dict[str, dict[str, Any]]:
    """The report's eval data entries by name (calibration data left out)."""
    return {str(d.get("name")): d for d in r.data if str(d.get("name")) not in NOT_EVAL_DATA}


def _data_diffs(a: LoadedRun, b: LoadedRun) -> list[str]:
    da, db = eval_data(a.report), eval_data(b.report)
    out = []
    for name in sorted(set(da) | set(db)):
        if name not in db or name not in da:
            has, lacks = (a, b) if name in da else (b, a)
            out.append(f"run {lacks.label} has no eval data '{name}' (run {has.label} has)")
            continue
        for f in DATA_FIELDS:
            va, vb = da[name].get(f), db[name].get(f)
            if va != vb:
                out.append(
                    f"eval data '{name}' {f} differ: {_show(vb)} in run {b.label} vs "
                    f"{_show(va)} in run {a.label}"
                )
    return out


def check_compatible(runs: list[LoadedRun], allow_mismatch: bool = False) -> list[str]:
    """How each run's baseline and eval data differ from the first run's. Differences raise
    BadInput unless `allow_mismatch`; then they are returned as warnings for the page."""
    if not runs:
        return []
    diffs = [d for r in runs[1:] for d in _baseline_diffs(runs[0], r) + _data_diffs(runs[0], r)]
    if diffs and not allow_mismatch:
        raise BadInput(
            "These runs do not share a baseline and eval data, so their savings and losses "
            "are not measured against the same thing: " + "; ".join(diffs) + ".",
            fix=_OVERRIDE,
        )
    for d in diffs:
        log.warning("comparing anyway: %s", d)
    return diffs


# -- rows ---------------------------------------------------------------------------------
def _ci(iv: list[float] | None) -> tuple[float, float] | None:
    ok = iv is not None and all(math.isfinite(x) for x in iv)
    return (float(iv[0]), float(iv[1])) if ok else None


def _ratio(c: Comparison | None) -> tuple[float | None, tuple[float, float] | None]:
    if c is None or c.ratio is None or not math.isfinite(c.ratio):
        return None, None
    return c.ratio, _ci(c.ratio_ci95)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _saving(v: VariantResult) -> tuple[float | None, tuple[float, float] | None, str]:
    """The variant's saving, its interval and basis: the cost summary's, else 1 - latency."""
    if v.cost is not None and _finite(v.cost.cost_saving_fraction) is not None:
        return v.cost.cost_saving_fraction, _ci(v.cost.cost_saving_ci95), "cost"
    ratio, ci = _ratio(v.comparison(LATENCY_METRIC))
    if ratio is None:
        return None, None, "none"
    return 1 - ratio, (1 - ci[1], 1 - ci[0]) if ci else None, "latency"


def _loss(v: VariantResult) -> tuple[float | None, tuple[float, float] | None]:
    if v.cost is not None and _finite(v.cost.quality_loss_fraction) is not None:
        return v.cost.quality_loss_fraction, _ci(v.cost.quality_loss_ci95)
    ratio, ci = _ratio(v.comparison(QUALITY_METRIC))
    if ratio is None:
        return None, None
    return ratio - 1, (ci[0] - 1, ci[1] - 1) if ci else None


def _saving_batch(v: VariantResult, basis: str) -> int | None:
    """The batch size of the saving: the cost summary's (1 in reports that predate it)."""
    if basis == "cost" and v.cost is not None:
        return v.cost.batch_size or 1
    return 1 if basis == "latency" else None  # decode latency per token is timed at batch 1


def _gates(v: VariantResult) -> str:
    counts = {s: sum(g.status == s for g in v.gates) for s in ("pass", "fail", "inconclusive")}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"


def _not_plotted(saving: float | None, loss: float | None) -> str:
    missing = []
    if loss is None:
        missing.append(f"no {QUALITY_METRIC} comparison")
    if saving is None:
        missing.append(f"no cost summary and no {LATENCY_METRIC} comparison")
    return f"not plotted: {' and '.join(missing)}" if missing else ""


def variant_row(run: LoadedRun, v: VariantResult) -> Row:
    """One variant of one run as a row of the comparison."""
    saving, saving_ci, basis = _saving(v)
    loss, loss_ci = _loss(v)
    speed, speed_ci = _ratio(v.comparison(SPEED_METRIC))
    ppl, ppl_ci = _ratio(v.comparison(QUALITY_METRIC))
    note = _not_plotted(saving, loss)
    if basis == "latency":
        note = "no cost summary: saving is 1 - decode latency ratio" + (f"; {note}" if note else "")
    return Row(
        run=run.label,
        run_id=run.run_id,
        recipe=run.recipe_name,
        variant=v.name,
        kind="control" if v.control else "variant",
        methods=tuple(str(s.get("method", "?")) for s in v.record.stages),
        exit_code=v.exit_code,
        status=_STATUS.get(v.exit_code, str(v.exit_code)),
        cost_saving=saving,
        cost_saving_ci95=saving_ci,
        saving_basis=basis,  # type: ignore[arg-type]
        saving_batch=_saving_batch(v, basis),
        quality_loss=loss,
        quality_loss_ci95=loss_ci,
        decode_speed_ratio=speed,
        decode_speed_ratio_ci95=speed_ci,
        weights_ratio=_ratio(v.comparison(WEIGHTS_METRIC))[0],
        perplexity_ratio=ppl,
        perplexity_ratio_ci95=ppl_ci,
        gates=_gates(v),
        note=note,
    )


def baseline_row(run: LoadedRun) -> Row:
    """The uncompressed model of `run`: (0, 0) on the plot, every ratio 1."""
    model = run.report.baseline
    return Row(
        run=run.label,
        run_id=run.run_id,
        recipe=run.recipe_name,
        variant="baseline",
        kind="baseline",
        status="reference",
        saving_basis="baseline",
        cost_saving=0.0,
        quality_loss=0.0,
        decode_speed_ratio=1.0,
        weights_ratio=1.0,
        perplexity_ratio=1.0,
        gates="n/a",
        note=f"uncompressed '{model.model.get('spec')}' ({model.dtype})",
    )


def build_rows(runs: list[LoadedRun]) -> list[Row]:
    """A baseline row for each distinct baseline (before the first run that uses it), then
    one row per variant per run, in the order given."""
    rows: list[Row] = []
    seen: set[tuple[Any, ...]] = set()
    for run in runs:
        ident = baseline_identity(run.report)
        if ident not in seen:
            seen.add(ident)
            rows.append(baseline_row(run))
        rows += [variant_row(run, v) for v in run.report.variants]
    return rows
