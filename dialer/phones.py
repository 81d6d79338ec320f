"""Phone number normalisation: raw string -> E.164, region and time zone, or a precise error.

Contact import is bound by `phonenumbers`, so this module calls it as little as it can while
giving the same answers as its public API (`is_valid_number`, `region_code_for_number`,
`timezone.time_zones_for_number`); `tests/test_phones.py` checks the equivalence.

The fast path: most numbers of a campaign belong to its default region, and for those one
number-type check answers both "is it valid" and "is it geographic", where the public API
would first search every region sharing the country code (25 of them for +1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType
from phonenumbers import phonenumberutil as _pnu
from phonenumbers import timezone as _pntz

from dialer.domain import MAX_PHONE_CHARS
from strategies.compliance import ZONE_SEPARATOR

_TZ_DATA: dict[str, tuple[str, ...]] | None
try:  # the time-zone prefix table; fall back to the public lookup if its home ever moves
    from phonenumbers.tzdata import TIMEZONE_DATA as _TZ_DATA
    from phonenumbers.tzdata import TIMEZONE_LONGEST_PREFIX as _TZ_LONGEST
except ImportError:  # pragma: no cover - depends on the phonenumbers release
    _TZ_DATA, _TZ_LONGEST = None, 0

_number_type_helper = getattr(_pnu, "_number_type_helper", None)
_UNKNOWN_ZONE = "Etc/Unknown"


class PhoneError(ValueError):
    """Why a phone string was refused; `str()` is a sentence a user can act on."""


@dataclass(frozen=True, slots=True)
class PhoneInfo:
    """A valid number. `zones` lists the IANA zones the number may be in (empty: unknown)."""

    e164: str
    region: str | None
    zones: tuple[str, ...]

    @property
    def zone(self) -> str | None:
        """The one zone of the number, or None when it is unknown or ambiguous."""
        return self.zones[0] if len(self.zones) == 1 else None


#: A number in up to this many zones gets a compound zone (calls must suit all of them);
#: beyond it the number could be anywhere in its country and the campaign's zone stands in.
MAX_COMPOUND_ZONES = 3
_ZONE_COLUMN_CHARS = 64


def contact_zone(zones: tuple[str, ...], default: str) -> str:
    """The zone that calling hours use for a number found in `zones`.

    One zone: that zone. Two or three (an area code spanning a zone line): a compound zone
    `A|B`, so that a call is placed only when it is legal in each. None or many (toll-free,
    country-wide mobile ranges): `default`, the campaign's zone.
    """
    if len(zones) == 1:
        return zones[0]
    if 1 < len(zones) <= MAX_COMPOUND_ZONES:
        compound = ZONE_SEPARATOR.join(sorted(zones))
        if len(compound) <= _ZONE_COLUMN_CHARS:
            return compound
    return default


@lru_cache(maxsize=512)
def _country_zones(country_code: int) -> tuple[str, ...]:
    zones = (
        _pntz._country_level_time_zones_for_number(
            phonenumbers.PhoneNumber(country_code=country_code, national_number=0)
        )
        if hasattr(_pntz, "_country_level_time_zones_for_number")
        else ()
    )
    return tuple(z for z in zones if z != _UNKNOWN_ZONE)


def _geographic_zones(e164_digits: str, country_code: int) -> tuple[str, ...]:
    if _TZ_DATA is None:  # pragma: no cover
        zones = _pntz.time_zones_for_geographical_number(phonenumbers.parse("+" + e164_digits))
        return tuple(z for z in zones if z != _UNKNOWN_ZONE)
    # The same longest-prefix lookup phonenumbers does, minus its per-call object churn.
    for n in range(min(len(e164_digits), _TZ_LONGEST), 0, -1):
        hit = _TZ_DATA.get(e164_digits[:n])
        if hit is not None:
            return tuple(z for z in hit if z != _UNKNOWN_ZONE)
    return _country_zones(country_code)


def _is_geographic(num_type: int, country_code: int) -> bool:
    return bool(phonenumbers.is_number_type_geographical(num_type, country_code))


@lru_cache(maxsize=64)
def _region_metadata(region: str) -> tuple[int, Any]:
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if md is None or md.country_code is None:
        raise PhoneError(f"{region!r} is not a region phonenumbers knows")
    return md.country_code, md


class PhoneNormalizer:
    """Turns raw strings into `PhoneInfo` for one default region (the campaign's).

    Call it once per number; it is stateless apart from caches, so one instance can serve a
    whole import.
    """

    def __init__(self, default_region: str) -> None:
        self.region = default_region.upper()
        self._cc, self._md = _region_metadata(self.region)

    def __call__(self, raw: str) -> PhoneInfo:
        """Normalise `raw`; raise `PhoneError` saying what is wrong with it."""
        if len(raw) > MAX_PHONE_CHARS:
            raise PhoneError(f"longer than {MAX_PHONE_CHARS} characters ({len(raw)})")
        try:
            p = phonenumbers.parse(raw, self.region)
        except NumberParseException as exc:
            raise PhoneError(_PARSE_REASONS.get(exc.error_type, "not a phone number")) from None
        cc = p.country_code or 0
        num_type = None
        region: str | None = self.region
        if cc == self._cc and _number_type_helper is not None:
            nsn = _pnu.national_significant_number(p)
            num_type = _number_type_helper(nsn, self._md)
            if num_type == PhoneNumberType.UNKNOWN:
                num_type = None  # maybe valid in a sibling region (Canada for +1): ask fully
        if num_type is None:
            region = phonenumbers.region_code_for_number(p)
            if region is None or not phonenumbers.is_valid_number_for_region(p, region):
                raise PhoneError(_invalid_reason(p))
            num_type = phonenumbers.number_type(p)
        e164 = phonenumbers.format_number(p, PhoneNumberFormat.E164)
        if _is_geographic(num_type, cc):
            zones = _geographic_zones(e164[1:], cc)
        else:
            zones = _country_zones(cc)
        return PhoneInfo(e164, None if region == "001" else region, zones)


_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code: write it as +CC... or "
    "check the campaign's default region",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


def _invalid_reason(p: phonenumbers.PhoneNumber) -> str:
    reason = phonenumbers.is_possible_number_with_reason(p)
    r = phonenumbers.ValidationResult
    text = {
        r.INVALID_COUNTRY_CODE: f"unknown country code +{p.country_code}",
        r.TOO_SHORT: "too short",
        r.TOO_LONG: "too long",
        r.INVALID_LENGTH: "wrong length for its country",
    }.get(reason, "not a valid number (no such range is allocated)")
    return f"invalid number: {text}"


def normalize(raw: str, default_region: str) -> PhoneInfo:
    """One-off form of `PhoneNormalizer(default_region)(raw)`."""
    return PhoneNormalizer(default_region)(raw)


def default_zone_for_region(region: str) -> str:
    """A sensible fallback zone for a region: its only zone, else its first listed zone."""
    cc, _ = _region_metadata(region.upper())
    example = phonenumbers.example_number(region.upper())
    if example is not None:
        zones = _pntz.time_zones_for_number(example)
        zones = tuple(z for z in zones if z != _UNKNOWN_ZONE)
        if zones:
            return str(zones[0])
    zones = _country_zones(cc)
    return zones[0] if zones else "UTC"
