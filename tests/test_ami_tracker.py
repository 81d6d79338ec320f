"""The AMI channel tracker over every recorded capture, and over the wire's awkward cases.

`EXPECTED` says, for every capture in `tests/fixtures/asterisk/transcripts/`, what happened to
each call (its root channel), as the capture's own notes and dialplan describe it: busy, no
answer, congestion, rejected, unallocated, answered and bridged to which agent, blind transfer,
DTMF digits, AMD verdict, music on hold. Each call line is the tracker's events in order:
`hangup(cause,outcome)`, `dtmf<digits>` (consecutive digits joined), `amd(STATUS,CAUSE)`,
`bridged(peer)`, `transferred(target,kind)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.ami import ChannelTracker
from cti.events import CallEvent, CallEventKind
from dialer.domain import Outcome
from tests.ami_transcripts import received_events, rx_streams

EXPECTED: dict[str, list[tuple[str, str]]] = {
    "01_observer_security_events.rx.bin": [
        ("Local/400@sim-customers-00000009;1", "dialing hangup(34,congestion)"),
    ],
    "01a_login_bad_secret.rx.bin": [],
    "01b_unauth_unknown_action_md5.rx.bin": [],
    "01c_login_unknown_user.rx.bin": [],
    "01d_limited_user_permissions.rx.bin": [
        ("Local/400@sim-customers-00000009;1", "dialing hangup(34,congestion)"),
    ],
    "02_coreshowchannels_two_calls.rx.bin": [
        (
            "Local/500@sim-customers-0000000a;1",
            "dialing ringing answered bridged(Local/1001@agents-0000000d;1) unbridged(Local/1001@agents-0000000d;1) hangup(16,human)",
        ),
        (
            "Local/501@sim-customers-0000000b;1",
            "dialing ringing answered bridged(Local/1002@agents-0000000c;1) unbridged(Local/1002@agents-0000000c;1) hangup(16,human)",
        ),
    ],
    "03_queue_status_summary_add_pause_remove.rx.bin": [
        (
            "Local/500@sim-customers-0000000e;1",
            "dialing ringing answered queued(sales) bridged(Local/1001@agents-0000000f;1) unbridged(Local/1001@agents-0000000f;1) hangup(16,human)",
        ),
    ],
    "04a_redirect_customer_to_agent_1002.rx.bin": [
        (
            "Local/500@sim-customers-00000010;1",
            "dialing ringing answered bridged(Local/1001@agents-00000011;1) unbridged(Local/1001@agents-00000011;1) bridged(Local/1002@agents-00000012;1) unbridged(Local/1002@agents-00000012;1) hangup(16,human)",
        ),
    ],
    "04b_blindtransfer_action.rx.bin": [
        (
            "Local/501@sim-customers-00000013;1",
            "dialing ringing answered bridged(Local/1001@agents-00000014;1) unbridged(Local/1001@agents-00000014;1) transferred(1002,blind) bridged(Local/1002@agents-00000015;1) unbridged(Local/1002@agents-00000015;1) hangup(16,human)",
        ),
    ],
    "05a_atxfer_default_features_fails.rx.bin": [
        (
            "Local/500@sim-customers-00000016;1",
            "dialing ringing answered bridged(Local/1001@agents-00000017;1) unbridged(Local/1001@agents-00000017;1) hangup(16,human)",
        ),
    ],
    "05d_bridge_action.rx.bin": [
        (
            "Local/500@sim-customers-0000001e;1",
            "dialing ringing answered bridged(Local/1002@agents-0000001f;1) unbridged(Local/1002@agents-0000001f;1) hangup(16,human)",
        ),
        (
            "Local/1002@agents-0000001f;1",
            "dialing answered bridged(Local/500@sim-customers-0000001e;1) unbridged(Local/500@sim-customers-0000001e;1) hangup(16,human)",
        ),
    ],
    "06_hangup_cause_getvar_setvar_status_ping_events_logoff.rx.bin": [
        ("Local/1001@agents-00000020;1", "dialing answered hangup(17,human)"),
        ("Local/1002@agents-00000021;1", "dialing answered hangup(21,human)"),
        ("Local/1003@agents-00000022;1", "dialing answered hangup(16,human)"),
    ],
    "07_dtmf_senddtmf_read_playdtmf.rx.bin": [
        (
            "Local/100@dtmf-sender-00000025;1",
            "dialing answered dtmf4111111111111111# hangup(16,human)",
        ),
        ("Local/1001@agents-00000026;1", "dialing answered hangup(16,human)"),
    ],
    "07b_dtmf_through_bridge_sent_and_received.rx.bin": [
        (
            "Local/100@dtmf-sender-00000027;1",
            "dialing answered bridged(Local/1001@agents-00000028;1) dtmf4111111111111111# unbridged(Local/1001@agents-00000028;1) hangup(16,human)",
        ),
    ],
    "08_amd_600_machine_100_human.rx.bin": [
        (
            "Local/600@sim-customers-00000029;1",
            "dialing answered amd(MACHINE,LONGGREETING-1500-1500) hangup(16,machine)",
        ),
        (
            "Local/100@sim-customers-0000002a;1",
            "dialing ringing answered amd(HUMAN,HUMAN-801-800) hangup(16,human)",
        ),
    ],
    "13c_ami_dialplan_musiconhold.rx.bin": [
        (
            "Local/100@moh-test-000000d5;1",
            "dialing answered held unheld held unheld hangup(16,human)",
        ),
    ],
    "11_ari_originate_bridge_agent_hangup.ami.rx.bin": [
        (
            "Local/100@sim-customers-000000ce;1",
            "dialing ringing answered bridged(Local/1001@agents-000000cf;1) unbridged(Local/1001@agents-000000cf;1) hangup(16,human)",
        ),
        (
            "Local/1001@agents-000000cf;1",
            "dialing answered bridged(Local/100@sim-customers-000000ce;1) unbridged(Local/100@sim-customers-000000ce;1) hangup(16,human)",
        ),
    ],
    "12a_ari_dtmf_card_number.ami.rx.bin": [
        (
            "Local/100@dtmf-sender-000000d0;1",
            "dialing answered dtmf4111111111111111# hangup(16,human)",
        ),
    ],
    "12b_ari_playback_interrupted_by_dtmf.ami.rx.bin": [
        ("Local/5@dtmf-sender-000000d1;1", "dialing answered dtmf5# hangup(16,human)"),
    ],
    "13_ari_hold_moh.ami.rx.bin": [
        (
            "Local/1001@agents-000000d2;1",
            "dialing answered held unheld held unheld held unheld held unheld bridged(Local/500@sim-customers-000000d3;1) unbridged(Local/500@sim-customers-000000d3;1) hangup(16,human)",
        ),
        (
            "Local/500@sim-customers-000000d3;1",
            "dialing ringing answered bridged(Local/1001@agents-000000d2;1) held unheld unbridged(Local/1001@agents-000000d2;1) hangup(16,human)",
        ),
    ],
    "13b_ari_channelhold_via_local_m_passthrough.ami.rx.bin": [
        (
            "Local/777@to-dialer-000000d8;1",
            "dialing answered bridged(Local/1001@agents-000000d9;1) unbridged(Local/1001@agents-000000d9;1) hangup(16,human)",
        ),
        (
            "Local/1001@agents-000000d9;1",
            "dialing answered bridged(Local/777@to-dialer-000000d8;1) held unheld held unheld unbridged(Local/777@to-dialer-000000d8;1) hangup(16,human)",
        ),
    ],
    "13c_ari_channelhold_subscribed_atxfer.ami.rx.bin": [
        (
            "Local/500@sim-customers-000000dd;1",
            "dialing ringing answered bridged(Local/1001@agents-000000de;1) held unheld unbridged(Local/1001@agents-000000de;1) hangup(16,human)",
        ),
    ],
    "14_ari_continue_channels_info_variables.ami.rx.bin": [
        ("Local/1001@agents-000000e0;1", "dialing answered hangup(16,human)"),
        ("Local/1003@agents-000000e1;1", "dialing answered hangup(16,human)"),
        ("Local/1004@agents-000000e2;1", "dialing answered hangup(16,human)"),
    ],
    "ami_session_transcript.txt": [
        ("Local/100@sim-customers-00000000;1", "dialing ringing answered hangup(16,human)"),
    ],
    "ami_session_transcript_outcomes.txt": [
        ("Local/200@sim-customers-00000001;1", "dialing ringing hangup(17,busy)"),
        ("Local/300@sim-customers-00000002;1", "dialing ringing hangup(19,no_answer)"),
        ("Local/400@sim-customers-00000003;1", "dialing hangup(34,congestion)"),
        ("Local/900@sim-customers-00000004;1", "dialing ringing hangup(21,rejected)"),
        ("Local/12345@sim-customers-00000005;1", "dialing hangup(1,failed)"),
    ],
    "ami_session_transcript_sip.txt": [
        ("SIP/to-pjsip-00000000", "dialing ringing answered hangup(16,human)"),
        ("PJSIP/from-chansip-00000000", "dialing ringing answered hangup(16,human)"),
        ("SIP/to-pjsip-00000001", "dialing ringing hangup(17,busy)"),
        ("PJSIP/from-chansip-00000001", "dialing hangup(34,congestion)"),
        ("PJSIP/from-chansip-00000002", "inbound answered hangup(16,human)"),
        ("SIP/to-pjsip-00000002", "dialing answered hangup(16,human)"),
        ("SIP/to-pjsip-00000003", "dialing hangup(34,congestion)"),
        ("PJSIP/from-chansip-00000003", "inbound hangup(17,busy)"),
    ],
}


def _render(events: list[CallEvent]) -> list[tuple[str, str]]:
    calls: dict[str, tuple[str, list[str]]] = {}
    for ev in events:
        channel, parts = calls.setdefault(ev.call_id, (ev.channel, []))
        calls[ev.call_id] = (ev.channel or channel, parts)
        text = ev.kind.value
        if ev.kind is CallEventKind.HANGUP:
            assert ev.outcome is not None
            text += f"({ev.cause},{ev.outcome.value})"
        if ev.digit:
            if parts and parts[-1].startswith("dtmf"):
                parts[-1] += ev.digit
                continue
            text += ev.digit
        if ev.amd:
            text += f"({ev.amd},{ev.amd_cause})"
        if ev.kind is CallEventKind.QUEUED:
            text += f"({ev.extra['queue']})"
        if ev.peer:
            text += f"({ev.peer})"
        if ev.target:
            text += f"({ev.target},{ev.detail})"
        parts.append(text)
    return [(channel, " ".join(parts)) for channel, parts in calls.values()]


def _replay(path: Path) -> tuple[ChannelTracker, list[CallEvent]]:
    tracker = ChannelTracker(track_unknown=True)
    events: list[CallEvent] = []
    for message in received_events(path):
        events += tracker.feed(message)
    return tracker, events


def test_every_capture_has_an_expectation() -> None:
    assert sorted(p.name for p in rx_streams()) == sorted(EXPECTED)


@pytest.mark.parametrize("path", rx_streams(), ids=lambda p: p.name)
def test_capture_outcomes(path: Path) -> None:
    tracker, events = _replay(path)
    assert _render(events) == EXPECTED[path.name]
    assert tracker.live_calls() == {}, "a call stayed in progress"
    assert tracker.skipped == 0
    hangups = [e.call_id for e in events if e.kind is CallEventKind.HANGUP]
    assert len(hangups) == len(set(hangups)), "a call ended twice"


# ---- our own originates, and the awkward cases ------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "asterisk" / "transcripts"


def _chan(event: str, uid: str, name: str, linkedid: str, **fields: str) -> dict[str, str]:
    return {"Event": event, "Channel": name, "Uniqueid": uid, "Linkedid": linkedid, **fields}


def _feed(tracker: ChannelTracker, *events: dict[str, str]) -> list[CallEvent]:
    out: list[CallEvent] = []
    for event in events:
        out += tracker.feed(event)
    return out


ROOT = "Local/5550100@sim-customers-00000001;1"
FAR = "Local/5550100@sim-customers-00000001;2"


def _answered_call(tracker: ChannelTracker) -> list[CallEvent]:
    tracker.expect_originate("c1", "a1", channel_id="c1")
    return _feed(
        tracker,
        _chan("Newchannel", "c1", ROOT, "c1", ChannelState="0"),
        _chan("Newchannel", "c1;2", FAR, "c1", ChannelState="4"),
        _chan("Newstate", "c1;2", FAR, "c1", ChannelState="6"),
        _chan("Newstate", "c1", ROOT, "c1", ChannelState="6"),
    )


def test_our_originate_is_followed_by_its_channel_id() -> None:
    tracker = ChannelTracker()
    events = _answered_call(tracker)
    assert [e.kind for e in events] == [CallEventKind.DIALING, CallEventKind.ANSWERED]
    assert tracker.channel_of("c1") == ROOT
    assert _feed(tracker, _chan("Hangup", "c1", ROOT, "c1", Cause="16")) == []
    (hangup,) = _feed(tracker, _chan("Hangup", "c1;2", FAR, "c1", Cause="16"))
    assert (hangup.call_id, hangup.cause, hangup.outcome) == ("c1", 16, Outcome.HUMAN)
    assert tracker.live_calls() == {}


def test_another_sessions_originate_response_is_ignored() -> None:
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1", channel_id="c1")
    other = {
        "Event": "OriginateResponse",
        "ActionID": "not-ours",
        "Response": "Failure",
        "Channel": "Local/1@x",
        "Reason": "0",
        "Uniqueid": "<unknown>",
    }
    assert tracker.feed(other) == []
    assert "c1" in tracker.live_calls()


def test_failed_originate_without_any_channel_ends_the_call_from_its_reason() -> None:
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1", channel_id="c1")
    (hangup,) = tracker.feed(
        {
            "Event": "OriginateResponse",
            "ActionID": "a1",
            "Response": "Failure",
            "Channel": "PJSIP/5550100@trunk",
            "Reason": "5",
            "Uniqueid": "<unknown>",
        }
    )
    assert (hangup.kind, hangup.cause, hangup.outcome) == (CallEventKind.HANGUP, 17, Outcome.BUSY)


def test_failed_response_before_the_hangups_waits_for_the_cause_on_the_far_half() -> None:
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1", channel_id="c1")
    _feed(
        tracker,
        _chan("Newchannel", "c1", ROOT, "c1", ChannelState="0"),
        _chan("Newchannel", "c1;2", FAR, "c1", ChannelState="4"),
    )
    # Reason 0 says nothing useful; the ;2 half's cause 21 does.
    assert (
        tracker.feed(
            {
                "Event": "OriginateResponse",
                "ActionID": "a1",
                "Response": "Failure",
                "Channel": "Local/5550100@sim-customers",
                "Reason": "0",
                "Uniqueid": "<unknown>",
            }
        )
        == []
    )
    (hangup,) = _feed(
        tracker,
        _chan("Hangup", "c1;2", FAR, "c1", Cause="21"),
        _chan("Hangup", "c1", ROOT, "c1", Cause="21"),
    )
    assert (hangup.cause, hangup.outcome) == (21, Outcome.REJECTED)


def test_late_agent_leg_events_do_not_bring_an_ended_call_back() -> None:
    tracker = ChannelTracker()
    _answered_call(tracker)
    leg = "Local/1001@agents-00000002;1"
    _feed(tracker, _chan("Newchannel", "leg1", leg, "c1", ChannelState="0"))
    ended = _feed(
        tracker,
        _chan("Hangup", "c1", ROOT, "c1", Cause="16"),
        _chan("Hangup", "c1;2", FAR, "c1", Cause="16"),
    )
    assert [e.kind for e in ended] == [CallEventKind.HANGUP]
    late = _feed(
        tracker,
        _chan("Newstate", "leg1", leg, "c1", ChannelState="6"),
        _chan("DTMFEnd", "leg1", leg, "c1", Digit="5", Direction="Received"),
        _chan("Hangup", "leg1", leg, "c1", Cause="16"),
        _chan("Newstate", "c1", ROOT, "c1", ChannelState="6"),
    )
    assert late == []
    assert tracker.live_calls() == {}


def test_originate_response_before_newchannel_binds_the_root() -> None:
    # Capture 13c shows the success response ahead of the channel's own events.
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1")
    assert (
        tracker.feed(
            {
                "Event": "OriginateResponse",
                "ActionID": "a1",
                "Response": "Success",
                "Channel": ROOT,
                "Reason": "4",
                "Uniqueid": "171.5",
            }
        )
        == []
    )
    (dialing,) = tracker.feed(_chan("Newchannel", "171.5", ROOT, "171.5", ChannelState="0"))
    assert (dialing.kind, dialing.call_id) == (CallEventKind.DIALING, "c1")


def test_wire_garbage_is_skipped_not_raised() -> None:
    tracker = ChannelTracker()
    _answered_call(tracker)
    assert tracker.feed({"Event": "Hangup", "Channel": ROOT}) == []  # no Uniqueid
    assert tracker.feed({"Event": "NoSuchEvent", "Foo": "bar"}) == []
    assert tracker.feed({"Response": "Success"}) == []
    assert tracker.feed({"Event": "Newstate", "Uniqueid": "c1", "ChannelState": "up?"}) == []
    assert tracker.feed({"Event": "VarSet", "Uniqueid": "c1", "Variable": "AMDSTATUS"}) == []
    assert tracker.skipped == 2
    # ... and the call is still followed normally.
    (dtmf,) = tracker.feed(_chan("DTMFEnd", "c1", ROOT, "c1", Digit="9", Direction="Received"))
    assert dtmf.digit == "9"


def test_resync_ends_calls_that_vanished_and_keeps_the_live_ones() -> None:
    tracker = ChannelTracker()
    _answered_call(tracker)
    tracker.expect_originate("c2", "a2", channel_id="c2")
    tracker.feed(_chan("Newchannel", "c2", "PJSIP/trunk-00000009", "c2", ChannelState="0"))
    tracker.expect_originate("c3", "a3", channel_id="c3")  # acked, its events lost
    tracker.begin_resync()
    listing = [
        {
            "Event": "CoreShowChannel",
            "Channel": "PJSIP/trunk-00000009",
            "Uniqueid": "c2",
            "Linkedid": "c2",
            "ChannelState": "6",
        }
    ]
    events = tracker.resync(listing)
    by_call = {(e.call_id, e.kind) for e in events}
    assert by_call == {
        ("c1", CallEventKind.HANGUP),
        ("c2", CallEventKind.ANSWERED),
        ("c3", CallEventKind.HANGUP),
    }
    outcomes = {e.call_id: e.outcome for e in events if e.kind is CallEventKind.HANGUP}
    assert outcomes == {"c1": Outcome.HUMAN, "c3": Outcome.DANGLING}
    assert all(
        e.cause is None and "down" in e.detail for e in events if e.kind is CallEventKind.HANGUP
    )
    assert set(tracker.live_calls()) == {"c2"}


def test_inbound_call_is_announced_with_its_ani() -> None:
    tracker = ChannelTracker()
    (ev,) = tracker.feed(
        _chan(
            "Newchannel",
            "9.1",
            "PJSIP/trunk-00000001",
            "9.1",
            ChannelState="4",
            CallerIDNum="+442079460000",
            Exten="100",
        )
    )
    assert (ev.kind, ev.caller_id) == (CallEventKind.INBOUND, "+442079460000")


def test_without_expectations_other_clients_calls_are_not_followed() -> None:
    tracker = ChannelTracker()
    events: list[CallEvent] = []
    for message in received_events(FIXTURES / "ami_session_transcript_outcomes.txt"):
        events += tracker.feed(message)
    assert events == []


def test_our_originates_in_the_outcomes_capture_by_action_id_and_dial_string() -> None:
    tracker = ChannelTracker()
    for lead in ("200", "300", "400", "900", "12345"):
        tracker.expect_originate(
            f"lead-{lead}", f"orig-{lead}", dial_string=f"Local/{lead}@sim-customers"
        )
    outcomes = {}
    for message in received_events(FIXTURES / "ami_session_transcript_outcomes.txt"):
        for ev in tracker.feed(message):
            if ev.kind is CallEventKind.HANGUP:
                outcomes[ev.call_id] = (ev.cause, ev.outcome)
    assert outcomes == {
        "lead-200": (17, Outcome.BUSY),
        "lead-300": (19, Outcome.NO_ANSWER),
        "lead-400": (34, Outcome.CONGESTION),
        "lead-900": (21, Outcome.REJECTED),
        "lead-12345": (1, Outcome.FAILED),
    }


def test_resync_leaves_alone_a_call_that_had_events_during_the_listing() -> None:
    tracker = ChannelTracker()
    tracker.begin_resync()
    _answered_call(tracker)  # its channel appeared after the listing was taken
    assert tracker.resync([]) == []
    assert set(tracker.live_calls()) == {"c1"}


def test_resync_with_the_recorded_coreshowchannels_listing() -> None:
    """Capture 02 lists two live calls (8 channels) mid-call: a resync keeps both; a listing
    without one of them ends that one only."""
    tracker = ChannelTracker(track_unknown=True)
    items = []
    for message in received_events(FIXTURES / "ami" / "02_coreshowchannels_two_calls.rx.bin"):
        if message.event == "CoreShowChannel" and message.action_id == "csc-2calls":
            items.append(message)
        elif message.event == "CoreShowChannelsComplete" and message.action_id == "csc-2calls":
            break
        elif message.event != "CoreShowChannel":
            tracker.feed(message)
    assert len(items) == 8
    live = tracker.live_calls()
    assert sorted(live.values()) == [
        "Local/500@sim-customers-0000000a;1",
        "Local/501@sim-customers-0000000b;1",
    ]
    tracker.begin_resync()
    assert tracker.resync(items) == []
    gone = next(cid for cid, name in live.items() if name.startswith("Local/500@"))
    tracker.begin_resync()
    (hangup,) = tracker.resync([i for i in items if i.get("Linkedid") != gone])
    assert (hangup.call_id, hangup.kind, hangup.outcome) == (
        gone,
        CallEventKind.HANGUP,
        Outcome.HUMAN,
    )
    assert list(tracker.live_calls().values()) == ["Local/501@sim-customers-0000000b;1"]


def test_resync_ends_a_call_whose_halves_ended_on_both_sides_of_the_outage() -> None:
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1", channel_id="c1")
    _feed(
        tracker,
        _chan("Newchannel", "c1", ROOT, "c1", ChannelState="0"),
        _chan("Newchannel", "c1;2", FAR, "c1", ChannelState="4"),
    )
    # The link drops; ;1 hangs up unseen. After the reconnect ;2's Hangup arrives live.
    tracker.begin_resync()
    assert tracker.feed(_chan("Hangup", "c1;2", FAR, "c1", Cause="16")) == []
    (hangup,) = tracker.resync([])
    assert (hangup.call_id, hangup.kind) == ("c1", CallEventKind.HANGUP)
    assert tracker.live_calls() == {}


def test_an_originate_without_any_channel_expires_at_its_deadline() -> None:
    tracker = ChannelTracker()
    tracker.expect_originate("c1", "a1", channel_id="c1", deadline=100.0)
    assert tracker.expire(99.0) == []
    (hangup,) = tracker.expire(101.0)
    assert (hangup.kind, hangup.outcome) == (CallEventKind.HANGUP, Outcome.DANGLING)
    assert tracker.expire(200.0) == []


def test_a_call_handed_to_an_ivr_flow_reports_no_more_digits_but_still_its_hangup() -> None:
    """Replayed from the real capture of a caller keying a card number: once the call is
    noted as in an IVR flow, its keys are the flow's and never reach the dialer's stream."""
    path = next(p for p in rx_streams() if p.name.startswith("07_dtmf_senddtmf"))
    tracker = ChannelTracker(track_unknown=True)
    events: list[CallEvent] = []
    for message in received_events(path):
        fresh = tracker.feed(message)
        for e in fresh:
            if e.kind is CallEventKind.ANSWERED:
                tracker.note_in_ivr(e.call_id)
        events += fresh
    kinds = [e.kind for e in events]
    assert CallEventKind.ANSWERED in kinds and CallEventKind.HANGUP in kinds
    assert CallEventKind.DTMF not in kinds
    plain = [e.kind for e in _replay(path)[1]]
    assert CallEventKind.DTMF in plain, "the capture has digits: the test would catch a leak"
