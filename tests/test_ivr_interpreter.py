"""The sans-IO IVR interpreter (`ivr.interpreter.Session`), node by node.

Flows are built straight from the model dataclasses (`build`/`flow` below), so these tests do
not depend on the YAML loader. `Call` drives a session the way a driver would and remembers
the ids of the current playback, timer and request. Payments: tests/test_ivr_pay.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, TypeVar

import pytest

from ivr import model
from ivr.expr import compile_expr
from ivr.interpreter import MAX_NODES_WITHOUT_WAIT, VERIFY_INTER_DIGIT_S, Session
from ivr.protocol import (
    AddDnc,
    CallerHangup,
    CancelTimer,
    Command,
    CreateCallback,
    Dtmf,
    EstimateWait,
    Event,
    FindContact,
    Finished,
    HangupCall,
    HttpLookup,
    Play,
    PlaybackFinished,
    RecordingFinished,
    SecureMode,
    SendSms,
    ServiceDone,
    StartRecording,
    StartTimer,
    StopPlayback,
    StopRecording,
    TimerFired,
    Trace,
    TransferCall,
)

POS = model.Pos("test.yaml", 1, 1)
N = TypeVar("N", bound=model.Node)


def prompt(*uris: str, **by_language: str | Sequence[str]) -> model.Prompt:
    """`prompt("sound:a")` (language en) or `prompt(en="sound:a", fr=["sound:b"])`."""
    langs: dict[str, tuple[str, ...]] = {}
    if uris:
        langs["en"] = tuple(uris)
    for lang, media in by_language.items():
        langs[lang] = (media,) if isinstance(media, str) else tuple(media)
    return model.Prompt(langs, POS)


def build(cls: type[N], name: str, **kw: Any) -> N:
    return cls(name=name, pos=POS, fields={}, **kw)


def flow(start: str, *nodes: model.Node, subflows: Mapping[str, model.Flow] | None = None,
         name: str = "test", languages: tuple[str, ...] = ("en",)) -> model.Flow:
    from pathlib import Path
    return model.Flow(name=name, path=Path(f"{name}.yaml"), start=start,
                      nodes={n.name: n for n in nodes}, languages=languages,
                      subflows=subflows or {})


def hangup(name: str = "bye", media: str | None = None) -> model.Hangup:
    return build(model.Hangup, name, prompt=prompt(media) if media else None)


def menu(name: str = "main", **kw: Any) -> model.Menu:
    fields: dict[str, Any] = dict(prompt=prompt("sound:menu"), options={"1": "one", "2": "two"},
                                  no_input="silent", invalid="wrong", retries=2, timeout_s=5.0)
    fields.update(kw)
    return build(model.Menu, name, **fields)


def ends(*names: str) -> list[model.Node]:
    return [hangup(n) for n in names]


class Call:
    """A driver in miniature: feeds events, remembers the ids it must answer with."""

    def __init__(self, f: model.Flow, variables: Mapping[str, Any] | None = None, *,
                 today: date = date(2026, 1, 1), language: str | None = None,
                 session_id: str = "s1") -> None:
        seed = {"ani": "+441234567890", **(variables or {})}
        self.session = Session(f, session_id=session_id, variables=seed, today=today,
                               language=language)
        self.all: list[Command] = []
        self.last: list[Command] = []
        self.playback: str | None = None
        self.timer: str | None = None
        self.request: Any = None
        self.recording: str | None = None

    def _take(self, commands: list[Command]) -> list[Command]:
        self.last = commands
        self.all.extend(commands)
        for c in commands:
            if isinstance(c, Play):
                self.playback = c.playback_id
            elif isinstance(c, StartTimer):
                self.timer = c.timer_id
            elif isinstance(c, CancelTimer) and c.timer_id == self.timer:
                self.timer = None
            elif isinstance(c, StartRecording):
                self.recording = c.name
            elif hasattr(c, "request_id"):
                self.request = c
        return commands

    def start(self) -> list[Command]:
        return self._take(self.session.start())

    def send(self, event: Event) -> list[Command]:
        return self._take(self.session.handle(event))

    def played(self) -> list[Command]:
        assert self.playback is not None
        return self.send(PlaybackFinished(self.playback))

    def timeout(self) -> list[Command]:
        assert self.timer is not None, "no timer running"
        return self.send(TimerFired(self.timer))

    def press(self, digits: str) -> list[Command]:
        out: list[Command] = []
        for d in digits:
            out += self.send(Dtmf(d))
        return out

    def answer(self, ok: bool = True, error: str = "", **data: Any) -> list[Command]:
        assert self.request is not None
        return self.send(ServiceDone(self.request.request_id, ok, data, error))

    @property
    def path(self) -> list[str]:
        return self.session.path

    @property
    def finished(self) -> Finished | None:
        return self.session.finished

    def of(self, kind: type[Any]) -> list[Any]:
        return [c for c in self.all if isinstance(c, kind)]

    def traces(self, what: str | None = None) -> list[str]:
        return [f"{t.node} {t.what} {t.detail}".strip() for t in self.of(Trace)
                if t.what != "enter" and (what is None or t.what == what)]

    def media(self) -> list[tuple[str, ...]]:
        return [p.media for p in self.of(Play)]


# ----------------------------------------------------------------------------- play / hangup


def test_play_then_hangup_emits_enter_traces_play_hangup_and_finished_in_order() -> None:
    f = flow("hello", build(model.Play, "hello", prompt=prompt("sound:hello"), next="bye"),
             hangup("bye", "sound:bye"))
    call = Call(f)
    assert call.start() == [Trace("hello", "enter"),
                            Play("s1:pb1", ("sound:hello",), "en", False)]
    assert call.played() == [Trace("bye", "enter"), Play("s1:pb2", ("sound:bye",), "en", False)]
    assert call.played() == [HangupCall(), Finished("hangup", "bye")]
    assert call.path == ["hello", "bye"]
    assert call.send(Dtmf("1")) == []  # finished: everything is ignored


def test_prompt_templates_are_rendered_with_variables() -> None:
    f = flow("a", build(model.Play, "a", prompt=prompt("digits:{amount}", "sound:x{missing}"),
                        next="bye"), hangup())
    call = Call(f, {"amount": 42})
    call.start()
    assert call.media() == [("digits:42", "sound:x")]


def test_prompts_follow_the_session_language_and_fall_back_to_the_default() -> None:
    p = prompt(en="sound:en/hi", fr=["sound:fr/hi", "digits:{n}"])
    f = flow("a", build(model.Play, "a", prompt=p, next="b"),
             build(model.Play, "b", prompt=prompt(en="sound:en/only"), next="c"),
             build(model.Set, "c", assign=(("language", compile_expr("'en'")),), next="d"),
             build(model.Play, "d", prompt=p, next="bye"), hangup(), languages=("en", "fr"))
    call = Call(f, {"n": 7}, language="fr")
    call.start()
    call.played()
    call.played()
    assert call.media() == [("sound:fr/hi", "digits:7"), ("sound:en/only",), ("sound:en/hi",)]
    assert [p.language for p in call.of(Play)] == ["fr", "fr", "en"]
    assert call.session.variables["language"] == "en"


def test_language_defaults_to_the_language_variable_then_the_flow() -> None:
    f = flow("bye", hangup())
    assert Session(f, session_id="x", variables={"language": "fr"},
                   today=date(2026, 1, 1)).variables["language"] == "fr"
    assert Session(f, session_id="x", variables={},
                   today=date(2026, 1, 1)).variables["language"] == "en"


def test_digit_during_a_prompt_without_barge_in_is_ignored_and_masked() -> None:
    f = flow("a", build(model.Play, "a", prompt=prompt("sound:a"), next="bye"), hangup())
    call = Call(f)
    call.start()
    assert call.press("5") == [Trace("a", "ignored digit", "*")]
    assert call.played()[0] == Trace("bye", "enter")


def test_barge_in_play_stops_and_the_digit_is_typed_ahead_into_the_next_menu() -> None:
    f = flow("a", build(model.Play, "a", prompt=prompt("sound:a"), next="main", barge_in=True),
             menu(), *ends("one", "two", "silent", "wrong"))
    call = Call(f)
    call.start()
    assert call.session.input_state == "play"
    out = call.press("2")
    assert out[0] == StopPlayback("s1:pb1")
    assert call.path == ["a", "main", "two"]
    assert len(call.of(Play)) == 1  # the menu prompt is not played: the caller already chose
    assert call.send(PlaybackFinished("s1:pb1")) == []  # the stopped playback's end is stale


def test_type_ahead_is_dropped_when_the_flow_waits_for_a_service_first() -> None:
    f = flow("a", build(model.Play, "a", prompt=prompt("sound:a"), next="d", barge_in=True),
             build(model.Dnc, "d", next="main"), menu(), *ends("one", "two", "silent", "wrong"))
    call = Call(f)
    call.start()
    call.press("1")
    call.answer()
    assert call.path == ["a", "d", "main"]
    assert call.media()[-1] == ("sound:menu",)


# ----------------------------------------------------------------------------- menu


def test_menu_input_timer_starts_only_when_the_prompt_has_finished() -> None:
    call = Call(flow("main", menu(), *ends("one", "two", "silent", "wrong")))
    out = call.start()
    assert not [c for c in out if isinstance(c, StartTimer)]
    assert call.session.input_state == "prompt"
    assert call.played() == [StartTimer("t1", 5.0)]
    assert call.session.input_state == "first_digit"
    out = call.press("1")
    assert out[:3] == [CancelTimer("t1"), Trace("main", "menu", "digit 1 -> one"),
                       Trace("one", "enter")]
    assert call.path == ["main", "one"]


def test_menu_digit_during_the_prompt_barges_in() -> None:
    call = Call(flow("main", menu(), *ends("one", "two", "silent", "wrong")))
    call.start()
    out = call.press("2")
    assert out[0] == StopPlayback("s1:pb1")
    assert call.path == ["main", "two"]


def test_menu_no_input_replays_with_the_no_input_prompt_then_takes_no_input_route() -> None:
    call = Call(flow("main", menu(no_input_prompt=prompt("sound:noinput")),
                     *ends("one", "two", "silent", "wrong")))
    call.start()
    for _ in range(3):
        call.played()
        call.timeout()
    assert call.path == ["main", "silent"]
    assert call.media() == [("sound:menu",), ("sound:noinput", "sound:menu"),
                            ("sound:noinput", "sound:menu")]
    assert call.traces("menu")[-1] == "main menu no input, 3 tries spent -> silent"


def test_menu_invalid_digit_retries_then_a_valid_digit_wins() -> None:
    call = Call(flow("main", menu(invalid_prompt=prompt("sound:invalid")),
                     *ends("one", "two", "silent", "wrong")))
    call.start()
    call.press("7")
    assert call.media()[-1] == ("sound:invalid", "sound:menu")
    call.press("1")
    assert call.path == ["main", "one"]
    assert call.traces("menu") == ["main menu invalid digit 7 (try 1 of 3)",
                                   "main menu digit 1 -> one"]


def test_menu_retries_spent_takes_the_route_of_the_last_failure() -> None:
    call = Call(flow("main", menu(retries=1), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.played()
    call.timeout()       # no input, try 1 of 2
    call.press("9")      # invalid: tries spent
    assert call.path == ["main", "wrong"]

    call = Call(flow("main", menu(retries=1), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.press("9")
    call.played()
    call.timeout()
    assert call.path == ["main", "silent"]


def test_menu_with_no_retries_fails_on_the_first_mistake() -> None:
    call = Call(flow("main", menu(retries=0), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.press("9")
    assert call.path == ["main", "wrong"]


def test_menu_repeat_key_replays_without_spending_a_try() -> None:
    call = Call(flow("main", menu(retries=0, repeat_key="*", invalid_prompt=prompt("sound:x")),
                     *ends("one", "two", "silent", "wrong")))
    call.start()
    call.press("*")
    call.press("*")
    assert call.media() == [("sound:menu",)] * 3  # plain replays, no invalid prompt
    call.press("2")
    assert call.path == ["main", "two"]


def test_menu_operator_key_escapes_at_any_try() -> None:
    call = Call(flow("main", menu(operator_key="0", operator="agent"),
                     *ends("one", "two", "silent", "wrong", "agent")))
    call.start()
    call.press("5")
    call.press("0")
    assert call.path == ["main", "agent"]
    assert call.traces("menu")[-1] == "main menu operator key 0 -> agent"


# ----------------------------------------------------------------------------- gather


def gather(**kw: Any) -> model.Gather:
    fields: dict[str, Any] = dict(prompt=prompt("sound:account"), var="account", next="ok",
                                  no_input="silent", invalid="wrong", min_digits=4,
                                  max_digits=6, finish_key="#", timeout_s=5.0,
                                  inter_digit_timeout_s=3.0, retries=1)
    fields.update(kw)
    return build(model.Gather, "acct", **fields)


def gather_call(**kw: Any) -> Call:
    call = Call(flow("acct", gather(**kw), *ends("ok", "silent", "wrong")))
    call.start()
    return call


def test_gather_ends_on_the_finish_key_which_is_not_stored() -> None:
    call = gather_call()
    call.press("1234#")
    assert call.path == ["acct", "ok"]
    assert call.session.variables["account"] == "1234"


def test_gather_ends_at_max_digits() -> None:
    call = gather_call()
    call.press("123456")
    assert call.session.variables["account"] == "123456"
    assert call.path[-1] == "ok"


def test_gather_inter_digit_timeout_ends_the_input() -> None:
    call = gather_call()
    call.press("12")
    assert call.last[-1] == StartTimer(call.timer or "", 3.0)
    assert call.session.input_state == "more_digits"
    call.press("345")
    call.timeout()
    assert call.session.variables["account"] == "12345"


def test_gather_too_few_digits_is_invalid_and_retries() -> None:
    call = gather_call(invalid_prompt=prompt("sound:bad"))
    call.press("12#")
    assert call.media()[-1] == ("sound:bad", "sound:account")
    call.press("12#")
    assert call.path == ["acct", "wrong"]
    assert "account" not in call.session.variables


def test_gather_pattern_refusal_is_invalid() -> None:
    call = gather_call(pattern="9[0-9]+", retries=0)
    call.press("1234#")
    assert call.path == ["acct", "wrong"]
    assert call.traces("gather") == ["acct gather refused by the pattern, 1 tries spent -> wrong"]
    call = gather_call(pattern="9[0-9]+")
    call.press("9234#")
    assert call.session.variables["account"] == "9234"


def test_finish_key_right_after_a_full_answer_does_not_answer_the_next_prompt() -> None:
    f = flow("acct", gather(next="main"), menu(options={"#": "one"}),
             *ends("one", "silent", "wrong"))
    call = Call(f)
    call.start()
    call.press("123456#")  # six digits end the answer; the habitual # is dropped
    assert call.path == ["acct", "main"]
    assert call.last == [Trace("main", "ignored digit", "# (right after a full answer)")]
    assert call.session.input_state == "prompt"  # the menu prompt still plays
    call.played()
    call.press("#")  # pressed on purpose, once the prompt has played: an answer
    assert call.path == ["acct", "main", "one"]


def test_gather_silence_is_no_input() -> None:
    call = gather_call()
    call.played()
    call.timeout()
    call.played()
    call.timeout()
    assert call.path == ["acct", "silent"]
    assert call.traces("gather") == ["acct gather no input (try 1 of 2)",
                                     "acct gather no input, 2 tries spent -> silent"]


# A lone finish key: "#" pressed before the first digit of an answer is never an answer.

IGNORED_HASH = Trace("acct", "ignored digit", "# (nothing typed yet)")


def test_gather_lone_finish_key_is_ignored_during_the_prompt_and_the_wait() -> None:
    call = gather_call(retries=0)
    assert call.press("#") == [IGNORED_HASH]  # the prompt goes on playing: no StopPlayback
    assert call.session.input_state == "prompt"
    assert call.played() == [StartTimer("t1", 5.0)]
    assert call.press("#") == [IGNORED_HASH]  # the input timer is neither cancelled nor reset
    assert call.session.input_state == "first_digit"
    call.press("1234#")
    assert call.path == ["acct", "ok"]
    assert call.session.variables["account"] == "1234"


def test_gather_other_finish_key_is_ignored_alone_and_hash_is_then_a_character() -> None:
    call = gather_call(finish_key="*", retries=0)
    assert call.press("*") == [Trace("acct", "ignored digit", "* (nothing typed yet)")]
    call.press("12#4*")
    assert call.session.variables["account"] == "12#4"


def test_hash_after_a_full_answer_spends_no_pin_try_even_after_the_prompt() -> None:
    # "12345678#" at an 8-digit gather: the answer ends on the 8th digit and the # reaches
    # verify, here late (the PIN prompt has played): it must not cost one of the PIN tries.
    f = flow("acct", gather(min_digits=8, max_digits=8, next="who"),
             *identify_verify_flow(max_tries=2).nodes.values())
    call = Call(f)
    call.start()
    call.press("12345678")
    call.answer(**RECORD)
    assert call.path == ["acct", "who", "check"]
    call.played()
    assert call.press("#") == [Trace("check", "ignored digit", "# (nothing typed yet)")]
    call.press("1111#")
    call.press("2468#")
    assert call.path[-1] == "ok"
    assert call.traces("verify") == ["check verify wrong pin (try 1 of 2)",
                                     "check verify pin right -> ok"]


def test_menu_ignores_a_lone_hash_unless_it_is_one_of_its_keys() -> None:
    call = Call(flow("main", menu(retries=0), *ends("one", "two", "silent", "wrong")))
    call.start()
    assert call.press("#") == [Trace("main", "ignored digit", "# (nothing typed yet)")]
    call.played()
    call.press("#")
    assert call.path == ["main"]  # no try spent, even with no retries
    call.press("2")
    assert call.path == ["main", "two"]


def menu_pressing_hash(**kw: Any) -> Call:
    call = Call(flow("main", menu(retries=0, **kw), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.played()
    call.press("#")
    return call


def test_hash_is_a_menu_key_when_the_menu_names_it() -> None:
    assert menu_pressing_hash(options={"#": "one"}).path == ["main", "one"]
    assert menu_pressing_hash(operator_key="#", operator="one").path == ["main", "one"]
    repeated = menu_pressing_hash(repeat_key="#")
    assert repeated.media() == [("sound:menu",)] * 2
    assert repeated.traces("menu") == ["main menu repeat key #"]


def test_callback_offer_ignores_a_lone_hash() -> None:
    call = Call(offer_flow())
    call.start()
    call.answer(ewt_s=300)
    call.played()
    call.press("#")
    call.timeout()
    call.played()
    call.press("#")
    assert call.path == ["offer"]
    assert call.traces("callback offer")[-1] == "offer callback offer no input (try 1 of 2)"
    call.press("1")
    assert isinstance(call.request, CreateCallback)


def test_hash_typed_ahead_into_a_play_is_ignored_by_the_next_input_node() -> None:
    f = flow("a", build(model.Play, "a", prompt=prompt("sound:a"), next="main", barge_in=True),
             menu(retries=0), *ends("one", "two", "silent", "wrong"))
    call = Call(f)
    call.start()
    call.press("#")
    assert call.path == ["a", "main"]
    assert call.media() == [("sound:a",), ("sound:menu",)]  # the menu asks from scratch
    assert Trace("main", "ignored digit", "# (nothing typed yet)") in call.all
    call.press("1")
    assert call.path == ["a", "main", "one"]


def test_gather_without_finish_key_keeps_hash_as_a_character() -> None:
    call = gather_call(finish_key=None, min_digits=1)
    call.press("1#")
    call.timeout()
    assert call.session.variables["account"] == "1#"


# ----------------------------------------------------------------------------- set / branch


def test_set_assigns_in_order_and_branch_picks_the_first_true_case() -> None:
    f = flow("s", build(model.Set, "s", assign=(("total", compile_expr("amount * 2")),
                                                ("big", compile_expr("total > 10"))), next="b"),
             build(model.Branch, "b", cases=((compile_expr("big and tier == 'gold'"), "gold"),
                                             (compile_expr("big"), "big")), default="small"),
             *ends("gold", "big", "small"))
    call = Call(f, {"amount": 6})
    call.start()
    assert call.path == ["s", "b", "big"]
    assert call.session.variables["total"] == 12
    assert call.traces("branch") == ["b branch case 2 (big) -> big"]


def test_failing_expressions_set_none_and_count_as_false_with_a_trace() -> None:
    f = flow("s", build(model.Set, "s", assign=(("x", compile_expr("missing + 1")),), next="b"),
             build(model.Branch, "b", cases=((compile_expr("x > 1"), "yes"),), default="no"),
             *ends("yes", "no"))
    call = Call(f)
    call.start()
    assert call.session.variables["x"] is None
    assert call.path == ["s", "b", "no"]
    assert any("failed: TypeError" in t for t in call.traces("set"))
    assert any("counts as false" in t for t in call.traces("branch"))


# ----------------------------------------------------------------------------- lookup


def lookup_flow() -> model.Flow:
    return flow("crm", build(model.Lookup, "crm", url="https://crm/api/{ani}", next="ok",
                             fallback="fb", method="POST", params={"id": "{cid}"},
                             into={"tier": "customer.tier", "first": "offers.0.name",
                                   "none": "customer.nothing.here"}, timeout_s=2.0),
                *ends("ok", "fb"))


def test_lookup_sends_rendered_request_and_stores_dotted_paths() -> None:
    call = Call(lookup_flow(), {"cid": 7})
    out = call.start()
    assert out[-1] == HttpLookup("r1", "POST", "https://crm/api/+441234567890", {"id": "7"}, 2.0)
    call.answer(customer={"tier": "gold"}, offers=[{"name": "upgrade"}])
    assert call.path == ["crm", "ok"]
    v = call.session.variables
    assert (v["tier"], v["first"], v["none"]) == ("gold", "upgrade", None)


def test_lookup_failure_takes_the_fallback() -> None:
    call = Call(lookup_flow())
    call.start()
    call.answer(ok=False, error="timeout")
    assert call.path == ["crm", "fb"]
    assert "tier" not in call.session.variables


# ----------------------------------------------------------------------------- identify / verify


def identify_verify_flow(method: str = "pin", max_tries: int = 3) -> model.Flow:
    return flow(
        "who",
        build(model.Identify, "who", found="check", not_found="nobody"),
        build(model.Verify, "check", method=method, prompt=prompt("sound:pin"), next="ok",
              failed="failed", no_input="silent", max_tries=max_tries,
              invalid_prompt=prompt("sound:wrong")),
        *ends("nobody", "ok", "failed", "silent"))


RECORD = {"contact_id": 42, "campaign": "retention", "name": "Ann",
          "fields": {"tier": "gold"}, "secrets": {"pin": "2468", "dob": "1980-05-17"}}


def identified(method: str = "pin", max_tries: int = 3) -> Call:
    call = Call(identify_verify_flow(method, max_tries))
    out = call.start()
    assert out[-1] == FindContact("r1", "+441234567890", None)
    call.answer(**RECORD)
    return call


def test_identify_found_sets_contact_variables_but_never_secrets() -> None:
    call = identified()
    v = call.session.variables
    assert (v["contact_id"], v["contact_name"], v["contact_campaign"], v["contact_tier"]) == (
        42, "Ann", "retention", "gold")
    assert "2468" not in repr(v) and "1980" not in repr(v)
    assert call.path == ["who", "check"]


def test_identify_not_found_and_no_number() -> None:
    call = Call(identify_verify_flow())
    call.start()
    call.answer()
    assert call.path == ["who", "nobody"]
    call = Call(identify_verify_flow(), {"ani": ""})
    call.start()
    assert call.path == ["who", "nobody"] and not call.of(FindContact)


def test_verify_right_pin_sets_verified_in_secure_mode() -> None:
    call = identified()
    assert call.session.secure
    call.press("2468#")
    assert call.path[-1] == "ok"
    assert call.session.variables["verified"] is True
    assert [c.on for c in call.of(SecureMode)] == [True, False]
    assert not call.session.secure


def test_verify_wrong_then_right() -> None:
    call = identified()
    call.press("1111#")
    assert call.media()[-1] == ("sound:wrong", "sound:pin")
    call.press("2468#")
    assert call.path[-1] == "ok"
    assert call.traces("verify") == ["check verify wrong pin (try 1 of 3)",
                                     "check verify pin right -> ok"]


def test_verify_out_of_tries_fails_and_pins_never_reach_traces() -> None:
    call = identified(max_tries=2)
    call.press("1357#")
    call.press("9753")
    call.timeout()
    assert call.path[-1] == "failed"
    assert call.session.variables["verified"] is False
    text = repr(call.all) + repr(call.session.variables)
    for secret in ("1357", "9753", "2468"):
        assert secret not in text
    assert [c.on for c in call.of(SecureMode)] == [True, False]


def test_verify_silence_on_the_last_try_takes_no_input() -> None:
    call = identified(max_tries=1)
    call.played()
    call.timeout()
    assert call.path[-1] == "silent"


def test_verify_date_of_birth_against_an_iso_record() -> None:
    call = identified("dob")
    call.press("17051980")
    assert call.path[-1] == "ok"


def test_verify_compares_the_whole_entry_not_its_first_pin_length_digits() -> None:
    call = identified()
    call.press("24680")  # PIN 2468 and one digit more: wrong, and nothing spills over
    assert call.path == ["who", "check"]
    call.timeout()  # the inter-digit timeout ends the entry
    assert call.traces("verify") == ["check verify wrong pin (try 1 of 3)"]
    call.press("2468")
    call.timeout()
    assert call.path[-1] == "ok"


def test_verify_entry_ends_on_hash_the_inter_digit_timeout_or_twelve_digits() -> None:
    call = identified()
    call.played()
    assert call.last == [StartTimer("t1", 5.0)]  # the node's timeout_s for the first digit
    call.press("2")
    assert call.last == [CancelTimer("t1"), StartTimer("t2", VERIFY_INTER_DIGIT_S)]
    call.press("468#")
    assert call.path[-1] == "ok"

    call = Call(identify_verify_flow())
    call.start()
    call.answer(**{**RECORD, "secrets": {"pin": "123456789012"}})
    call.press("123456789012")  # twelve digits end the entry
    assert call.path[-1] == "ok"

    call = identified()
    call.press("1234567890123")  # the 13th digit is not part of the 12-digit entry
    assert call.traces("verify") == ["check verify wrong pin (try 1 of 3)"]


def verify_commands(pin: str, typed: str) -> list[Command]:
    call = Call(identify_verify_flow())
    call.start()
    call.answer(**{**RECORD, "secrets": {"pin": pin}})
    call.played()
    call.press(typed)
    if call.path[-1] == "check":
        call.timeout()
    return call.all


@pytest.mark.parametrize("typed", ["5", "55", "5555", "555555", "55555555555", "5555555555555"])
def test_the_command_stream_does_not_tell_the_pin_length(typed: str) -> None:
    streams = [verify_commands(pin, typed) for pin in ("12", "1234", "12345678", "1" * 12)]
    assert all(s == streams[0] for s in streams[1:])


def test_verify_date_of_birth_entry_ends_at_eight_digits() -> None:
    call = identified("dob")
    call.press("1705198")
    assert call.path == ["who", "check"]
    call.press("0")
    assert call.path[-1] == "ok"


def test_verify_without_an_identified_record_fails_at_once() -> None:
    f = flow("check", *identify_verify_flow().nodes.values())
    call = Call(f, {"contact_id": 9})
    call.start()
    assert call.path == ["check", "failed"]
    assert not call.of(SecureMode)


# ----------------------------------------------------------------------------- transfer


def transfer_flow() -> model.Flow:
    return flow("agent", build(model.Transfer, "agent", kind="group", target="support",
                               failed="sorry", data={"verified": "{verified}", "who": "{ani}"},
                               prompt=prompt("sound:transferring")), hangup("sorry"))


def test_transfer_plays_the_prompt_then_hands_the_call_over() -> None:
    call = Call(transfer_flow(), {"verified": True})
    call.start()
    out = call.played()
    assert out[-1] == TransferCall("r1", "group", "support",
                                   {"verified": "True", "who": "+441234567890"})
    assert call.answer()[-1] == Finished("transferred", "agent")


def test_transfer_failure_takes_the_failed_route() -> None:
    call = Call(transfer_flow())
    call.start()
    call.played()
    call.answer(ok=False, error="no agent")
    assert call.path == ["agent", "sorry"]


# ----------------------------------------------------------------------------- callback offer


def offer_flow() -> model.Flow:
    return flow("offer", build(model.CallbackOffer, "offer", queue="support", threshold_s=120,
                               prompt=prompt("sound:offer"), campaign="callbacks",
                               no_wait="queue", accepted="booked", declined="hold",
                               retries=1), *ends("queue", "booked", "hold"))


def test_callback_offer_short_wait_goes_to_no_wait() -> None:
    call = Call(offer_flow())
    assert call.start()[-1] == EstimateWait("r1", "support")
    call.answer(ewt_s=30.4)
    assert call.path == ["offer", "queue"]
    assert call.session.variables["ewt_s"] == 30


def test_callback_offer_accepted_creates_a_callback_contact() -> None:
    call = Call(offer_flow())
    call.start()
    call.answer(ewt_s=300)
    assert call.media() == [("sound:offer",)]
    out = call.press("1")
    assert out[-1] == CreateCallback("r2", "+441234567890", "callbacks",
                                     {"queue": "support", "ewt_s": "300", "flow": "test"})
    call.answer(contact_id=77)
    assert call.path == ["offer", "booked"]
    assert call.session.variables["callback_contact_id"] == 77


def test_callback_offer_declined_silence_and_failures() -> None:
    call = Call(offer_flow())
    call.start()
    call.answer(ewt_s=300)
    call.press("2")
    assert call.path == ["offer", "hold"]

    call = Call(offer_flow())
    call.start()
    call.answer(ewt_s=300)
    call.played()
    call.timeout()
    call.press("5")
    assert call.path == ["offer", "hold"] and not call.of(CreateCallback)

    call = Call(offer_flow())
    call.start()
    call.answer(ok=False, error="no stats")
    assert call.path == ["offer", "queue"]
    assert call.session.variables["ewt_s"] is None

    call = Call(offer_flow())
    call.start()
    call.answer(ewt_s=300)
    call.press("1")
    call.answer(ok=False, error="db down")
    assert call.path == ["offer", "hold"]


# ----------------------------------------------------------------------------- sms / dnc / record


def test_sms_sends_rendered_text_and_routes_on_the_answer() -> None:
    f = flow("link", build(model.Sms, "link", text="Update: https://x/{contact_id}", next="ok",
                           failed="ko"), *ends("ok", "ko"))
    call = Call(f, {"contact_id": 5})
    assert call.start()[-1] == SendSms("r1", "+441234567890", "Update: https://x/5")
    call.answer()
    assert call.path[-1] == "ok"
    call = Call(f)
    call.start()
    call.answer(ok=False, error="refused")
    assert call.path[-1] == "ko"


def test_dnc_adds_the_number_and_goes_on_whatever_the_answer() -> None:
    f = flow("out", build(model.Dnc, "out", next="bye", campaign="promo"), hangup())
    call = Call(f)
    assert call.start()[-1] == AddDnc("r1", "+441234567890", "promo")
    call.answer(ok=False, error="db down")
    assert call.path == ["out", "bye"]


def record_flow() -> model.Flow:
    return flow("msg", build(model.Record, "msg", prompt=prompt("sound:beep"), var="rec",
                             next="bye", max_s=30.0, finish_key="#"), hangup())


def test_record_starts_after_the_prompt_and_stores_the_recording_name() -> None:
    call = Call(record_flow(), session_id="call:7")
    call.start()
    out = call.played()
    assert StartRecording("ivr-call-7-1", 30.0, "#") in out
    call.send(RecordingFinished("other"))  # not ours: ignored
    assert call.path == ["msg"]
    call.send(RecordingFinished("ivr-call-7-1"))
    assert call.path == ["msg", "bye"]
    assert call.session.variables["rec"] == "ivr-call-7-1"


def test_record_finish_key_stops_the_recording() -> None:
    call = Call(record_flow())
    call.start()
    call.played()
    call.press("1")
    assert call.path == ["msg"]
    out = call.press("#")
    assert StopRecording("ivr-s1-1") in out
    assert call.path == ["msg", "bye"]


# ----------------------------------------------------------------------------- subflows


def goodbye_subflow() -> model.Flow:
    return flow("thanks", build(model.Play, "thanks", prompt=prompt("sound:thanks"), next="back"),
                build(model.Return, "back"), name="goodbye")


def test_subflow_runs_and_returns_to_the_next_node() -> None:
    f = flow("sub", build(model.Subflow, "sub", flow="common/goodbye.yaml", next="bye"),
             hangup(), subflows={"common/goodbye.yaml": goodbye_subflow()})
    call = Call(f)
    call.start()
    call.played()
    assert call.path == ["sub", "thanks", "back", "bye"]
    assert call.finished == Finished("hangup", "bye")


def test_hangup_inside_a_subflow_ends_the_call() -> None:
    sub = flow("end", hangup("end"), name="ender")
    f = flow("sub", build(model.Subflow, "sub", flow="ender.yaml", next="bye"), hangup(),
             subflows={"ender.yaml": sub})
    call = Call(f)
    call.start()
    assert call.finished == Finished("hangup", "end")


def test_return_outside_a_subflow_and_a_missing_node_end_the_call_with_an_error() -> None:
    call = Call(flow("back", build(model.Return, "back")))
    out = call.start()
    assert out[-2:] == [HangupCall(), Finished("error", "back")]
    call = Call(flow("a", build(model.Set, "a", assign=(), next="nowhere")))
    call.start()
    assert call.finished == Finished("error", "a")
    assert "no node named 'nowhere'" in call.traces("error")[0]


# ----------------------------------------------------------------------------- robustness


def test_stale_and_unexpected_events_are_ignored() -> None:
    call = Call(flow("main", menu(), *ends("one", "two", "silent", "wrong")))
    assert call.send(Dtmf("1")) == []  # before start
    call.start()
    call.played()
    call.press("9")  # invalid: the old timer is cancelled, a new prompt plays
    stale: list[Event] = [TimerFired("t1"), PlaybackFinished("s1:pb1"), ServiceDone("r9", True),
                          RecordingFinished("x"), Dtmf("x"), Dtmf("12")]
    for event in stale:
        assert call.send(event) == []
    assert call.path == ["main"]
    call.press("1")
    assert call.path == ["main", "one"]


def test_loop_guard_ends_a_flow_that_never_waits() -> None:
    f = flow("a", build(model.Set, "a", assign=(), next="b"),
             build(model.Branch, "b", cases=(), default="a"))
    call = Call(f)
    out = call.start()
    assert out[-1] == Finished("error", call.session.node)
    assert HangupCall() in out
    assert len(call.path) == MAX_NODES_WITHOUT_WAIT
    assert "loop guard" in call.traces("error")[0]


def test_caller_hangup_ends_the_session_and_cancels_the_timer() -> None:
    call = Call(flow("main", menu(), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.played()
    out = call.send(CallerHangup())
    assert out == [CancelTimer("t1"), Trace("main", "hangup", "caller hung up"),
                   Finished("caller_hangup", "main")]
    assert call.send(TimerFired("t1")) == []


def test_start_twice_does_nothing_the_second_time() -> None:
    call = Call(flow("bye", hangup()))
    assert call.start()
    assert call.session.start() == []


def test_session_repr_and_variables_copy() -> None:
    call = Call(flow("main", menu(), *ends("one", "two", "silent", "wrong")))
    call.start()
    call.session.variables["ani"] = "changed"
    assert call.session.variables["ani"] == "+441234567890"
    assert repr(call.session) == "Session('s1', node='main', running)"


def test_a_thousand_sessions_answer_digits_quickly() -> None:
    import time
    f = flow("main", menu(), *ends("one", "two", "silent", "wrong"))
    calls = [Call(f, session_id=f"c{i}") for i in range(1000)]
    for c in calls:
        c.start()
        c.played()
    began = time.perf_counter()
    for c in calls:
        c.press("1")
    per_event = (time.perf_counter() - began) / 1000
    assert all(c.path == ["main", "one"] for c in calls)
    assert per_event < 0.002  # far below the 20 ms p99 budget of the benchmark


def test_a_key_pressed_during_a_message_is_not_the_first_digit_of_the_pin() -> None:
    f = flow(
        "who",
        build(model.Identify, "who", found="msg", not_found="nobody"),
        build(model.Play, "msg", prompt=prompt("sound:msg"), next="check", barge_in=True),
        build(model.Verify, "check", method="pin", prompt=prompt("sound:pin"), next="ok",
              failed="failed", no_input="silent", max_tries=3),
        *ends("nobody", "ok", "failed", "silent"))
    call = Call(f)
    call.start()
    call.answer(**RECORD)
    call.press("9")  # stops the message; typed outside secure mode
    assert call.path == ["who", "msg", "check"]
    assert call.media()[-1] == ("sound:pin",)  # the PIN prompt is played, not skipped
    call.press("2468#")
    assert call.path[-1] == "ok"
