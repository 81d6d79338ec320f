"""Replays of the real Asterisk 20.20.1 ARI captures through the decoder and the tracker.

Each capture's channel ids are announced to the tracker the way `AriTelephony` announces the
channels it originates; the CallEvents that come out must tell what happened in the capture.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cti.ari import (
    AriAuthenticationFailed,
    AriError,
    AriEventDecoder,
    AriTracker,
    BadRequest,
    Conflict,
    LegRole,
    MethodNotAllowed,
    NotFound,
    ServerError,
    Unprocessable,
    error_for_response,
)
from cti.events import CallEvent, CallEventKind
from cti.interface import AuthenticationFailed, TelephonyError, UnknownCall
from dialer.domain import Outcome

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts"
ARI = FIXTURES / "ari"
ALL_EVENT_FILES = sorted(ARI.glob("*.ws.jsonl")) + sorted(FIXTURES.glob("ari_events_*.jsonl"))


def frames(path: Path) -> Iterator[str]:
    """The WebSocket text frames of a capture, re-serialized in the captured field order."""
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        msg = record.get("msg", record)
        yield msg if isinstance(msg, str) else json.dumps(msg)


def replay(path: Path, tracker: AriTracker) -> tuple[list[CallEvent], AriEventDecoder]:
    decoder = AriEventDecoder()
    out: list[CallEvent] = []
    for frame in frames(path):
        event = decoder.decode(frame)
        if event is not None:
            out.extend(tracker.feed(event.data))
    return out, decoder


def kinds(events: list[CallEvent], call_id: str) -> list[CallEventKind]:
    """The call's event kinds after the DIALING that opens every originated call."""
    out = [e.kind for e in events if e.call_id == call_id]
    if out and out[0] is CallEventKind.DIALING:
        out = out[1:]
    assert CallEventKind.DIALING not in out
    return out


def hangups(events: list[CallEvent], call_id: str) -> list[CallEvent]:
    return [e for e in events if e.call_id == call_id and e.kind is CallEventKind.HANGUP]


def digits(events: list[CallEvent], call_id: str) -> str:
    return "".join(
        e.digit or "" for e in events if e.call_id == call_id and e.kind is CallEventKind.DTMF
    )


def announced(*channel_ids: str) -> AriTracker:
    """A tracker that knows `channel_ids` as originated calls whose POST was accepted."""
    tracker = AriTracker()
    for channel_id in channel_ids:
        tracker.expect(channel_id)
        tracker.confirm(channel_id, 1)
        assert [e.kind for e in tracker.mark_dialing(channel_id)] == [CallEventKind.DIALING]
    return tracker


def originated_channels(name: str) -> list[tuple[str, str]]:
    """(channel id, appArgs) of every successful POST /ari/channels in a capture."""
    out = []
    for line in (ARI / f"{name}.http.jsonl").read_text().splitlines():
        rec = json.loads(line)
        target = rec["target"]
        if rec["method"] == "POST" and target.startswith("/ari/channels?") and rec["status"] == 200:
            args = target.split("appArgs=")[1].split("&")[0] if "appArgs=" in target else ""
            out.append((rec["body"]["id"], args))
    return out


@pytest.mark.parametrize("path", ALL_EVENT_FILES, ids=lambda p: p.name)
def test_every_captured_frame_decodes_and_no_call_hangs_up_twice(path: Path) -> None:
    tracker = AriTracker()
    events, decoder = replay(path, tracker)
    assert decoder.skipped == {}, f"{path.name}: frames refused: {decoder.skipped}"
    by_call: dict[str, int] = {}
    for e in events:
        if e.kind is CallEventKind.HANGUP:
            by_call[e.call_id] = by_call.get(e.call_id, 0) + 1
    assert all(n == 1 for n in by_call.values()), by_call


