"""The emulator's call model: channels, Local pairs, bridges and a tiny dialplan, in Python.

`Pbx` knows nothing about sockets. It turns actions (`originate`, `hangup`, `redirect`,
`bridge`, `blind_transfer`, `atxfer`, `play_dtmf`, `varset`) into AMI event field lists, in the
field order and, as far as one model allows, the event order of the Asterisk 20.20.1 captures in
`tests/fixtures/asterisk/transcripts/ami/`. Each event goes to the `emit` callback; the AMI
server (`sim.pbx.ami_server`) fans it out to the sessions allowed to read its class.

Time: every dialplan step runs in an asyncio task owned by the `Pbx`, and every wait is
`seconds * time_scale`. `close()` cancels and awaits them all.

The model, in short:
- `Local/<x>@<ctx>` is a pair: `;1` (what the originator or `Dial()` holds) and `;2` (runs
  `<ctx>,<x>`). Answer, ringing, busy and hang-up on `;2` show on `;1`; hanging up one half
  takes the other with it.
- `Local/<n>@sim-customers` and `PJSIP/<n>@<trunk>` are callees whose behaviour comes from the
  population (`sim.population`); `PJSIP/<n>@<trunk>` is one channel, as res_pjsip makes it.
- `Local/1XXX@agents` answers at once, `2XXX` rings 2 s first, `9XXX` is busy; `PJSIP/<name>`
  (no `@`) is an agent phone that answers at once. Agents stay up until hung up.
- After the answer, the root channel (`;1`) runs the Originate's Context/Exten/Priority (or its
  Application) in `DIALPLAN`, which holds `extensions_paceline.conf` and the reference contexts.

Where the captures show a thread race (e.g. OriginateResponse before or after the root's first
dialplan steps), one order is picked: the root's steps up to its first wait come first. After a
Hangup action on a Local `;1`, the `;2` half is gone at once but its SoftHangupRequest/Hangup
events trail by `DEFER_S` (real seconds). Not modelled: NewCallerid on Dial() legs,
DeviceStateChange, QueueMemberStatus, RTCP, chan_sip. Stasis(): no ARI app shares calls with
the AMI side. An app in `Pbx.stasis_apps` (default `paceline-ivr`: [paceline-ivr-outbound])
is modelled as connected: the channel waits in Stasis() until it is hung up, and
`Pbx.stasis_entries` records it. Any other app fails at once (STASISSTATUS=FAILED, as
Stasis() does for an app that is not registered) and the dialplan goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import uuid
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cti import causes
from cti.ami import codes
from sim.population import CalleeBehaviour, CalleeKind, Population

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]

CAUSE_TXT = causes.CAUSE_TEXT  # one table, in cti.causes

#: OriginateResponse Reason for a failed Local-channel callee, by DIALSTATUS.
REASON_BY_DIALSTATUS: dict[str, int] = {
    "ANSWER": codes.REASON_ANSWERED,
    "BUSY": codes.REASON_BUSY,
    "CONGESTION": codes.REASON_CONGESTION,
    "NOANSWER": codes.REASON_FAILED,
    "CHANUNAVAIL": codes.REASON_FAILED,
    "TIMEOUT": codes.REASON_RINGING,
    "CANCEL": codes.REASON_HANGUP,
}

UNKNOWN = "<unknown>"
MOH_CLASS = "default"
DTMF_DEFAULT_MS = 100
#: Unscaled durations of the emulated media apps.
PLAYBACK_S = 2.0
AMD_S_BY_STATUS = {"HUMAN": 0.8, "MACHINE": 1.5}
DTMF_GAP_S = 0.25
#: Real (unscaled) seconds by which the `;2` Hangup event trails a Hangup action on `;1`.
DEFER_S = 0.2


def cause_txt(cause: int) -> str:
    return CAUSE_TXT.get(cause, "Unknown")


# --------------------------------------------------------------------------------------------
# Channels and bridges


@dataclass(eq=False)
class Channel:
    """One channel. `partner` is the other half of a Local pair; `callee` the far end's
    behaviour when the far end is an emulated customer."""

    name: str
    uniqueid: str
    linkedid: str
    context: str
    exten: str
    created: float
    priority: int = 1
    state: int = codes.STATE_DOWN
    cid_num: str = UNKNOWN
    cid_name: str = UNKNOWN
    conn_num: str = UNKNOWN
    conn_name: str = UNKNOWN
    vars: dict[str, str] = field(default_factory=dict)
    partner: Channel | None = None
    bridge: Bridge | None = None
    app: str = ""
    app_data: str = ""
    alive: bool = True
    in_dialplan: bool = False
    moh: bool = False
    task: asyncio.Task[None] | None = None
    aux: set[asyncio.Task[None]] = field(default_factory=set)
    listener: LegListener | None = None
    dialing: list[Channel] = field(default_factory=list)
    dialed_by: Channel | None = None
    dial_done: asyncio.Future[str] | None = None
    resume: tuple[str, str, int] | None = None
    callee: CalleeBehaviour | None = None
    consult: Consult | None = None
    record: CallRecord | None = None

    @property
    def tech(self) -> str:
        return self.name.partition("/")[0]


@dataclass(eq=False)
class Bridge:
    """A basic two-party bridge. `kind` "dial": made by Dial() (caller waits in Dial until the
    callee leaves); "action": made by the Bridge action (a lone member continues its dialplan
    at priority+1); "consult": an attended-transfer consultation."""

    uniqueid: str
    kind: str
    members: list[Channel] = field(default_factory=list)
    caller: Channel | None = None
    held: bool = False


@dataclass(eq=False)
class Consult:
    """An attended transfer in progress on the transferer channel."""

    original: Bridge
    transferee: Channel
    target: Channel
    bridge: Bridge | None = None


@dataclass
class CallRecord:
    """What one Originate did, for tests: `reason` is the OriginateResponse Reason sent.

    Also kept, for end-to-end checks against what the dialer wrote: `answered_at` and
    `ended_at` (event-loop time, unscaled) of the root channel's answer and Hangup, `cause`
    (the Q.850 cause of that Hangup), `bridged_to` (the channel names the root shared a bridge
    with, in order: e.g. `PJSIP/agent101-0000002a`), `played` (the sounds played to it) and
    `amd` (the AMDSTATUS its AMD() run set; None if AMD never finished on it).
    """

    action_id: str | None
    channel_id: str | None
    dial_string: str
    kind: CalleeKind | None
    channel: str | None = None
    uniqueid: str | None = None
    reason: int | None = None
    ended: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    cause: int | None = None
    bridged_to: list[str] = field(default_factory=list)
    played: list[str] = field(default_factory=list)
    amd: str | None = None

    def note_bridge(self, peers: Sequence[str]) -> None:
        """The root entered a bridge with `peers` (channel names); each is kept once."""
        self.bridged_to += [p for p in peers if p not in self.bridged_to]


@dataclass(frozen=True)
class StasisEntry:
    """A channel that ran Stasis() of an app in `Pbx.stasis_apps` (an agentless call sent to
    the IVR): the app, its arguments (the flow), where in the dialplan, and its `PACELINE_*`
    channel variables then. The channel stays there until it hangs up."""

    app: str
    args: tuple[str, ...]
    context: str
    exten: str
    variables: dict[str, str]


class LegListener(Protocol):
    """Who waits for an outbound leg (Originate or Dial) and what it does on each step."""

    def ringing(self, leg: Channel) -> None: ...
    def answered(self, leg: Channel) -> None: ...
    def failed(self, leg: Channel, status: str) -> None: ...
    def ended(self, leg: Channel) -> None: ...


# --------------------------------------------------------------------------------------------
# The dialplan

Data = str | Callable[[Channel], str]
Step = tuple[str | None, str, Data]  # (label, application, data)


def _amd_wanted(ch: Channel) -> str:
    return ("1" if ch.vars.get("PACELINE_AMD") == "1" else "0") + "?amd"


def _hangup_cause_or_16(ch: Channel) -> str:
    return ch.vars.get("HANGUPCAUSE") or "16"


def _is_human(ch: Channel) -> str:
    return ("1" if ch.vars.get("AMDSTATUS") == "HUMAN" else "0") + "?human"


#: context -> [(exten pattern, steps)]: extensions_paceline.conf and the reference contexts.
DIALPLAN: dict[str, list[tuple[str, list[Step]]]] = {
    "paceline-outbound": [("s", [
        (None, "NoOp", "paceline call ${PACELINE_CALL_ID}"),
        (None, "GotoIf", _amd_wanted),
        ("wait", "Wait", "60"),
        (None, "Hangup", "16"),
        ("amd", "AMD", ""),
        (None, "Goto", "wait"),
    ])],
    "paceline-agent": [("s", [
        (None, "NoOp", "paceline connect ${PACELINE_CALL_ID} to ${PACELINE_AGENT}"),
        (None, "Dial", "${PACELINE_AGENT},30,tT"),
        (None, "Hangup", _hangup_cause_or_16),
    ])],
    "paceline-abandon": [("s", [
        (None, "Answer", ""),
        (None, "Playback", "${PACELINE_SOUND}"),
        (None, "Hangup", "16"),
    ])],
    "paceline-hold": [("s", [
        (None, "MusicOnHold", "default,3600"),
        (None, "Hangup", "16"),
    ])],
    "paceline-park": [("s", [
        (None, "Wait", "3600"),
        (None, "Hangup", "16"),
    ])],
    "paceline-transfer": [("_X.", [
        (None, "NoOp", "paceline transfer to ${EXTEN}"),
        (None, "Dial", "Local/${EXTEN}@agents,30,tT"),
        (None, "Hangup", ""),
    ])],
    # send_to_ivr (agentless campaigns): Setvar PACELINE_<NAME> and PACELINE_IVR_APP, then
    # Redirect here with the flow's name as the extension. The IVR app runs the flow.
    "paceline-ivr-outbound": [("_[a-z].", [
        (None, "Stasis", "${PACELINE_IVR_APP},${EXTEN}"),
        (None, "Hangup", ""),
    ])],
    "dialer-connect": [("_X.", [
        (None, "NoOp", "connecting ${CHANNEL} to agent ${EXTEN}"),
        (None, "Dial", "Local/${EXTEN}@agents,30"),
        (None, "Hangup", ""),
    ])],
    "dialer-connect-xfer": [("_X.", [
        (None, "NoOp", "connecting ${CHANNEL} to agent ${EXTEN} with transfer features"),
        (None, "Dial", "Local/${EXTEN}@agents,30,tT"),
        (None, "Hangup", ""),
    ])],
    # ARI: AMD, then every verdict back to the dialer's Stasis app (PACELINE_APP is set on
    # the originate), which decides per campaign what a machine gets.
    "paceline-amd": [("s", [
        (None, "AMD", ""),
        (None, "Stasis", "${PACELINE_APP},amd,${AMDSTATUS}"),
        (None, "Hangup", ""),
    ])],
    "dialer-amd": [("_X.", [
        (None, "AMD", ""),
        (None, "NoOp", "AMD result for ${EXTEN}: ${AMDSTATUS} / ${AMDCAUSE}"),
        (None, "GotoIf", _is_human),
        (None, "Hangup", "16"),
        ("human", "Stasis", "dialer,human,${EXTEN}"),
        (None, "Hangup", ""),
    ])],
    "agents": [
        ("_1XXX", [
            (None, "NoOp", "agent ${EXTEN}: answers at once"),
            (None, "Answer", ""),
            (None, "Wait", "3600"),
            (None, "Hangup", "16"),
        ]),
        ("_2XXX", [
            (None, "NoOp", "agent ${EXTEN}: answers after ring"),
            (None, "Ringing", ""),
            (None, "Wait", "2"),
            (None, "Answer", ""),
            (None, "Wait", "3600"),
            (None, "Hangup", "16"),
        ]),
        ("_9XXX", [
            (None, "NoOp", "agent ${EXTEN}: busy"),
            (None, "Busy", "5"),
        ]),
    ],
}

CUSTOMER_CONTEXT = "sim-customers"
#: features.conf `atxfer` (the reference config) and `atxferabort` (Asterisk's default): what
#: the Atxfer and CancelAtxfer actions send as DTMF.
ATXFER_CODE = "*2"
ATXFER_ABORT = "*1"
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def exten_matches(pattern: str, exten: str) -> bool:
    """Asterisk extension matching: literal, or `_` patterns with X Z N [..] . !

    A set `[a-z]`, `[1-5]`, `[135]` is one character among those listed (ranges with `-`)."""
    if not pattern.startswith("_"):
        return pattern == exten
    rx = ""
    body = pattern[1:]
    i = 0
    while i < len(body):
        c = body[i]
        end = body.find("]", i + 1) if c == "[" else -1
        if end > i + 1:
            members = body[i + 1 : end]
            rx += "[" + "".join("-" if m == "-" else re.escape(m) for m in members) + "]"
            i = end + 1
            continue
        rx += {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(
            c, re.escape(c)
        )
        i += 1
    return re.fullmatch(rx, exten) is not None


def find_steps(context: str, exten: str) -> list[Step] | None:
    for pattern, steps in DIALPLAN.get(context, ()):
        if exten_matches(pattern, exten):
            return steps
    return None


def find_priority(context: str, exten: str, priority: str) -> int:
    """A priority number or label; 0 when it does not exist (Asterisk's "Priority is invalid")."""
    if priority.strip().isdigit():
        return int(priority)
    for i, (label, _, _) in enumerate(find_steps(context, exten) or [], start=1):
        if label == priority:
            return i
    return 0


def seconds_arg(args: Sequence[str], index: int, default: float) -> float:
    """A dialplan app's time argument (`Wait(2.5)`); missing or not a number -> `default`."""
    try:
        return float(args[index])
    except (IndexError, ValueError):
        return default


def parse_callerid(text: str) -> tuple[str, str]:
    """`Name <number>` -> (number, name), `<unknown>` for what is missing."""
    name, sep, rest = text.partition("<")
    if not sep:
        value = text.strip()
        return (value or UNKNOWN, UNKNOWN) if value.replace("+", "").isdigit() else (
            UNKNOWN, value or UNKNOWN
        )
    return rest.partition(">")[0].strip() or UNKNOWN, name.strip().strip('"') or UNKNOWN


class _Stop(Exception):
    """Raised inside a dialplan app when the channel is gone."""


# --------------------------------------------------------------------------------------------
# The PBX


class Pbx:
    """The call model. See the module docstring. All public methods are synchronous except
    `close`; they emit their events before returning, so callers can reply first."""

    def __init__(
        self,
        *,
        emit: Callable[[Pairs], None],
        population: Population,
        rng: random.Random,
        time_scale: float,
        epoch: int,
        atxfer_feature: bool = True,
        dtmf_delay_s: float = 1.0,
        stasis_apps: Collection[str] = ("paceline-ivr",),
    ) -> None:
        self._emit = emit
        self._population = population
        self._rng = rng
        self.time_scale = time_scale
        self._epoch = epoch
        self.atxfer_feature = atxfer_feature
        self.dtmf_delay_s = dtmf_delay_s
        #: Live channels by name, in creation order.
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.globals: dict[str, str] = {}
        self.calls: list[CallRecord] = []
        #: Stasis apps modelled as connected (see `StasisEntry`); any other fails at once.
        self.stasis_apps = frozenset(stasis_apps)
        #: channels that entered one of `stasis_apps`, by Uniqueid (the call id of a root)
        self.stasis_entries: dict[str, StasisEntry] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Exceptions raised inside call tasks (a bug in the emulator); tests assert it is empty.
        self.errors: list[BaseException] = []
        self._uid_seq = 0
        self._deferred: list[Pairs] = []
        self._defer_timer: asyncio.TimerHandle | None = None
        self._chan_seq = 0
        self._closed = False

    # ---- plumbing ---------------------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) * self.time_scale)

    def spawn(self, coro: Coroutine[Any, Any, None],
              owner: Channel | None = None) -> asyncio.Task[None] | None:
        """Start a task the PBX owns (and `owner` too: it ends when that channel is gone)."""
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        if owner is not None:
            owner.aux.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.errors.append(exc)
            log.error("emulated PBX task failed", exc_info=exc)

    async def close(self) -> None:
        """Cancel every dialplan task and timer; calls simply stop (no events)."""
        self._closed = True
        if self._defer_timer is not None:
            self._defer_timer.cancel()
            self._defer_timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def next_uniqueid(self) -> str:
        self._uid_seq += 1
        return f"{self._epoch}.{self._uid_seq}"

    def _new_bridge(self, kind: str) -> Bridge:
        bridge = Bridge(str(uuid.UUID(int=self._rng.getrandbits(128), version=4)), kind)
        self.bridges[bridge.uniqueid] = bridge
        return bridge

    def _new_channel(self, name: str, context: str, exten: str, *, uniqueid: str | None,
                     linkedid: str | None) -> Channel:
        uid = uniqueid or self.next_uniqueid()
        ch = Channel(name=name, uniqueid=uid, linkedid=linkedid or uid, context=context,
                     exten=exten, created=self.now())
        self.channels[name] = ch
        return ch

    def find(self, name: str) -> Channel | None:
        return self.channels.get(name)

    # ---- event builders (field order as captured) --------------------------------------------

    @staticmethod
    def snapshot(ch: Channel, prefix: str = "") -> Pairs:
        return [
            (f"{prefix}Channel", ch.name),
            (f"{prefix}ChannelState", str(ch.state)),
            (f"{prefix}ChannelStateDesc", codes.STATE_DESC[ch.state]),
            (f"{prefix}CallerIDNum", ch.cid_num),
            (f"{prefix}CallerIDName", ch.cid_name),
            (f"{prefix}ConnectedLineNum", ch.conn_num),
            (f"{prefix}ConnectedLineName", ch.conn_name),
            (f"{prefix}Language", "en"),
            (f"{prefix}AccountCode", ""),
            (f"{prefix}Context", ch.context),
            (f"{prefix}Exten", ch.exten),
            (f"{prefix}Priority", str(ch.priority)),
            (f"{prefix}Uniqueid", ch.uniqueid),
            (f"{prefix}Linkedid", ch.linkedid),
        ]

    @staticmethod
    def bridge_snapshot(bridge: Bridge, prefix: str = "Bridge", count: int | None = None) -> Pairs:
        n = len(bridge.members) if count is None else count
        return [
            (f"{prefix}Uniqueid", bridge.uniqueid),
            (f"{prefix}Type", "basic"),
            (f"{prefix}Technology", "simple_bridge"),
            (f"{prefix}Creator", UNKNOWN),
            (f"{prefix}Name", UNKNOWN),
            (f"{prefix}NumChannels", str(n)),
            (f"{prefix}VideoSourceMode", "none"),
        ]

    def emit(self, pairs: Pairs) -> None:
        self._emit(pairs)

    def event(self, name: str, ch: Channel, *extra: tuple[str, str],
              privilege: str = "call,all") -> None:
        self._emit([("Event", name), ("Privilege", privilege), *self.snapshot(ch), *extra])

    def newstate(self, ch: Channel, state: int) -> None:
        ch.state = state
        self.event("Newstate", ch)

    def varset(self, ch: Channel, name: str, value: str) -> None:
        ch.vars[name] = value
        self.event("VarSet", ch, ("Variable", name), ("Value", value),
                   privilege="dialplan,all")

    def set_global(self, name: str, value: str) -> None:
        self.globals[name] = value
        self._emit([("Event", "VarSet"), ("Privilege", "dialplan,all"), ("Channel", "none"),
                    ("Uniqueid", "none"), ("Variable", name), ("Value", value)])

    def dial_event(self, name: str, caller: Channel | None, dest: Channel,
                   *extra: tuple[str, str]) -> None:
        pairs: Pairs = [("Event", name), ("Privilege", "call,all")]
        if caller is not None:
            pairs += self.snapshot(caller)
        pairs += self.snapshot(dest, "Dest")
        pairs += extra
        self._emit(pairs)

    def bridge_event(self, name: str, bridge: Bridge, ch: Channel | None = None) -> None:
        pairs: Pairs = [("Event", name), ("Privilege", "call,all"),
                        *self.bridge_snapshot(bridge)]
        if ch is not None:
            pairs += self.snapshot(ch)
        self._emit(pairs)

    def hangup_event(self, ch: Channel, cause: int) -> None:
        if ch.record is not None and ch.record.ended_at is None:
            ch.record.ended_at, ch.record.cause = self.now(), cause
        self.event("Hangup", ch, ("Cause", str(cause)), ("Cause-txt", cause_txt(cause)))

    def hangup_request(self, ch: Channel, cause: int, *, soft: bool = False) -> None:
        self.event("SoftHangupRequest" if soft else "HangupRequest", ch, ("Cause", str(cause)))

    def local_bridge(self, one: Channel, two: Channel) -> None:
        self._emit([("Event", "LocalBridge"), ("Privilege", "call,all"),
                    *self.snapshot(one, "LocalOne"), *self.snapshot(two, "LocalTwo"),
                    ("Context", two.context), ("Exten", two.exten),
                    ("LocalOptimization", "Yes")])

    def moh_start(self, ch: Channel) -> None:
        if not ch.moh:
            ch.moh = True
            self.event("MusicOnHoldStart", ch, ("Class", MOH_CLASS))

    def moh_stop(self, ch: Channel) -> None:
        if ch.moh:
            ch.moh = False
            self.event("MusicOnHoldStop", ch)

    # ---- creating outbound legs ---------------------------------------------------------------

    def create_leg(self, dial_string: str, *, caller: Channel | None,
                   listener: LegListener, uniqueid: str | None = None,
                   other_uniqueid: str | None = None,
                   variables: Sequence[tuple[str, str]] = (),
                   callerid: tuple[str, str] | None = None,
                   behaviour: CalleeBehaviour | None = None) -> Channel | None:
        """Create the channel(s) for `dial_string`, emit Newchannel..DialBegin and start the far
        end. Returns the leg the dialer holds (`;1` of a Local pair), None if undialable."""
        tech, _, rest = dial_string.partition("/")
        linked = caller.linkedid if caller is not None else uniqueid
        self._chan_seq += 1
        suffix = f"{self._chan_seq:08x}"
        if tech == "Local":
            exten, _, context = rest.partition("@")
            context = context.partition("/")[0] or "default"  # `/n` etc. are options
            if context != CUSTOMER_CONTEXT and find_steps(context, exten) is None:
                return None
            base = f"Local/{exten}@{context}-{suffix}"
            one = self._new_channel(f"{base};1", context, exten, uniqueid=uniqueid,
                                    linkedid=linked)
            self.event("Newchannel", one)
            two = self._new_channel(f"{base};2", context, exten, uniqueid=other_uniqueid,
                                    linkedid=one.linkedid)
            two.state = codes.STATE_RING
            self.event("Newchannel", two)
            one.partner, two.partner = two, one
            leg = one
            if caller is None:
                one.app, one.app_data = "AppDial2", "(Outgoing Line)"
                self.event("Newexten", one, ("Extension", exten), ("Application", one.app),
                           ("AppData", one.app_data), privilege="dialplan,all")
            else:
                one.app, one.app_data = "AppDial", "(Outgoing Line)"
            for chan in (one, two):
                for key, value in variables:
                    self.varset(chan, key, value)
                self._caller_ids(chan, caller=caller, callerid=callerid, exten=exten)
            self.local_bridge(one, two)
            far: Channel = two
        elif tech == "PJSIP" and rest:
            endpoint, at, trunk = rest.partition("@")
            name = f"PJSIP/{trunk if at else endpoint}-{suffix}"
            leg = self._new_channel(name, "default", "s", uniqueid=uniqueid, linkedid=linked)
            leg.app, leg.app_data = "AppDial2" if caller is None else "AppDial", "(Outgoing Line)"
            self.event("Newchannel", leg)
            for key, value in variables:
                self.varset(leg, key, value)
            self._caller_ids(leg, caller=caller, callerid=callerid, exten=endpoint)
            far = leg
        else:
            return None
        leg.listener = listener
        leg.callee = behaviour
        if caller is not None:
            caller.dialing.append(leg)
            leg.dialed_by = caller
        self.dial_event("DialBegin", caller, leg, ("DialString", rest))
        if tech == "Local" and far is not leg:
            exten, _, context = rest.partition("@")
            context = context.partition("/")[0]
            if context == CUSTOMER_CONTEXT:
                assert behaviour is not None
                far.callee = behaviour
                far.in_dialplan = True
                far.task = self.spawn(self._customer(far, behaviour, exten))
            else:
                self.start_dialplan(far, context, exten, 1)
        elif tech == "PJSIP":
            if behaviour is not None:
                self.spawn(self._remote_customer(leg, behaviour), leg)
            else:
                self.spawn(self._remote_agent(leg), leg)
        return leg

    def _caller_ids(self, chan: Channel, *, caller: Channel | None,
                    callerid: tuple[str, str] | None, exten: str) -> None:
        """A Dial() leg shows its number and the caller's name; an Originate's CallerID is
        announced with NewCallerid / NewConnectedLine, as captured."""
        if caller is not None:
            chan.cid_num, chan.cid_name = exten, caller.cid_name
            chan.conn_num, chan.conn_name = caller.cid_num, caller.cid_name
        elif callerid is not None and callerid != (UNKNOWN, UNKNOWN):
            chan.cid_num, chan.cid_name = callerid
            self.event("NewCallerid", chan,
                       ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)"))
            chan.conn_num, chan.conn_name = callerid
            self.event("NewConnectedLine", chan)

    # ---- far ends -----------------------------------------------------------------------------

    async def _customer(self, far: Channel, b: CalleeBehaviour, number: str) -> None:
        """The `;2` of Local/<n>@sim-customers: the population decides what happens."""
        try:
            await self._app(far, 1, "NoOp", f"sim customer {number}: {b.kind.value}")
            if b.kind in (CalleeKind.FAILED, CalleeKind.CONGESTION):
                await self.sleep(b.ring_s)
                if b.kind is CalleeKind.CONGESTION:
                    await self._app(far, 2, "Congestion", "5")
                    self._fail_pair(far, "CONGESTION", 34)
                else:
                    await self._app(far, 2, "Hangup", str(b.cause))
                    self.hangup(far, b.cause, source="dialplan")
                return
            await self._app(far, 2, "Ringing", "")
            self.ring(far)
            await self._app(far, 3, "Wait", f"{b.ring_s:g}")
            await self.sleep(b.ring_s)
            if b.kind is CalleeKind.BUSY:
                await self._app(far, 4, "Busy", "5")
                self._fail_pair(far, "BUSY", 17)
                return
            if b.kind in (CalleeKind.REJECTED, CalleeKind.NO_ANSWER):
                await self._app(far, 4, "Hangup", str(b.cause))
                self.hangup(far, b.cause, source="dialplan")
                return
            await self._app(far, 4, "Answer", "")
            self.answer(far)
            if b.dtmf and far.partner is not None:
                self.spawn(self._send_dtmf_later(far.partner, b.dtmf), far)
            await self._app(far, 5, "Wait", f"{b.talk_s:g}")
            await self.sleep(b.talk_s)
            await self._app(far, 6, "Hangup", "16")
            self.hangup(far, 16, source="dialplan")
        except _Stop:
            return

    async def _remote_customer(self, leg: Channel, b: CalleeBehaviour) -> None:
        """A PJSIP callee: one channel; a 486 gives Reason 0 with cause 17, as res_pjsip does."""
        if b.kind not in (CalleeKind.FAILED, CalleeKind.CONGESTION):
            await self.sleep(min(b.ring_s, 1.0))
            self.ring(leg)
            await self.sleep(max(0.0, b.ring_s - 1.0))
        else:
            await self.sleep(b.ring_s)
        if not leg.alive:
            return
        if b.answered:
            self.answer(leg)
            if b.dtmf:
                self.spawn(self._send_dtmf_later(leg, b.dtmf), leg)
            await self.sleep(b.talk_s)
            self.hangup(leg, 16, source="remote")
            return
        if b.kind is CalleeKind.NO_ANSWER:
            return  # rings until the originate/Dial timeout ends it
        status = {CalleeKind.BUSY: "BUSY", CalleeKind.CONGESTION: "CONGESTION"}.get(
            b.kind, "NOANSWER"
        )
        self.hangup_request(leg, b.cause)
        if leg.listener is not None:
            leg.listener.failed(leg, status)
        self.hangup(leg, b.cause, source="remote", quiet=True)

    async def _remote_agent(self, leg: Channel) -> None:
        """A PJSIP agent phone answers at once and stays up until hung up."""
        await asyncio.sleep(0)
        if leg.alive:
            self.answer(leg)

    async def _send_dtmf_later(self, ch: Channel, digits: str) -> None:
        await self.sleep(self.dtmf_delay_s)
        for digit in digits:
            if not ch.alive:
                return
            self.dtmf_into(ch, digit, DTMF_DEFAULT_MS)
            await self.sleep(DTMF_GAP_S)

    # ---- state changes on a leg ---------------------------------------------------------------

    def ring(self, ch: Channel) -> None:
        """The far end rings: a Local `;2` shows it on `;1`."""
        leg = ch.partner if ch.partner is not None and ch.name.endswith(";2") else ch
        if leg.state in (codes.STATE_RINGING, codes.STATE_UP):
            return
        self.newstate(leg, codes.STATE_RINGING)
        if leg.listener is not None:
            leg.listener.ringing(leg)

    def answer(self, ch: Channel) -> None:
        if ch.state == codes.STATE_UP:
            return
        self.newstate(ch, codes.STATE_UP)
        leg = ch
        if ch.partner is not None and ch.name.endswith(";2"):
            leg = ch.partner
            if leg.state != codes.STATE_UP:
                self.newstate(leg, codes.STATE_UP)
        if leg.record is not None and leg.record.answered_at is None:
            leg.record.answered_at = self.now()
        if leg.listener is not None:
            listener, leg.listener = leg.listener, None
            listener.answered(leg)

    def _fail_pair(self, far: Channel, status: str, cause: int) -> None:
        """Busy() / Congestion() on a Local `;2` that was never answered."""
        leg = far.partner
        if status == "CONGESTION":
            self.newstate(far, codes.STATE_BUSY)
        if leg is not None and leg.listener is not None:
            leg.listener.failed(leg, status)
        if status != "CONGESTION":
            self.newstate(far, codes.STATE_BUSY)
        self.hangup_request(far, 0)
        self.hangup_request(far, 16, soft=True)
        self._gone(far)
        self.hangup_event(far, cause)
        if leg is not None and leg.alive:
            if leg.listener is not None:
                listener, leg.listener = leg.listener, None
                listener.ended(leg)
            self._gone(leg)
            self.hangup_event(leg, 0)
            self._after_gone(leg)

    # ---- hang-up --------------------------------------------------------------------------

    def hangup(self, ch: Channel, cause: int, *, source: str = "action",
               quiet: bool = False) -> None:
        """Hang up `ch` (and its Local partner). `source`: "action" (AMI Hangup), "internal"
        (Dial() or a transfer ends a leg), "dialplan" (Hangup() app) or "remote" (the far
        end). `quiet` skips the request events."""
        if not ch.alive:
            return
        partner = ch.partner if ch.partner is not None and ch.partner.alive else None
        for chan in (ch, partner):
            if chan is not None and chan.consult is not None:
                self._finish_atxfer(chan)
        orphans: list[tuple[Channel, Bridge]] = []
        for chan in (ch, partner):
            if chan is not None:
                orphans += self._leave_bridge(chan)
        self.moh_stop(ch)
        if not quiet:
            if source == "dialplan" or (source in ("action", "internal") and ch.in_dialplan):
                self.hangup_request(ch, 16, soft=True)
            elif partner is None:
                self.hangup_request(ch, cause)
        # On a Hangup action the `;2` half is torn down after `;1` (another thread in
        # Asterisk): the channel is gone at once, its Hangup event follows DEFER_S later.
        deferred = source == "action" and partner is not None
        if partner is not None:
            self.moh_stop(partner)
            self.hangup_request(partner, cause)
        if source == "action" and ch.listener is not None:
            ch.listener.failed(ch, "CANCEL")  # the originator gave up before the answer
        self._end_listener(ch)
        self._gone(ch)
        self.hangup_event(ch, cause)
        if partner is not None:
            self._end_listener(partner)
            self._gone(partner)
            tail: list[Pairs] = []
            if partner.state == codes.STATE_UP:
                tail.append([("Event", "SoftHangupRequest"), ("Privilege", "call,all"),
                             *self.snapshot(partner), ("Cause", "16")])
            tail.append([("Event", "Hangup"), ("Privilege", "call,all"),
                         *self.snapshot(partner), ("Cause", str(cause)),
                         ("Cause-txt", cause_txt(cause))])
            for pairs in tail:
                if deferred:
                    self._defer(pairs)
                else:
                    self._emit(pairs)
        for bridge_member, bridge in orphans:
            self._orphaned(bridge_member, bridge)
        self._after_gone(ch)
        if partner is not None:
            self._after_gone(partner)

    def _defer(self, pairs: Pairs) -> None:
        self._deferred.append(pairs)
        if self._defer_timer is None and not self._closed:
            self._defer_timer = asyncio.get_running_loop().call_later(DEFER_S, self.flush)

    def flush(self) -> None:
        """Emit the deferred events now."""
        if self._defer_timer is not None:
            self._defer_timer.cancel()
            self._defer_timer = None
        events, self._deferred = self._deferred, []
        for pairs in events:
            self._emit(pairs)

    def _end_listener(self, ch: Channel) -> None:
        if ch.listener is not None:
            listener, ch.listener = ch.listener, None
            listener.ended(ch)

    def _gone(self, ch: Channel) -> None:
        ch.alive = False
        if ch.record is not None:
            ch.record.ended = True
        self.channels.pop(ch.name, None)
        current = asyncio.current_task()
        for task in [*ch.aux, ch.task]:
            if task is not None and task is not current:
                task.cancel()
        ch.aux.clear()
        ch.task = None
        if ch.dial_done is not None and not ch.dial_done.done():
            ch.dial_done.cancel()

    def _after_gone(self, ch: Channel) -> None:
        """A dead caller's Dial() legs are hung up; a dead callee wakes its caller's Dial()."""
        for leg in list(ch.dialing):
            if leg.alive and leg.dialed_by is ch:
                self.hangup(leg, 16, source="internal")
        ch.dialing.clear()
        caller = ch.dialed_by
        if caller is not None:
            with contextlib.suppress(ValueError):
                caller.dialing.remove(ch)
            ch.dialed_by = None

    def _leave_bridge(self, ch: Channel, *, dissolve: bool = True) -> list[tuple[Channel, Bridge]]:
        """BridgeLeave for `ch`; a basic bridge left with one member dissolves (that member
        leaves too, BridgeDestroy) and the member is returned to be handled as an orphan."""
        bridge = ch.bridge
        if bridge is None:
            return []
        bridge.members.remove(ch)
        ch.bridge = None
        self.bridge_event("BridgeLeave", bridge, ch)
        if bridge.held or not dissolve:
            if not bridge.members and not bridge.held:
                self._destroy(bridge)
            return []
        orphans = []
        for rest in list(bridge.members):
            bridge.members.remove(rest)
            rest.bridge = None
            self.bridge_event("BridgeLeave", bridge, rest)
            orphans.append((rest, bridge))
        self._destroy(bridge)
        return orphans

    def _destroy(self, bridge: Bridge) -> None:
        if self.bridges.pop(bridge.uniqueid, None) is not None:
            self.bridge_event("BridgeDestroy", bridge)

    def _orphaned(self, ch: Channel, bridge: Bridge) -> None:
        if not ch.alive:
            return
        if bridge.kind == "dial":
            if ch is bridge.caller:
                if ch.dial_done is not None and not ch.dial_done.done():
                    ch.dial_done.set_result("ANSWER")
            elif ch.dialed_by is not None:
                self.hangup(ch, 16, source="internal")
        elif bridge.kind == "consult":
            if ch.consult is not None:
                self._abort_atxfer(ch, ch.consult)
            elif ch.dialed_by is not None:
                self.hangup(ch, 16, source="internal")
        elif ch.resume is not None:
            context, exten, priority = ch.resume
            ch.resume = None
            self.start_dialplan(ch, context, exten, priority)

    def _enter(self, bridge: Bridge, ch: Channel) -> None:
        bridge.members.append(ch)
        ch.bridge = bridge
        for member in bridge.members:
            if member.record is not None:
                member.record.note_bridge([m.name for m in bridge.members if m is not member])
        self.bridge_event("BridgeEnter", bridge, ch)

    # ---- the dialplan interpreter -------------------------------------------------------------

    def start_dialplan(self, ch: Channel, context: str, exten: str, priority: int) -> None:
        ch.in_dialplan = True
        ch.task = self.spawn(self._run(ch, context, exten, priority))

    def substitute(self, ch: Channel, text: str) -> str:
        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "EXTEN":
                return ch.exten
            if name == "CHANNEL":
                return ch.name
            if name == "CONTEXT":
                return ch.context
            return ch.vars.get(name, self.globals.get(name, ""))

        return _VAR.sub(value, text)

    async def _app(self, ch: Channel, priority: int, app: str, data: str) -> None:
        """Emit Newexten for one step on `ch` (the step's work is the caller's)."""
        if not ch.alive:
            raise _Stop
        ch.priority, ch.app, ch.app_data = priority, app, data
        self.event("Newexten", ch, ("Extension", ch.exten), ("Application", app),
                   ("AppData", data), privilege="dialplan,all")

    async def _run(self, ch: Channel, context: str, exten: str, priority: int) -> None:
        try:
            while ch.alive:
                steps = find_steps(context, exten)
                if steps is None or not 1 <= priority <= len(steps):
                    self.hangup(ch, 16, source="dialplan")
                    return
                _label, app, data = steps[priority - 1]
                ch.context, ch.exten = context, exten
                text = data(ch) if callable(data) else self.substitute(ch, data)
                await self._app(ch, priority, app, text)
                jump = await self._exec(ch, app, text)
                if not ch.alive:
                    return
                if jump is None:
                    priority += 1
                else:
                    context, exten, priority = jump
        except _Stop:
            return

    async def _exec(self, ch: Channel, app: str, data: str) -> tuple[str, str, int] | None:
        args = data.split(",")
        if app == "NoOp":
            return None
        if app == "Answer":
            self.answer(ch)
        elif app == "Ringing":
            self.ring(ch)
        elif app == "Wait":
            await self.sleep(seconds_arg(args, 0, 0.0))
        elif app == "Hangup":
            cause = int(args[0]) if args[0].strip().isdigit() else 16
            self.hangup(ch, cause, source="dialplan")
            raise _Stop
        elif app in ("Busy", "Congestion"):
            if ch.partner is not None and ch.state != codes.STATE_UP:
                self._fail_pair(ch, "BUSY" if app == "Busy" else "CONGESTION",
                                17 if app == "Busy" else 34)
                raise _Stop
            self.hangup(ch, 17 if app == "Busy" else 34, source="dialplan")
            raise _Stop
        elif app == "GotoIf":
            cond, _, labels = data.partition("?")
            yes, _, no = labels.partition(":")
            target = yes if cond.strip() not in ("", "0") else no
            if target:
                return ch.context, ch.exten, find_priority(ch.context, ch.exten, target)
        elif app == "Goto":
            return ch.context, ch.exten, find_priority(ch.context, ch.exten, args[-1])
        elif app == "Playback":
            if ch.record is not None:
                ch.record.played.append(data)
            await self.sleep(PLAYBACK_S)
            self.varset(ch, "PLAYBACKSTATUS", "SUCCESS")
        elif app == "MusicOnHold":
            self.moh_start(ch)
            seconds = seconds_arg(args, 1, 3600.0)
            await self.sleep(seconds)
            self.moh_stop(ch)
        elif app == "AMD":
            b = ch.callee
            status = b.amd_status if b is not None and b.amd_status else "HUMAN"
            amd_cause = (b.amd_cause if b is not None else None) or "HUMAN-801-800"
            await self.sleep(AMD_S_BY_STATUS.get(status, 1.0))
            self.varset(ch, "AMDSTATUS", status)
            if ch.record is not None:
                ch.record.amd = status
            self.varset(ch, "AMDCAUSE", amd_cause)
        elif app == "Stasis":
            if args[0] in self.stasis_apps:
                attached = {k: v for k, v in ch.vars.items() if k.startswith("PACELINE_")}
                self.stasis_entries[ch.uniqueid] = StasisEntry(
                    args[0], tuple(args[1:]), ch.context, ch.exten, attached
                )
                # The app has the channel until it hangs up (the callee's talk time, a Hangup
                # action): the AMI side shares no call with an ARI app that would run it.
                await asyncio.get_running_loop().create_future()
            self.varset(ch, "STASISSTATUS", "FAILED")  # no ARI application is connected
        elif app == "Dial":
            await self._dial(ch, args)
        return None

    async def _dial(self, ch: Channel, args: list[str]) -> None:
        await asyncio.sleep(0)  # as captured: an OriginateResponse goes out before this Dial
        if not ch.alive:
            raise _Stop
        target = args[0]
        timeout_s = seconds_arg(args, 1, 0.0)
        for name in ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "DIALEDTIME",
                     "DIALEDTIME_MS"):
            self.varset(ch, name, "")
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        ch.dial_done = done
        listener = _DialListener(self, ch, done)
        leg = self.create_leg(target, caller=ch, listener=listener)
        if leg is None:
            ch.dial_done = None
            self.varset(ch, "DIALSTATUS", "CHANUNAVAIL")
            return
        try:
            if timeout_s > 0:
                try:
                    async with asyncio.timeout(timeout_s * self.time_scale):
                        await listener.answered_event.wait()
                except TimeoutError:
                    if leg.alive and leg.listener is listener:
                        listener.status = "NOANSWER"
                        self.hangup(leg, 16, source="internal", quiet=True)
            status = await done
        finally:
            ch.dial_done = None
        if ch.alive:
            self.varset(ch, "DIALSTATUS", status)
            if status != "ANSWER":
                self.varset(ch, "HANGUPCAUSE", str(listener.cause))

    # ---- DTMF -------------------------------------------------------------------------------

    def _dtmf(self, ch: Channel, digit: str, ms: int, direction: str, end: bool) -> None:
        extra: list[tuple[str, str]] = [("Digit", digit)]
        if end:
            extra.append(("DurationMs", str(ms)))
        extra.append(("Direction", direction))
        self.event("DTMFEnd" if end else "DTMFBegin", ch, *extra, privilege="dtmf,all")

    def dtmf_into(self, ch: Channel, digit: str, ms: int) -> None:
        """`digit` arrives on `ch` (Received) and goes on through its bridge (Sent on each
        peer, then Received on a Local peer's other half), as in capture 07b."""
        path: list[tuple[Channel, str]] = [(ch, "Received")]
        if ch.bridge is not None:
            for peer in ch.bridge.members:
                if peer is not ch:
                    path.append((peer, "Sent"))
                    if peer.partner is not None and peer.partner.alive:
                        path.append((peer.partner, "Received"))
        for end in (False, True):
            for chan, direction in path:
                self._dtmf(chan, digit, ms, direction, end)

    def play_dtmf(self, ch: Channel, digit: str, ms: int) -> None:
        """PlayDTMF: a Local `;1` plays into its `;2`; other channels send to the far end."""
        if ch.partner is not None and ch.partner.alive:
            self.dtmf_into(ch.partner, digit, ms)
        else:
            for end in (False, True):
                self._dtmf(ch, digit, ms, "Sent", end)

    # ---- actions ------------------------------------------------------------------------------

    def originate(self, *, dial_string: str, action_id: str | None, channel_id: str | None,
                  other_channel_id: str | None, context: str, exten: str, priority: str,
                  application: str, data: str, timeout_s: float, callerid: str,
                  variables: list[tuple[str, str]], duplicate: bool,
                  sync_reply: Callable[[bool], None] | None = None) -> CallRecord:
        """An Originate: emits everything from Newchannel to OriginateResponse. A non-async
        Originate (`sync_reply` given) gets `sync_reply(answered)` instead of the event."""
        tech, _, rest = dial_string.partition("/")
        number = rest.partition("@")[0]
        local_context = rest.partition("@")[2].partition("/")[0]  # `/n` etc. are options
        customer = (tech == "Local" and local_context == CUSTOMER_CONTEXT) or (
            tech == "PJSIP" and "@" in rest
        )
        behaviour = self._population.draw(number, self._rng) if customer else None
        record = CallRecord(action_id, channel_id, dial_string,
                            behaviour.kind if behaviour is not None else None)
        self.calls.append(record)
        listener = _OriginateListener(
            self, record, context=context, exten=exten, priority=priority,
            application=application, data=data, callerid=callerid, action_id=action_id,
            dial_string=dial_string, sync_reply=sync_reply,
        )
        leg = None
        if not duplicate:
            leg = self.create_leg(dial_string, caller=None, listener=listener,
                                  uniqueid=channel_id or None,
                                  other_uniqueid=other_channel_id or None,
                                  variables=variables, callerid=parse_callerid(callerid),
                                  behaviour=behaviour)
        if leg is None:
            listener.respond(None, codes.REASON_FAILED)
            return record
        record.channel, record.uniqueid = leg.name, leg.uniqueid
        leg.record = record
        self.spawn(self._originate_timeout(leg, listener, timeout_s))
        return record

    async def _originate_timeout(self, leg: Channel, listener: _OriginateListener,
                                 timeout_s: float) -> None:
        await self.sleep(timeout_s)
        if not leg.alive or leg.listener is not listener:
            return
        # No answer before the Timeout: Reason 3, cause 19, and no DialEnd.
        leg.listener = None
        far = leg.partner if leg.partner is not None and leg.partner.alive else None
        if far is not None:
            self.hangup_request(far, 19)
        listener.status = "TIMEOUT"
        listener.ended(leg)
        if far is not None:
            self.hangup_request(far, 16, soft=True)
        self._gone(leg)
        self.hangup_event(leg, 19)
        if far is not None:
            self._gone(far)
            self.hangup_event(far, 19)

    def redirect(self, moves: list[tuple[Channel, str, str, int]]) -> None:
        """Redirect (and BlindTransfer's transferee): leave bridges and Dial(), then run the
        new location. Redirect itself emits no BlindTransfer event."""
        chans = [m[0] for m in moves]
        for ch in chans:
            self._detach(ch)
        orphans: list[tuple[Channel, Bridge]] = []
        for ch, context, exten, priority in moves:
            ch.context, ch.exten, ch.priority = context, exten, priority
        for ch in chans:
            orphans += [o for o in self._leave_bridge(ch) if o[0] not in chans]
        for ch in chans:
            self.moh_stop(ch)
            self._stop_dialplan(ch)
        for member, bridge in orphans:
            self._orphaned(member, bridge)
        for ch, context, exten, prio in moves:
            self.start_dialplan(ch, context, exten, prio)

    def _detach(self, ch: Channel) -> None:
        """`ch` gets a dialplan of its own: it is no longer a Dial() caller or callee."""
        if ch.dialed_by is not None:
            with contextlib.suppress(ValueError):
                ch.dialed_by.dialing.remove(ch)
            ch.dialed_by = None
        for leg in list(ch.dialing):
            if leg.alive and leg.bridge is None:  # still ringing: Dial() cancels it
                if leg.listener is not None:
                    leg.listener.failed(leg, "CANCEL")
                self.hangup(leg, 16, source="internal", quiet=True)
        if ch.bridge is not None and ch.bridge.kind == "dial" and ch.bridge.caller is ch:
            ch.bridge.caller = None  # its callee, left alone, is hung up (Dial() ends)
        ch.dialing = [leg for leg in ch.dialing if leg.alive]

    def _stop_dialplan(self, ch: Channel) -> None:
        if ch.task is not None and ch.task is not asyncio.current_task():
            ch.task.cancel()
        ch.task = None
        if ch.dial_done is not None and not ch.dial_done.done():
            ch.dial_done.cancel()
        ch.dial_done = None
        ch.in_dialplan = False

    def bridge(self, one: Channel, two: Channel) -> None:
        """The Bridge action: both leave where they are; a lone survivor later continues its
        dialplan at priority+1 (emulated: it runs on, or stays up if it had none)."""
        orphans: list[tuple[Channel, Bridge]] = []
        for ch in (one, two):
            ch.resume = (ch.context, ch.exten, ch.priority + 1) if ch.in_dialplan else None
            self._detach(ch)
            orphans += [o for o in self._leave_bridge(ch) if o[0] not in (one, two)]
            self.moh_stop(ch)
            self._stop_dialplan(ch)
        for member, old in orphans:
            self._orphaned(member, old)
        bridge = self._new_bridge("action")
        self.bridge_event("BridgeCreate", bridge)
        self._enter(bridge, one)
        self._enter(bridge, two)

    def blind_transfer(self, transferer: Channel, context: str, exten: str) -> bool:
        """BlindTransfer: the transferer's bridge peer goes to context/exten; False (and a
        `Result: Invalid` event) when the transferer is not bridged."""
        bridge = transferer.bridge
        peers = [m for m in bridge.members if m is not transferer] if bridge else []
        if bridge is None or not peers:
            self._emit([("Event", "BlindTransfer"), ("Privilege", "call,all"),
                        ("Result", "Invalid"), *self.snapshot(transferer, "Transferer"),
                        ("IsExternal", "Yes"), ("Context", context), ("Extension", exten)])
            return False
        transferee = peers[0]
        before = self.snapshot(transferee, "Transferee")
        count = len(bridge.members)
        self.event("Unhold", transferer)
        self._detach(transferee)
        self._detach(transferer)
        transferee.context, transferee.exten, transferee.priority = context, exten, 1
        bridge.members.remove(transferee)
        transferee.bridge = None
        self.bridge_event("BridgeLeave", bridge, transferee)
        self._emit([("Event", "BlindTransfer"), ("Privilege", "call,all"), ("Result", "Success"),
                    *self.snapshot(transferer, "Transferer"), *before,
                    *self.bridge_snapshot(bridge, count=count), ("IsExternal", "Yes"),
                    ("Context", context), ("Extension", exten)])
        self._stop_dialplan(transferee)
        self.moh_stop(transferee)
        bridge.members.remove(transferer)
        transferer.bridge = None
        self.bridge_event("BridgeLeave", bridge, transferer)
        self._destroy(bridge)
        self.hangup(transferer, 16, source="internal")
        self.start_dialplan(transferee, context, exten, 1)
        return True

    def atxfer(self, transferer: Channel, context: str, exten: str) -> None:
        """Atxfer with `atxfer => *2`: the peer hears MOH, a consult leg dials context/exten;
        the transfer completes when the transferer hangs up after the target answered."""
        # Asterisk queues the feature code and the extension as DTMF frames on the
        # transferer (DTMFEnd only, 0 ms: capture 13c), whatever happens next.
        for digit in ATXFER_CODE + exten:
            self._dtmf(transferer, digit, 0, "Received", True)
        bridge = transferer.bridge
        peers = [m for m in bridge.members if m is not transferer] if bridge else []
        if bridge is None or not peers or transferer.consult is not None:
            return  # the feature code reaches a channel with no bridge: nothing happens
        transferee = peers[0]
        self.event("Hold", transferer)  # the transferer holds its peer (capture 13c)
        self.moh_start(transferee)
        bridge.held = True
        self._leave_bridge(transferer, dissolve=False)
        consult = Consult(original=bridge, transferee=transferee, target=transferer)
        transferer.consult = consult
        listener = _AtxferListener(self, transferer, consult)
        target = self.create_leg(f"Local/{exten}@{context}", caller=transferer,
                                 listener=listener)
        if target is None:
            self._abort_atxfer(transferer, consult)
            return
        consult.target = target

    def cancel_atxfer(self, transferer: Channel) -> None:
        """CancelAtxfer: the atxferabort feature code arrives as DTMF on the transferer
        (DTMFEnd only, 0 ms, as in capture 13c); the transferer leaves the consult, rejoins
        the transferee (whose music stops) and the target is hung up. Without a consult in
        progress only the digits are seen."""
        for digit in ATXFER_ABORT:
            self._dtmf(transferer, digit, 0, "Received", True)
        consult = transferer.consult
        if consult is None:
            return
        transferer.consult = None  # the target's end must not abort a second time
        consult.original.held = False
        if consult.bridge is not None and transferer.bridge is consult.bridge:
            self._leave_bridge(transferer, dissolve=False)
        if consult.transferee.alive and consult.original.uniqueid in self.bridges:
            self._enter(consult.original, transferer)
        self.event("Unhold", transferer)
        self.moh_stop(consult.transferee)
        if consult.target is not transferer and consult.target.alive:
            self.hangup(consult.target, 16, source="internal")

    def _abort_atxfer(self, transferer: Channel, consult: Consult) -> None:
        """The consult failed: back to the original bridge, MOH off."""
        transferer.consult = None
        consult.original.held = False
        self.moh_stop(consult.transferee)
        if consult.transferee.alive and consult.original.uniqueid in self.bridges:
            self._enter(consult.original, transferer)
            self.event("Unhold", transferer)
        elif transferer.alive and transferer.dialed_by is not None:
            self.hangup(transferer, 16, source="internal")

    def _finish_atxfer(self, transferer: Channel) -> None:
        """The transferer hangs up during a consult."""
        consult = transferer.consult
        assert consult is not None
        transferer.consult = None
        original, transferee, target = consult.original, consult.transferee, consult.target
        original.held = False
        second = consult.bridge
        if second is None or not transferee.alive or not target.alive:
            if target is not transferer and target.alive:
                self.hangup(target, 16, source="internal")
            self.moh_stop(transferee)
            if transferee.alive and transferee.bridge is original and len(original.members) == 1:
                original.members.remove(transferee)
                transferee.bridge = None
                self.bridge_event("BridgeLeave", original, transferee)
                self._destroy(original)
                self._orphaned(transferee, original)
            return
        second.members.remove(transferer)
        transferer.bridge = None
        self.bridge_event("BridgeLeave", second, transferer)
        self._emit([("Event", "AttendedTransfer"), ("Privilege", "call,all"),
                    ("Result", "Success"),
                    *self.snapshot(transferer, "OrigTransferer"),
                    *self.bridge_snapshot(original, "OrigBridge"),
                    *self.snapshot(transferer, "SecondTransferer"),
                    *self.bridge_snapshot(second, "SecondBridge", count=len(second.members) + 1),
                    *self.snapshot(transferee, "Transferee"),
                    *self.snapshot(target, "TransferTarget"),
                    ("IsExternal", "Yes"), ("DestType", "Bridge"),
                    ("DestBridgeUniqueid", original.uniqueid)])
        second.members.remove(target)
        target.bridge = None
        self.bridge_event("BridgeLeave", second, target)
        self._destroy(second)
        self.moh_stop(transferee)
        # The target now stands where the transferer stood: the customer's Dial() holds it.
        with contextlib.suppress(ValueError):
            transferer.dialing.remove(target)
        target.dialed_by = transferee if original.caller is transferee else None
        if target.dialed_by is not None:
            transferee.dialing.append(target)
        self._enter(original, target)


