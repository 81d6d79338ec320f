"""The emulator's AMI server: sessions and actions, on the one framer (`cti.ami.framing`).

The call model lives in `sim.pbx.core.Pbx`; this module parses actions, answers them exactly as
the Asterisk 20.20.1 captures do (`tests/fixtures/asterisk/transcripts/ami/`) and fans each
event out to every logged-in session whose user may read its class (the first word of its
`Privilege`) and whose `Events` mask lets it through.

Actions (names case-insensitive; before login all but Login/Logoff are `Permission denied`):
- Originate: Async -> ack, then OriginateResponse to every `call` reader; without Async the
  reply waits for the outcome (`Originate failed` on failure) and no event is sent.
- Hangup Channel=<name> or `/regex/`, Cause=<q850>.
- Redirect Channel, [ExtraChannel, ExtraContext, ExtraExten, ExtraPriority], Context, Exten,
  Priority (number or label). Emits no BlindTransfer event.
- BlindTransfer Channel=<transferer: the agent leg>, Context, Exten: its bridge peer moves.
- Atxfer Channel=<transferer: the agent leg>, Context, Exten; Hangup of the transferer after
  the target answered completes it (`AttendedTransfer`). CancelAtxfer Channel=<transferer>
  sends the atxferabort code (`*1`) and gives the transferer back to the transferee.
- Bridge Channel1, Channel2, Tone. PlayDTMF Channel, Digit, Duration. Getvar/Setvar (no Channel:
  a global). Status [Channel, Variables]. CoreShowChannels. QueueStatus/QueueSummary [Queue].
  Events EventMask=on|off|<classes>. Ping. Logoff.

`drop_connections()` closes the sockets only: calls go on, as on a real PBX, and a client that
reconnects sees them in CoreShowChannels. `calls` lists every Originate (`CallRecord`),
`channels` the live channels by name, `originates_by_channel_id` / `originates_by_action_id`
count every Originate seen, so tests can assert a replay made no second call.
`stasis_entries` holds the calls that reached Stasis() of the IVR app (`send_to_ivr`: Redirect
into [paceline-ivr-outbound]), where they wait until hung up (see `sim.pbx.core.StasisEntry`).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cti.ami import codes
from cti.ami.framing import AmiMessage, AmiParser, FramingError, serialize
from sim.pbx.core import (
    CAUSE_TXT,
    CallRecord,
    Channel,
    Pairs,
    Pbx,
    StasisEntry,
    find_priority,
)
from sim.population import CalleeKind, Population, deterministic_test_population

__all__ = ["BANNER", "CAUSE_TXT", "DEFAULT_USERS", "AmiServer", "AmiUser", "snapshot"]

BANNER = b"Asterisk Call Manager/9.0.0\r\n"

REASON_BY_KIND: dict[CalleeKind, int] = {
    CalleeKind.HUMAN: codes.REASON_ANSWERED,
    CalleeKind.MACHINE: codes.REASON_ANSWERED,
    CalleeKind.BUSY: codes.REASON_BUSY,
    CalleeKind.NO_ANSWER: codes.REASON_RINGING,
    CalleeKind.REJECTED: codes.REASON_FAILED,
    CalleeKind.FAILED: codes.REASON_FAILED,
    CalleeKind.CONGESTION: codes.REASON_CONGESTION,
}


@dataclass(frozen=True, slots=True)
class AmiUser:
    """A manager.conf user. `read`/`write` are permission classes; "all" grants every class."""

    name: str
    secret: str
    read: frozenset[str]
    write: frozenset[str]

    def can_read(self, cls: str) -> bool:
        return "all" in self.read or cls in self.read

    def can_write(self, classes: frozenset[str]) -> bool:
        """Asterisk's rule: an action with no class is open; else one class must match."""
        return not classes or "all" in self.write or bool(classes & self.write)


DEFAULT_USERS: tuple[AmiUser, ...] = (
    AmiUser("dialer", "dialer", frozenset({"all"}), frozenset({"all"})),
    AmiUser("limited", "limited", frozenset({"call"}), frozenset({"call"})),
)

