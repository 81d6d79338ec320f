"""DNC lists in the database, on SQLite and PostgreSQL: scopes, prefixes, expiry, import."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from dialer.campaigns import create_campaign
from dialer.db.models import DncEntry, DncList
from dialer.dnc import (
    DncError,
    add_entries,
    check_numbers,
    import_file,
    load_matcher,
    normalize_dnc_value,
    remove_entries,
)
from dialer.domain import DncSource

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
NYC = "+12125550142"
SF = "+14155550100"
LONDON = "+442079460018"


def entries(engine: Engine) -> list[tuple[str, bool, int | None, str | None, str]]:
    """(value, is_prefix, campaign_id, list name, source) of every entry, sorted."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(DncEntry.value, DncEntry.is_prefix, DncEntry.campaign_id, DncList.name,
                   DncEntry.source)
            .outerjoin(DncList, DncList.id == DncEntry.list_id)
        ).all()
    return sorted((tuple(r) for r in rows), key=str)  # type: ignore[misc]


def blocked(engine: Engine, number: str, campaign_id: int | None) -> bool:
    [check] = check_numbers(engine, [number], NOW, campaign_id=campaign_id)
    return check.blocked


# --- adding -------------------------------------------------------------------------------


def test_add_entries_normalises_numbers_to_e164(engine: Engine) -> None:
    added = add_entries(engine, ["(212) 555-0142", "+1 415 555 0100", "+44 20 7946 0018"], NOW)
    assert added == [NYC, SF, LONDON]
    assert entries(engine) == [(n, False, None, None, "manual") for n in sorted(added)]


def test_add_entries_uses_the_region_for_numbers_without_country_code(engine: Engine) -> None:
    assert add_entries(engine, ["020 7946 0018"], NOW, region="GB") == [LONDON]


def test_add_entries_is_all_or_nothing_and_names_the_bad_value(engine: Engine) -> None:
    with pytest.raises(DncError) as exc:
        add_entries(engine, ["(212) 555-0142", "555-01", "+1 415 555 0100"], NOW)
    assert str(exc.value).startswith("number '555-01': ")
    assert entries(engine) == []


def test_add_entries_refuses_a_campaign_and_a_list_together(engine: Engine) -> None:
    cid = create_campaign(engine, "c", NOW)
    with pytest.raises(DncError, match="a campaign or a list, not both"):
        add_entries(engine, [NYC], NOW, campaign_id=cid, list_name="tps")
    assert entries(engine) == []


def test_add_entries_for_an_unknown_campaign_names_its_id(engine: Engine) -> None:
    with pytest.raises(DncError, match="no campaign with id 4242"):
        add_entries(engine, [NYC], NOW, campaign_id=4242)


def test_add_entries_creates_a_named_list_once(engine: Engine) -> None:
    add_entries(engine, [NYC], NOW, list_name="tps")
    add_entries(engine, [SF], NOW, list_name="tps")
    with engine.connect() as conn:
        assert conn.scalars(select(DncList.name)).all() == ["tps"]
    assert [e[3] for e in entries(engine)] == ["tps", "tps"]


@pytest.mark.parametrize(("raw", "value"), [("+1212555", "+1212555"), ("1 (212) 555", "+1212555"),
                                            ("+44 20", "+4420")])
def test_prefix_keeps_its_digits_with_a_plus(raw: str, value: str) -> None:
    assert normalize_dnc_value(raw, "US", prefix=True) == value


@pytest.mark.parametrize("raw", ["", "+", "1234567890123456"])
def test_prefix_without_digits_or_too_long_is_refused(raw: str) -> None:
    with pytest.raises(DncError, match="give 1 to 15 digits"):
        normalize_dnc_value(raw, "US", prefix=True)


# --- scopes -------------------------------------------------------------------------------


def test_global_entry_blocks_every_campaign_and_the_global_check(engine: Engine) -> None:
    a = create_campaign(engine, "a", NOW)
    b = create_campaign(engine, "b", NOW, dnc_lists=["tps"])
    add_entries(engine, ["(212) 555-0142"], NOW)
    assert [blocked(engine, NYC, c) for c in (None, a, b)] == [True, True, True]


def test_campaign_entry_blocks_only_that_campaign(engine: Engine) -> None:
    a = create_campaign(engine, "a", NOW)
    b = create_campaign(engine, "b", NOW)
    add_entries(engine, [NYC], NOW, campaign_id=a)
    assert [blocked(engine, NYC, c) for c in (a, b, None)] == [True, False, False]


