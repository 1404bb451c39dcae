"""Look at a page as a reviewer would: headless Chromium (Debian's `chromium`, driven by
Playwright) loads a report page from disk and says what it saw: console errors, uncaught
exceptions, any network request (a self-contained page makes none), every plot's drawn size
and shape count, and every number the page tags with `data-value`.

Optional: needs the `playwright` package and a Chromium binary (`COMPRESS_CHROMIUM`, else
`chromium`, `chromium-browser` or `google-chrome` on PATH); Playwright's own browser download
is not used."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: what the project's probe found necessary on a machine with a closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

_PLOTS_JS = """() => Array.from(document.querySelectorAll('figure.plot')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.dataset.plot || '', width: box.width, height: box.height,
          shapes: svg ? svg.querySelectorAll('path, rect, line, polyline, circle').length : 0,
          caption: (f.querySelector('figcaption') || {}).textContent || ''};
})"""

_VALUES_JS = """() => Array.from(document.querySelectorAll('[data-value]')).map(td => {
  const row = td.closest('tr');
  return {row: row ? Object.assign({}, row.dataset) : {}, field: td.dataset.field || '',
          value: td.dataset.value, text: td.textContent.trim()};
})"""


def chromium_path() -> str | None:
    env = os.environ.get("COMPRESS_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def available() -> str | None:
    """None when a page can be checked here, else the reason it cannot."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium binary (apt-get install chromium, or set COMPRESS_CHROMIUM)"
    return None


@contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium browser for the block."""
    why = available()
    if why:
        raise RuntimeError(f"cannot check pages in a browser: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageCheck:
    path: Path
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    body: dict[str, str] = field(default_factory=dict)
    title: str = ""

    @property
    def empty_plots(self) -> list[str]:
        small = [p for p in self.plots if min(p["width"], p["height"]) < 50 or not p["shapes"]]
        return [p["id"] for p in small]


def inspect_page(
    browser: Any, path: Path, screenshot: Path | None = None, width: int = 1280
) -> PageCheck:
    """Load `path` and collect what a check needs; optionally save a full-page screenshot."""
    seen = PageCheck(path=Path(path))
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.on(
        "console",
        lambda m: (
            seen.errors.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: seen.errors.append(f"uncaught: {e}"))
    page.on(
        "request",
        lambda r: None if r.url.startswith(("file:", "data:")) else seen.requests.append(r.url),
    )
    try:
        page.goto(Path(path).resolve().as_uri(), wait_until="load")
        seen.title = page.title()
        seen.plots = page.evaluate(_PLOTS_JS)
        seen.values = page.evaluate(_VALUES_JS)
        seen.body = page.evaluate("() => Object.assign({}, document.body.dataset)")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return seen
