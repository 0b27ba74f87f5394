"""``POST /api/v1/rebase``: learn a new reference after a camera was re-aimed on purpose.

Destructive (the old reference stops counting), so it always needs the webhook's credentials
(``webhook_token`` or ``webhook_basic_auth``); with none configured the route is refused.
Body: ``{"source": "cam-1"}`` (or ``?source=cam-1``); no source rebases every source.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from virk_exporter.incidents.http import _credentials, _error, _json
from virk_exporter.incidents.webhook import WebhookError, check_credentials
from virk_exporter.http.messages import Request, Response

log = logging.getLogger("virk_exporter")


def handle_rebase(exporter: Any, request: Request) -> Response:
    token, basic = _credentials(exporter)
    if token is None and basic is None:
        return _json(403, {"error": "rebase over HTTP needs credentials: set webhook_token (VIRK_WEBHOOK_TOKEN) or webhook_basic_auth"})
    try:
        check_credentials(request.headers, token, basic)
        source = _requested_source(request)
    except WebhookError as error:
        return _error(error)
    log.warning("rebase requested over HTTP for %s", "every source" if source is None else f"source {source!r}")
    return _json(200, exporter.rebase(source))


def _requested_source(request: Request) -> str | None:
    query = request.query.get("source", [])
    if query:
        return query[0]
    if not request.body.strip():
        return None
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError) as problem:
        raise WebhookError(400, f"body is not valid JSON: {problem}") from None
    source = body.get("source") if isinstance(body, dict) else None
    if source is not None and (not isinstance(source, str) or not source):
        raise WebhookError(400, "source must be a non-empty string")
    return source
