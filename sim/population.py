"""A pure, seeded model of the people (and machines) a dialer calls.

`Population.draw(number, rng)` says how one callee behaves on one attempt: whether the call is
answered by a human or a machine, or ends busy / unanswered / rejected / failed / congested,
after how long, with which Q.850 cause, how long the talk lasts and which DTMF digits the callee
presses. It touches no clock and no event loop, so both the Asterisk emulator (`sim.pbx`) and the
pacing simulator reuse it; real time and time scaling belong to the caller.

Determinism: the same `Population`, number and `random.Random` state give the same behaviour.
Per-number overrides (`Override(pattern=r"0017$", kind=CalleeKind.BUSY)`) make chosen numbers
behave the same way on every attempt, so tests can be exact.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cti import causes
from dialer.domain import Outcome


class CalleeKind(StrEnum):
    """What happens when the number is dialled."""

    HUMAN = "human"
    MACHINE = "machine"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    FAILED = "failed"  # unallocated number
    CONGESTION = "congestion"


#: The Q.850 cause each unanswered kind ends with (what Asterisk puts in Hangup `Cause`).
CAUSE_BY_KIND: dict[CalleeKind, int] = {
    CalleeKind.HUMAN: causes.NORMAL_CLEARING,
    CalleeKind.MACHINE: causes.NORMAL_CLEARING,
    CalleeKind.BUSY: causes.USER_BUSY,
    CalleeKind.NO_ANSWER: causes.NO_ANSWER,
    CalleeKind.REJECTED: causes.CALL_REJECTED,
    CalleeKind.FAILED: causes.UNALLOCATED,
    CalleeKind.CONGESTION: causes.NORMAL_CIRCUIT_CONGESTION,
}

#: AMDCAUSE values as Asterisk's AMD() writes them (see the 08_amd transcript).
AMD_CAUSE_BY_KIND: dict[CalleeKind, str] = {
    CalleeKind.HUMAN: "HUMAN-801-800",
    CalleeKind.MACHINE: "LONGGREETING-1500-1500",
}


@dataclass(frozen=True, slots=True)
class CalleeBehaviour:
    """One callee's behaviour on one attempt. Times are in (unscaled) seconds.

    `ring_s` is how long the phone rings before the answer or the failure (for NO_ANSWER: the
    time it would ring; the dialer's originate timeout normally ends it first). `talk_s` is
    the time from answer to the callee's hang-up, 0 for an unanswered call.
    """

    kind: CalleeKind
    ring_s: float
    talk_s: float
    cause: int
    dtmf: str = ""

    @property
    def answered(self) -> bool:
        return self.kind in (CalleeKind.HUMAN, CalleeKind.MACHINE)

    @property
    def amd_status(self) -> str | None:
        """AMDSTATUS as AMD() would set it (HUMAN / MACHINE), None when never answered."""
        return self.kind.value.upper() if self.answered else None

    @property
    def amd_cause(self) -> str | None:
        return AMD_CAUSE_BY_KIND.get(self.kind)

    @property
    def outcome(self) -> Outcome:
        """The dialer outcome this behaviour should produce, via the one cause mapping."""
        return causes.outcome_for_call(
            answered=self.answered, cause=self.cause, amd=self.amd_status
        )


@dataclass(frozen=True, slots=True)
class Override:
    """Numbers matching `pattern` (re.search) always behave as `kind`.

    `ring_s` / `talk_s` / `dtmf`, when given, replace the drawn values.
    """

    pattern: str
    kind: CalleeKind
    ring_s: float | None = None
    talk_s: float | None = None
    dtmf: str | None = None

    def matches(self, number: str) -> bool:
        return re.search(self.pattern, number) is not None


def _default_weights() -> dict[CalleeKind, float]:
    return {
        CalleeKind.HUMAN: 0.35,
        CalleeKind.MACHINE: 0.15,
        CalleeKind.BUSY: 0.08,
        CalleeKind.NO_ANSWER: 0.30,
        CalleeKind.REJECTED: 0.04,
        CalleeKind.FAILED: 0.05,
        CalleeKind.CONGESTION: 0.03,
    }


@dataclass(frozen=True, slots=True)
class Population:
    """The callee population. Weights need not sum to 1; they are normalised.

    Ring time to answer is uniform in `ring_range_s`; busy/rejected/failed/congestion end
    after `fail_ring_range_s`; talk time is lognormal with median `talk_median_s` and shape
    `talk_sigma`, cut to `talk_max_s`. `dtmf_probability` is the chance an answered human
    presses `dtmf_digits` (e.g. an IVR choice).
    """

    weights: dict[CalleeKind, float] = field(default_factory=_default_weights)
    ring_range_s: tuple[float, float] = (4.0, 20.0)
    fail_ring_range_s: tuple[float, float] = (0.5, 3.0)
    no_answer_ring_s: float = 60.0
    talk_median_s: float = 90.0
    talk_sigma: float = 0.8
    talk_max_s: float = 1800.0
    machine_talk_range_s: tuple[float, float] = (8.0, 30.0)
    dtmf_probability: float = 0.0
    dtmf_digits: str = "1"
    overrides: Sequence[Override] = ()

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 for w in self.weights.values()):
            raise ValueError(
                f"population weights must be non-negative and not empty: {self.weights}"
            )
        if sum(self.weights.values()) <= 0:
            raise ValueError("population weights sum to 0; give at least one kind a weight > 0")
        for name in ("ring_range_s", "fail_ring_range_s", "machine_talk_range_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be 0 <= low <= high, got {(lo, hi)}")

    def override_for(self, number: str) -> Override | None:
        for override in self.overrides:
            if override.matches(number):
                return override
        return None

    def draw(self, number: str, rng: random.Random) -> CalleeBehaviour:
        """Draw the behaviour of `number` on one attempt, using only `rng` for chance."""
        override = self.override_for(number)
        if override is not None:
            kind = override.kind
        else:
            kinds = list(self.weights)
            kind = rng.choices(kinds, weights=[self.weights[k] for k in kinds])[0]
        ring, talk, dtmf = self._timings(kind, rng)
        if override is not None:
            ring = override.ring_s if override.ring_s is not None else ring
            talk = override.talk_s if override.talk_s is not None else talk
            dtmf = override.dtmf if override.dtmf is not None else dtmf
        return CalleeBehaviour(
            kind=kind, ring_s=ring, talk_s=talk, cause=CAUSE_BY_KIND[kind], dtmf=dtmf
        )

    def _timings(self, kind: CalleeKind, rng: random.Random) -> tuple[float, float, str]:
        # Always consume the same number of draws per kind, so one override does not shift
        # the random stream of the numbers that follow it more than the kind itself does.
        if kind is CalleeKind.HUMAN:
            ring = rng.uniform(*self.ring_range_s)
            spread = math.exp(rng.gauss(0.0, self.talk_sigma))
            talk = min(self.talk_max_s, self.talk_median_s * spread)
            dtmf = self.dtmf_digits if rng.random() < self.dtmf_probability else ""
            return ring, talk, dtmf
        if kind is CalleeKind.MACHINE:
            return rng.uniform(*self.ring_range_s), rng.uniform(*self.machine_talk_range_s), ""
        if kind is CalleeKind.NO_ANSWER:
            return self.no_answer_ring_s, 0.0, ""
        return rng.uniform(*self.fail_ring_range_s), 0.0, ""


#: The number suffixes of `deterministic_test_population`, like the reference dialplan's
#: extension patterns. Tests that need more kinds add their own overrides after these.
DETERMINISTIC_OVERRIDES: tuple[Override, ...] = (
    Override(r"0017$", CalleeKind.BUSY),
    Override(r"0019$", CalleeKind.NO_ANSWER),
    Override(r"0021$", CalleeKind.REJECTED),
    Override(r"0001$", CalleeKind.FAILED),
    Override(r"0034$", CalleeKind.CONGESTION),
    Override(r"0666$", CalleeKind.MACHINE),
)


def deterministic_test_population() -> Population:
    """A population whose outcome depends on the number only, like the reference dialplan.

    Suffixes: ...0017 busy, ...0019 no answer, ...0021 rejected, ...0001 failed (unallocated),
    ...0034 congestion, ...0666 machine; anything else is a human.
    """
    return Population(weights={CalleeKind.HUMAN: 1.0}, overrides=DETERMINISTIC_OVERRIDES)
