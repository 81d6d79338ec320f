"""Campaigns in the database: validation, defaults, the state machine, the policy of a row."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

import pytest
from sqlalchemy import Engine, select

from dialer.campaigns import (
    CampaignError,
    campaign_info,
    campaign_policy,
    create_campaign,
    find_campaign_id,
    list_strategy_names,
    load_strategy,
    save_strategy,
    set_campaign_state,
)
from dialer.db.models import Campaign
from dialer.domain import CampaignChannel, CampaignState, DialMode
from strategies.model import BUILTIN_STRATEGIES, Step, Strategy

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def info(engine: Engine, cid: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return campaign_info(conn, cid).to_dict()


def state_of(engine: Engine, cid: int) -> str:
    with engine.connect() as conn:
        return conn.scalar(select(Campaign.state).where(Campaign.id == cid))  # type: ignore[return-value]


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"channel": "fax"}, "channel 'fax'"),
        ({"dial_mode": "turbo"}, "dial mode 'turbo'"),
        ({"default_region": "XX"}, "default region 'XX'"),
        ({"default_timezone": "Mars/Olympus_Mons"}, "time zone 'Mars/Olympus_Mons'"),
        ({"calling_hours": {"default": "9-8"}}, "calling_hours.default"),
        ({"calling_hours": {"funday": "09:00-17:00"}}, "unknown key 'funday'"),
        ({"calling_hours": {"mon": "18:00-09:00"}}, "calling_hours.mon"),
        ({"holidays": ["2026-12-25", "xmas"]}, "holidays[1]: 'xmas'"),
        ({"abandon_profile": "fr"}, "abandon profile 'fr'"),
        ({"abandon_target": 3.0}, "abandon target 3.0"),
        ({"abandon_target": 0.0}, "abandon target 0.0"),
        ({"abandon_window_s": 0}, "abandon window 0"),
        ({"strategy": "no-such-plan"}, "no strategy named 'no-such-plan'"),
        ({"dial_mode": "agentless"}, "an agentless campaign hands its answered calls to an IVR"),
        ({"dial_mode": "agentless", "ivr_flow": "Opt-Out"}, "IVR flow name 'Opt-Out'"),
    ],
    ids=lambda v: v if isinstance(v, str) else next(iter(v)),
)
def test_bad_setting_is_refused_with_a_message_naming_it(
    sqlite_engine: Engine, settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(CampaignError) as exc:
        create_campaign(sqlite_engine, "Renewals", NOW, **settings)
    assert named in str(exc.value)
    with sqlite_engine.connect() as conn:
        assert conn.scalar(select(Campaign.id)) is None, "a refused campaign must not be stored"


def test_an_agentless_campaign_keeps_the_ivr_flow_its_live_answers_go_to(
    sqlite_engine: Engine,
) -> None:
    cid = create_campaign(sqlite_engine, "Reminders", NOW, dial_mode="agentless",
                          ivr_flow="agentless_optout")
    with sqlite_engine.connect() as conn:
        info = campaign_info(conn, cid)
    assert (info.dial_mode, info.ivr_flow) == ("agentless", "agentless_optout")


def test_unknown_strategy_message_lists_the_known_ones(sqlite_engine: Engine) -> None:
    with pytest.raises(CampaignError, match="known: default, sms-only, voice-then-sms"):
        create_campaign(sqlite_engine, "Renewals", NOW, strategy="nope")


def test_blank_name_is_refused(sqlite_engine: Engine) -> None:
    with pytest.raises(CampaignError, match="needs a name"):
        create_campaign(sqlite_engine, "   ", NOW)


def test_duplicate_name_is_refused_naming_it(engine: Engine) -> None:
    create_campaign(engine, "Renewals", NOW)
    with pytest.raises(CampaignError, match="a campaign named 'Renewals' exists already"):
        create_campaign(engine, " Renewals ", NOW)


# --- defaults -------------------------------------------------------------------------------


def test_defaults_are_a_draft_progressive_voice_campaign_on_the_default_strategy(
    engine: Engine,
) -> None:
    cid = create_campaign(engine, "Renewals", NOW)
    got = info(engine, cid)
    assert (got["state"], got["dial_mode"], got["channel"], got["strategy"]) == (
        "draft", "progressive", "voice", "default")
    assert (got["default_region"], got["default_timezone"]) == ("US", "America/New_York")
    assert set(got["calling_hours"].values()) == {"08:00-21:00"}
    assert (got["holidays"], got["dnc_lists"], got["agent_groups"]) == ([], [], [])


@pytest.mark.parametrize(("region", "zone"), [("US", "America/New_York"),
                                              ("GB", "Europe/London"),
                                              ("gb", "Europe/London")])
def test_default_zone_follows_the_region(sqlite_engine: Engine, region: str, zone: str) -> None:
    cid = create_campaign(sqlite_engine, "c", NOW, default_region=region)
    got = info(sqlite_engine, cid)
    assert (got["default_region"], got["default_timezone"]) == (region.upper(), zone)


def test_explicit_zone_wins_over_the_region_default(sqlite_engine: Engine) -> None:
    cid = create_campaign(sqlite_engine, "c", NOW, default_timezone="America/Chicago")
    assert info(sqlite_engine, cid)["default_timezone"] == "America/Chicago"


@pytest.mark.parametrize(("profile", "expected"), [("us", (0.03, 30 * 86400, False)),
                                                   ("uk", (0.03, 86400, True))])
def test_abandon_profile_sets_target_window_and_uk_rules(
    sqlite_engine: Engine, profile: str, expected: tuple[float, int, bool]
) -> None:
    got = info(sqlite_engine, create_campaign(sqlite_engine, "c", NOW, abandon_profile=profile))
    assert (got["abandon_target"], got["abandon_window_s"], got["uk_rules"]) == expected


def test_abandon_overrides_replace_the_profile_values_but_keep_its_rules(
    sqlite_engine: Engine,
) -> None:
    cid = create_campaign(sqlite_engine, "c", NOW, abandon_profile="uk", abandon_target=0.02,
                          abandon_window_s=3600)
    got = info(sqlite_engine, cid)
    assert (got["abandon_target"], got["abandon_window_s"], got["uk_rules"]) == (0.02, 3600, True)


def test_lists_and_groups_are_created_on_first_mention_and_shared(engine: Engine) -> None:
    a = create_campaign(engine, "a", NOW, dnc_lists=["internal", "tps"], agent_groups=["sales"])
    b = create_campaign(engine, "b", NOW, dnc_lists=["tps"], agent_groups=["sales", "retention"])
    assert (info(engine, a)["dnc_lists"], info(engine, a)["agent_groups"]) == (
        ["internal", "tps"], ["sales"])
    assert (info(engine, b)["dnc_lists"], info(engine, b)["agent_groups"]) == (
        ["tps"], ["retention", "sales"])


# --- state machine --------------------------------------------------------------------------


def test_state_moves_draft_running_paused_running_stopped_running(engine: Engine) -> None:
    cid = create_campaign(engine, "c", NOW)
    moves = [CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.RUNNING,
             CampaignState.STOPPED, CampaignState.RUNNING]
    old_states = [set_campaign_state(engine, cid, new, LATER) for new in moves]
    assert old_states == ["draft", "running", "paused", "running", "stopped"]
    assert state_of(engine, cid) == "running"


def test_state_change_stamps_updated_at(sqlite_engine: Engine) -> None:
    cid = create_campaign(sqlite_engine, "c", NOW)
    set_campaign_state(sqlite_engine, cid, CampaignState.RUNNING, LATER)
    with sqlite_engine.connect() as conn:
        assert conn.scalar(select(Campaign.updated_at).where(Campaign.id == cid)) == LATER


@pytest.mark.parametrize(("path", "illegal"), [
    ([], CampaignState.PAUSED),
    ([], CampaignState.COMPLETED),
    ([CampaignState.STOPPED], CampaignState.PAUSED),
    ([CampaignState.RUNNING], CampaignState.DRAFT),
])
def test_illegal_move_is_refused_naming_both_states_and_changes_nothing(
    sqlite_engine: Engine, path: list[CampaignState], illegal: CampaignState
) -> None:
    cid = create_campaign(sqlite_engine, "c", NOW)
    for s in path:
        set_campaign_state(sqlite_engine, cid, s, NOW)
    before = state_of(sqlite_engine, cid)
    with pytest.raises(CampaignError) as exc:
        set_campaign_state(sqlite_engine, "c", illegal, LATER)
    assert str(exc.value) == f"campaign 'c' is {before}; it cannot go to {illegal.value}"
    assert state_of(sqlite_engine, cid) == before


def test_state_change_of_unknown_campaign_names_the_reference(sqlite_engine: Engine) -> None:
    with pytest.raises(CampaignError, match="no campaign 'ghost'"):
        set_campaign_state(sqlite_engine, "ghost", CampaignState.RUNNING, NOW)


# --- lookup ---------------------------------------------------------------------------------


def test_find_campaign_id_by_id_by_digit_string_and_by_name(engine: Engine) -> None:
    create_campaign(engine, "first", NOW)
    cid = create_campaign(engine, "Renewals Q4", NOW)
    with engine.connect() as conn:
        assert find_campaign_id(conn, cid) == cid
        assert find_campaign_id(conn, str(cid)) == cid
        assert find_campaign_id(conn, "Renewals Q4") == cid


@pytest.mark.parametrize("ref", ["nope", "999", 999])
def test_find_campaign_id_of_unknown_ref_says_where_to_look(
    sqlite_engine: Engine, ref: str | int
) -> None:
    with sqlite_engine.connect() as conn, pytest.raises(CampaignError) as exc:
        find_campaign_id(conn, ref)
    assert str(exc.value) == f"no campaign {ref!r} (see 'paceline campaign list')"


# --- policy and strategies ------------------------------------------------------------------


def test_campaign_policy_is_built_from_the_row(engine: Engine) -> None:
    cid = create_campaign(
        engine, "c", NOW, strategy="voice-then-sms", channel="voice+sms", dial_mode="predictive",
        calling_hours={"default": "09:00-20:00", "sat": "10:00-14:00", "sun": None},
        holidays=["2026-12-25", "2027-01-01"], abandon_profile="uk",
    )
    with engine.connect() as conn:
        policy = campaign_policy(conn, cid)
    assert policy.strategy == BUILTIN_STRATEGIES["voice-then-sms"]
    assert (policy.channel, policy.dial_mode) == (CampaignChannel.VOICE_SMS, DialMode.PREDICTIVE)
    assert policy.calling_hours.windows == (
        *[(time(9), time(20))] * 5, (time(10), time(14)), None)
    assert policy.holidays == frozenset({date(2026, 12, 25), date(2027, 1, 1)})
    assert policy.uk_rules is True


def test_save_strategy_replaces_the_definition_campaigns_see(engine: Engine) -> None:
    v1 = Strategy("mobile-first", (Step(2, tries=2), Step(1)), max_attempts=4)
    v2 = Strategy("mobile-first", (Step(1),), max_attempts=2)
    sid = save_strategy(engine, v1, NOW)
    cid = create_campaign(engine, "c", NOW, strategy="mobile-first")
    assert save_strategy(engine, v2, LATER) == sid, "replacing must keep the row"
    with engine.connect() as conn:
        assert load_strategy(conn, "mobile-first") == v2
        assert campaign_policy(conn, cid).strategy == v2
        assert list_strategy_names(conn).count("mobile-first") == 1


def test_load_strategy_falls_back_to_the_builtin_of_that_name(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert load_strategy(conn, "sms-only") == BUILTIN_STRATEGIES["sms-only"]
        assert list_strategy_names(conn) == ["default", "sms-only", "voice-then-sms"]


def test_saved_strategy_overrides_the_builtin_of_the_same_name(sqlite_engine: Engine) -> None:
    mine = Strategy("default", (Step(1, tries=3),), max_attempts=3)
    save_strategy(sqlite_engine, mine, NOW)
    with sqlite_engine.connect() as conn:
        assert load_strategy(conn, "default") == mine


def test_load_unknown_strategy_names_it_and_lists_the_known_ones(sqlite_engine: Engine) -> None:
    save_strategy(sqlite_engine, Strategy("mobile-first", (Step(2),)), NOW)
    with sqlite_engine.connect() as conn, pytest.raises(CampaignError) as exc:
        load_strategy(conn, "nope")
    assert str(exc.value) == (
        "no strategy named 'nope'; known: default, mobile-first, sms-only, voice-then-sms")


def test_an_all_digit_campaign_name_is_found_by_its_name(sqlite_engine: Engine) -> None:
    first = create_campaign(sqlite_engine, "first", NOW)
    named = create_campaign(sqlite_engine, str(first), NOW)  # a campaign called "1"
    with sqlite_engine.connect() as conn:
        assert find_campaign_id(conn, str(first)) == named
        assert find_campaign_id(conn, str(named)) == named
