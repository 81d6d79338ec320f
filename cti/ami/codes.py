"""How AMI spells call results: OriginateResponse `Reason` codes and channel states.

The Reason codes are Asterisk's `AST_CONTROL_*` values as `Originate` reports them. They are
known to be lossy: res_pjsip reports a 486 Busy Here as Reason 0 (with cause 17 on the
Hangup), so `cti.causes` is consulted first whenever a cause is known.
"""

from __future__ import annotations

from dialer.domain import Outcome

REASON_FAILED = 0  # rejected, unallocated, or anything the channel driver did not classify
REASON_HANGUP = 1
REASON_RINGING = 3  # rang until the originate timeout: no answer
REASON_ANSWERED = 4
REASON_BUSY = 5
REASON_CONGESTION = 8

#: The outcome an OriginateResponse Reason implies when no Hangup cause is available.
OUTCOME_BY_REASON: dict[int, Outcome] = {
    REASON_FAILED: Outcome.FAILED,
    REASON_HANGUP: Outcome.NO_ANSWER,
    REASON_RINGING: Outcome.NO_ANSWER,
    REASON_BUSY: Outcome.BUSY,
    REASON_CONGESTION: Outcome.CONGESTION,
}

#: Q.850 cause that stands in for a Reason when the originate failed before any channel existed.
CAUSE_BY_REASON: dict[int, int] = {
    REASON_FAILED: 0,
    REASON_HANGUP: 16,
    REASON_RINGING: 19,
    REASON_BUSY: 17,
    REASON_CONGESTION: 34,
}

# AMI ChannelState values (enum ast_channel_state).
STATE_DOWN = 0
STATE_RSRVD = 1
STATE_OFFHOOK = 2
STATE_DIALING = 3
STATE_RING = 4
STATE_RINGING = 5
STATE_UP = 6
STATE_BUSY = 7

STATE_DESC: dict[int, str] = {
    0: "Down",
    1: "Rsrvd",
    2: "OffHook",
    3: "Dialing",
    4: "Ring",
    5: "Ringing",
    6: "Up",
    7: "Busy",
}


def outcome_for_reason(reason: int) -> Outcome | None:
    """None for Reason 4 (answered: the call goes on); else the failure outcome."""
    if reason == REASON_ANSWERED:
        return None
    return OUTCOME_BY_REASON.get(reason, Outcome.FAILED)
