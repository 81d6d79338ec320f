"""The AMI client against a scripted, hostile peer: bad input is skipped, never fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from cti.ami.client import AmiConnection, AmiCredentials
from cti.ami.framing import AmiMessage, AmiParser, serialize
from cti.ami.telephony import AmiTelephony
from cti.events import CallEventKind
from cti.interface import AuthenticationFailed, BackendUnavailable, OriginateRequest
from dialer.domain import Outcome

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, AmiParser], Awaitable[None]]


def msg(**fields: str) -> bytes:
    return serialize(fields.items())


async def _read_action(reader: asyncio.StreamReader, parser: AmiParser) -> AmiMessage:
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("client went away")
        for frame in parser.feed(data):
            if isinstance(frame, AmiMessage):
                return frame


async def _login_and_sync(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
) -> None:
    writer.write(b"Asterisk Call Manager/9.0.0\r\n")
    login = await _read_action(reader, parser)
    writer.write(
        msg(Response="Success", ActionID=login["ActionID"], Message="Authentication accepted")
    )
    csc = await _read_action(reader, parser)
    assert csc.action == "CoreShowChannels"
    aid = csc["ActionID"]
    writer.write(
        msg(Response="Success", ActionID=aid, EventList="start", Message="Channels will follow")
    )
    writer.write(
        msg(Event="CoreShowChannelsComplete", ActionID=aid, EventList="Complete", ListItems="0")
    )


async def _serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer, AmiParser(expect_banner=False))
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_malformed_input_is_skipped_and_the_bridge_keeps_working() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        await _login_and_sync(reader, writer, parser)
        originate = await _read_action(reader, parser)
        # Always Async (panoramisk pitfall: KeyError 'async'), always our ChannelId.
        assert (originate["Async"], originate["ChannelId"]) == ("true", "c1")
        aid = originate["ActionID"]
        root, uid = "PJSIP/trunk-00000001", originate["ChannelId"]
        writer.write(b"X-Junk: " + b"A" * (2 * 1024 * 1024) + b"\r\n\r\n")  # a 2 MB line
        writer.write(b"this line has no colon\r\nEvent: Ping\r\n\r\n")
        writer.write(msg(Event="SomethingAsteriskAddsInVersion42", Foo="bar"))
        writer.write(msg(Event="Hangup", Channel=root))  # Uniqueid missing
        writer.write(b"\x00\xff\xfe garbage \x80\r\n\r\n")
        writer.write(msg(Response="Success", ActionID=aid, Message="Originate successfully queued"))
        writer.write(
            msg(Event="Newchannel", Channel=root, ChannelState="0", Uniqueid=uid, Linkedid=uid)
        )
        writer.write(
            msg(Event="Newstate", Channel=root, ChannelState="6", Uniqueid=uid, Linkedid=uid)
        )
        writer.write(msg(Event="Hangup", Channel=root, Uniqueid=uid, Linkedid=uid, Cause="16"))
        writer.write(b"Event: Newchannel\r\nChannel: PJSIP/trunc")  # truncated, then EOF
        await writer.drain()
        await asyncio.sleep(0.5)

    server, port = await _serve(script)
    async with server, AmiTelephony("127.0.0.1", port, "dialer", "x", backoff_initial=5) as tel:
        await tel.originate(OriginateRequest(call_id="c1", endpoint="PJSIP/+15551230000@trunk"))
        kinds = []
        async for event in tel.events():
            kinds.append(event.kind)
            if event.kind is CallEventKind.HANGUP:
                assert event.outcome is Outcome.HUMAN
                break
        assert kinds[0] is CallEventKind.BACKEND_UP
        assert kinds[1:] == [CallEventKind.DIALING, CallEventKind.ANSWERED, CallEventKind.HANGUP]
        assert tel.tracker.skipped == 1  # the Hangup without Uniqueid


async def test_bad_secret_is_a_final_error_after_one_attempt() -> None:
    attempts = 0

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        nonlocal attempts
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        login = await _read_action(reader, parser)
        attempts += 1
        writer.write(
            msg(Response="Error", ActionID=login["ActionID"], Message="Authentication failed")
        )
        await writer.drain()

    server, port = await _serve(script)
    async with server:
        with pytest.raises(AuthenticationFailed, match="Authentication failed"):
            async with AmiTelephony("127.0.0.1", port, "dialer", "wrong"):
                pass
        await asyncio.sleep(0.2)
        assert attempts == 1


async def test_a_peer_that_is_not_asterisk_is_refused() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server, port = await _serve(script)
    async with server:
        with pytest.raises(BackendUnavailable):
            await AmiConnection.open(
                "127.0.0.1", port, AmiCredentials("u", "s"), on_event=lambda m: None, timeout=1
            )


async def test_nothing_listening_is_backend_unavailable() -> None:
    server, port = await _serve(_login_and_sync)
    server.close()
    await server.wait_closed()
    with pytest.raises(BackendUnavailable):
        async with AmiTelephony("127.0.0.1", port, "u", "s", connect_timeout=1):
            pass


def test_the_secret_is_never_in_a_repr() -> None:
    assert "hunter2" not in repr(AmiCredentials("dialer", "hunter2"))


async def test_connection_reset_during_a_reconnect_login_is_retried_not_fatal() -> None:
    """A reset (not a clean close) while logging in again must not kill the supervisor, nor
    cancel the task that owns the backend."""
    import socket
    import struct

    sessions = 0

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            await _login_and_sync(reader, writer, parser)
            await asyncio.sleep(0.1)
            return  # close: the link drops
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        await _read_action(reader, parser)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    server, port = await _serve(script)
    async with server:
        tel = AmiTelephony("127.0.0.1", port, "u", "s", backoff_initial=0.05, backoff_max=0.05)
        async with tel:
            await asyncio.sleep(0.6)  # this task must not be cancelled meanwhile
            assert sessions >= 3, "kept retrying"
            assert tel.fatal is None and not tel.connected
        kinds = [e.kind async for e in tel.events()]
        assert kinds[:2] == [CallEventKind.BACKEND_UP, CallEventKind.BACKEND_DOWN]


async def test_an_originate_whose_reply_is_late_is_still_followed() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: AmiParser
    ) -> None:
        await _login_and_sync(reader, writer, parser)
        originate = await _read_action(reader, parser)
        await asyncio.sleep(0.4)  # a busy manager thread: the ack comes after the timeout
        root, uid = "PJSIP/trunk-00000001", originate["ChannelId"]
        writer.write(
            msg(
                Response="Success",
                ActionID=originate["ActionID"],
                Message="Originate successfully queued",
            )
        )
        writer.write(
            msg(Event="Newchannel", Channel=root, ChannelState="0", Uniqueid=uid, Linkedid=uid)
        )
        writer.write(
            msg(Event="Newstate", Channel=root, ChannelState="6", Uniqueid=uid, Linkedid=uid)
        )
        writer.write(msg(Event="Hangup", Channel=root, Uniqueid=uid, Linkedid=uid, Cause="16"))
        await writer.drain()
        await asyncio.sleep(0.5)

    server, port = await _serve(script)
    async with server, AmiTelephony("127.0.0.1", port, "u", "s", action_timeout=0.2) as tel:
        await tel.originate(OriginateRequest(call_id="late-1", endpoint="PJSIP/+15551230000@trunk"))
        kinds = []
        async for event in tel.events():
            if event.call_id == "late-1":
                kinds.append(event.kind)
                if event.kind is CallEventKind.HANGUP:
                    break
        assert kinds == [CallEventKind.DIALING, CallEventKind.ANSWERED, CallEventKind.HANGUP]


@pytest.mark.parametrize(
    ("variables", "call_id"),
    [
        ({"LEAD": "x,PACELINE_AMD=0"}, "ok-1"),  # a comma would set a second variable
        ({"BAD NAME": "1"}, "ok-1"),
        ({"CDR(accountcode)": "1"}, "ok-1"),  # a function, not a variable
        ({}, "has space"),
        ({}, "x" * 65),
    ],
)
async def test_originate_refuses_values_asterisk_would_misread(
    variables: dict[str, str], call_id: str
) -> None:
    server, port = await _serve(_login_and_sync)
    async with server, AmiTelephony("127.0.0.1", port, "u", "s") as tel:
        with pytest.raises(ValueError):
            await tel.originate(
                OriginateRequest(call_id=call_id, endpoint="PJSIP/1@t", variables=variables)
            )
        assert tel.tracker.live_calls() == {}


@pytest.mark.parametrize(
    ("endpoint", "sent"),
    [
        ("Local/100@ctx", "Local/100@ctx/n"),
        ("Local/100@ctx/n", "Local/100@ctx/n"),
        ("Local/100@ctx/m", "Local/100@ctx/mn"),
        ("PJSIP/+15551230000@trunk", "PJSIP/+15551230000@trunk"),
    ],
)
def test_local_endpoints_are_dialed_without_optimization(endpoint: str, sent: str) -> None:
    # Local channel optimization would hang up the ;1/;2 pair mid-call once both are bridged.
    assert AmiTelephony._dial_string(endpoint) == sent
