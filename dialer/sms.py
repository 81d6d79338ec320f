"""The SMS channel: providers, message templates, inbound replies, delivery receipts, expiry.

Who calls what:

- The engine leases an SMS-channel contact (a pure SMS campaign, or a voice campaign whose
  strategy switched to SMS), writes the attempt row (`channel='sms'`, outcome NULL) and only then
  calls `SmsService.send_attempt_and_settle`. The service fills the campaign's template, sends
  through an `SmsProvider`, and in one transaction records the result (`record_sent` /
  `record_failed`: the attempt's outcome becomes `sms_sent` or `sms_failed`), settles the
  contact with the strategy (`dialer.attempts.settle_contact`: `sms_sent` when the plan ends on
  the text) and writes the CRM outbox row. `send_attempt` / `send_leased` do the first half
  only, for callers that settle themselves.
- Delivery receipts (`POST /sms/receipt`, or the simulator's callback) go through
  `parse_delivery_receipt` and `apply_receipt`: `sms_sent` -> `sms_delivered` / `sms_failed`.
- Inbound texts (`POST /sms/inbound`) go through `handle_inbound`: an opt-out keyword puts the
  number on the global DNC list and closes its contacts as `dnc_listed`; a help keyword answers
  the help text; anything else marks the texted contact `sms_responded`.
- `expire_sms` closes `sms_sent` contacts that got no reply within their campaign's
  `sms_expiry_s` as `sms_sent_closed`.

Decisions, and why:

- **Keywords match the whole message** (trimmed, case-insensitive, surrounding punctuation
  ignored: "stop", " Stop ", "STOP!" opt out; "STOP please" does not), as carriers and the CTIA
  handbook do. A reply that merely *contains* an opt-out word is recorded as a reply (the
  contact becomes `sms_responded`, which an operator sees), unless the settings ask for
  `opt_out_match="word"`, which opts out on any message containing a keyword as a word. Note the
  FCC's 2025 revocation rule (47 CFR 64.1200(a)(10)) treats "stop", "quit", "end", "revoke",
  "opt out", "cancel" and "unsubscribe" in a reply as a revocation; US senders may want "word".
- **An SMS opt-out is global** (`dnc_entries` with no campaign and no list, source
  `sms-stop`): the person withdrew consent from the sender, not from one campaign, and the
  FCC rule applies a revocation to every call and text from that sender. Over-honouring an
  opt-out is the safe error; an operator can narrow it by editing the entry.
- **Every contact holding the number closes as `dnc_listed`**, even when it has other numbers:
  the person behind the contact withdrew consent. Contacts leased right now
  (`sent_to_dialer`) and `connected` ones are left to the engine: their next lease or
  disposition meets the DNC entry.
- **A template field missing for a contact refuses that contact's SMS** (`SmsFieldMissing`,
  naming the fields) instead of sending "Hello ,". An unknown placeholder is a campaign setting
  error (`SmsTemplateError`), found before any contact is texted by `check_template`.
- **No retry inside a send.** A timeout is ambiguous (the provider may have sent the text), so
  every failure becomes the attempt's outcome `sms_failed`, and the strategy decides.

The database functions run in the caller's transaction and never commit. Nothing here reads
the clock except `SmsService.now()` at the HTTP edge when no clock was given.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from sqlalchemy import Connection, Engine, bindparam, false, func, insert, or_, select, update
from yarl import URL

from cti.redact import describe_exception, redact
from dialer import outbox
from dialer.attempts import settle_contact
from dialer.db import write_transaction
from dialer.db.models import (
    Attempt,
    Campaign,
    Contact,
    ContactPhone,
    DncEntry,
    SmsMessage,
    UtcDateTime,
)
from dialer.domain import (
    CONTACT_TRANSITIONS,
    MAX_PARAMS,
    CampaignChannel,
    Channel,
    ContactState,
    DncSource,
    Outcome,
)
from dialer.phones import PhoneError, PhoneNormalizer
from ivr.expr import lookup_path

if TYPE_CHECKING:
    from dialer.leasing import LeasedContact
    from strategies.model import CampaignPolicy

log = logging.getLogger(__name__)

#: `sms_messages.error` and `contacts.state_reason` are VARCHAR(200).
ERROR_CHARS = 200


class SmsStatus(StrEnum):
    """`sms_messages.status`: queued, sent, delivered, failed (outbound); received (inbound)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    RECEIVED = "received"


#: Statuses a later receipt never changes (the first final receipt wins; see `apply_receipt`).
FINAL_STATUSES: frozenset[SmsStatus] = frozenset({SmsStatus.DELIVERED, SmsStatus.FAILED})

_OUT, _IN = "out", "in"


# --- errors ------------------------------------------------------------------------------------


class SmsError(Exception):
    """A send the provider did not accept. `permanent`: sending the same text again will fail
    the same way (a bad number, a rejected request); otherwise it may work later (5xx, timeout).

    The message never holds the provider's credentials or the request's query string.
    """

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class SmsTemplateError(ValueError):
    """The campaign's `sms_template` is wrong: names the placeholder or the column, and the fix."""


class SmsFieldMissing(ValueError):
    """A contact lacks a value the template needs; `fields` names them (`param2`, ...)."""

    def __init__(self, fields: Sequence[str]) -> None:
        names = ", ".join(fields)
        super().__init__(
            f"the SMS template needs {names}, empty for this contact: not sent rather than "
            "sent with a gap"
        )
        self.fields = tuple(fields)


class ReceiptError(ValueError):
    """A delivery receipt that cannot be read; names the field and the value."""


class InboundError(ValueError):
    """An inbound text that cannot be processed (the sender is not a phone number)."""


# --- templates ---------------------------------------------------------------------------------

#: The placeholders an `sms_template` may use.
TEMPLATE_FIELDS: tuple[str, ...] = (
    *(f"param{i}" for i in range(1, MAX_PARAMS + 1)),
    "external_id",
    "phone",
)
_TEMPLATE_FIELD_SET = frozenset(TEMPLATE_FIELDS)

