"""The fast phone path must give exactly what phonenumbers' public API gives."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat
from phonenumbers import timezone as pntz

from dialer.phones import PhoneError, PhoneNormalizer, default_zone_for_region, normalize

SAMPLES = [
    "(212) 555-0142",
    "212-555-0199",
    "+1 415 555 0100",
    "14155550101",
    "(907) 555-0102",
    "(808) 555-0103",
    "+1 416 555 0104",  # Toronto: +1 but Canada, not the default region
    "+1 800 555 0105",  # toll-free: not geographic
    "+44 20 7946 0018",
    "+44 7911 123456",
    "+61 2 9374 4000",
    "+61 412 345 678",
    "+7 916 123 45 67",
    "+49 30 123456",
    "+33 1 42 68 53 00",
    "+55 11 91234 5678",
    "+52 55 1234 5678",
    "+91 98765 43210",
    "+81 3 1234 5678",
    "+1 242 357 1234",
]


def _public(raw: str, region: str) -> tuple[str, str | None, tuple[str, ...]]:
    p = phonenumbers.parse(raw, region)
    assert phonenumbers.is_valid_number(p), raw
    zones = tuple(z for z in pntz.time_zones_for_number(p) if z != "Etc/Unknown")
    rc = phonenumbers.region_code_for_number(p)
    return phonenumbers.format_number(p, PhoneNumberFormat.E164), rc, zones


@pytest.mark.parametrize("region", ["US", "GB", "AU"])
def test_fast_path_matches_public_api_on_fixed_samples(region: str) -> None:
    norm = PhoneNormalizer(region)
    for raw in SAMPLES:
        if not raw.startswith("+") and region != "US":
            continue
        info = norm(raw)
        assert (info.e164, info.region, info.zones) == _public(raw, region), raw


def test_fast_path_matches_public_api_on_random_valid_numbers() -> None:
    rng = random.Random(4475)
    norm = {r: PhoneNormalizer(r) for r in ("US", "GB", "CA")}
    checked = 0
    while checked < 3000:
        region = rng.choice(["US", "GB", "CA"])
        example = phonenumbers.example_number_for_type(
            region,
            rng.choice(
                [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE]
            ),
        )
        digits = str(example.national_number)
        # Vary the subscriber part; keep only numbers the public API calls valid.
        mutated = digits[:-4] + f"{rng.randint(0, 9999):04d}"
        raw = rng.choice([mutated, "+" + str(example.country_code) + mutated])
        p = phonenumbers.parse(raw, region)
        if not phonenumbers.is_valid_number(p):
            with pytest.raises(PhoneError):
                norm[region](raw)
            continue
        info = norm[region](raw)
        assert (info.e164, info.region, info.zones) == _public(raw, region), raw
        checked += 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12", "too short"),
        ("+999 1234567", "unknown country code"),
        ("call me", "not a phone number"),
        ("+1 212 000 0000", "not a valid number"),
        ("2125550142" * 3, "longer than 28 characters"),
        ("+1 212 555 01423", "too long"),
    ],
)
def test_invalid_numbers_say_why(raw: str, reason: str) -> None:
    with pytest.raises(PhoneError, match=reason):
        normalize(raw, "US")


def test_zone_is_single_or_none() -> None:
    assert normalize("(212) 555-0142", "US").zone == "America/New_York"
    assert normalize("(415) 555-0100", "US").zone == "America/Los_Angeles"
    # A toll-free number could be anywhere in the country: no single zone.
    assert normalize("+1 800 555 0105", "US").zone is None


def test_default_zone_for_region() -> None:
    assert default_zone_for_region("US") == "America/New_York"
    assert default_zone_for_region("gb") == "Europe/London"
    with pytest.raises(PhoneError):
        default_zone_for_region("XX")
