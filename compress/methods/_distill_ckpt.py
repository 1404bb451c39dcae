"""Distillation checkpoints and the best-so-far student, in the stage's scratch folder.

Layout of `root` (`<scratch>/distill/stage-<i>`)::

    LATEST                    name of the current checkpoint folder (replaced atomically)
    ckpt-00000200/            student.safetensors, optimizer.pt, state.json
    best-00000150.safetensors the student with the lowest held-out loss so far

A checkpoint folder is written under a temporary name, renamed into place, and only then
named by LATEST (`os.replace` of a small file), so an interruption at any moment leaves the
previous checkpoint intact. `state.json` carries the run's `fingerprint` (the stage config,
the stages before it, the student's starting weights, the teacher and the data token ids):
a checkpoint with another fingerprint is refused, never resumed into a different run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import BadInput

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

FORMAT = 1
LATEST = "LATEST"
SAMPLE = 1 << 18  # elements hashed per tensor (evenly strided)


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and an evenly strided sample of at most
    SAMPLE of its values: cheap on large models, and any stage that rewrites weights moves it."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)]
        if sample.is_floating_point():
            sample = sample.to(torch.float32)
        h.update(sample.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(config: dict, stages: list[dict], student: str, teacher: str, ids: str) -> str:
    """sha256 of what makes a run the same run (JSON with sorted keys)."""
    before = [{"method": s.get("method"), "config": s.get("config")} for s in stages]
    blob = {
        "format": FORMAT,
        "config": config,
        "stages_before": before,
        "student_weights": student,
        "teacher_weights": teacher,
        "token_ids_sha256": ids,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def new_curve() -> dict[str, list]:
    return {"step": [], "train_loss": [], "lr": [], "heldout_step": [], "heldout_loss": []}


@dataclass
class TrainState:
    """Where training stands (everything but tensors); JSON in each checkpoint."""

    fingerprint: str = ""
    step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    curve: dict[str, list] = field(default_factory=new_curve)
    best_step: int | None = None
    best_loss: float | None = None
    kld_before: float | None = None

    def improved(self, loss: float) -> bool:
        return math.isfinite(loss) and (self.best_loss is None or loss < self.best_loss)


class Best:
    """The student with the lowest held-out loss: a safetensors file in `root`, or CPU copies
    of its tensors in memory when there is no scratch folder."""

    def __init__(self, root: Path | None):
        self.root = root
        self._state: dict[str, torch.Tensor] | None = None

    def path(self, step: int) -> Path:
        assert self.root is not None
        return self.root / f"best-{step:08d}.safetensors"

    def keep(self, model: nn.Module, step: int) -> None:
        if self.root is None:
            self._state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
            return
        from safetensors.torch import save_model

        tmp = self.root / f".tmp-best-{step:08d}.safetensors"
        save_model(model, str(tmp))
        os.replace(tmp, self.path(step))

    def restore(self, model: nn.Module, step: int) -> None:
        if self.root is None:
            if self._state is None:
                raise RuntimeError("distill: no best student was kept")
            model.load_state_dict(self._state)
            return
        from safetensors.torch import load_model

        load_model(model, str(self.path(step)), strict=True, device=_device(model))


def _device(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


class Checkpoints:
    """Save and find this stage's checkpoints in `root` (None: no checkpoints)."""

    def __init__(self, root: Path | None):
        self.root = root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def _current(self) -> Path | None:
        if self.root is None or not (self.root / LATEST).is_file():
            return None
        return self.root / (self.root / LATEST).read_text(encoding="utf-8").strip()

    def exists(self) -> bool:
        return self._current() is not None

    def load(
        self, fp: str, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> TrainState | None:
        """Resume from the latest checkpoint (weights and optimizer loaded in place), None when
        there is none; BadInput for a checkpoint of another run or one that cannot be read."""
        import torch
        from safetensors.torch import load_model

        cur = self._current()
        if cur is None:
            return None
        fix = "Remove it or use a fresh run."
        try:
            state = TrainState(**json.loads((cur / "state.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise BadInput(f"distill: checkpoint in {cur} cannot be read ({e}).", fix=fix) from None
        if state.fingerprint != fp:
            raise BadInput(
                f"distill: checkpoint in {self.root} is from another recipe/stage config "
                "(config, earlier stages, weights or data differ).",
                fix=fix,
            )
        load_model(model, str(cur / "student.safetensors"), strict=True, device=_device(model))
        opt = torch.load(cur / "optimizer.pt", map_location=_device(model), weights_only=True)
        optimizer.load_state_dict(opt)
        log.info("distill: resuming from step %d (%s)", state.step, cur)
        return state

    def save(self, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write checkpoint `state.step` next to the current one, point LATEST at it, then
        remove older checkpoints and best files nothing refers to."""
        import torch
        from safetensors.torch import save_model

        if self.root is None:
            return
        name = f"ckpt-{state.step:08d}"
        cur = self._current()
        if cur is not None and cur.name == name:
            return  # this very step is saved already (a resumed, finished run)
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "student.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
        shutil.rmtree(self.root / name, ignore_errors=True)  # a stale one nothing points to
        os.replace(tmp, self.root / name)
        pointer = self.root / f".tmp-{LATEST}"
        pointer.write_text(name, encoding="utf-8")
        os.replace(pointer, self.root / LATEST)
        self.clean(keep_best=state.best_step)
        log.debug("distill: checkpoint %s", self.root / name)

    def clean(self, keep_best: int | None) -> None:
        """Remove temporary files, checkpoints LATEST does not name, unneeded best files."""
        if self.root is None:
            return
        cur = self._current()
        keep = {cur.name} if cur is not None else set()
        if keep_best is not None:
            keep.add(f"best-{keep_best:08d}.safetensors")
        for p in self.root.iterdir():
            if p.name.startswith((".tmp-", "ckpt-", "best-")) and p.name not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    def describe(self) -> Any:
        return str(self.root) if self.root is not None else None
