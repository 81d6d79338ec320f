"""Typed SQLAlchemy 2.0 models. The same schema runs on SQLite and PostgreSQL.

All timestamps are timezone-aware UTC (`UtcDateTime`): SQLite has no zone-aware type, so the
decorator normalises on the way in and out, and the code never compares naive with aware times.
Schema changes go through Alembic (`dialer/db/migrations`); a test checks that the migrations
and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from dialer.domain import (
    LEASABLE_STATES,
    MAX_EXTERNAL_ID_CHARS,
    MAX_PARAM_CHARS,
    CampaignChannel,
    CampaignState,
    ContactState,
    DialMode,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware.

    Naive datetimes are refused on the way in: a naive time in a dialer is a calling-hours bug
    waiting to happen.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC time")
        value = value.astimezone(UTC)
        # SQLite stores text; dropping tzinfo there keeps the stored form sortable.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum_check(column: str, values: Any) -> CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


#: The SQL form of `LEASABLE_STATES`, as a literal so that both databases can prove a query
#: with this predicate may use the partial lease index (a bound parameter would defeat that).
LEASABLE_SQL = "state IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(LEASABLE_STATES)))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Strategy(Base):
    """A named call strategy shared by campaigns; `definition` is `Strategy.to_dict()`."""

    __tablename__ = "strategies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AgentGroup(Base):
    __tablename__ = "agent_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class DncList(Base):
    """A named do-not-call list that campaigns can reference (e.g. a client's own list)."""

    __tablename__ = "dnc_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class CampaignAgentGroup(Base):
    __tablename__ = "campaign_agent_groups"
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("agent_groups.id", ondelete="CASCADE"), primary_key=True
    )