# `{{` and `}}` are literal braces (as in str.format); any other lone brace is an error.
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _parse_template(template: str) -> list[tuple[str, bool]]:
    """(text, is_placeholder) pieces of `template`; raises `SmsTemplateError`."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for m in _TEMPLATE_TOKEN.finditer(template):
        pieces.append((template[pos : m.start()], False))
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            pieces.append((token[0], False))
        elif m.group(1) is None:
            raise SmsTemplateError(
                f"sms_template: unmatched {token!r} at character {m.start() + 1}; "
                f"write {token * 2!r} for a literal brace"
            )
        elif m.group(1) not in _TEMPLATE_FIELD_SET:
            raise SmsTemplateError(
                f"sms_template: unknown placeholder {token!r} at character {m.start() + 1}; "
                f"use {{param1}}..{{param{MAX_PARAMS}}}, {{external_id}} or {{phone}}"
            )
        else:
            pieces.append((m.group(1), True))
    pieces.append((template[pos:], False))
    return [p for p in pieces if p[0] or p[1]]


def check_template(template: str | None) -> tuple[str, ...]:
    """Validate a campaign's `sms_template`; return the placeholders it uses, in order.

    Raises `SmsTemplateError` for a missing or blank template, an unknown placeholder or a lone
    brace. Run it when the campaign is configured, before any contact is texted.
    """
    if template is None or not template.strip():
        raise SmsTemplateError(
            "sms_template: the campaign has no SMS text; set sms_template before it sends SMS"
        )
    return tuple(text for text, is_field in _parse_template(template) if is_field)


def render_template(template: str, contact_fields: Mapping[str, str | None]) -> str:
    """Fill `template`'s placeholders from `contact_fields` (see `TEMPLATE_FIELDS`).

    A value that is None, empty or only blanks counts as missing: `SmsFieldMissing` names every
    missing field, and the contact gets no SMS (the caller records `sms_failed` with that
    reason). An unknown placeholder raises `SmsTemplateError`. Values are inserted verbatim
    (no trimming, no escaping: an SMS is plain text).
    """
    pieces = _parse_template(template)
    missing: list[str] = []
    out: list[str] = []
    for text, is_field in pieces:
        if not is_field:
            out.append(text)
            continue
        value = contact_fields.get(text)
        if value is None or not value.strip():
            if text not in missing:
                missing.append(text)
            continue
        out.append(value)
    if missing:
        raise SmsFieldMissing(missing)
    body = "".join(out)
    if not body.strip():
        raise SmsTemplateError("sms_template: the text is blank once filled in")
    return body


def lease_fields(lease: LeasedContact) -> dict[str, str | None]:
    """The template fields of a leased contact: its params, external id and the number texted."""
    fields: dict[str, str | None] = {
        f"param{i}": v for i, v in enumerate(lease.params[:MAX_PARAMS], start=1)
    }
    fields["external_id"] = lease.external_id
    fields["phone"] = lease.number
    return fields


# --- segments ----------------------------------------------------------------------------------

# GSM 03.38 default alphabet, and the extension table (each of those costs two septets).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

#: Units per segment: a single message, and each part of a concatenated one (the user data
#: header takes 6 bytes: 7 septets in GSM-7, 3 UCS-2 characters).
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


def is_gsm7(body: str) -> bool:
    """True when `body` fits the GSM-7 alphabet (default table plus extension table)."""
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in body)


def segments(body: str) -> int:
    """How many SMS segments `body` takes (0 for an empty body).

    GSM-7 when every character is in the GSM alphabet (an extension character such as `€`
    counts twice), else UCS-2 counted in UTF-16 units (an emoji counts twice). A concatenated
    message never splits an extension character or a surrogate pair across two parts.
    """
    if not body:
        return 0
    if is_gsm7(body):
        units = [2 if ch in _GSM7_EXTENDED else 1 for ch in body]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        units = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
        single, part = UCS2_SINGLE, UCS2_PART
    if sum(units) <= single:
        return 1
    count, used = 1, 0
    for u in units:
        if used + u > part:
            count, used = count + 1, 0
        used += u
    return count


# --- providers ---------------------------------------------------------------------------------


class SmsProvider(Protocol):
    """Sends one text. Implementations: `HttpSmsProvider`, `sim.sms.SimSmsProvider`."""

    async def send(self, to: str, body: str, *, ref: str) -> str:
        """Send `body` to the E.164 number `to`; return the provider's message id.

        `ref` is Paceline's reference for the text (the attempt id), passed to the provider
        where it takes one. Raises `SmsError` when the provider did not accept the text.
        """
        ...


_URL_FIELDS = frozenset({"to", "body", "ref"})
_URL_PLACEHOLDER = re.compile(r"\{(\w*)\}")

#: Answers that mean "try again later", though they are 4xx.
_TEMPORARY_4XX = frozenset({408, 425, 429})

#: How much of an error answer goes into the error text (after masking).
_SNIPPET_CHARS = 120


def _placeholders(text: str) -> set[str]:
    return set(_URL_PLACEHOLDER.findall(text))


def _template_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _template_strings(k)
            yield from _template_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _template_strings(v)


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _URL_PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _fill_json(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _fill(value, values)
    if isinstance(value, Mapping):
        return {_fill(str(k), values): _fill_json(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill_json(v, values) for v in value]
    return value


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int):
        text = str(value).strip()
        return text or None
    return None


class HttpSmsProvider:
    """A generic HTTP SMS gateway: one request per text, configured by templates.

    `url` may hold `{to}`, `{body}` and `{ref}`; their values are URL-encoded into it.
    `body_template` (a JSON object) may hold the same placeholders in any string, keys
    included; its values are inserted raw and the object is sent as JSON. `auth_header` is the
    value of the `auth_header_name` header (`Bearer ...`, `Basic ...`): it is never logged and
    never part of an error text, and neither is the URL's query string.

    Answers: 2xx -> the message id at `id_field` (a dotted path) of the JSON answer; a 2xx
    without one is a permanent `SmsError` (the text may have gone out, so it must not be sent
    again; fix `id_field`). 3xx and 4xx -> permanent, except 408, 425 and 429. 5xx, timeouts
    and connection errors -> temporary.

    Owns its `aiohttp` session unless one is passed; `close()` (or `async with`) closes it.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        auth_header: str | None = None,
        auth_header_name: str = "Authorization",
        body_template: Mapping[str, Any] | None = None,
        id_field: str = "id",
        timeout_s: float = 10,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"sms url: give an http(s) URL, got scheme {parts.scheme!r}")
        for where, strings in (("url", [url]), ("body_template", _template_strings(body_template))):
            unknown = set().union(*(_placeholders(s) for s in strings)) - _URL_FIELDS
            if unknown:
                raise ValueError(
                    f"sms {where}: unknown placeholder "
                    f"{', '.join('{' + u + '}' for u in sorted(unknown))}; "
                    "use {to}, {body} or {ref}"
                )
        method = method.upper()
        if method not in ("GET", "POST", "PUT"):
            raise ValueError(f"sms method: GET, POST or PUT, got {method!r}")
        if timeout_s <= 0:
            raise ValueError(f"sms timeout_s: must be > 0, got {timeout_s}")
        if not id_field:
            raise ValueError("sms id_field: give the JSON field of the provider's message id")
        self._url = url
        self._method = method
        self._auth = (auth_header_name, auth_header) if auth_header else None
        self._body_template = dict(body_template) if body_template is not None else None
        self.id_field = id_field
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        # What an error text may say about the endpoint: no user info, no query, no values.
        port = f":{parts.port}" if parts.port else ""
        self.endpoint = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any], environ: Mapping[str, str], *, where: str = "[sms]"
    ) -> HttpSmsProvider:
        """Build from the run config's `[sms]` table (`provider = "http"`).

        Keys: `url` (required), `method`, `auth_header_env` (the environment variable that
        holds the header value) or `auth_header`, `auth_header_name`, `body_template`,
        `id_field`, `timeout_s`. Raises ValueError naming the key.
        """
        url = section.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where} url: required for provider 'http'")
        auth = section.get("auth_header")
        env_name = section.get("auth_header_env")
        if env_name is not None:
            if not isinstance(env_name, str) or env_name not in environ:
                raise ValueError(f"{where} auth_header_env: environment variable {env_name!r} "
                                 "is not set")
            auth = environ[env_name]
        body = section.get("body_template")
        if body is not None and not isinstance(body, Mapping):
            raise ValueError(f"{where} body_template: must be a table (JSON object)")
        try:
            return cls(
                url,
                method=str(section.get("method", "POST")),
                auth_header=str(auth) if auth is not None else None,
                auth_header_name=str(section.get("auth_header_name", "Authorization")),
                body_template=body,
                id_field=str(section.get("id_field", "id")),
                timeout_s=float(section.get("timeout_s", 10)),
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    async def __aenter__(self) -> HttpSmsProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _mask(self, text: str) -> str:
        text = redact(text)
        if self._auth is not None:
            # The whole header value, and its credential alone (`Bearer <token>`).
            value = self._auth[1]
            for secret in (value, value.rsplit(" ", 1)[-1]):
                if len(secret) >= 4:
                    text = text.replace(secret, "***")
        return text

    async def send(self, to: str, body: str, *, ref: str) -> str:
        values = {"to": to, "body": body, "ref": ref}
        url = URL(_fill(self._url, {k: quote(v, safe="") for k, v in values.items()}),
                  encoded=True)
        headers: dict[str, str] = {}
        if self._auth is not None:
            headers[self._auth[0]] = self._auth[1]
        data: bytes | None = None
        if self._body_template is not None:
            data = json.dumps(_fill_json(self._body_template, values)).encode()
            headers["Content-Type"] = "application/json"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(
                self._method, url, data=data, headers=headers, timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            raise SmsError(f"SMS provider {self.endpoint} did not answer within "
                           f"{self._timeout.total} s", permanent=False) from None
        except (aiohttp.ClientError, OSError) as exc:
            # `from None` and a masked text: aiohttp's exception quotes the URL.
            raise SmsError(
                f"SMS provider {self.endpoint} failed: {self._mask(describe_exception(exc))}",
                permanent=False,
            ) from None
        if 200 <= status < 300:
            return self._message_id(status, raw)
        snippet = self._mask(raw[:_SNIPPET_CHARS].decode("utf-8", "replace").strip())
        permanent = status < 500 and status not in _TEMPORARY_4XX
        raise SmsError(
            f"SMS provider {self.endpoint} answered HTTP {status}"
            + (f": {snippet}" if snippet else ""),
            permanent=permanent,
        )

    def _message_id(self, status: int, raw: bytes) -> str:
        try:
            message_id = _id_text(lookup_path(json.loads(raw), self.id_field))
        except ValueError:
            message_id = None
        if message_id is None:
            raise SmsError(
                f"SMS provider {self.endpoint} accepted the text (HTTP {status}) but its answer "
                f"has no message id at {self.id_field!r}; the text may have gone out, so it is "
                "not retried: check the provider's id_field setting",
                permanent=True,
            )
        return message_id


# --- delivery receipts -------------------------------------------------------------------------

_RECEIPT_STATUSES: dict[str, SmsStatus] = {
    **dict.fromkeys(
        ("delivered", "delivrd", "delivered_to_handset", "delivered_to_terminal"),
        SmsStatus.DELIVERED,
    ),
    **dict.fromkeys(
        ("failed", "undelivered", "undeliv", "undeliverable", "rejected", "rejectd", "expired",
         "expird", "deleted", "error", "canceled", "cancelled", "delivery_failed"),
        SmsStatus.FAILED,
    ),
    # Not final: the text is on its way, or the SMSC does not know (SMPP UNKNOWN).
    **dict.fromkeys(
        ("sent", "queued", "accepted", "acceptd", "enroute", "en_route", "buffered", "sending",
         "submitted", "scheduled", "pending", "unknown", "unknwn"),
        SmsStatus.SENT,
    ),
}


_RECEIPT_KINDS = frozenset({SmsStatus.DELIVERED, SmsStatus.FAILED, SmsStatus.SENT})


@dataclass(frozen=True)
class DeliveryReceipt:
    """What a provider's delivery receipt says about one text."""

    provider_id: str
    #: delivered, failed (final) or sent (on its way: changes nothing).
    status: SmsStatus
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _RECEIPT_KINDS:
            raise ReceiptError(f"delivery receipt {self.provider_id}: status must be delivered, "
                               f"failed or sent, not {self.status.value}")


def parse_delivery_receipt(
    data: Mapping[str, Any],
    *,
    id_field: str = "id",
    status_field: str = "status",
    error_field: str = "error",
) -> DeliveryReceipt:
    """Read a delivery-receipt webhook body (JSON or form fields).

    Fields are dotted paths. Statuses are matched case-insensitively, `-` and blanks read as
    `_`: delivered/DELIVRD -> delivered; failed, undelivered, rejected, expired, deleted,
    error, canceled -> failed; sent, queued, accepted, enroute, buffered, unknown -> sent (not
    final). Raises `ReceiptError` naming the field for a missing id or status, or an unknown
    status.
    """
    provider_id = _id_text(lookup_path(data, id_field))
    if provider_id is None:
        raise ReceiptError(f"delivery receipt: no message id in field {id_field!r}")
    raw_status = lookup_path(data, status_field)
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise ReceiptError(f"delivery receipt {provider_id}: no status in field "
                           f"{status_field!r}")
    key = re.sub(r"[\s-]+", "_", raw_status.strip().casefold())
    status = _RECEIPT_STATUSES.get(key)
    if status is None:
        raise ReceiptError(
            f"delivery receipt {provider_id}: unknown status {raw_status[:40]!r} in field "
            f"{status_field!r}"
        )
    error = lookup_path(data, error_field)
    error_text = None if error is None or error == "" else str(error)[:ERROR_CHARS]
    return DeliveryReceipt(provider_id, status, error_text)


# --- settings ----------------------------------------------------------------------------------

#: CTIA's opt-out keywords, plus REVOKE and OPT OUT from the FCC's 2025 revocation rule.
DEFAULT_OPT_OUT_KEYWORDS: tuple[str, ...] = (
    "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT",
)
DEFAULT_HELP_KEYWORDS: tuple[str, ...] = ("HELP", "INFO")
DEFAULT_HELP_TEXT = "Reply STOP to stop receiving these messages."
DEFAULT_OPT_OUT_CONFIRMATION = "You are unsubscribed and will receive no more messages."

# Trimmed around a keyword: blanks and the punctuation people type after one ("STOP!").
_KEYWORD_TRIM = " \t\r\n.,;:!?\"'()[]"


_WORD = re.compile(r"[^\W_]+")


def _keyword_key(text: str) -> str:
    return " ".join(text.strip(_KEYWORD_TRIM).casefold().split())


@dataclass(frozen=True)
class SmsSettings:
    """How inbound texts are answered; see the module docstring for the matching rules."""

    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT_KEYWORDS
    help_keywords: tuple[str, ...] = DEFAULT_HELP_KEYWORDS
    help_text: str = DEFAULT_HELP_TEXT
    opt_out_confirmation: str = DEFAULT_OPT_OUT_CONFIRMATION
    #: "exact": the whole message is the keyword; "word": any word (or phrase) of it is.
    opt_out_match: Literal["exact", "word"] = "exact"
    #: Region for a sender number written without a country code.
    default_region: str = "US"
    _opt_out: frozenset[str] = field(init=False, repr=False, compare=False)
    _help: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        opt_out = frozenset(_keyword_key(k) for k in self.opt_out_keywords)
        help_ = frozenset(_keyword_key(k) for k in self.help_keywords)
        if not opt_out or "" in opt_out:
            raise ValueError("sms opt_out_keywords: give at least one non-blank keyword")
        if "" in help_:
            raise ValueError("sms help_keywords: a keyword is blank")
        both = opt_out & help_
        if both:
            raise ValueError(f"sms: {', '.join(sorted(both))} is both an opt-out and a help "
                             "keyword")
        if self.opt_out_match not in ("exact", "word"):
            raise ValueError(f"sms opt_out_match: 'exact' or 'word', got {self.opt_out_match!r}")
        object.__setattr__(self, "_opt_out", opt_out)
        object.__setattr__(self, "_help", help_)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, where: str = "[sms]") -> SmsSettings:
        """From the run config's `[sms]` table; unknown keys are left to the caller."""
        kwargs: dict[str, Any] = {}
        for key in ("opt_out_keywords", "help_keywords"):
            if key in section:
                value = section[key]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{where} {key}: must be a list of strings")
                kwargs[key] = tuple(value)
        for key in ("help_text", "opt_out_confirmation", "opt_out_match", "default_region"):
            if key in section:
                if not isinstance(section[key], str):
                    raise ValueError(f"{where} {key}: must be a string")
                kwargs[key] = section[key]
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def is_opt_out(self, body: str) -> bool:
        key = _keyword_key(body)
        if key in self._opt_out:
            return True
        if self.opt_out_match == "word":
            padded = " " + " ".join(_WORD.findall(key)) + " "
            return any(f" {k} " in padded for k in self._opt_out)
        return False

    def is_help(self, body: str) -> bool:
        return _keyword_key(body) in self._help


# --- database ----------------------------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _set_attempt_outcome(
    conn: Connection, attempt_id: int, outcome: Outcome, now: datetime
) -> None:
    res = conn.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id)
        .values(outcome=outcome.value, ended_at=now, call_state=None)
    )
    if not res.rowcount:
        raise LookupError(f"no attempt with id {attempt_id}: the engine writes it before sending")


