"""A small typed aiohttp client for the ARI REST resources the dialer and the IVR need.

Paths and parameter names are exactly those of the Asterisk 20 swagger
(`tests/fixtures/asterisk/ari-api-docs/`). Every method returns the decoded JSON (or None for
204) and raises an `cti.ari.errors.AriError` subclass for an error response (ARI's `message`
in `detail`) or for a success whose body is not JSON, and `BackendUnavailable` for any
transport failure (refused, reset, timed out, a truncated body). Nothing else escapes, so a
caller's `except TelephonyError` is complete. The client owns no session: the caller passes one
configured with Basic auth (or passes `api_key`).

Secrets stay out of URLs where ARI allows it: DTMF digits (a card number, in an IVR) go in the
JSON body, which ARI reads like the query (every generated handler parses both). Error texts
built from aiohttp's exceptions, which quote the URL, go through `cti.redact.redact`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import aiohttp
from yarl import URL

from cti.ari.codes import hangup_params
from cti.ari.errors import ServerError, error_for_response
from cti.interface import BackendUnavailable
from cti.redact import describe_exception

JsonObject = dict[str, Any]


def ari_base_url(base_url: str) -> URL:
    """`http://host:8088` or `http://host:8088/ari` -> the URL that ends in `/ari`."""
    url = URL(base_url.rstrip("/"))
    return url if url.path.endswith("/ari") else url / "ari"


def _clean(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


class AriRestClient:
    """ARI REST over one aiohttp session. `base_url` may or may not end in `/ari`."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, api_key: str | None = None
    ) -> None:
        self._session = session
        self.base_url = ari_base_url(base_url)
        self._api_key = api_key

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request; the decoded JSON body, or None when there is none (204)."""
        query = _clean(params or {})
        if self._api_key is not None:
            query["api_key"] = self._api_key
        url = self.base_url.with_path(self.base_url.path + path)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, url, params=query, data=data, headers=headers
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # `from None`: the original exception quotes the URL (api_key, digits) and would
            # come back in any traceback that logs this one.
            raise BackendUnavailable(
                f"ARI at {self.base_url} failed ({method} {path})",
                detail=describe_exception(exc),
            ) from None
        if status >= 400:
            raise error_for_response(status, raw, method=method, path=path)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(
                f"ARI {method} {path} answered HTTP {status} with a body that is not JSON",
                detail=f"{len(raw)} bytes",
                status=status,
            ) from None

    # ----- asterisk / applications / endpoints --------------------------------------------
    async def ping(self) -> JsonObject:
        return cast(JsonObject, await self.request("GET", "/asterisk/ping"))

    async def subscribe(self, app: str, event_sources: Iterable[str]) -> JsonObject:
        return cast(
            JsonObject,
            await self.request(
                "POST",
                f"/applications/{app}/subscription",
                params={"eventSource": list(event_sources)},
            ),
        )

    async def list_endpoints(self) -> list[JsonObject]:
        return cast(list[JsonObject], await self.request("GET", "/endpoints"))

    # ----- channels ----------------------------------------------------------------------
    async def originate(
        self,
        endpoint: str,
        *,
        app: str | None = None,
        app_args: Sequence[str] = (),
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        caller_id: str | None = None,
        timeout_s: int | None = None,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> JsonObject:
        """`POST /channels`. Give `app` (enter Stasis on answer) or `extension`/`context`."""
        params = {
            "endpoint": endpoint,
            "app": app,
            "appArgs": list(app_args) if app_args else None,
            "channelId": channel_id,
            "otherChannelId": other_channel_id,
            "callerId": caller_id or None,
            "timeout": timeout_s,
            "context": context,
            "extension": extension,
            "priority": priority,
        }
        body = {"variables": dict(variables)} if variables else None
        return cast(JsonObject, await self.request("POST", "/channels", params=params, body=body))

    async def list_channels(self) -> list[JsonObject]:
        """`GET /channels`; ServerError when the answer is not a JSON list of objects (a
        proxy's empty or `null` 200 must not pass for "no channels")."""
        result = await self.request("GET", "/channels")
        if not isinstance(result, list) or not all(isinstance(c, dict) for c in result):
            raise ServerError(
                "ARI GET /channels answered something other than a list of channels",
                detail=type(result).__name__,
                status=200,
            )
        return cast(list[JsonObject], result)

    async def get_channel(self, channel_id: str) -> JsonObject:
        return cast(JsonObject, await self.request("GET", f"/channels/{channel_id}"))

    async def hangup(self, channel_id: str, cause: int | None = None) -> None:
        """`DELETE /channels/{id}` with the ARI reason for Q.850 `cause` (none: normal)."""
        params = hangup_params(cause) if cause is not None else {}
        await self.request("DELETE", f"/channels/{channel_id}", params=params)

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
        label: str | None = None,
    ) -> None:
        params = {"context": context, "extension": extension, "priority": priority, "label": label}
        await self.request("POST", f"/channels/{channel_id}/continue", params=params)

    async def redirect(self, channel_id: str, endpoint: str) -> None:
        await self.request(
            "POST", f"/channels/{channel_id}/redirect", params={"endpoint": endpoint}
        )

    async def play(
        self,
        channel_id: str,
        media: str | Sequence[str],
        *,
        playback_id: str | None = None,
        lang: str | None = None,
    ) -> JsonObject:
        params = {"media": media if isinstance(media, str) else list(media), "lang": lang}
        params["playbackId"] = playback_id
        return cast(
            JsonObject, await self.request("POST", f"/channels/{channel_id}/play", params=params)
        )

    async def start_moh(self, channel_id: str, moh_class: str | None = None) -> None:
        await self.request("POST", f"/channels/{channel_id}/moh", params={"mohClass": moh_class})

    async def stop_moh(self, channel_id: str) -> None:
        await self.request("DELETE", f"/channels/{channel_id}/moh")

    async def hold(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/hold")

    async def unhold(self, channel_id: str) -> None:
        await self.request("DELETE", f"/channels/{channel_id}/hold")

    async def send_dtmf(
        self,
        channel_id: str,
        dtmf: str,
        *,
        between_ms: int | None = None,
        duration_ms: int | None = None,
    ) -> None:
        params = {"between": between_ms, "duration": duration_ms}
        await self.request(
            "POST", f"/channels/{channel_id}/dtmf", params=params, body={"dtmf": dtmf}
        )

    async def get_variable(self, channel_id: str, variable: str) -> str:
        result = await self.request(
            "GET", f"/channels/{channel_id}/variable", params={"variable": variable}
        )
        return str(cast(JsonObject, result).get("value", ""))

    async def set_variable(self, channel_id: str, variable: str, value: str) -> None:
        await self.request(
            "POST",
            f"/channels/{channel_id}/variable",
            params={"variable": variable, "value": value},
        )

    async def snoop(
        self,
        channel_id: str,
        *,
        app: str,
        app_args: Sequence[str] = (),
        spy: str = "both",
        whisper: str | None = None,
        snoop_id: str | None = None,
    ) -> JsonObject:
        """`POST /channels/{id}/snoop`: a new channel (`Snoop/<id>-<n>`, state Up) that hears
        the channel (`spy`: in, out or both) and/or speaks into it (`whisper`), entering
        `app` with `app_args` (StasisStart); the Channel. It hangs up with the channel.
        Record it (`record(snoop_id, ...)`) to record a call while the channel itself plays
        prompts: a channel's own recording holds its command queue, so its later `play`
        waits for the recording to end."""
        params = {
            "spy": spy,
            "whisper": whisper,
            "app": app,
            "appArgs": list(app_args) if app_args else None,
            "snoopId": snoop_id,
        }
        return cast(
            JsonObject, await self.request("POST", f"/channels/{channel_id}/snoop", params=params)
        )

    # ----- recordings --------------------------------------------------------------------
    async def record(
        self,
        channel_id: str,
        name: str,
        *,
        format: str = "wav",
        max_duration_s: int | None = None,
        max_silence_s: int | None = None,
        if_exists: str | None = None,
        beep: bool | None = None,
        terminate_on: str | None = None,
    ) -> JsonObject:
        """`POST /channels/{id}/record`: a LiveRecording in state `queued`; RecordingStarted,
        then RecordingFinished or RecordingFailed, arrive as events. Asterisk cannot record a
        bridged channel (the recording then fails): record the bridge instead. The recording
        runs on the channel's command queue: the channel's later `play` (or `continue`, or
        another recording) waits until it ends; to record a whole call, record a `snoop`."""
        params = {
            "name": name,
            "format": format,
            "maxDurationSeconds": max_duration_s,
            "maxSilenceSeconds": max_silence_s,
            "ifExists": if_exists,
            "beep": beep,
            "terminateOn": terminate_on,
        }
        return cast(
            JsonObject,
            await self.request("POST", f"/channels/{channel_id}/record", params=params),
        )

    async def record_bridge(
        self, bridge_id: str, name: str, *, format: str = "wav", if_exists: str | None = None
    ) -> JsonObject:
        """`POST /bridges/{id}/record`: record everyone in the bridge (a connected call)."""
        params = {"name": name, "format": format, "ifExists": if_exists}
        return cast(
            JsonObject, await self.request("POST", f"/bridges/{bridge_id}/record", params=params)
        )

    async def get_live_recording(self, name: str) -> JsonObject:
        return cast(JsonObject, await self.request("GET", f"/recordings/live/{name}"))

    async def stop_recording(self, name: str) -> None:
        """Stop and keep the file."""
        await self.request("POST", f"/recordings/live/{name}/stop")

    async def cancel_recording(self, name: str) -> None:
        """Stop and discard the file."""
        await self.request("DELETE", f"/recordings/live/{name}")

    async def pause_recording(self, name: str) -> None:
        """Nothing is recorded until `unpause_recording` (e.g. while a card number is keyed
        in); the pause leaves no gap marker. 409 `Conflict` when not recording."""
        await self.request("POST", f"/recordings/live/{name}/pause")

    async def unpause_recording(self, name: str) -> None:
        await self.request("DELETE", f"/recordings/live/{name}/pause")

    async def mute_recording(self, name: str) -> None:
        """Record silence instead of the audio (the timeline is kept)."""
        await self.request("POST", f"/recordings/live/{name}/mute")

    async def unmute_recording(self, name: str) -> None:
        await self.request("DELETE", f"/recordings/live/{name}/mute")

    async def get_stored_recording(self, name: str) -> JsonObject:
        return cast(JsonObject, await self.request("GET", f"/recordings/stored/{name}"))

    # ----- bridges -----------------------------------------------------------------------
    async def create_bridge(
        self, *, bridge_type: str = "mixing", bridge_id: str | None = None, name: str | None = None
    ) -> JsonObject:
        params = {"type": bridge_type, "bridgeId": bridge_id, "name": name}
        return cast(JsonObject, await self.request("POST", "/bridges", params=params))

    async def get_bridge(self, bridge_id: str) -> JsonObject:
        return cast(JsonObject, await self.request("GET", f"/bridges/{bridge_id}"))

    async def add_channel(self, bridge_id: str, channel_ids: Sequence[str]) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/addChannel", params={"channel": list(channel_ids)}
        )

    async def remove_channel(self, bridge_id: str, channel_ids: Sequence[str]) -> None:
        await self.request(
            "POST", f"/bridges/{bridge_id}/removeChannel", params={"channel": list(channel_ids)}
        )

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}")

    # ----- playbacks ---------------------------------------------------------------------
    async def get_playback(self, playback_id: str) -> JsonObject:
        return cast(JsonObject, await self.request("GET", f"/playbacks/{playback_id}"))

    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{playback_id}")

    async def control_playback(self, playback_id: str, operation: str) -> None:
        await self.request(
            "POST", f"/playbacks/{playback_id}/control", params={"operation": operation}
        )
