"""The emulator's call model over a real AMI socket, against the Asterisk 20.20.1 captures.

Every field list the emulator sends is compared with the same event in the fixture captures
(`tests/fixtures/asterisk/transcripts/ami/*.jsonl`): names, fields and field order must match.
Event order is compared with the capture where the capture's order is not a thread race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from cti.ami.framing import AmiMessage, AmiParser, Banner, serialize
from sim.pbx.ami_server import AmiServer
from sim.population import CalleeKind, Override, Population

AMI = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts" / "ami"
TRANSCRIPTS = AMI.parent

#: Time runs 100x faster: 1 emulated second is 10 ms.
SCALE = 0.01


# ---- fixtures: the captures -------------------------------------------------------------------


def capture(name: str, direction: str = "rx") -> list[AmiMessage]:
    """Every message of one direction in `ami/<name>.jsonl`, in wire order."""
    out: list[AmiMessage] = []
    for line in (AMI / f"{name}.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["dir"] != direction:
            continue
        parser = AmiParser(expect_banner=False)
        out += [f for f in parser.feed(record["raw"].encode()) if isinstance(f, AmiMessage)]
    return out


def transcript(name: str) -> list[AmiMessage]:
    """The received messages of a readable `.txt` transcript (the first captures)."""
    out: list[AmiMessage] = []
    recv = False
    pairs: list[tuple[str, str]] = []
    for line in (TRANSCRIPTS / name).read_text().split("\n"):
        if line.startswith(("<<<", ">>>")) or not line.strip():
            if pairs and recv:
                out.append(AmiMessage(pairs))
            pairs = []
            if line.startswith(("<<<", ">>>")):
                recv = line.startswith("<<< RECV")
            continue
        key, _, value = line.partition(":")
        pairs.append((key, value[1:] if value.startswith(" ") else value))
    if pairs and recv:
        out.append(AmiMessage(pairs))
    return out


def recorded(name: str, event: str, **match: str) -> AmiMessage:
    for m in capture(name):
        if m.event == event and all(m.get(k) == v for k, v in match.items()):
            return m
    raise AssertionError(f"no {event} {match} in {name}")


def reply_for(name: str, action_id: str) -> AmiMessage:
    """The captured reply (Response: ...) to the action with `action_id`."""
    return next(m for m in capture(name) if m.response is not None and m.action_id == action_id)


def keys(m: AmiMessage) -> list[str]:
    return [k for k, _ in m.pairs]


#: The events that make up a call's skeleton (the dialplan chatter left out).
CALL_EVENTS = {
    "Newchannel", "LocalBridge", "DialBegin", "DialState", "DialEnd", "Newstate",
    "HangupRequest", "SoftHangupRequest", "Hangup", "OriginateResponse", "BridgeCreate",
    "BridgeEnter", "BridgeLeave", "BridgeDestroy", "BlindTransfer", "AttendedTransfer",
}


def channel_of(m: AmiMessage) -> str:
    return m.get("Channel") or m.get("DestChannel") or m.get("LocalOneChannel") or ""


def skeleton(msgs: Iterable[AmiMessage], prefix: str) -> list[tuple[str, str]]:
    """(event, ;1/;2 or "") for the call events of the channel(s) named `prefix...`."""
    out = []
    for m in msgs:
        if m.event in CALL_EVENTS and channel_of(m).startswith(prefix):
            out.append((m.event or "", channel_of(m)[-2:] if ";" in channel_of(m) else ""))
    return out


# ---- the client ---------------------------------------------------------------------------------


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = AmiParser(expect_banner=True)
        self.queue: list[AmiMessage] = []
        self.seen: list[AmiMessage] = []

    async def msg(self, timeout: float = 3.0) -> AmiMessage:
        async with asyncio.timeout(timeout):
            while not self.queue:
                data = await self.reader.read(65536)
                assert data, "connection closed"
                for f in self.parser.feed(data):
                    if isinstance(f, AmiMessage):
                        self.queue.append(f)
                    else:
                        assert isinstance(f, Banner), f
        m = self.queue.pop(0)
        self.seen.append(m)
        return m

    async def until(self, event: str, timeout: float = 3.0, **match: str) -> AmiMessage:
        async with asyncio.timeout(timeout):
            while True:
                m = await self.msg()
                if m.event == event and all(m.get(k) == v for k, v in match.items()):
                    return m

    async def seen_or_next(self, event: str, **match: str) -> AmiMessage:
        """The first such event already received, else the next one to arrive."""
        for m in self.seen:
            if m.event == event and all(m.get(k) == v for k, v in match.items()):
                return m
        return await self.until(event, **match)

    async def reply(self, action_id: str) -> AmiMessage:
        while True:
            m = await self.msg()
            if m.response is not None and m.action_id == action_id:
                return m

    async def quiet(self, seconds: float = 0.3) -> list[AmiMessage]:
        """Everything that arrives until `seconds` pass without a message."""
        out = []
        while True:
            try:
                out.append(await self.msg(seconds))
            except TimeoutError:
                return out

    def send(self, *pairs: tuple[str, str], **fields: str) -> None:
        self.writer.write(serialize([*pairs, *fields.items()]))

    async def action(self, action: str, aid: str, **fields: str) -> AmiMessage:
        self.send(Action=action, ActionID=aid, **fields)
        return await self.reply(aid)

    async def list_action(self, action: str, aid: str, **fields: str) -> list[AmiMessage]:
        """The reply, the items and the ...Complete event of a list action."""
        first = await self.action(action, aid, **fields)
        out = [first]
        if first.get("EventList") != "start":
            return out
        while True:
            m = await self.msg()
            if m.action_id == aid:
                out.append(m)
                if m.get("EventList") == "Complete":
                    return out


async def login(server: AmiServer, user: str = "dialer") -> Client:
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    c = Client(r, w)
    c.send(Action="Login", Username=user, Secret=user, ActionID="login")
    assert (await c.reply("login"))["Message"] == "Authentication accepted"
    return c


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[AmiServer]:
    """An AmiServer that must end without an exception inside any of its call tasks."""
    async with AmiServer(**kwargs) as server:
        yield server
        assert server.pbx.errors == []


def population(**kinds: CalleeKind) -> Population:
    """Exact numbers -> kinds (ring 1 s, talk 1000 s); anything else answers."""
    return Population(
        weights={CalleeKind.HUMAN: 1.0},
        ring_range_s=(1.0, 1.0),
        fail_ring_range_s=(1.0, 1.0),
        talk_median_s=1000.0,
        talk_sigma=0.0,
        machine_talk_range_s=(1000.0, 1000.0),
        overrides=tuple(Override(f"^{n[1:]}$", k) for n, k in kinds.items()),
    )


async def originate(c: Client, number: str, aid: str, **fields: str) -> AmiMessage:
    """Originate into paceline-outbound (or `Context=`) and wait for the OriginateResponse."""
    base = {"Channel": f"Local/{number}@sim-customers", "Context": "paceline-outbound",
            "Exten": "s", "Priority": "1", "CallerID": "Dialer <5550100>",
            "Timeout": "30000", "Async": "true"}
    base.update(fields)
    ack = await c.action("Originate", aid, **base)
    assert ack["Message"] == "Originate successfully queued"
    return await c.until("OriginateResponse", ActionID=aid)


async def connect_agent(c: Client, root: str, agent: str, aid: str) -> AmiMessage:
    """Setvar PACELINE_AGENT + Redirect to paceline-agent; returns the agent leg's BridgeEnter."""
    assert (await c.action("Setvar", f"{aid}-v", Channel=root, Variable="PACELINE_AGENT",
                           Value=agent))["Message"] == "Variable Set"
    assert (await c.action("Redirect", f"{aid}-r", Channel=root, Context="paceline-agent",
                           Exten="s", Priority="1"))["Message"] == "Redirect successful"
    enter = await c.until("BridgeEnter")
    assert enter["Channel"] != root
    await c.until("BridgeEnter", Channel=root)
    return enter