def test_11_originate_bridge_agent_hangup_is_answered_bridged_then_normal_clearing() -> None:
    (customer, _), (agent, agent_args) = originated_channels("11_ari_originate_bridge_agent_hangup")
    assert agent_args.startswith("agent")
    tracker = AriTracker()
    tracker.expect(customer, peer="Local/100@sim-customers")
    tracker.expect(agent, customer, role=LegRole.AGENT, peer="Local/1001@agents")
    events, _ = replay(ARI / "11_ari_originate_bridge_agent_hangup.ws.jsonl", tracker)
    assert kinds(events, customer) == [
        CallEventKind.RINGING,
        CallEventKind.ANSWERED,
        CallEventKind.BRIDGED,
        CallEventKind.UNBRIDGED,
        CallEventKind.HANGUP,
    ]
    bridged = next(e for e in events if e.kind is CallEventKind.BRIDGED)
    assert bridged.peer == "Local/1001@agents"
    (hangup,) = hangups(events, customer)
    assert (hangup.cause, hangup.outcome) == (16, Outcome.HUMAN)
    assert hangup.detail == "Normal Clearing"
    assert hangups(events, agent) == []  # the agent leg is not a call of its own


def test_12a_card_number_arrives_digit_by_digit_on_the_stasis_channel_only() -> None:
    ((customer, _),) = originated_channels("12a_ari_dtmf_card_number")
    tracker = AriTracker()
    tracker.expect(customer)
    events, _ = replay(ARI / "12a_ari_dtmf_card_number.ws.jsonl", tracker)
    assert digits(events, customer) == "4111111111111111#"
    # The "1", "2" the app sent show up on the ;2 half, which is not our call.
    assert {e.call_id for e in events} == {customer}
    (hangup,) = hangups(events, customer)
    assert (hangup.cause, hangup.outcome) == (16, Outcome.HUMAN)


def test_12b_dtmf_during_playback_and_hangup() -> None:
    ((customer, _),) = originated_channels("12b_ari_playback_interrupted_by_dtmf")
    tracker = AriTracker()
    tracker.expect(customer)
    events, _ = replay(ARI / "12b_ari_playback_interrupted_by_dtmf.ws.jsonl", tracker)
    assert digits(events, customer) == "5#"
    assert kinds(events, customer)[0] is CallEventKind.ANSWERED
    assert [(e.cause, e.outcome) for e in hangups(events, customer)] == [(16, Outcome.HUMAN)]


def test_08_amd_human_reaches_stasis_as_inbound_with_amd_human_and_ends_at_stasis_end() -> None:
    tracker = AriTracker()
    events, _ = replay(ARI / "08_amd_ari_side.ws.jsonl", tracker)
    call = "1795428242.88"
    assert kinds(events, call) == [
        CallEventKind.INBOUND,
        CallEventKind.ANSWERED,
        CallEventKind.AMD,
        CallEventKind.HANGUP,
    ]
    amd = next(e for e in events if e.kind is CallEventKind.AMD)
    assert amd.amd == "HUMAN"
    (hangup,) = hangups(events, call)
    # cause 32 soft on the DELETE is a flag: the hang-up is a normal clearing.
    assert (hangup.cause, hangup.outcome) == (16, Outcome.HUMAN)


def test_amd_machine_from_channel_varset_gives_machine_outcome() -> None:
    tracker = announced("c1")
    chan = {"id": "c1", "state": "Up"}
    out: list[CallEvent] = []
    for ev in (
        {"type": "ChannelStateChange", "channel": chan},
        {"type": "ChannelVarset", "variable": "AMDSTATUS", "value": "MACHINE", "channel": chan},
        {
            "type": "ChannelVarset",
            "variable": "AMDCAUSE",
            "value": "LONGGREETING-1500-1500",
            "channel": chan,
        },
        {"type": "ChannelDestroyed", "cause": 16, "cause_txt": "Normal Clearing", "channel": chan},
    ):
        out.extend(tracker.feed(ev))
    assert [e.kind for e in out] == [
        CallEventKind.ANSWERED,
        CallEventKind.AMD,
        CallEventKind.HANGUP,
    ]
    assert (out[1].amd, out[1].amd_cause) == ("MACHINE", "LONGGREETING-1500-1500")
    assert out[2].outcome is Outcome.MACHINE


