"""The discrete-event pacing simulator (sim.des) and its scenarios (sim.scenario).

Most tests drive the simulator with small fake pacers that record what they are told, on short
shifts with few agents; the last ones drive the real `dialer.pacing.Pacer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dialer.cli import main
from dialer.domain import Outcome
from dialer.pacing import PacingSnapshot
from sim.des import SimResult, Simulation, simulate, with_changes
from sim.scenario import (
    PROB_KEYS,
    SCENARIO_DIR,
    Dist,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)

STANDARD = SCENARIO_DIR / "standard.toml"
DROP = SCENARIO_DIR / "answer_drop.toml"


def scenario(**sections: Mapping[str, Any]) -> Scenario:
    """The standard population with the given sections merged in (a dict per section)."""
    data: dict[str, Any] = {
        "run": {"hours": 0.25, "seed": 7, "bin_s": 300},
        "agents": {"count": 3, "wrap": 5},
        "population": {"human_p": 0.25, "machine_p": 0.0, "busy_p": 0.15,
                       "no_answer_p": 0.60, "rejected_p": 0.0, "failed_p": 0.0},
    }
    for name, table in sections.items():
        data[name] = {**data.get(name, {}), **table}
    return parse_scenario(data, "test.toml")


class Recorder:
    """A pacer that keeps `ready - ringing` calls in flight (progressive) or a fixed plan, and
    records every call the simulator makes, with the simulation clock at that moment."""

    def __init__(self, plan: Mapping[float, int] | None = None, lines: float = 1.0) -> None:
        self.sim: Simulation | None = None
        self.planned = plan is not None
        self.plan = dict(plan or {})
        self.lines = lines
        self.placed_at: list[float] = []
        self.calls: list[tuple[float, float, str]] = []  # (now, ring_s, outcome)
        self.connects: list[tuple[float, float]] = []
        self.abandons: list[float] = []
        self.handles: list[float] = []
        self.snaps: list[PacingSnapshot] = []
        self.modes: list[tuple[float, str]] = []

    def set_mode(self, mode: str) -> None:
        self.modes.append((self._now(), mode))

    def _now(self) -> float:
        assert self.sim is not None
        return self.sim.now

    def observe_call(self, ring_s: float, outcome: str) -> None:
        self.calls.append((self._now(), ring_s, outcome))

    def observe_handle(self, handle_s: float) -> None:
        self.handles.append(handle_s)

    def observe_connect(self, wait_s: float) -> None:
        self.connects.append((self._now(), wait_s))

    def observe_abandon(self) -> None:
        self.abandons.append(self._now())

    def decide(self, snap: PacingSnapshot) -> int:
        self.snaps.append(snap)
        if self.planned:
            n = self.plan.pop(snap.now, 0)
        else:
            staffed = snap.ready_agents + len(snap.busy_elapsed)
            n = max(0, int(self.lines * staffed) - len(snap.busy_elapsed)
                    - len(snap.ringing_elapsed)) if snap.ready_agents else 0
        self.placed_at += [snap.now] * n
        return n


def run(sc: Scenario, pacer: Recorder) -> SimResult:
    sim = Simulation(sc, pacer)
    pacer.sim = sim
    return sim.run()


# --- the simulation -------------------------------------------------------------------------


def test_seeded_runs_are_reproducible() -> None:
    sc = scenario(agents={"count": 5})
    a, b = run(sc, Recorder(lines=1.8)), run(sc, Recorder(lines=1.8))
    assert a.metrics == b.metrics and a.series == b.series
    c = run(with_changes(sc, seed=8), Recorder(lines=1.8))
    assert c.metrics["calls_placed"] != a.metrics["calls_placed"] or c.metrics != a.metrics


def test_every_call_ends_in_one_outcome_and_agent_time_adds_up() -> None:
    sc = scenario(agents={"count": 6}, run={"hours": 0.5})
    pacer = Recorder(lines=2.0)  # overdials: makes abandons and waits too
    r = run(sc, pacer)
    m = r.metrics
    outcomes = m["outcomes"]
    assert m["calls_placed"] == len(pacer.placed_at) == m["calls_ended"] == sum(outcomes.values())
    assert m["calls_placed"] > 100
    # Each placed call is reported exactly once to the pacer, abandons once more.
    assert len(pacer.calls) == m["calls_placed"]
    assert outcomes[Outcome.ABANDONED] == len(pacer.abandons) == m["abandons"] > 0
    assert outcomes[Outcome.HUMAN] == len(pacer.connects)
    humans = sum(1 for _, _, o in pacer.calls if o == "human")
    assert humans == m["live_answers"] == outcomes[Outcome.HUMAN] + outcomes[Outcome.ABANDONED]
    assert math.isclose(m["abandon_rate"], m["abandons"] / m["live_answers"], rel_tol=1e-5)
    # Agent time: busy time is exactly the handle time reported; logged-in time is the shift
    # plus at most the drain (the last calls' talk + wrap-up).
    assert math.isclose(m["agent_busy_s"], sum(pacer.handles), rel_tol=1e-5)
    shift = 6 * sc.duration_s
    assert shift <= m["agent_logged_in_s"] <= shift + 6 * 1800
    assert 0 < m["occupancy"] <= 1
    assert all(0 <= x <= 1 for x in r.series["occupancy"] if not math.isnan(x))


def test_two_second_rule_abandons_when_all_agents_are_busy() -> None:
    sc = scenario(
        agents={"count": 1, "wrap": 5},
        population={"human_p": 1.0, "busy_p": 0.0, "no_answer_p": 0.0,
                    "ring_to_answer": 5, "talk": 60},
    )
    pacer = Recorder(plan={0.0: 3, 1.0: 1})  # 4 people answer within a second, 1 agent
    r = run(sc, pacer)
    assert [round(t, 6) for t, _ in pacer.connects] == [5.0]
    assert pacer.connects[0][1] == 0.0  # the first found the agent ready
    # The other three waited the full 2 s from their answer (5.0, 5.0, 6.0), then abandoned.
    assert [round(t, 6) for t in pacer.abandons] == [7.0, 7.0, 8.0]
    assert r.metrics["abandon_rate"] == 0.75
    assert pacer.handles == [65.0]


def test_a_waiting_person_gets_the_agent_freed_within_two_seconds() -> None:
    sc = scenario(
        agents={"count": 1, "wrap": 0},
        population={"human_p": 1.0, "busy_p": 0.0, "no_answer_p": 0.0,
                    "ring_to_answer": 5, "talk": 3.5},
    )
    pacer = Recorder(plan={0.0: 1, 2.0: 1})  # answers at 5.0 and 7.0; the agent frees at 8.5
    run(sc, pacer)
    assert [(round(t, 6), round(w, 6)) for t, w in pacer.connects] == [(5.0, 0.0), (8.5, 1.5)]
    assert pacer.abandons == []


def test_unanswered_calls_ring_at_least_the_minimum() -> None:
    sc = scenario(
        dialer={"no_answer_timeout_s": 25, "min_ring_s": 15},
        # Answers that would come after the timeout become no answers at the timeout.
        population={"human_p": 0.2, "no_answer_p": 0.8, "busy_p": 0.0,
                    "ring_to_answer": {"dist": "uniform", "low": 20, "high": 40}},
    )
    pacer = Recorder()
    run(sc, pacer)
    no_answer = [ring for _, ring, o in pacer.calls if o == "no_answer"]
    assert len(no_answer) > 20 and all(ring == 25.0 for ring in no_answer)
    assert all(ring < 25.0 for _, ring, o in pacer.calls if o == "human")
    with pytest.raises(ScenarioError, match=r"\[dialer\] no_answer_timeout_s: must be at least "
                                            r"min_ring_s \(15\)"):
        scenario(dialer={"no_answer_timeout_s": 10})


def test_the_pacer_learns_each_outcome_only_when_it_happens() -> None:
    sc = scenario(agents={"count": 4})
    plan = {round(k * 0.25, 2): 1 for k in range(0, 3600, 7)}  # one call at distinct instants
    pacer = Recorder(plan=plan)
    r = run(sc, pacer)
    placed = sorted(pacer.placed_at)
    assert len(pacer.calls) == len(placed) == r.metrics["calls_placed"]
    # observe_call comes at place time + ring_s: never earlier (no peeking at the future).
    starts = sorted(round(now - ring, 6) for now, ring, _ in pacer.calls)
    assert starts == [round(t, 6) for t in placed]
    times = [now for now, _, _ in pacer.calls]
    assert times == sorted(times)
    # And a call is "ringing" for the pacer exactly until then.
    for snap in pacer.snaps[:400]:
        outstanding = sum(1 for now, ring, _ in pacer.calls
                          if round(now - ring, 6) < snap.now < now)
        assert len(snap.ringing_elapsed) == outstanding
        assert np.all(snap.ringing_elapsed >= 0)


def test_amd_delays_the_answer_and_machines_never_reach_an_agent() -> None:
    sc = scenario(
        dialer={"amd": True, "amd_delay_s": 2.5},
        population={"human_p": 0.5, "machine_p": 0.5, "busy_p": 0.0, "no_answer_p": 0.0,
                    "ring_to_answer": 6},
    )
    pacer = Recorder()
    r = run(sc, pacer)
    rings = {(o, ring) for _, ring, o in pacer.calls}
    assert rings == {("human", 8.5), ("machine", 8.5)}
    assert r.metrics["outcomes"]["machine"] > 0
    assert len(pacer.connects) + len(pacer.abandons) == r.metrics["live_answers"]
    with pytest.raises(ScenarioError, match=r"\[population\] machine_p: .*amd = false"):
        scenario(population={"human_p": 0.2, "machine_p": 0.05, "no_answer_p": 0.6})


def test_busy_elapsed_counts_from_the_connect() -> None:
    sc = scenario(
        agents={"count": 2, "wrap": 10},
        population={"human_p": 1.0, "busy_p": 0.0, "no_answer_p": 0.0,
                    "ring_to_answer": 4, "talk": 100},
    )
    pacer = Recorder(plan={0.0: 2})
    run(sc, pacer)
    at_50 = next(s for s in pacer.snaps if s.now == 50.0)
    assert at_50.ready_agents == 0 and list(at_50.busy_elapsed) == [46.0, 46.0]
    at_120 = next(s for s in pacer.snaps if s.now == 120.0)
    assert at_120.ready_agents == 2 and len(at_120.busy_elapsed) == 0


def test_agent_groups_log_in_and_out_on_their_own_shifts() -> None:
    sc = scenario(
        run={"hours": 1.0},
        agents={"count": 2, "groups": [{"count": 3, "start_h": 0.25, "end_h": 0.5, "wrap": 2}]},
        pacer={"changes": [{"at_h": 0.75, "mode": "progressive"}]},
    )
    assert sc.total_agents == 5 and sc.groups[0].wrap == Dist.fixed(2)
    pacer = Recorder(lines=1.5)
    r = run(sc, pacer)
    staffed = {s.now: s.ready_agents + len(s.busy_elapsed) for s in pacer.snaps}
    assert staffed[600.0] == 2 and staffed[1200.0] == 5
    assert staffed[2400.0] == 2  # the group left at 0.5 h (after their calls in progress)
    assert 2 * 3600 + 3 * 900 <= r.metrics["agent_logged_in_s"] <= 2 * 3600 + 3 * 900 + 3 * 1800
    assert r.metrics["agents"] == 5
    assert pacer.modes == [(2700.0, "progressive")]
    with pytest.raises(ScenarioError, match=r"\[agents.groups\[0\]\] end_h: must be at least"):
        scenario(agents={"groups": [{"count": 1, "start_h": 0.2, "end_h": 0.1}]})
    with pytest.raises(ScenarioError, match=r"\[pacer.changes\[0\]\] at: unknown key"):
        scenario(pacer={"changes": [{"at": 1, "mode": "power"}]})


def test_time_varying_answer_rate_is_drawn_per_period() -> None:
    sc = load_scenario(DROP)
    assert sc.probs_at(0.0)[0] == 0.35 and sc.probs_at(4 * 3600.0)[0] == 0.10
    short = with_changes(sc, hours=1.0)  # periods scale with the run: the drop stays mid-shift
    assert short.probs_at(1799.0)[0] == 0.35 and short.probs_at(1800.0)[0] == 0.10


def test_progressive_8h_100_agents_matches_the_renewal_formula() -> None:
    # Its speed is bench/pacing_quality.py's business ("timing:" lines), not a test's.
    sc = with_changes(load_scenario(STANDARD), agents=100, mode="progressive")
    r = simulate(sc)
    assert r.metrics["abandons"] == 0  # progressive never abandons
    # Renewal check: per live answer an agent waits for 3 failed attempts on average (busy
    # 1.75 s or no answer 25 s, weighted 0.15 : 0.60) and one 12 s ring, each placed on the
    # next tick (+0.125 s), then handles 90 + 15 s.
    failed = (0.15 * 1.75 + 0.60 * 25.0) / 0.75 + 0.125
    idle = 3 * failed + 12.0 + 0.125
    assert abs(r.metrics["occupancy"] - 105.0 / (105.0 + idle)) < 0.006
    assert abs(r.metrics["live_answers_per_agent_hour"] - 3600.0 / (105.0 + idle)) < 0.3


# --- the real pacer -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["predictive", "progressive", "vicidial_adaptive"])
def test_zero_agents_place_no_calls(mode: str) -> None:
    sc = with_changes(load_scenario(STANDARD), agents=0, hours=0.5, mode=mode)
    r = simulate(sc)
    assert r.metrics["calls_placed"] == 0 and r.metrics["occupancy"] is None


def test_seeded_runs_with_the_real_pacer_are_reproducible() -> None:
    sc = with_changes(load_scenario(STANDARD), agents=10, hours=0.25, mode="predictive")
    a, b = simulate(sc), simulate(sc)
    assert a.to_json() | {"wall_s": 0} == b.to_json() | {"wall_s": 0}


def test_the_mode_changes_while_the_campaign_runs() -> None:
    sc = scenario(agents={"count": 10}, run={"hours": 0.5},
                  pacer={"mode": "power", "ratio": 2.5,
                         "changes": [{"at_h": 0.25, "mode": "progressive"}]})
    r = simulate(sc)
    # Power 2.5 abandons heavily in the first half; progressive never does in the second.
    first, *_, last = r.series["abandon_rate"]
    assert first > 0.1 and last == 0.0
    bad = scenario(pacer={"changes": [{"at_h": 0.1, "mode": "turbo"}]})
    with pytest.raises(ScenarioError, match=r"test.toml: \[pacer.changes\[0\]\] mode: .*turbo"):
        simulate(bad)


def test_predictive_keeps_the_cap_when_the_answer_rate_drops() -> None:
    # 0.35 -> 0.10 live answers after 30 min (the scenario's periods scale with the run),
    # 25 agents, 1 h: long enough for the model to leave its cold start, learn the high rate
    # and then be surprised by the drop.
    sc = with_changes(load_scenario(DROP), agents=25, hours=1.0, seed=3)
    r = simulate(sc)
    assert r.metrics["live_answers"] > 500
    assert r.metrics["abandon_rate"] <= 0.03, r.metrics
    assert r.metrics["occupancy"] > 0.6  # it does dial: progressive would be about 0.6


# --- scenarios --------------------------------------------------------------------------------


def test_shipped_scenarios_load() -> None:
    std = load_scenario(STANDARD)
    assert std.periods[0].probs == (0.25, 0.0, 0.15, 0.60, 0.0, 0.0)
    assert std.ring_to_answer == Dist.uniform(4, 20)
    assert math.isclose(std.talk.mean, 90.0)
    assert std.hours == 8 and std.no_answer_timeout_s == 25 and not std.amd
    for path in SCENARIO_DIR.glob("*.toml"):
        load_scenario(path)


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return str(info.value)


POP = "\n".join(f"{k} = {v}" for k, v in zip(PROB_KEYS, (0.25, 0, 0.15, 0.6, 0, 0), strict=True))


@pytest.mark.parametrize(("text", "message"), [
    (f"[population]\n{POP}".replace("human_p = 0.25", "human_p = 1.4"),
     "bad.toml: [population] human_p: must be between 0 and 1, got 1.4"),
    (f"[population]\n{POP}".replace("busy_p = 0.15", "busy_p = 0.1"),
     "bad.toml: [population]: outcome probabilities must sum to 1, got 0.95"),
    (f"[population]\n{POP}".replace("human_p = 0.25\n", ""),
     "bad.toml: [population] human_p: missing"),
    (f"[population]\n{POP}\nhuman = 0.3", "bad.toml: [population] human: unknown key"),
    (f"[agents]\ncount = -1\n[population]\n{POP}",
     "bad.toml: [agents] count: must be at least 0, got -1"),
    (f"[agents]\ncount = 'ten'\n[population]\n{POP}",
     "bad.toml: [agents] count: must be an integer, got 'ten'"),
    (f"[agentz]\ncount = 1\n[population]\n{POP}", "bad.toml: agentz: unknown key"),
    (f"[run]\ntick_s = 0\n[population]\n{POP}",
     "bad.toml: [run] tick_s: must be greater than 0, got 0"),
    (f"[population]\n{POP}\ntalk = {{ dist = 'lognormal', mean = 90 }}",
     "bad.toml: [population] talk.sigma: missing (needed by dist = 'lognormal')"),
    (f"[population]\n{POP}\ntalk = {{ dist = 'gamma', mean = 90 }}",
     "bad.toml: [population] talk.dist: must be one of exponential, fixed, lognormal, uniform"),
    (f"[population]\n{POP}\nring_to_answer = {{ dist = 'uniform', low = 20, high = 4 }}",
     "bad.toml: [population] ring_to_answer.high: must be at least low (20), got 4"),
    (f"[population]\n{POP}\n[[population.hours]]\nfrom_h = 4\nhuman_p = 0.1",
     "bad.toml: [population.hours[0]]: outcome probabilities must sum to 1, got 0.85"),
    (f"[population]\n{POP}\n[[population.hours]]\nhuman_p = 0.1\nno_answer_p = 0.75",
     "bad.toml: [population.hours[0]] from_h: missing"),
    (f"[dialer]\namd_delay_s = 2\n[population]\n{POP}",
     "bad.toml: [dialer] amd_delay_s: is 2 but amd = false"),
    ("[population\n", "bad.toml: file: invalid TOML"),
])
def test_invalid_scenarios_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    assert _error(tmp_path, text).startswith(message)


def test_an_unknown_pacer_setting_names_the_pacer_table() -> None:
    sc = scenario(pacer={"mode": "predictive", "ratioo": 2.0})
    with pytest.raises(ScenarioError, match=r"test.toml: \[pacer\]: "):
        simulate(sc)
    with pytest.raises(ScenarioError, match=r"test.toml: \[pacer\]: .*'nope'"):
        simulate(scenario(pacer={"mode": "nope"}))


# --- the command ----------------------------------------------------------------------------


def test_sim_run_writes_json_and_png(tmp_path: Path) -> None:
    out, png = tmp_path / "m.json", tmp_path / "m.png"
    result = CliRunner().invoke(main, [
        "sim", "run", str(STANDARD), "--agents", "5", "--hours", "0.5", "--mode", "progressive",
        "--seed", "3", "--out", str(out), "--png", str(png),
    ])
    assert result.exit_code == 0, result.output
    assert "occupancy" in result.output and str(out) in result.output
    data = json.loads(out.read_text())
    assert data["agents"] == 5 and data["seed"] == 3 and data["mode"] == "progressive"
    for key in ("occupancy", "abandon_rate", "live_answers_per_agent_hour", "wait_mean_s",
                "wait_p95_s", "dial_level_mean", "calls_placed", "outcomes", "series"):
        assert key in data
    assert set(data["series"]) >= {"t_h", "occupancy", "abandon_rate", "dial_level"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, [
        "sim", "run", str(STANDARD), "--agents", "5", "--hours", "0.5", "--mode", "progressive",
        "--seed", "3", "--out", str(out), "--png", str(png), "--json",
    ])
    assert again.exit_code == 0, again.output
    printed = json.loads(again.output)
    assert printed | {"wall_s": 0} == data | {"wall_s": 0}  # and the run is reproducible


def test_sim_run_reports_an_invalid_scenario_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(STANDARD.read_text().replace("human_p = 0.25", "human_p = 1.4"))
    result = CliRunner().invoke(main, ["sim", "run", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "bad.toml: [population] human_p: must be between 0 and 1, got 1.4" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["sim", "run", str(STANDARD), "--mode", "turbo",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "standard.toml: [pacer]: " in result.output
    assert "turbo" in result.output