def test_list_entry_blocks_only_campaigns_referencing_the_list(engine: Engine) -> None:
    uses_tps = create_campaign(engine, "uk", NOW, default_region="GB", dnc_lists=["tps"])
    uses_other = create_campaign(engine, "us", NOW, dnc_lists=["internal"])
    no_lists = create_campaign(engine, "plain", NOW)
    add_entries(engine, [LONDON], NOW, list_name="tps")
    assert [blocked(engine, LONDON, c) for c in (uses_tps, uses_other, no_lists, None)] == [
        True, False, False, False]


def test_refusal_reason_names_the_scope_kind_and_source(engine: Engine) -> None:
    cid = create_campaign(engine, "c", NOW, dnc_lists=["tps"])
    add_entries(engine, [NYC], NOW, campaign_id=cid, source=DncSource.AGENT)
    add_entries(engine, [LONDON], NOW, list_name="tps")
    add_entries(engine, ["+1415555"], NOW, prefix=True, source=DncSource.SMS_STOP)
    checks = check_numbers(engine, [NYC, LONDON, SF], NOW, campaign_id=cid)
    assert [c.reason for c in checks] == [
        f"{NYC} matches campaign DNC number {NYC} (agent)",
        f"{LONDON} matches list:tps DNC number {LONDON} (manual)",
        f"{SF} matches global DNC prefix +1415555 (sms-stop)",
    ]


# --- prefixes and expiry ------------------------------------------------------------------


def test_prefix_entry_blocks_numbers_starting_with_it(engine: Engine) -> None:
    add_entries(engine, ["+1 212 555"], NOW, prefix=True)
    assert [blocked(engine, n, None) for n in ("(212) 555-0142", "(212) 555-0199",
                                               "(415) 555-0100")] == [True, True, False]


def test_expired_entry_does_not_match_but_one_expiring_later_does(engine: Engine) -> None:
    add_entries(engine, [NYC], NOW, expires_at=NOW - timedelta(seconds=1))
    add_entries(engine, ["+1415"], NOW, prefix=True, expires_at=NOW)
    add_entries(engine, [LONDON], NOW, expires_at=NOW + timedelta(days=1))
    assert [blocked(engine, n, None) for n in (NYC, SF, LONDON)] == [False, False, True]


def test_expired_entry_is_not_even_loaded(engine: Engine) -> None:
    add_entries(engine, [NYC], NOW, expires_at=NOW - timedelta(days=1))
    with engine.connect() as conn:
        assert len(load_matcher(conn, None, NOW)) == 0


# --- load_matcher ---------------------------------------------------------------------------


def test_load_matcher_with_numbers_loads_their_exact_entries_and_every_prefix(
    engine: Engine,
) -> None:
    cid = create_campaign(engine, "c", NOW)
    add_entries(engine, [NYC, SF, LONDON], NOW)
    add_entries(engine, ["+1808555", "+4420"], NOW, prefix=True)
    add_entries(engine, ["+1 312 555 0110"], NOW, campaign_id=cid)
    with engine.connect() as conn:
        some = load_matcher(conn, cid, NOW, [NYC, "+13125550110", "+13035550171"])
        every = load_matcher(conn, cid, NOW)
        global_only = load_matcher(conn, None, NOW, [NYC, "+13125550110"])
    assert len(some) == 4, "NYC, the campaign's 312 number and both prefixes"
    assert some.match(NYC, NOW) is not None
    assert some.match(SF, NOW) is None, "SF was not asked for, so it is not loaded"
    assert some.match("+18085550103", NOW) is not None
    assert len(every) == 6
    assert len(global_only) == 3, "NYC and both prefixes; the campaign entry is not global"


def test_load_matcher_with_no_numbers_loads_only_prefixes(engine: Engine) -> None:
    add_entries(engine, [NYC], NOW)
    add_entries(engine, ["+1212"], NOW, prefix=True)
    with engine.connect() as conn:
        assert len(load_matcher(conn, None, NOW, [])) == 1


# --- check_numbers ------------------------------------------------------------------------


def test_check_numbers_answers_each_number_with_a_reason(engine: Engine) -> None:
    add_entries(engine, [NYC], NOW)
    checks = check_numbers(engine, ["212-555-0142", "(415) 555-0100", "not a phone"], NOW)
    assert [(c.number, c.e164, c.blocked) for c in checks] == [
        ("212-555-0142", NYC, True), ("(415) 555-0100", SF, False), ("not a phone", None, False)]
    assert [c.reason for c in checks[1:]] == ["not on any applicable DNC list",
                                              "not a phone number"]