class CampaignDncList(Base):
    __tablename__ = "campaign_dnc_lists"
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    list_id: Mapped[int] = mapped_column(
        ForeignKey("dnc_lists.id", ondelete="CASCADE"), primary_key=True
    )


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        _enum_check("channel", CampaignChannel),
        _enum_check("dial_mode", DialMode),
        _enum_check("state", CampaignState),
        CheckConstraint("abandon_target > 0 AND abandon_target < 1", name="abandon_target"),
        CheckConstraint("amd_action IN ('hangup', 'message', 'agent')", name="amd_action"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    channel: Mapped[str] = mapped_column(String(16), default=CampaignChannel.VOICE.value)
    dial_mode: Mapped[str] = mapped_column(String(16), default=DialMode.PROGRESSIVE.value)
    state: Mapped[str] = mapped_column(String(16), default=CampaignState.DRAFT.value)
    strategy_id: Mapped[int] = mapped_column(ForeignKey("strategies.id"))
    #: ISO 3166 region used to parse numbers written without a country code.
    default_region: Mapped[str] = mapped_column(String(2), default="US")
    #: Fallback zone for numbers whose zone cannot be derived (non-geographic, ambiguous).
    default_timezone: Mapped[str] = mapped_column(String(64), default="America/New_York")
    #: `strategies.compliance.CallingHours.to_dict()`; None means the 08:00-21:00 default.
    calling_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: ISO dates (contact-local) on which the campaign never dials.
    holidays: Mapped[list[str]] = mapped_column(JSON, default=list)
    abandon_target: Mapped[float] = mapped_column(Float, default=0.03)
    abandon_window_s: Mapped[int] = mapped_column(Integer, default=30 * 86400)
    #: Ofcom rules: 24 h abandon window and no repeat call within 72 h after an abandon.
    uk_rules: Mapped[bool] = mapped_column(Boolean, default=False)
    caller_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    script_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: How long a leased contact stays with one dialer node before it returns to the pool.
    lease_ttl_s: Mapped[int] = mapped_column(Integer, default=300)
    # --- what the engine does with calls (issue 5) ---
    #: How long the far end may ring before the dialer gives up (>= 15 s).
    ring_timeout_s: Mapped[int] = mapped_column(Integer, default=25)
    #: Run answering-machine detection on answered calls.
    amd: Mapped[bool] = mapped_column(Boolean, default=False)
    #: What a machine gets: `hangup`, `message` (play `machine_message`) or `agent`.
    amd_action: Mapped[str] = mapped_column(String(8), default="hangup")
    machine_message: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: The information message an abandoned live answer hears (required by the regulators).
    abandon_message: Mapped[str] = mapped_column(String(200), default="paceline/abandon")
    #: A call with no result (no answer, no hang-up) this long after its originate is dangling.
    dangling_after_s: Mapped[int] = mapped_column(Integer, default=180)
    #: Wrap-up that lasts longer than this closes as `abandoned_by_agent`.
    wrapup_timeout_s: Mapped[int] = mapped_column(Integer, default=600)
    #: SMS text with `{param1}`..`{param12}`, `{external_id}` placeholders.
    sms_template: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: An `sms_sent` contact with no reply this long after the text closes as `sms_sent_closed`.
    sms_expiry_s: Mapped[int] = mapped_column(Integer, default=7 * 86400)
    #: The IVR flow an answered call of an agentless campaign is handed to (`ivr/`).
    ivr_flow: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    strategy: Mapped[Strategy] = relationship()
    agent_groups: Mapped[list[AgentGroup]] = relationship(secondary="campaign_agent_groups")
    dnc_lists: Mapped[list[DncList]] = relationship(secondary="campaign_dnc_lists")


class CampaignZone(Base):
    """The time zones a campaign's contacts live in, kept up to date by the importer.

    The lease query filters on the zones that are inside calling hours right now; keeping the
    set here spares a DISTINCT over a million contacts on every pacing tick.
    """

    __tablename__ = "campaign_zones"
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    tz: Mapped[str] = mapped_column(String(64), primary_key=True)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("campaign_id", "external_id"),
        _enum_check("state", ContactState),
        CheckConstraint("next_phone BETWEEN 1 AND 5", name="next_phone"),
        # The lease query: due, leasable contacts of one campaign in priority/due/id order.
        Index(
            "ix_contacts_lease",
            "campaign_id",
            text("priority DESC"),
            "due_at",
            "id",
            sqlite_where=text(LEASABLE_SQL),
            postgresql_where=text(LEASABLE_SQL),
        ),
        # Expired leases: only rows that are out with a dialer.
        Index(
            "ix_contacts_lease_expiry",
            "campaign_id",
            "lease_expires_at",
            sqlite_where=text("state = 'sent_to_dialer'"),
            postgresql_where=text("state = 'sent_to_dialer'"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    external_id: Mapped[str | None] = mapped_column(String(MAX_EXTERNAL_ID_CHARS), nullable=True)
    # Each phone slot keeps what the file said and the E.164 form that is dialed.
    phone1_raw: Mapped[str] = mapped_column(String(28))
    phone1: Mapped[str] = mapped_column(String(16))
    phone2_raw: Mapped[str | None] = mapped_column(String(28), nullable=True)
    phone2: Mapped[str | None] = mapped_column(String(16), nullable=True)
    phone3_raw: Mapped[str | None] = mapped_column(String(28), nullable=True)
    phone3: Mapped[str | None] = mapped_column(String(16), nullable=True)
    phone4_raw: Mapped[str | None] = mapped_column(String(28), nullable=True)
    phone4: Mapped[str | None] = mapped_column(String(16), nullable=True)
    phone5_raw: Mapped[str | None] = mapped_column(String(28), nullable=True)
    phone5: Mapped[str | None] = mapped_column(String(16), nullable=True)
    param1: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param2: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param3: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param4: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param5: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param6: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param7: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param8: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param9: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param10: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param11: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    param12: Mapped[str | None] = mapped_column(String(MAX_PARAM_CHARS), nullable=True)
    #: Zone and region derived from phone1; `tz` is what calling hours use (override wins).
    tz: Mapped[str] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(2), nullable=True)
    tz_override: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(24), default=ContactState.PENDING.value)
    #: Why the contact is in its state or was not dialed: a compliance rule or strategy reason.
    state_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    #: The strategy's next step, computed when the contact was last scheduled.
    next_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_phone: Mapped[int] = mapped_column(Integer, default=1)
    next_channel: Mapped[str] = mapped_column(String(8), default="voice")
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: The state the contact was leased from, restored when the lease expires unused.
    leased_from: Mapped[str | None] = mapped_column(String(24), nullable=True)
    #: The agent a private callback belongs to.
    callback_agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_file: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    def phones(self) -> tuple[str | None, ...]:
        """The five E.164 slots, index 0 = phone1."""
        return (self.phone1, self.phone2, self.phone3, self.phone4, self.phone5)

    @property
    def effective_tz(self) -> str:
        return self.tz_override or self.tz


class ContactPhone(Base):
    """One E.164 number of one contact, for lookups by number (the ANI screen pop).

    A narrow copy of the contact's five phone columns: one row per filled slot, indexed on
    `e164`, so that "who is calling?" is one index probe instead of a scan of five unindexed
    columns. The importer keeps it in step with `contacts` (insert, change and clear of a slot);
    migration 0003 backfilled it from the contacts that existed before.
    """

    __tablename__ = "contact_phones"
    __table_args__ = (
        Index("ix_contact_phones_e164", "e164"),
        CheckConstraint("slot BETWEEN 1 AND 5", name="slot"),
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    #: The phone slot (1 = `contacts.phone1`).
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    e164: Mapped[str] = mapped_column(String(16))


class Attempt(Base):
    """One dial or one SMS."""

    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_contact_id_placed_at", "contact_id", "placed_at"),
        Index("ix_attempts_campaign_id_placed_at", "campaign_id", "placed_at"),
        # Calls still in flight, per node: what a restarted engine reconciles.
        Index(
            "ix_attempts_open",
            "node_id",
            sqlite_where=text("outcome IS NULL"),
            postgresql_where=text("outcome IS NULL"),
        ),
        CheckConstraint("phone_index BETWEEN 1 AND 5", name="phone_index"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    #: The strategy step this attempt was made for; None for an outcome-triggered SMS switch.
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    phone_index: Mapped[int] = mapped_column(Integer)
    number: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))
    placed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(24), nullable=True)
    q850_cause: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    disposition: Mapped[str | None] = mapped_column(String(16), nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Correlates the attempt with the PBX call (originate ChannelId / ARI channel id).
    correlation_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    #: When the customer was bridged to the agent, and when the agent's wrap-up ended.
    connected_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    wrapup_ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: What the engine last knew of the call: dialing, ringing, answered, bridged, wrap_up.
    call_state: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Disposition(Base):
    """One entry of a campaign's disposition catalogue."""

    __tablename__ = "dispositions"
    __table_args__ = (
        UniqueConstraint("campaign_id", "code"),
        CheckConstraint("type IN ('R', 'N', 'C', 'T')", name="type"),
        CheckConstraint(
            "callback_scope IS NULL OR callback_scope IN ('private', 'public')",
            name="callback_scope",
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(1))
    callback_scope: Mapped[str | None] = mapped_column(String(8), nullable=True)
    human_answered: Mapped[bool] = mapped_column(Boolean, default=True)
    sale: Mapped[bool] = mapped_column(Boolean, default=False)
    dnc: Mapped[bool] = mapped_column(Boolean, default=False)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    customer_contact: Mapped[bool] = mapped_column(Boolean, default=True)
    quick_key: Mapped[str | None] = mapped_column(String(1), nullable=True)
    colour: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Agent(Base):
    """A contact-centre agent: a login, an endpoint (SIP extension) and groups.

    `state` is the agent's last persisted state (`dialer.agents.AgentState`); the engine that
    owns the agent's session writes it before acting on it, so a restarted engine finds every
    agent in a safe state (see `dialer.agents.recover_agents`).
    """

    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: The dial string of the agent's phone, e.g. `PJSIP/agent101`.
    endpoint: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default="logged_out")
    pause_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    state_since: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    #: The attempt the agent is on (on_call / wrap_up).
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The engine node that holds the agent's session.
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AgentGroupMember(Base):
    __tablename__ = "agent_group_members"
    agent_id: Mapped[int] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("agent_groups.id", ondelete="CASCADE"), primary_key=True
    )


