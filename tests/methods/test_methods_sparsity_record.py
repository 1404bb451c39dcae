"""The pruning stage record counts what the weights hold: sparsity and pattern per layer and
overall, measured vs requested, and whether a kernel on the device runs the pattern."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.methods import run_stage
from compress.methods.magnitude import MagnitudeConfig
from compress.testing import tiny_handle


def _pruned(h=None, **cfg):
    h = h or tiny_handle(seed=1)
    return h, run_stage(h, MagnitudeConfig(**cfg))


def _decoder_linears(h) -> dict[str, nn.Linear]:
    return {
        n: m
        for n, m in h.model.named_modules()
        if isinstance(m, nn.Linear) and n.startswith("model.layers.")
    }


def test_unstructured_half_per_layer_counts():
    h, rec = _pruned(sparsity=0.5)
    d = rec.details
    lins = _decoder_linears(h)
    assert set(d["per_layer"]) == set(lins) and d["layers"] == 14
    for name, lin in lins.items():
        row = d["per_layer"][name]
        zeros = int((lin.weight == 0).sum())
        assert row["zeros"] == zeros and row["weights"] == lin.weight.numel()
        assert row["sparsity"] == zeros / lin.weight.numel()
        assert row["pattern"] == "unstructured"
    zeros = sum(int((m.weight == 0).sum()) for m in lins.values())
    total = sum(m.weight.numel() for m in lins.values())
    assert d["sparsity"] == zeros / total == pytest.approx(0.5)
    assert d["weights_pruned"] == zeros and d["target_sparsity"] == 0.5
    assert d["pattern_measured"] == "unstructured"
    assert d["sparse_kernel"].startswith("none") and "cpu" in d["sparse_kernel"]
    notes = " ".join(rec.notes)
    assert "saves no memory and no time" in notes and "no sparse kernel runs them" in notes
    assert "differs from the requested" not in notes  # 50% of 64 / 128 inputs is exact
    json.dumps(rec.model_dump(mode="json"))  # goes into the manifest as is


def test_2_4_detected_and_no_cpu_kernel():
    h, rec = _pruned(mask_structure="2:4")
    d = rec.details
    assert d["pattern_measured"] == "2:4" and d["sparsity"] == 0.5
    assert {r["pattern"] for r in d["per_layer"].values()} == {"2:4"}
    assert d["sparse_kernel"].startswith("none: not CUDA")
    notes = " ".join(rec.notes)
    assert "sparse tensor cores" in notes and "not used here" in notes
    assert "2:4" in rec.summary and "NOT" not in notes


def test_measured_differs_from_requested_is_said():
    h = tiny_handle(seed=1)
    with torch.no_grad():
        h.model.model.layers[0].mlp.up_proj.weight.zero_()  # zeros before pruning
    _, rec = _pruned(h, sparsity=0.5)
    d = rec.details
    assert d["per_layer"]["model.layers.0.mlp.up_proj"]["sparsity"] == 1.0
    assert d["sparsity"] > 0.5 + 0.005 and d["target_sparsity"] == 0.5
    note = next(n for n in rec.notes if "differs from the requested" in n)
    assert f"{100 * d['sparsity']:.1f}%" in note and "50.0%" in note


def test_sparse_kernel_said_available_where_supported(monkeypatch):
    import compress.profile.sparse_kernels as sk

    monkeypatch.setattr(sk, "semi_structured_support", lambda dev, dt=None: (True, "fake sm_90"))
    _, rec = _pruned(mask_structure="2:4")
    assert rec.details["sparse_kernel"].startswith("available: fake sm_90")
    notes = " ".join(rec.notes)
    assert "tried by the kernel choice" in notes and "saves no memory and no time" in notes
    _, rec = _pruned(sparsity=0.5)  # unstructured: no kernel anywhere
    assert rec.details["sparse_kernel"].startswith("none: no kernel on cpu runs unstructured")
