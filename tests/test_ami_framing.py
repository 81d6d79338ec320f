"""The AMI framer against the recorded Asterisk 20 byte streams and against bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.ami.framing import AmiMessage, AmiParser, Banner, FramingError, serialize

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts"
RX_FILES = sorted(FIXTURES.glob("ami/*.rx.bin")) + sorted(FIXTURES.glob("ari/*.ami.rx.bin"))


def _parse(data: bytes, chunk: int | None = None) -> list[object]:
    parser = AmiParser()
    if chunk is None:
        return [*parser.feed(data), *parser.feed(b"")]
    frames: list[object] = []
    for i in range(0, len(data), chunk):
        frames += parser.feed(data[i : i + chunk])
    return [*frames, *parser.feed(b"")]


def test_every_recorded_stream_is_found() -> None:
    assert len(RX_FILES) >= 20


@pytest.mark.parametrize("path", RX_FILES, ids=lambda p: p.name)
def test_recorded_stream_parses_without_errors_in_any_chunking(path: Path) -> None:
    data = path.read_bytes()
    whole = _parse(data)
    assert isinstance(whole[0], Banner) and whole[0].version == "9.0.0"
    assert not [f for f in whole if isinstance(f, FramingError)]
    # The count of messages equals the count of blank-line terminators on the wire.
    assert sum(isinstance(f, AmiMessage) for f in whole) == data.count(b"\r\n\r\n")
    for chunk in (1, 7, 1000):
        assert _parse(data, chunk) == whole


def test_empty_value_and_repeated_keys_are_kept_in_order() -> None:
    (msg,) = AmiParser(expect_banner=False).feed(
        b"Action: Originate\r\nAccountCode: \r\nVariable: A=1\r\nvariable: B=2\r\n\r\n"
    )
    assert isinstance(msg, AmiMessage)
    assert msg["accountcode"] == "" and msg["ACTION"] == "Originate"
    assert msg.getall("Variable") == ["A=1", "B=2"]
    assert list(msg) == ["Action", "AccountCode", "Variable"]


def test_bare_lf_framing_is_tolerated() -> None:
    frames = AmiParser(expect_banner=False).feed(b"Event: Ping\nA: 1\n\nEvent: Pong\n\n")
    assert [f.event for f in frames if isinstance(f, AmiMessage)] == ["Ping", "Pong"]


def test_utf8_character_split_across_reads_is_not_lost() -> None:
    parser = AmiParser(expect_banner=False)
    data = "Event: NewCallerid\r\nCallerIDName: Zoë\r\n\r\n".encode()
    cut = data.index("ë".encode()) + 1
    frames = parser.feed(data[:cut]) + parser.feed(data[cut:])
    assert isinstance(frames[0], AmiMessage) and frames[0]["CallerIDName"] == "Zoë"


def test_line_without_colon_is_reported_and_the_message_kept() -> None:
    frames = AmiParser(expect_banner=False).feed(b"Event: X\r\ngarbage line\r\nA: 1\r\n\r\n")
    assert any(isinstance(f, FramingError) for f in frames)
    (msg,) = [f for f in frames if isinstance(f, AmiMessage)]
    assert msg["A"] == "1"


def test_two_megabyte_line_is_skipped_and_the_next_message_parses() -> None:
    parser = AmiParser(expect_banner=False)
    frames = parser.feed(b"Event: Big\r\nX: " + b"x" * 2_000_000)
    frames += parser.feed(b"\r\n\r\nEvent: After\r\n\r\n")
    assert [f.reason for f in frames if isinstance(f, FramingError)] == [
        "message too large; skipped"
    ]
    assert [f.event for f in frames if isinstance(f, AmiMessage)] == ["After"]
    assert len(parser._buf) < 1024  # memory stays bounded


def test_truncated_message_at_eof_is_reported() -> None:
    parser = AmiParser(expect_banner=False)
    assert parser.feed(b"Event: Hangup\r\nChannel: Local/1") == []
    (err,) = parser.feed(b"")
    assert isinstance(err, FramingError) and "truncated" in err.reason


def test_binary_garbage_never_raises() -> None:
    frames = AmiParser().feed(bytes(range(256)) * 50 + b"\r\n\r\nEvent: Ok\r\n\r\n")
    assert [f.event for f in frames if isinstance(f, AmiMessage)][-1] == "Ok"


def test_serialize_refuses_line_breaks_so_no_action_can_be_injected() -> None:
    assert serialize([("Action", "Ping")]) == b"Action: Ping\r\n\r\n"
    with pytest.raises(ValueError):
        serialize([("CallerID", "x\r\n\r\nAction: Originate")])
    with pytest.raises(ValueError):
        serialize([("Bad:Key", "v")])