def test_13_hold_and_bridge_moh_send_no_hold_event_so_the_backend_must_report_it() -> None:
    tracker = AriTracker()
    customer, agent = "1795428544.424", "1795428531.422"
    tracker.expect(customer)
    tracker.expect(agent, customer, role=LegRole.AGENT, peer="Local/1001@agents")
    events, _ = replay(ARI / "13_ari_hold_moh.ws.jsonl", tracker)
    assert CallEventKind.HELD not in kinds(events, customer)
    assert kinds(events, customer) == [
        CallEventKind.RINGING,
        CallEventKind.ANSWERED,
        CallEventKind.BRIDGED,
        CallEventKind.UNBRIDGED,
        CallEventKind.HANGUP,
    ]
    assert [(e.cause, e.outcome) for e in hangups(events, customer)] == [(16, Outcome.HUMAN)]


def test_13b_local_m_passthrough_bridged_and_the_far_half_arrives_as_inbound() -> None:
    ((customer, _), (agent, _)) = originated_channels("13b_ari_channelhold_via_local_m_passthrough")
    tracker = AriTracker()
    tracker.expect(customer)
    tracker.expect(agent, customer, role=LegRole.AGENT, peer="Local/1001@agents")
    events, _ = replay(ARI / "13b_ari_channelhold_via_local_m_passthrough.ws.jsonl", tracker)
    assert CallEventKind.BRIDGED in kinds(events, customer)
    assert [(e.cause, e.outcome) for e in hangups(events, customer)] == [(16, Outcome.HUMAN)]
    far_half = "1795428672.435"
    assert kinds(events, far_half)[0] is CallEventKind.INBOUND
    assert len(hangups(events, far_half)) == 1


def test_13c_channel_hold_and_unhold_are_reported_in_order() -> None:
    tracker = AriTracker()
    tracker.expect("1795428708.446")
    events, _ = replay(ARI / "13c_ari_channelhold_subscribed_atxfer.ws.jsonl", tracker)
    held = [e.kind for e in events if e.kind in (CallEventKind.HELD, CallEventKind.UNHELD)]
    assert held == [CallEventKind.HELD, CallEventKind.UNHELD]
    assert digits(events, "1795428708.446") == "*21002*1"


def test_14_continue_keeps_the_channel_subscribed_until_it_is_destroyed() -> None:
    tracker = AriTracker()
    for channel_id in ("agent-leg-1", "1795428745.452", "1795428746.454"):
        tracker.expect(channel_id)
    events, _ = replay(ARI / "14_ari_continue_channels_info_variables.ws.jsonl", tracker)
    for channel_id in ("agent-leg-1", "1795428745.452", "1795428746.454"):
        (hangup,) = hangups(events, channel_id)
        assert hangup.outcome is Outcome.HUMAN
    assert hangups(events, "agent-leg-1")[0].cause == 16
    # continue into a missing extension: the channel dies with cause 0 ("Unknown")
    assert hangups(events, "1795428746.454")[0].cause == 0
    # the second StasisStart (dialer-amd, args human) reports the AMD verdict
    assert [e.amd for e in events if e.kind is CallEventKind.AMD] == ["HUMAN"]


def test_10_duplicate_channel_id_hung_up_while_ringing_is_no_answer() -> None:
    tracker = AriTracker()
    tracker.expect("dup-test-1")
    tracker.expect("1795428404.401")
    events, _ = replay(ARI / "10_ari_error_responses.ws.jsonl", tracker)
    assert kinds(events, "dup-test-1") == [CallEventKind.RINGING, CallEventKind.HANGUP]
    (hangup,) = hangups(events, "dup-test-1")
    assert (hangup.cause, hangup.outcome) == (16, Outcome.NO_ANSWER)
    # Local/100 in the empty default context: destroyed at once with cause 0.
    assert [(e.cause, e.outcome) for e in hangups(events, "1795428404.401")] == [
        (0, Outcome.FAILED)
    ]


def test_10_application_replaced_is_decoded() -> None:
    decoder = AriEventDecoder()
    decoded = [decoder.decode(f) for f in frames(ARI / "10_ari_error_responses.ws.jsonl")]
    assert [e.type for e in decoded if e is not None][-1] == "ApplicationReplaced"


