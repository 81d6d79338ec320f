"""Strategy definitions: validation errors that name the source and key, round-trips, loading."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dialer.domain import Channel, Outcome
from strategies.model import (
    BUILTIN_STRATEGIES,
    DEFAULT_RETRY_DELAYS,
    Step,
    Strategy,
    StrategyError,
    format_duration,
    parse_duration,
)

SRC = "plans/test.toml"


def _minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "steps": [{"phone": 1}], **extra}


def _error(data: Any) -> str:
    with pytest.raises(StrategyError) as err:
        Strategy.from_dict(data, source=SRC)
    return str(err.value)


# --- from_dict -----------------------------------------------------------------------------------


def test_minimal_strategy_takes_the_documented_defaults() -> None:
    s = Strategy.from_dict(_minimal())
    assert s.steps == (Step(1, Channel.VOICE, 1),)
    assert s.max_attempts == 10
    assert s.max_attempts_per_day == 3
    assert s.switch_to_sms_on == frozenset()
    assert s.sms_switch_delay == timedelta(0)
    assert s.skip_phone_on == frozenset({Outcome.FAILED})
    assert dict(s.retry_delays) == dict(DEFAULT_RETRY_DELAYS)


def test_retry_delays_override_only_the_outcomes_given() -> None:
    s = Strategy.from_dict(_minimal(retry_delays={"busy": "2m", "no_answer": 90}))
    assert s.retry_delay(Outcome.BUSY) == timedelta(minutes=2)
    assert s.retry_delay(Outcome.NO_ANSWER) == timedelta(seconds=90)
    assert s.retry_delay(Outcome.MACHINE) == DEFAULT_RETRY_DELAYS[Outcome.MACHINE]
    assert s.retry_delay(None) == timedelta(0)


def test_retry_delay_for_an_outcome_without_any_delay_is_zero() -> None:
    assert Strategy.from_dict(_minimal()).retry_delay(Outcome.HUMAN) == timedelta(0)


def test_name_is_stripped() -> None:
    assert Strategy.from_dict(_minimal(name="  nightly  ")).name == "nightly"


def test_unknown_top_level_key_names_source_and_key() -> None:
    msg = _error(_minimal(retries=3))
    assert msg.startswith(f"{SRC}: ")
    assert "'retries'" in msg


def test_not_a_table_is_refused_with_the_source() -> None:
    assert _error([1, 2]) == f"{SRC}: a strategy must be a table of keys"


@pytest.mark.parametrize("name", [None, "", "   ", 7, "x" * 65])
def test_bad_name_is_refused(name: Any) -> None:
    msg = _error({"name": name, "steps": [{"phone": 1}]})
    assert msg.startswith(SRC) and "'name'" in msg


@pytest.mark.parametrize("steps", [[], None, "phone1", {"phone": 1}])
def test_empty_or_non_list_steps_are_refused(steps: Any) -> None:
    assert _error({"name": "t", "steps": steps}) == (
        f"{SRC}: 'steps' must be a non-empty list of steps"
    )


@pytest.mark.parametrize("phone", [0, 6, -1, "1", True, 1.0])
def test_bad_phone_slot_names_the_step_and_key(phone: Any) -> None:
    msg = _error({"name": "t", "steps": [{"phone": 1}, {"phone": phone}]})
    assert msg.startswith(f"{SRC}: steps[1].phone: {phone!r}")
    assert "from 1 to 5" in msg


def test_missing_phone_slot_is_refused() -> None:
    assert _error({"name": "t", "steps": [{"tries": 2}]}).startswith(f"{SRC}: steps[0].phone: 0")


def test_phone_slots_one_to_five_are_accepted() -> None:
    s = Strategy.from_dict({"name": "t", "steps": [{"phone": k} for k in range(1, 6)]})
    assert [st.phone for st in s.steps] == [1, 2, 3, 4, 5]


def test_bad_channel_names_the_step_and_key() -> None:
    msg = _error({"name": "t", "steps": [{"phone": 1, "channel": "fax"}]})
    assert msg == f"{SRC}: steps[0].channel: 'fax' must be 'voice' or 'sms'"


@pytest.mark.parametrize("tries", [0, 101, "2"])
def test_bad_tries_names_the_step_and_key(tries: Any) -> None:
    msg = _error({"name": "t", "steps": [{"phone": 1, "tries": tries}]})
    assert msg.startswith(f"{SRC}: steps[0].tries: {tries!r}")


def test_unknown_step_key_names_the_step() -> None:
    msg = _error({"name": "t", "steps": [{"phone": 1, "delay": "5m"}]})
    assert msg.startswith(f"{SRC}: steps[0]: unknown key 'delay'")


def test_step_that_is_not_a_table_is_refused() -> None:
    assert _error({"name": "t", "steps": [1]}).startswith(f"{SRC}: steps[0]: ")


def test_bad_outcome_in_retry_delays_names_the_key() -> None:
    msg = _error(_minimal(retry_delays={"bussy": "5m"}))
    assert msg.startswith(f"{SRC}: retry_delays.bussy: unknown outcome 'bussy'")
    assert "busy" in msg  # the valid outcomes are listed


@pytest.mark.parametrize("key", ["switch_to_sms_on", "skip_phone_on"])
def test_bad_outcome_in_outcome_list_names_key_and_position(key: str) -> None:
    msg = _error(_minimal(**{key: ["busy", "engaged"]}))
    assert msg.startswith(f"{SRC}: {key}[1]: unknown outcome 'engaged'")


@pytest.mark.parametrize("key", ["switch_to_sms_on", "skip_phone_on"])
def test_outcome_list_given_as_a_string_is_refused(key: str) -> None:
    assert _error(_minimal(**{key: "busy"})) == f"{SRC}: '{key}' must be a list of outcomes"


def test_bad_duration_in_retry_delays_names_the_key() -> None:
    msg = _error(_minimal(retry_delays={"busy": "five minutes"}))
    assert msg.startswith(f"{SRC}: retry_delays.busy: 'five minutes' is not a duration")


def test_bad_sms_switch_delay_names_the_key() -> None:
    msg = _error(_minimal(sms_switch_delay="soon"))
    assert msg.startswith(f"{SRC}: sms_switch_delay: 'soon'")


def test_retry_delays_that_is_not_a_table_is_refused() -> None:
    assert "'retry_delays'" in _error(_minimal(retry_delays=["busy"]))


@pytest.mark.parametrize(("key", "value"), [("max_attempts", 0), ("max_attempts_per_day", 101)])
def test_bad_limits_name_the_key(key: str, value: int) -> None:
    msg = _error(_minimal(**{key: value}))
    assert SRC in msg and key in msg and str(value) in msg


def test_empty_skip_phone_on_list_disables_skipping() -> None:
    assert Strategy.from_dict(_minimal(skip_phone_on=[])).skip_phone_on == frozenset()


# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (300, timedelta(seconds=300)),
        (1.5, timedelta(seconds=1.5)),
        (0, timedelta(0)),
        ("300", timedelta(seconds=300)),
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 10 m ", timedelta(minutes=10)),
    ],
)
def test_parse_duration_accepts_numbers_and_unit_suffixes(value: Any, expected: timedelta) -> None:
    assert parse_duration(value, "x") == expected


@pytest.mark.parametrize(
    "value", ["", "5 minutes", "1w", "-5m", "h", True, None, float("inf"), float("nan"), "1e99d"]
)
def test_parse_duration_refuses_other_forms_naming_where(value: Any) -> None:
    with pytest.raises(StrategyError) as err:
        parse_duration(value, "retry_delays.busy")
    assert str(err.value).startswith("retry_delays.busy: ")


def test_parse_duration_refuses_negative_numbers() -> None:
    with pytest.raises(StrategyError, match="cannot be negative"):
        parse_duration(-5, "where")


def test_parse_duration_refuses_a_duration_too_long_for_a_timedelta() -> None:
    with pytest.raises(StrategyError, match="infinite, NaN or too long"):
        parse_duration("99999999999d", "where")


@pytest.mark.parametrize(
    ("d", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=1), "1d"),
        (timedelta(hours=36), "36h"),
    ],
)
def test_format_duration_uses_the_largest_whole_unit(d: timedelta, text: str) -> None:
    assert format_duration(d) == text
    assert parse_duration(text, "x") == d


# --- round-trips and files -----------------------------------------------------------------------


def test_builtins_are_default_voice_then_sms_and_sms_only() -> None:
    assert set(BUILTIN_STRATEGIES) == {"default", "voice-then-sms", "sms-only"}


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
def test_builtin_round_trips_through_to_dict(name: str) -> None:
    s = BUILTIN_STRATEGIES[name]
    assert Strategy.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
def test_builtin_round_trips_through_json_text(name: str) -> None:
    s = BUILTIN_STRATEGIES[name]
    assert Strategy.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_custom_strategy_round_trips_through_to_dict() -> None:
    s = Strategy.from_dict({
        "name": "custom",
        "steps": [{"phone": 2, "tries": 3}, {"phone": 1, "channel": "sms"}],
        "retry_delays": {"busy": "90s", "machine": "1d"},
        "max_attempts": 7,
        "max_attempts_per_day": 2,
        "switch_to_sms_on": ["busy", "no_answer"],
        "sms_switch_delay": "10m",
        "skip_phone_on": ["failed", "rejected"],
    })
    assert Strategy.from_dict(s.to_dict()) == s


def test_load_reads_a_toml_file(tmp_path: Path) -> None:
    p = tmp_path / "evening.toml"
    p.write_text(
        'name = "evening"\n'
        'max_attempts = 4\n'
        'switch_to_sms_on = ["busy"]\n'
        'sms_switch_delay = "15m"\n'
        "[retry_delays]\n"
        'busy = "2m"\n'
        "[[steps]]\n"
        "phone = 1\n"
        "tries = 2\n"
        "[[steps]]\n"
        "phone = 2\n"
        'channel = "sms"\n'
    )
    s = Strategy.load(p)
    assert s.name == "evening"
    assert s.steps == (Step(1, Channel.VOICE, 2), Step(2, Channel.SMS, 1))
    assert s.max_attempts == 4
    assert s.switch_to_sms_on == {Outcome.BUSY}
    assert s.sms_switch_delay == timedelta(minutes=15)
    assert s.retry_delay(Outcome.BUSY) == timedelta(minutes=2)


def test_load_reads_a_json_file(tmp_path: Path) -> None:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(BUILTIN_STRATEGIES["voice-then-sms"].to_dict()))
    assert Strategy.load(p) == BUILTIN_STRATEGIES["voice-then-sms"]


def test_load_validation_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('name = "bad"\n[[steps]]\nphone = 6\n')
    with pytest.raises(StrategyError) as err:
        Strategy.load(p)
    assert str(err.value).startswith(f"{p}: steps[0].phone: 6")


def test_load_infinite_toml_duration_is_a_strategy_error(tmp_path: Path) -> None:
    p = tmp_path / "inf.toml"
    p.write_text('name = "x"\nsms_switch_delay = inf\n[[steps]]\nphone = 1\n')
    with pytest.raises(StrategyError, match="sms_switch_delay"):
        Strategy.load(p)


def test_load_syntax_error_names_the_file_and_format(tmp_path: Path) -> None:
    toml, js = tmp_path / "broken.toml", tmp_path / "broken.json"
    toml.write_text("name = \n")
    js.write_text("{name: 1}")
    with pytest.raises(StrategyError) as err:
        Strategy.load(toml)
    assert str(err.value).startswith(f"{toml}: not valid toml: ")
    with pytest.raises(StrategyError) as err:
        Strategy.load(js)
    assert str(err.value).startswith(f"{js}: not valid json: ")


def test_load_missing_file_says_it_cannot_read(tmp_path: Path) -> None:
    p = tmp_path / "absent.toml"
    with pytest.raises(StrategyError) as err:
        Strategy.load(p)
    assert str(err.value).startswith(f"{p}: cannot read: ")
