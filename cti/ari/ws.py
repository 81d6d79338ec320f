"""Sans-IO decoder of the ARI event WebSocket: one text frame in, one event (or nothing) out.

Every ARI event is one JSON object per text frame with a `type` (see the swagger
`events.json`). The decoder never raises on what the network sends: a frame that is not JSON,
is too large, is not an object, has an unknown `type`, or lacks the fields its type needs is
skipped with one log line (never its content: it may carry DTMF digits) and counted in
`skipped`. Known types are those of the Asterisk 20 swagger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

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