def record_sent(
    conn: Connection,
    *,
    attempt_id: int,
    contact_id: int,
    campaign_id: int,
    number: str,
    body: str,
    provider_id: str,
    now: datetime,
) -> int:
    """The provider accepted the text: an outbound `sms_messages` row (status `sent`), and the
    attempt's outcome `sms_sent` with `ended_at=now`. Returns the message row id.

    Raises LookupError when the attempt row does not exist.
    """
    _set_attempt_outcome(conn, attempt_id, Outcome.SMS_SENT, now)
    return _insert_message(conn, direction=_OUT, attempt_id=attempt_id, contact_id=contact_id,
                           campaign_id=campaign_id, number=number, body=body,
                           provider_id=provider_id, status=SmsStatus.SENT, error=None, now=now)


def record_failed(
    conn: Connection,
    *,
    attempt_id: int,
    contact_id: int,
    campaign_id: int,
    number: str,
    body: str,
    error: str,
    now: datetime,
) -> int:
    """The text was not sent: an outbound row with status `failed` and `error` (clipped to 200
    characters), and the attempt's outcome `sms_failed`. `body` is what would have been sent
    (the template, when filling it in failed). Returns the message row id.
    """
    _set_attempt_outcome(conn, attempt_id, Outcome.SMS_FAILED, now)
    return _insert_message(conn, direction=_OUT, attempt_id=attempt_id, contact_id=contact_id,
                           campaign_id=campaign_id, number=number, body=body, provider_id=None,
                           status=SmsStatus.FAILED, error=_clip(error), now=now)


