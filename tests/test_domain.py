"""The state machines in `dialer.domain`: every legal move is accepted, every other one refused."""

from __future__ import annotations

import itertools

import pytest

from dialer.domain import (
    CAMPAIGN_TRANSITIONS,
    CONTACT_TRANSITIONS,
    LEASABLE_STATES,
    RESETTABLE_STATES,
    TERMINAL_STATES,
    CampaignChannel,
    CampaignState,
    Channel,
    ContactState,
    DialMode,
    IllegalTransition,
    check_campaign_transition,
    check_contact_transition,
)

CONTACT_PAIRS = list(itertools.product(ContactState, ContactState))
CAMPAIGN_PAIRS = list(itertools.product(CampaignState, CampaignState))


def test_every_contact_state_has_a_transition_entry() -> None:
    assert set(CONTACT_TRANSITIONS) == set(ContactState)


def test_every_campaign_state_has_a_transition_entry() -> None:
    assert set(CAMPAIGN_TRANSITIONS) == set(CampaignState)


@pytest.mark.parametrize(("old", "new"), CONTACT_PAIRS, ids=lambda s: s.value)
def test_contact_transition_is_accepted_exactly_when_listed(
    old: ContactState, new: ContactState
) -> None:
    if new in CONTACT_TRANSITIONS[old]:
        check_contact_transition(old, new)
    else:
        with pytest.raises(IllegalTransition) as err:
            check_contact_transition(old, new)
        assert (err.value.kind, err.value.old, err.value.new) == ("contact", old.value, new.value)
        assert str(err.value) == f"illegal contact transition {old.value} -> {new.value}"


@pytest.mark.parametrize(("old", "new"), CAMPAIGN_PAIRS, ids=lambda s: s.value)
def test_campaign_transition_is_accepted_exactly_when_listed(
    old: CampaignState, new: CampaignState
) -> None:
    if new in CAMPAIGN_TRANSITIONS[old]:
        check_campaign_transition(old, new)
    else:
        with pytest.raises(IllegalTransition) as err:
            check_campaign_transition(old, new)
        assert (err.value.kind, err.value.old, err.value.new) == ("campaign", old.value, new.value)


def test_illegal_transition_is_a_value_error() -> None:
    assert issubclass(IllegalTransition, ValueError)


def test_no_state_is_both_leasable_and_terminal() -> None:
    assert not LEASABLE_STATES & TERMINAL_STATES


def test_retries_completed_dnc_and_sms_closed_have_no_way_out() -> None:
    for state in (
        ContactState.RETRIES_COMPLETED,
        ContactState.DNC_LISTED,
        ContactState.SMS_SENT_CLOSED,
    ):
        assert CONTACT_TRANSITIONS[state] == frozenset()


def test_dnc_listed_cannot_be_recycled_by_a_list_reset() -> None:
    assert ContactState.DNC_LISTED not in RESETTABLE_STATES


def test_every_leasable_state_can_be_sent_to_the_dialer() -> None:
    for state in LEASABLE_STATES:
        check_contact_transition(state, ContactState.SENT_TO_DIALER)


def test_campaign_channel_allows_only_its_channels() -> None:
    assert CampaignChannel.VOICE.allows(Channel.VOICE)
    assert not CampaignChannel.VOICE.allows(Channel.SMS)
    assert CampaignChannel.SMS.allows(Channel.SMS)
    assert not CampaignChannel.SMS.allows(Channel.VOICE)
    assert CampaignChannel.VOICE_SMS.allows(Channel.VOICE)
    assert CampaignChannel.VOICE_SMS.allows(Channel.SMS)


def test_only_preview_and_progressive_guarantee_an_agent() -> None:
    assert {m for m in DialMode if m.guarantees_agent} == {DialMode.PREVIEW, DialMode.PROGRESSIVE}
