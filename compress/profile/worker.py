"""Profile a model in a fresh Python process, so process memory belongs to that model alone.

Parent: `profile_in_subprocess(spec, cfg, quick=..., dtype=..., device=...)` starts
`python -m compress.profile.worker`, writes one JSON request to its stdin and reads one JSON
result from its stdout. The worker's stderr (logs, progress bars) is passed through to the
parent's stderr as it arrives; its last lines go into the error when the worker fails.

Worker: reads {"spec", "dtype", "device", "quick", "profile"}, loads the model with
`compress.models.load`, runs `compress.profile.run.profile_model` and prints
{"ok": true, "result": {...}} (or {"ok": false, "error": {...}} and exits 1). Anything else
that writes to stdout while it works (a library's print) is redirected to stderr so the JSON
stays clean.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from compress import progress
from compress.errors import CompressError, StageFailed, from_worker_error

if TYPE_CHECKING:
    from compress.recipe import ProfileConfig

log = logging.getLogger(__name__)

TAIL_LINES = 20
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # folder holding `compress/`


def _config_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump()
    return dict(vars(cfg))


def _pump(src: Any, dst: Any, tail: collections.deque[str]) -> None:
    """Copy the child's stderr to ours chunk by chunk (keeps tqdm's \\r updates live) and
    remember its last lines."""
    partial = b""
    while True:
        chunk = src.read1(4096) if hasattr(src, "read1") else src.read(4096)
        if not chunk:
            break
        if dst is not None:
            with contextlib.suppress(OSError, ValueError):  # stderr closed: keep draining
                dst.write(chunk.decode("utf-8", errors="replace"))
                dst.flush()
        partial += chunk
        *lines, partial = partial.replace(b"\r", b"\n").split(b"\n")
        tail.extend(ln.decode("utf-8", errors="replace") for ln in lines if ln.strip())
    if partial.strip():
        tail.append(partial.decode("utf-8", errors="replace"))


def profile_in_subprocess(
    model_spec: str,
    cfg: ProfileConfig,
    *,
    quick: bool,
    dtype: str,
    device: str,
    timeout_s: float | None = None,
    kernel_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load `model_spec` and profile it in a fresh process; returns what `profile_model`
    returns, with `context.load_seconds` added. Raises `StageFailed` (exit 4) if the worker
    crashes, the worker's own `CompressError` (e.g. `BadInput`, exit 2) if it refused."""
    request = {
        "spec": model_spec,
        "dtype": dtype,
        "device": device,
        "quick": quick,
        "profile": _config_dict(cfg),
        "kernel_policy": kernel_policy,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env[progress.MODE_ENV] = progress.mode()  # the child's stderr is a pipe: use ours
    cmd = [sys.executable, "-m", "compress.profile.worker"]
    log.info("profiling '%s' in a fresh process (%s, %s)", model_spec, dtype, device)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    out_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True),
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        try:
            proc.stdin.write(json.dumps(request).encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:  # the worker died at start-up; its stderr says why
            pass
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for t in readers:
            t.join(5)
        raise StageFailed(
            f"Profiling '{model_spec}' did not finish within {timeout_s:g} s; the worker was "
            f"stopped.{_tail_text(tail)}",
            fix="Lower profile.repeats / new_tokens / batch_sizes or raise the time limit.",
            stage="profile",
        ) from None
    except BaseException:  # e.g. Ctrl-C in the parent: do not leave the worker running
        proc.kill()
        proc.wait()
        raise
    for t in readers:
        t.join(5)
    out = b"".join(out_chunks)
    reply: dict[str, Any] | None = None
    try:
        reply = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        reply = None
    if proc.returncode == 0 and reply is not None and reply.get("ok"):
        return reply["result"]
    err = (reply or {}).get("error") or {}
    what = f"{err.get('type')}: {err.get('message')}" if err else f"exit code {proc.returncode}"
    # a user-fixable error carries its own message and fix; anything else gets the stderr tail
    detail = "" if err.get("user_error") else _tail_text(tail)
    # a BadInput in the worker stays exit 2; a crash is StageFailed (exit 4)
    raise from_worker_error(
        err,
        f"Profiling '{model_spec}' failed in the worker process ({what}).{detail}",
        stage="profile",
    )


def _tail_text(tail: collections.deque[str]) -> str:
    if not tail:
        return " The worker wrote nothing to stderr."
    return " Last worker output:\n  " + "\n  ".join(tail)


# -- the worker side ----------------------------------------------------------------------


def _profile_config(data: dict[str, Any]) -> Any:
    try:
        from compress.recipe import ProfileConfig
    except ImportError:  # recipe module unavailable: plain attributes are all run.py reads
        return SimpleNamespace(**data)
    return ProfileConfig.model_validate(data)


def _work(request: dict[str, Any]) -> dict[str, Any]:
    from compress.models import load
    from compress.profile.run import profile_model

    cfg = _profile_config(request["profile"])
    t0 = time.perf_counter()
    handle = load(request["spec"], dtype=request["dtype"], device=request["device"])
    load_seconds = time.perf_counter() - t0
    policy = request.get("kernel_policy")
    if policy:
        from compress.profile.kernels import apply_policy

        apply_policy(handle.model, policy)
    log.debug("loaded '%s' in %.1f s", request["spec"], load_seconds)
    bars = os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")
    result = profile_model(handle, cfg, quick=bool(request["quick"]), progress=bars)
    result["context"]["load_seconds"] = load_seconds
    result["context"]["kernel_policy"] = policy
    if policy and policy.get("semi_structured"):
        from compress.profile.sparse_kernels import in_use

        # what runs in this process, counted on its modules (None: every weight dense)
        result["context"]["sparse_kernel"] = in_use(handle.model) or "none: 2:4 layers dense"
    result["context"]["spec"] = request["spec"]
    source = getattr(handle, "source", None)
    if source is not None and hasattr(source, "describe"):
        result["context"]["source"] = source.describe()
    return result


def main() -> int:
    # Keep fd 1 for the JSON reply; everything else written to stdout goes to stderr.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="[profile worker] %(levelname)s %(message)s"
    )
    code = 0
    try:
        request = json.loads(sys.stdin.read())
        reply: dict[str, Any] = {"ok": True, "result": _work(request)}
    except BaseException as e:  # report everything, KeyboardInterrupt included
        if isinstance(e, CompressError):  # a user-fixable problem: the message says it all
            log.error("%s", e)
        else:
            traceback.print_exc(file=sys.stderr)
        reply = {
            "ok": False,
            "error": {
                "type": type(e).__name__,
                "message": getattr(e, "message", None) or str(e),
                "fix": getattr(e, "fix", None),
                "user_error": isinstance(e, CompressError),
            },
        }
        code = 1
    sys.stderr.flush()
    with os.fdopen(reply_fd, "w", encoding="utf-8") as f:
        json.dump(reply, f, default=_json_default)
    return code


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
