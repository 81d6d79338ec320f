"""Campaigns and strategies in the database: create, list, change state, build the policy.

The only place that turns a `campaigns` row into the pure `CampaignPolicy` the strategies and
compliance code take.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import phonenumbers
from sqlalchemy import Connection, Engine, insert, select, update

from dialer.db import write_transaction
from dialer.db.models import AgentGroup, Campaign, CampaignAgentGroup, CampaignDncList, DncList
from dialer.db.models import Strategy as StrategyRow
from dialer.dispositions import DEFAULT_CATALOGUE, add_dispositions
from dialer.domain import (
    CampaignChannel,
    CampaignState,
    DialMode,
    check_campaign_transition,
)
from dialer.phones import default_zone_for_region
from strategies.compliance import (
    CallingHours,
    ComplianceConfigError,
    parse_holidays,
    zone,
)
from strategies.model import BUILTIN_STRATEGIES, CampaignPolicy, Strategy

#: Abandon-rate profiles: (target, window in seconds, UK rules on).
ABANDON_PROFILES: dict[str, tuple[float, int, bool]] = {
    "us": (0.03, 30 * 86400, False),  # TSR/TCPA: 3% of live answers over 30 days
    "uk": (0.03, 86400, True),  # Ofcom: 3% over 24 hours, plus the 72-hour rule
}


class CampaignError(ValueError):
    """A campaign request that cannot be carried out; the message says why and what to do."""


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign as the CLI and services report it."""

    id: int
    name: str
    channel: str
    dial_mode: str
    state: str
    strategy: str
    default_region: str
    default_timezone: str
    calling_hours: dict[str, str | None]
    holidays: list[str]
    abandon_target: float
    abandon_window_s: int
    uk_rules: bool
    caller_id: str | None
    script_ref: str | None
    dnc_lists: list[str]
    agent_groups: list[str]
    ivr_flow: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ensure_strategy(conn: Connection, strategy: Strategy, now: datetime) -> int:
    """Insert `strategy` if no strategy has its name; return the row id."""
    sid = conn.scalar(select(StrategyRow.id).where(StrategyRow.name == strategy.name))
    if sid is None:
        sid = conn.scalar(
            insert(StrategyRow)
            .values(name=strategy.name, definition=strategy.to_dict(), created_at=now)
            .returning(StrategyRow.id)
        )
    assert sid is not None
    return sid


def save_strategy(engine: Engine, strategy: Strategy, now: datetime) -> int:
    """Insert or replace the strategy of that name (campaigns using it see the new plan)."""
    with write_transaction(engine) as conn:
        sid = conn.scalar(select(StrategyRow.id).where(StrategyRow.name == strategy.name))
        if sid is None:
            return ensure_strategy(conn, strategy, now)
        conn.execute(
            update(StrategyRow).where(StrategyRow.id == sid).values(definition=strategy.to_dict())
        )
        return sid


def load_strategy(conn: Connection, name: str) -> Strategy:
    """The named strategy from the database, else the built-in of that name."""
    row = conn.scalar(select(StrategyRow.definition).where(StrategyRow.name == name))
    if row is not None:
        return Strategy.from_dict(row, source=f"<strategy {name!r} in the database>")
    if name in BUILTIN_STRATEGIES:
        return BUILTIN_STRATEGIES[name]
    raise CampaignError(
        f"no strategy named {name!r}; known: {', '.join(list_strategy_names(conn))}"
    )


def list_strategy_names(conn: Connection) -> list[str]:
    names = set(conn.scalars(select(StrategyRow.name))) | set(BUILTIN_STRATEGIES)
    return sorted(names)


def _named_ids(
    conn: Connection, model: type[DncList] | type[AgentGroup], names: Sequence[str]
) -> list[int]:
    ids = []
    for n in names:
        rid = conn.scalar(select(model.id).where(model.name == n))
        if rid is None:
            rid = conn.scalar(insert(model).values(name=n).returning(model.id))
        assert rid is not None
        ids.append(rid)
    return ids


