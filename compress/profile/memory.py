"""Memory: process RSS sampled in the background, CUDA allocator peaks, bytes of weights and files.

RSS is process-wide: to attribute it to one model, profile in a fresh process
(`compress.profile.worker`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RssSampler:
    """Peak resident set size of this process over a region: the kernel's VmHWM, reset on
    entry (Linux); where that is unavailable, RSS sampled every `interval_s` on a daemon thread.

    `start` is the RSS on entry, `peak` the largest RSS seen (sampled on entry, every interval
    and on exit), `samples` how many readings were taken.
    """

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = 0
        self.peak = 0
        self.samples = 0

    def _read(self) -> int:
        rss = self._proc.memory_info().rss
        self.samples += 1
        if rss > self.peak:
            self.peak = rss
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def __enter__(self) -> RssSampler:
        self.hwm_reset = reset_peak_rss()
        self.start = self._read()
        self.peak = self.start
        if not self.hwm_reset:  # no kernel peak counter: sample on a thread instead (a
            # sampling thread competes for the GIL and a core with what is being timed)
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()
        hwm = peak_rss_since_reset() if self.hwm_reset else None
        if hwm is not None and hwm > self.peak:
            self.peak = hwm  # a spike between two samples

    @property
    def delta(self) -> int:
        """Peak minus start, bytes."""
        return self.peak - self.start


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process: Linux clear_refs "5".
    False where that is not possible (then only the 5 ms samples count)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int | None:
    """VmHWM of this process in bytes (Linux), None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def release_freed_memory() -> None:
    """Hand memory freed while loading back to the OS (glibc malloc_trim), so RSS after
    loading is comparable between a model loaded directly and one built via a float copy."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def current_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


@dataclass
class CudaPeaks:
    peak_allocated: int | None = None
    peak_reserved: int | None = None


@contextlib.contextmanager
def cuda_memory(device: Any = None) -> Iterator[CudaPeaks]:
    """Reset torch's CUDA peak statistics, run the block, then read the peaks (bytes), of
    `device` ('cuda:N') or summed over every visible GPU ('cuda').

    Only for CUDA runs; the fields stay None when CUDA is not available.
    """
    import torch

    peaks = CudaPeaks()
    if not torch.cuda.is_available():
        yield peaks
        return
    devices = gpus(device, torch.cuda.device_count())
    for d in devices:
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    try:
        yield peaks
    finally:
        for d in devices:
            torch.cuda.synchronize(d)
        # summed over the GPUs (this process's own allocations; a model on one GPU adds 0
        # from the others)
        peaks.peak_allocated = sum(int(torch.cuda.max_memory_allocated(d)) for d in devices)
        peaks.peak_reserved = sum(int(torch.cuda.max_memory_reserved(d)) for d in devices)


def gpus(device: Any, count: int) -> list[int]:
    """The GPU indices a peak is read on: the one named ('cuda:1'), else every visible GPU
    ('cuda', None: a model may span several)."""
    text = str(device) if device is not None else "cuda"
    index = text.partition(":")[2]
    return [int(index)] if index else list(range(count))


def _leaf_tensors(t: Any) -> Iterator[Any]:
    """The plain tensors holding `t`'s data (unwraps tensor subclasses such as torchao's)."""
    try:
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    except ImportError:  # pragma: no cover - very old torch
        yield t
        return
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from _leaf_tensors(getattr(t, name))
    else:
        yield t


def _persistent_tensors(model: Any) -> Iterator[Any]:
    for _name, p in model.named_parameters(remove_duplicate=False):
        yield p
    for module in model.modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        for name, buf in module._buffers.items():
            if buf is not None and name not in skip:
                yield buf


def weight_bytes(model: Any) -> int:
    """Bytes of weights as held in memory: parameters and persistent buffers (int8 / packed
    quantized weights are usually buffers), each underlying storage counted once (tied
    embeddings share one). Non-persistent buffers (derived, e.g. rotary `inv_freq`) are skipped.
    Modules that keep weights in opaque packed objects report them via `weight_nbytes()`.
    A model streamed from disk (compress.stream) is measured block by block.
    """
    from compress.stream.model import of

    if of(model) is not None:
        return of(model).weight_bytes()
    total = 0
    for module in model.modules():  # weights held outside parameters/buffers (torch.ao packed)
        if hasattr(module, "weight_nbytes"):
            total += int(module.weight_nbytes())
    return total + storage_bytes(_persistent_tensors(model))


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages under `tensors` (tensor subclasses: their leaves), each
    counted once; a meta tensor counts its shape's bytes."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        for leaf in _leaf_tensors(t):
            if leaf.device.type == "meta":
                key = ("meta", id(leaf))
                size = leaf.numel() * leaf.element_size()
            else:
                storage = leaf.untyped_storage()
                key = (str(leaf.device), storage.data_ptr())
                size = storage.nbytes()
            if size == 0 or key in seen:
                continue
            seen.add(key)
            total += int(size)
    return total


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Size on disk of a file, or of every file under a folder (symlinks followed, each inode
    counted once, so a Hugging Face cache snapshot counts its blobs)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.is_dir():
        raise FileNotFoundError(f"no file or folder at '{p}'")
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(p, followlinks=False):
        for name in files:
            try:
                st = (Path(root) / name).stat()
            except OSError as e:
                log.warning("dir_bytes: cannot stat %s: %s", Path(root) / name, e)
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_size
    return total
