"""The ARI event WebSocket: `open_event_socket` opens it (the dialer's `AriTelephony` and the
IVR's `IvrApp` both use it), and the sans-IO `AriEventDecoder` turns one text frame into one
event (or nothing).

Every ARI event is one JSON object per text frame with a `type` (see the swagger
`events.json`). The decoder never raises on what the network sends: a frame that is not JSON,
is too large, is not an object, has an unknown `type`, or lacks the fields its type needs is
skipped with one log line (never its content: it may carry DTMF digits) and counted in
`skipped`. Known types are those of the Asterisk 20 swagger.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from cti.ari.errors import AriAuthenticationFailed
from cti.interface import BackendUnavailable
from cti.redact import describe_exception

log = logging.getLogger(__name__)

#: Largest WebSocket message accepted at all; bigger ones drop the link (and reconnect). Frames
#: above the decoder's own `MAX_FRAME_BYTES` are received but skipped.
MAX_WS_MESSAGE_BYTES = 8 << 20

#: Seconds between WebSocket pings; a link that stops answering them is closed.
HEARTBEAT_S = 30.0

#: Largest frame decoded. Asterisk's own events are a few KB (a Channel object is ~400 bytes);
#: 1 MiB leaves room for a bridge with many channels and refuses a runaway or hostile frame.
MAX_FRAME_BYTES = 1 << 20

#: Every event type of the Asterisk 20.20 swagger (`events.json`, subtypes of Event).
KNOWN_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "ApplicationMoveFailed", "ApplicationRegistered", "ApplicationReplaced",
        "ApplicationUnregistered", "BridgeAttendedTransfer", "BridgeBlindTransfer",
        "BridgeCreated", "BridgeDestroyed", "BridgeMerged", "BridgeVideoSourceChanged",
        "CallBroadcast", "CallClaimed", "ChannelCallerId", "ChannelConnectedLine",
        "ChannelCreated", "ChannelDestroyed", "ChannelDialplan", "ChannelDtmfReceived",
        "ChannelEnteredBridge", "ChannelHangupRequest", "ChannelHold", "ChannelLeftBridge",
        "ChannelStateChange", "ChannelTalkingFinished", "ChannelTalkingStarted",
        "ChannelTransfer", "ChannelUnhold", "ChannelUserevent", "ChannelVarset",
        "ContactStatusChange", "DeviceStateChanged", "Dial", "EndpointStateChange",
        "PeerStatusChange", "PlaybackContinuing", "PlaybackFinished", "PlaybackStarted",
        "RecordingFailed", "RecordingFinished", "RecordingStarted", "StasisEnd",
        "StasisStart", "TextMessageReceived",
    }
)  # fmt: skip

#: The fields an event type must carry for the tracker to use it; the rest are optional.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "StasisStart": ("channel",),
    "StasisEnd": ("channel",),
    "ChannelStateChange": ("channel",),
    "ChannelDialplan": ("channel",),
    "ChannelVarset": ("variable", "value"),
    "ChannelDtmfReceived": ("channel", "digit"),
    "ChannelEnteredBridge": ("channel", "bridge"),
    "ChannelLeftBridge": ("channel", "bridge"),
    "ChannelHold": ("channel",),
    "ChannelUnhold": ("channel",),
    "ChannelHangupRequest": ("channel",),
    "ChannelDestroyed": ("channel", "cause"),
    "BridgeDestroyed": ("bridge",),
    "PlaybackStarted": ("playback",),
    "PlaybackFinished": ("playback",),
    "PlaybackContinuing": ("playback",),
    "Dial": ("peer",),
    "RecordingStarted": ("recording",),
    "RecordingFinished": ("recording",),
    "RecordingFailed": ("recording",),
}

_OBJECT_FIELDS = frozenset({"channel", "bridge", "playback", "peer"})


async def open_event_socket(
    session: aiohttp.ClientSession, base_url: URL, app: str, *, api_key: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    """Open the event WebSocket `base_url/events?app=<app>` on `session`.

    `base_url` is the URL ending in `/ari` (`AriRestClient.base_url`); `session` carries the
    Basic auth, or `api_key` (`user:password`) goes in the query. Raises
    `AriAuthenticationFailed` when ARI answers 401, and `BackendUnavailable` for any other
    refusal or a transport failure; no error text quotes the query (it may hold `api_key`).
    """
    url = base_url / "events"
    query = {"app": app} if api_key is None else {"app": app, "api_key": api_key}
    try:
        return await session.ws_connect(
            url.with_query(query), heartbeat=HEARTBEAT_S, max_msg_size=MAX_WS_MESSAGE_BYTES
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 401:
            raise AriAuthenticationFailed(
                f"ARI refused the event WebSocket for app {app!r} (HTTP 401)",
                detail="check the ARI username/password in ari.conf",
            ) from None
        raise BackendUnavailable(
            f"ARI event WebSocket at {url} refused", detail=f"HTTP {exc.status}"
        ) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendUnavailable(
            f"ARI at {base_url} is unreachable", detail=describe_exception(exc)
        ) from None


async def close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close `ws`, ignoring a link that is already broken."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        await ws.close()


@dataclass(frozen=True, slots=True)
class AriEvent:
    """One decoded event. `data` is the whole JSON object, in Asterisk's field order."""

    type: str
    data: Mapping[str, Any] = field(repr=False)

    @property
    def channel_id(self) -> str:
        """The `channel.id` (or `peer.id` for Dial), "" when the event names no channel."""
        obj = self.data.get("channel") or self.data.get("peer")
        if isinstance(obj, Mapping):
            value = obj.get("id")
            return value if isinstance(value, str) else ""
        return ""


@dataclass(slots=True)
class AriEventDecoder:
    """Turns WebSocket text frames into `AriEvent`s. `skipped` counts refused frames by reason."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    skipped: dict[str, int] = field(default_factory=dict)

    def _skip(self, reason: str, size: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.warning("ARI event frame skipped: %s (%d bytes)", reason, size)

    def decode(self, frame: str | bytes) -> AriEvent | None:
        """Decode one frame; None when the frame is skipped (and logged)."""
        size = len(frame)
        if size > self.max_frame_bytes:
            self._skip(f"frame larger than {self.max_frame_bytes} bytes", size)
            return None
        try:
            obj = json.loads(frame)
        except (ValueError, UnicodeDecodeError):
            self._skip("not valid JSON", size)
            return None
        if not isinstance(obj, dict):
            self._skip("not a JSON object", size)
            return None
        kind = obj.get("type")
        if not isinstance(kind, str):
            self._skip("no 'type' field", size)
            return None
        if kind not in KNOWN_EVENT_TYPES:
            self._skip(f"unknown event type {kind[:40]!r}", size)
            return None
        for name in REQUIRED_FIELDS.get(kind, ()):
            value = obj.get(name)
            if value is None:
                self._skip(f"{kind} without {name!r}", size)
                return None
            if name in _OBJECT_FIELDS and not (
                isinstance(value, dict) and isinstance(value.get("id"), str)
            ):
                self._skip(f"{kind} with a malformed {name!r}", size)
                return None
        return AriEvent(type=kind, data=obj)
