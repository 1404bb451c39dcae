"""Runtimes other than eager torch that a compressed model can execute in (ONNX Runtime...).

A runtime module offers `save(handle, folder)` and `load(folder, device) -> ModelHandle`, and
its model object answers `model(input_ids, use_cache=..., past_key_values=...)` like a
transformers causal LM (returning `.logits` and `.past_key_values`), so evaluation and
profiling run unchanged and the report names the runtime each measurement came from.
"""