def test_originate_app_capture_ringing_answered_normal_clearing() -> None:
    tracker = AriTracker()
    tracker.expect("1795427372.14")
    events, _ = replay(FIXTURES / "ari_events_originate_app.jsonl", tracker)
    assert kinds(events, "1795427372.14") == [
        CallEventKind.RINGING,
        CallEventKind.ANSWERED,
        CallEventKind.HANGUP,
    ]
    assert hangups(events, "1795427372.14")[0].outcome is Outcome.HUMAN


def test_inbound_stasis_capture_reports_inbound_with_caller_and_hangup() -> None:
    tracker = AriTracker()
    events, _ = replay(FIXTURES / "ari_events_inbound_stasis.jsonl", tracker)
    call = "1795427368.13"
    assert kinds(events, call) == [
        CallEventKind.INBOUND,
        CallEventKind.ANSWERED,
        CallEventKind.HANGUP,
    ]
    assert events[0].caller_id == "5550100"
    assert (events[-1].cause, events[-1].outcome) == (16, Outcome.HUMAN)


# ----- errors ------------------------------------------------------------------------------
def error_records() -> list[dict[str, Any]]:
    out = []
    for name in ("10_ari_error_responses", "12b_ari_playback_interrupted_by_dtmf",
                 "13_ari_hold_moh", "13c_ari_channelhold_subscribed_atxfer",
                 "14_ari_continue_channels_info_variables"):  # fmt: skip
        for line in (ARI / f"{name}.http.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["status"] >= 400:
                out.append(rec)
    return out


EXPECTED_CLASS: dict[int, type[AriError]] = {
    400: BadRequest,
    401: AriAuthenticationFailed,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    422: Unprocessable,
    500: ServerError,
}


@pytest.mark.parametrize(
    "rec", error_records(), ids=lambda r: f"{r['status']}-{r['method']}-{r['target'][:60]}"
)
def test_every_captured_error_maps_to_its_typed_exception_with_aris_words(
    rec: dict[str, Any],
) -> None:
    body = rec["response_body_raw"].encode()
    err = error_for_response(rec["status"], body, method=rec["method"], path=rec["target"])
    if rec["status"] in EXPECTED_CLASS:
        assert type(err) is EXPECTED_CLASS[rec["status"]]
    assert isinstance(err, TelephonyError)
    assert err.status == rec["status"]
    parsed = rec.get("body")
    if isinstance(parsed, dict):
        assert err.detail == parsed.get("message", parsed.get("error"))
    else:
        assert err.detail  # an HTML page: its <p> (or <title>) text
    assert str(rec["status"]) in str(err)


def test_error_classes_fit_the_interface_hierarchy() -> None:
    assert isinstance(error_for_response(404, b'{"message":"Channel not found"}'), UnknownCall)
    auth = error_for_response(401, b'{"message":"Authentication required"}')
    assert isinstance(auth, AuthenticationFailed)
    assert "ari.conf" in str(auth)
    alloc = error_for_response(500, b'{"error":"Allocation failed"}')
    assert isinstance(alloc, ServerError) and alloc.detail == "Allocation failed"
    html = error_for_response(
        400, b"<html><p>HTTP request is missing param: [app]</p></html>", method="GET"
    )
    assert html.detail == "HTTP request is missing param: [app]"
    assert error_for_response(418, b"").detail == ""


# ----- malformed frames ----------------------------------------------------------------------
GOOD = json.dumps(
    {
        "type": "ChannelDestroyed",
        "timestamp": "2026-11-23T10:07:34.829+0000",
        "cause": 17,
        "cause_txt": "User busy",
        "channel": {"id": "c1", "state": "Ringing"},
    }
)


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"ChannelDestroyed","cause":',  # truncated
        "not json at all",
        "[1, 2, 3]",
        '"a string"',
        '{"type":"NoSuchEvent","channel":{"id":"c1"}}',
        '{"channel":{"id":"c1"}}',  # no type
        '{"type":"ChannelDestroyed","cause":16}',  # no channel
        '{"type":"ChannelDestroyed","cause":16,"channel":{"name":"x"}}',  # channel without id
        '{"type":"ChannelDtmfReceived","channel":{"id":"c1"}}',  # no digit
        '{"type":"StasisStart","channel":"c1"}',  # channel not an object
        b"\xff\xfe\x00garbage",
        '{"type":"ChannelStateChange","channel":{"id":"c1","state":"Up"},"pad":"'
        + "x" * (2 << 20)
        + '"}',  # a 2 MB frame
    ],
    ids=lambda f: repr(f[:40]),
)
def test_malformed_frames_are_skipped_and_the_stream_goes_on(frame: str | bytes) -> None:
    decoder = AriEventDecoder()
    tracker = announced("c1")
    assert decoder.decode(frame) is None
    assert sum(decoder.skipped.values()) == 1
    event = decoder.decode(GOOD)
    assert event is not None
    (hangup,) = tracker.feed(event.data)
    assert (hangup.cause, hangup.outcome) == (17, Outcome.BUSY)


