"""A number whose area spans several zones: calls only when legal in every one of them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from dialer.campaigns import create_campaign
from dialer.db.models import Contact
from dialer.importer import import_contacts
from dialer.phones import contact_zone, normalize
from strategies.compliance import (
    CallingHours,
    Rule,
    check_calling_hours,
    next_allowed_time,
    zone,
    zones_open,
)

HOURS = CallingHours()
AK = "America/Adak|America/Anchorage"  # Adak is one hour behind Anchorage


def test_alaska_907_gets_a_compound_zone_not_the_campaign_default() -> None:
    info = normalize("(907) 555-0102", "US")
    assert set(info.zones) == {"America/Adak", "America/Anchorage"}
    assert contact_zone(info.zones, "America/New_York") == AK


def test_single_unknown_and_country_wide_zones() -> None:
    assert contact_zone(("Europe/London",), "America/New_York") == "Europe/London"
    assert contact_zone((), "America/New_York") == "America/New_York"
    us = normalize("+1 800 555 0105", "US").zones  # toll-free: anywhere in the US
    assert len(us) > 3
    assert contact_zone(us, "America/Chicago") == "America/Chicago"


def test_compound_zone_is_refused_until_every_zone_is_open() -> None:
    # 17:30 UTC = 08:30 Anchorage (AKST, -9) but 07:30 Adak (HST, -10).
    now = datetime(2026, 11, 23, 17, 30, tzinfo=UTC)
    assert check_calling_hours("America/Anchorage", now, HOURS, frozenset()) is None
    refusal = check_calling_hours(AK, now, HOURS, frozenset())
    assert refusal is not None and refusal.rule is Rule.CALLING_HOURS
    assert "America/Adak" in refusal.detail
    assert refusal.until == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # 08:00 Adak


def test_compound_zone_closes_with_the_earliest_closing_zone() -> None:
    # 06:30 UTC next day = 21:30 Anchorage (closed) but 20:30 Adak (open).
    now = datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
    assert check_calling_hours("America/Adak", now, HOURS, frozenset()) is None
    refusal = check_calling_hours(AK, now, HOURS, frozenset())
    assert refusal is not None
    assert refusal.until == datetime(2026, 11, 24, 18, 0, tzinfo=UTC)


def test_next_allowed_time_is_utc_and_inside_every_zone() -> None:
    t = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    nxt = next_allowed_time(AK, t, HOURS, frozenset())
    assert nxt == datetime(2026, 11, 23, 18, 0, tzinfo=UTC) and nxt.tzinfo is UTC
    for part in AK.split("|"):
        assert check_calling_hours(part, nxt, HOURS, frozenset()) is None


def test_disjoint_windows_never_open() -> None:
    narrow = CallingHours.from_dict({"default": "09:00-10:00"})
    assert (
        next_allowed_time(
            "Asia/Tokyo|America/New_York", datetime(2026, 1, 5, tzinfo=UTC), narrow, frozenset()
        )
        is None
    )


def test_zone_accepts_a_compound_name_and_dates_by_its_first_zone() -> None:
    assert zone(AK).key == "America/Adak"
    assert zones_open(
        [AK, "America/Anchorage"], datetime(2026, 11, 23, 17, 30, tzinfo=UTC), HOURS, frozenset()
    ) == {"America/Anchorage"}


def test_import_stores_the_compound_zone(sqlite_engine: Engine, tmp_path: Path) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    cid = create_campaign(sqlite_engine, "ak", now)
    f = tmp_path / "ak.csv"
    f.write_text("phone1\n(907) 555-0102\n")
    import_contacts(sqlite_engine, cid, f, now)
    with sqlite_engine.connect() as conn:
        assert conn.scalar(select(Contact.tz)) == AK
