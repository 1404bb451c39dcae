"""The model as it moves through a run: what was loaded, from where, and what was done to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SourceKind = Literal["alias", "hub", "local_dir", "gguf", "compressed"]


@dataclass
class ModelSource:
    """Where weights come from. Built by `compress.models.resolve`, no torch needed."""

    spec: str  # what the user wrote in the recipe
    kind: SourceKind
    path: Path | None = None  # local directory (or the folder holding a .gguf)
    gguf_file: str | None = None  # file name inside `path` when the weights are GGUF
    architecture: Literal["causal_lm", "encoder"] = "causal_lm"
    note: str = ""  # e.g. "baseline is the Q4_1 GGUF dequantized to float32"
    file_bytes: int | None = None  # size of the source weights on disk
    sha256: str | None = None  # of the source weight file, when known

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": str(self.path) if self.path else None,
            "gguf_file": self.gguf_file,
            "architecture": self.architecture,
            "note": self.note,
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
        }


@dataclass
class ModelHandle:
    """A loaded model plus its provenance. Methods mutate `model` in place and append a note."""

    model: Any  # torch.nn.Module
    tokenizer: Any
    source: ModelSource
    dtype: str  # dtype the float parts compute in ("float32", "bfloat16")
    device: str
    stages: list[dict[str, Any]] = field(default_factory=list)  # what each stage did
    runtime: str = "torch"  # what executes `model`: "torch" or e.g. "onnxruntime"
    placement: list[dict[str, Any]] | None = None  # per GPU what it holds (compress.placement)

    @property
    def max_positions(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None)
