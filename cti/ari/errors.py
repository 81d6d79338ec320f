"""ARI error responses as typed exceptions: the one place that knows how ARI says "no".

Asterisk answers a refused REST request with a status code and, almost always, a JSON body
`{"message": "..."}` (see `tests/fixtures/asterisk/transcripts/ari/10_ari_error_responses.*`).
Two exceptions to that shape are worth knowing: an originate to an unknown technology answers
500 `{"error":"Allocation failed"}`, and a WebSocket upgrade without `app` answers 400 with an
HTML page. `error_for_response(status, body)` is pure; it never raises and always returns an
`AriError` subclass carrying ARI's own words in `detail`.
"""

from __future__ import annotations

import json
import re

from cti.interface import AuthenticationFailed, TelephonyError, UnknownCall
from cti.redact import redact

#: Longest piece of a non-JSON body kept in an error message (HTML pages are short anyway).
MAX_DETAIL_CHARS = 200


class AriError(TelephonyError):
    """ARI refused a request. `status` is the HTTP status, `detail` ARI's own message."""

    status: int = 0

    def __init__(self, message: str, *, detail: str = "", status: int = 0) -> None:
        super().__init__(message, detail=detail)
        self.status = status or type(self).status


class BadRequest(AriError):
    """400: a parameter is missing or invalid (`Endpoint must be specified`, ...)."""

    status = 400


class AriAuthenticationFailed(AriError, AuthenticationFailed):
    """401: ARI rejected the username/password (or api_key). Final: fix ari.conf or the secret."""

    status = 401


class NotFound(AriError, UnknownCall):
    """404: the channel, bridge, playback, variable or resource does not exist (any more)."""

    status = 404


class MethodNotAllowed(AriError):
    """405: the resource exists but not with this HTTP method."""

    status = 405


class Conflict(AriError):
    """409: the object is in the wrong state: `Channel not in Stasis application`, or a
    `channelId`/`bridgeId` that already exists (a replayed originate)."""

    status = 409


class PreconditionFailed(AriError):
    """412: the channel is in a state that does not allow the operation."""

    status = 412


class Unprocessable(AriError):
    """422: understood but impossible (`Channel not in Stasis application` on addChannel,
    an endpoint of another technology on redirect, an unknown event source)."""

    status = 422


class ServerError(AriError):
    """5xx: Asterisk failed internally (`Allocation failed`: unknown channel technology)."""

    status = 500


_BY_STATUS: dict[int, type[AriError]] = {
    400: BadRequest,
    401: AriAuthenticationFailed,
    403: AriAuthenticationFailed,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    412: PreconditionFailed,
    422: Unprocessable,
}


def ari_message(body: bytes) -> str:
    """ARI's own words from an error body: `message` or `error` of a JSON object, else the
    text of an HTML page's `<p>`, else the start of the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("message", "error"):
            value = parsed.get(key)
            if isinstance(value, str):
                return value
    para = re.search(r"<p>(.*?)</p>", text, re.S | re.I)
    if para and para.group(1).strip():
        return para.group(1).strip()
    title = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
    if title:
        return title.group(1).strip()
    return text[:MAX_DETAIL_CHARS]


def error_for_response(status: int, body: bytes, *, method: str = "", path: str = "") -> AriError:
    """The exception for an ARI error response. `method`/`path` only make the text actionable."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else AriError
    where = f"{method} {path}".strip()
    message = f"ARI {where} answered HTTP {status}" if where else f"ARI answered HTTP {status}"
    if cls is AriAuthenticationFailed:
        message += " (check the ARI username/password in ari.conf)"
    return cls(message, detail=redact(ari_message(body)), status=status)