class CampaignAssignment(Base):
    """A campaign assigned to one position (an endpoint) or one user (an agent username).

    Group assignments live in `campaign_agent_groups`.
    """

    __tablename__ = "campaign_assignments"
    __table_args__ = (CheckConstraint("kind IN ('position', 'user')", name="kind"),)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[str] = mapped_column(String(100), primary_key=True)


class AgentStateLog(Base):
    """One interval of one agent in one state: the source of talk, wrap-up and pause times."""

    __tablename__ = "agent_state_log"
    __table_args__ = (Index("ix_agent_state_log_agent_id_started_at", "agent_id", "started_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    pause_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ContactNote(Base):
    __tablename__ = "contact_notes"
    __table_args__ = (Index("ix_contact_notes_contact_id", "contact_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Product(Base):
    """A product an agent can put in a cart (disposition type C)."""

    __tablename__ = "products"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    price_cents: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Contract(Base):
    """A sale: the cart of a C disposition, under a unique protocol number."""

    __tablename__ = "contracts"
    id: Mapped[int] = mapped_column(primary_key=True)
    protocol: Mapped[str] = mapped_column(String(32), unique=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total_cents: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ContractItem(Base):
    __tablename__ = "contract_items"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity"),)
    contract_id: Mapped[int] = mapped_column(
        ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True
    )
    product_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(Integer)


class FieldAgent(Base):
    """A field agent whose agenda takes appointments (disposition type T)."""

    __tablename__ = "field_agents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Appointment(Base):
    """One booked slot in a field agent's agenda. Overlaps are refused by `dialer.wrapup`."""

    __tablename__ = "appointments"
    __table_args__ = (
        UniqueConstraint("field_agent_id", "starts_at"),
        CheckConstraint("ends_at > starts_at", name="ends_after_start"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    field_agent_id: Mapped[int] = mapped_column(ForeignKey("field_agents.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SmsMessage(Base):
    """One SMS, sent or received. Outbound ones belong to an attempt (`channel='sms'`)."""

    __tablename__ = "sms_messages"
    __table_args__ = (
        Index("ix_sms_messages_number_created_at", "number", "created_at"),
        Index("ix_sms_messages_provider_id", "provider_id"),
        CheckConstraint("direction IN ('out', 'in')", name="direction"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    direction: Mapped[str] = mapped_column(String(3))
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    contact_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The customer's E.164 number (the destination of an outbound text, the sender of a reply).
    number: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    #: The provider's message id, for delivery receipts.
    provider_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: queued, sent, delivered, failed (outbound); received (inbound).
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WebhookOutbox(Base):
    """A call result waiting to be pushed to the CRM. Written in the transaction that ends the
    attempt, so a CRM outage loses nothing; `dialer.outbox` delivers and retries."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (Index("ix_webhook_outbox_pending", "delivered_at", "next_try_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    attempt_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_try_at: Mapped[datetime] = mapped_column(UtcDateTime)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Node(Base):
    """A running `paceline run` process: its heartbeat, for operators and failover logs."""

    __tablename__ = "nodes"
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DncEntry(Base):
    """A do-not-call entry: an exact E.164 number or a prefix block (`+1212555`).

    Scope: global when both `campaign_id` and `list_id` are NULL, else the one campaign, or every
    campaign that references the list.
    """

    __tablename__ = "dnc_entries"
    __table_args__ = (
        Index("ix_dnc_entries_value", "value"),
        # Every lease loads the prefix entries and looks up exact ones by value: both are
        # range scans on (is_prefix, value) instead of reads of the whole list.
        Index("ix_dnc_entries_is_prefix_value", "is_prefix", "value"),
        CheckConstraint("source IN ('manual', 'import', 'sms-stop', 'agent', 'ivr')",
                        name="source"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(16))
    is_prefix: Mapped[bool] = mapped_column(Boolean, default=False)
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=True
    )
    list_id: Mapped[int | None] = mapped_column(
        ForeignKey("dnc_lists.id", ondelete="CASCADE"), nullable=True
    )
    source: Mapped[str] = mapped_column(String(16), default="manual")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


def _digits_only(column: str) -> str:
    """SQL that is '' exactly when `column` holds only ASCII digits, on both databases.

    Nested `replace` rather than a regex or GLOB: SQLite has no `~`, PostgreSQL no GLOB, and a
    `BETWEEN '0' AND '9'` test would depend on the column's collation.
    """
    expr = column
    for d in "0123456789":
        expr = f"replace({expr}, '{d}', '')"
    return expr


#: `ivr_payments.last4`: four ASCII digits, never more (the defensive half of PCI scope).
LAST4_CHECK = f"length(last4) = 4 AND {_digits_only('last4')} = ''"


class IvrPayment(Base):
    """One answered payment request of an IVR `pay` node: what PCI DSS lets us keep.

    The gateway's token, the card brand, the last four digits and the result; never the card
    number, the CVV or the expiry with the PAN. `ivr.services.DbPaymentStore` refuses a row
    that looks like it holds a card number, and the `last4` CHECK backs it in the database.
    `amount` is decimal text as the flow computed it ("42.50"): no float rounding on money.
    """

    __tablename__ = "ivr_payments"
    __table_args__ = (
        Index("ix_ivr_payments_session_id", "session_id"),
        Index("ix_ivr_payments_created_at", "created_at"),
        CheckConstraint(LAST4_CHECK, name="last4"),
        CheckConstraint("action IN ('charge', 'tokenize')", name="action"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64))
    flow: Mapped[str] = mapped_column(String(100))
    node: Mapped[str] = mapped_column(String(100))
    #: The caller's number as the call presented it (not a secret, not necessarily E.164).
    ani: Mapped[str] = mapped_column(String(40))
    #: The contact the caller was identified as, if any; the record outlives the contact.
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True
    )
    action: Mapped[str] = mapped_column(String(8))
    amount: Mapped[str] = mapped_column(String(24))
    currency: Mapped[str] = mapped_column(String(3))
    brand: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    approved: Mapped[bool] = mapped_column(Boolean)
    token: Mapped[str] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


__all__ = [
    "LAST4_CHECK",
    "LEASABLE_SQL",
    "Agent",
    "AgentGroup",
    "AgentGroupMember",
    "AgentStateLog",
    "Appointment",
    "Attempt",
    "Base",
    "Campaign",
    "CampaignAgentGroup",
    "CampaignAssignment",
    "CampaignDncList",
    "CampaignZone",
    "Contact",
    "ContactNote",
    "ContactPhone",
    "Contract",
    "ContractItem",
    "Disposition",
    "DncEntry",
    "DncList",
    "FieldAgent",
    "IvrPayment",
    "Node",
    "Product",
    "SmsMessage",
    "Strategy",
    "UtcDateTime",
    "WebhookOutbox",
]
