"""A thin asyncio AMI client over the sans-IO framing in `cti.ami.framing`.

Why not panoramisk 1.4 (each point has a test in `tests/test_panoramisk_pitfalls.py`):
- After a reconnect it re-sends every action that had no reply, with the same ActionID. An
  Originate among them dials the customer twice.
- `await connect()` returns when TCP is up, before the login; a bad secret then retries forever,
  reported only as `authenticated=False`.
- An Originate without `Async` raises `KeyError: 'async'` inside `data_received`, which drops
  the connection and leaves the future unresolved.
- Its reconnect is a bare `call_later` with no owner, so it cannot be shut down or observed.

This client keeps one rule above all: **an action is written at most once**. If the link drops
before the reply, the caller gets `ReplyLost` and decides what it means (for an Originate, the
channel tracker's resync after the reconnect does). Reconnecting is the owner's job
(`cti.ami.telephony.AmiTelephony`), not this class's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cti.ami.framing import AmiMessage, AmiParser, Banner, FramingError, serialize
from cti.interface import AuthenticationFailed, BackendUnavailable, TelephonyError

log = logging.getLogger(__name__)

READ_CHUNK = 65536


class ReplyLost(BackendUnavailable):
    """The action was written, then the link dropped before its reply: its effect is unknown."""


class ReplyTimeout(TelephonyError):
    """The action was written but no reply came in time: like `ReplyLost`, its effect is unknown."""


class ActionFailed(TelephonyError):
    """Asterisk answered `Response: Error`. `detail` is its `Message`."""


@dataclass(frozen=True)
class AmiCredentials:
    """AMI user and secret. The secret never appears in `repr` or in logs."""

    username: str
    secret: str = field(repr=False)


@dataclass
class _ListCollector:
    items: list[AmiMessage] = field(default_factory=list)
    done: asyncio.Future[list[AmiMessage]] | None = None


class AmiConnection:
    """One logged-in AMI session. Create it with `AmiConnection.open(...)`, then `await run()`.

    `on_event` is called, in wire order, for every event that is not an item of one of our own
    list actions (`list_action`). It must not block.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: AmiParser,
        on_event: Callable[[AmiMessage], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = parser
        self._on_event = on_event
        # A per-connection prefix: OriginateResponse reaches every session, and another
        # client's "1" must never complete our "1".
        self._prefix = f"pl-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[AmiMessage]] = {}
        self._lists: dict[str, _ListCollector] = {}
        self._closed = False
        self.framing_errors = 0

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        credentials: AmiCredentials,
        *,
        on_event: Callable[[AmiMessage], None],
        timeout: float = 5.0,
        events: str = "on",
    ) -> AmiConnection:
        """Connect, read the banner and log in; return only once the login is accepted.

        Raises `AuthenticationFailed` (final: do not retry with the same secret) or
        `BackendUnavailable` (connection refused, timeout, not an AMI server).
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=READ_CHUNK), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"cannot connect to AMI at {host}:{port}", detail=str(exc)
            ) from exc
        parser = AmiParser()
        conn = cls(reader, writer, parser, on_event)
        try:
            await asyncio.wait_for(conn._login(credentials, events), timeout)
        except TimeoutError as exc:
            await conn.close()
            raise BackendUnavailable(f"AMI at {host}:{port} did not answer the login") from exc
        except (OSError, asyncio.IncompleteReadError) as exc:
            await conn.close()
            raise BackendUnavailable(
                f"AMI at {host}:{port} dropped the connection during login", detail=str(exc)
            ) from exc
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _login(self, credentials: AmiCredentials, events: str) -> None:
        action_id = self.next_action_id()
        self._writer.write(
            serialize(
                [
                    ("Action", "Login"),
                    ("ActionID", action_id),
                    ("Username", credentials.username),
                    ("Secret", credentials.secret),
                    ("Events", events),
                ]
            )
        )
        await self._writer.drain()
        saw_banner = False
        while True:
            data = await self._reader.read(READ_CHUNK)
            frames = self._parser.feed(data)
            if not data:
                raise BackendUnavailable("AMI closed the connection during login")
            for frame in frames:
                if isinstance(frame, Banner):
                    saw_banner = True
                elif isinstance(frame, AmiMessage):
                    if frame.response is not None and frame.action_id == action_id:
                        if not saw_banner:
                            raise BackendUnavailable("the peer is not an Asterisk manager")
                        if frame.response != "Success":
                            raise AuthenticationFailed(
                                f"AMI login refused for user {credentials.username!r}",
                                detail=frame.get("Message") or "",
                            )
                        return
                    if frame.event:
                        self._deliver(frame)

    # ---- running -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def next_action_id(self) -> str:
        return f"{self._prefix}{next(self._ids)}"

    async def run(self) -> None:
        """Read until the link closes; then fail every action still waiting for a reply."""
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                for frame in self._parser.feed(data):
                    self._dispatch(frame)
                if not data:
                    break
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.warning("AMI read failed: %s", exc)
        finally:
            self._closed = True
            self._fail_pending()
            self._writer.close()

    def _dispatch(self, frame: object) -> None:
        if isinstance(frame, FramingError):
            self.framing_errors += 1
            # No sample: a malformed block may hold a secret or DTMF digits.
            log.warning("AMI framing error skipped: %s", frame.reason)
            return
        if not isinstance(frame, AmiMessage):
            return
        action_id = frame.action_id or ""
        if frame.event:
            # Events first: OriginateResponse is an event that carries a `Response:` field.
            collector = self._lists.get(action_id)
            if collector is not None:
                # Items carry our ActionID; the closing `...Complete` event says
                # `EventList: Complete`.
                if (frame.get("EventList") or "").lower() == "complete":
                    self._lists.pop(action_id, None)
                    if collector.done is not None and not collector.done.done():
                        collector.done.set_result(collector.items)
                else:
                    collector.items.append(frame)
                return
            self._deliver(frame)
            return
        if frame.response is not None:
            future = self._pending.pop(action_id, None)
            if future is not None and not future.done():
                future.set_result(frame)

    def _deliver(self, event: AmiMessage) -> None:
        try:
            self._on_event(event)
        except Exception:  # one bad event must not stop the reader (or the login)
            log.exception("AMI event handler failed on %s", event.event)

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ReplyLost("the AMI link dropped before the reply"))
        self._pending.clear()
        for collector in self._lists.values():
            if collector.done is not None and not collector.done.done():
                collector.done.set_exception(ReplyLost("the AMI link dropped during a list"))
        self._lists.clear()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._fail_pending()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    # ---- actions -------------------------------------------------------------------------
    def _send(self, action: str, fields: Iterable[tuple[str, str]], action_id: str) -> None:
        if self._closed:
            raise BackendUnavailable(f"AMI link is down; {action} not sent")
        try:
            data = serialize([("Action", action), ("ActionID", action_id), *fields])
        except ValueError as exc:  # a CR/LF in a value: refused, never sent
            raise TelephonyError(f"AMI {action} not sent", detail=str(exc)) from exc
        self._writer.write(data)

    async def action(
        self,
        action: str,
        fields: Iterable[tuple[str, str]] = (),
        *,
        action_id: str | None = None,
        timeout: float = 10.0,
    ) -> AmiMessage:
        """Send one action and return its `Response: Success` reply.

        Raises `ActionFailed` on `Response: Error`, `BackendUnavailable` if the link was down
        or a value was refused (nothing sent), `ReplyLost` if it dropped after sending,
        `ReplyTimeout` if no reply came. The action is written before the first await, so a
        cancellation of this coroutine always means "sent, reply unknown".
        """
        action_id = action_id or self.next_action_id()
        future: asyncio.Future[AmiMessage] = asyncio.get_running_loop().create_future()
        self._send(action, fields, action_id)
        self._pending[action_id] = future
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise ReplyTimeout(f"AMI {action} got no reply in {timeout:g} s") from exc
        finally:
            self._pending.pop(action_id, None)
        if reply.response == "Error":
            raise ActionFailed(f"AMI {action} failed", detail=reply.get("Message") or "")
        return reply

    async def list_action(
        self,
        action: str,
        fields: Iterable[tuple[str, str]] = (),
        *,
        timeout: float = 10.0,
    ) -> list[AmiMessage]:
        """Send a list action (`EventList: start` ... `EventList: Complete`); return its items."""
        action_id = self.next_action_id()
        loop = asyncio.get_running_loop()
        collector = _ListCollector(done=loop.create_future())
        self._lists[action_id] = collector
        try:
            reply = await self.action(action, fields, action_id=action_id, timeout=timeout)
            if (reply.get("EventList") or "").lower() != "start":
                return []
            assert collector.done is not None
            return await asyncio.wait_for(collector.done, timeout)
        except TimeoutError as exc:
            raise TelephonyError(f"AMI {action} list did not complete in {timeout:g} s") from exc
        finally:
            self._lists.pop(action_id, None)
            # The link may have failed the collector too: retrieve it so asyncio does not
            # report an exception that was never looked at.
            if collector.done is not None:
                if collector.done.done() and not collector.done.cancelled():
                    collector.done.exception()
                else:
                    collector.done.cancel()
