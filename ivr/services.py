"""The IVR's edges: implementations of the `ivr.ports` interfaces on Paceline's own parts.

Each class here is thin: the dialer already knows how to normalise a number
(`dialer.phones`, `cti.screenpop.normalize_ani`), list a number as do-not-call
(`dialer.dnc.add_entries`), plan a contact's first dial (`strategies.planner.next_action`),
and send a text (`dialer.sms.SmsProvider`). The adapters translate, and keep the database
work off the event loop (`asyncio.to_thread`: one IVR process serves many calls, and a
SQLite write lock or a slow PostgreSQL query must not freeze the others' prompts).

What each class reads and writes, and what it never does:

- `HttpCrm`: one HTTP request per `lookup` node. Error texts name the endpoint without its
  query string, and go through `cti.redact` (a query may carry an account number or a PIN).
- `DbContactDirectory`: `contact_phones` (the indexed copy of the five phone slots) joined to
  `contacts` and `campaigns`. Read only.
- `StaticWaitEstimator`, `AgentGroupWaitEstimator`: a fixed table; or `agents`,
  `agent_group_members` and `agent_state_log`. Read only.
- `DbCallbackBook`: inserts one contact (plus its `contact_phones` row and, if new, its
  `campaign_zones` row) per accepted callback offer.
- `DbDncList`: one `dnc_entries` row per opt-out, through `dialer.dnc.add_entries`.
- `ProviderSms`: one text through an `SmsProvider`.
- `DbPaymentStore`: one `ivr_payments` row per answered payment request; refuses any value
  that looks like a card number.

No adapter logs card data, PINs or dates of birth; none logs at all, in fact: the runner
reports failures (`ServiceDone.error`) and the traces say what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import Engine, func, insert, select

from cti.redact import describe_exception, luhn_ok, redact
from cti.screenpop import normalize_ani
from dialer.agents import AgentState
from dialer.campaigns import campaign_policy
from dialer.db import write_transaction
from dialer.db.models import (
    Agent,
    AgentGroup,
    AgentGroupMember,
    AgentStateLog,
    Campaign,
    CampaignZone,
    Contact,
    ContactNote,
    ContactPhone,
    IvrPayment,
)
from dialer.dnc import add_entries
from dialer.domain import (
    MAX_EXTERNAL_ID_CHARS,
    MAX_PARAM_CHARS,
    MAX_PARAMS,
    ContactState,
    DncSource,
    clip_reason,
)
from dialer.phones import PhoneError, PhoneNormalizer, contact_zone
from dialer.sms import SmsProvider
from ivr.ports import (
    SECRET_FIELDS,
    CallbackBook,
    ContactDirectory,
    ContactRecord,
    Crm,
    DncList,
    PaymentGateway,
    PaymentStore,
    SmsSender,
    WaitEstimator,
)
from strategies.compliance import CallingHours
from strategies.model import Close, ContactView
from strategies.planner import next_action

NowFn = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ServiceError(Exception):
    """A service request that cannot be carried out; the text is safe to log (redacted)."""


class UnknownCampaign(ServiceError, LookupError):
    """The flow named a campaign that does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no campaign named {name!r}: check the flow's `campaign` field "
                         "against 'paceline campaign list'")
        self.name = name


def _e164(number: str, region: str, what: str) -> str:
    """`number` (a caller ID in any form the PBX writes) as E.164; ServiceError if it is not
    a valid number (withheld, anonymous, malformed)."""
    e164 = normalize_ani(number, region)
    if e164 is None:
        raise ServiceError(f"{what}: {redact(number)!r} is not a valid phone number "
                           f"(read in region {region})")
    return e164


# ============================================================================== HTTP CRM


class CrmError(ServiceError):
    """The CRM did not answer with a JSON object: timeout, connection, HTTP status, body."""


