"""ANI screen pop: normalisation, lookup by number on both databases, history, re-import."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, insert

from cti.events import CallEvent, CallEventKind
from cti.screenpop import ScreenPopper, lookup_caller, normalize_ani
from dialer.campaigns import create_campaign
from dialer.db import make_engine, migrate, write_transaction
from dialer.db.models import Attempt
from dialer.importer import import_contacts
from tests.factories import contact_row

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
MAP = "external_id=No,phone1=Mobile,phone2=Home,phone3=Work,param1=Name"


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("No,Mobile,Home,Work,Name\n" + "".join(r + "\n" for r in rows))
    return path


def load(engine: Engine, cid: int, path: Path, *rows: str) -> None:
    """Import `rows` (No,Mobile,Home,Work,Name) into campaign `cid` through the importer."""
    result = import_contacts(engine, cid, write_csv(path, list(rows)), NOW, mapping=MAP)
    assert not result.errors, result.errors


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("(212) 555-0142", "+12125550142"),
        ("2125550142", "+12125550142"),
        ("12125550142", "+12125550142"),
        ("+1 212 555 0142", "+12125550142"),
        ("011 44 20 7946 0958", "+442079460958"),
        ("442079460958", "+442079460958"),  # a carrier dropped the '+'
        ('"Ana" <+12125550142>', "+12125550142"),
        ("sip:+12125550142@10.0.0.1", "+12125550142"),
        ("<unknown>", None),
        ("anonymous", None),
        ("Anonymous", None),
        ("", None),
        ("1001", None),  # an internal extension is not a caller to look up
    ],
)
def test_normalize_ani_forms(raw: str, want: str | None) -> None:
    assert normalize_ani(raw, "US") == want


def test_normalize_ani_reads_national_numbers_in_the_default_region() -> None:
    assert normalize_ani("020 7946 0958", "GB") == "+442079460958"
    assert normalize_ani(None, "US") is None


@pytest.fixture
def cid(engine: Engine) -> int:
    return create_campaign(engine, "pop", NOW)


def test_known_number_in_slot_1_and_slot_3_matches(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    load(
        engine, cid, tmp_path / "a.csv",
        "A1,(212) 555-0142,,,Ana", "A2,(617) 555-0102,,(212) 555-0199,Ben",
    )
    one = lookup_caller(engine, "+12125550142")
    assert [(c.external_id, c.slots, c.params) for c in one.contacts] == [
        ("A1", (1,), {"param1": "Ana"})
    ]
    assert one.contacts[0].campaign_id == cid and one.contacts[0].campaign_name == "pop"
    assert one.contacts[0].state == "pending"
    three = lookup_caller(engine, "+12125550199")
    assert [(c.external_id, c.slots) for c in three.contacts] == [("A2", (3,))]


def test_two_contacts_sharing_a_number_are_both_returned(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    other = create_campaign(engine, "pop2", NOW)
    load(
        engine, cid, tmp_path / "a.csv",
        "A1,(212) 555-0142,,,Ana", "A2,(305) 555-0101,(212) 555-0142,,Ben",
    )
    load(engine, other, tmp_path / "b.csv", "B1,(212) 555-0142,,,Cy")
    pop = lookup_caller(engine, "+12125550142")
    assert [(c.campaign_name, c.external_id, c.slots) for c in pop.contacts] == [
        ("pop", "A1", (1,)), ("pop", "A2", (2,)), ("pop2", "B1", (1,))
    ]
    only = lookup_caller(engine, "+12125550142", campaign_id=other)
    assert [c.external_id for c in only.contacts] == ["B1"]


def test_unknown_and_withheld_callers_pop_unknown_caller(engine: Engine, cid: int) -> None:
    popper = ScreenPopper(engine, default_region="US")
    unknown = popper.pop(CallEvent(CallEventKind.INBOUND, "c1", caller_id="2125550000"), NOW)
    assert unknown is not None
    assert (unknown["type"], unknown["ani"], unknown["withheld"]) == (
        "unknown_caller", "+12125550000", False
    )
    withheld = popper.pop(CallEvent(CallEventKind.INBOUND, "c2", caller_id="<unknown>"), NOW)
    assert withheld is not None
    assert (withheld["type"], withheld["ani"], withheld["withheld"]) == (
        "unknown_caller", None, True
    )
    assert popper.pop(CallEvent(CallEventKind.HANGUP, "c1"), NOW) is None


def test_national_and_e164_ani_forms_pop_the_same_contact(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    load(engine, cid, tmp_path / "a.csv", "A1,+1 212 555 0142,,,Ana")
    popper = ScreenPopper(engine, default_region="US")
    for raw in ("2125550142", "+12125550142", "1 (212) 555-0142"):
        ev = popper.pop(CallEvent(CallEventKind.INBOUND, "c", caller_id=raw), NOW)
        assert ev is not None and ev["type"] == "screen_pop", raw
        assert [c["external_id"] for c in ev["contacts"]] == ["A1"]
        json.dumps(ev)  # the desktop gets JSON


def test_history_lists_the_latest_attempts_newest_first(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    load(engine, cid, tmp_path / "a.csv", "A1,(212) 555-0142,,,Ana")
    contact_id = lookup_caller(engine, "+12125550142").contacts[0].contact_id
    outcomes = ["busy", "no_answer", "human", "machine"]
    with write_transaction(engine) as conn:
        conn.execute(insert(Attempt), [
            {"contact_id": contact_id, "campaign_id": cid, "phone_index": 1,
             "number": "+12125550142", "channel": "voice",
             "placed_at": NOW - timedelta(hours=4 - i), "outcome": o,
             "agent": "agent7" if o == "human" else None}
            for i, o in enumerate(outcomes)
        ])
    pop = lookup_caller(engine, "+12125550142", limit=3)
    assert [h.outcome for h in pop.history] == ["machine", "human", "no_answer"]
    assert pop.history[1].agent == "agent7"
    assert pop.history[0].placed_at == NOW - timedelta(hours=1)


def test_reimport_that_changes_a_number_moves_the_match(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    load(engine, cid, tmp_path / "a.csv", "A1,(212) 555-0142,(305) 555-0101,,Ana")
    load(engine, cid, tmp_path / "b.csv", "A1,(415) 555-0100,,,Ana")
    assert not lookup_caller(engine, "+12125550142").known
    assert not lookup_caller(engine, "+13055550101").known  # the cleared slot is gone
    moved = lookup_caller(engine, "+14155550100")
    assert [(c.external_id, c.slots) for c in moved.contacts] == [("A1", (1,))]


def test_contacts_imported_without_external_id_are_found_too(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = tmp_path / "plain.csv"
    f.write_text("Mobile,Work\n(212) 555-0142,\n(617) 555-0102,(212) 555-0142\n")
    import_contacts(engine, cid, f, NOW, mapping="phone1=Mobile,phone3=Work")
    pop = lookup_caller(engine, "+12125550142")
    assert [c.slots for c in pop.contacts] == [(1,), (3,)]


def _as_stored(value: object, db: str) -> object:
    """What UtcDateTime would store: SQLite keeps naive UTC text."""
    if db == "sqlite" and isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_migration_backfills_contact_phones_from_existing_contacts(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}" if db == "sqlite" else request.getfixturevalue(
        "pg_schema"
    )
    eng = make_engine(url)
    try:
        migrate(eng, "0002")
        # Rows are written through the 0002 tables as the database has them (reflected), not
        # through today's models, which know columns later migrations add.
        with write_transaction(eng) as conn:
            old = MetaData()
            old.reflect(conn, only=["strategies", "campaigns", "contacts"])
            sid = conn.scalar(insert(old.tables["strategies"]).values(
                name="default", definition={"name": "default", "steps": [{"phone": 1}]},
                created_at=_as_stored(NOW, db)).returning(old.tables["strategies"].c.id))
            cid = conn.scalar(insert(old.tables["campaigns"]).values(
                name="old", channel="voice", dial_mode="progressive", state="draft",
                strategy_id=sid, default_region="US", default_timezone="America/New_York",
                holidays=[], abandon_target=0.03, abandon_window_s=86400, uk_rules=False,
                lease_ttl_s=300, created_at=_as_stored(NOW, db), updated_at=_as_stored(NOW, db),
            ).returning(old.tables["campaigns"].c.id))
            row = contact_row(cid, NOW, external_id="X1", phone1="+12125550142",
                              phone3="+12125550199")
            known = set(old.tables["contacts"].c.keys())
            conn.execute(insert(old.tables["contacts"]),
                         [{k: _as_stored(v, db) for k, v in row.items() if k in known}])
        migrate(eng, "0003")
        assert [(c.external_id, c.slots) for c in lookup_caller(eng, "+12125550199").contacts] == [
            ("X1", (3,))
        ]
        assert lookup_caller(eng, "+12125550142").contacts[0].slots == (1,)
    finally:
        eng.dispose()


async def test_run_emits_a_pop_for_each_inbound_event(engine: Engine, cid: int) -> None:
    async def stream() -> AsyncIterator[CallEvent]:
        yield CallEvent(CallEventKind.DIALING, "x")
        yield CallEvent(CallEventKind.INBOUND, "in1", caller_id="anonymous")

    got: list[dict[str, object]] = []

    async def emit(ev: dict[str, object]) -> None:
        got.append(ev)

    await ScreenPopper(engine, default_region="US").run(stream(), emit, lambda: NOW)
    assert [(e["type"], e["call_id"], e["at"]) for e in got] == [
        ("unknown_caller", "in1", NOW.isoformat())
    ]
