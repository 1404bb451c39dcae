"""Tensor math and storage for quantized weights: pure functions (grid.py), kernel-backed
modules (modules.py) and the on-disk format (serialize.py)."""