def _insert_message(
    conn: Connection,
    *,
    direction: str,
    attempt_id: int | None,
    contact_id: int | None,
    campaign_id: int | None,
    number: str,
    body: str,
    provider_id: str | None,
    status: SmsStatus,
    error: str | None,
    now: datetime,
) -> int:
    return conn.execute(
        insert(SmsMessage)
        .values(direction=direction, attempt_id=attempt_id, contact_id=contact_id,
                campaign_id=campaign_id, number=number, body=body, provider_id=provider_id,
                status=status.value, error=error, created_at=now, updated_at=now)
        .returning(SmsMessage.id)
    ).scalar_one()


_RECEIPT_OUTCOME = {
    SmsStatus.DELIVERED: Outcome.SMS_DELIVERED,
    SmsStatus.FAILED: Outcome.SMS_FAILED,
}


def apply_receipt(conn: Connection, receipt: DeliveryReceipt, now: datetime) -> int | None:
    """Apply a delivery receipt to the outbound text with its provider id; its row id.

    A final receipt (delivered, failed) sets the message's status and moves its attempt's
    outcome from `sms_sent` to `sms_delivered` / `sms_failed`. The first final receipt wins:
    receipts arrive out of order, and a late `sent` never undoes `delivered`. An unknown
    provider id is logged and returns None (a receipt for a text sent by another system, or
    one that arrived before `record_sent` committed).
    """
    row = conn.execute(
        select(SmsMessage.id, SmsMessage.status, SmsMessage.attempt_id)
        .where(SmsMessage.provider_id == receipt.provider_id, SmsMessage.direction == _OUT)
        .order_by(SmsMessage.id.desc())
        .limit(1)
    ).first()
    if row is None:
        log.info("delivery receipt for unknown SMS id %r (%s): ignored",
                 receipt.provider_id, receipt.status.value)
        return None
    message_id = int(row.id)
    if receipt.status not in FINAL_STATUSES:
        return message_id
    changed = conn.execute(
        update(SmsMessage)
        .where(SmsMessage.id == message_id,
               SmsMessage.status.not_in([s.value for s in FINAL_STATUSES]))
        .values(status=receipt.status.value, updated_at=now,
                error=_clip(receipt.error) if receipt.error else None)
    ).rowcount
    if not changed:
        if row.status != receipt.status.value:
            log.info("SMS %s is already %s; late %s receipt ignored",
                     receipt.provider_id, row.status, receipt.status.value)
        return message_id
    if row.attempt_id is not None:
        conn.execute(
            update(Attempt)
            .where(Attempt.id == row.attempt_id, Attempt.outcome == Outcome.SMS_SENT.value)
            .values(outcome=_RECEIPT_OUTCOME[receipt.status].value)
        )
    return message_id


