"""compress.verdict notes: what the report says in words about its own numbers."""

from types import SimpleNamespace

from compress.report.schema import Comparison
from compress.verdict import run_notes, variant_notes


def _cmp(metric, verdict, base=10.0, comp=5.0, unit="tokens/s"):
    return Comparison(
        metric=metric,
        unit=unit,
        higher_is_better=True,
        baseline=base,
        compressed=comp,
        delta=comp - base,
        ratio=comp / base,
        paired=False,
        verdict=verdict,
    )


def test_slower_kernel_is_said_in_words_and_names_the_kernel():
    stages = [{"kernel": "bitsandbytes LLM.int8"}, {"kernel": "bitsandbytes LLM.int8"}]
    notes = variant_notes(
        [_cmp("decode.tokens_per_s", "worse"), _cmp("weights.bytes", "better", 10, 2, "bytes")],
        stages,
    )
    assert len(notes) == 1
    assert "decode.tokens_per_s did NOT improve (worse)" in notes[0]
    assert "(bitsandbytes LLM.int8) are not faster" in notes[0]  # named once


def test_no_note_when_faster_and_memory_notes_name_no_kernel():
    base = SimpleNamespace(source=SimpleNamespace(note="dequantized GGUF"))
    notes = run_notes(base, False, []) + variant_notes(
        [_cmp("decode.tokens_per_s", "better", 10, 30), _cmp("weights.bytes", "worse", 1, 2, "B")],
        [{"kernel": "k"}],
    )
    assert notes[0] == "dequantized GGUF"
    assert "weights.bytes did NOT improve" in notes[1] and "kernels" not in notes[1]
