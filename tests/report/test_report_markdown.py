"""compress.report.markdown: the columns are the comparison's statistic, intervals [lo, hi],
and the cost section shows the saving and the loss each with its interval."""

from __future__ import annotations

import pytest

from compress import stats
from compress.cost import cost_measurements, summarize
from compress.recipe import CostConfig
from compress.report.compare import compare
from compress.report.markdown import COLUMNS_NOTE, render
from compress.report.schema import Measurement, Report, RunRecord, VariantResult

CFG = CostConfig(usd_per_device_hour=1.0, device_name="test box")
TPS_B, TPS_C = [30.1, 28.7, 31.5, 29.9, 27.8, 30.6], [61.0, 57.1, 64.2, 59.5, 57.0, 60.9]
NLL_B = [2.0, 2.2, 1.9, 2.1, 2.3, 1.8, 2.05, 2.15]
NLL_C = [2.02, 2.23, 1.93, 2.12, 2.33, 1.82, 2.07, 2.18]


def _variant(base: RunRecord, name: str, tps_c: list[float], nll_c: list[float], **kw):
    rec = _record(name, tps_c, nll_c)
    paired = {
        "decode.tokens_per_s": stats.Paired(TPS_B, tps_c, "log"),
        "wikitext2.nll": stats.Paired(NLL_B, nll_c, "mean"),
        "wikitext2.perplexity": stats.Paired(NLL_B, nll_c, "perplexity"),
    }
    comps = compare(base, rec, paired)
    basis = {"batch": 1, "runtime": "torch eager cpu", "dtype": "float32 -> bfloat16"}
    return VariantResult(
        name=name,
        record=rec,
        comparisons=comps,
        cost=summarize(comps, CFG, basis=basis),
        gates=[],
        exit_code=0,
        **kw,
    )


def _record(label: str, tps: list[float], nll: list[float]) -> RunRecord:
    ms = [
        stats.log_measurement("decode.tokens_per_s", tps, "tokens/s", True, "per process"),
        stats.mean_measurement("wikitext2.nll", nll, "nats/token", False, "per window"),
    ]
    ppl = dict(ms[1], name="wikitext2.perplexity", unit="perplexity", ci95=None)
    ppl["value"] = 2.718281828 ** ms[1]["value"]
    rec = RunRecord(
        label=label,
        model={"spec": "tiny"},
        dtype="float32",
        measurements=[Measurement(**m) for m in (*ms, ppl)],
    )
    rec.measurements += cost_measurements(rec, CFG)
    return rec


def _report(nll_c: list[float] = NLL_C, extra: tuple = ()) -> Report:
    base = _record("baseline", TPS_B, NLL_B)
    variants = [_variant(base, "compressed", TPS_C, nll_c)]
    variants += [_variant(base, *args, **kw) for args, kw in extra]
    return Report(
        tool={"name": "compress", "version": "test"},
        run={"id": "r", "quick": True},
        recipe={"name": "tiny"},
        environment={},
        data=[],
        definitions={},
        baseline=base,
        variants=variants,
        exit_code=0,
    )


def test_columns_are_the_comparison_statistic_with_intervals():
    r = _report()
    md = render(r)
    tps = r.variants[0].comparison("decode.tokens_per_s")
    assert tps.baseline == pytest.approx(r.baseline.get("decode.tokens_per_s").value)  # GM
    row = next(line for line in md.splitlines() if line.startswith("| decode.tokens_per_s |"))
    assert f"| {tps.baseline:.3f} | {tps.compressed:.3f} |" in row
    assert f"{tps.ratio:.3f}x [{tps.ratio_ci95[0]:.3f}, {tps.ratio_ci95[1]:.3f}]" in row
    assert COLUMNS_NOTE in md
    nll = next(line for line in md.splitlines() if line.startswith("| wikitext2.nll |"))
    assert "x [" in nll  # the nll ratio now has its interval


def test_cost_section_shows_saving_loss_and_rate():
    r = _report()
    md = render(r)
    c = r.variants[0].cost
    assert c.saving_per_quality_loss is not None and c.saving_per_quality_loss_ci95
    section = md[md.index("## Cost") : md.index("## Every measurement")]
    lo, hi = c.cost_saving_ci95
    assert f"- Cost saving at batch 1: {100 * c.cost_saving_fraction:+.1f}% " in section
    assert f"[{100 * lo:+.1f}%, {100 * hi:+.1f}%] (95% CI)" in section
    assert "- Perplexity increase: " in section
    assert "- Exchange rate: " in section and "each at 97.5%" in section
    assert md.splitlines()[2].startswith("**Serving cost per token at batch 1 (torch eager cpu")