def create_campaign(
    engine: Engine,
    name: str,
    now: datetime,
    *,
    strategy: str = "default",
    channel: str = "voice",
    dial_mode: str = "progressive",
    default_region: str = "US",
    default_timezone: str | None = None,
    calling_hours: dict[str, Any] | None = None,
    holidays: Sequence[str] = (),
    abandon_profile: str = "us",
    abandon_target: float | None = None,
    abandon_window_s: int | None = None,
    caller_id: str | None = None,
    script_ref: str | None = None,
    dnc_lists: Sequence[str] = (),
    agent_groups: Sequence[str] = (),
    ivr_flow: str | None = None,
) -> int:
    """Validate the settings, create the campaign in `draft`, and return its id.

    The campaign starts with the default disposition catalogue (`DEFAULT_CATALOGUE`).
    An agentless campaign needs `ivr_flow`: the IVR flow (by name, as `paceline run`'s
    `[ivr]` loads it) that each answered call is handed to.

    Raises `CampaignError` naming the bad setting. DNC lists and agent groups are created on
    first mention, so a campaign can reference a list before it is imported.
    """
    name = name.strip()
    if not name:
        raise CampaignError("a campaign needs a name")
    try:
        ch = CampaignChannel(channel)
    except ValueError:
        raise CampaignError(
            f"channel {channel!r}: use one of {', '.join(c.value for c in CampaignChannel)}"
        ) from None
    try:
        mode = DialMode(dial_mode)
    except ValueError:
        raise CampaignError(
            f"dial mode {dial_mode!r}: use one of {', '.join(m.value for m in DialMode)}"
        ) from None
    if ivr_flow is not None:
        check_ivr_flow_name(ivr_flow)
    elif mode is DialMode.AGENTLESS:
        raise CampaignError("an agentless campaign hands its answered calls to an IVR flow: "
                            "name it (--ivr-flow agentless_optout)")
    region = default_region.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise CampaignError(f"default region {default_region!r} is not an ISO 3166 region code")
    if default_timezone is None:
        default_timezone = default_zone_for_region(region)
    try:
        zone(default_timezone)
        hours = CallingHours.from_dict(calling_hours)
        parse_holidays(holidays)
    except ComplianceConfigError as exc:
        raise CampaignError(str(exc)) from None
    if abandon_profile not in ABANDON_PROFILES:
        raise CampaignError(
            f"abandon profile {abandon_profile!r}: use one of {', '.join(ABANDON_PROFILES)}"
        )
    target, window, uk = ABANDON_PROFILES[abandon_profile]
    target = target if abandon_target is None else abandon_target
    window = window if abandon_window_s is None else abandon_window_s
    if not 0 < target < 1:
        raise CampaignError(f"abandon target {target!r} must be a fraction such as 0.03")
    if window <= 0:
        raise CampaignError(f"abandon window {window!r} must be a positive number of seconds")
    with write_transaction(engine) as conn:
        if conn.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
            raise CampaignError(f"a campaign named {name!r} exists already")
        strat = load_strategy(conn, strategy)
        sid = ensure_strategy(conn, strat, now)
        cid = conn.scalar(
            insert(Campaign)
            .values(
                name=name,
                channel=ch.value,
                dial_mode=mode.value,
                state=CampaignState.DRAFT.value,
                strategy_id=sid,
                default_region=region,
                default_timezone=default_timezone,
                calling_hours=hours.to_dict(),
                holidays=list(holidays),
                abandon_target=target,
                abandon_window_s=window,
                uk_rules=uk,
                caller_id=caller_id,
                script_ref=script_ref,
                ivr_flow=ivr_flow,
                created_at=now,
                updated_at=now,
            )
            .returning(Campaign.id)
        )
        assert cid is not None
        for lid in _named_ids(conn, DncList, dnc_lists):
            conn.execute(insert(CampaignDncList).values(campaign_id=cid, list_id=lid))
        for gid in _named_ids(conn, AgentGroup, agent_groups):
            conn.execute(insert(CampaignAgentGroup).values(campaign_id=cid, group_id=gid))
        add_dispositions(conn, cid, DEFAULT_CATALOGUE)
        return int(cid)


#: A flow name that is safe as an Asterisk extension: `[paceline-ivr-outbound]` matches
#: `_[a-z].` (a dash would be ignored in matching; upper case and symbols do not match).
IVR_FLOW_NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,99}")