#: An IVR lookup fetches a handful of fields; a bigger answer is a wrong URL, not data.
MAX_CRM_BODY_BYTES = 1 << 20
#: How much of an error answer goes into the error text (after masking).
_SNIPPET_CHARS = 120


class HttpCrm:
    """`ivr.ports.Crm` over HTTP: GET sends `params` as the query, POST as a JSON body.

    The answer must be a 2xx with a JSON object (at most `MAX_CRM_BODY_BYTES`); anything
    else raises `CrmError`. Every request is bounded by `asyncio.timeout(timeout_s)` (connect,
    send and read together). `headers` (say an `Authorization`) go with every request and
    never appear in an error text; neither does the URL's query string, and the rest of the
    text is redacted (`cti.redact`).

    Owns one `aiohttp.ClientSession`, opened on first use (so building the object needs no
    running loop) and closed by `close()` or `async with`.
    """

    def __init__(self, *, headers: Mapping[str, str] | None = None) -> None:
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpCrm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _mask(self, text: str) -> str:
        text = redact(text)
        for value in self._headers.values():
            for secret in (value, value.rsplit(" ", 1)[-1]):  # `Bearer <token>` and the token
                if len(secret) >= 4:
                    text = text.replace(secret, "***")
        return text

    @staticmethod
    def endpoint(url: str) -> str:
        """What an error may say about `url`: scheme, host, port and path; no user info, no
        query, no fragment (redacted as well: a path may hold an account number)."""
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return redact(f"{parts.scheme}://{parts.hostname}{port}{parts.path}")

    async def lookup(self, method: Literal["GET", "POST"], url: str,
                     params: Mapping[str, str], timeout_s: float) -> Mapping[str, Any]:
        where = self.endpoint(url)
        if method not in ("GET", "POST"):
            raise CrmError(f"CRM {where}: method {method!r}: use GET or POST")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        kwargs: dict[str, Any] = (
            {"params": dict(params)} if method == "GET" else {"json": dict(params)}
        )
        try:
            async with asyncio.timeout(timeout_s):
                async with self._session.request(
                    method, url, headers=self._headers, **kwargs
                ) as resp:
                    status = resp.status
                    raw = await self._read_capped(resp, where)
        except TimeoutError:
            raise CrmError(f"CRM {where} did not answer within {timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # `from None` and masked: aiohttp's exception text quotes the whole URL.
            raise CrmError(
                f"CRM {where} failed: {self._mask(describe_exception(exc))}"
            ) from None
        if not 200 <= status < 300:
            snippet = self._mask(raw[:_SNIPPET_CHARS].decode("utf-8", "replace").strip())
            raise CrmError(f"CRM {where} answered HTTP {status}"
                           + (f": {snippet}" if snippet else ""))
        try:
            data = json.loads(raw)
        except ValueError:
            raise CrmError(f"CRM {where} answered HTTP {status} with a body that is not "
                           "JSON") from None
        if not isinstance(data, dict):
            raise CrmError(f"CRM {where} answered a JSON {type(data).__name__}; a lookup "
                           "needs a JSON object")
        return data

    @staticmethod
    async def _read_capped(resp: aiohttp.ClientResponse, where: str) -> bytes:
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_CRM_BODY_BYTES:
                raise CrmError(f"CRM {where} answered more than {MAX_CRM_BODY_BYTES} bytes")
        return bytes(body)


# ============================================================================== contacts

_PARAM_KEYS = tuple(f"param{i}" for i in range(1, MAX_PARAMS + 1))


class DbContactDirectory:
    """`ivr.ports.ContactDirectory` on Paceline's contacts.

    The number is normalised to E.164 as the importer does (`cti.screenpop.normalize_ani`
    over `dialer.phones`: caller-ID forms such as `sip:+44...@host` and a national number in
    the campaign's default region are understood; a withheld or invalid ANI finds nothing).
    It is looked up in `contact_phones`, the indexed copy of `contacts.phone1..phone5` that the
    importer keeps in step (one index probe, not a scan of five unindexed columns); a contact
    written by other code must have its `contact_phones` rows too (`DbCallbackBook` writes
    them). Of the matching contacts, optionally only those of the campaign named `campaign`,
    the most recently created wins (then the highest id).

    How business fields are stored, honestly: the `contacts` table has twelve positional text
    columns, `param1`..`param12` (40 characters each), plus `external_id`. The import file's
    column names are not kept, so the database cannot say that `param3` is a PIN. The names
    come from configuration: `field_names` maps a slot to a name for every campaign
    (`{"param1": "name", "param2": "pin"}`), `campaign_fields` per campaign name (it wins).
    A slot without a name is reported under its slot name (`param4`); empty slots are left out.
    A field whose name is in `SECRET_FIELDS` goes to `ContactRecord.secrets` and is removed from
    `fields`, under its slot name too. `name` is the `name` field if there is one, else
    `first_name` and `last_name` joined, else "".
    """

    def __init__(
        self,
        engine: Engine,
        *,
        default_region: str = "US",
        field_names: Mapping[str, str] | None = None,
        campaign_fields: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.engine = engine
        self.default_region = default_region.upper()
        self.field_names = dict(field_names or {})
        self.campaign_fields = {k: dict(v) for k, v in (campaign_fields or {}).items()}
        for where, names in (("field_names", self.field_names),
                             *((f"campaign_fields[{c!r}]", m)
                               for c, m in self.campaign_fields.items())):
            bad = sorted(set(names) - {*_PARAM_KEYS, "external_id"})
            if bad:
                raise ValueError(f"{where}: unknown slot(s) {', '.join(bad)}; use param1.."
                                 f"param{MAX_PARAMS} or external_id")

    async def find(self, number: str, campaign: str | None) -> ContactRecord | None:
        return await asyncio.to_thread(self.find_sync, number, campaign)

    def find_sync(self, number: str, campaign: str | None) -> ContactRecord | None:
        """`find` without the thread hop (blocks on the database)."""
        params = [getattr(Contact, k) for k in _PARAM_KEYS]
        with self.engine.connect() as conn:
            region = self.default_region
            if campaign is not None:
                region = conn.scalar(
                    select(Campaign.default_region).where(Campaign.name == campaign)
                ) or ""
                if not region:
                    raise UnknownCampaign(campaign)
            e164 = normalize_ani(number, region)
            if e164 is None:
                return None
            q = (
                select(Contact.id, Campaign.name, Contact.external_id, *params)
                .select_from(ContactPhone)
                .join(Contact, Contact.id == ContactPhone.contact_id)
                .join(Campaign, Campaign.id == Contact.campaign_id)
                .where(ContactPhone.e164 == e164)
                .order_by(Contact.created_at.desc(), Contact.id.desc())
                .limit(1)
            )
            if campaign is not None:
                q = q.where(Campaign.name == campaign)
            row = conn.execute(q).first()
        if row is None:
            return None
        slots = dict(zip(("external_id", *_PARAM_KEYS), row[2:], strict=True))
        return self._record(int(row[0]), str(row[1]), slots)

    def _record(self, contact_id: int, campaign: str,
                slots: Mapping[str, str | None]) -> ContactRecord:
        names = {**self.field_names, **self.campaign_fields.get(campaign, {})}
        fields: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for slot, value in slots.items():
            if value is None or value == "":
                continue
            name = names.get(slot, slot)
            if name.lower() in SECRET_FIELDS:
                secrets[name.lower()] = str(value)  # the key `verify` looks up
            else:
                fields[name] = str(value)
        full = fields.get("name") or " ".join(
            p for p in (fields.get("first_name"), fields.get("last_name")) if p
        )
        return ContactRecord(contact_id, campaign, full, fields, secrets)


# ============================================================================== wait time


class StaticWaitEstimator:
    """`ivr.ports.WaitEstimator` from a fixed table (tests, demos, a queue Paceline cannot
    see). A queue not in `mapping` gets `default`; with no default it raises LookupError."""

    def __init__(self, mapping: Mapping[str, float], default: float | None = None) -> None:
        self.mapping = dict(mapping)
        self.default = default

    async def estimate_wait(self, queue: str) -> float:
        if queue in self.mapping:
            return float(self.mapping[queue])
        if self.default is None:
            raise LookupError(f"no wait estimate for queue {queue!r} (known: "
                              f"{', '.join(sorted(self.mapping)) or 'none'})")
        return float(self.default)


#: Average handle time when the group has no finished call in the window.
DEFAULT_AHT_S = 180.0
#: The answer when nobody in the group is logged in (or everyone is paused): longer than any
#: sensible callback threshold, yet finite, so it survives JSON and arithmetic in a flow.
NO_AGENT_WAIT_S = 24 * 3600.0
#: Agents who take calls: ready, talking or wrapping up (`not_ready` is paused).
_STAFFED = (AgentState.READY.value, AgentState.ON_CALL.value, AgentState.WRAP_UP.value)


@dataclass(frozen=True)
class GroupLoad:
    """What the estimate of one group is computed from (also handy in a report)."""

    ready: int
    staffed: int
    aht_s: float
    queued: int


class AgentGroupWaitEstimator:
    """`ivr.ports.WaitEstimator` for a Paceline agent group (`queue` = the group's name).

    The formula, a first-order estimate::

        ready agents > 0            -> 0
        no staffed agent            -> NO_AGENT_WAIT_S
        otherwise                   -> AHT / staffed * (queued + 1)

    `staffed` counts the group's agents who are ready, on a call or in wrap-up (paused
    agents take no calls). `AHT` is the average handle time, talk plus wrap-up, over the
    `agent_state_log` intervals of the group's agents that ended within the last `window_s`:
    (sum of on_call + wrap_up durations) / (number of on_call intervals); `DEFAULT_AHT_S`
    when there is none. `queued` is how many callers this process has sent to the group and
    not yet seen answered or gone: the caller of `joined(queue)` / `left(queue)` keeps it
    (the driver that transfers a caller to the group and sees the call answered or abandoned),
    since the database does not know about callers waiting in the IVR.

    Why first order: with every agent busy, the group frees an agent every AHT / staffed
    seconds on average, and a new caller waits for the `queued` callers ahead of it plus one
    more release. This ignores the variance of handle times and the calls already part-way
    through (Erlang C would model both, but needs arrival rates we do not track), and it
    counts only this process's queued callers. It errs towards "offer the callback" when the
    team is small, which is the cheap error.
    """

    def __init__(self, engine: Engine, *, now_fn: NowFn = _utcnow,
                 window_s: float = 3600.0) -> None:
        self.engine = engine
        self.now_fn = now_fn
        self.window_s = window_s
        self._queued: dict[str, int] = {}

    def joined(self, queue: str) -> None:
        """A caller was sent to `queue` and waits for an agent."""
        self._queued[queue] = self._queued.get(queue, 0) + 1

    def left(self, queue: str) -> None:
        """A waiting caller of `queue` was answered or gave up (never goes below zero)."""
        self._queued[queue] = max(0, self._queued.get(queue, 0) - 1)

    def queued(self, queue: str) -> int:
        return self._queued.get(queue, 0)

    async def estimate_wait(self, queue: str) -> float:
        load = await asyncio.to_thread(self.load, queue)
        return self.wait_for(load)

    @staticmethod
    def wait_for(load: GroupLoad) -> float:
        """The formula of the class docstring, pure."""
        if load.ready > 0:
            return 0.0
        if load.staffed <= 0:
            return NO_AGENT_WAIT_S
        return load.aht_s / load.staffed * (load.queued + 1)

    def load(self, queue: str) -> GroupLoad:
        """Read the group's agents and recent intervals; LookupError for an unknown group."""
        since = self.now_fn() - timedelta(seconds=self.window_s)
        with self.engine.connect() as conn:
            gid = conn.scalar(select(AgentGroup.id).where(AgentGroup.name == queue))
            if gid is None:
                raise LookupError(f"no agent group named {queue!r}")
            members = select(AgentGroupMember.agent_id).where(AgentGroupMember.group_id == gid)
            states = dict(conn.execute(
                select(Agent.state, func.count())
                .where(Agent.id.in_(members))
                .group_by(Agent.state)
            ).all())
            intervals = conn.execute(
                select(AgentStateLog.state, AgentStateLog.started_at, AgentStateLog.ended_at)
                .where(
                    AgentStateLog.agent_id.in_(members),
                    AgentStateLog.state.in_([AgentState.ON_CALL.value,
                                             AgentState.WRAP_UP.value]),
                    AgentStateLog.ended_at.is_not(None),
                    AgentStateLog.ended_at >= since,
                )
            ).all()
        calls = sum(1 for r in intervals if r.state == AgentState.ON_CALL.value)
        busy_s = sum((r.ended_at - r.started_at).total_seconds() for r in intervals)
        aht = busy_s / calls if calls and busy_s > 0 else DEFAULT_AHT_S
        return GroupLoad(
            ready=int(states.get(AgentState.READY.value, 0)),
            staffed=sum(int(states.get(s, 0)) for s in _STAFFED),
            aht_s=aht,
            queued=self.queued(queue),
        )


# ============================================================================== callbacks

_NOTE_CHARS = 2000


class DbCallbackBook:
    """`ivr.ports.CallbackBook`: a new contact in the named campaign, a public callback due now.

    The contact is what an agent's R disposition of public scope leaves behind
    (`dialer.wrapup`): state `callback_scheduled`, `callback_agent` NULL, `due_at` now, so
    the dialer's ordinary lease (`dialer.leasing.lease_due_contacts`) hands it to the next
    free agent with every usual check (calling hours in the number's zone, DNC). `phone1` is
    the number in E.164 (read in the campaign's default region); zone and region come from it
    as the importer derives them; the first step, phone and channel come from the campaign's
    strategy (`strategies.planner.next_action`, with neutral hours as the importer plans).
    The `contact_phones` row is written too (so the caller is identified next time), and the
    zone is added to `campaign_zones` if new (the lease filters on those zones).

    `data`: keys `param1`..`param12` and `external_id` fill those columns (each at most the
    column's length: a longer value raises ServiceError naming the key); any other key/value
    pairs become one `contact_notes` row, for the agent who calls back.

    Raises `UnknownCampaign` for a campaign name that does not exist, `ServiceError` for a
    number that is not valid or a strategy that would never dial it.
    """

    def __init__(self, engine: Engine, now_fn: NowFn = _utcnow, *, priority: int = 0) -> None:
        self.engine = engine
        self.now_fn = now_fn
        self.priority = priority

    async def create_callback(self, number: str, campaign: str,
                              data: Mapping[str, str]) -> int:
        return await asyncio.to_thread(self.create_callback_sync, number, campaign, data)

    def create_callback_sync(self, number: str, campaign: str, data: Mapping[str, str]) -> int:
        """`create_callback` without the thread hop (blocks on the database)."""
        now = self.now_fn()
        columns, extra = _callback_columns(data)
        with write_transaction(self.engine) as conn:
            c = conn.execute(
                select(Campaign.id, Campaign.default_region, Campaign.default_timezone)
                .where(Campaign.name == campaign)
            ).first()
            if c is None:
                raise UnknownCampaign(campaign)
            e164 = _e164(number, c.default_region, f"callback in campaign {campaign!r}")
            try:
                info = PhoneNormalizer(c.default_region)(e164)
            except PhoneError as exc:  # pragma: no cover - normalize_ani validated it
                raise ServiceError(f"callback number: {exc}") from None
            tz = contact_zone(info.zones, c.default_timezone)
            policy = campaign_policy(conn, c.id)
            neutral = replace(policy, calling_hours=CallingHours(), holidays=frozenset())
            phones = (e164, None, None, None, None)
            action = next_action(
                ContactView(phones, tz, state=ContactState.CALLBACK_SCHEDULED), (), neutral, now
            )
            if isinstance(action, Close):
                raise ServiceError(f"callback in campaign {campaign!r}: the campaign's "
                                   f"strategy would never dial it ({action.refusal})")
            contact_id = conn.scalar(
                insert(Contact)
                .values(
                    campaign_id=c.id,
                    phone1_raw=number[:28],
                    phone1=e164,
                    tz=tz,
                    region=info.region,
                    state=ContactState.CALLBACK_SCHEDULED.value,
                    state_reason=clip_reason("public callback requested by the caller in "
                                             "the IVR"),
                    priority=self.priority,
                    due_at=now,
                    attempt_count=0,
                    next_step=action.step,
                    next_phone=action.phone_index,
                    next_channel=action.channel.value,
                    callback_agent=None,
                    created_at=now,
                    updated_at=now,
                    **columns,
                )
                .returning(Contact.id)
            )
            assert contact_id is not None
            conn.execute(insert(ContactPhone).values(contact_id=contact_id, slot=1, e164=e164))
            known = conn.scalar(select(CampaignZone.tz).where(
                CampaignZone.campaign_id == c.id, CampaignZone.tz == tz))
            if known is None:
                conn.execute(insert(CampaignZone).values(campaign_id=c.id, tz=tz))
            if extra:
                text = "IVR callback request: " + "; ".join(f"{k}={v}" for k, v in extra)
                conn.execute(insert(ContactNote).values(
                    contact_id=contact_id, agent=None, text=redact(text)[:_NOTE_CHARS],
                    created_at=now))
            return int(contact_id)


def _callback_columns(data: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    columns: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for key, value in data.items():
        if key in _PARAM_KEYS or key == "external_id":
            most = MAX_EXTERNAL_ID_CHARS if key == "external_id" else MAX_PARAM_CHARS
            if len(value) > most:
                raise ServiceError(f"callback data {key}: at most {most} characters, got "
                                   f"{len(value)}")
            columns[key] = value
        else:
            extra.append((key, value))
    return columns, extra


# ============================================================================== DNC


class DbDncList:
    """`ivr.ports.DncList` through `dialer.dnc.add_entries`.

    With a campaign name: a campaign-scoped entry (the caller opted out of that campaign's
    calls); without: a global entry. The number is read as a caller ID in the campaign's
    default region (or `default_region`) and stored in E.164; listing a number already listed
    in that scope is a no-op. Source `ivr`, with the `note` ("ivr opt-out" by default).
    The contacts holding the number are not closed here: the lease's DNC check refuses the
    number the next time a contact would dial it.
    """

    def __init__(self, engine: Engine, now_fn: NowFn = _utcnow, *,
                 default_region: str = "US") -> None:
        self.engine = engine
        self.now_fn = now_fn
        self.default_region = default_region.upper()

    async def add_dnc(self, number: str, campaign: str | None, note: str = "ivr opt-out") -> None:
        await asyncio.to_thread(self.add_dnc_sync, number, campaign, note or "ivr opt-out")

    def add_dnc_sync(self, number: str, campaign: str | None, note: str = "ivr opt-out") -> None:
        """`add_dnc` without the thread hop (blocks on the database)."""
        region, campaign_id = self.default_region, None
        if campaign is not None:
            with self.engine.connect() as conn:
                row = conn.execute(select(Campaign.id, Campaign.default_region)
                                   .where(Campaign.name == campaign)).first()
            if row is None:
                raise UnknownCampaign(campaign)
            campaign_id, region = int(row.id), row.default_region
        e164 = _e164(number, region, "DNC opt-out")
        add_entries(self.engine, [e164], self.now_fn(), region=region, campaign_id=campaign_id,
                    source=DncSource.IVR, note=note)


# ============================================================================== SMS


class ProviderSms:
    """`ivr.ports.SmsSender` over a `dialer.sms.SmsProvider` (HTTP gateway or simulator).

    `to` is read as a caller ID in `default_region` and sent in E.164, as providers expect.
    The `SmsProvider` interface has no sender field (the From number or alphanumeric sender
    is part of the provider's own configuration), so `sender` names the origin in the
    provider's reference instead: `ref` is `"{sender}-{n}"`, n counting this object's texts.
    A refusal raises the provider's `SmsError` unchanged (its text is already safe).
    """

    def __init__(self, provider: SmsProvider, sender: str = "ivr", *,
                 default_region: str = "US") -> None:
        self.provider = provider
        self.sender = sender
        self.default_region = default_region.upper()
        self._count = itertools.count(1)

    async def send_sms(self, to: str, text: str) -> str:
        e164 = _e164(to, self.default_region, "SMS destination")
        return await self.provider.send(e164, text, ref=f"{self.sender}-{next(self._count)}")


# ============================================================================== payments

# A run of 13 to 19 digits, spaces or dashes allowed between them (as `cti.redact` finds PANs).
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_LAST4 = re.compile(r"[0-9]{4}")


def looks_like_pan(text: str) -> bool:
    """True when `text` holds a 13-19 digit run that passes Luhn: possibly a card number.

    Gateways' format-preserving tokens are built to fail Luhn precisely so that they can never
    be mistaken for a card number; a Luhn-valid run is refused rather than risked.
    """
    return any(luhn_ok(re.sub(r"[ -]", "", m.group(0))) for m in _DIGIT_RUN.finditer(text))


#: `ivr_payments` column sizes for the text fields that are refused, not cut, when too long.
_PAYMENT_LIMITS: Mapping[str, int] = {
    "session_id": 64, "flow": 100, "node": 100, "ani": 40, "amount": 24, "currency": 3,
    "brand": 16, "token": 200,
}


class DbPaymentStore:
    """`ivr.ports.PaymentStore` on the `ivr_payments` table (migration 0005).

    Keeps only what PCI DSS allows after authorisation: the gateway token, brand, last four
    digits and the result. Defensive checks before the insert, each a ValueError that names
    the field and never shows the value: `last4` must be exactly four digits (the table's
    CHECK repeats it); `token`, `session_id`, `flow`, `node`, `amount`, `currency` and `brand`
    must not contain a Luhn-valid run of 13-19 digits (`looks_like_pan`). `ani` is exempt: it
    is the caller's phone number, which passes Luhn one time in ten. `error` (the gateway's
    reason, foreign text) is redacted (`cti.redact`) and cut to its 200 characters instead of
    refused, so a careless gateway message costs its digits, not the payment's record.
    Over-long texts are refused (the column sizes).
    """

    def __init__(self, engine: Engine, now_fn: NowFn = _utcnow) -> None:
        self.engine = engine
        self.now_fn = now_fn

    async def record_payment(self, *, session_id: str, flow: str, node: str, ani: str,
                             contact_id: int | None, action: str, amount: str, currency: str,
                             brand: str, last4: str, approved: bool, token: str,
                             error: str) -> None:
        row = self.checked_row(
            session_id=session_id, flow=flow, node=node, ani=ani, contact_id=contact_id,
            action=action, amount=amount, currency=currency, brand=brand, last4=last4,
            approved=approved, token=token, error=error,
        )
        await asyncio.to_thread(self._insert, row)

    def checked_row(self, **values: Any) -> dict[str, Any]:
        """The row to insert, after the checks of the class docstring; ValueError if refused."""
        last4 = values["last4"]
        if not isinstance(last4, str) or not _LAST4.fullmatch(last4):
            raise ValueError("ivr payment last4: exactly four digits required (refused; the "
                             "value is not shown)")
        if values["action"] not in ("charge", "tokenize"):
            raise ValueError(f"ivr payment action {values['action']!r}: charge or tokenize")
        for key in ("token", "session_id", "flow", "node", "amount", "currency", "brand"):
            if looks_like_pan(str(values[key])):
                raise ValueError(f"ivr payment {key}: holds what looks like a card number; "
                                 "refused (the value is not shown)")
        for key, most in _PAYMENT_LIMITS.items():
            if len(str(values[key])) > most:
                raise ValueError(f"ivr payment {key}: at most {most} characters, got "
                                 f"{len(str(values[key]))}")
        return {**values, "error": redact(str(values["error"]))[:200],
                "approved": bool(values["approved"]), "created_at": self.now_fn()}

    def _insert(self, row: Mapping[str, Any]) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(insert(IvrPayment).values(**row))


# ============================================================================== agents


class EndpointTemplatePicker:
    """`transfer kind = "group"` without Paceline's own inbound routing: dial a fixed endpoint.

    `template` holds `{group}`; the default of `paceline run`, `Local/{group}@paceline-queue`,
    puts the caller in the Asterisk queue of the group's name (docker/asterisk: queues.conf
    and [paceline-queue]), where Asterisk picks the agent. Paceline's agent board routes the
    dialer's outbound calls only: an inbound caller handed to the board itself would need
    blended inbound routing, which the engine does not do yet.
    """

    def __init__(self, template: str) -> None:
        if "{group}" not in template:
            raise ValueError(f"endpoint template {template!r} has no {{group}}")
        self.template = template

    async def pick(self, group: str) -> str | None:
        if not group or any(ch in group for ch in "/@,;|&\n"):
            return None  # a group name never reaches the dial string unchecked
        return self.template.replace("{group}", group)


# ============================================================================== wiring


def build_services(
    engine: Engine,
    *,
    gateway: PaymentGateway,
    sms_provider: SmsProvider | None = None,
    sms_sender: str = "ivr",
    crm_headers: Mapping[str, str] | None = None,
    wait: WaitEstimator | None = None,
    now_fn: NowFn = _utcnow,
    default_region: str = "US",
    field_names: Mapping[str, str] | None = None,
    campaign_fields: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The database-backed port objects, keyed by the field names of `ivr.runner.Services`.

    `Services(**build_services(engine, gateway=...))` builds the bundle; this module does
    not import `ivr.runner` (the runner depends on the ports, not on their implementations).
    `sms` is None without an `sms_provider` (the runner then answers "sms not configured");
    `wait` defaults to an `AgentGroupWaitEstimator` on `engine`. The caller owns the result:
    `await services["crm"].close()` at shutdown closes the CRM's HTTP session.
    """
    crm: Crm = HttpCrm(headers=crm_headers)
    contacts: ContactDirectory = DbContactDirectory(
        engine, default_region=default_region, field_names=field_names,
        campaign_fields=campaign_fields,
    )
    callbacks: CallbackBook = DbCallbackBook(engine, now_fn)
    dnc: DncList = DbDncList(engine, now_fn, default_region=default_region)
    payments: PaymentStore = DbPaymentStore(engine, now_fn)
    sms: SmsSender | None = (
        ProviderSms(sms_provider, sms_sender, default_region=default_region)
        if sms_provider is not None else None
    )
    return {
        "crm": crm,
        "contacts": contacts,
        "gateway": gateway,
        "wait": wait if wait is not None else AgentGroupWaitEstimator(engine, now_fn=now_fn),
        "callbacks": callbacks,
        "sms": sms,
        "dnc": dnc,
        "payments": payments,
    }
