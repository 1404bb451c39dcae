"""Methods that rewrite Linears one at a time without calibration (rtn, magnitude), or every
decoder layer after scoring (structured), on a model that may be streamed from disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def linears_layer_by_layer(
    model: Any, chosen: dict[str, Any], stage: str
) -> Iterator[tuple[str, Any]]:
    """(name, Linear) for every Linear in `chosen`, in its order. For a model streamed from
    disk (compress.stream): decoder layer by decoder layer, each layer loaded before its
    Linears are yielded and written to its scratch shard once the caller has rewritten them
    (swapped in new modules, changed weights in place), so one layer is held at a time.
    Targets outside the decoder layers are refused there (exit 2) before any layer changes.
    The caller must exhaust the iterator (the last layer is committed at the end)."""
    from compress.stream.model import of

    stream = of(model)
    if stream is None:
        yield from chosen.items()
        return
    from compress.calibration.calibrate import decoder_layers
    from compress.calibration.layerwise import by_decoder_layer
    from compress.calibration.mappings import refuse_streamed_outside

    prefix, _ = decoder_layers(model)
    refuse_streamed_outside(model, [n for n in chosen if not n.startswith(prefix + ".")], stage)
    for i, inside in sorted(by_decoder_layer(model, chosen, stage).items()):
        name = f"{prefix}.{i}"
        layer = stream.hold(name)
        for sub in inside:
            yield f"{name}.{sub}", layer.get_submodule(sub)
        stream.commit(name)


def layers_one_by_one(model: Any) -> Iterator[Any]:
    """Every decoder layer in order, for the caller to rewrite (swap in new modules, change
    weights). For a model streamed from disk: each layer loaded before it is yielded and
    written to its scratch shard when the caller asks for the next, so one is held at a time.
    The caller must exhaust the iterator (the last layer is committed at the end)."""
    from compress.calibration.calibrate import decoder_layers
    from compress.stream.model import of

    prefix, layers = decoder_layers(model)
    stream = of(model)
    if stream is None:
        yield from layers
        return
    for i in range(len(layers)):
        name = f"{prefix}.{i}"
        yield stream.hold(name)
        stream.commit(name)
