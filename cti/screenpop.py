"""ANI screen pop: who is calling, from the contacts and their interaction history.

An inbound call's caller ID (the ANI) is normalised to E.164 with the same rules the importer
uses (`dialer.phones`), looked up in `contact_phones` (one index probe) and joined to the
contacts, their campaign and their latest attempts. The result is a `ScreenPop`; its
`to_event()` is the JSON-serializable message for the agent desktop, typed `screen_pop` or
`unknown_caller`.

The lookup is a function of (engine, data): it reads no clock. `ScreenPopper` is the thin edge
that turns `CallEventKind.INBOUND` events into desktop events; it takes `now` from its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, select

from cti.events import CallEvent, CallEventKind
from dialer.db.models import Attempt, Campaign, Contact, ContactPhone
from dialer.domain import MAX_PARAMS
from dialer.phones import PhoneError, PhoneNormalizer

#: What PBXs and carriers put in the caller-ID number when it is withheld or absent. Asterisk
#: AMI says `<unknown>`; ARI sends an empty `caller.number`.
WITHHELD_ANI = frozenset(
    {"", "<unknown>", "unknown", "anonymous", "restricted", "private", "withheld",
     "unavailable", "blocked", "<anonymous>"}
)
#: Screen pops list at most this many contacts: a switchboard number may be on thousands.
MAX_CONTACTS = 20


@lru_cache(maxsize=16)
def _normalizer(region: str) -> PhoneNormalizer:
    return PhoneNormalizer(region)


def _clean(raw: str) -> str:
    """The number part of a caller ID: `"Name" <+1...>`, `sip:+1...@host`, `tel:+1...`."""
    s = raw.strip()
    if s.endswith(">") and "<" in s:
        s = s[s.rindex("<") + 1 : -1].strip()
    for scheme in ("sip:", "sips:", "tel:"):
        if s.lower().startswith(scheme):
            s = s[len(scheme) :]
    return s.split("@", 1)[0].split(";", 1)[0].strip()


def normalize_ani(raw: str | None, default_region: str) -> str | None:
    """The E.164 form of caller ID `raw`, or None when it is withheld, absent or not valid.

    National forms are read in `default_region`; `+CC...` and the region's international
    prefix (`011` in the US, `00` in most of Europe) are honoured. Some carriers send an
    international number without its `+` (`442079460958`): that reading is used only when
    the national reading is not a valid number, so a valid national number never changes
    meaning. Validity is the importer's (`dialer.phones`), so a match means the same number.
    """
    if raw is None:
        return None
    if raw.strip().lower() in WITHHELD_ANI:
        return None
    s = _clean(raw)
    if s.lower() in WITHHELD_ANI:
        return None
    norm = _normalizer(default_region.upper())
    try:
        return norm(s).e164
    except PhoneError:
        pass
    digits = "".join(ch for ch in s if ch.isdigit())
    if not s.startswith("+") and len(digits) >= 8 and digits == s.replace(" ", "").replace("-", ""):
        try:
            return norm("+" + digits).e164
        except PhoneError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class ContactMatch:
    """One contact whose phone matched; `slots` are the phone slots (1-5) holding the number."""

    contact_id: int
    campaign_id: int
    campaign_name: str
    external_id: str | None
    state: str
    slots: tuple[int, ...]
    params: Mapping[str, str] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "campaign_id": self.campaign_id,
            "campaign": self.campaign_name,
            "external_id": self.external_id,
            "state": self.state,
            "slots": list(self.slots),
            "params": dict(self.params),
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One past attempt of a matched contact."""

    attempt_id: int
    contact_id: int
    placed_at: datetime
    channel: str
    phone_index: int
    number: str
    outcome: str | None
    disposition: str | None
    agent: str | None
    answered_at: datetime | None
    ended_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt_id": self.attempt_id,
            "contact_id": self.contact_id,
            "placed_at": self.placed_at.isoformat(),
            "channel": self.channel,
            "phone_index": self.phone_index,
            "number": self.number,
            "outcome": self.outcome,
            "disposition": self.disposition,
            "agent": self.agent,
            "answered_at": self.answered_at.isoformat() if self.answered_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
        }


