"""The ARI backend: `AriTelephony` (the `cti.interface.Telephony` implementation), the sans-IO
`AriTracker` and `AriEventDecoder`, the REST client and the typed ARI errors."""

from cti.ari.errors import (
    AriAuthenticationFailed,
    AriError,
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    ServerError,
    Unprocessable,
    error_for_response,
)
from cti.ari.rest import AriRestClient
from cti.ari.telephony import ApplicationReplaced, AriTelephony
from cti.ari.tracker import AriTracker, LegRole
from cti.ari.ws import AriEvent, AriEventDecoder

__all__ = [
    "ApplicationReplaced",
    "AriAuthenticationFailed",
    "AriError",
    "AriEvent",
    "AriEventDecoder",
    "AriRestClient",
    "AriTelephony",
    "AriTracker",
    "BadRequest",
    "Conflict",
    "LegRole",
    "MethodNotAllowed",
    "NotFound",
    "PreconditionFailed",
    "ServerError",
    "Unprocessable",
    "error_for_response",
]