class InboundKind(StrEnum):
    OPT_OUT = "opt_out"
    HELP = "help"
    REPLY = "reply"


@dataclass(frozen=True)
class InboundResult:
    """What `handle_inbound` did with one inbound text."""

    kind: InboundKind
    number: str  # E.164
    message_id: int  # the inbound `sms_messages` row
    contact_id: int | None  # the contact of the latest campaign text to the number
    campaign_id: int | None
    #: The text to send back (opt-out confirmation, help text); None for a plain reply.
    reply: str | None
    #: A new global DNC entry was written (False: the number was already listed).
    dnc_added: bool = False
    #: Contacts moved to `dnc_listed`.
    closed_contacts: tuple[int, ...] = ()
    #: The contact moved `sms_sent` -> `sms_responded`.
    responded: bool = False
    #: Why nothing changed, when nothing did.
    note: str | None = None


def normalize_sender(raw: str, region: str) -> str:
    """The E.164 form of an inbound sender; providers write it with or without the `+`.

    Tried as a number of `region` first, then as an international number without its `+`
    (`447700900123`). Raises `InboundError` naming the value.
    """
    raw = raw.strip()
    normalise = PhoneNormalizer(region)
    try:
        return normalise(raw).e164
    except PhoneError as exc:
        digits = re.sub(r"[\s().-]", "", raw)
        if digits.isdigit():
            try:
                return normalise("+" + digits).e164
            except PhoneError:
                pass
        raise InboundError(f"inbound SMS sender {raw[:28]!r}: {exc}") from None


#: States an SMS opt-out closes as `dnc_listed`: the ones the state machine allows it from,
#: among those no engine is working on right now (leased and connected contacts are not).
OPT_OUT_CLOSES: frozenset[ContactState] = frozenset(
    s
    for s in (
        ContactState.SMS_SENT,
        ContactState.SMS_RESPONDED,
        ContactState.PENDING,
        ContactState.NOT_CONNECTED,
        ContactState.CALLBACK_SCHEDULED,
    )
    if ContactState.DNC_LISTED in CONTACT_TRANSITIONS[s]
)


def _latest_campaign_text(conn: Connection, number: str) -> tuple[int | None, int | None]:
    """(contact_id, campaign_id) of the latest campaign text (one with an attempt) to `number`."""
    row = conn.execute(
        select(SmsMessage.contact_id, SmsMessage.campaign_id)
        .where(SmsMessage.number == number, SmsMessage.direction == _OUT,
               SmsMessage.attempt_id.is_not(None))
        .order_by(SmsMessage.created_at.desc(), SmsMessage.id.desc())
        .limit(1)
    ).first()
    return (row.contact_id, row.campaign_id) if row is not None else (None, None)


