"""A minimal AMI server for the Asterisk emulator, on the one framer (`cti.ami.framing`).

Implemented (faithful to the Asterisk 20.20.1 transcripts): banner, Login with plaintext secret
(users with read/write classes as in manager.conf), FullyBooted only for users who can read
`system`, bad secret / unknown user -> delay, `Authentication failed`, close; `Permission
denied` before login; `Missing action in request`; `Invalid/unknown command`; case-insensitive
actions; replies without ActionID when the request had none; Ping; Logoff; Async Originate
(queued ack, then OriginateResponse to every session that can read `call`, outcome drawn from
the population model, Reason codes from `cti.ami.codes`); duplicate ChannelId refused.

Channel events: a Local pair's Newchannel (;1 Down, ;2 Ring), then Hangup with Cause and
Cause-txt on failure or Newstate Up on answer; the order around OriginateResponse is simplified.
NOT yet implemented: the other channel events (Newexten, VarSet, Dial*, Bridge*...), non-async
Originate, Hangup/Redirect/Bridge/Getvar/Setvar/Status/CoreShowChannels/Queue* actions.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from cti.ami import codes
from cti.ami.framing import AmiMessage, AmiParser, FramingError, serialize
from sim.population import CalleeKind, Population, deterministic_test_population

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


DEFAULT_USERS: tuple[AmiUser, ...] = (
    AmiUser("dialer", "dialer", frozenset({"all"}), frozenset({"all"})),
    AmiUser("limited", "limited", frozenset({"call"}), frozenset({"call"})),
)


CAUSE_TXT: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    21: "Call Rejected",
    34: "Circuit/channel congestion",
}


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


class _Session:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.user: AmiUser | None = None

    def send(self, pairs: Iterable[tuple[str, str]]) -> None:
        if not self.writer.is_closing():
            self.writer.write(serialize(pairs))


class AmiServer:
    """AMI over TCP. `start()` binds (port 0 = ephemeral), `close()` stops it and its timers.

    Fault injection: `drop_connections()` closes every client socket abruptly; the PBX state
    (pending originates) goes on. `originates_by_channel_id` / `originates_by_action_id`
    count every Originate seen, so tests can assert a replay made no second call.
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
        self._timers: set[asyncio.TimerHandle] = set()
        self._used_channel_ids: set[str] = set()
        self.originates_by_channel_id: Counter[str] = Counter()
        self.originates_by_action_id: Counter[str] = Counter()
        self._seq = 0
        #: Answered channels still up: name -> (uniqueid, linkedid, context, exten).
        self._live: dict[str, tuple[str, str, str, str]] = {}
        self._epoch = int(time.time())

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._want_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._server is not None:
            self._server.close()
        self.drop_connections()
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

    def _next_uniqueid(self) -> str:
        self._seq += 1
        return f"{self._epoch}.{self._seq}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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

    def _reply(self, session: _Session, req: AmiMessage, *pairs: tuple[str, str]) -> None:
        out: list[tuple[str, str]] = [pairs[0]]
        if req.action_id is not None:
            out.append(("ActionID", req.action_id))
        out.extend(pairs[1:])
        session.send(out)

    async def _handle(self, session: _Session, req: AmiMessage) -> bool:
        """Handle one action; False closes the session."""
        action = (req.action or "").strip()
        low = action.lower()
        if not action:
            self._reply(
                session, req, ("Response", "Error"), ("Message", "Missing action in request")
            )
            return True
        if low == "logoff":
            self._reply(
                session, req, ("Response", "Goodbye"), ("Message", "Thanks for all the fish.")
            )
            await session.writer.drain()
            return False
        if low == "login":
            return await self._login(session, req)
        if session.user is None:
            self._reply(session, req, ("Response", "Error"), ("Message", "Permission denied"))
            return True
        if low == "ping":
            self._reply(
                session,
                req,
                ("Response", "Success"),
                ("Ping", "Pong"),
                ("Timestamp", f"{time.time():.6f}"),
            )
        elif low == "originate":
            self._originate(session, req)
        elif low == "hangup":
            self._hangup_action(session, req)
        else:
            self._reply(
                session,
                req,
                ("Response", "Error"),
                (
                    "Message",
                    f"Invalid/unknown command: {action}. "
                    "Use Action: ListCommands to show available commands.",
                ),
            )
        return True

    async def _login(self, session: _Session, req: AmiMessage) -> bool:
        user = self._users.get((req.get("Username") or "").lower())
        if user is None or req.get("Secret") != user.secret:
            await asyncio.sleep(self.auth_fail_delay_s)
            self._reply(session, req, ("Response", "Error"), ("Message", "Authentication failed"))
            await session.writer.drain()
            return False
        session.user = user
        self._reply(
            session, req, ("Response", "Success"), ("Message", "Authentication accepted")
        )
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

    def _originate(self, session: _Session, req: AmiMessage) -> None:
        channel = req.get("Channel") or ""
        channel_id = req.get("ChannelId")
        if req.action_id is not None:
            self.originates_by_action_id[req.action_id] += 1
        if channel_id:
            self.originates_by_channel_id[channel_id] += 1
        if not channel:
            self._reply(session, req, ("Response", "Error"), ("Message", "Channel not specified"))
            return
        self._reply(
            session, req, ("Response", "Success"), ("Message", "Originate successfully queued")
        )
        duplicate = bool(channel_id) and channel_id in self._used_channel_ids
        if channel_id:
            self._used_channel_ids.add(channel_id)
        number = channel.partition("/")[2].partition("@")[0]
        behaviour = self._population.draw(number, self._rng)
        reason = codes.REASON_FAILED if duplicate else REASON_BY_KIND[behaviour.kind]
        timeout_s = int(req.get("Timeout") or "30000") / 1000.0
        delay = behaviour.ring_s if not duplicate else 0.0
        if reason == codes.REASON_RINGING:
            delay = min(timeout_s, behaviour.ring_s)
        answered = reason == codes.REASON_ANSWERED
        legs: list[tuple[str, str]] = []
        if not duplicate:
            # A Local channel pair: ;1 (Down) and ;2 (Ring) in the callee's context.
            base = f"{channel}-{self._seq + 1:08x}" if channel.startswith("Local/") else channel
            ctx = channel.partition("@")[2] or "default"
            uid1 = channel_id or self._next_uniqueid()
            uid2 = req.get("OtherChannelId") or self._next_uniqueid()
            legs = [(f"{base};1", uid1), (f"{base};2", uid2)]
            for (name, uid), state in zip(legs, (codes.STATE_DOWN, codes.STATE_RING), strict=True):
                block = snapshot(
                    channel=name, state=state, context=ctx, exten=number, uniqueid=uid,
                    linkedid=uid1,
                )
                self._fan_out([("Event", "Newchannel"), ("Privilege", "call,all"), *block])
        uniqueid = legs[0][1] if answered else "<unknown>"
        pairs: list[tuple[str, str]] = [("Event", "OriginateResponse"), ("Privilege", "call,all")]
        if req.action_id is not None:
            pairs.append(("ActionID", req.action_id))
        wire_channel = channel
        if answered:
            # An answered originate names the real channel, e.g. Local/501@ctx-0000000b;1.
            wire_channel = legs[0][0]
        pairs += [
            ("Response", "Success" if answered else "Failure"),
            ("Channel", wire_channel),
            ("Context", req.get("Context") or ""),
            ("Exten", req.get("Exten") or ""),
            ("Reason", str(reason)),
            ("Uniqueid", uniqueid),
        ]
        cid = req.get("CallerID") or ""
        name, _, num = cid.partition("<")
        pairs += [
            ("CallerIDNum", num.rstrip(">").strip() or "<unknown>"),
            ("CallerIDName", name.strip() or "<unknown>"),
        ]
        loop = asyncio.get_running_loop()
        holder: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._timers.discard(holder[0])
            ctx = channel.partition("@")[2] or "default"
            for name, uid in reversed(legs):
                state = codes.STATE_RING if name.endswith(";2") else codes.STATE_DOWN
                block = snapshot(channel=name, state=state, context=ctx, exten=number,
                                 uniqueid=uid, linkedid=legs[0][1])
                if answered:
                    up = snapshot(channel=name, state=codes.STATE_UP, context=ctx,
                                  exten=number, uniqueid=uid, linkedid=legs[0][1])
                    self._fan_out([("Event", "Newstate"), ("Privilege", "call,all"), *up])
                    self._live[name] = (uid, legs[0][1], ctx, number)
                else:
                    cause = behaviour.cause
                    self._fan_out([
                        ("Event", "Hangup"),
                        ("Privilege", "call,all"),
                        *block,
                        ("Cause", str(cause)),
                        ("Cause-txt", CAUSE_TXT.get(cause, "Unknown")),
                    ])
            self._fan_out(pairs)

        timer = loop.call_later(delay * self.time_scale, fire)
        holder.append(timer)
        self._timers.add(timer)

    def _hangup_action(self, session: _Session, req: AmiMessage) -> None:
        """Hangup of one named, answered channel (regex Channel: not supported yet)."""
        name = req.get("Channel")
        if not name:
            self._reply(session, req, ("Response", "Error"), ("Message", "No channel specified"))
            return
        live = self._live.pop(name, None)
        if live is None:
            self._reply(session, req, ("Response", "Error"), ("Message", "No such channel"))
            return
        cause = int(req.get("Cause") or "16")
        self._reply(session, req, ("Response", "Success"), ("Message", "Channel Hungup"))
        uid, linked, ctx, exten = live
        block = snapshot(
            channel=name, state=codes.STATE_UP, context=ctx, exten=exten, uniqueid=uid,
            linkedid=linked,
        )
        self._fan_out([
            ("Event", "Hangup"),
            ("Privilege", "call,all"),
            *block,
            ("Cause", str(cause)),
            ("Cause-txt", CAUSE_TXT.get(cause, "Unknown")),
        ])

    def _fan_out(self, pairs: list[tuple[str, str]]) -> None:
        # Real Asterisk sends OriginateResponse to every session that can read `call`, each
        # with the originator's ActionID; clients must ignore ActionIDs they did not send.
        for session in list(self._sessions):
            if session.user is not None and session.user.can_read("call"):
                session.send(pairs)
