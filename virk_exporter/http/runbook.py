"""``GET /runbook``: docs/runbook.md served by the exporter, so every alert's ``runbook_url``
links a page that exists wherever the exporter runs (no public home is needed).

No Markdown renderer (no dependency): the file is split at its ``## `` heading lines and each
section is shown as escaped, whitespace-preserving text under an ``<h2>`` whose id is the anchor
GitHub-style renderers give the heading (``## VisionModelDrift`` -> ``#visionmodeldrift``).
"""

from __future__ import annotations

import html
import re
from importlib import resources
from typing import Any

from virk_exporter.http.landing import html_response
from virk_exporter.http.messages import Request, Response


def runbook_text() -> str:
    """The shipped runbook: package data linked to the repository's docs/runbook.md."""
    return (resources.files("virk_exporter") / "stack" / "docs" / "runbook.md").read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    """The id of a heading, as GitHub and most Markdown renderers compute it."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def sections(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(title from the ``# `` first line, text before the first ``## ``, [(heading, its text), ...])."""
    lines = text.splitlines()
    title = "Runbook"
    if lines and lines[0].startswith("# "):
        title, lines = lines[0][2:].strip(), lines[1:]
    chunks: list[tuple[str, list[str]]] = [("", [])]
    for line in lines:
        if line.startswith("## "):
            chunks.append((line[3:].strip(), []))
        else:
            chunks[-1][1].append(line)
    (_, intro), *parts = [(heading, "\n".join(body).strip()) for heading, body in chunks]
    return title, intro, parts


def render_runbook(text: str) -> Response:
    """The runbook page: a contents list, then one ``<h2 id=anchor>`` section per ``## `` heading."""
    title, intro, parts = sections(text)
    contents = "".join(f'<li><a href="#{anchor(h)}">{html.escape(h)}</a></li>' for h, _ in parts)
    body = "".join(f'\n<h2 id="{anchor(h)}">{html.escape(h)}</h2>\n<pre>{html.escape(s)}</pre>' for h, s in parts)
    return html_response(title, f"<h1>{html.escape(title)}</h1>\n<pre>{html.escape(intro)}</pre>\n<ul>{contents}</ul>{body}")


def runbook_page(exporter: Any, request: Request) -> Response:
    return render_runbook(runbook_text())
