"""Simulated agents: people at their desks, driving the engine through its agent API.

Each `SimAgent` logs in, goes ready, and takes whatever call the engine routes to it. The
customer ends the conversation (the emulator's population decides the talk time); the agent
then spends a wrap-up time and confirms a disposition drawn from `DispositionMix`, with the
fields that disposition needs (a cart for a sale, a slot for an appointment, a time for a
callback). After a service restart an agent comes back paused (`recovery`) and says ready
again, as a real agent would.

They use only the public agent API of `dialer.engine.Engine` (`login`, `ready`, `dispose`),
the same calls an agent desktop makes, so a simulation exercises the real routing and
wrap-up code. Time is the engine's clock; randomness comes from one seeded `random.Random`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine as DbEngine
from sqlalchemy import insert, select

from dialer.agents import AgentError, AgentState, create_agent
from dialer.db import write_transaction
from dialer.db.models import Agent, FieldAgent, Product
from dialer.engine import Engine
from dialer.wrapup import WrapUp, WrapUpError

log = logging.getLogger(__name__)

#: Products and field agents `ensure_fixtures` creates for the simulated sales and bookings.
SIM_PRODUCTS = (("PLAN-S", "Plan S", 1900), ("PLAN-M", "Plan M", 2900), ("ROUTER", "Router", 4900))
SIM_FIELD_AGENTS = ("Field Agent 1", "Field Agent 2", "Field Agent 3")


@dataclass(frozen=True)
class DispositionMix:
    """How often simulated agents pick each disposition code (weights, normalised)."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "NI": 0.45, "SALE": 0.15, "CB": 0.12, "CBP": 0.08, "APPT": 0.08, "DNC": 0.04,
            "WRONG": 0.08,
        }
    )

    def draw(self, rng: random.Random) -> str:
        codes = list(self.weights)
        return rng.choices(codes, weights=[self.weights[c] for c in codes])[0]


def ensure_fixtures(db: DbEngine) -> None:
    """Create the products and field agents the simulated dispositions refer to (idempotent)."""
    with write_transaction(db) as conn:
        have = set(conn.scalars(select(Product.code)))
        for code, name, cents in SIM_PRODUCTS:
            if code not in have:
                conn.execute(insert(Product).values(code=code, name=name, price_cents=cents))
        agents = set(conn.scalars(select(FieldAgent.name)))
        for name in SIM_FIELD_AGENTS:
            if name not in agents:
                conn.execute(insert(FieldAgent).values(name=name))


def ensure_agents(
    db: DbEngine, n: int, *, prefix: str = "sim", groups: Sequence[str] = (),
    endpoint: str = "PJSIP/{username}",
) -> list[str]:
    """Create `n` agents `<prefix>001..` (idempotent) and return their usernames."""
    names = [f"{prefix}{i:03d}" for i in range(1, n + 1)]
    with write_transaction(db) as conn:
        have = set(conn.scalars(select(Agent.username).where(Agent.username.in_(names))))
        for u in names:
            if u not in have:
                create_agent(conn, u, endpoint.format(username=u), groups=groups)
    return names


class SimAgents:
    """A team of simulated agents working one engine. `run()` until cancelled."""

    def __init__(
        self,
        engine: Engine,
        usernames: Sequence[str],
        *,
        campaign_id: int | None = None,
        seed: int = 0,
        wrap_s: tuple[float, float] = (5.0, 25.0),
        mix: DispositionMix | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.engine = engine
        self.usernames = list(usernames)
        self.campaign_id = campaign_id
        self.rng = random.Random(seed)
        self.wrap_s = wrap_s
        self.mix = mix or DispositionMix()
        self.poll_s = poll_s
        self._wrap_until: dict[str, float] = {}
        self._appointment_slot = 0
        self.disposed: dict[str, int] = {}
        self.errors: list[str] = []

    async def run(self) -> None:
        """Work until cancelled. Every step goes through the engine's agent API."""
        clock = self.engine.clock
        while True:
            self.step(clock.monotonic())
            await clock.sleep(self.poll_s)

    def step(self, mono: float) -> None:
        """One look at every agent: log in, go ready, or finish a wrap-up that is due."""
        for u in self.usernames:
            agent = self.engine.board.agents.get(u)
            try:
                if agent is None or agent.state is AgentState.LOGGED_OUT:
                    if not self.engine.campaigns:
                        continue  # nothing to log in to yet
                    self.engine.login(u, self.campaign_id)
                    self.engine.ready(u)
                elif agent.state is AgentState.NOT_READY:
                    if agent.campaign_id is None:
                        self.engine.login(u, self.campaign_id)
                    self.engine.ready(u)
                elif agent.state is AgentState.WRAP_UP:
                    due = self._wrap_until.get(u)
                    if due is None:
                        self._wrap_until[u] = mono + self.rng.uniform(*self.wrap_s)
                    elif mono >= due:
                        del self._wrap_until[u]
                        self._dispose(u)
            except AgentError as exc:
                # Not assigned, or the campaign is not running on this node yet: try later.
                log.debug("sim agent %s: %s", u, exc)

    def _dispose(self, username: str) -> None:
        now = self.engine.clock.now()
        code = self.mix.draw(self.rng)
        wrap = WrapUp(code=code, notes=f"simulated call, {code}")
        if code in ("CB", "CBP"):
            later = timedelta(days=1, hours=self.rng.randint(0, 4))
            wrap = WrapUp(code=code, callback_at=now + later)
        elif code == "SALE":
            product = self.rng.choice(SIM_PRODUCTS)[0]
            wrap = WrapUp(code=code, cart={product: self.rng.randint(1, 2)}, notes="sold")
        elif code == "APPT":
            # One-hour slots, each simulated booking takes the next one: no double booking.
            self._appointment_slot += 1
            start = (now + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
            wrap = WrapUp(code=code, field_agent=SIM_FIELD_AGENTS[self._appointment_slot % 3],
                          appointment_at=start + timedelta(hours=self._appointment_slot // 3))
        try:
            self.engine.dispose(username, wrap)
        except WrapUpError as exc:
            # A refused booking, say: a real agent picks another option. Close it as NI.
            self.errors.append(f"{username}: {exc}")
            self.engine.dispose(username, WrapUp(code="NI", notes="fallback"))
            code = "NI"
        self.disposed[code] = self.disposed.get(code, 0) + 1
