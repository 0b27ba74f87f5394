"""The exporter's landing page at ``/``: what this endpoint is and where its routes lead.

Prometheus exporters conventionally answer ``/`` with a small page linking ``/metrics``; an
on-call engineer who opens the exporter's address from a page lands here.
"""

from __future__ import annotations

import html
from typing import Any

from virk_exporter._version import __version__
from virk_exporter.http.messages import Request, Response

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:44em;margin:2em auto;padding:0 1em}"
    "code{background:#f2f2f2;padding:0 .2em}pre{white-space:pre-wrap;font:14px/1.45 ui-monospace,monospace}"
)


def html_response(title: str, body: str) -> Response:
    """A 200 HTML page around ``body`` (already escaped), in the exporter's one plain style."""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head><body>
{body}
</body></html>
"""
    return Response(200, page.encode(), "text/html; charset=utf-8")


def landing_page(exporter: Any, request: Request) -> Response:
    """``GET /``: an HTML page naming the model and linking every route (relative links, so it
    also works when the routes are mounted under a prefix such as ``/virk``)."""
    model = html.escape(exporter.model)
    state = "ready" if exporter.ready else "monitoring worker starting"
    body = f"""<h1>virk-exporter {html.escape(__version__)}</h1>
<p>Flight recorder for the vision model <b>{model}</b>: {html.escape(state)}.</p>
<ul>
<li><a href="metrics">metrics</a>: Prometheus metrics (OpenMetrics with exemplars when asked)</li>
<li><a href="-/healthy">-/healthy</a> and <a href="-/ready">-/ready</a>: liveness and readiness</li>
<li><a href="runbook">runbook</a>: what to do for every alert (each alert's <code>runbook_url</code> links its section)</li>
<li><code>POST api/v1/alerts</code>: Alertmanager's webhook; a drift alert freezes the flight recorder into an incident bundle</li>
<li><code>incidents/&lt;alert fingerprint&gt;</code>: the incident bundle of an alert (the link in each page)</li>
</ul>
<p>Grafana dashboards and Prometheus rules: <code>virk-exporter stack export DIR</code>.</p>"""
    return html_response(f"virk-exporter: {exporter.model}", body)
