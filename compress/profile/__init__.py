"""Cost of a model as it runs: prefill/decode latency, memory, weight bytes and energy.

`profile_model(handle, cfg, quick=...)` profiles a loaded model in this process;
`profile_in_subprocess(spec, cfg, ...)` loads and profiles it in a fresh process so that the
process memory it reports belongs to that model alone. Both return
{"measurements": [plain measurement dicts, see `compress.profile.stats`], "context": {...}}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress.profile.run import profile_model
    from compress.profile.worker import profile_in_subprocess

__all__ = ["profile_model", "profile_in_subprocess"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m compress.profile.worker` does not find its own module
    # already imported by the package (runpy warns about that).
    if name == "profile_model":
        from compress.profile.run import profile_model

        return profile_model
    if name == "profile_in_subprocess":
        from compress.profile.worker import profile_in_subprocess

        return profile_in_subprocess
    raise AttributeError(f"module 'compress.profile' has no attribute {name!r}")