#: The write classes each action needs (`authority` in Asterisk's manager.c).
ACTION_CLASSES: dict[str, frozenset[str]] = {
    "originate": frozenset({"originate"}),
    "hangup": frozenset({"system", "call"}),
    "redirect": frozenset({"call"}),
    "blindtransfer": frozenset({"call"}),
    "atxfer": frozenset({"call"}),
    "cancelatxfer": frozenset({"call"}),
    "bridge": frozenset({"call"}),
    "getvar": frozenset({"call", "reporting"}),
    "setvar": frozenset({"call"}),
    "status": frozenset({"system", "call", "reporting"}),
    "coreshowchannels": frozenset({"system", "reporting"}),
    "playdtmf": frozenset({"call"}),
}

#: The queue the emulator knows (queues.conf of the reference setup).
QUEUE_NAME = "sales"
QUEUE_MEMBERS: tuple[tuple[str, str], ...] = (
    ("Agent 1001", "Local/1001@agents"),
    ("Agent 1002", "Local/1002@agents"),
)


def snapshot(
    *,
    channel: str,
    state: int,
    context: str,
    exten: str,
    uniqueid: str,
    linkedid: str,
    priority: str = "1",
) -> list[tuple[str, str]]:
    """The channel block most AMI events share, in Asterisk's field order."""
    return [
        ("Channel", channel),
        ("ChannelState", str(state)),
        ("ChannelStateDesc", codes.STATE_DESC[state]),
        ("CallerIDNum", "<unknown>"),
        ("CallerIDName", "<unknown>"),
        ("ConnectedLineNum", "<unknown>"),
        ("ConnectedLineName", "<unknown>"),
        ("Language", "en"),
        ("AccountCode", ""),
        ("Context", context),
        ("Exten", exten),
        ("Priority", priority),
        ("Uniqueid", uniqueid),
        ("Linkedid", linkedid),
    ]


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Session:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.user: AmiUser | None = None
        #: None: every class the user may read; else only these (the Events action).
        self.mask: frozenset[str] | None = None

    def send(self, pairs: Iterable[tuple[str, str]]) -> None:
        if not self.writer.is_closing():
            self.writer.write(serialize(pairs))

    def wants(self, cls: str) -> bool:
        if self.user is None or not self.user.can_read(cls):
            return False
        return self.mask is None or cls in self.mask


