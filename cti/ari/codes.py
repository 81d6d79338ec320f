"""How ARI spells hang-up causes: the `reason` names of `DELETE /channels/{id}`.

The mapping is Asterisk's own (`res/ari/resource_channels.c`, 20.x). A Q.850 cause without a
reason name is sent as `reason_code`, which ARI also accepts (captured: `reason_code=17` -> 204).
"""

from __future__ import annotations

from cti import causes

#: ARI hangup `reason` -> the Q.850 cause Asterisk sets.
CAUSE_BY_REASON: dict[str, int] = {
    "normal": causes.NORMAL_CLEARING,
    "busy": causes.USER_BUSY,
    "congestion": causes.NORMAL_CIRCUIT_CONGESTION,
    "no_answer": causes.NO_ANSWER,
    "timeout": causes.NO_USER_RESPONSE,
    "rejected": causes.CALL_REJECTED,
    "unallocated": causes.UNALLOCATED,
    "normal_unspecified": causes.NORMAL_UNSPECIFIED,
    "number_incomplete": causes.INVALID_NUMBER_FORMAT,
    "codec_mismatch": 58,  # AST_CAUSE_BEARERCAPABILITY_NOTAVAIL
    "interworking": causes.INTERWORKING,
    "failure": causes.NETWORK_OUT_OF_ORDER,  # AST_CAUSE_FAILURE == 38
    "answered_elsewhere": 26,  # AST_CAUSE_ANSWERED_ELSEWHERE
}

#: Q.850 cause -> the ARI `reason` name, for the causes that have one.
REASON_BY_CAUSE: dict[int, str] = {cause: reason for reason, cause in CAUSE_BY_REASON.items()}


def hangup_params(cause: int) -> dict[str, str]:
    """The query parameters of `DELETE /channels/{id}` that hang up with Q.850 `cause`."""
    reason = REASON_BY_CAUSE.get(cause)
    return {"reason": reason} if reason is not None else {"reason_code": str(cause)}
