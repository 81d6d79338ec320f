"""Masking at the edge: what may reach a log line, an exception text or an event detail.

Library error texts are not ours to trust: aiohttp puts the whole request URL, query included,
into its exception messages, so an `api_key=user:secret` or a `dtmf=<card number>` would land
in a log the moment a request fails. Every text built from a foreign exception or a URL goes
through `redact()` before it is logged or raised.

What is masked:
- the value of a sensitive query or form parameter (`api_key`, `dtmf`, `password`, `secret`,
  `pin`, `cvv`): `dtmf=***`;
- the password of a URL's user info: `http://dialer:***@host`;
- any run of 13 to 19 digits (spaces or dashes allowed between them) that passes the Luhn
  check, i.e. anything that may be a card number (PAN): all but the last four digits become
  `*`. A phone number that happens to pass Luhn is masked too; over-masking is the safe error.
"""

from __future__ import annotations

import re

#: Query/form parameters whose values are secrets or caller-typed digits.
SENSITIVE_PARAMS: tuple[str, ...] = ("api_key", "dtmf", "password", "secret", "pin", "cvv")

_PARAM_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9_])(" + "|".join(SENSITIVE_PARAMS) + r")=([^&\s'\"<>)]*)"
)
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):([^@\s/]*)@")
_DIGIT_RUN_RE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check used by card numbers."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_pan(digits: str) -> str:
    """A 16-digit PAN becomes twelve `*` and its last four digits; nothing else survives."""
    return "*" * max(0, len(digits) - 4) + digits[-4:]


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = re.sub(r"[ -]", "", run)
    return mask_pan(digits) if luhn_ok(digits) else run


def redact(text: str) -> str:
    """`text` with secrets and possible card numbers masked (see the module docstring)."""
    text = _PARAM_RE.sub(lambda m: f"{m.group(1)}=***", text)
    text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}:***@", text)
    return _DIGIT_RUN_RE.sub(_mask_run, text)


def describe_exception(exc: BaseException) -> str:
    """`Type: message` of a foreign exception, redacted: safe to log or to put in a detail."""
    return redact(f"{type(exc).__name__}: {exc}")