def test_skipped_frame_log_never_contains_the_frame(caplog: pytest.LogCaptureFixture) -> None:
    decoder = AriEventDecoder()
    decoder.decode('{"type":"ChannelDtmfReceived","digit":"4111111111111111"')
    assert "4111" not in caplog.text
    assert "not valid JSON" in caplog.text


def test_tracker_ignores_events_of_unknown_channels_and_after_the_hangup() -> None:
    tracker = AriTracker()
    assert tracker.feed({"type": "ChannelStateChange", "channel": {"id": "x", "state": "Up"}}) == []
    tracker = announced("c1")
    destroyed = {"type": "ChannelDestroyed", "cause": 17, "channel": {"id": "c1"}}
    assert len(tracker.feed(destroyed)) == 1
    assert tracker.feed(destroyed) == []
    assert tracker.feed({"type": "StasisStart", "args": [], "channel": {"id": "c1"}}) == []


def test_soft_hangup_request_cause_is_a_flag_not_a_cause() -> None:
    tracker = announced("c1", "c2")
    chan = {"id": "c1", "state": "Ringing"}
    tracker.feed({"type": "ChannelHangupRequest", "cause": 32, "soft": True, "channel": chan})
    (hangup,) = tracker.feed(
        {"type": "ChannelDestroyed", "cause": 0, "cause_txt": "Unknown", "channel": chan}
    )
    assert hangup.cause == 0  # not 32
    chan2 = {"id": "c2", "state": "Ringing"}
    tracker.feed({"type": "ChannelHangupRequest", "cause": 17, "channel": chan2})
    (hangup2,) = tracker.feed({"type": "ChannelDestroyed", "cause": 0, "channel": chan2})
    assert (hangup2.cause, hangup2.outcome) == (17, Outcome.BUSY)


def test_reconcile_reports_vanished_calls_once_and_late_answers() -> None:
    tracker = announced("gone", "live", "answered")
    tracker.feed({"type": "ChannelStateChange", "channel": {"id": "answered", "state": "Up"}})
    out = tracker.reconcile([{"id": "live", "state": "Up"}], confirmed_by=1)
    assert sorted((e.call_id, e.kind) for e in out) == [
        ("answered", CallEventKind.HANGUP),
        ("gone", CallEventKind.HANGUP),
        ("live", CallEventKind.ANSWERED),
    ]
    by_call = {e.call_id: e for e in out}
    assert by_call["answered"].outcome is Outcome.HUMAN
    assert by_call["gone"].cause is None
    assert tracker.live_call_ids() == ["live"]
    assert tracker.feed({"type": "ChannelDestroyed", "cause": 16, "channel": {"id": "gone"}}) == []


def test_dialing_comes_first_once_whether_the_post_or_the_first_event_wins() -> None:
    tracker = AriTracker()
    tracker.expect("early")
    ringing = {"type": "ChannelStateChange", "channel": {"id": "early", "state": "Ringing"}}
    assert [e.kind for e in tracker.feed(ringing)] == [
        CallEventKind.DIALING,
        CallEventKind.RINGING,
    ]
    assert tracker.mark_dialing("early") == []
