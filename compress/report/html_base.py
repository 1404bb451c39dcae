"""Shared pieces of the HTML pages: a sandboxed Jinja2 environment over the packaged
templates, and matplotlib figures as inline SVG (no network, no files beside the page)."""

from __future__ import annotations

import io
import re
from functools import lru_cache
from typing import Any

_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)


@lru_cache(maxsize=1)
def environment():
    """Jinja2 in its sandbox, HTML autoescaped, templates from compress/report/templates."""
    from jinja2 import PackageLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        loader=PackageLoader("compress.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)


def pyplot():
    """matplotlib.pyplot on the Agg backend (headless), with deterministic SVG output."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.hashsalt"] = "compress"  # stable element ids across runs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, small
    import matplotlib.pyplot as plt

    return plt


def figure_svg(fig) -> str:
    """The figure as an inline <svg> element (the XML prologue, DOCTYPE and metadata dropped);
    the figure is closed so long runs do not accumulate open figures."""
    buf = io.StringIO()
    try:
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        pyplot().close(fig)
    text = buf.getvalue()
    # matplotlib's RDF <metadata> names web sites (matplotlib.org, purl.org): a page that
    # links nowhere drops it
    return _METADATA.sub("", text[text.index("<svg") :], count=1)