# ---- 1. Originate outcomes ------------------------------------------------------------------


async def test_answered_originate_has_capture_sequence_and_field_order() -> None:
    async with running(time_scale=SCALE, population=population()) as server:
        c = await login(server)
        resp = await originate(
            c, "500", "o1", ChannelId="call-1", OtherChannelId="call-1;2",
            Variable="PACELINE_CALL_ID=call-1,PACELINE_AMD=0",
        )
        assert keys(resp) == keys(recorded("04a_redirect_customer_to_agent_1002",
                                           "OriginateResponse"))
        assert (resp["Response"], resp["Reason"], resp["Uniqueid"]) == ("Success", "4", "call-1")
        assert resp["Channel"].startswith("Local/500@sim-customers-")
        assert resp["Channel"].endswith(";1")
        want = skeleton(capture("04a_redirect_customer_to_agent_1002"), "Local/500@")
        got = skeleton(c.seen, "Local/500@")
        assert got == want[: len(got)]
        assert got[-1] == ("OriginateResponse", ";1")
        for event in ("Newchannel", "NewCallerid", "NewConnectedLine", "LocalBridge",
                      "DialBegin", "DialState", "DialEnd", "Newstate", "Newexten"):
            mine = next(m for m in c.seen if m.event == event)
            assert keys(mine) == keys(recorded("04a_redirect_customer_to_agent_1002", event))
        two = next(m for m in c.seen if m.event == "Newchannel" and m["Channel"].endswith(";2"))
        assert (two["Uniqueid"], two["Linkedid"]) == ("call-1;2", "call-1")
        varset = next(m for m in c.seen if m.event == "VarSet")
        assert keys(varset) == keys(recorded("08_amd_600_machine_100_human", "VarSet"))
        assert server.originates_by_channel_id["call-1"] == 1
        assert server.calls[0].kind is CalleeKind.HUMAN and server.calls[0].reason == 4


@pytest.mark.parametrize(
    ("number", "kind", "reason", "causes"),
    [
        ("200", CalleeKind.BUSY, "5", {";2": "17", ";1": "0"}),
        ("300", CalleeKind.NO_ANSWER, "3", {";1": "19", ";2": "19"}),
        ("400", CalleeKind.CONGESTION, "8", {";2": "34", ";1": "0"}),
        ("900", CalleeKind.REJECTED, "0", {";2": "21", ";1": "21"}),
        ("12345", CalleeKind.FAILED, "0", {";2": "1", ";1": "1"}),
    ],
)
async def test_failed_originate_matches_the_outcomes_capture(
    number: str, kind: CalleeKind, reason: str, causes: dict[str, str]
) -> None:
    async with running(time_scale=SCALE, population=population(**{f"n{number}": kind})) as s:
        c = await login(s)
        resp = await originate(c, number, f"o-{number}", Timeout="8000", Context="agents",
                               Exten="1001")
        assert (resp["Response"], resp["Reason"], resp["Uniqueid"]) == (
            "Failure", reason, "<unknown>")
        assert resp["Channel"] == f"Local/{number}@sim-customers"
        rec = transcript("ami_session_transcript_outcomes.txt")
        assert keys(resp) == keys(next(m for m in rec if m.event == "OriginateResponse"))
        await c.quiet(0.1)
        got = skeleton(c.seen, f"Local/{number}@")
        want = skeleton(rec, f"Local/{number}@")
        if kind is CalleeKind.FAILED:
            # Where the OriginateResponse falls among the hang-up events is a thread race.
            got = [e for e in got if e[0] != "OriginateResponse"]
            want = [e for e in want if e[0] != "OriginateResponse"]
        assert got == want
        hangups = {m["Channel"][-2:]: m for m in c.seen if m.event == "Hangup"}
        assert {k: m["Cause"] for k, m in hangups.items()} == causes
        for m in hangups.values():
            assert keys(m) == keys(next(r for r in rec if r.event == "Hangup"))
        dial_end = [m for m in c.seen if m.event == "DialEnd"]
        assert (kind is CalleeKind.NO_ANSWER) == (not dial_end)  # a timeout has no DialEnd
        assert s.channels == {}


