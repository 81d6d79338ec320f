"""The AMI channel tracker: raw AMI events in, normalized call events out. Sans-IO.

Asterisk reports channels, not calls. One originated customer call is a *root* channel (the
channel the Originate created; for a Local channel its `;1` half, whose `Uniqueid` equals its
`Linkedid`), the root's `;2` half when it is a Local pair (it runs the far side: the trunk dial
or, in the emulator and the reference dialplan, the simulated customer), and any number of
further *legs* that share the root's `Linkedid` (the agent leg a `Dial()` creates, a transfer
target, a consult call).

What was learnt from the recorded captures (`tests/fixtures/asterisk/transcripts/`) and is easy
to get wrong:

- The answer is the root going `Up` (Newstate 6). The `;2` half is created in state 4 and may go
  `Up` first; agent legs go `Up` too. Neither is the customer answering.
- The Q.850 cause of an unanswered call is on the `;2` half: busy ends `;2` with 17 and `;1` with
  0, congestion 34/0, rejected 21/21, unallocated 1/1, no answer 19/19 (with `;1` first). So the
  call ends only when both halves are gone, and the `;2` cause wins when it is not 0.
- A failed `OriginateResponse` names the dial string, not the channel (`Uniqueid: <unknown>`),
  and may come before or after the Hangups. It is matched by `ActionID`.
- `OriginateResponse` is sent to every AMI session that can read `call`: a tracker that was told
  which originates are its own (`expect_originate`) ignores the others.
- Agent legs hang up after the root. Their late events must not resurrect the call.
- DTMF from the customer is a `DTMFEnd` with `Direction: Received` on the root; the same digit is
  reported again as `Sent`/`Received` on bridged legs, which are not the customer.
- AMD reports through `VarSet` of `AMDSTATUS` then `AMDCAUSE` on the root.
- Music on hold shows as `MusicOnHoldStart`/`Stop` on the root or its `;2` half. A caller
  waiting in a queue hears music too (between QueueCallerJoin and QueueCallerLeave): that is
  `QUEUED`, not `HELD`. The agent answering shows as BridgeEnter like any other connect.

Calls of an earlier process (a restart) are taken over with `begin_adopt` / `finish_adopt`
from a `CoreShowChannels` listing; the real listing of capture 02 shows what that relies on:
the `;2` halves and the agent legs (and their `;2` halves) share the root's `Linkedid`, and
the root and its agent leg name the same `BridgeId`.

The tracker never raises on wire input: an event it cannot use is counted in `skipped` (missing
fields) or ignored (events it has no use for), and the next event is processed normally.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cti.ami.codes import CAUSE_BY_REASON, REASON_ANSWERED, STATE_RING, STATE_RINGING, STATE_UP
from cti.causes import outcome_for_call
from cti.events import CallEvent, CallEventKind
from dialer.domain import Outcome

log = logging.getLogger(__name__)

#: How many ended calls' ids are remembered so that their late events are ignored.
ENDED_MEMORY = 50_000


@dataclass(slots=True)
class _Call:
    call_id: str
    action_id: str = ""
    dial_string: str = ""
    root_uid: str = ""
    root_name: str = ""
    far_uid: str = ""
    root_seen: bool = False
    root_gone: bool = False
    far_gone: bool = False
    root_cause: int = 0
    far_cause: int = 0
    cause_txt: str = ""
    reason_cause: int | None = None
    ringing: bool = False
    answered: bool = False
    amd: str | None = None
    amd_cause: str | None = None
    amd_sent: bool = False
    peer: str | None = None
    held: bool = False
    in_queue: bool = False
    #: Handed to an IVR flow (`AmiTelephony.send_to_ivr`): its keys are the flow's, perhaps a
    #: card number, and never appear in this stream.
    in_ivr: bool = False
    ended: bool = False
    deadline: float | None = None
    legs: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Channel:
    uid: str
    name: str
    call: _Call
    role: str  # "root", "far" (the root's ;2 half) or "leg"
    bridge: str = ""
    state: int = 0


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _local_base(name: str) -> str | None:
    """`Local/100@ctx-0000001a;1` -> `Local/100@ctx-0000001a`; None for other technologies."""
    if name.startswith("Local/") and name[-2:] in (";1", ";2"):
        return name[:-2]
    return None


class ChannelTracker:
    """Turns one AMI event at a time into `CallEvent`s. Pure: no I/O, no clock.

    Calls are known to the tracker in two ways. `expect_originate(call_id, action_id,
    channel_id=...)` announces one of our own originates before it is sent: the root channel is
    then recognized by its `Uniqueid` (we set `ChannelId` on the Originate, so it equals
    `channel_id`), and the `OriginateResponse` by its `ActionID`. With `track_unknown=True`
    (recorded captures, a supervisor's view) every root channel becomes a call whose id is its
    `Uniqueid`. Inbound calls (a non-Local root created ringing, state 4) are always tracked and
    announced with `INBOUND`.

    Every tracked call ends with exactly one `HANGUP`, from its channels' Hangups, from a failed
    `OriginateResponse` that created no channel, or from `resync()` when the call is gone.
    """

    def __init__(self, *, track_unknown: bool = False) -> None:
        self.track_unknown = track_unknown
        self.skipped = 0
        self._calls: dict[str, _Call] = {}
        self._by_uid: dict[str, _Channel] = {}
        self._by_name: dict[str, str] = {}
        self._by_action: dict[str, _Call] = {}
        self._by_channel_id: dict[str, _Call] = {}
        self._bridges: dict[str, set[str]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        # Calls that showed signs of life since `begin_resync()`: a listing taken while events
        # keep arriving may predate them, so they are never judged gone by that listing.
        self._touched: set[str] = set()
        self._known_at_resync: set[str] = set()
        # Calls being adopted (`begin_adopt`): their events are held here until the listing
        # has said what state they are in, then replayed (`finish_adopt`).
        self._adopting: dict[str, list[Mapping[str, str]]] = {}
        self._handlers: dict[str, Callable[[Mapping[str, str]], list[CallEvent]]] = {
            "newchannel": self._newchannel,
            "newstate": self._newstate,
            "dialstate": self._dialstate,
            "rename": self._rename,
            "varset": self._varset,
            "bridgeenter": self._bridge_enter,
            "bridgeleave": self._bridge_leave,
            "bridgedestroy": self._bridge_destroy,
            "blindtransfer": self._blind_transfer,
            "attendedtransfer": self._attended_transfer,
            "queuecallerjoin": self._queue_join,
            "queuecallerleave": self._queue_leave,
            "musiconholdstart": self._moh_start,
            "musiconholdstop": self._moh_stop,
            "dtmfend": self._dtmf_end,
            "hangup": self._hangup,
            "originateresponse": self._originate_response,
        }

    # ---- what the backend tells us -------------------------------------------------------
    def expect_originate(
        self,
        call_id: str,
        action_id: str,
        *,
        channel_id: str = "",
        dial_string: str = "",
        deadline: float | None = None,
    ) -> None:
        """Announce one of our own originates before it is sent.

        `deadline` (the caller's clock): if no channel of the call has appeared by then,
        `expire()` ends it.
        """
        call = _Call(call_id=call_id, action_id=action_id, dial_string=dial_string)
        call.deadline = deadline
        self._calls[call_id] = call
        self._touched.add(call_id)
        self._by_action[action_id] = call
        if channel_id:
            call.root_uid = channel_id
            self._by_channel_id[channel_id] = call

    def originate_refused(self, call_id: str) -> None:
        """The Originate was answered `Response: Error` (or never sent): forget the call."""
        call = self._calls.pop(call_id, None)
        if call is not None:
            self._by_action.pop(call.action_id, None)
            self._by_channel_id.pop(call.root_uid, None)

    def note_in_ivr(self, call_id: str) -> None:
        """The call is being handed to an IVR flow: its DTMF is no longer reported."""
        call = self._calls.get(call_id)
        if call is not None:
            call.in_ivr = True

    def is_live(self, call_id: str) -> bool:
        """Whether `call_id` is a call in progress. O(1): `live_calls` builds a dict of all."""
        call = self._calls.get(call_id)
        return call is not None and not call.ended

    def live_calls(self) -> dict[str, str]:
        """The calls in progress: call id -> root channel name ("" before the channel exists)."""
        return {cid: c.root_name for cid, c in self._calls.items() if not c.ended}

    def channel_of(self, call_id: str) -> str | None:
        """The root channel name of a live call, the one commands are sent to."""
        call = self._calls.get(call_id)
        if call is None or call.ended or not call.root_seen:
            return None
        return call.root_name

    def peer_of(self, call_id: str) -> str | None:
        """The channel the call's root is bridged with (the agent leg), if any."""
        call = self._calls.get(call_id)
        if call is None or call.ended:
            return None
        return call.peer

    def bridge_peers(self, channel: str, *, answered_only: bool = False) -> list[str]:
        """The other channels in the bridge `channel` (a name) is in; [] when not bridged.

        `answered_only` keeps the peers that are Up: a consult leg may enter the bridge
        while it still rings (capture 13c shows BridgeEnter at state 0).
        """
        uid = self._by_name.get(channel)
        chan = self._by_uid.get(uid) if uid else None
        if chan is None or not chan.bridge:
            return []
        members = self._bridges.get(chan.bridge, set())
        return [
            self._by_uid[m].name
            for m in sorted(members)
            if m != uid
            and m in self._by_uid
            and (not answered_only or self._by_uid[m].state == STATE_UP)
        ]

    def feed(self, event: Mapping[str, str]) -> list[CallEvent]:
        """Take one AMI event (a parsed message with an `Event` key); return its call events."""
        name = event.get("Event")
        if not name:
            return []
        handler = self._handlers.get(name.lower())
        if handler is None:
            return []
        if self._adopting and self._hold_for_adoption(event):
            return []
        try:
            out = handler(event)
        except KeyError as missing:
            self.skipped += 1
            log.warning("AMI %s event without field %s: skipped", name, missing)
            return []
        chan = self._by_uid.get(event.get("Uniqueid", ""))
        if chan is not None:
            self._touched.add(chan.call.call_id)
            if "ChannelState" in event:
                chan.state = _int(event.get("ChannelState"), chan.state)
        self._touched.update(ev.call_id for ev in out)
        return out

    def begin_resync(self) -> None:
        """Mark the moment a `CoreShowChannels` is sent; see `resync`."""
        self._touched.clear()
        self._known_at_resync = set(self._by_uid)

    def expire(self, now: float) -> list[CallEvent]:
        """End the originates whose channel never appeared by their deadline (`dangling`)."""
        out: list[CallEvent] = []
        for call in list(self._calls.values()):
            if (
                not call.ended
                and not call.root_seen
                and call.deadline is not None
                and call.deadline < now
            ):
                out += self._end(call, lost=True, detail="no channel appeared for the originate")
        return out

    def begin_adopt(self, call_ids: Iterable[str]) -> list[str]:
        """Start adopting calls an earlier process originated (their root `Uniqueid` is the call
        id, as `ChannelId` made it); call before sending `CoreShowChannels`.

        Returns the ids to adopt: those not followed already. From now on the events of their
        channels (by `Uniqueid`, `Linkedid` or `DestUniqueid`) are held back, so that nothing
        that happens while the listing is on its way is lost; `finish_adopt` replays them.
        """
        wanted = []
        for call_id in call_ids:
            if call_id in self._calls or call_id in self._adopting or call_id in wanted:
                continue
            wanted.append(call_id)
            self._adopting[call_id] = []
        return wanted

    def cancel_adopt(self, call_ids: Iterable[str]) -> None:
        """The listing failed: forget the pending adoptions (their held events too)."""
        for call_id in call_ids:
            self._adopting.pop(call_id, None)

    def finish_adopt(
        self, call_ids: Iterable[str], channels: Iterable[Mapping[str, str]]
    ) -> tuple[set[str], list[CallEvent]]:
        """Adopt the calls of `begin_adopt` that a `CoreShowChannels` listing shows alive.

        Returns the adopted ids and the events to emit. An adopted call is followed from here
        on like one of our own originates: its `;2` half, its other legs (same `Linkedid`) and
        their bridges are learnt from the listing (`_absorb_listing`, the same code the
        reconnect resync uses), so a call already bridged with an agent gets no BRIDGED now
        but its UNBRIDGED and HANGUP later. A call that is answered and has no other leg than
        its `;2` half (no agent connected, being dialled or parked by a hold) waits for the
        dialer in the dialplan: it gets ANSWERED (`detail` "adopted"). Then the events
        held since `begin_adopt` are replayed (they may end the call: it is still returned,
        with its HANGUP). A call id whose root is not listed is not adopted and gets no event.
        """
        listed = self._listed(channels)
        linked = self._by_linkedid(listed)
        adopted: set[str] = set()
        out: list[CallEvent] = []
        for call_id in call_ids:
            held = self._adopting.pop(call_id, None)
            item = listed.get(call_id)
            if held is None or item is None or call_id in self._calls:
                continue
            call = _Call(call_id=call_id, root_uid=call_id)
            self._calls[call_id] = call
            self._adopt_root(call, call_id, item.get("Channel", ""))
            self._absorb_listing(call, listed, linked)
            state = _int(item.get("ChannelState"))
            call.answered = state == STATE_UP
            call.ringing = state == STATE_RINGING
            adopted.add(call_id)
            if call.answered and call.peer is None and not call.legs:
                # No agent (nor one being dialled, nor one parked by a hold): it waits for us.
                out.append(self._ev(CallEventKind.ANSWERED, call, detail="adopted"))
            for event in held:
                out += self.feed(event)
        return adopted, out

    def note_amd(self, call_id: str, status: str, cause: str = "") -> list[CallEvent]:
        """An AMD verdict read back with `Getvar` (an adopted call whose VarSet events went to
        an earlier process). Ignored when a verdict is known already or `status` is empty."""
        call = self._calls.get(call_id)
        if call is None or call.ended or call.amd is not None or not status:
            return []
        call.amd, call.amd_cause = status, cause or None
        return [self._amd_event(call)]

    def needs_amd_readback(self, call_id: str) -> bool:
        """An answered, unbridged call without a verdict: AMD may have run before adoption."""
        call = self._calls.get(call_id)
        return (
            call is not None
            and not call.ended
            and call.answered
            and call.peer is None
            and not call.legs
            and call.amd is None
        )

    def _hold_for_adoption(self, event: Mapping[str, str]) -> bool:
        for key in ("Uniqueid", "Linkedid", "DestUniqueid"):
            held = self._adopting.get(event.get(key, ""))
            if held is not None:
                held.append(event)
                return True
        return False

    @staticmethod
    def _listed(channels: Iterable[Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
        listed: dict[str, Mapping[str, str]] = {}
        for item in channels:
            uid = item.get("Uniqueid", "")
            if uid:
                listed[uid] = item
        return listed

    @staticmethod
    def _by_linkedid(
        listed: Mapping[str, Mapping[str, str]],
    ) -> dict[str, list[Mapping[str, str]]]:
        linked: dict[str, list[Mapping[str, str]]] = {}
        for uid, item in listed.items():
            linkedid = item.get("Linkedid", "")
            if linkedid and linkedid != uid:
                linked.setdefault(linkedid, []).append(item)
        return linked

    def _absorb_listing(
        self,
        call: _Call,
        listed: Mapping[str, Mapping[str, str]],
        linked: Mapping[str, list[Mapping[str, str]]],
    ) -> bool:
        """Learn a followed call's channels from a listing: legs we have not seen created
        (same `Linkedid` as the root: the `;2` half, an agent leg dialled while we were not
        looking), each channel's state and bridge, and the root's bridge peer. No events:
        True when a bridge peer was learnt, and the caller decides what that means."""
        for item in linked.get(call.root_uid, []):
            uid = item.get("Uniqueid", "")
            if uid in self._by_uid or uid in self._ended:
                continue
            self._attach_leg(call, uid, item.get("Channel", ""))
        for uid in [call.root_uid, call.far_uid, *call.legs]:
            chan = self._by_uid.get(uid)
            seen = listed.get(uid)
            if chan is None or seen is None:
                continue
            chan.state = _int(seen.get("ChannelState"), chan.state)
            bridge = seen.get("BridgeId", "")
            if bridge and chan.bridge != bridge:
                if chan.bridge:
                    self._bridges.get(chan.bridge, set()).discard(uid)
                chan.bridge = bridge
                self._bridges.setdefault(bridge, set()).add(uid)
        root = self._by_uid.get(call.root_uid)
        if root is None or not root.bridge or call.peer is not None:
            return False
        # The root's bridge peer: prefer one of the call's own legs (the agent leg).
        others = [
            item
            for uid, item in listed.items()
            if uid != call.root_uid and item.get("BridgeId") == root.bridge
        ]
        others.sort(key=lambda item: item.get("Uniqueid", "") not in call.legs)
        if not others:
            return False
        call.peer = others[0].get("Channel") or None
        return call.peer is not None

    def _attach_leg(self, call: _Call, uid: str, name: str) -> None:
        """Map a channel of `call` that is not its root: the root's `;2` half, or a leg."""
        base = _local_base(name)
        is_far = (
            not call.far_uid
            and base is not None
            and name.endswith(";2")
            and base == _local_base(call.root_name)
        )
        self._by_uid[uid] = _Channel(uid=uid, name=name, call=call, role="far" if is_far else "leg")
        self._by_name[name] = uid
        if is_far:
            call.far_uid = uid
        else:
            call.legs.add(uid)

    def resync(self, channels: Iterable[Mapping[str, str]]) -> list[CallEvent]:
        """Reconcile with a `CoreShowChannels` listing taken after a reconnect.

        Call `begin_resync()` before sending the action and keep feeding events meanwhile: calls
        with events after that point are left alone. A live call whose root is not listed ended
        while we were not looking: it gets its HANGUP now, with the cause we knew (usually
        none: `cause` is None, the outcome `dangling` if it was never answered). A listed root
        that went `Up` meanwhile gets its ANSWERED. Legs created meanwhile (same `Linkedid`)
        are learnt from the listing, and a root found bridged with a peer we did not know gets
        its BRIDGED.
        """
        listed = self._listed(channels)
        linked = self._by_linkedid(listed)
        out: list[CallEvent] = []
        known = self._known_at_resync
        for call in list(self._calls.values()):
            if call.ended:
                continue
            if not call.root_seen:
                item = listed.get(call.root_uid) if call.root_uid else None
                if item is not None:
                    self._adopt_root(call, call.root_uid, item.get("Channel", ""))
                    out.append(self._ev(CallEventKind.DIALING, call))
                elif call.call_id not in self._touched:
                    out += self._end(call, lost=True)
                    continue
                else:
                    continue
            # A channel we knew before the listing was asked for and that is not in it is
            # gone, whatever arrived meanwhile; one that appeared since may simply be newer.
            if call.root_uid not in listed and call.root_uid in known:
                call.root_gone = True
            if call.far_uid and call.far_uid not in listed and call.far_uid in known:
                call.far_gone = True
            if call.root_gone and (not call.far_uid or call.far_gone):
                out += self._end(call, lost=True)
                continue
            item = listed.get(call.root_uid)
            if (
                item is not None
                and _int(item.get("ChannelState")) == STATE_UP
                and not call.answered
            ):
                call.answered = True
                out.append(self._ev(CallEventKind.ANSWERED, call))
            if item is not None and self._absorb_listing(call, listed, linked):
                # Bridged while we were not looking: the BRIDGED its BridgeEnter would give.
                out.append(self._ev(CallEventKind.BRIDGED, call, peer=call.peer))
        for uid in [u for u in self._by_uid if u not in listed and u in known]:
            self._forget_channel(uid)
        self._touched.clear()
        self._known_at_resync = set()
        return out

    # ---- helpers ---------------------------------------------------------------------------
    def _ev(self, kind: CallEventKind, call: _Call, **kw: object) -> CallEvent:
        return CallEvent(kind=kind, call_id=call.call_id, channel=call.root_name, **kw)  # type: ignore[arg-type]

    def _adopt_root(self, call: _Call, uid: str, name: str) -> None:
        call.root_uid = uid
        call.root_name = name
        call.root_seen = True
        self._by_uid[uid] = _Channel(uid=uid, name=name, call=call, role="root")
        self._by_name[name] = uid

    def _forget_channel(self, uid: str) -> None:
        chan = self._by_uid.pop(uid, None)
        if chan is None:
            return
        if self._by_name.get(chan.name) == uid:
            del self._by_name[chan.name]
        if chan.bridge:
            members = self._bridges.get(chan.bridge)
            if members is not None:
                members.discard(uid)
        chan.call.legs.discard(uid)

    def _remember_ended(self, key: str) -> None:
        if not key:
            return
        self._ended[key] = None
        if len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _channel(self, event: Mapping[str, str]) -> _Channel | None:
        uid = event.get("Uniqueid", "")
        chan = self._by_uid.get(uid)
        if chan is None or chan.call.ended:
            return None
        return chan

    def _end(self, call: _Call, *, lost: bool = False, detail: str = "") -> list[CallEvent]:
        out: list[CallEvent] = []
        if call.amd and not call.amd_sent:
            out.append(self._amd_event(call))
        cause: int | None
        if call.far_cause:
            cause = call.far_cause
        elif call.root_cause:
            cause = call.root_cause
        elif call.reason_cause is not None:
            cause = call.reason_cause
        elif call.answered and not lost:
            cause = 16
        else:
            cause = None
        if lost and cause is None and not call.answered:
            outcome = Outcome.DANGLING
        else:
            outcome = outcome_for_call(answered=call.answered, cause=cause, amd=call.amd)
        extra = {"cause_txt": call.cause_txt} if call.cause_txt else {}
        if lost and not detail:
            detail = "ended while the AMI link was down"
        out.append(
            self._ev(
                CallEventKind.HANGUP, call, cause=cause, outcome=outcome, detail=detail, extra=extra
            )
        )
        call.ended = True
        del self._calls[call.call_id]
        self._by_action.pop(call.action_id, None)
        self._by_channel_id.pop(call.root_uid, None)
        self._remember_ended(call.root_uid)
        for uid in [call.root_uid, call.far_uid]:
            self._forget_channel(uid)
        # Legs stay mapped to the ended call until their own Hangup, so that their late
        # events are recognized (and ignored) instead of looking like new calls.
        return out

    def _maybe_end(self, call: _Call) -> list[CallEvent]:
        if call.ended or not call.root_gone:
            return []
        if call.far_uid and not call.far_gone:
            return []
        return self._end(call)

    def _amd_event(self, call: _Call) -> CallEvent:
        call.amd_sent = True
        return self._ev(CallEventKind.AMD, call, amd=call.amd, amd_cause=call.amd_cause)

    # ---- handlers ------------------------------------------------------------------------
    def _newchannel(self, e: Mapping[str, str]) -> list[CallEvent]:
        uid = e["Uniqueid"]
        name = e["Channel"]
        linkedid = e.get("Linkedid", uid)
        if uid in self._by_uid or uid in self._ended:
            return []
        call = self._by_channel_id.get(uid)
        if call is not None:
            self._adopt_root(call, uid, name)
            return [self._ev(CallEventKind.DIALING, call)]
        owner = self._by_uid.get(linkedid)
        if owner is not None and linkedid != uid:
            self._attach_leg(owner.call, uid, name)
            return []
        if linkedid != uid:
            return []  # a leg of a call we do not follow, or of one that ended
        for pending in self._calls.values():
            # An originate announced without ChannelId: match its dial string to the name.
            if (
                not pending.root_seen
                and not pending.root_uid
                and pending.dial_string
                and name.startswith(pending.dial_string + "-")
                and name.endswith(";1")
            ):
                self._adopt_root(pending, uid, name)
                return [self._ev(CallEventKind.DIALING, pending)]
        local = _local_base(name) is not None
        if not local and _int(e.get("ChannelState")) == STATE_RING:
            call = _Call(call_id=uid)
            self._calls[uid] = call
            self._adopt_root(call, uid, name)
            return [
                self._ev(
                    CallEventKind.INBOUND,
                    call,
                    caller_id=e.get("CallerIDNum", ""),
                    extra={"exten": e.get("Exten", ""), "context": e.get("Context", "")},
                )
            ]
        if not self.track_unknown or name.endswith(";2"):
            return []
        call = _Call(call_id=uid)
        self._calls[uid] = call
        self._adopt_root(call, uid, name)
        return [self._ev(CallEventKind.DIALING, call)]

    def _newstate(self, e: Mapping[str, str]) -> list[CallEvent]:
        chan = self._channel(e)
        if chan is None:
            return []
        state = _int(e["ChannelState"])
        if chan.role != "root":
            return []
        call = chan.call
        if state == STATE_RINGING and not call.ringing and not call.answered:
            call.ringing = True
            return [self._ev(CallEventKind.RINGING, call)]
        if state == STATE_UP and not call.answered:
            call.answered = True
            return [self._ev(CallEventKind.ANSWERED, call)]
        return []

    def _dialstate(self, e: Mapping[str, str]) -> list[CallEvent]:
        chan = self._by_uid.get(e.get("DestUniqueid", ""))
        if chan is None or chan.role != "root" or chan.call.ended:
            return []
        call = chan.call
        if e.get("DialStatus") == "RINGING" and not call.ringing and not call.answered:
            call.ringing = True
            return [self._ev(CallEventKind.RINGING, call)]
        return []

    def _rename(self, e: Mapping[str, str]) -> list[CallEvent]:
        chan = self._by_uid.get(e["Uniqueid"])
        if chan is not None:
            self._by_name.pop(chan.name, None)
            chan.name = e["Newname"]
            self._by_name[chan.name] = chan.uid
            if chan.role == "root":
                chan.call.root_name = chan.name
        return []

    def _varset(self, e: Mapping[str, str]) -> list[CallEvent]:
        variable = e.get("Variable", "")
        if variable not in ("AMDSTATUS", "AMDCAUSE"):
            return []
        chan = self._channel(e)
        if chan is None or chan.role != "root":
            return []
        call = chan.call
        if variable == "AMDSTATUS":
            call.amd = e["Value"]
        else:
            call.amd_cause = e["Value"]
        if call.amd and call.amd_cause and not call.amd_sent:
            return [self._amd_event(call)]
        return []

    def _bridge_enter(self, e: Mapping[str, str]) -> list[CallEvent]:
        bridge = e["BridgeUniqueid"]
        uid = e["Uniqueid"]
        members = self._bridges.setdefault(bridge, set())
        members.add(uid)
        chan = self._by_uid.get(uid)
        if chan is not None:
            chan.bridge = bridge
        # Every live root in this bridge may have gained a peer: the Bridge action joins two
        # of our own roots, and a Dial() bridge is entered by the agent leg before the root.
        out: list[CallEvent] = []
        for member in sorted(members):
            root = self._by_uid.get(member)
            if root is None or root.role != "root" or root.call.ended:
                continue
            others = [
                self._by_uid[m].name for m in sorted(members) if m != member and m in self._by_uid
            ]
            if uid != member and chan is not None:
                peer: str | None = chan.name
            else:
                peer = others[0] if others else None
            if peer is None or peer == root.call.peer:
                continue
            root.call.peer = peer
            out.append(self._ev(CallEventKind.BRIDGED, root.call, peer=peer))
        return out

    def _bridge_leave(self, e: Mapping[str, str]) -> list[CallEvent]:
        bridge = e["BridgeUniqueid"]
        uid = e["Uniqueid"]
        members = self._bridges.get(bridge)
        if members is not None:
            members.discard(uid)
        chan = self._by_uid.get(uid)
        if chan is None:
            return []
        chan.bridge = ""
        call = chan.call
        if call.ended or chan.role != "root" or call.peer is None:
            return []
        peer, call.peer = call.peer, None
        return [self._ev(CallEventKind.UNBRIDGED, call, peer=peer)]

    def _bridge_destroy(self, e: Mapping[str, str]) -> list[CallEvent]:
        self._bridges.pop(e["BridgeUniqueid"], None)
        return []

    def _call_by_name(self, name: str) -> _Call | None:
        uid = self._by_name.get(name)
        chan = self._by_uid.get(uid) if uid else None
        if chan is None or chan.call.ended:
            return None
        return chan.call

    def _blind_transfer(self, e: Mapping[str, str]) -> list[CallEvent]:
        if e.get("Result") != "Success":
            return []
        call = self._call_by_name(e["TransfereeChannel"])
        if call is None:
            return []
        return [
            self._ev(
                CallEventKind.TRANSFERRED,
                call,
                target=e.get("Extension", ""),
                detail="blind",
                extra={
                    "context": e.get("Context", ""),
                    "transferer": e.get("TransfererChannel", ""),
                },
            )
        ]

    def _attended_transfer(self, e: Mapping[str, str]) -> list[CallEvent]:
        if e.get("Result") != "Success":
            return []
        call = None
        for key in ("TransfereeChannel", "OrigTransfererChannel", "SecondTransfererChannel"):
            call = self._call_by_name(e.get(key, ""))
            if call is not None:
                break
        if call is None:
            return []
        target = e.get("TransferTargetChannel") or e.get("SecondTransfererConnectedLineNum", "")
        return [
            self._ev(
                CallEventKind.TRANSFERRED,
                call,
                target=target,
                detail="attended",
                extra={"dest_type": e.get("DestType", "")},
            )
        ]

    def _queue_join(self, e: Mapping[str, str]) -> list[CallEvent]:
        chan = self._channel(e)
        if chan is None or chan.role != "root":
            return []
        chan.call.in_queue = True
        extra = {"queue": e["Queue"], "position": e.get("Position", "")}
        return [self._ev(CallEventKind.QUEUED, chan.call, extra=extra)]

    def _queue_leave(self, e: Mapping[str, str]) -> list[CallEvent]:
        chan = self._channel(e)
        if chan is not None and chan.role == "root":
            chan.call.in_queue = False
        return []

    def _moh(self, e: Mapping[str, str], on: bool) -> list[CallEvent]:
        chan = self._channel(e)
        if chan is None or chan.role == "leg":
            return []
        call = chan.call
        if call.in_queue:
            return []  # the queue's music, not a hold
        if call.held == on:
            return []
        call.held = on
        return [self._ev(CallEventKind.HELD if on else CallEventKind.UNHELD, call)]

    def _moh_start(self, e: Mapping[str, str]) -> list[CallEvent]:
        return self._moh(e, True)

    def _moh_stop(self, e: Mapping[str, str]) -> list[CallEvent]:
        return self._moh(e, False)

    def _dtmf_end(self, e: Mapping[str, str]) -> list[CallEvent]:
        if e.get("Direction") != "Received":
            return []
        chan = self._channel(e)
        if chan is None or chan.role != "root" or chan.call.in_ivr:
            return []
        return [self._ev(CallEventKind.DTMF, chan.call, digit=e["Digit"])]

    def _hangup(self, e: Mapping[str, str]) -> list[CallEvent]:
        uid = e["Uniqueid"]
        chan = self._by_uid.get(uid)
        if chan is None:
            return []
        call = chan.call
        cause = _int(e.get("Cause"))
        if chan.role == "leg" or call.ended:
            self._forget_channel(uid)
            return []
        if chan.role == "root":
            call.root_gone = True
            call.root_cause = cause
            if cause and not call.cause_txt:
                call.cause_txt = e.get("Cause-txt", "")
        else:
            call.far_gone = True
            call.far_cause = cause
            if cause:
                call.cause_txt = e.get("Cause-txt", "")
        return self._maybe_end(call)

    def _originate_response(self, e: Mapping[str, str]) -> list[CallEvent]:
        action_id = e.get("ActionID", "")
        call = self._by_action.get(action_id)
        if call is None or call.ended:
            return []  # another session's originate (Asterisk sends them to everyone)
        reason = _int(e.get("Reason"), default=-1)
        uid = e.get("Uniqueid", "")
        if reason == REASON_ANSWERED or e.get("Response") == "Success":
            if uid and uid != "<unknown>" and not call.root_uid:
                call.root_uid = uid
                self._by_channel_id[uid] = call
            return []
        call.reason_cause = CAUSE_BY_REASON.get(reason)
        if not call.root_seen or (call.root_gone and (not call.far_uid or call.far_gone)):
            # No channel ever appeared (or all are gone): the response is the whole story.
            call.root_gone = True
            return self._end(call)
        return []
