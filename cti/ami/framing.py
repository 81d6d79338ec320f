"""AMI wire framing, sans-IO: bytes in, messages out; messages in, bytes out.

Asterisk's manager protocol is line based. The server first sends one banner line
(`Asterisk Call Manager/9.0.0\\r\\n`); after that every message is a block of `Key: Value`
lines, each ending in `\\r\\n`, and a blank line ends the block. The same framing carries the
client's actions, so the Asterisk emulator (`sim.pbx`) and the AMI client (`cti.ami.client`)
both use this module: there is one parser, and the emulator cannot drift from the client.

Contract of `AmiParser.feed(data)`:
- `data` may split a message, a line or a UTF-8 character anywhere; nothing is lost.
- It returns the frames completed by `data`, in order: `Banner`, `AmiMessage`, or `FramingError`.
- A malformed message never raises. A line without a colon is dropped from its message and
  reported as a `FramingError` beside it; a message larger than `MAX_MESSAGE_BYTES` is
  discarded up to the next blank line and reported once. Callers log `FramingError`s and go on.
- `feed(b"")` means EOF: a partial message left in the buffer is reported as truncated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

#: The largest message we buffer. Asterisk's own limit for one manager line is 1 KB per header
#: in most actions, but Command output and long VarSet values can reach tens of KB; 1 MiB is far
#: above anything real and small enough that a peer streaming garbage cannot exhaust memory.
MAX_MESSAGE_BYTES = 1024 * 1024

BANNER_PREFIX = "Asterisk Call Manager/"
EOL = "\r\n"


@dataclass(frozen=True, slots=True)
class Banner:
    """The server's first line, e.g. `Asterisk Call Manager/9.0.0`."""

    text: str

    @property
    def version(self) -> str:
        return self.text.partition("/")[2].strip()


@dataclass(frozen=True, slots=True)
class FramingError:
    """Input that could not be framed; it was skipped. `sample` is a short, printable excerpt."""

    reason: str
    sample: str = ""


class AmiMessage(Mapping[str, str]):
    """One AMI message: an ordered list of (key, value) pairs, read case-insensitively.

    AMI keys are case-insensitive (`ActionID` and `actionid` are one key) and may repeat
    (`Variable:` in an Originate, `ChanVariable:` in events). `msg[key]` gives the first value,
    `getall(key)` every value; iteration yields each distinct key once, in wire order.
    """

    __slots__ = ("_index", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        index: dict[str, str] = {}
        for key, value in self.pairs:
            index.setdefault(key.lower(), value)
        self._index = index

    @classmethod
    def of(cls, **fields: str) -> AmiMessage:
        return cls(fields.items())

    def __getitem__(self, key: str) -> str:
        return self._index[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._index.get(key.lower(), default)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self.pairs:
            low = key.lower()
            if low not in seen:
                seen.add(low)
                yield key

    def __len__(self) -> int:
        return len(self._index)

    def getall(self, key: str) -> list[str]:
        low = key.lower()
        return [v for k, v in self.pairs if k.lower() == low]

    @property
    def event(self) -> str | None:
        return self._index.get("event")

    @property
    def response(self) -> str | None:
        return self._index.get("response")

    @property
    def action(self) -> str | None:
        return self._index.get("action")

    @property
    def action_id(self) -> str | None:
        return self._index.get("actionid")

    def to_bytes(self) -> bytes:
        return serialize(self.pairs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.pairs[:4])
        more = ", ..." if len(self.pairs) > 4 else ""
        return f"AmiMessage({inner}{more})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AmiMessage):
            return self.pairs == other.pairs
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.pairs)


Frame = Banner | AmiMessage | FramingError


def serialize(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Encode one message. Raises ValueError on a key or value with CR/LF in it.

    Refusing CR/LF is a security rule, not a nicety: a caller ID or variable taken from a contact
    record must never be able to end the message early and inject an action of its own.
    """
    out: list[str] = []
    for key, value in pairs:
        if "\r" in key or "\n" in key or ":" in key or not key:
            raise ValueError(f"invalid AMI key {key!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"AMI value for {key!r} contains a line break")
        out.append(f"{key}: {value}\r\n")
    out.append("\r\n")
    return "".join(out).encode("utf-8")


def _sample(raw: bytes) -> str:
    return raw[:80].decode("utf-8", "replace").encode("unicode_escape").decode("ascii")


def parse_block(block: bytes) -> tuple[AmiMessage | None, list[FramingError]]:
    """Parse one message block (without its blank terminator line)."""
    text = block.decode("utf-8", "replace")
    pairs: list[tuple[str, str]] = []
    errors: list[FramingError] = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            errors.append(FramingError("line without 'Key: value'", _sample(line.encode())))
            continue
        # Asterisk writes "Key: value"; an empty value is "Key: " (AccountCode), kept as "".
        pairs.append((key, value[1:] if value.startswith(" ") else value))
    if not pairs:
        return None, errors
    return AmiMessage(pairs), errors


class AmiParser:
    """Incremental AMI framer. See the module docstring for the contract.

    `expect_banner=True` (a client) treats the first line as the server banner when it starts
    with `Asterisk Call Manager/`; a server parsing actions passes False.
    """

    def __init__(self, *, expect_banner: bool = True, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._want_banner = expect_banner
        self._max = max_message
        self._discarding = False
        # Where the next terminator search may start: bytes before it were already searched,
        # so a large message arriving in many reads is scanned once, not once per read.
        self._scan_from = 0
        self.messages_parsed = 0

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if not data:
            if self._buf.strip() and not self._discarding:
                frames.append(FramingError("truncated message at EOF", _sample(bytes(self._buf))))
            self._buf.clear()
            self._discarding = False
            self._scan_from = 0
            return frames
        self._buf += data
        buf = self._buf
        pos = 0
        if self._want_banner:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self._max:
                    self._want_banner = False
                return frames
            line = bytes(buf[:nl]).rstrip(b"\r").decode("utf-8", "replace")
            self._want_banner = False
            if line.startswith(BANNER_PREFIX):
                frames.append(Banner(line))
                pos = nl + 1
        while True:
            # A blank line ends a message: "\r\n\r\n" on the wire; a bare "\n\n" is tolerated.
            start = max(pos, self._scan_from)
            end = buf.find(b"\n\r\n", start)
            end_lf = buf.find(b"\n\n", start, end if end >= 0 else len(buf))
            if end_lf >= 0:
                end, skip = end_lf, 2
            elif end >= 0:
                skip = 3
            else:
                break
            block = bytes(buf[pos : end + 1])
            pos = end + skip
            self._scan_from = 0
            if self._discarding:
                self._discarding = False
                continue
            if not block.strip():
                continue  # stray blank lines between messages
            if len(block) > self._max:
                frames.append(FramingError("message too large; skipped", _sample(block)))
                continue
            msg, errors = parse_block(block)
            frames.extend(errors)
            if msg is not None:
                self.messages_parsed += 1
                frames.append(msg)
        del buf[:pos]
        # A terminator may straddle this read and the next: re-search the last two bytes.
        self._scan_from = max(0, len(buf) - 2)
        if len(buf) > self._max:
            if not self._discarding:
                frames.append(FramingError("message too large; skipped", _sample(bytes(buf))))
            self._discarding = True
            # Keep a short tail so that a terminator split across two reads is still seen.
            del buf[:-3]
            self._scan_from = 0
        return frames