def handle_inbound(
    conn: Connection, *, number: str, body: str, now: datetime, settings: SmsSettings
) -> InboundResult:
    """Record an inbound text and act on it (see the module docstring for the decisions).

    The text is stored (`direction='in'`, status `received`), linked to the contact and
    campaign of the latest campaign text sent to the number. Then:

    - opt-out keyword: a global DNC entry for the number (source `sms-stop`) unless an active
      one exists; every contact holding the number (any slot, any campaign) in a state of
      `OPT_OUT_CLOSES` -> `dnc_listed`; `reply` is the confirmation.
    - help keyword: `reply` is the help text; nothing else changes.
    - anything else: the linked contact `sms_sent` -> `sms_responded`; any other state is
      left alone (`note` says why).

    `number` may be written as providers write it (`+1...`, `1...`, national). Raises
    `InboundError` when it is not a phone number.
    """
    e164 = normalize_sender(number, settings.default_region)
    contact_id, campaign_id = _latest_campaign_text(conn, e164)
    message_id = _insert_message(conn, direction=_IN, attempt_id=None, contact_id=contact_id,
                                 campaign_id=campaign_id, number=e164, body=body,
                                 provider_id=None, status=SmsStatus.RECEIVED, error=None,
                                 now=now)
    def result(kind: InboundKind, reply: str | None, **more: Any) -> InboundResult:
        return InboundResult(kind, e164, message_id, contact_id, campaign_id, reply, **more)

    if settings.is_opt_out(body):
        added = _add_opt_out_entry(conn, e164, body, campaign_id, now)
        closed = _close_opted_out(conn, e164, contact_id, now)
        log.info("SMS opt-out from %s: DNC %s, %d contact(s) closed", e164,
                 "added" if added else "already listed", len(closed))
        return result(InboundKind.OPT_OUT, settings.opt_out_confirmation, dnc_added=added,
                      closed_contacts=closed)
    if settings.is_help(body):
        return result(InboundKind.HELP, settings.help_text)
    if contact_id is None:
        return result(InboundKind.REPLY, None, note="no campaign text was sent to this number")
    responded = conn.execute(
        update(Contact)
        .where(Contact.id == contact_id, Contact.state == ContactState.SMS_SENT.value)
        .values(state=ContactState.SMS_RESPONDED.value, due_at=None, updated_at=now,
                state_reason=f"replied by SMS at {now.astimezone(UTC).isoformat()}")
    ).rowcount
    if responded:
        return result(InboundKind.REPLY, None, responded=True)
    state = conn.scalar(select(Contact.state).where(Contact.id == contact_id))
    return result(InboundKind.REPLY, None, note=f"contact {contact_id} is {state}, not "
                  f"{ContactState.SMS_SENT.value}: reply recorded, state unchanged")


def _add_opt_out_entry(
    conn: Connection, number: str, body: str, campaign_id: int | None, now: datetime
) -> bool:
    listed = conn.scalar(
        select(DncEntry.id).where(
            DncEntry.value == number,
            DncEntry.is_prefix == false(),
            DncEntry.campaign_id.is_(None),
            DncEntry.list_id.is_(None),
            or_(DncEntry.expires_at.is_(None), DncEntry.expires_at > now),
        ).limit(1)
    )
    if listed is not None:
        return False
    via = f" to campaign {campaign_id}" if campaign_id is not None else ""
    conn.execute(insert(DncEntry).values(
        value=number, is_prefix=False, campaign_id=None, list_id=None,
        source=DncSource.SMS_STOP.value, expires_at=None, created_at=now,
        note=f"SMS opt-out {body.strip()[:40]!r}{via}",
    ))
    return True


def _close_opted_out(
    conn: Connection, number: str, linked: int | None, now: datetime
) -> tuple[int, ...]:
    ids = set(conn.scalars(select(ContactPhone.contact_id).where(ContactPhone.e164 == number)))
    if linked is not None:
        # `contact_phones` is kept by the importer; the texted contact is known regardless.
        ids.add(linked)
    if not ids:
        return ()
    closed = conn.scalars(
        update(Contact)
        .where(Contact.id.in_(sorted(ids)),
               Contact.state.in_(sorted(s.value for s in OPT_OUT_CLOSES)))
        .values(state=ContactState.DNC_LISTED.value, due_at=None, updated_at=now,
                state_reason=f"dnc: {number} opted out by SMS reply at "
                             f"{now.astimezone(UTC).isoformat()}")
        .returning(Contact.id)
    ).all()
    return tuple(sorted(closed))


def expire_sms(conn: Connection, now: datetime) -> int:
    """Close `sms_sent` contacts with no reply within their campaign's `sms_expiry_s` as
    `sms_sent_closed`; return how many.

    A contact's clock starts at its latest SMS attempt that was sent (outcome `sms_sent` or
    `sms_delivered`), or when it entered `sms_sent` if it has none. Expired means that start
    is strictly before `now - sms_expiry_s`. One UPDATE per SMS-capable campaign.
    """
    campaigns = conn.execute(
        select(Campaign.id, Campaign.sms_expiry_s).where(
            Campaign.channel.in_([CampaignChannel.SMS.value, CampaignChannel.VOICE_SMS.value])
        )
    ).all()
    latest = (
        select(func.max(Attempt.placed_at))
        .where(Attempt.contact_id == Contact.id, Attempt.channel == Channel.SMS.value,
               Attempt.outcome.in_([Outcome.SMS_SENT.value, Outcome.SMS_DELIVERED.value]))
        .correlate(Contact)
        .scalar_subquery()
    )
    closed = 0
    for campaign_id, expiry_s in campaigns:
        cutoff = now - timedelta(seconds=expiry_s)
        closed += conn.execute(
            update(Contact)
            .where(Contact.campaign_id == campaign_id,
                   Contact.state == ContactState.SMS_SENT.value,
                   func.coalesce(latest, Contact.updated_at)
                   < bindparam("cutoff", cutoff, type_=UtcDateTime()))
            .values(state=ContactState.SMS_SENT_CLOSED.value, due_at=None, updated_at=now,
                    state_reason=_clip(f"sms expired: no reply within {expiry_s} s "
                                       "(campaign sms_expiry_s)"))
        ).rowcount
    return closed


# --- the service -------------------------------------------------------------------------------


class _Clock(Protocol):
    def now(self) -> datetime: ...


#: Receipts kept for texts whose send is not recorded yet, and provider ids recorded lately.
EARLY_RECEIPTS = 10_000


