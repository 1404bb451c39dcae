"""Distillation data: the text (a named set, a local file, or sequences sampled from the
teacher), never the evaluation split; cut into non-overlapping windows, shuffled with the
seed and split train / held-out; the training order as a pure function of (seed, step)."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import BadInput

if TYPE_CHECKING:
    import torch

    from compress.handle import ModelHandle
    from compress.methods.distill import DistillConfig

log = logging.getLogger(__name__)

TEACHER_GENERATED = "teacher_generated"


@dataclass
class DistillData:
    train: torch.Tensor  # [n_train, seq_len]
    holdout: torch.Tensor  # [n_holdout, seq_len]
    provenance: dict[str, Any] = field(default_factory=dict)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _eval_split_files(data_dir: str | Path | None) -> list[tuple[Path, set[str], str]]:
    """The local WikiText-2 test files (the eval split), the sha256s of their text (the file as
    read, the rows joined as the evaluation joins them) and the joined text."""
    import json

    from compress.data import WIKITEXT2_TEST, candidate_dirs, rows_from_raw

    found = []
    for d in candidate_dirs(data_dir):
        for rel in WIKITEXT2_TEST:
            p = d / rel
            if not p.is_file():
                continue
            raw = p.read_text(encoding="utf-8")
            if p.suffix == ".jsonl":
                rows = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
            else:
                rows = rows_from_raw(raw)
            joined = "\n\n".join(rows)
            found.append((p.resolve(), {_sha(raw.encode()), _sha(joined.encode())}, joined))
    return found


def _overlaps(text: str, eval_text: str, probe: int = 512) -> bool:
    """Whether three excerpts of the eval text (at 1/4, 1/2, 3/4) appear in `text`."""
    if len(eval_text) < 8 * probe:
        return False
    cuts = [len(eval_text) * k // 4 for k in (1, 2, 3)]
    return any(eval_text[c : c + probe] in text for c in cuts)


_FIX = "Distill on wikitext2-calib (the validation split), another file, or teacher_generated."


def refuse_eval_name(dataset: str) -> None:
    """BadInput for a WikiText dataset named as a test split (before anything is loaded)."""
    name = dataset.lower()
    if "wiki" in name and "test" in Path(name).name:
        raise BadInput(f"distill: dataset '{dataset}' is the evaluation's test split.", fix=_FIX)


def refuse_eval_split(dataset: str, text: str, location: str, data_dir: str | Path | None) -> None:
    """BadInput when the distillation text is (or contains) the evaluation's test split."""
    digest = _sha(text.encode("utf-8"))
    here = Path(location).resolve() if Path(location).exists() else None
    for path, hashes, eval_text in _eval_split_files(data_dir):
        if here == path or digest in hashes or _overlaps(text, eval_text):
            raise BadInput(
                f"distill: the text of '{dataset}' ({location}) is the evaluation's test split "
                f"({path}); training on it would make the reported quality meaningless.",
                fix=_FIX,
            )


def _text_ids(handle: ModelHandle, cfg: DistillConfig, data_dir) -> tuple[Any, dict[str, Any]]:
    import torch

    from compress.calibration.calibrate import _calibration_text

    refuse_eval_name(cfg.dataset)
    try:
        text, location = _calibration_text(cfg.dataset, data_dir)
    except BadInput as e:
        raise BadInput(
            e.message.replace("calibration.dataset", "distill.dataset"), fix=e.fix
        ) from None
    refuse_eval_split(cfg.dataset, text, location, data_dir)
    ids = handle.tokenizer(text, return_attention_mask=False)["input_ids"] if text.strip() else []
    prov = {"location": location, "text_sha256": _sha(text.encode("utf-8"))}
    return torch.tensor(ids, dtype=torch.long), prov


def _generated_ids(teacher: ModelHandle, cfg: DistillConfig) -> tuple[Any, dict[str, Any]]:
    """`generated_sequences` x seq_len tokens sampled from the teacher (top-k, temperature),
    each starting at BOS; seeded, without touching the global random state."""
    import torch

    model, tok = teacher.model, teacher.tokenizer
    dev = next(model.parameters()).device
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else start
    n, new = cfg.generated_sequences, cfg.seq_len - 1
    out = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        with torch.inference_mode():
            for i in range(0, n, 4 * cfg.batch_size):
                prompt = torch.full((min(4 * cfg.batch_size, n - i), 1), start, device=dev)
                seqs = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    top_k=cfg.generate_top_k,
                    temperature=cfg.generate_temperature,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    pad_token_id=pad,
                )
                out.append(seqs[:, : cfg.seq_len].cpu())
    ids = torch.cat(out).reshape(-1)
    where = (
        f"{n} sequences sampled from the teacher (top_k {cfg.generate_top_k}, temperature "
        f"{cfg.generate_temperature}, seed {cfg.seed})"
    )
    return ids, {"location": where, "text_sha256": None}


def holdout_count(holdout: float | int, n: int) -> int:
    if isinstance(holdout, float):
        return max(1, round(holdout * n))
    return int(holdout)


def load(
    handle: ModelHandle, teacher: ModelHandle, cfg: DistillConfig, data_dir=None
) -> DistillData:
    """Tokenize once, cut non-overlapping seq_len windows, shuffle (seed), split off the
    held-out windows. BadInput when there are too few tokens for one of each."""
    import torch

    if cfg.dataset == TEACHER_GENERATED:
        ids, prov = _generated_ids(teacher, cfg)
    else:
        ids, prov = _text_ids(handle, cfg, data_dir)
    n = ids.numel() // cfg.seq_len
    n_hold = holdout_count(cfg.holdout, n) if n else 0
    if n < 2 or n_hold >= n:
        raise BadInput(
            f"distill: the data '{cfg.dataset}' has {ids.numel()} tokens, {n} windows of "
            f"seq_len {cfg.seq_len}; it needs at least one training window after {n_hold} "
            f"held out.",
            fix="Use more text, a smaller seq_len, or a smaller holdout.",
        )
    windows = ids[: n * cfg.seq_len].reshape(n, cfg.seq_len)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    windows = windows[perm]
    prov = {
        "dataset": cfg.dataset,
        **prov,
        "token_ids_sha256": _sha(windows.numpy().tobytes()),
        "tokens": int(ids.numel()),
        "seq_len": cfg.seq_len,
        "train_sequences": n - n_hold,
        "holdout_sequences": n_hold,
    }
    log.info(
        "distill data: %s, %d train / %d held-out windows", prov["location"], n - n_hold, n_hold
    )
    return DistillData(windows[n_hold:], windows[:n_hold], prov)


class BatchOrder:
    """Which training windows micro-batch m reads: epochs of a seeded permutation, so the order
    is a pure function of (seed, micro-batch index) and a resumed run sees the same batches."""

    def __init__(self, n_train: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = n_train, batch_size, seed
        self._perms: dict[int, Any] = {}

    def _perm(self, epoch: int) -> Any:
        import torch

        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}  # keep one
        return self._perms[epoch]

    def indices(self, micro_batch: int) -> list[int]:
        out = []
        for pos in range(micro_batch * self.b, (micro_batch + 1) * self.b):
            out.append(int(self._perm(pos // self.n)[pos % self.n]))
        return out


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int, grad_accum: int) -> int:
    return max(1, math.ceil(tokens / (batch_size * seq_len * grad_accum)))
