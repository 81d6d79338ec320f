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
        CheckConstraint("source IN ('manual', 'import', 'sms-stop', 'agent')", name="source"),
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


__all__ = [
    "LEASABLE_SQL",
    "AgentGroup",
    "Attempt",
    "Base",
    "Campaign",
    "CampaignAgentGroup",
    "CampaignDncList",
    "CampaignZone",
    "Contact",
    "ContactPhone",
    "Disposition",
    "DncEntry",
    "DncList",
    "Strategy",
    "UtcDateTime",
]