class _DialListener:
    """Dial() in `caller`: DialState/DialEnd, the bridge on answer, DIALSTATUS at the end."""

    def __init__(self, pbx: Pbx, caller: Channel, done: asyncio.Future[str]) -> None:
        self.pbx, self.caller, self.done = pbx, caller, done
        self.status = "NOANSWER"
        self.cause = 16
        self.dial_end_sent = False
        self.answered_event = asyncio.Event()

    def ringing(self, leg: Channel) -> None:
        self.pbx.dial_event("DialState", self.caller, leg, ("DialStatus", "RINGING"))

    def answered(self, leg: Channel) -> None:
        pbx, caller = self.pbx, self.caller
        self.answered_event.set()
        if not caller.alive:
            return
        pbx.answer(caller)
        leg.exten = ""
        pbx.varset(caller, "DIALEDPEERNAME", leg.name)
        pbx.varset(caller, "DIALEDPEERNUMBER", leg.name.partition("/")[2].rpartition("-")[0])
        pbx.dial_event("DialEnd", caller, leg, ("DialStatus", "ANSWER"))
        self.dial_end_sent = True
        bridge = pbx._new_bridge("dial")
        bridge.caller = caller
        pbx.bridge_event("BridgeCreate", bridge)
        pbx._enter(bridge, leg)
        pbx._enter(bridge, caller)
        pbx.varset(leg, "BRIDGEPEER", caller.name)
        pbx.varset(caller, "BRIDGEPEER", leg.name)

    def failed(self, leg: Channel, status: str) -> None:
        self.status = status
        self.cause = {"BUSY": 17, "CONGESTION": 34}.get(status, 16)
        if not self.dial_end_sent and self.caller.alive:
            self.pbx.dial_event("DialEnd", self.caller, leg, ("DialStatus", status))
            self.dial_end_sent = True

    def ended(self, leg: Channel) -> None:
        self.answered_event.set()
        if not self.dial_end_sent and self.caller.alive:
            self.pbx.dial_event("DialEnd", self.caller, leg, ("DialStatus", self.status))
            self.dial_end_sent = True
        if not self.done.done():
            self.done.set_result(self.status)