def test_cost_section_without_a_significant_loss_has_no_rate():
    r = _report(nll_c=[x + d for x, d in zip(NLL_B, [0.01, -0.01] * 4, strict=True)])
    md = render(r)
    assert r.variants[0].cost.saving_per_quality_loss is None
    assert "Exchange rate" not in md and "no measurable perplexity increase" in md
    assert "- Perplexity increase: " in md


def test_variants_get_one_table_with_a_column_each_and_their_own_sections():
    slower = [t * 0.5 for t in TPS_C]
    same = [t + (-1) ** i * 0.4 for i, t in enumerate(TPS_B)]
    r = _report(extra=((("bf16", same, NLL_B), {"control": True}), (("int4", slower, NLL_C), {})))
    md = render(r)
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| metric | unit | better | baseline |"))
    assert head.endswith("| compressed | bf16 (control) | int4 |")
    row = next(line for line in lines if line.startswith("| decode.tokens_per_s |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7  # metric, unit, better, baseline + one cell per variant
    for cell, v in zip(cells[4:], r.variants, strict=True):
        c = v.comparison("decode.tokens_per_s")
        assert cell.startswith(f"{c.compressed:.3f}; {c.ratio:.3f}x [")
        assert cell.endswith({"no significant change": "n.s."}.get(c.verdict, c.verdict))
    for v in r.variants:  # each variant keeps its own detailed section and measurements
        assert f"## Variant `{v.name}`" in md and f"| {v.name} | decode.tokens_per_s |" in md
    assert "## Variant `bf16` (control, not gated)" in md
    assert md.count("### Cost") == 3 and md.count("## Every measurement") == 1


def _divergence(token_level: bool) -> list[Measurement]:
    import numpy as np

    from compress.evaluate.divergence import token_measurements

    rng = np.random.default_rng(0)
    kl = [rng.gamma(0.5, 0.02, size=200).astype(np.float32) for _ in range(6)]
    same = [rng.random(200) < 0.95 for _ in range(6)]
    ms = [
        stats.mean_measurement("kld.mean", [float(k.mean()) for k in kl], "nats/token", False, "w"),
        stats.mean_measurement("kld.top1_agreement", [float(s.mean()) for s in same], "fraction",
                               True, "w"),
    ]  # fmt: skip
    ms += token_measurements(kl, same, resamples=200) if token_level else []
    return [Measurement(**m) for m in ms]


def test_divergence_section_reads_like_llama_cpps_kld_statistics():
    from compress.report.markdown import divergence_section, divergence_summary

    ms = _divergence(token_level=True)
    by = {m.name: m for m in ms}
    lines = divergence_section(ms)
    text = "\n".join(lines)
    line = divergence_summary(ms)
    assert line.startswith(f"KLD mean {by['kld.mean'].value:.4g} ± ")
    for part in ("median", "p90", "p95", "p99", "p99.9", "max", "same top-1"):
        assert f" {part} " in line
    p, se = by["kld.same_top1"].value, by["kld.same_top1"].stderr
    assert f"same top-1 {100 * p:.3f} ± {100 * se:.3f}% over tokens" in line  # llama.cpp's
    assert "over windows" in line and line in text and "llama-perplexity" in text
    rows = [r for r in lines if r.startswith("| kld.")]
    assert [r.split(" | ")[0][2:] for r in rows] == [
        "kld.mean", "kld.median", "kld.p90", "kld.p95", "kld.p99", "kld.p99_9", "kld.max",
        "kld.same_top1", "kld.top1_agreement",
    ]  # fmt: skip
    p99 = next(r for r in rows if r.startswith("| kld.p99 |"))
    assert "| 99.0% KLD |" in p99 and "1200 tokens (6 windows)" in p99 and "bootstrap" in p99
    assert "[" in p99  # its interval
    assert "6 windows | t over windows" in rows[0]
    assert "none (a maximum)" in rows[6] and "Same top p" in rows[7] and "do not gate" in rows[7]


def test_divergence_section_of_an_older_report_is_unchanged():
    from compress.report.markdown import divergence_section, divergence_summary

    ms = _divergence(token_level=False)
    assert divergence_summary(ms) is None
    lines = divergence_section(ms)
    assert lines[1] == "Divergence from the baseline on the same windows:"
    assert lines[3].startswith("- kld.mean: ") and lines[3].endswith("nats/token (n=6 windows)")
    assert divergence_section([]) == []
