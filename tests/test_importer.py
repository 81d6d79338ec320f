"""Contact import: precise errors, every good row kept, upsert by external id, DNC marking."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update

from dialer.campaigns import create_campaign
from dialer.db.models import CampaignZone, Contact
from dialer.dnc import add_entries
from dialer.importer import ImportFileError, import_contacts, parse_mapping

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
MAP = "external_id=CustomerNo,phone1=Mobile,phone2=Home,param1=Name"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def contacts(engine: Engine, cid: int) -> dict[str, Contact]:
    with engine.connect() as conn:
        rows = conn.execute(select(Contact).where(Contact.campaign_id == cid)).all()
    return {r.external_id: r for r in rows}  # type: ignore[misc]


@pytest.fixture
def cid(engine: Engine) -> int:
    return create_campaign(engine, "imp", NOW)


def test_bad_rows_are_reported_precisely_and_good_rows_land(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(
        tmp_path / "list.csv",
        "CustomerNo,Mobile,Home,Name\n"
        "A1,(212) 555-0142,,Ana\n"
        "A2,12,,Ben\n"
        "A3,(415) 555-0100,+1 999 000,Chloé\n"
        "A4,(305) 555-0101,,A name that is much longer than forty characters\n"
        "A5,,,Dev\n"
        "A6,(617) 555-0102,,Eva\n",
    )
    result = import_contacts(engine, cid, f, NOW, mapping=MAP)
    assert (result.rows, result.inserted, result.rejected_rows) == (6, 2, 4)
    got = [(e.line, e.column, e.field, e.value) for e in result.errors]
    assert got == [
        (3, "Mobile", "phone1", "12"),
        (4, "Home", "phone2", "+1 999 000"),
        (5, "Name", "param1", "A name that is much longer than forty characters"),
        (6, "Mobile", "phone1", ""),
    ]
    assert "too short" in result.errors[0].reason
    assert "longer than 40 characters" in result.errors[2].reason
    assert "mandatory" in result.errors[3].reason
    assert str(result.errors[0]).startswith(f"{f}:3: column 'Mobile' (phone1): '12': ")
    assert set(contacts(engine, cid)) == {"A1", "A6"}
    # The report lists every rejected field, with the same facts.
    assert result.error_report == str(f) + ".errors.csv"
    with open(result.error_report, newline="") as fh:
        report = list(csv.DictReader(fh))
    assert [(r["line"], r["column"], r["value"]) for r in report] == [
        (str(e.line), e.column, e.value) for e in result.errors
    ]


def test_line_numbers_count_multiline_fields_and_blank_lines(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(
        tmp_path / "ml.csv",
        "CustomerNo,Mobile,Home,Name\n"
        'B1,(212) 555-0142,,"two\nlines"\n'
        "\n"
        "B2,bad,,Ben\n"
        'B3,(212) 555-0143,,"x"\n'
        'B4,"(212) 555-0144",too,many,columns\n',
    )
    result = import_contacts(engine, cid, f, NOW, mapping=MAP)
    assert [(e.line, e.field) for e in result.errors] == [(5, "phone1"), (7, "*")]
    assert "the header has 4 columns" in result.errors[1].reason
    assert contacts(engine, cid)["B1"].param1 == "two\nlines"
    assert contacts(engine, cid)["B1"].source_line == 2


def test_every_field_rule_is_enforced(engine: Engine, cid: int, tmp_path: Path) -> None:
    long_id = "X" * 65
    f = write(
        tmp_path / "rules.csv",
        "id,phone1,tz,priority\n"
        f"{long_id},(212) 555-0142,,\n"
        "C2,(212) 555-0142,Mars/Base,\n"
        "C3,(212) 555-0142,,high\n"
        "C4,2125550142 2125550142 2125550142,,\n"
        "C5,(212) 555-0142,America/Chicago,5\n",
    )
    result = import_contacts(
        engine, cid, f, NOW, mapping="external_id=id,phone1=phone1,tz=tz,priority=priority"
    )
    reasons = {e.field: e.reason for e in result.errors}
    assert "longer than 64 characters" in reasons["external_id"]
    assert "unknown time zone" in reasons["tz"]
    assert "whole number" in reasons["priority"]
    assert "longer than 28 characters" in reasons["phone1"]
    c5 = contacts(engine, cid)["C5"]
    assert (c5.tz, c5.tz_override, c5.priority) == ("America/Chicago", "America/Chicago", 5)


def test_reimport_with_external_ids_updates_instead_of_duplicating(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(
        tmp_path / "a.csv",
        "CustomerNo,Mobile,Home,Name\nD1,(212) 555-0142,,Ana\nD2,(415) 555-0100,,Ben\n",
    )
    first = import_contacts(engine, cid, f, NOW, mapping=MAP)
    assert (first.inserted, first.updated) == (2, 0)
    # D2 is out with the dialer meanwhile: a re-import must not disturb its state.
    with engine.begin() as conn:
        conn.execute(
            update(Contact).where(Contact.external_id == "D2").values(state="sent_to_dialer")
        )
    f2 = write(
        tmp_path / "b.csv",
        "CustomerNo,Mobile,Home,Name\n"
        "D1,(212) 555-0199,(212) 555-0100,Ana B\n"
        "D2,(415) 555-0101,,Ben B\nD3,(617) 555-0102,,Cy\n",
    )
    again = import_contacts(engine, cid, f2, NOW, mapping=MAP)
    assert (again.inserted, again.updated) == (1, 2)
    got = contacts(engine, cid)
    assert len(got) == 3
    assert (got["D1"].phone1, got["D1"].phone2, got["D1"].param1) == (
        "+12125550199",
        "+12125550100",
        "Ana B",
    )
    assert (got["D2"].phone1, got["D2"].state) == ("+14155550101", "sent_to_dialer")


def test_duplicate_external_id_in_one_file_keeps_the_later_line(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(
        tmp_path / "dup.csv",
        "CustomerNo,Mobile,Home,Name\nE1,(212) 555-0142,,first\nE1,(212) 555-0143,,second\n",
    )
    result = import_contacts(engine, cid, f, NOW, mapping=MAP)
    assert (result.inserted, result.updated) == (1, 1)
    assert contacts(engine, cid)["E1"].param1 == "second"


def test_contact_whose_every_number_is_dnc_is_marked_dnc_listed(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    add_entries(engine, ["(212) 555-0142"], NOW)
    add_entries(engine, ["+1415555"], NOW, prefix=True, campaign_id=cid)
    f = write(
        tmp_path / "dnc.csv",
        "CustomerNo,Mobile,Home,Name\n"
        "F1,(212) 555-0142,,all dnc\n"
        "F2,(212) 555-0142,(617) 555-0102,phone2 ok\n"
        "F3,(212) 555-0142,(415) 555-0100,both dnc\n",
    )
    result = import_contacts(engine, cid, f, NOW, mapping=MAP)
    assert result.dnc_listed == 2
    got = contacts(engine, cid)
    assert got["F1"].state == "dnc_listed" and got["F1"].due_at is None
    assert "dnc" in (got["F1"].state_reason or "")
    assert (got["F2"].state, got["F2"].next_phone) == ("pending", 2)
    assert got["F3"].state == "dnc_listed"
    assert "+1415555" in (got["F3"].state_reason or "")


def test_zone_comes_from_phone1_and_campaign_zones_are_recorded(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(
        tmp_path / "tz.csv",
        "CustomerNo,Mobile,Home,Name\n"
        "G1,(212) 555-0142,,ny\nG2,(415) 555-0100,(212) 555-0143,la\n"
        "G3,+44 20 7946 0018,,london\nG4,+1 800 555 0105,,toll-free\n",
    )
    import_contacts(engine, cid, f, NOW, mapping=MAP)
    got = contacts(engine, cid)
    assert got["G1"].tz == "America/New_York"
    assert got["G2"].tz == "America/Los_Angeles"
    assert (got["G3"].tz, got["G3"].region) == ("Europe/London", "GB")
    # A toll-free number has no single zone: the campaign's default zone is used.
    assert got["G4"].tz == "America/New_York"
    with engine.connect() as conn:
        zones = set(conn.scalars(select(CampaignZone.tz).where(CampaignZone.campaign_id == cid)))
    assert zones == {"America/New_York", "America/Los_Angeles", "Europe/London"}


def test_new_contacts_are_due_now_with_the_strategy_first_step(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(tmp_path / "plan.csv", "CustomerNo,Mobile,Home,Name\nH1,(212) 555-0142,,x\n")
    import_contacts(engine, cid, f, NOW, mapping=MAP)
    h1 = contacts(engine, cid)["H1"]
    assert (h1.state, h1.due_at, h1.next_step, h1.next_phone, h1.next_channel) == (
        "pending",
        NOW,
        0,
        1,
        "voice",
    )
    assert (h1.phone1_raw, h1.source_file) == ("(212) 555-0142", str(f))


def test_without_map_columns_named_like_fields_are_used(
    engine: Engine, cid: int, tmp_path: Path
) -> None:
    f = write(tmp_path / "plain.csv", "phone1,param2,ignored\n(212) 555-0142,gold,zzz\n")
    result = import_contacts(engine, cid, f, NOW)
    assert result.inserted == 1
    with engine.connect() as conn:
        assert conn.scalar(select(Contact.param2)) == "gold"


@pytest.mark.parametrize(
    ("text", "mapping", "message"),
    [
        ("", None, "empty"),
        ("Mobile\n(212) 555-0142\n", None, "no column is mapped to phone1"),
        ("Mobile\n(212) 555-0142\n", "phone1=Cell", "phone1=Cell"),
    ],
)
def test_file_level_problems_raise_before_writing(
    engine: Engine, cid: int, tmp_path: Path, text: str, mapping: str | None, message: str
) -> None:
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(ImportFileError, match=message) as exc:
        import_contacts(engine, cid, f, NOW, mapping=mapping)
    assert str(f) in str(exc.value)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Contact)) == 0


def test_unknown_mapping_field_is_named() -> None:
    with pytest.raises(ImportFileError, match="unknown field 'phone9'"):
        parse_mapping("phone9=X")
    assert parse_mapping("phone1=Mobile, param3=Plan") == {"phone1": "Mobile", "param3": "Plan"}


def test_missing_file_is_a_file_error(engine: Engine, cid: int, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        import_contacts(engine, cid, tmp_path / "nope.csv", NOW)


def test_row_that_is_not_utf8_is_rejected_and_others_kept(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    cid = create_campaign(sqlite_engine, "enc", NOW)
    f = tmp_path / "latin1.csv"
    f.write_bytes("phone1,param1\n(212) 555-0142,Jos\xe9\n(212) 555-0143,ok\n".encode("latin-1"))
    result = import_contacts(sqlite_engine, cid, f, NOW)
    assert result.inserted == 1
    assert [(e.line, e.field) for e in result.errors] == [(2, "param1")]
    assert "UTF-8" in result.errors[0].reason


def test_worker_processes_give_the_same_result_as_inline(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    lines = ["CustomerNo,Mobile,Home,Name"]
    for i in range(3000):
        mobile = "bad" if i % 97 == 0 else f"(212) 555-{i % 10000:04d}"
        lines.append(f"K{i},{mobile},(415) 555-{(i * 7) % 10000:04d},n{i}")
    f = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    c1 = create_campaign(sqlite_engine, "inline", NOW)
    c2 = create_campaign(sqlite_engine, "pool", NOW)
    seen: list[int] = []
    r1 = import_contacts(
        sqlite_engine, c1, f, NOW, mapping=MAP, workers=0, error_report=tmp_path / "r1.csv"
    )
    r2 = import_contacts(
        sqlite_engine,
        c2,
        f,
        NOW,
        mapping=MAP,
        workers=2,
        error_report=tmp_path / "r2.csv",
        progress=seen.append,
    )
    assert (r1.inserted, r1.rejected_rows) == (r2.inserted, r2.rejected_rows) == (2969, 31)
    assert [str(e) for e in r1.errors] == [str(e) for e in r2.errors]
    assert sum(seen) == len(f.read_text())

    def snapshot(cid: int) -> list[tuple[object, ...]]:
        with sqlite_engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    select(
                        Contact.external_id,
                        Contact.phone1,
                        Contact.phone2,
                        Contact.tz,
                        Contact.state,
                        Contact.next_phone,
                        Contact.source_line,
                    )
                    .where(Contact.campaign_id == cid)
                    .order_by(Contact.external_id)
                )
            ]

    assert snapshot(c1) == snapshot(c2)


def test_consecutive_imports_plan_with_their_own_campaign_strategy(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    voice = create_campaign(sqlite_engine, "voice", NOW)
    sms = create_campaign(sqlite_engine, "sms", NOW, strategy="sms-only", channel="sms")
    f = write(tmp_path / "one.csv", "phone1\n(212) 555-0142\n")
    for _ in range(3):  # objects freed between imports must not leak a plan across campaigns
        import_contacts(sqlite_engine, voice, f, NOW, workers=0)
        import_contacts(sqlite_engine, sms, f, NOW, workers=0)
    with sqlite_engine.connect() as conn:
        channels = dict(conn.execute(
            select(Contact.campaign_id, Contact.next_channel).distinct()).all())
    assert channels == {voice: "voice", sms: "sms"}
