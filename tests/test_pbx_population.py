"""The callee population model: seeded, pure, with per-number overrides."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cti import causes
from dialer.domain import Outcome
from sim.population import (
    CalleeKind,
    Override,
    Population,
    deterministic_test_population,
)


def test_same_seed_gives_same_behaviours() -> None:
    pop = Population()
    a = [pop.draw(f"555{i:04d}", random.Random(7)) for i in range(50)]
    b = [pop.draw(f"555{i:04d}", random.Random(7)) for i in range(50)]
    assert a == b


def test_kind_frequencies_follow_weights() -> None:
    pop = Population()
    rng = random.Random(1)
    counts = Counter(pop.draw("5550000", rng).kind for _ in range(20000))
    total = sum(pop.weights.values())
    for kind, weight in pop.weights.items():
        assert counts[kind] / 20000 == pytest.approx(weight / total, abs=0.015)


def test_override_by_suffix_is_always_busy_with_cause_17() -> None:
    pop = Population(overrides=(Override(r"0017$", CalleeKind.BUSY),))
    rng = random.Random(3)
    draws = [pop.draw("+3312340017", rng) for _ in range(100)]
    assert {d.kind for d in draws} == {CalleeKind.BUSY}
    assert {d.cause for d in draws} == {causes.USER_BUSY}
    assert all(d.outcome is Outcome.BUSY and not d.answered for d in draws)


def test_ring_time_of_answered_calls_is_within_range() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0}, ring_range_s=(4.0, 20.0))
    rng = random.Random(5)
    rings = [pop.draw("1", rng).ring_s for _ in range(2000)]
    assert min(rings) >= 4.0 and max(rings) <= 20.0
    assert max(rings) - min(rings) > 14.0


def test_talk_time_is_lognormal_around_median_and_capped() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0}, talk_median_s=60.0, talk_max_s=600.0)
    rng = random.Random(9)
    talks = sorted(pop.draw("1", rng).talk_s for _ in range(4001))
    assert talks[2000] == pytest.approx(60.0, rel=0.1)
    assert talks[-1] <= 600.0


def test_machine_sets_amd_machine_and_human_sets_amd_human() -> None:
    pop = deterministic_test_population()
    rng = random.Random(0)
    machine = pop.draw("5550666", rng)
    human = pop.draw("5551234", rng)
    assert (machine.amd_status, machine.amd_cause) == ("MACHINE", "LONGGREETING-1500-1500")
    assert (human.amd_status, human.amd_cause) == ("HUMAN", "HUMAN-801-800")
    assert machine.outcome is Outcome.MACHINE and human.outcome is Outcome.HUMAN


@pytest.mark.parametrize(
    ("number", "outcome"),
    [
        ("5550017", Outcome.BUSY),
        ("5550019", Outcome.NO_ANSWER),
        ("5550021", Outcome.REJECTED),
        ("5550001", Outcome.FAILED),
        ("5550034", Outcome.CONGESTION),
        ("5550666", Outcome.MACHINE),
        ("5559999", Outcome.HUMAN),
    ],
)
def test_deterministic_population_outcome_depends_on_number_only(
    number: str, outcome: Outcome
) -> None:
    assert deterministic_test_population().draw(number, random.Random()).outcome is outcome


def test_dtmf_probability_one_makes_every_human_press_digits() -> None:
    pop = Population(weights={CalleeKind.HUMAN: 1.0}, dtmf_probability=1.0, dtmf_digits="42#")
    assert pop.draw("1", random.Random(2)).dtmf == "42#"


def test_override_can_fix_timings_and_digits() -> None:
    pop = Population(
        overrides=(Override(r"^777", CalleeKind.HUMAN, ring_s=1.0, talk_s=2.0, dtmf="9"),)
    )
    b = pop.draw("7770000", random.Random(4))
    assert (b.kind, b.ring_s, b.talk_s, b.dtmf) == (CalleeKind.HUMAN, 1.0, 2.0, "9")


def test_invalid_weights_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="sum to 0"):
        Population(weights={CalleeKind.HUMAN: 0.0})
    with pytest.raises(ValueError, match="ring_range_s"):
        Population(ring_range_s=(5.0, 1.0))
