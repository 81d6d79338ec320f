"""The emulator's AMI server against the recorded Asterisk 20.20.1 wire behaviour."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cti.ami.framing import AmiMessage, AmiParser, Banner, serialize
from sim.pbx.ami_server import AmiServer

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts"


def recorded(event: str) -> AmiMessage:
    """The first recorded server message with Event == `event` in the outcomes transcript."""
    parser = AmiParser(expect_banner=True)
    text = (FIXTURES / "ami_session_transcript_outcomes.txt").read_text()
    blocks = [b for b in text.split("\n\n") if f"Event: {event}\n" in b + "\n"]
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ":" in ln and not ln.startswith("<<<")]
        msgs = [f for f in parser.feed(("\r\n".join(lines) + "\r\n\r\n").encode())]
        for m in msgs:
            if isinstance(m, AmiMessage) and m.event == event:
                return m
    raise AssertionError(f"no recorded {event}")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = AmiParser(expect_banner=True)
        self.queue: list[AmiMessage | Banner] = []

    async def next(self, timeout: float = 2.0) -> AmiMessage | Banner | None:
        async with asyncio.timeout(timeout):
            while not self.queue:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.queue.extend(
                    f for f in self.parser.feed(data) if isinstance(f, AmiMessage | Banner)
                )
        return self.queue.pop(0)

    async def msg(self) -> AmiMessage:
        m = await self.next()
        assert isinstance(m, AmiMessage), m
        return m

    async def until(self, event: str) -> AmiMessage:
        while True:
            m = await self.msg()
            if m.event == event:
                return m

    def send(self, **fields: str) -> None:
        self.writer.write(serialize(fields.items()))


async def connect(server: AmiServer, login: tuple[str, str] | None = None) -> Client:
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    c = Client(r, w)
    banner = await c.next()
    assert banner == Banner("Asterisk Call Manager/9.0.0")
    if login:
        c.send(Action="Login", Username=login[0], Secret=login[1], ActionID="l")
        ok = await c.msg()
        assert ok["Message"] == "Authentication accepted"
        if login[0] == "dialer":
            assert (await c.msg()).event == "FullyBooted"
    return c


async def test_permission_denied_before_login_and_no_actionid_when_none_sent() -> None:
    async with AmiServer(auth_fail_delay_s=0.01) as server:
        c = await connect(server)
        c.send(Action="Ping", ActionID="p")
        assert list((await c.msg()).pairs) == [
            ("Response", "Error"), ("ActionID", "p"), ("Message", "Permission denied")
        ]
        c.send(Action="Ping")
        denied = await c.msg()
        assert list(denied.pairs) == [("Response", "Error"), ("Message", "Permission denied")]
        c.writer.close()


async def test_bad_secret_fails_after_delay_and_closes_tcp() -> None:
    async with AmiServer(auth_fail_delay_s=0.05) as server:
        c = await connect(server)
        c.send(Action="Login", Username="dialer", Secret="wrong", ActionID="l")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reply = await c.msg()
        assert loop.time() - t0 >= 0.04
        assert reply["Message"] == "Authentication failed"
        assert await c.next() is None


async def test_login_limited_user_gets_no_fullybooted_and_unknown_action_message() -> None:
    async with AmiServer() as server:
        c = await connect(server, ("limited", "limited"))
        c.send(Action="nOsUcH", ActionID="x")
        m = await c.msg()
        assert m["Message"] == (
            "Invalid/unknown command: nOsUcH. Use Action: ListCommands to show available commands."
        )
        c.send(action="PING", ActionID="p")
        assert (await c.msg())["Ping"] == "Pong"
        c.send(Action="Logoff")
        assert (await c.msg())["Response"] == "Goodbye"
        assert await c.next() is None


async def test_failed_originate_response_matches_recorded_keys_and_fans_out() -> None:
    async with AmiServer(time_scale=0.001) as server:
        a = await connect(server, ("dialer", "dialer"))
        b = await connect(server, ("limited", "limited"))
        a.send(Action="Originate", ActionID="o1", Channel="Local/5550017@sim-customers",
               Context="agents", Exten="1001", Priority="1", Async="true")
        ack = await a.msg()
        assert list(ack.pairs) == [("Response", "Success"), ("ActionID", "o1"),
                                   ("Message", "Originate successfully queued")]
        ra, rb = await a.until("OriginateResponse"), await b.until("OriginateResponse")
        assert ra == rb
        assert list(ra) == list(recorded("OriginateResponse"))
        assert (ra["Reason"], ra["Uniqueid"], ra["ActionID"]) == ("5", "<unknown>", "o1")


async def test_duplicate_channel_id_is_refused_and_counted() -> None:
    async with AmiServer(time_scale=0.001) as server:
        a = await connect(server, ("dialer", "dialer"))
        for aid in ("o1", "o2"):
            a.send(Action="Originate", ActionID=aid, Channel="Local/5551234@sim-customers",
                   Context="agents", Exten="1001", ChannelId="chan-1", Async="true")
        msgs = [await a.until("OriginateResponse") for _ in range(2)]
        responses = {m["ActionID"]: m for m in msgs}
        assert responses["o1"]["Reason"] == "4"
        assert responses["o2"]["Reason"] == "0"
        assert server.originates_by_channel_id["chan-1"] == 2


async def test_drop_connections_closes_sockets_and_malformed_input_is_survived() -> None:
    async with AmiServer() as server:
        a = await connect(server, ("dialer", "dialer"))
        a.writer.write(b"garbage line\r\n" + b"X" * (2 * 1024 * 1024) + b"\r\n\r\n")
        a.send(Action="Ping", ActionID="after")
        m = await a.msg()
        assert m["ActionID"] == "after"
        server.drop_connections()
        assert await a.next() is None
        b = await connect(server, ("dialer", "dialer"))
        b.send(Action="Ping", ActionID="p2")
        assert (await b.msg())["Ping"] == "Pong"


async def test_run_pbx_exposes_bound_ami_port_and_closes_on_exit() -> None:
    from sim.pbx.runner import run_pbx

    async with run_pbx(ami_port=0, auth_fail_delay_s=0.01) as pbx:
        assert pbx.ami_port > 0
        c = await connect(pbx.ami, ("dialer", "dialer"))
        c.send(Action="Ping", ActionID="p")
        assert (await c.msg())["Ping"] == "Pong"
    assert await c.next() is None


async def test_newchannel_and_hangup_have_recorded_key_order_and_cause_text() -> None:
    async with AmiServer(time_scale=0.001) as server:
        a = await connect(server, ("dialer", "dialer"))
        a.send(Action="Originate", ActionID="o", Channel="Local/5550001@sim-customers",
               Context="agents", Exten="1001", Async="true")
        new = await a.until("Newchannel")
        assert list(new) == list(recorded("Newchannel"))
        assert new["Channel"].endswith(";1") and new["Uniqueid"] == new["Linkedid"]
        hangup = await a.until("Hangup")
        assert list(hangup) == list(recorded("Hangup"))
        assert (hangup["Cause"], hangup["Cause-txt"]) == ("1", "Unallocated (unassigned) number")


async def test_hangup_action_with_cause_ends_answered_channel_and_reports_errors() -> None:
    async with AmiServer(time_scale=0.001) as server:
        a = await connect(server, ("dialer", "dialer"))
        a.send(Action="Originate", ActionID="o", Channel="Local/5551234@sim-customers",
               Context="agents", Exten="1001", Async="true")
        resp = await a.until("OriginateResponse")
        assert resp["Reason"] == "4" and resp["Channel"].endswith(";1")
        a.send(Action="Hangup", Channel=resp["Channel"], Cause="17", ActionID="h")
        reply = await a.msg()
        assert (reply["Response"], reply["Message"]) == ("Success", "Channel Hungup")
        hangup = await a.until("Hangup")
        assert (hangup["Uniqueid"], hangup["Cause"], hangup["Cause-txt"]) == (
            resp["Uniqueid"], "17", "User busy"
        )
        a.send(Action="Hangup", Channel=resp["Channel"], ActionID="h2")
        assert (await a.msg())["Message"] == "No such channel"
        a.send(Action="Hangup", ActionID="h3")
        assert (await a.msg())["Message"] == "No channel specified"


async def test_cli_sim_pbx_serves_the_ami_banner_on_the_port_it_prints() -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dialer.cli", "sim", "pbx", "--ami-port", "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("AMI listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        banner = await asyncio.wait_for(reader.readline(), 5)
        assert banner == b"Asterisk Call Manager/9.0.0\r\n"
        writer.close()
    finally:
        proc.terminate()
        await proc.wait()
