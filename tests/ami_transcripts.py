"""Read the recorded AMI sessions in `tests/fixtures/asterisk/transcripts/` as parsed messages.

Two recording formats exist: `ami/NAME.rx.bin` holds the exact bytes Asterisk sent, and the first
captures (`ami_session_transcript*.txt`) are readable logs where each received message follows a
`<<< RECV` marker line. Both come back as the `AmiMessage`s the client would have parsed.
"""

from __future__ import annotations

from pathlib import Path

from cti.ami.framing import AmiMessage, AmiParser

TRANSCRIPTS = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts"


def rx_streams() -> list[Path]:
    """Every recorded AMI receive stream: the raw captures and the readable first captures."""
    return (
        sorted(TRANSCRIPTS.glob("ami/*.rx.bin"))
        + sorted(TRANSCRIPTS.glob("ari/*.ami.rx.bin"))
        + sorted(TRANSCRIPTS.glob("ami_session_transcript*.txt"))
    )


def _readable_to_bytes(text: str) -> bytes:
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("<<< BANNER:"):
            out.append(line.removeprefix("<<< BANNER:").strip() + "\r\n")
            inside = False
        elif line.startswith("<<< RECV"):
            inside = True
        elif line.startswith((">>>", "<<<", "###")):
            if inside and out and not out[-1].endswith("\r\n\r\n"):
                out.append("\r\n")
            inside = False
        elif inside:
            out.append(line + "\r\n")
    return "".join(out).encode()


def received_bytes(path: Path) -> bytes:
    if path.name.endswith(".rx.bin"):
        return path.read_bytes()
    return _readable_to_bytes(path.read_text(encoding="utf-8"))


def received_messages(path: Path) -> list[AmiMessage]:
    """The messages (not the banner) of one recorded stream, in order."""
    parser = AmiParser()
    data = received_bytes(path)
    items = parser.feed(data) + parser.feed(b"")
    return [m for m in items if isinstance(m, AmiMessage)]


def received_events(path: Path) -> list[AmiMessage]:
    return [m for m in received_messages(path) if m.event]
