"""Run folders and atomic writes: a run never overwrites another, a file is whole or absent."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from compress.errors import BadInput


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create reports/<name>/<UTC timestamp>/ exclusively (a suffix if that second is taken)."""
    base = Path(root) / name
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(
            f"Output folder '{base}' cannot be created: {e.strerror or e}.",
            fix="Pass --out with a folder you can write to.",
        ) from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise BadInput(
            f"Output folder '{base}' is not writable.",
            fix="Pass --out with a folder you can write to.",
        )
    stamp = utc_stamp()
    for i in range(1000):
        run = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
        except OSError as e:
            raise BadInput(
                f"Cannot create run folder '{run}': {e.strerror or e}.",
                fix="Pass --out with a folder you can write to.",
            ) from None
    raise BadInput(f"Too many runs of '{name}' in one second under {base}.")


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write to a temp file in the same folder, fsync, then rename into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite an earlier result")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