class AmiServer:
    """AMI over TCP. `start()` binds (port 0 = ephemeral), `close()` stops it, its sessions
    and every call timer.

    Fault injection: `drop_connections()` closes every client socket abruptly; the PBX (its
    calls) goes on. `refuse_logins = True` closes new connections right after the banner (an
    Asterisk that is restarting), so a client stays disconnected until it is set back.
    `drop_before_reply` holds lowercase action names: the next such action is carried out
    and then the socket is dropped before its reply is written (once per name). `login_attempts`
    counts Login actions. `atxfer_feature=False` is a features.conf without `atxfer => *2`.
    `dtmf_delay_s` is how long after the answer a callee with `dtmf` digits presses them.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Iterable[AmiUser] = DEFAULT_USERS,
        population: Population | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
        auth_fail_delay_s: float = 1.0,
        atxfer_feature: bool = True,
        dtmf_delay_s: float = 1.0,
    ) -> None:
        self.host = host
        self._want_port = port
        self.port = 0
        self._users = {u.name.lower(): u for u in users}
        self._population = population or deterministic_test_population()
        self._rng = random.Random(seed)
        self.time_scale = time_scale
        self.auth_fail_delay_s = auth_fail_delay_s
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._used_channel_ids: set[str] = set()
        self.originates_by_channel_id: Counter[str] = Counter()
        self.originates_by_action_id: Counter[str] = Counter()
        self.refuse_logins = False
        self.drop_before_reply: set[str] = set()
        self.login_attempts = 0
        self._epoch = int(time.time())
        self.pbx = Pbx(
            emit=self._fan_out,
            population=self._population,
            rng=self._rng,
            time_scale=time_scale,
            epoch=self._epoch,
            atxfer_feature=atxfer_feature,
            dtmf_delay_s=dtmf_delay_s,
        )

    # ---- what tests can look at ---------------------------------------------------------------

    @property
    def calls(self) -> list[CallRecord]:
        """Every Originate, in order (duplicates and failures included)."""
        return self.pbx.calls

    @property
    def stasis_entries(self) -> dict[str, StasisEntry]:
        """Channels that entered Stasis() of a modelled app (the IVR's), by Uniqueid."""
        return self.pbx.stasis_entries

    @property
    def channels(self) -> dict[str, Channel]:
        """A snapshot of the live channels by name, in creation order."""
        return dict(self.pbx.channels)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._want_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        tasks = list(self._session_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pbx.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> AmiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def drop_connections(self) -> None:
        """Abruptly close every AMI socket (a network failure); the PBX itself goes on."""
        for session in list(self._sessions):
            session.writer.transport.abort()
        self._sessions.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._session_tasks.add(task)
        session = _Session(writer)
        self._sessions.add(session)
        parser = AmiParser(expect_banner=False)
        writer.write(BANNER)
        try:
            while True:
                data = await reader.read(65536)
                for frame in parser.feed(data):
                    if isinstance(frame, FramingError):
                        continue  # skipped, as Asterisk skips garbage; the session goes on
                    if isinstance(frame, AmiMessage) and not await self._handle(session, frame):
                        return
                if not data:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled means the server is closing; the session simply ends.
            return
        finally:
            self._sessions.discard(session)
            writer.transport.abort() if writer.is_closing() else writer.close()
            if task is not None:
                self._session_tasks.discard(task)

    # ---- replies ------------------------------------------------------------------------------

    def _reply(self, session: _Session, req: AmiMessage, *pairs: tuple[str, str]) -> None:
        out: list[tuple[str, str]] = [pairs[0]]
        if req.action_id is not None:
            out.append(("ActionID", req.action_id))
        out.extend(pairs[1:])
        session.send(out)

    def _error(self, session: _Session, req: AmiMessage, message: str) -> None:
        self._reply(session, req, ("Response", "Error"), ("Message", message))

    def _ok(self, session: _Session, req: AmiMessage, message: str) -> None:
        self._reply(session, req, ("Response", "Success"), ("Message", message))

    def _list_start(self, session: _Session, req: AmiMessage, message: str) -> None:
        self._reply(session, req, ("Response", "Success"), ("EventList", "start"),
                    ("Message", message))

    def _aid(self, req: AmiMessage) -> Pairs:
        return [("ActionID", req.action_id)] if req.action_id is not None else []

    def _list_complete(self, session: _Session, req: AmiMessage, event: str, n: int,
                       *extra: tuple[str, str]) -> None:
        session.send([("Event", event), *self._aid(req), ("EventList", "Complete"),
                      ("ListItems", str(n)), *extra])

    # ---- dispatch -----------------------------------------------------------------------------

    async def _handle(self, session: _Session, req: AmiMessage) -> bool:
        """Handle one action; False closes the session."""
        action = (req.action or "").strip()
        low = action.lower()
        if not action:
            self._error(session, req, "Missing action in request")
            return True
        if low == "logoff":
            self._reply(
                session, req, ("Response", "Goodbye"), ("Message", "Thanks for all the fish.")
            )
            await session.writer.drain()
            return False
        if low == "login":
            self.login_attempts += 1
            if self.refuse_logins:
                session.writer.transport.abort()
                return False
            return await self._login(session, req)
        if session.user is None:
            self._error(session, req, "Permission denied")
            return True
        handler = self._handlers().get(low)
        if handler is not None and not session.user.can_write(
            ACTION_CLASSES.get(low, frozenset())
        ):
            self._error(session, req, "Permission denied")
        elif handler is None:
            self._error(
                session,
                req,
                f"Invalid/unknown command: {action}. "
                "Use Action: ListCommands to show available commands.",
            )
        elif low in self.drop_before_reply:
            # Carry the action out as Asterisk would, but lose the link before the reply.
            self.drop_before_reply.discard(low)
            session.writer.transport.abort()
            handler(session, req)  # its reply is dropped: the writer is closing
            return False
        else:
            handler(session, req)
        return True

    def _handlers(self) -> dict[str, _Handler]:
        return {
            "ping": self._ping,
            "events": self._events,
            "originate": self._originate,
            "hangup": self._hangup_action,
            "redirect": self._redirect,
            "blindtransfer": self._blind_transfer,
            "atxfer": self._atxfer,
            "cancelatxfer": self._cancel_atxfer,
            "bridge": self._bridge,
            "getvar": self._getvar,
            "setvar": self._setvar,
            "status": self._status,
            "coreshowchannels": self._core_show_channels,
            "playdtmf": self._play_dtmf,
            "queuestatus": self._queue_status,
            "queuesummary": self._queue_summary,
        }

    async def _login(self, session: _Session, req: AmiMessage) -> bool:
        user = self._users.get((req.get("Username") or "").lower())
        if user is None or req.get("Secret") != user.secret:
            await asyncio.sleep(self.auth_fail_delay_s)
            self._error(session, req, "Authentication failed")
            await session.writer.drain()
            return False
        session.user = user
        self._ok(session, req, "Authentication accepted")
        if user.can_read("system"):
            session.send(
                [
                    ("Event", "FullyBooted"),
                    ("Privilege", "system,all"),
                    ("Uptime", "26"),
                    ("LastReload", "26"),
                    ("Status", "Fully Booted"),
                ]
            )
        return True

    def _ping(self, session: _Session, req: AmiMessage) -> None:
        self._reply(session, req, ("Response", "Success"), ("Ping", "Pong"),
                    ("Timestamp", f"{time.time():.6f}"))

    def _events(self, session: _Session, req: AmiMessage) -> None:
        mask = (req.get("EventMask") or "").strip().lower()
        if mask in ("off", "", "0", "no", "false"):
            session.mask = frozenset()
        elif mask in ("on", "all", "1", "yes", "true"):
            session.mask = None
        else:
            session.mask = frozenset(c.strip() for c in mask.split(",") if c.strip())
        on = session.mask is None or bool(session.mask)
        self._reply(session, req, ("Response", "Success"), ("Events", "On" if on else "Off"))

    # ---- Originate ----------------------------------------------------------------------------

    def _originate(self, session: _Session, req: AmiMessage) -> None:
        channel = req.get("Channel") or ""
        channel_id = req.get("ChannelId")
        if req.action_id is not None:
            self.originates_by_action_id[req.action_id] += 1
        if channel_id:
            self.originates_by_channel_id[channel_id] += 1
        if not channel:
            self._error(session, req, "Channel not specified")
            return
        is_async = (req.get("Async") or "").strip().lower() in ("true", "yes", "1", "on")
        sync_reply = None
        if is_async:
            self._ok(session, req, "Originate successfully queued")
        else:
            # Without Async the reply waits for the outcome and no OriginateResponse is sent.
            def sync_reply(answered: bool) -> None:
                if answered:
                    self._ok(session, req, "Originate successfully queued")
                else:
                    self._error(session, req, "Originate failed")
        duplicate = bool(channel_id) and channel_id in self._used_channel_ids
        if channel_id:
            self._used_channel_ids.add(channel_id)
        variables: list[tuple[str, str]] = []
        for item in req.getall("Variable"):
            for part in item.split(","):
                key, sep, value = part.partition("=")
                if sep and key.strip():
                    variables.append((key.strip(), value))
        timeout_ms = req.get("Timeout") or "30000"
        self.pbx.originate(
            dial_string=channel,
            action_id=req.action_id,
            channel_id=channel_id,
            other_channel_id=req.get("OtherChannelId"),
            context=req.get("Context") or "",
            exten=req.get("Exten") or "",
            priority=req.get("Priority") or "1",
            application=req.get("Application") or "",
            data=req.get("Data") or "",
            timeout_s=int(timeout_ms) / 1000.0 if timeout_ms.isdigit() else 30.0,
            callerid=req.get("CallerID") or "",
            variables=variables,
            duplicate=duplicate,
            sync_reply=sync_reply,
        )

    # ---- channel actions ----------------------------------------------------------------------

    def _hangup_action(self, session: _Session, req: AmiMessage) -> None:
        """Hangup of one channel by name, or of every channel matching `/regex/`."""
        name = req.get("Channel")
        if not name:
            self._error(session, req, "No channel specified")
            return
        cause_text = (req.get("Cause") or "").strip()
        cause = int(cause_text) if cause_text.isdigit() else 16
        if len(name) > 1 and name.startswith("/") and name.endswith("/"):
            try:
                rx = re.compile(name[1:-1])
            except re.error:
                self._error(session, req, "Invalid regex")
                return
            self._list_start(session, req, "Channels hung up will follow")
            hits = [ch for ch in self.pbx.channels.values() if rx.search(ch.name)]
            for hit in hits:
                session.send([("Event", "ChannelHungup"), ("Channel", hit.name),
                              *self._aid(req)])
            self._list_complete(session, req, "ChannelsHungupListComplete", len(hits))
            for hit in hits:
                self.pbx.hangup(hit, cause)
            return
        ch = self.pbx.find(name)
        if ch is None:
            self._error(session, req, "No such channel")
            return
        self._ok(session, req, "Channel Hungup")
        self.pbx.hangup(ch, cause)

    def _redirect(self, session: _Session, req: AmiMessage) -> None:
        name = req.get("Channel") or ""
        extra = req.get("ExtraChannel") or ""
        context = req.get("Context") or ""
        exten = req.get("Exten") or ""
        priority = req.get("Priority") or ""
        if not name:
            self._error(session, req, "Channel not specified")
            return
        if not context:
            self._error(session, req, "Context not specified")
            return
        if not exten:
            self._error(session, req, "Exten not specified")
            return
        if not priority:
            self._error(session, req, "Priority not specified")
            return
        prio = find_priority(context, exten, priority)
        if prio < 1:
            self._error(session, req, "Priority is invalid")
            return
        ch = self.pbx.find(name)
        if ch is None:
            self._error(session, req, f"Channel does not exist: {name}")
            return
        moves = [(ch, context, exten, prio)]
        if extra:
            ch2 = self.pbx.find(extra)
            if ch2 is None:
                self._error(session, req, f"ExtraChannel does not exist: {extra}")
                return
            ctx2 = req.get("ExtraContext") or context
            exten2 = req.get("ExtraExten") or exten
            prio2 = find_priority(ctx2, exten2, req.get("ExtraPriority") or priority) or 1
            moves.append((ch2, ctx2, exten2, prio2))
        self._ok(session, req, "Redirect successful")
        self.pbx.redirect(moves)

    def _transferer(
        self, session: _Session, req: AmiMessage, *, needs_exten: bool = True
    ) -> Channel | None:
        """The `Channel` of a transfer action (and its `Exten` present), or None after the
        error Asterisk's manager gives, checked in its order (captures 04b and 05a)."""
        name = req.get("Channel") or ""
        if not name:
            self._error(session, req, "No channel specified")
            return None
        if needs_exten and not req.get("Exten"):
            self._error(session, req, "No extension specified")
            return None
        ch = self.pbx.find(name)
        if ch is None:
            self._error(session, req, "Channel specified does not exist")
        return ch

    def _blind_transfer(self, session: _Session, req: AmiMessage) -> None:
        ch = self._transferer(session, req)
        if ch is None:
            return
        exten = req.get("Exten") or ""
        context = req.get("Context") or ch.context
        if ch.bridge is None or len(ch.bridge.members) < 2:
            self._error(session, req, "Transfer invalid")
            self.pbx.blind_transfer(ch, context, exten)
            return
        self._ok(session, req, "Transfer succeeded")
        self.pbx.blind_transfer(ch, context, exten)

    def _atxfer(self, session: _Session, req: AmiMessage) -> None:
        ch = self._transferer(session, req)
        if ch is None:
            return
        exten = req.get("Exten") or ""
        if not self.pbx.atxfer_feature:
            self._error(session, req, "No attended transfer feature code found")
            return
        context = req.get("Context") or ch.vars.get("TRANSFER_CONTEXT") or ch.context
        self._ok(session, req, "Atxfer successfully queued")
        self.pbx.atxfer(ch, context, exten)

    def _cancel_atxfer(self, session: _Session, req: AmiMessage) -> None:
        ch = self._transferer(session, req, needs_exten=False)
        if ch is None:
            return
        self._ok(session, req, "CancelAtxfer successfully queued")
        self.pbx.cancel_atxfer(ch)

    def _bridge(self, session: _Session, req: AmiMessage) -> None:
        name1, name2 = req.get("Channel1") or "", req.get("Channel2") or ""
        if not name1 or not name2:
            self._error(session, req, "Missing channel parameter in request")
            return
        one = self.pbx.find(name1)
        if one is None:
            self._error(session, req, f"Channel1 does not exist: {name1}")
            return
        two = self.pbx.find(name2)
        if two is None:
            self._error(session, req, f"Channel2 does not exist: {name2}")
            return
        self._ok(session, req, "Channels have been bridged")
        self.pbx.bridge(one, two)

    def _getvar(self, session: _Session, req: AmiMessage) -> None:
        var = req.get("Variable") or ""
        name = req.get("Channel") or ""
        if not var:
            self._error(session, req, "No variable specified")
            return
        ch = None
        if name:
            ch = self.pbx.find(name)
            if ch is None:
                self._error(session, req, "No such channel")
                return
        self._reply(session, req, ("Response", "Success"), ("Variable", var),
                    ("Value", self._read_var(ch, var)))

    def _read_var(self, ch: Channel | None, var: str) -> str:
        func, paren, arg = var.partition("(")
        if paren:
            arg = arg.rstrip(")").strip().lower()
            if ch is None:
                return ""
            if func.upper() == "CALLERID":
                return {"num": ch.cid_num, "name": ch.cid_name}.get(arg, "")
            if func.upper() == "CHANNEL":
                return {
                    "state": codes.STATE_DESC[ch.state],
                    "name": ch.name,
                    "uniqueid": ch.uniqueid,
                    "linkedid": ch.linkedid,
                    "context": ch.context,
                    "exten": ch.exten,
                }.get(arg, "")
            return ""
        if var == "EPOCH":
            return str(int(time.time()))
        if ch is not None:
            special = {"CHANNEL": ch.name, "UNIQUEID": ch.uniqueid, "EXTEN": ch.exten,
                       "CONTEXT": ch.context}
            if var in special:
                return special[var]
            if var in ch.vars:
                return ch.vars[var]
        return self.pbx.globals.get(var, "")

    def _setvar(self, session: _Session, req: AmiMessage) -> None:
        var = req.get("Variable") or ""
        name = req.get("Channel") or ""
        value = req.get("Value") or ""
        if not var:
            self._error(session, req, "No variable specified")
            return
        ch = None
        if name:
            ch = self.pbx.find(name)
            if ch is None:
                self._error(session, req, "No such channel")
                return
        self._ok(session, req, "Variable Set")
        if ch is None:
            self.pbx.set_global(var, value)
        else:
            self.pbx.varset(ch, var, value)

    def _status(self, session: _Session, req: AmiMessage) -> None:
        name = req.get("Channel") or ""
        if name:
            ch = self.pbx.find(name)
            if ch is None:
                self._error(session, req, "No such channel")
                return
            chans = [ch]
        else:
            chans = list(self.pbx.channels.values())
        wanted = [v.strip() for v in (req.get("Variables") or "").split(",") if v.strip()]
        self._list_start(session, req, "Channel status will follow")
        now = asyncio.get_running_loop().time()
        for ch in chans:
            seconds = (now - ch.created) / self.time_scale if self.time_scale else 0.0
            pairs: Pairs = [("Event", "Status"), ("Privilege", "Call"), *Pbx.snapshot(ch),
                            ("Type", ch.tech), ("DNID", ""),
                            ("EffectiveConnectedLineNum", ch.conn_num),
                            ("EffectiveConnectedLineName", ch.conn_name),
                            ("TimeToHangup", "0"),
                            ("BridgeID", ch.bridge.uniqueid if ch.bridge else ""),
                            ("Application", ch.app), ("Data", ch.app_data),
                            ("Nativeformats", "(slin)"), ("Readformat", "slin"),
                            ("Readtrans", ""), ("Writeformat", "slin"), ("Writetrans", ""),
                            ("Callgroup", "0"), ("Pickupgroup", "0"),
                            ("Seconds", str(int(seconds)))]
            pairs += [("Variable", f"{v}={ch.vars[v]}") for v in wanted if v in ch.vars]
            pairs += self._aid(req)
            session.send(pairs)
        self._list_complete(session, req, "StatusComplete", len(chans),
                            ("Items", str(len(chans))))

    def _core_show_channels(self, session: _Session, req: AmiMessage) -> None:
        self._list_start(session, req, "Channels will follow")
        now = asyncio.get_running_loop().time()
        chans = list(self.pbx.channels.values())
        for ch in chans:
            seconds = (now - ch.created) / self.time_scale if self.time_scale else 0.0
            session.send([("Event", "CoreShowChannel"), *self._aid(req), *Pbx.snapshot(ch),
                          ("Application", ch.app), ("ApplicationData", ch.app_data),
                          ("Duration", _duration(seconds)),
                          ("BridgeId", ch.bridge.uniqueid if ch.bridge else "")])
        self._list_complete(session, req, "CoreShowChannelsComplete", len(chans))

    def _play_dtmf(self, session: _Session, req: AmiMessage) -> None:
        ch = self.pbx.find(req.get("Channel") or "")
        if ch is None:
            self._error(session, req, "Channel not found")
            return
        digit = req.get("Digit") or ""
        if not digit:
            self._error(session, req, "No digit specified")
            return
        duration = (req.get("Duration") or "").strip()
        self._ok(session, req, "DTMF successfully queued")
        self.pbx.play_dtmf(ch, digit[0], int(duration) if duration.isdigit() else 100)

    # ---- queues -------------------------------------------------------------------------------

    def _member_in_use(self, location: str) -> bool:
        return any(name.startswith(f"{location}-") for name in self.pbx.channels)

    def _queue_status(self, session: _Session, req: AmiMessage) -> None:
        queue = req.get("Queue") or ""
        self._list_start(session, req, "Queue status will follow")
        if queue and queue != QUEUE_NAME:
            self._list_complete(session, req, "QueueStatusComplete", 0)
            return
        aid = self._aid(req)
        session.send([("Event", "QueueParams"), ("Queue", QUEUE_NAME), ("Max", "0"),
                      ("Strategy", "rrmemory"), ("Calls", "0"), ("Holdtime", "0"),
                      ("TalkTime", "0"), ("Completed", "0"), ("Abandoned", "0"),
                      ("ServiceLevel", "0"), ("ServicelevelPerf", "0.0"),
                      ("ServicelevelPerf2", "0.0"), ("Weight", "0"), *aid])
        for member, location in QUEUE_MEMBERS:
            busy = self._member_in_use(location)
            session.send([("Event", "QueueMember"), ("Queue", QUEUE_NAME), ("Name", member),
                          ("Location", location), ("StateInterface", location),
                          ("Membership", "static"), ("Penalty", "0"), ("CallsTaken", "0"),
                          ("LastCall", "0"), ("LastPause", "0"),
                          ("LoginTime", str(self._epoch)), ("InCall", "1" if busy else "0"),
                          ("Status", "2" if busy else "1"), ("Paused", "0"),
                          ("PausedReason", ""), ("Wrapuptime", "0"), *aid])
        self._list_complete(session, req, "QueueStatusComplete", 1 + len(QUEUE_MEMBERS))

    def _queue_summary(self, session: _Session, req: AmiMessage) -> None:
        queue = req.get("Queue") or ""
        self._list_start(session, req, "Queue summary will follow")
        if queue and queue != QUEUE_NAME:
            self._list_complete(session, req, "QueueSummaryComplete", 0)
            return
        free = sum(not self._member_in_use(loc) for _, loc in QUEUE_MEMBERS)
        session.send([("Event", "QueueSummary"), ("Queue", QUEUE_NAME),
                      ("LoggedIn", str(len(QUEUE_MEMBERS))), ("Available", str(free)),
                      ("Callers", "0"), ("HoldTime", "0"), ("TalkTime", "0"),
                      ("LongestHoldTime", "0"), *self._aid(req)])
        self._list_complete(session, req, "QueueSummaryComplete", 1)

    # ---- events -------------------------------------------------------------------------------

    def _fan_out(self, pairs: Pairs) -> None:
        # Every session whose user may read the class gets it; OriginateResponse included, with
        # the originator's ActionID: clients must ignore ActionIDs they did not send.
        privilege = next((v for k, v in pairs if k == "Privilege"), "call,all")
        cls = privilege.partition(",")[0].lower()
        for session in list(self._sessions):
            if session.wants(cls):
                session.send(pairs)


_Handler = Callable[[_Session, AmiMessage], None]