def check_ivr_flow_name(name: str) -> None:
    """Raise `CampaignError` unless `name` can name a flow for an agentless campaign."""
    if not IVR_FLOW_NAME_RE.fullmatch(name):
        raise CampaignError(f"IVR flow name {name!r}: use 2 to 100 lower-case letters, digits "
                            f"and _, starting with a letter (the flow file's `flow:`)")


def find_campaign_id(conn: Connection, ref: str | int) -> int:
    """Resolve a campaign by name, else by id; raise `CampaignError` naming the reference.

    The name wins, so that a campaign called "2026" is found by its name.
    """
    cid = conn.scalar(select(Campaign.id).where(Campaign.name == str(ref)))
    if cid is None and (isinstance(ref, int) or ref.isdigit()):
        cid = conn.scalar(select(Campaign.id).where(Campaign.id == int(ref)))
    if cid is None:
        raise CampaignError(f"no campaign {ref!r} (see 'paceline campaign list')")
    return cid


def campaign_info(conn: Connection, campaign_id: int) -> CampaignInfo:
    c = conn.execute(select(Campaign).where(Campaign.id == campaign_id)).one()
    strategy = conn.scalar(select(StrategyRow.name).where(StrategyRow.id == c.strategy_id))
    dnc = conn.scalars(
        select(DncList.name)
        .join(CampaignDncList, CampaignDncList.list_id == DncList.id)
        .where(CampaignDncList.campaign_id == campaign_id)
        .order_by(DncList.name)
    ).all()
    groups = conn.scalars(
        select(AgentGroup.name)
        .join(CampaignAgentGroup, CampaignAgentGroup.group_id == AgentGroup.id)
        .where(CampaignAgentGroup.campaign_id == campaign_id)
        .order_by(AgentGroup.name)
    ).all()
    return CampaignInfo(
        id=c.id,
        name=c.name,
        channel=c.channel,
        dial_mode=c.dial_mode,
        state=c.state,
        strategy=strategy or "?",
        default_region=c.default_region,
        default_timezone=c.default_timezone,
        calling_hours=CallingHours.from_dict(c.calling_hours).to_dict(),
        holidays=list(c.holidays or []),
        abandon_target=c.abandon_target,
        abandon_window_s=c.abandon_window_s,
        uk_rules=c.uk_rules,
        caller_id=c.caller_id,
        script_ref=c.script_ref,
        dnc_lists=list(dnc),
        agent_groups=list(groups),
        ivr_flow=c.ivr_flow,
    )


def list_campaigns(conn: Connection) -> list[CampaignInfo]:
    return [
        campaign_info(conn, cid) for cid in conn.scalars(select(Campaign.id).order_by(Campaign.id))
    ]


def set_campaign_state(engine: Engine, ref: str | int, new: CampaignState, now: datetime) -> str:
    """Move a campaign to `new` if the state machine allows it; return the old state."""
    with write_transaction(engine) as conn:
        cid = find_campaign_id(conn, ref)
        old = CampaignState(
            conn.execute(select(Campaign.state).where(Campaign.id == cid)).scalar_one()
        )
        try:
            check_campaign_transition(old, new)
        except ValueError:
            raise CampaignError(
                f"campaign {ref!r} is {old.value}; it cannot go to {new.value}"
            ) from None
        conn.execute(
            update(Campaign).where(Campaign.id == cid).values(state=new.value, updated_at=now)
        )
        return old.value


def campaign_policy(conn: Connection, campaign_id: int) -> CampaignPolicy:
    """The pure policy the strategy planner and the compliance filter take."""
    c = conn.execute(select(Campaign).where(Campaign.id == campaign_id)).one()
    definition = conn.scalar(select(StrategyRow.definition).where(StrategyRow.id == c.strategy_id))
    assert definition is not None
    return CampaignPolicy(
        strategy=Strategy.from_dict(definition, source=f"<strategy of campaign {c.name!r}>"),
        channel=CampaignChannel(c.channel),
        dial_mode=DialMode(c.dial_mode),
        calling_hours=CallingHours.from_dict(c.calling_hours),
        holidays=parse_holidays(c.holidays or []),
        uk_rules=c.uk_rules,
    )