class SmsService:
    """The SMS channel as the engine uses it: sends, inbound texts, receipts, expiry.

    Database work runs in a thread (`asyncio.to_thread`), one write transaction per call.
    With a `clock`, sends are recorded at `clock.now()` once the provider answered, and the
    HTTP routes read it; without one, the `now` passed in is used and the routes read UTC
    wall time.

    A receipt can overtake the commit of its own send (a fast gateway, the simulator at a
    small time scale). A final receipt for an unknown id is therefore kept (up to
    `EARLY_RECEIPTS`) and applied as soon as this service records a send with that id. Both
    steps run on the event loop, so no interleaving loses one. A receipt that reaches another
    node before this one commits is still dropped (and logged): receipts take seconds.
    """

    def __init__(
        self,
        engine: Engine,
        provider: SmsProvider,
        settings: SmsSettings | None = None,
        *,
        clock: _Clock | None = None,
    ) -> None:
        self.engine, self.provider = engine, provider
        self.settings = settings if settings is not None else SmsSettings()
        self._clock = clock
        self._early: OrderedDict[str, DeliveryReceipt] = OrderedDict()
        self._recorded: OrderedDict[str, None] = OrderedDict()

    async def _after_record(self, provider_id: str | None, now: datetime) -> None:
        """A send with `provider_id` is committed: apply a receipt that came before it."""
        if not provider_id:
            return
        self._recorded[provider_id] = None
        if len(self._recorded) > EARLY_RECEIPTS:
            self._recorded.popitem(last=False)
        early = self._early.pop(provider_id, None)
        if early is not None:
            await self.handle_receipt(early, now)

    def now(self) -> datetime:
        """The time at the edges (HTTP handlers, provider callbacks)."""
        return self._clock.now() if self._clock is not None else datetime.now(UTC)

    async def _send(self, attempt_id: int, number: str, body: str) -> tuple[str, str | None]:
        """(provider id, None) when the text went out, else ("", the reason)."""
        if not body.strip():
            return "", "empty SMS text: not sent"
        try:
            return await self.provider.send(number, body, ref=str(attempt_id)), None
        except SmsError as exc:
            return "", f"{'permanent' if exc.permanent else 'temporary'}: {exc}"
        except Exception as exc:  # a provider bug must not leave the attempt open
            log.exception("SMS provider failed on attempt %d", attempt_id)
            return "", f"provider error: {describe_exception(exc)}"

    def _record(
        self,
        conn: Connection,
        *,
        attempt_id: int,
        contact_id: int,
        campaign_id: int,
        number: str,
        body: str,
        provider_id: str,
        error: str | None,
        now: datetime,
    ) -> None:
        ids = dict(attempt_id=attempt_id, contact_id=contact_id, campaign_id=campaign_id,
                   number=number, body=body, now=now)
        if error is None:
            record_sent(conn, provider_id=provider_id, **ids)  # type: ignore[arg-type]
        else:
            log.info("SMS attempt %d to %s failed: %s", attempt_id, number, error)
            record_failed(conn, error=error, **ids)  # type: ignore[arg-type]

    async def send_attempt(
        self,
        attempt_id: int,
        contact_id: int,
        campaign_id: int,
        number: str,
        body: str,
        now: datetime,
    ) -> bool:
        """Send one text for an attempt row the engine already wrote; True when it went out.

        Either way the attempt gets its outcome (`sms_sent` / `sms_failed`) and an outbound
        `sms_messages` row. Provider errors, including unexpected ones, become `sms_failed`
        with the reason; they are not raised. Database errors are. The contact is not
        touched: see `send_attempt_and_settle` for the engine's whole step.
        """
        provider_id, error = await self._send(attempt_id, number, body)
        at = self._clock.now() if self._clock is not None else now

        def write() -> None:
            with write_transaction(self.engine) as conn:
                self._record(conn, attempt_id=attempt_id, contact_id=contact_id,
                             campaign_id=campaign_id, number=number, body=body,
                             provider_id=provider_id, error=error, now=at)

        await asyncio.to_thread(write)
        await self._after_record(provider_id, at)
        return error is None

    async def send_attempt_and_settle(
        self,
        attempt_id: int,
        lease: LeasedContact,
        template: str | None,
        policy: CampaignPolicy,
        now: datetime,
    ) -> bool:
        """The engine's SMS step for a leased contact whose attempt row is written.

        Fills `template` for the contact (a template error or a missing field sends nothing
        and records the reason), sends, then in one transaction: the attempt's outcome and
        message row (`record_sent` / `record_failed`), the contact settled by the strategy
        (`dialer.attempts.settle_contact`: `sms_sent` when the plan ends on the text, else
        its next step) and the CRM outbox row. True when the text went out.
        """
        provider_id, error = "", None
        try:
            body = render_template(template or "", lease_fields(lease))
        except (SmsTemplateError, SmsFieldMissing) as exc:
            body = template or ""
            error = str(exc) if template else "sms_template: the campaign has no SMS text"
        else:
            provider_id, error = await self._send(attempt_id, lease.number, body)
        at = self._clock.now() if self._clock is not None else now

        def write() -> None:
            with write_transaction(self.engine) as conn:
                self._record(conn, attempt_id=attempt_id, contact_id=lease.contact_id,
                             campaign_id=lease.campaign_id, number=lease.number, body=body,
                             provider_id=provider_id, error=error, now=at)
                settle_contact(conn, lease.contact_id, policy, at, reason=error)
                outbox.enqueue(conn, outbox.ATTEMPT_FINISHED,
                               outbox.attempt_payload(conn, attempt_id), at,
                               attempt_id=attempt_id)

        await asyncio.to_thread(write)
        await self._after_record(provider_id, at)
        return error is None

    async def send_leased(
        self, lease: LeasedContact, *, attempt_id: int, template: str | None, now: datetime
    ) -> bool:
        """Fill the campaign's `template` for a leased contact and send it (`send_attempt`).

        A template error or a missing field records the attempt as `sms_failed` with the
        reason (the template as the body) and sends nothing. The contact is not touched.
        """
        try:
            body = render_template(template or "", lease_fields(lease))
        except (SmsTemplateError, SmsFieldMissing) as exc:
            reason = str(exc) if template else "sms_template: the campaign has no SMS text"

            def write() -> None:
                with write_transaction(self.engine) as conn:
                    self._record(conn, attempt_id=attempt_id, contact_id=lease.contact_id,
                                 campaign_id=lease.campaign_id, number=lease.number,
                                 body=template or "", provider_id="", error=reason, now=now)

            await asyncio.to_thread(write)
            return False
        return await self.send_attempt(
            attempt_id, lease.contact_id, lease.campaign_id, lease.number, body, now
        )

    async def handle_inbound(self, number: str, body: str, now: datetime) -> InboundResult:
        """`handle_inbound` in a transaction, then the reply (if any) through the provider.

        The reply is recorded as an outbound text without an attempt; a failed reply is
        logged and recorded, never raised: the opt-out itself is already committed.
        """

        def write() -> InboundResult:
            with write_transaction(self.engine) as conn:
                return handle_inbound(conn, number=number, body=body, now=now,
                                      settings=self.settings)

        result = await asyncio.to_thread(write)
        if result.reply is not None:
            await self._send_reply(result, now)
        return result

    async def _send_reply(self, result: InboundResult, now: datetime) -> None:
        assert result.reply is not None
        provider_id: str | None = None
        error: str | None = None
        try:
            provider_id = await self.provider.send(
                result.number, result.reply, ref=f"reply-{result.message_id}"
            )
        except SmsError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("SMS provider failed on the reply to message %d", result.message_id)
            error = f"provider error: {describe_exception(exc)}"
        if error is not None:
            log.warning("SMS %s reply to %s failed: %s", result.kind.value, result.number, error)

        def write() -> None:
            with write_transaction(self.engine) as conn:
                _insert_message(
                    conn, direction=_OUT, attempt_id=None, contact_id=result.contact_id,
                    campaign_id=result.campaign_id, number=result.number, body=result.reply or "",
                    provider_id=provider_id,
                    status=SmsStatus.SENT if error is None else SmsStatus.FAILED,
                    error=_clip(error) if error else None, now=now,
                )

        await asyncio.to_thread(write)
        await self._after_record(provider_id, now)

    async def handle_receipt(self, receipt: DeliveryReceipt, now: datetime) -> int | None:
        """`apply_receipt` in a transaction; the message row id, or None for an unknown id
        (a final one is kept for a send not recorded yet: see the class docstring)."""

        def write() -> int | None:
            with write_transaction(self.engine) as conn:
                return apply_receipt(conn, receipt, now)

        found = await asyncio.to_thread(write)
        if found is None and receipt.status in FINAL_STATUSES:
            if receipt.provider_id in self._recorded:
                found = await asyncio.to_thread(write)  # its send committed meanwhile
            else:
                self._early[receipt.provider_id] = receipt
                if len(self._early) > EARLY_RECEIPTS:
                    self._early.popitem(last=False)
        return found

    def expire(self, now: datetime) -> int:
        """`expire_sms` in a transaction. Blocking: the engine runs it in a thread."""
        with write_transaction(self.engine) as conn:
            return expire_sms(conn, now)

    # Callback forms for providers that push events (the simulator).
    async def on_receipt(self, receipt: DeliveryReceipt) -> None:
        await self.handle_receipt(receipt, self.now())

    async def on_inbound(self, number: str, body: str) -> None:
        await self.handle_inbound(number, body, self.now())


