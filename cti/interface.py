"""The one telephony interface the dialer core uses. It never touches AMI or ARI directly.

A backend (`cti.ami.AmiTelephony`, `cti.ari.AriTelephony`) owns its connection and its
background tasks; it is used as an async context manager, which starts them on enter and
stops them on exit. Every command names a call by the correlation id the dialer chose in
`OriginateRequest.call_id`. Results arrive only on the event stream (`events()`): a command
returning means the PBX accepted it, not that the call did what was asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from cti.events import CallEvent


class TelephonyError(Exception):
    """A command the PBX refused or could not carry out. `detail` is the PBX's own words."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.detail = detail


class BackendUnavailable(TelephonyError):
    """The PBX link is down; nothing was sent. The dialer must not dial blind."""


class AuthenticationFailed(TelephonyError):
    """The PBX refused our credentials. Final: retrying with the same secret cannot succeed."""


class UnknownCall(TelephonyError):
    """No live call has this correlation id (it ended, or it never existed)."""


@dataclass(frozen=True, slots=True)
class OriginateRequest:
    """One outbound customer call.

    `endpoint` is a dial string (`PJSIP/+15551234567@trunk`, `Local/100@sim-customers`).
    `call_id` is the dialer's correlation id: unique, at most 64 characters of `[A-Za-z0-9._-]`,
    used as the channel id too, so that a replayed originate cannot create a second call.
    `ring_timeout_s` is how long the far end may ring (the dialer enforces >= 15 s).
    `amd` asks the dialplan to run answering-machine detection before connecting.
    `context`/`extension` are where an AMI-originated call goes once answered; empty means the
    backend's own (`paceline-outbound`, see `docker/asterisk/extensions_paceline.conf`).
    """

    call_id: str
    endpoint: str
    caller_id: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)
    ring_timeout_s: float = 30.0
    amd: bool = False
    context: str = ""
    extension: str = "s"


@runtime_checkable
class Telephony(Protocol):
    """What the dialer and the IVR drivers may ask of a PBX."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def connected(self) -> bool:
        """True while the link is up and synchronized; originate raises BackendUnavailable else."""
        ...

    def events(self) -> AsyncIterator[CallEvent]:
        """The normalized event stream. One consumer; it ends when the backend is closed."""
        ...

    async def originate(self, request: OriginateRequest) -> None:
        """Place a call. Returns once the PBX queued it; many may be in flight at once."""
        ...

    async def adopt(self, call_ids: Collection[str]) -> set[str]:
        """Follow calls that an earlier process originated with these call ids.

        For a restart after a crash: the ids are the `OriginateRequest.call_id`s the earlier
        process used. Returns the ids that are live on the PBX now (listing: AMI
        `CoreShowChannels`, ARI `GET /channels`). From then on each returned call behaves as if
        this backend had originated it: its events arrive on `events()` (ANSWERED, AMD,
        BRIDGED, ..., exactly one HANGUP), and connect_to_agent / play_and_hangup / hangup /
        transfers work on it. Ids not returned are not live (the caller treats them as ended
        with no known result); no event is ever emitted for them.

        What happened before the adoption is not replayed, with one exception: a returned call
        that is answered and has no agent (none bridged, being dialled or parked by a hold: it
        waits in the dialplan or in Stasis for the dialer) gets one ANSWERED with `detail`
        "adopted", and its AMD verdict if one is known, because the caller may have died before
        seeing them and the call waits for it.
        A call already bridged with an agent gets no BRIDGED; its later UNBRIDGED and HANGUP
        come as usual. Ids already followed by this backend are returned as they are.
        Raises BackendUnavailable when the link is down (nothing is adopted then).
        """
        ...

    async def connect_to_agent(self, call_id: str, agent_endpoint: str) -> None:
        """Bridge the answered call `call_id` with the agent at `agent_endpoint`."""
        ...

    async def play_and_hangup(self, call_id: str, sound: str) -> None:
        """Play `sound` (the abandon information message) to the call, then hang it up."""
        ...

    async def hangup(self, call_id: str, cause: int = 16) -> None:
        """Hang up with a Q.850 cause (16 normal clearing by default)."""
        ...

    async def blind_transfer(self, call_id: str, target: str) -> None:
        """Send the customer of `call_id` to `target` (an extension or endpoint); agent leg ends."""
        ...

    async def attended_transfer(self, call_id: str, target: str) -> None:
        """Agent-initiated consult transfer of `call_id` to `target`, then completion."""
        ...

    async def hold(self, call_id: str) -> None:
        """Put the customer of `call_id` on music on hold."""
        ...

    async def unhold(self, call_id: str) -> None: ...

    async def send_dtmf(self, call_id: str, digits: str) -> None:
        """Send DTMF `digits` to the customer of `call_id`."""
        ...

    async def send_to_ivr(self, call_id: str, flow: str, variables: Mapping[str, str]) -> None:
        """Hand the answered call `call_id` to the IVR flow `flow` (agentless campaigns).

        Each variable becomes the channel variable `PACELINE_<NAME>` (upper case) first, so
        the flow reads it as an input; then the call goes to the IVR's Stasis app with the
        flow's name as its argument (ARI: `POST /channels/{id}/move`; AMI: `Redirect` into
        `[paceline-ivr-outbound]`, extension = the flow). The call is still followed: its
        HANGUP comes on `events()` as for any call. Raises UnknownCall if the call is gone,
        TelephonyError if the PBX refused.
        """
        ...