@dataclass(frozen=True, slots=True)
class ScreenPop:
    """The answer to "who is calling?". No `contacts`: an unknown (or withheld) caller.

    `ani` is the E.164 number looked up (None: withheld or not a valid number). `history` holds
    the latest attempts of all matched contacts, newest first. `truncated`: more contacts
    share the number than `MAX_CONTACTS`.
    """

    ani: str | None
    contacts: tuple[ContactMatch, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    truncated: bool = False

    @property
    def known(self) -> bool:
        return bool(self.contacts)

    def to_event(self, *, call_id: str = "", raw_ani: str | None = None) -> dict[str, Any]:
        """The JSON-serializable desktop event: `type` is `screen_pop` or `unknown_caller`."""
        base: dict[str, Any] = {"call_id": call_id, "ani": self.ani, "raw_ani": raw_ani}
        if not self.known:
            return {"type": "unknown_caller", **base, "withheld": self.ani is None}
        return {
            "type": "screen_pop",
            **base,
            "contacts": [c.to_dict() for c in self.contacts],
            "history": [h.to_dict() for h in self.history],
            "truncated": self.truncated,
        }


def lookup_caller(
    engine: Engine,
    ani_e164: str | None,
    *,
    campaign_id: int | None = None,
    limit: int = 10,
    max_contacts: int = MAX_CONTACTS,
) -> ScreenPop:
    """Contacts whose phone is `ani_e164` (in `campaign_id` only, if given) and their last
    `limit` attempts, newest first (ties: the later attempt id first).

    Contacts come in campaign id, then contact id order. A None ANI answers the unknown-caller
    pop without touching the database.
    """
    if not ani_e164:
        return ScreenPop(ani=None)
    params = [getattr(Contact, f"param{i}") for i in range(1, MAX_PARAMS + 1)]
    q = (
        select(
            ContactPhone.contact_id,
            ContactPhone.slot,
            Contact.campaign_id,
            Campaign.name,
            Contact.external_id,
            Contact.state,
            *params,
        )
        .join(Contact, Contact.id == ContactPhone.contact_id)
        .join(Campaign, Campaign.id == Contact.campaign_id)
        .where(ContactPhone.e164 == ani_e164)
        .order_by(Contact.campaign_id, Contact.id, ContactPhone.slot)
    )
    if campaign_id is not None:
        q = q.where(Contact.campaign_id == campaign_id)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
        by_contact: dict[int, list[Any]] = {}
        for r in rows:
            by_contact.setdefault(r[0], []).append(r)
        ids = list(by_contact)[:max_contacts]
        matches = []
        for cid in ids:
            first = by_contact[cid][0]
            matches.append(
                ContactMatch(
                    contact_id=cid,
                    campaign_id=first[2],
                    campaign_name=first[3],
                    external_id=first[4],
                    state=first[5],
                    slots=tuple(r[1] for r in by_contact[cid]),
                    params={
                        f"param{i}": v for i, v in enumerate(first[6:], 1) if v is not None
                    },
                )
            )
        history: list[HistoryEntry] = []
        if ids and limit > 0:
            hq = (
                select(
                    Attempt.id, Attempt.contact_id, Attempt.placed_at, Attempt.channel,
                    Attempt.phone_index, Attempt.number, Attempt.outcome, Attempt.disposition,
                    Attempt.agent, Attempt.answered_at, Attempt.ended_at,
                )
                .where(Attempt.contact_id.in_(ids))
                .order_by(Attempt.placed_at.desc(), Attempt.id.desc())
                .limit(limit)
            )
            history = [HistoryEntry(*a) for a in conn.execute(hq)]
    return ScreenPop(ani_e164, tuple(matches), tuple(history), len(by_contact) > max_contacts)


class ScreenPopper:
    """Turns INBOUND call events into desktop events (`screen_pop` / `unknown_caller`).

    `pop` is synchronous and blocks on the database; `run` is the asyncio edge: it consumes
    an event stream and does each lookup in a worker thread so the event loop keeps serving
    the other calls, then awaits `emit` with the desktop event.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        default_region: str,
        campaign_id: int | None = None,
        limit: int = 10,
    ) -> None:
        self.engine, self.default_region = engine, default_region
        self.campaign_id, self.limit = campaign_id, limit

    def pop(self, event: CallEvent, now: datetime) -> dict[str, Any] | None:
        """The desktop event for `event`, or None if it is not an inbound call."""
        if event.kind is not CallEventKind.INBOUND:
            return None
        ani = normalize_ani(event.caller_id, self.default_region)
        sp = lookup_caller(self.engine, ani, campaign_id=self.campaign_id, limit=self.limit)
        out = sp.to_event(call_id=event.call_id, raw_ani=event.caller_id)
        out["at"] = now.isoformat()
        return out

    async def run(
        self,
        events: AsyncIterable[CallEvent],
        emit: Callable[[dict[str, Any]], Awaitable[None]],
        clock: Callable[[], datetime],
    ) -> None:
        """Pop every INBOUND event of the async iterable `events` until it ends."""
        async for event in events:
            if event.kind is not CallEventKind.INBOUND:
                continue
            out = await asyncio.to_thread(self.pop, event, clock())
            if out is not None:
                await emit(out)