async def test_pjsip_endpoint_is_one_channel_and_486_busy_gives_reason_0_with_cause_17() -> None:
    async with running(time_scale=SCALE, population=population(n5550017=CalleeKind.BUSY)) as s:
        c = await login(s)
        ok = await originate(c, "", "p1", Channel="PJSIP/5551234@trunk")
        assert ok["Reason"] == "4" and ok["Channel"].startswith("PJSIP/trunk-")
        assert [ch for ch in s.channels] == [ok["Channel"]]
        busy = await originate(c, "", "p2", Channel="PJSIP/5550017@trunk")
        assert (busy["Reason"], busy["Channel"]) == ("0", "PJSIP/5550017@trunk")
        hangup = await c.until("Hangup")
        assert hangup["Cause"] == "17" and hangup["Channel"].startswith("PJSIP/trunk-")


async def test_duplicate_channel_id_makes_no_second_call_and_is_counted() -> None:
    async with running(time_scale=SCALE, population=population()) as server:
        c = await login(server)
        first = await originate(c, "501", "d1", ChannelId="dup")
        second = await originate(c, "501", "d2", ChannelId="dup")
        assert (first["Reason"], second["Reason"]) == ("4", "0")
        assert server.originates_by_channel_id["dup"] == 2
        assert len([n for n in server.channels if n.startswith("Local/501@")]) == 2


# ---- 2. Dialplan after the answer -------------------------------------------------------------


@pytest.mark.parametrize(("number", "kind", "status", "cause"), [
    ("100", CalleeKind.HUMAN, "HUMAN", "HUMAN-801-800"),
    ("600", CalleeKind.MACHINE, "MACHINE", "LONGGREETING-1500-1500"),
])
async def test_paceline_outbound_runs_amd_then_waits_60s_and_hangs_up_16(
    number: str, kind: CalleeKind, status: str, cause: str
) -> None:
    async with running(time_scale=SCALE, population=population(**{f"n{number}": kind})) as s:
        c = await login(s)
        resp = await originate(c, number, "a", Variable="PACELINE_CALL_ID=c1,PACELINE_AMD=1")
        amd = await c.until("VarSet", Variable="AMDSTATUS")
        assert keys(amd) == keys(recorded("08_amd_600_machine_100_human", "VarSet",
                                          Variable="AMDSTATUS"))
        assert (amd["Channel"], amd["Value"], amd["Context"]) == (
            resp["Channel"], status, "paceline-outbound")
        assert (await c.until("VarSet", Variable="AMDCAUSE"))["Value"] == cause
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hangup = await c.until("Hangup", Channel=resp["Channel"], timeout=5)
        assert loop.time() - t0 >= 60 * SCALE * 0.9
        assert hangup["Cause"] == "16"


async def test_without_amd_there_is_no_amdstatus() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "100", "a", Variable="PACELINE_AMD=0")
        await c.until("Hangup", Channel=resp["Channel"], timeout=5)
        assert not [m for m in c.seen if m.get("Variable") == "AMDSTATUS"]


async def test_paceline_agent_bridges_customer_and_agent_and_hangup_tears_both_down() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        root = resp["Channel"]
        agent = await connect_agent(c, root, "Local/1001@agents", "x")
        assert agent["Channel"].startswith("Local/1001@agents-")
        name = "02_coreshowchannels_two_calls"
        mine = {
            "DialBegin": next(m for m in c.seen if m.event == "DialBegin" and "Channel" in m),
            "DialEnd": next(m for m in c.seen if m.event == "DialEnd" and "Channel" in m),
            "BridgeCreate": next(m for m in c.seen if m.event == "BridgeCreate"),
            "BridgeEnter": agent,
        }
        for event, m in mine.items():
            caller = {"Channel": "Local/500@sim-customers-0000000a;1"} if "Dial" in event else {}
            assert keys(m) == keys(recorded(name, event, **caller)), event
        dial_begin = next(m for m in c.seen if m.event == "DialBegin" and "Channel" in m)
        assert (dial_begin["Channel"], dial_begin["DialString"]) == (root, "1001@agents")
        items = await c.list_action("CoreShowChannels", "csc")
        assert keys(items[0]) == keys(reply_for(name, "csc-2calls"))
        shown = {m["Channel"]: m for m in items[1:-1]}
        assert len(shown) == 4
        for m in shown.values():
            assert keys(m) == keys(recorded(name, "CoreShowChannel"))
        assert shown[root]["BridgeId"] == shown[agent["Channel"]]["BridgeId"] != ""
        assert (shown[root]["Application"], shown[root]["ApplicationData"]) == (
            "Dial", "Local/1001@agents,30,tT")
        assert keys(items[-1]) == keys(recorded(name, "CoreShowChannelsComplete"))
        assert items[-1]["ListItems"] == "4"
        assert (await c.action("Hangup", "h", Channel=root, Cause="16"))["Message"] == (
            "Channel Hungup")
        await c.until("BridgeDestroy")
        await c.quiet(0.4)
        gone = {m["Channel"] for m in c.seen if m.event == "Hangup"}
        assert gone == set(shown)
        leave = next(m for m in c.seen if m.event == "BridgeLeave")
        assert keys(leave) == keys(recorded(name, "BridgeLeave"))
        assert keys(next(m for m in c.seen if m.event == "BridgeDestroy")) == keys(
            recorded(name, "BridgeDestroy"))
        assert s.channels == {}
        after = await c.list_action("CoreShowChannels", "csc2")
        assert after[-1]["ListItems"] == "0"


async def test_callee_hangs_up_after_talk_time_and_takes_the_agent_legs_along() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0},
                     overrides=(Override("^7$", CalleeKind.HUMAN, ring_s=0.5, talk_s=3.0),))
    async with running(time_scale=SCALE, population=pop) as s:
        c = await login(s)
        resp = await originate(c, "7", "o")
        await connect_agent(c, resp["Channel"], "PJSIP/agent42", "x")
        far = await c.until("Hangup", timeout=5)
        assert (far["Channel"], far["Cause"]) == (resp["Channel"][:-1] + "2", "16")
        await c.quiet(0.3)
        assert s.channels == {}
        assert any(m.event == "Hangup" and m["Channel"].startswith("PJSIP/agent42-")
                   for m in c.seen)


