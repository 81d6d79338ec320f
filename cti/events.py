"""The normalized call events of the telephony interface.

Both backends (AMI and ARI) turn what Asterisk says into these events, so the dialer core never
sees a protocol field. One event names one call by its correlation id (`call_id`), which the
dialer chose when it originated the call (or which the backend made up for an inbound call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from dialer.domain import Outcome


class CallEventKind(StrEnum):
    DIALING = "dialing"  # the PBX accepted the originate and created the outbound channel
    RINGING = "ringing"  # the far end is alerting (180/183, AMI Newstate 5 / DialState RINGING)
    ANSWERED = "answered"  # the far end answered
    AMD = "amd"  # answering-machine detection finished: `amd` is HUMAN, MACHINE or NOTSURE
    BRIDGED = "bridged"  # the call was connected to `peer` (an agent endpoint or channel)
    UNBRIDGED = "unbridged"  # the call left its bridge (the peer hung up or was transferred)
    TRANSFERRED = "transferred"  # blind or attended transfer done; `target` says where
    QUEUED = "queued"  # the call waits in an Asterisk queue (`extra`: queue, position)
    HELD = "held"  # music on hold started for this call (not the music of a queue wait)
    UNHELD = "unheld"  # music on hold stopped
    DTMF = "dtmf"  # one digit received from the far end (`digit`)
    HANGUP = "hangup"  # the call is over: `cause` (Q.850) and `outcome` are set
    INBOUND = "inbound"  # a new inbound call arrived (`caller_id` is the ANI)
    BACKEND_DOWN = "backend_down"  # the PBX link is lost: stop dialing blind
    BACKEND_UP = "backend_up"  # the PBX link is back and resynchronized


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One normalized event. Only the fields that belong to `kind` are set.

    `call_id` is empty for BACKEND_DOWN/BACKEND_UP. For HANGUP, `cause` is the Q.850 cause code
    and `outcome` the dialer outcome derived from it by `cti.causes` (the one mapping).
    `channel` is the PBX channel name (AMI) or channel id (ARI), for logs and reconciliation.
    """

    kind: CallEventKind
    call_id: str
    channel: str = ""
    cause: int | None = None
    outcome: Outcome | None = None
    amd: str | None = None
    amd_cause: str | None = None
    digit: str | None = None
    peer: str | None = None
    target: str | None = None
    caller_id: str | None = None
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)