# --- import ---------------------------------------------------------------------------------


def test_import_plain_lines_keeps_good_ones_and_reports_bad_ones_by_line(
    engine: Engine, tmp_path: Path
) -> None:
    f = tmp_path / "dnc.txt"
    f.write_text("# opted out by phone\n(212) 555-0142\n\n555-01\n+1 415 555*\n"
                 "+44 20 7946 0018\nnot a number\n")
    result = import_file(engine, f, NOW)
    assert result.added == 3
    assert result.errors == [
        f"{f}:4: number '555-01': invalid number: too short",
        f"{f}:7: number 'not a number': not a phone number",
    ]
    assert entries(engine) == [
        (NYC, False, None, None, "import"),
        ("+1415555", True, None, None, "import"),
        (LONDON, False, None, None, "import"),
    ]


def test_import_csv_column_into_a_list(engine: Engine, tmp_path: Path) -> None:
    f = tmp_path / "tps.csv"
    f.write_text("Name,Phone\nAna,(212) 555-0142\nBen,\nGus,+44 20 7946 0018\n")
    result = import_file(engine, f, NOW, column="Phone", list_name="tps")
    assert (result.added, result.errors) == (2, [f"{f}:3: number '': not a phone number"])
    assert [(e[0], e[3]) for e in entries(engine)] == [(NYC, "tps"), (LONDON, "tps")]


def test_import_csv_with_unknown_column_names_it_and_adds_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    f = tmp_path / "tps.csv"
    f.write_text("Name,Phone\nAna,(212) 555-0142\n")
    with pytest.raises(DncError, match=r"no column 'Mobile' \(columns: Name, Phone\)"):
        import_file(engine, f, NOW, column="Mobile")
    assert entries(engine) == []


def test_import_into_a_campaign_scopes_the_entries(engine: Engine, tmp_path: Path) -> None:
    cid = create_campaign(engine, "c", NOW)
    f = tmp_path / "dnc.txt"
    f.write_text("(212) 555-0142\n")
    import_file(engine, f, NOW, campaign_id=cid)
    assert [blocked(engine, NYC, c) for c in (cid, None)] == [True, False]


def test_import_of_a_missing_file_names_it(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(DncError, match=r"missing\.txt: cannot read"):
        import_file(engine, tmp_path / "missing.txt", NOW)


# --- remove ---------------------------------------------------------------------------------


def test_remove_entries_deletes_the_number_in_every_scope(engine: Engine) -> None:
    cid = create_campaign(engine, "c", NOW)
    add_entries(engine, [NYC], NOW)
    add_entries(engine, [NYC], NOW, campaign_id=cid)
    add_entries(engine, [NYC], NOW, list_name="tps")
    add_entries(engine, [SF], NOW)
    assert remove_entries(engine, ["(212) 555-0142"]) == 3
    assert entries(engine) == [(SF, False, None, None, "manual")]


def test_remove_entries_keeps_numbers_and_prefixes_apart(engine: Engine) -> None:
    add_entries(engine, ["+1212555"], NOW, prefix=True)
    add_entries(engine, [NYC], NOW)
    assert remove_entries(engine, ["+1212555"], prefix=True) == 1
    assert remove_entries(engine, ["+1212555"], prefix=True) == 0
    assert entries(engine) == [(NYC, False, None, None, "manual")]


def test_remove_entries_with_a_bad_number_names_it(engine: Engine) -> None:
    with pytest.raises(DncError, match="number 'xyz'"):
        remove_entries(engine, ["xyz"])


def test_adding_a_number_twice_in_one_scope_stores_it_once(engine: Engine) -> None:
    first = add_entries(engine, ["(212) 555-0142", "212-555-0142"], NOW)
    again = add_entries(engine, ["+1 212 555 0142"], NOW)
    other_scope = add_entries(engine, ["+1 212 555 0142"], NOW, list_name="client")
    assert (first, again, other_scope) == (["+12125550142"], [], ["+12125550142"])


def test_dnc_import_counts_numbers_already_listed(engine: Engine, tmp_path: Path) -> None:
    add_entries(engine, ["(212) 555-0142"], NOW)
    f = tmp_path / "again.txt"
    f.write_text("(212) 555-0142\n(212) 555-0143\n(212) 555-0143\n")
    result = import_file(engine, f, NOW)
    assert (result.added, result.duplicates, result.errors) == (1, 2, [])
