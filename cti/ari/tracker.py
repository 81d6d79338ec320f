"""Sans-IO ARI call tracker: ARI events in, normalized `CallEvent`s out.

`AriTracker` knows which channels are ours: the backend announces each channel it originates
with `expect(channel_id, call_id, role=...)` before the POST (the customer leg's channel id IS
the dialer's call id, so a retried POST cannot make a second call). A channel that enters our
Stasis application without having been announced is an inbound call: it is tracked under its
own channel id and reported as INBOUND.

Facts the mapping relies on (Asterisk 20.20.1 captures):
- `ChannelHangupRequest` `cause` 32 with `soft: true` is a flag on an ARI DELETE, not a Q.850
  cause; the real cause comes with `ChannelDestroyed` (16 for a DELETE with reason normal).
- A channel we originated stays subscribed after `StasisEnd` (continue, redirect), so its
  `ChannelDestroyed` still arrives. A channel that merely entered Stasis (inbound) is not:
  after its `StasisEnd` nothing more comes unless the app subscribed to `channel:<id>`. The
  backend subscribes every inbound channel and says so with `note_subscribed`; an inbound leg
  that leaves Stasis unsubscribed is ended there (hang-up requested: a normal hang-up; else
  HANGUP with cause None, "no longer followed"), so no call stays live forever.
- AMD() sets AMDSTATUS then AMDCAUSE (ChannelVarset). Paceline's `paceline-amd` context hands
  every verdict back as Stasis arguments `amd,<AMDSTATUS>`; the reference `dialer-amd` passes
  `human,<exten>` when AMD said HUMAN. The AMD event is held until the call is back in
  Stasis (its StasisStart), because only then can the dialer act on it (a bridge or a play
  before that answers 422/409 on Asterisk), or until the call ends.
- Resync (`reconcile`) only judges legs whose originate ARI had confirmed before the
  `GET /channels` was sent (`confirm(..., seq)`, `reconcile(..., confirmed_by=seq)`): a POST
  still in flight, or answered after the GET left, may be missing from the snapshot without
  having ended. Those legs are listed by `unsure_legs` for the backend to check one by one.
- Hold on a Local channel starts music on hold but sends no ChannelHold: the backend reports
  HELD/UNHELD itself; the tracker maps ChannelHold/ChannelUnhold when they do come.

- `POST /channels/{id}/move` to another app (send_to_ivr) sends us StasisEnd and the new app
  StasisStart; we stay subscribed to a channel we originated (res_stasis drops only the one
  subscription its StasisStart made), so that StasisEnd ends nothing and its
  ChannelDestroyed gives the HANGUP. `note_moved` records the hand-over: the leg is in the
  other app's Stasis now, never ours, whatever a snapshot's `dialplan` says (a move leaves it
  naming the Stasis() the channel entered by).

- Restart (`adopt`, `adopt_bridge`): legs of an earlier process are taken over in the state a
  snapshot shows, without events for what is past. Until then a StasisStart of such a leg
  (its arguments say `customer`, `agent`, `consult` or `amd`) is not an inbound call.

The tracker never reads a clock or a socket; `feed` is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cti import causes
from cti.events import CallEvent, CallEventKind

log = logging.getLogger(__name__)

#: How many ended channel ids are remembered (to ignore their late events and not mistake a
#: late StasisStart for an inbound call). At 100 calls/s this covers more than 8 minutes.
MAX_ENDED_REMEMBERED = 50_000

#: The Stasis arguments the reference dialplan (`dialer-amd`) uses to say what AMD decided.
AMD_STASIS_ARGS: dict[str, str] = {"human": "HUMAN", "machine": "MACHINE", "notsure": "NOTSURE"}

#: First Stasis argument of Paceline's `paceline-amd` context; the second is ${AMDSTATUS}.
AMD_VERDICT_ARG = "amd"


#: First Stasis arguments of the channels the backend originates into its app (the customer,
#: agent and consult legs) and of a customer back from `paceline-amd`. A channel that enters
#: the app with one of these but is not tracked is a leg of an earlier process of ours (a
#: restart: see `AriTelephony.adopt`), never an inbound call.
OWN_LEG_ARGS = frozenset({"customer", "agent", "consult", AMD_VERDICT_ARG})


def is_own_leg(args: Any) -> bool:
    """True when StasisStart `args` (or a snapshot's Stasis app data, split) name a leg that
    a Paceline backend originated, see `OWN_LEG_ARGS`."""
    return (
        isinstance(args, list)
        and bool(args)
        and isinstance(args[0], str)
        and args[0].lower() in OWN_LEG_ARGS
    )


def amd_from_stasis_args(args: Any) -> str | None:
    """The AMD verdict carried by StasisStart `args`: `amd,<AMDSTATUS>` (paceline-amd) or
    `human,<exten>` (the reference dialer-amd); None when the args say nothing about AMD."""
    if not isinstance(args, list) or not args or not isinstance(args[0], str):
        return None
    first = args[0].lower()
    if first == AMD_VERDICT_ARG:
        status = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        return status.upper() or None
    return AMD_STASIS_ARGS.get(first)


class LegRole(StrEnum):
    CUSTOMER = "customer"  # the dialer's call: events are reported under call_id
    AGENT = "agent"  # the agent leg of call_id (connect_to_agent)
    CONSULT = "consult"  # the consultation leg of an attended transfer of call_id


@dataclass(slots=True)
class _Leg:
    channel_id: str
    call_id: str
    role: LegRole
    peer: str = ""
    inbound: bool = False
    answered: bool = False
    ringing: bool = False
    in_stasis: bool = False
    amd: str | None = None
    amd_cause: str | None = None
    amd_reported: bool = False
    hangup_cause: int | None = None  # a real (not soft) cause from ChannelHangupRequest
    hangup_requested: bool = False
    bridge_id: str | None = None
    bridged_with: str | None = None
    dialing_reported: bool = False
    #: resync sequence at which ARI confirmed the channel exists (None: POST not answered yet)
    confirmed_seq: int | None = None
    subscribed: bool = False  # an inbound leg the app subscribed to (events after StasisEnd)
    was_bridged: bool = False
    moved_to: str | None = None  # the Stasis app it was moved to (`note_moved`)


def _channel(event: Mapping[str, Any], key: str = "channel") -> Mapping[str, Any]:
    obj = event.get(key)
    return obj if isinstance(obj, Mapping) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(slots=True)
class AriTracker:
    """Tracks our channels and turns ARI events into CallEvents (see the module docstring)."""

    _legs: dict[str, _Leg] = field(default_factory=dict)
    _ended: dict[str, None] = field(default_factory=dict)  # insertion-ordered, bounded
    #: bridge id -> channel ids in it, as the last bridge snapshot said
    _bridges: dict[str, list[str]] = field(default_factory=dict)

    # ----- registration ------------------------------------------------------------------
    def expect(
        self,
        channel_id: str,
        call_id: str | None = None,
        *,
        role: LegRole | str = LegRole.CUSTOMER,
        peer: str = "",
    ) -> None:
        """Announce a channel we are about to originate. `call_id` defaults to `channel_id`;
        `peer` is the endpoint dialled (reported as BRIDGED.peer for agent/consult legs)."""
        self._legs[channel_id] = _Leg(
            channel_id=channel_id,
            call_id=call_id or channel_id,
            role=LegRole(role),
            peer=peer,
        )
        self._ended.pop(channel_id, None)

    def mark_dialing(self, call_id: str) -> list[CallEvent]:
        """DIALING for an originated customer call, once: when ARI accepted the POST or at the
        call's first event, whichever comes first (so DIALING is always the first event)."""
        leg = self._legs.get(call_id)
        if leg is None or leg.role is not LegRole.CUSTOMER or leg.inbound or leg.dialing_reported:
            return []
        leg.dialing_reported = True
        return [self._event(CallEventKind.DIALING, leg)]

    def amd_known(self, call_id: str) -> bool:
        leg = self._legs.get(call_id)
        return leg is not None and leg.amd is not None

    def note_amd(self, call_id: str, status: str, cause: str = "") -> list[CallEvent]:
        """An AMD verdict read back with `GET /channels/{id}/variable` (after a resync, when
        the ChannelVarset events were lost). Ignored when already known or empty."""
        leg = self._legs.get(call_id)
        if leg is None or leg.amd is not None or not status:
            return []
        leg.amd, leg.amd_cause = status.upper(), cause or None
        return self._flush_amd(leg)

    def forget(self, channel_id: str) -> None:
        """Stop tracking a channel whose originate was refused or abandoned. Its id is
        remembered as ended, so a late StasisStart (an originate that took after all) is never
        mistaken for an inbound call."""
        leg = self._legs.pop(channel_id, None)
        if leg is not None:
            self._end(leg)

    def seen(self, channel_id: str) -> bool:
        """True once an event of this originated channel arrived (it exists or existed)."""
        leg = self._legs.get(channel_id)
        if leg is not None:
            return leg.dialing_reported or leg.ringing or leg.in_stasis or leg.answered
        return channel_id in self._ended

    def forget_bridge(self, bridge_id: str) -> None:
        """A bridge that is gone although its BridgeDestroyed never came."""
        self._bridges.pop(bridge_id, None)

    def confirm(self, channel_id: str, seq: int) -> None:
        """ARI confirmed the channel exists (its POST answered) at resync sequence `seq`."""
        leg = self._legs.get(channel_id)
        if leg is not None and leg.confirmed_seq is None:
            leg.confirmed_seq = seq

    def note_subscribed(self, channel_id: str) -> None:
        """The app subscribed to this inbound channel: its events go on after StasisEnd."""
        leg = self._legs.get(channel_id)
        if leg is not None:
            leg.subscribed = True

    def note_moved(self, channel_id: str, app: str) -> None:
        """The leg left our app for Stasis app `app` (a `move`): it is followed on (see the
        module docstring) but never again taken to be in our Stasis."""
        leg = self._legs.get(channel_id)
        if leg is not None:
            leg.moved_to = app
            leg.in_stasis = False

    def moved_to(self, channel_id: str) -> str | None:
        """The Stasis app the leg was moved to, None when it was not."""
        leg = self._legs.get(channel_id)
        return None if leg is None else leg.moved_to

    def unsure_legs(self, confirmed_by: int) -> list[str]:
        """Legs a snapshot taken at sequence `confirmed_by` cannot judge (see `reconcile`)."""
        return [
            c
            for c, leg in self._legs.items()
            if leg.confirmed_seq is None or leg.confirmed_seq > confirmed_by
        ]

    def vanished(self, channel_id: str, detail: str) -> list[CallEvent]:
        """ARI says the channel does not exist (404) although we track it: it ended unseen."""
        leg = self._legs.get(channel_id)
        return [] if leg is None else self._gone(leg, detail)

    def note_bridge(self, bridge: Mapping[str, Any]) -> list[CallEvent]:
        """A bridge snapshot (`GET /bridges/{id}`) after a resync: the BRIDGED/UNBRIDGED the
        lost ChannelEnteredBridge/ChannelLeftBridge events would have given."""
        bridge_id = str(bridge.get("id", ""))
        members = [c for c in bridge.get("channels", []) if isinstance(c, str)]
        self._bridges[bridge_id] = members
        out: list[CallEvent] = []
        for channel_id, leg in list(self._legs.items()):
            inside = channel_id in members
            if inside:
                if leg.bridge_id != bridge_id:
                    out.extend(self._entered(leg, bridge_id, members))
            elif leg.bridge_id == bridge_id:
                out.extend(self._left(leg, members))
        return out

    def adopt(
        self,
        chan: Mapping[str, Any],
        call_id: str,
        *,
        role: LegRole | str,
        peer: str = "",
        confirmed_seq: int,
    ) -> None:
        """Follow a leg an earlier process originated, in the state a snapshot Channel
        (`GET /channels`) shows: answered if Up, ringing if Ringing, in Stasis or not. No
        event: the backend reports what the adoption means (`AriTelephony.adopt`). A
        verdict in the Stasis arguments of a customer back from AMD (`amd,<STATUS>`) is
        kept, not reported: `pending_amd` says so."""
        channel_id = str(chan.get("id", ""))
        state = chan.get("state")
        leg = _Leg(
            channel_id=channel_id,
            call_id=call_id,
            role=LegRole(role),
            peer=peer,
            answered=state == "Up",
            ringing=state in ("Ringing", "Ring"),
            dialing_reported=True,
            confirmed_seq=confirmed_seq,
        )
        dialplan = chan.get("dialplan")
        if (
            leg.role is LegRole.CUSTOMER
            and isinstance(dialplan, Mapping)
            and dialplan.get("app_name") == "Stasis"
        ):
            _app, *args = str(dialplan.get("app_data", "")).split(",")
            leg.amd = amd_from_stasis_args(args)
        self._legs[channel_id] = leg
        self._ended.pop(channel_id, None)

    def adopt_bridge(self, bridge: Mapping[str, Any]) -> None:
        """A bridge (`GET /bridges`) holding adopted legs: they are bridged already, so no
        BRIDGED is reported, but their UNBRIDGED and ends are, as for any bridged leg."""
        bridge_id = str(bridge.get("id", ""))
        members = [c for c in bridge.get("channels", []) if isinstance(c, str)]
        self._bridges[bridge_id] = members
        for channel_id in members:
            leg = self._legs.get(channel_id)
            if leg is not None and leg.bridge_id != bridge_id:
                self._entered(leg, bridge_id, members)  # its BRIDGED predates the adoption

    def pending_amd(self, call_id: str) -> list[CallEvent]:
        """The AMD event of an adopted customer whose verdict was known at adoption."""
        leg = self._legs.get(call_id)
        return [] if leg is None else self._flush_amd(leg)

    def is_bridged(self, call_id: str) -> bool:
        leg = self._legs.get(call_id)
        return leg is not None and leg.bridged_with is not None

    def is_live(self, call_id: str) -> bool:
        leg = self._legs.get(call_id)
        return leg is not None and leg.role is LegRole.CUSTOMER

    def in_stasis(self, channel_id: str) -> bool:
        leg = self._legs.get(channel_id)
        return leg is not None and leg.in_stasis

    def live_call_ids(self) -> list[str]:
        """Customer calls that have not ended yet."""
        return [c for c, leg in self._legs.items() if leg.role is LegRole.CUSTOMER]

    def channel_ids(self) -> list[str]:
        """Every channel id tracked now (customer, agent and consult legs)."""
        return list(self._legs)

    def sync_stasis(self, channel_id: str, in_stasis: bool) -> bool:
        """Record whether the leg is in Stasis now (from an event or a snapshot); True when it
        just entered, i.e. a StasisStart that was not seen before."""
        leg = self._legs.get(channel_id)
        if leg is None or leg.moved_to is not None:  # in another app's Stasis, not ours
            return False
        entered = in_stasis and not leg.in_stasis
        leg.in_stasis = in_stasis
        return entered

    def observe_channel(self, chan: Mapping[str, Any]) -> list[CallEvent]:
        """A Channel object from a snapshot or `GET /channels/{id}`: the leg is answered if it
        is Up (ANSWERED for a customer call, when not seen before)."""
        leg = self._legs.get(str(chan.get("id", "")))
        if leg is None or chan.get("state") != "Up" or leg.answered:
            return []
        return self._answered(leg)

    def legs_of(self, call_id: str, role: LegRole | str) -> list[str]:
        """Channel ids of the live legs of `call_id` with `role`."""
        want = LegRole(role)
        return [c for c, leg in self._legs.items() if leg.call_id == call_id and leg.role is want]

    def role_of(self, channel_id: str) -> tuple[str, LegRole] | None:
        leg = self._legs.get(channel_id)
        return None if leg is None else (leg.call_id, leg.role)

    # ----- events ------------------------------------------------------------------------
    def feed(self, event: Mapping[str, Any]) -> list[CallEvent]:
        """Process one ARI event (a decoded JSON object); return the CallEvents it causes."""
        kind = event.get("type")
        if kind == "BridgeDestroyed":
            bridge = _channel(event, "bridge")
            self._bridges.pop(str(bridge.get("id", "")), None)
            return []
        chan = _channel(event, "peer" if kind == "Dial" else "channel")
        channel_id = chan.get("id")
        if not isinstance(channel_id, str):
            return []
        leg = self._legs.get(channel_id)
        if leg is None:
            if kind == "StasisStart" and channel_id not in self._ended:
                if is_own_leg(event.get("args")):
                    # An earlier process's leg (it entered Stasis before being adopted).
                    log.info("StasisStart of untracked leg %s: left for adoption", channel_id)
                    return []
                return self._inbound(event, chan, channel_id)
            return []
        out: list[CallEvent] = self.mark_dialing(channel_id)
        if kind in ("ChannelDestroyed", "ChannelHangupRequest"):
            out.extend(self._flush_amd(leg))  # a verdict comes before the end it explains
        handler = _HANDLERS.get(str(kind))
        if handler is not None:
            out.extend(handler(self, leg, event, chan))
        if kind == "StasisStart":
            out.extend(self._flush_amd(leg))  # back in Stasis: the verdict is actionable
        return out

    def reconcile(
        self, live_channels: Iterable[Mapping[str, Any]], *, confirmed_by: int
    ) -> list[CallEvent]:
        """Resynchronize from a `GET /channels` snapshot taken after the event link was down.

        Only legs confirmed at or before sequence `confirmed_by` are judged. A customer call
        absent from the snapshot ended meanwhile: its HANGUP is reported now (cause unknown, so
        None; the outcome still follows `cti.causes` from what we knew: answered or not). An
        agent or consult leg that is gone gives the customer's UNBRIDGED, as its
        ChannelDestroyed would have. A leg present and `Up` but not yet seen answered is now
        answered (ANSWERED for a customer call).
        """
        snapshot = {str(c.get("id")): c for c in live_channels if isinstance(c, Mapping)}
        out: list[CallEvent] = []
        for channel_id, leg in list(self._legs.items()):
            if leg.confirmed_seq is None or leg.confirmed_seq > confirmed_by:
                continue  # not judged: see unsure_legs
            chan = snapshot.get(channel_id)
            if chan is None:
                out.extend(self._gone(leg, "ended while the ARI event link was down"))
            else:
                out.extend(self.observe_channel(chan))
        return out

    def _gone(self, leg: _Leg, detail: str) -> list[CallEvent]:
        """End a leg whose end we did not see (cause unknown): the customer's HANGUP, or for
        an agent/consult leg the UNBRIDGED its ChannelDestroyed would have caused."""
        return self._destroyed(leg, {"cause": None, "cause_txt": detail}, {})

    # ----- helpers -----------------------------------------------------------------------
    def _event(self, kind: CallEventKind, leg: _Leg, **kw: Any) -> CallEvent:
        return CallEvent(kind=kind, call_id=leg.call_id, channel=leg.channel_id, **kw)

    def _end(self, leg: _Leg) -> None:
        self._legs.pop(leg.channel_id, None)
        self._ended[leg.channel_id] = None
        if len(self._ended) > MAX_ENDED_REMEMBERED:
            del self._ended[next(iter(self._ended))]
        if leg.bridge_id is not None:
            members = self._bridges.get(leg.bridge_id)
            if members and leg.channel_id in members:
                members.remove(leg.channel_id)

    def _hangup_event(self, leg: _Leg, cause: int | None, *, detail: str = "") -> CallEvent:
        outcome = causes.outcome_for_call(answered=leg.answered, cause=cause, amd=leg.amd)
        return self._event(CallEventKind.HANGUP, leg, cause=cause, outcome=outcome, detail=detail)

    def _inbound(
        self, event: Mapping[str, Any], chan: Mapping[str, Any], channel_id: str
    ) -> list[CallEvent]:
        leg = _Leg(
            channel_id=channel_id,
            call_id=channel_id,
            role=LegRole.CUSTOMER,
            inbound=True,
            confirmed_seq=0,
        )
        self._legs[channel_id] = leg
        caller = chan.get("caller")
        number = caller.get("number") if isinstance(caller, Mapping) else None
        out = [
            self._event(
                CallEventKind.INBOUND, leg, caller_id=number if isinstance(number, str) else ""
            )
        ]
        out.extend(self._stasis_start(leg, event, chan))
        return out

    def _flush_amd(self, leg: _Leg) -> list[CallEvent]:
        if leg.amd is None or leg.amd_reported:
            return []
        leg.amd_reported = True
        return [self._event(CallEventKind.AMD, leg, amd=leg.amd, amd_cause=leg.amd_cause)]

    def _answered(self, leg: _Leg) -> list[CallEvent]:
        if leg.answered or leg.role is not LegRole.CUSTOMER:
            leg.answered = True
            return []
        leg.answered = True
        return [self._event(CallEventKind.ANSWERED, leg)]

    # handlers: (leg, event, channel object) -> events
    def _stasis_start(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        leg.in_stasis = True
        out: list[CallEvent] = []
        if chan.get("state") == "Up":
            out.extend(self._answered(leg))
        verdict = amd_from_stasis_args(event.get("args"))
        if leg.role is LegRole.CUSTOMER and verdict is not None and leg.amd is None:
            leg.amd = verdict
            out.extend(self._flush_amd(leg))
        return out

    def _stasis_end(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        leg.in_stasis = False
        if not leg.inbound or leg.subscribed:
            return []  # still subscribed: ChannelDestroyed will say how it ended
        # Not subscribed beyond Stasis: nothing more will come for this channel.
        self._end(leg)
        if leg.hangup_requested:
            return [self._hangup_event(leg, leg.hangup_cause or causes.NORMAL_CLEARING)]
        return [
            self._hangup_event(
                leg, None, detail="left Stasis unsubscribed; no longer followed"
            )
        ]

    def _state_change(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        state = chan.get("state")
        if state == "Up":
            return self._answered(leg)
        if state in ("Ringing", "Ring") and not leg.ringing and not leg.answered:
            leg.ringing = True
            if leg.role is LegRole.CUSTOMER and not leg.inbound:
                return [self._event(CallEventKind.RINGING, leg)]
        return []

    def _varset(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        name = event.get("variable")
        value = event.get("value")
        if not isinstance(value, str):
            return []
        if name == "AMDSTATUS" and value:
            leg.amd = value.upper()
            leg.amd_reported = False
        elif name == "AMDCAUSE" and value:
            leg.amd_cause = value
            if leg.in_stasis:  # AMD() ran while in Stasis elsewhere: nothing to wait for
                return self._flush_amd(leg)
        return []

    def _dtmf(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        digit = event.get("digit")
        if leg.role is not LegRole.CUSTOMER or not isinstance(digit, str):
            return []
        if leg.moved_to is not None:
            # Moved to the IVR app (which gets the same events): the keys are the flow's,
            # perhaps a card number, and never appear in the dialer's stream.
            return []
        return [self._event(CallEventKind.DTMF, leg, digit=digit)]

    def _bridge_members(self, event: Mapping[str, Any]) -> tuple[str, list[str]]:
        bridge = _channel(event, "bridge")
        bridge_id = str(bridge.get("id", ""))
        members = [c for c in bridge.get("channels", []) if isinstance(c, str)]
        self._bridges[bridge_id] = members
        return bridge_id, members

    def _peer_name(self, channel_id: str) -> str:
        other = self._legs.get(channel_id)
        if other is not None and other.peer:
            return other.peer
        return channel_id

    def _entered_bridge(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        bridge_id, members = self._bridge_members(event)
        return self._entered(leg, bridge_id, members)

    def _entered(self, leg: _Leg, bridge_id: str, members: list[str]) -> list[CallEvent]:
        leg.bridge_id = bridge_id
        leg.was_bridged = True
        out: list[CallEvent] = []
        for member in members:
            cust = self._legs.get(member)
            if cust is None or cust.role is not LegRole.CUSTOMER or cust.bridged_with:
                continue
            others = [m for m in members if m != member]
            if others:
                cust.bridged_with = others[-1]
                cust.bridge_id = bridge_id
                out.append(
                    self._event(CallEventKind.BRIDGED, cust, peer=self._peer_name(others[-1]))
                )
        return out

    def _left_bridge(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        _bridge_id, members = self._bridge_members(event)
        return self._left(leg, members)

    def _left(self, leg: _Leg, members: list[str]) -> list[CallEvent]:
        out: list[CallEvent] = []
        if leg.role is LegRole.CUSTOMER and leg.bridged_with:
            peer = self._peer_name(leg.bridged_with)
            leg.bridged_with = None
            out.append(self._event(CallEventKind.UNBRIDGED, leg, peer=peer))
        leg.bridge_id = None
        for member in members:
            cust = self._legs.get(member)
            if cust is None or cust.role is not LegRole.CUSTOMER:
                continue
            if cust.bridged_with == leg.channel_id:
                remaining = [m for m in members if m != member]
                if remaining:
                    cust.bridged_with = remaining[-1]
                else:
                    cust.bridged_with = None
                    out.append(
                        self._event(
                            CallEventKind.UNBRIDGED, cust, peer=self._peer_name(leg.channel_id)
                        )
                    )
        return out

    def _hold(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        kind = CallEventKind.HELD if event.get("type") == "ChannelHold" else CallEventKind.UNHELD
        extra = {} if leg.role is LegRole.CUSTOMER else {"leg": leg.role.value}
        return [self._event(kind, leg, extra=extra)]

    def _hangup_request(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        leg.hangup_requested = True
        cause = _int(event.get("cause"))
        if not event.get("soft") and cause:
            leg.hangup_cause = cause
        return []

    def _destroyed(
        self, leg: _Leg, event: Mapping[str, Any], chan: Mapping[str, Any]
    ) -> list[CallEvent]:
        cause = _int(event.get("cause"))
        if not cause:  # 0 "Unknown" (or not known at all): fall back on the hang-up request
            cause = leg.hangup_cause or cause
        out: list[CallEvent] = []
        if leg.bridged_with and leg.role is LegRole.CUSTOMER:
            out.append(
                self._event(CallEventKind.UNBRIDGED, leg, peer=self._peer_name(leg.bridged_with))
            )
            leg.bridged_with = None
        elif leg.bridge_id is not None and leg.role is not LegRole.CUSTOMER:
            # Its ChannelLeftBridge normally comes first; when it was lost (a resync), leaving
            # here unbridges the customer it was with, as that event would have.
            members = self._bridges.get(leg.bridge_id, [])
            out.extend(self._left(leg, [m for m in members if m != leg.channel_id]))
        self._end(leg)
        if leg.role is LegRole.CUSTOMER:
            cause_txt = event.get("cause_txt")
            out.append(self._hangup_event(leg, cause, detail=str(cause_txt or "")))
            return out
        cust = self._legs.get(leg.call_id)
        if cust is None:
            return out
        if not leg.answered:
            # An agent or consult leg that never answered: the customer is not connected.
            detail = f"{leg.role.value} leg ended unanswered: {event.get('cause_txt')}"
        elif leg.role is LegRole.AGENT and not leg.was_bridged:
            # Answered, then ended before it could be added (a refused addChannel).
            detail = f"agent leg ended before it was bridged: {event.get('cause_txt')}"
        else:
            return out
        out.append(
            self._event(
                CallEventKind.UNBRIDGED,
                cust,
                peer=leg.peer or leg.channel_id,
                cause=cause,
                detail=detail,
            )
        )
        return out


_HANDLERS = {
    "StasisStart": AriTracker._stasis_start,
    "StasisEnd": AriTracker._stasis_end,
    "ChannelStateChange": AriTracker._state_change,
    "ChannelVarset": AriTracker._varset,
    "ChannelDtmfReceived": AriTracker._dtmf,
    "ChannelEnteredBridge": AriTracker._entered_bridge,
    "ChannelLeftBridge": AriTracker._left_bridge,
    "ChannelHold": AriTracker._hold,
    "ChannelUnhold": AriTracker._hold,
    "ChannelHangupRequest": AriTracker._hangup_request,
    "ChannelDestroyed": AriTracker._destroyed,
}
