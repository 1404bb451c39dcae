"""Calibration plumbing shared by the calibrated methods: the calibration set, the one
layer-by-layer loop (with per-group Hessians / input norms) and the per-architecture layer maps."""