# --- HTTP --------------------------------------------------------------------------------------

#: Field names providers use for an inbound text's sender and text (matched case-insensitively).
INBOUND_FROM_FIELDS = ("from", "msisdn", "sender", "originator", "source")
INBOUND_TEXT_FIELDS = ("body", "text", "message", "content")

TOKEN_HEADER = "X-Paceline-Token"


async def _request_fields(request: web.Request) -> Mapping[str, Any]:
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="the JSON body must be an object")
        return data
    return dict(await request.post())


def _pick(fields: Mapping[str, Any], names: Sequence[str]) -> str | None:
    lowered = {str(k).lower(): v for k, v in fields.items()}
    for name in names:
        value = lowered.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def sms_routes(
    service: SmsService,
    *,
    id_field: str = "id",
    status_field: str = "status",
    error_field: str = "error",
    token: str | None = None,
) -> list[web.RouteDef]:
    """`POST /sms/inbound` and `POST /sms/receipt` for the service's HTTP server.

    Both take a form or a JSON object. Inbound: the sender in `from` (or `msisdn`, `sender`,
    `originator`, `source`), the text in `body` (or `text`, `message`, `content`); answers
    `{"kind", "reply"}`. Receipt: fields per `parse_delivery_receipt`; answers
    `{"matched": bool}` (200 for an unknown id too, so the provider stops retrying).
    A malformed request answers 400 with the reason. With `token`, each request must carry it
    in the `X-Paceline-Token` header or the `token` query parameter, else 401.
    """

    def authorised(request: web.Request) -> None:
        if token is None:
            return
        given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="missing or wrong token")

    async def inbound(request: web.Request) -> web.Response:
        authorised(request)
        fields = await _request_fields(request)
        sender = _pick(fields, INBOUND_FROM_FIELDS)
        text = _pick(fields, INBOUND_TEXT_FIELDS)
        if sender is None:
            raise web.HTTPBadRequest(text=f"no sender: give one of {INBOUND_FROM_FIELDS}")
        if text is None:
            raise web.HTTPBadRequest(text=f"no text: give one of {INBOUND_TEXT_FIELDS}")
        try:
            result = await service.handle_inbound(sender, text, service.now())
        except InboundError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"kind": result.kind.value, "reply": result.reply})

    async def receipt(request: web.Request) -> web.Response:
        authorised(request)
        fields = await _request_fields(request)
        try:
            parsed = parse_delivery_receipt(fields, id_field=id_field,
                                            status_field=status_field, error_field=error_field)
        except ReceiptError as exc:
            log.warning("%s", exc)
            raise web.HTTPBadRequest(text=str(exc)) from None
        matched = await service.handle_receipt(parsed, service.now())
        return web.json_response({"matched": matched is not None})

    return [web.post("/sms/inbound", inbound), web.post("/sms/receipt", receipt)]


__all__ = [
    "DEFAULT_OPT_OUT_KEYWORDS",
    "FINAL_STATUSES",
    "OPT_OUT_CLOSES",
    "TEMPLATE_FIELDS",
    "DeliveryReceipt",
    "HttpSmsProvider",
    "InboundError",
    "InboundKind",
    "InboundResult",
    "ReceiptError",
    "SmsError",
    "SmsFieldMissing",
    "SmsProvider",
    "SmsService",
    "SmsSettings",
    "SmsStatus",
    "SmsTemplateError",
    "apply_receipt",
    "check_template",
    "expire_sms",
    "handle_inbound",
    "is_gsm7",
    "lease_fields",
    "lookup_path",
    "normalize_sender",
    "parse_delivery_receipt",
    "record_failed",
    "record_sent",
    "render_template",
    "segments",
    "sms_routes",
]