async def test_busy_agent_ends_the_customer_call_with_cause_17() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        await c.action("Setvar", "v", Channel=resp["Channel"], Variable="PACELINE_AGENT",
                       Value="Local/9001@agents")
        await c.action("Redirect", "r", Channel=resp["Channel"], Context="paceline-agent",
                       Exten="s", Priority="1")
        end = await c.until("DialEnd", Channel=resp["Channel"])
        assert end["DialStatus"] == "BUSY"
        hangup = await c.until("Hangup", Channel=resp["Channel"])
        assert hangup["Cause"] == "17"


async def test_agent_2xxx_rings_two_seconds_before_answering() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        await c.action("Setvar", "v", Channel=resp["Channel"], Variable="PACELINE_AGENT",
                       Value="Local/2001@agents")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await c.action("Redirect", "r", Channel=resp["Channel"], Context="paceline-agent",
                       Exten="s", Priority="1")
        ringing = await c.until("DialState", Channel=resp["Channel"])
        assert ringing["DialStatus"] == "RINGING"
        await c.until("DialEnd", Channel=resp["Channel"], DialStatus="ANSWER")
        assert loop.time() - t0 >= 2 * SCALE * 0.9


async def test_abandon_plays_the_sound_then_hangs_up_16() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        await c.action("Setvar", "v", Channel=resp["Channel"], Variable="PACELINE_SOUND",
                       Value="sorry")
        await c.action("Redirect", "r", Channel=resp["Channel"], Context="paceline-abandon",
                       Exten="s", Priority="1")
        play = await c.until("Newexten", Channel=resp["Channel"], Application="Playback")
        assert play["AppData"] == "sorry"
        assert (await c.until("Hangup", Channel=resp["Channel"]))["Cause"] == "16"


# ---- 3. DTMF ------------------------------------------------------------------------------------


async def test_callee_dtmf_is_received_on_root_and_sent_through_the_bridge() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0},
                     overrides=(Override("^5$", CalleeKind.HUMAN, ring_s=0.1, talk_s=100,
                                         dtmf="4#"),))
    async with running(time_scale=SCALE, population=pop, dtmf_delay_s=20.0) as s:
        c = await login(s)
        resp = await originate(c, "5", "o")
        agent = await connect_agent(c, resp["Channel"], "Local/1001@agents", "x")
        await c.until("DTMFEnd", Digit="#", Direction="Received", Channel=resp["Channel"])
        await c.quiet(0.05)
        dtmf = [(m.event, m["Channel"], m["Digit"], m["Direction"])
                for m in c.seen if m.event in ("DTMFBegin", "DTMFEnd") and m["Digit"] == "4"]
        agent2 = agent["Channel"][:-1] + "2"
        assert dtmf == [
            ("DTMFBegin", resp["Channel"], "4", "Received"),
            ("DTMFBegin", agent["Channel"], "4", "Sent"),
            ("DTMFBegin", agent2, "4", "Received"),
            ("DTMFEnd", resp["Channel"], "4", "Received"),
            ("DTMFEnd", agent["Channel"], "4", "Sent"),
            ("DTMFEnd", agent2, "4", "Received"),
        ]
        name = "07b_dtmf_through_bridge_sent_and_received"
        for m in c.seen:
            if m.event in ("DTMFBegin", "DTMFEnd"):
                want = recorded(name, m.event, Direction=m["Direction"])
                assert keys(m) == keys(want)
                if m.event == "DTMFEnd":
                    assert m["DurationMs"] == "100"


async def test_play_dtmf_goes_to_the_local_partner_and_errors_match_capture() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "1001", "o", Channel="Local/1001@agents",
                               Application="Wait", Data="15")
        ok = await c.action("PlayDTMF", "p", Channel=resp["Channel"], Digit="7",
                            Duration="250")
        assert list(ok.pairs) == [("Response", "Success"), ("ActionID", "p"),
                                  ("Message", "DTMF successfully queued")]
        end = await c.until("DTMFEnd")
        assert (end["Channel"], end["DurationMs"], end["Direction"]) == (
            resp["Channel"][:-1] + "2", "250", "Received")
        assert keys(end) == keys(recorded("07_dtmf_senddtmf_read_playdtmf", "DTMFEnd"))
        assert (await c.action("PlayDTMF", "n", Channel=resp["Channel"]))["Message"] == (
            "No digit specified")
        assert (await c.action("PlayDTMF", "x", Channel="Local/nope-00000000;1",
                               Digit="1"))["Message"] == "Channel not found"


# ---- 4. Redirect, hold, Bridge ------------------------------------------------------------------


async def test_redirect_out_of_a_bridge_matches_capture_and_sends_no_blindtransfer() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o", Context="dialer-connect", Exten="1001")
        root = resp["Channel"]
        await c.until("BridgeEnter", Channel=root)
        r = await c.action("Redirect", "e1", Channel="Local/nope-00000000;1", Context="agents",
                           Exten="1002", Priority="1")
        assert (r["Response"], r["Message"]) == (
            "Error", "Channel does not exist: Local/nope-00000000;1")
        r = await c.action("Redirect", "e2", Channel=root, Context="agents")
        assert r["Message"] == "Exten not specified"
        r = await c.action("Redirect", "e3", Channel=root, Context="agents", Exten="1002",
                           Priority="nolabel")
        assert r["Message"] == "Priority is invalid"
        start = len(c.seen)
        r = await c.action("Redirect", "r", Channel=root, Context="dialer-connect",
                           Exten="1002", Priority="1")
        assert list(r.pairs) == [("Response", "Success"), ("ActionID", "r"),
                                 ("Message", "Redirect successful")]
        await c.until("BridgeEnter", Channel=root)
        events = c.seen[start:]
        assert not [m for m in events if m.event == "BlindTransfer"]
        got = [(e, ch) for e, ch in skeleton(events, "") if e.startswith("Bridge")][:3]
        assert got == [("BridgeLeave", ";1"), ("BridgeLeave", ";1"), ("BridgeDestroy", "")]
        leave = next(m for m in events if m.event == "BridgeLeave")
        assert (leave["Channel"], leave["Context"], leave["Exten"], leave["Priority"]) == (
            root, "dialer-connect", "1002", "1")
        first_agent_hangups = [m["Channel"] for m in events if m.event == "Hangup"]
        assert all(ch.startswith("Local/1001@agents-") for ch in first_agent_hangups)
        assert any(m.event == "DialBegin" and m.get("DestChannel", "").startswith(
            "Local/1002@agents-") for m in events)


