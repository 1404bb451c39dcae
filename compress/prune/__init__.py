"""Pruning as pure tensor functions: masks (magnitude, Wanda) and the SparseGPT solve."""