class _AtxferListener(_DialListener):
    """The consult leg of an attended transfer."""

    def __init__(self, pbx: Pbx, transferer: Channel, consult: Consult) -> None:
        super().__init__(pbx, transferer, asyncio.get_running_loop().create_future())
        self.consult = consult

    def answered(self, leg: Channel) -> None:
        pbx, transferer = self.pbx, self.caller
        if not transferer.alive or transferer.consult is not self.consult:
            return
        leg.exten = ""
        pbx.dial_event("DialEnd", transferer, leg, ("DialStatus", "ANSWER"))
        self.dial_end_sent = True
        bridge = pbx._new_bridge("consult")
        self.consult.bridge = bridge
        pbx.bridge_event("BridgeCreate", bridge)
        pbx._enter(bridge, transferer)
        pbx._enter(bridge, leg)

    def ended(self, leg: Channel) -> None:
        super().ended(leg)
        transferer = self.caller
        if transferer.alive and transferer.consult is self.consult:
            self.pbx._abort_atxfer(transferer, self.consult)


class _OriginateListener:
    """An Async Originate: DialState/DialEnd without a caller, then OriginateResponse and,
    on answer, the Context/Exten (or Application) on the root channel."""

    def __init__(self, pbx: Pbx, record: CallRecord, *, context: str, exten: str,
                 priority: str, application: str, data: str, callerid: str,
                 action_id: str | None, dial_string: str,
                 sync_reply: Callable[[bool], None] | None) -> None:
        self.pbx, self.record = pbx, record
        self.context, self.exten, self.priority = context, exten, priority
        self.application, self.data = application, data
        self.callerid, self.action_id, self.dial_string = callerid, action_id, dial_string
        self.sync_reply = sync_reply
        self.status = "NOANSWER"
        self.dial_end_sent = False
        self.responded = False

    def respond(self, leg: Channel | None, reason: int) -> None:
        answered = leg is not None and reason == codes.REASON_ANSWERED
        pairs: Pairs = [("Event", "OriginateResponse"), ("Privilege", "call,all")]
        if self.action_id is not None:
            pairs.append(("ActionID", self.action_id))
        pairs += [("Response", "Success" if answered else "Failure"),
                  ("Channel", leg.name if answered and leg is not None else self.dial_string)]
        if self.application:
            pairs += [("Application", self.application), ("Data", self.data)]
        else:
            pairs += [("Context", self.context), ("Exten", self.exten)]
        num, name = parse_callerid(self.callerid) if self.callerid else (UNKNOWN, UNKNOWN)
        pairs += [("Reason", str(reason)),
                  ("Uniqueid", leg.uniqueid if answered and leg is not None else UNKNOWN),
                  ("CallerIDNum", num), ("CallerIDName", name)]
        self.record.reason = reason
        if self.sync_reply is not None:
            self.sync_reply(answered)
        else:
            self.pbx.emit(pairs)

    def ringing(self, leg: Channel) -> None:
        self.pbx.dial_event("DialState", None, leg, ("DialStatus", "RINGING"))

    def answered(self, leg: Channel) -> None:
        pbx = self.pbx
        pbx.dial_event("DialEnd", None, leg, ("DialStatus", "ANSWER"))
        if self.application:
            leg.context, leg.exten, leg.priority = "", "", 1
            leg.task = pbx.spawn(self._run_application(leg))
        else:
            prio = find_priority(self.context, self.exten, self.priority or "1") or 1
            leg.context, leg.exten, leg.priority = self.context, self.exten, prio
            pbx.start_dialplan(leg, self.context, self.exten, prio)
        # The root channel's first steps (up to its first wait) run before OriginateResponse
        # goes out; the originate thread and the PBX thread race the same way in Asterisk.
        pbx.spawn(self._respond_answered(leg))

    async def _respond_answered(self, leg: Channel) -> None:
        self.respond(leg, codes.REASON_ANSWERED)

    async def _run_application(self, leg: Channel) -> None:
        """Originate with Application: the app runs on the root channel, then it hangs up."""
        leg.app, leg.app_data = self.application, self.data
        if self.application == "Wait":
            await self.pbx.sleep(seconds_arg(self.data.split(","), 0, 0.0))
        elif self.application == "MusicOnHold":
            self.pbx.moh_start(leg)
            await self.pbx.sleep(seconds_arg(self.data.split(","), 1, 3600.0))
        else:
            await self.pbx.sleep(3600)
        if leg.alive:
            self.pbx.hangup(leg, 16, source="dialplan")

    def failed(self, leg: Channel, status: str) -> None:
        self.status = status
        if status == "CONGESTION" and leg.tech == "Local":
            self.responded = True  # as captured: Reason 8 goes out before the DialEnd
            self.respond(None, codes.REASON_CONGESTION)
        if not self.dial_end_sent:
            self.pbx.dial_event("DialEnd", None, leg, ("DialStatus", status))
            self.dial_end_sent = True

    def ended(self, leg: Channel) -> None:
        self.record.ended = True
        if self.responded:
            return
        if self.status == "TIMEOUT":
            self.respond(None, codes.REASON_RINGING)
            return
        if not self.dial_end_sent:
            self.pbx.dial_event("DialEnd", None, leg, ("DialStatus", self.status))
            self.dial_end_sent = True
        reason = REASON_BY_DIALSTATUS.get(self.status, codes.REASON_FAILED)
        if leg.tech == "PJSIP":
            reason = codes.REASON_FAILED  # res_pjsip: Reason 0 for busy too; see the cause
        self.respond(None, reason)