async def test_hold_with_extrachannel_then_bridge_action_unholds_and_priority_plus_1() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        root = resp["Channel"]
        agent = (await connect_agent(c, root, "Local/1001@agents", "x"))["Channel"]
        r = await c.action("Redirect", "hold", Channel=root, Context="paceline-hold",
                           Exten="s", Priority="1", ExtraChannel=agent,
                           ExtraContext="paceline-park", ExtraExten="s", ExtraPriority="1")
        assert r["Message"] == "Redirect successful"
        moh = await c.until("MusicOnHoldStart", Channel=root)
        assert keys(moh) == keys(recorded("13c_ami_dialplan_musiconhold", "MusicOnHoldStart"))
        assert moh["Class"] == "default"
        await c.until("Newexten", Channel=agent, Application="Wait")
        assert agent in s.channels  # the agent leg was parked, not hung up
        name = "05d_bridge_action"
        for fields, text in [
            ({"Channel1": "Local/nope-00000000;1", "Channel2": agent},
             "Channel1 does not exist: Local/nope-00000000;1"),
            ({"Channel1": root, "Channel2": "Local/nope-00000000;1"},
             "Channel2 does not exist: Local/nope-00000000;1"),
            ({"Channel1": root}, "Missing channel parameter in request"),
        ]:
            assert (await c.action("Bridge", "be", **fields))["Message"] == text
        ok = await c.action("Bridge", "b", Channel1=root, Channel2=agent, Tone="no")
        assert keys(ok) == keys(reply_for(name, "bridge-1"))
        assert ok["Message"] == "Channels have been bridged"
        stop = await c.until("MusicOnHoldStop", Channel=root)
        assert keys(stop) == keys(recorded("13c_ami_dialplan_musiconhold", "MusicOnHoldStop"))
        create = await c.until("BridgeCreate")
        assert keys(create) == keys(recorded(name, "BridgeCreate"))
        enters = [await c.until("BridgeEnter"), await c.until("BridgeEnter")]
        assert [m["Channel"] for m in enters] == [root, agent]
        await c.action("Hangup", "h", Channel=root)
        # The agent leg continues paceline-park at priority 2: Hangup(16).
        cont = await c.until("Newexten", Channel=agent, Application="Hangup")
        assert (cont["Context"], cont["Priority"]) == ("paceline-park", "2")
        await c.until("Hangup", Channel=agent)
        await c.quiet(0.3)
        assert s.channels == {}


# ---- 5. Transfers -------------------------------------------------------------------------------


async def test_blind_transfer_moves_the_customer_and_hangs_up_the_transferer() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "501", "o")
        root = resp["Channel"]
        agent = (await connect_agent(c, root, "Local/1001@agents", "x"))["Channel"]
        name = "04b_blindtransfer_action"
        bad = await c.action("BlindTransfer", "nochan", Channel="Local/nope-00000000;1",
                             Context="agents", Exten="1002")
        assert keys(bad) == keys(reply_for(name, "blindxfer-nochan"))
        assert bad["Message"] == "Channel specified does not exist"
        notbridged = await c.action("BlindTransfer", "nb", Channel=root[:-1] + "2",
                                    Context="agents", Exten="1001")
        assert notbridged["Message"] == "Transfer invalid"
        invalid = await c.until("BlindTransfer")
        assert keys(invalid) == keys(recorded(name, "BlindTransfer", Result="Invalid"))
        ok = await c.action("BlindTransfer", "bt", Channel=agent,
                            Context="paceline-transfer", Exten="1002")
        assert ok["Message"] == "Transfer succeeded"
        event = await c.until("BlindTransfer")
        assert keys(event) == keys(recorded(name, "BlindTransfer", Result="Success"))
        assert (event["TransfererChannel"], event["TransfereeChannel"], event["Context"],
                event["Extension"]) == (agent, root, "paceline-transfer", "1002")
        await c.until("Hangup", Channel=agent)
        # The customer now runs paceline-transfer: Dial(Local/1002@agents) and a new bridge.
        dial = await c.until("DialBegin", Channel=root)
        assert dial["DestChannel"].startswith("Local/1002@agents-")
        assert dial["Context"] == "paceline-transfer"
        await c.until("BridgeEnter", Channel=root)
        assert agent not in s.channels


async def test_atxfer_consults_then_completes_when_the_transferer_hangs_up() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        root = resp["Channel"]
        enter = await connect_agent(c, root, "Local/1001@agents", "x")
        agent, original = enter["Channel"], enter["BridgeUniqueid"]
        r = await c.action("Atxfer", "ax", Channel=agent, Context="agents", Exten="1002")
        assert list(r.pairs) == [("Response", "Success"), ("ActionID", "ax"),
                                 ("Message", "Atxfer successfully queued")]
        await c.until("MusicOnHoldStart", Channel=root)
        dial = await c.until("DialBegin", Channel=agent)
        target = dial["DestChannel"]
        assert target.startswith("Local/1002@agents-")
        await c.until("DialEnd", Channel=agent, DialStatus="ANSWER")
        consult = (await c.until("BridgeCreate"))["BridgeUniqueid"]
        assert consult != original
        await c.action("Hangup", "h", Channel=agent)
        xfer = await c.until("AttendedTransfer")
        assert xfer["Result"] == "Success"
        assert (xfer["OrigTransfererChannel"], xfer["TransfereeChannel"],
                xfer["TransferTargetChannel"], xfer["OrigBridgeUniqueid"],
                xfer["SecondBridgeUniqueid"]) == (agent, root, target, original, consult)
        await c.until("MusicOnHoldStop", Channel=root)
        joined = await c.until("BridgeEnter", Channel=target)
        assert joined["BridgeUniqueid"] == original
        await c.until("Hangup", Channel=agent)
        items = {m["Channel"]: m for m in (await c.list_action("CoreShowChannels", "c"))[1:-1]}
        assert items[root]["BridgeId"] == items[target]["BridgeId"] == original
        assert agent not in items


