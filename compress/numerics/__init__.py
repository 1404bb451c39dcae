"""Pure tensor math: quantization grids, the Hessian / Cholesky machinery GPTQ and SparseGPT
share, the AWQ scale search, SmoothQuant factors and pruning masks. No modules, hooks or I/O."""
