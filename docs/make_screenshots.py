"""Render a saved run's report.html and a compare page of several runs, check both in headless
Chromium (no console errors, no network requests, every plot drawn), and save screenshots for
the README:

    python docs/make_screenshots.py --report RUN_DIR --compare RUN_DIR RUN_DIR ... [--out docs/img]

Needs `pip install playwright` and Debian's `chromium` (see compress.report.browser)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from compress.report import browser, compare_page, runs
from compress.report.html import render_html
from compress.report.load import load_report


def _crop(png: Path, out: Path, height: int) -> None:
    with Image.open(png) as im:
        im.crop((0, 0, im.width, min(im.height, height))).save(out, optimize=True)


def _check(seen: browser.PageCheck) -> list[str]:
    problems = seen.errors + [f"network request: {u}" for u in seen.requests]
    return problems + [f"empty plot: {p}" for p in seen.empty_plots]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, required=True, help="run folder for report.html")
    ap.add_argument("--compare", type=Path, nargs="+", required=True, help="run folders")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    ap.add_argument("--height", type=int, default=2600, help="pixels kept from the top")
    args = ap.parse_args(argv)
    report, _ = load_report(args.report)
    loaded = runs.load_runs(args.compare)
    rows = runs.build_rows(loaded)
    pages = {
        "report": render_html(report),
        "compare": compare_page.render_html(loaded, rows, runs.check_compatible(loaded)),
    }
    problems = []
    with tempfile.TemporaryDirectory() as tmp, browser.launch() as chromium:
        for name, html in pages.items():
            page, png = Path(tmp) / f"{name}.html", Path(tmp) / f"{name}.png"
            page.write_text(html, encoding="utf-8")
            seen = browser.inspect_page(chromium, page, screenshot=png)
            problems += [f"{name}: {p}" for p in _check(seen)]
            _crop(png, args.out / f"{name}.png", args.height)
            print(f"{name}: {len(seen.plots)} plots, {len(seen.values)} tagged numbers, "
                  f"{args.out / f'{name}.png'}")  # fmt: skip
    for p in problems:
        print("PROBLEM", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