async def test_atxfer_errors_match_capture_05a() -> None:
    async with running(time_scale=SCALE, population=population(), atxfer_feature=False) as s:
        c = await login(s)
        resp = await originate(c, "500", "o", Context="dialer-connect", Exten="1001")
        agent = (await c.until("BridgeEnter"))["Channel"]
        name = "05a_atxfer_default_features_fails"
        sent = {m.action_id: m for m in capture(name, "tx") if m.action == "Atxfer"}
        replies = {m.action_id: m for m in capture(name) if m.response is not None}
        for aid, req in sent.items():
            fields = {k: v for k, v in req.pairs if k not in ("Action", "ActionID")}
            if fields.get("Channel", "").startswith("Local/1001@agents"):
                fields["Channel"] = agent
            mine = await c.action("Atxfer", aid or "", **fields)
            assert list(mine.pairs) == list(replies[aid].pairs), aid
        assert resp["Channel"] in s.channels


# ---- 6. Variables, Status, Events, Hangup by regex ----------------------------------------------


async def test_getvar_setvar_status_events_replies_match_capture_06() -> None:
    name = "06_hangup_cause_getvar_setvar_status_ping_events_logoff"
    replies = {m.action_id: m for m in capture(name) if m.response is not None}
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "1001", "o", Channel="Local/1001@agents",
                               Application="Wait", Data="60", CallerID="Lead 42 <5551234>",
                               Variable="CAMPAIGN=s06,LEAD=42")
        ch = resp["Channel"]
        assert keys(resp) == keys(recorded(name, "OriginateResponse"))
        for aid, fields in [
            ("setvar-1", {"Channel": ch, "Variable": "DISPOSITION", "Value": "SALE"}),
            ("getvar-1", {"Channel": ch, "Variable": "DISPOSITION"}),
            ("getvar-campaign", {"Channel": ch, "Variable": "CAMPAIGN"}),
            ("getvar-unset", {"Channel": ch, "Variable": "NOSUCHVAR"}),
            ("getvar-func", {"Channel": ch, "Variable": "CALLERID(num)"}),
            ("getvar-func2", {"Channel": ch, "Variable": "CHANNEL(state)"}),
            ("getvar-badfunc", {"Channel": ch, "Variable": "NOSUCHFUNC(x)"}),
            ("setvar-global", {"Variable": "DIALER_GLOBAL", "Value": "g1"}),
            ("getvar-global", {"Variable": "DIALER_GLOBAL"}),
            ("getvar-nochan", {"Channel": "Local/nope-00000000;1", "Variable": "X"}),
            ("setvar-nochan", {"Channel": "Local/nope-00000000;1", "Variable": "X",
                               "Value": "1"}),
            ("setvar-novar", {"Channel": ch, "Value": "1"}),
        ]:
            action = "Setvar" if aid.startswith("setvar") else "Getvar"
            mine = await c.action(action, aid, **fields)
            assert list(mine.pairs) == list(replies[aid].pairs), aid
        glob = await c.seen_or_next("VarSet", Variable="DIALER_GLOBAL")
        assert list(glob.pairs) == list(recorded(name, "VarSet", Variable="DIALER_GLOBAL").pairs)
        status = await c.list_action("Status", "status-ch1", Channel=ch,
                                     Variables="CAMPAIGN,LEAD")
        assert keys(status[0]) == keys(replies["status-ch1"])
        want = recorded(name, "Status", ActionID="status-ch1")
        assert keys(status[1]) == keys(want)
        assert status[1].getall("Variable") == want.getall("Variable")
        assert keys(status[2]) == keys(recorded(name, "StatusComplete"))
        assert list((await c.action("Status", "status-nochan",
                                    Channel="Local/nope-00000000;1")).pairs) == list(
            replies["status-nochan"].pairs)
        for aid, mask in [("events-off", "off"), ("events-call", "call"), ("events-on", "on")]:
            mine = await c.action("Events", aid, EventMask=mask)
            assert list(mine.pairs) == list(replies[aid].pairs)


async def test_events_mask_filters_by_class() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "1001", "o", Channel="Local/1001@agents",
                               Application="Wait", Data="60")
        await c.action("Events", "m", EventMask="call")
        await c.action("Setvar", "v", Channel=resp["Channel"], Variable="A", Value="1")
        await c.action("Events", "off", EventMask="off")
        await c.action("Hangup", "h", Channel=resp["Channel"])
        await c.action("Events", "on", EventMask="on")
        await c.action("Setvar", "g", Variable="B", Value="2")
        await c.until("VarSet", Variable="B")
        assert not [m for m in c.seen if m.get("Variable") == "A" and m.event == "VarSet"]
        assert not [m for m in c.seen if m.event == "Hangup"]


async def test_hangup_by_regex_lists_channels_like_capture_06() -> None:
    name = "06_hangup_cause_getvar_setvar_status_ping_events_logoff"
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "1003", "o", Channel="Local/1003@agents",
                               Application="Wait", Data="60")
        out = await c.list_action("Hangup", "hangup-regex", Channel="/^Local\\/1003@agents-.*;1$/",
                                  Cause="16")
        assert [keys(m) for m in out] == [
            keys(m) for m in capture(name) if m.get("ActionID") == "hangup-regex"]
        assert out[1]["Channel"] == resp["Channel"]
        none = await c.list_action("Hangup", "hangup-regex-none", Channel="/^NoSuch/")
        assert [list(m.pairs) for m in none] == [
            list(m.pairs) for m in capture(name) if m.get("ActionID") == "hangup-regex-none"]
        hangup = await c.seen_or_next("Hangup", Channel=resp["Channel"])
        assert hangup["Cause"] == "16"


# ---- 7. Queues ----------------------------------------------------------------------------------


async def test_queue_status_and_summary_match_capture_03() -> None:
    name = "03_queue_status_summary_add_pause_remove"
    cap = capture(name)
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        status = await c.list_action("QueueStatus", "qstatus-idle", Queue="sales")
        want = [m for m in cap if m.get("ActionID") == "qstatus-idle"]
        assert [keys(m) for m in status] == [keys(m) for m in want]
        assert [(m.get("Location"), m.get("Status")) for m in status] == [
            (m.get("Location"), m.get("Status")) for m in want]
        summary = await c.list_action("QueueSummary", "qsummary-idle", Queue="sales")
        assert [list(m.pairs) for m in summary] == [
            list(m.pairs) for m in cap if m.get("ActionID") == "qsummary-idle"]
        unknown = await c.list_action("QueueSummary", "qsummary-unknown", Queue="nosuchqueue")
        assert [list(m.pairs) for m in unknown] == [
            list(m.pairs) for m in cap if m.get("ActionID") == "qsummary-unknown"]


# ---- 8. Reconnects and shutdown -----------------------------------------------------------------


async def test_calls_survive_a_dropped_ami_connection_and_ended_ones_are_gone() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0},
                     overrides=(Override("^1$", CalleeKind.HUMAN, ring_s=0.1, talk_s=1000),
                                Override("^2$", CalleeKind.HUMAN, ring_s=0.1, talk_s=5)))
    async with running(time_scale=SCALE, population=pop) as s:
        c = await login(s)
        long = await originate(c, "1", "a", ChannelId="long")
        await originate(c, "2", "b", ChannelId="short")
        s.drop_connections()
        await asyncio.sleep(0.2)  # the short call ends (5 s = 50 ms) while nobody listens
        c2 = await login(s)
        items = await c2.list_action("CoreShowChannels", "csc")
        names = [m["Channel"] for m in items[1:-1]]
        assert sorted(names) == sorted([long["Channel"], long["Channel"][:-1] + "2"])
        assert items[-1]["ListItems"] == "2"
        assert s.originates_by_channel_id == {"long": 1, "short": 1}
        assert [(r.channel_id, r.ended) for r in s.calls] == [("long", False), ("short", True)]
        assert set(s.channels) == set(names)


async def test_close_cancels_every_call_task() -> None:
    server = AmiServer(time_scale=SCALE, population=population())
    await server.start()
    c = await login(server)
    await originate(c, "500", "o")
    assert server.pbx._tasks
    await server.close()
    assert not server.pbx._tasks


async def test_hanging_up_a_ringing_originate_cancels_it_with_reason_1() -> None:
    async with running(time_scale=SCALE,
                         population=population(n300=CalleeKind.NO_ANSWER)) as s:
        c = await login(s)
        await c.action("Originate", "o", Channel="Local/300@sim-customers",
                       Context="paceline-outbound", Exten="s", Priority="1", Async="true",
                       ChannelId="ring-1")
        await c.until("DialState", DialStatus="RINGING")
        assert (await c.action("Hangup", "h", Channel=s.calls[0].channel or ""))["Message"] == (
            "Channel Hungup")
        end = await c.until("DialEnd")
        assert end["DialStatus"] == "CANCEL"
        resp = await c.until("OriginateResponse")
        assert (resp["Response"], resp["Reason"]) == ("Failure", "1")
        assert s.calls[0].ended


# ---- 9. Reference contexts and permissions -----------------------------------------------------


@pytest.mark.parametrize(("number", "kind", "last_app"), [
    ("100", CalleeKind.HUMAN, "Stasis"),
    ("600", CalleeKind.MACHINE, "Hangup"),
])
async def test_dialer_amd_sends_humans_to_stasis_and_hangs_up_machines(
    number: str, kind: CalleeKind, last_app: str
) -> None:
    async with running(time_scale=SCALE, population=population(**{f"n{number}": kind})) as s:
        c = await login(s)
        resp = await originate(c, number, "a", Context="dialer-amd", Exten=number)
        hangup = await c.until("Hangup", Channel=resp["Channel"])
        apps = [m["Application"] for m in c.seen
                if m.event == "Newexten" and m["Channel"] == resp["Channel"]
                and m["Context"] == "dialer-amd"]
        assert apps[:3] == ["AMD", "NoOp", "GotoIf"]
        assert last_app in apps
        noop = next(m for m in c.seen if m.event == "Newexten" and m["Application"] == "NoOp"
                    and m["Context"] == "dialer-amd")
        status = "HUMAN" if kind is CalleeKind.HUMAN else "MACHINE"
        assert noop["AppData"].startswith(f"AMD result for {number}: {status} / ")
        assert hangup["Cause"] == "16"


async def test_dialer_connect_xfer_dials_the_agent_with_transfer_options() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o", Context="dialer-connect-xfer", Exten="1002")
        dial = await c.seen_or_next("Newexten", Channel=resp["Channel"], Application="Dial")
        assert dial["AppData"] == "Local/1002@agents,30,tT"
        enter = await c.until("BridgeEnter")
        assert enter["Channel"].startswith("Local/1002@agents-")


async def test_limited_user_gets_call_events_but_no_dialplan_or_dtmf_events() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        full = await login(s)
        limited = await login(s, "limited")
        resp = await originate(full, "500", "o")
        await full.action("PlayDTMF", "d", Channel=resp["Channel"], Digit="5")
        await full.until("DTMFEnd")
        got = await limited.until("OriginateResponse")
        assert got == resp
        await limited.quiet(0.1)
        classes = {m["Privilege"].partition(",")[0] for m in limited.seen if "Privilege" in m}
        assert classes == {"call"}


async def test_atxfer_to_a_busy_target_returns_the_transferer_to_the_customer() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        root = resp["Channel"]
        enter = await connect_agent(c, root, "Local/1001@agents", "x")
        agent, original = enter["Channel"], enter["BridgeUniqueid"]
        await c.action("Atxfer", "ax", Channel=agent, Context="agents", Exten="9001")
        end = await c.until("DialEnd", Channel=agent)
        assert end["DialStatus"] == "BUSY"
        await c.until("MusicOnHoldStop", Channel=root)
        back = await c.until("BridgeEnter", Channel=agent)
        assert back["BridgeUniqueid"] == original
        assert not [m for m in c.seen if m.event == "AttendedTransfer"]
        assert {root, agent} <= set(s.channels)


async def test_atxfer_on_an_unbridged_channel_is_queued_and_does_nothing() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        r = await c.action("Atxfer", "ax", Channel=resp["Channel"], Exten="1002")
        assert r["Message"] == "Atxfer successfully queued"
        later = await c.quiet(0.1)
        assert not [m for m in later if m.event in ("DialBegin", "MusicOnHoldStart")]


async def test_originate_without_async_replies_after_the_outcome_and_sends_no_event() -> None:
    async with running(time_scale=SCALE, population=population(n200=CalleeKind.BUSY)) as s:
        c = await login(s)
        c.send(Action="Originate", ActionID="ok", Channel="Local/500@sim-customers",
               Context="paceline-outbound", Exten="s", Priority="1")
        ok = await c.reply("ok")
        assert list(ok.pairs) == [("Response", "Success"), ("ActionID", "ok"),
                                  ("Message", "Originate successfully queued")]
        assert any(m.event == "DialEnd" for m in c.seen)  # the reply came after the answer
        c.send(Action="Originate", ActionID="bad", Channel="Local/200@sim-customers",
               Context="paceline-outbound", Exten="s", Priority="1")
        bad = await c.reply("bad")
        assert (bad["Response"], bad["Message"]) == ("Error", "Originate failed")
        assert not [m for m in c.seen if m.event == "OriginateResponse"]


async def test_limited_user_write_permissions_match_capture_01d() -> None:
    name = "01d_limited_user_permissions"
    sent = [m for m in capture(name, "tx") if m.action not in ("Login", "Command", "Reload")]
    replies = {m.action_id: m for m in capture(name) if m.response is not None}
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s, "limited")
        for req in sent:
            if req.action == "Logoff":
                continue
            mine = await c.action(req.action or "", req.action_id or "",
                                  **{k: v for k, v in req.pairs if k not in ("Action",
                                                                              "ActionID")})
            theirs = replies[req.action_id]
            assert keys(mine) == keys(theirs), req.action
            if req.action in ("Originate", "CoreShowChannels", "Events"):
                assert list(mine.pairs) == list(theirs.pairs)
        assert s.calls == []


async def test_atxfer_through_paceline_transfer_bridges_the_customer_with_the_target() -> None:
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        resp = await originate(c, "500", "o")
        root = resp["Channel"]
        agent = (await connect_agent(c, root, "Local/1001@agents", "x"))["Channel"]
        await c.action("Atxfer", "ax", Channel=agent, Context="paceline-transfer", Exten="2002")
        consult = await c.until("DialBegin", Channel=agent)
        target = consult["DestChannel"]
        assert target.startswith("Local/2002@paceline-transfer-")
        inner = await c.until("DialBegin", Channel=target[:-1] + "2")
        assert inner["DestChannel"].startswith("Local/2002@agents-")
        await c.until("DialState", Channel=target[:-1] + "2", DialStatus="RINGING")
        await c.until("BridgeEnter", Channel=target)  # the consult bridge, after 2 s of ringing
        await c.action("Hangup", "h", Channel=agent, Cause="16")
        xfer = await c.until("AttendedTransfer")
        assert (xfer["TransfereeChannel"], xfer["TransferTargetChannel"]) == (root, target)
        await c.quiet(0.3)
        assert {n.partition("-")[0] for n in s.channels} == {
            "Local/500@sim", "Local/2002@paceline", "Local/2002@agents"}
        await c.action("Hangup", "h2", Channel=root)
        await c.quiet(0.4)
        assert s.channels == {}


def captured_13c(direction: str) -> list[AmiMessage]:
    """The AMI side of capture 13c (Atxfer, then CancelAtxfer)."""
    path = TRANSCRIPTS / "ari" / "13c_ari_channelhold_subscribed_atxfer.ami.jsonl"
    out: list[AmiMessage] = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == direction:
            parser = AmiParser(expect_banner=False)
            out += [f for f in parser.feed(record["raw"].encode()) if isinstance(f, AmiMessage)]
    return out


@pytest.mark.parametrize("target", ["2002", "1002"])  # cancelled while ringing / when answered
async def test_cancel_atxfer_sends_the_abort_code_and_returns_the_transferer(target: str) -> None:
    rx = captured_13c("rx")
    reply = next(m for m in rx if m.action_id == "cancelatxfer-1")
    # On the transferer: `*2` and the extension (Atxfer), then `*1` (CancelAtxfer).
    digits = [m for m in rx if m.event == "DTMFEnd" and m.get("Uniqueid") == "1795428708.446"]
    assert "".join(m["Digit"] for m in digits) == "*21002*1"
    async with running(time_scale=SCALE, population=population()) as s:
        c = await login(s)
        root = (await originate(c, "500", "o"))["Channel"]
        enter = await connect_agent(c, root, "Local/1001@agents", "x")
        agent, original = enter["Channel"], enter["BridgeUniqueid"]
        await c.action("Atxfer", "ax", Channel=agent, Context="agents", Exten=target)
        dial = await c.until("DialBegin", Channel=agent)
        dtmf = [m for m in c.seen if m.event == "DTMFEnd" and m["Channel"] == agent]
        assert "".join(m["Digit"] for m in dtmf) == "*2" + target
        assert keys(dtmf[0]) == keys(digits[0])
        if target.startswith("1"):
            await c.until("BridgeEnter", Channel=dial["DestChannel"])
        r = await c.action("CancelAtxfer", "cancelatxfer-1", Channel=agent)
        assert list(r.pairs) == list(reply.pairs)
        back = await c.until("BridgeEnter", Channel=agent, BridgeUniqueid=original)
        sent = [m for m in c.seen if m.event == "DTMFEnd" and m["Channel"] == agent][-2:]
        assert [(m["Digit"], m["DurationMs"], m["Direction"]) for m in sent] == [
            (m["Digit"], m["DurationMs"], m["Direction"]) for m in digits[-2:]
        ]
        assert back["BridgeNumChannels"] == "2"
        await c.until("MusicOnHoldStop", Channel=root)
        await c.until("Hangup", Channel=dial["DestChannel"])
        holds = [m.event for m in c.seen if m.event in ("Hold", "Unhold") and m["Channel"] == agent]
        assert holds == ["Hold", "Unhold"]
        assert keys(next(m for m in c.seen if m.event == "Hold")) == keys(
            next(m for m in rx if m.event == "Hold")
        )
        assert not [m for m in c.seen if m.event == "AttendedTransfer"]
        assert {root, agent} <= set(s.channels)
        bad = await c.action("CancelAtxfer", "cx", Channel="Local/nobody-1;1")
        assert bad["Message"] == "Channel specified does not exist"
