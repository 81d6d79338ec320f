"""IVR: ivr_payments (what a `pay` node may keep: token, brand, last 4 digits, result),
campaigns.ivr_flow (the flow of an agentless campaign), DNC source `ivr`

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dialer.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen here (not imported from the models): a migration must keep meaning what it meant.
# '' once every digit is removed, and four characters long: four ASCII digits, on both databases.
_LAST4_CHECK = (
    "length(last4) = 4 AND replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(last4, '0', ''), '1', ''), '2', ''), '3', ''), '4', ''), '5', ''), '6', ''), '7', ''), '8', ''), '9', '') = ''"
)


def upgrade() -> None:
    op.create_table(
        "ivr_payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("flow", sa.String(length=100), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=False),
        sa.Column("ani", sa.String(length=40), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("amount", sa.String(length=24), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("brand", sa.String(length=16), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("error", sa.String(length=200), nullable=False),
        sa.Column("created_at", dialer.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_LAST4_CHECK, name=op.f("ck_ivr_payments_last4")),
        sa.CheckConstraint("action IN ('charge', 'tokenize')", name=op.f("ck_ivr_payments_action")),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_ivr_payments_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ivr_payments")),
    )
    with op.batch_alter_table("ivr_payments", schema=None) as batch_op:
        batch_op.create_index("ix_ivr_payments_session_id", ["session_id"], unique=False)
        batch_op.create_index("ix_ivr_payments_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ivr_flow", sa.String(length=100), nullable=True))
    with op.batch_alter_table("dnc_entries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_dnc_entries_source"), type_="check")
        batch_op.create_check_constraint(
            "source", "source IN ('manual', 'import', 'sms-stop', 'agent', 'ivr')"
        )


def downgrade() -> None:
    with op.batch_alter_table("dnc_entries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_dnc_entries_source"), type_="check")
        batch_op.create_check_constraint(
            "source", "source IN ('manual', 'import', 'sms-stop', 'agent')"
        )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("ivr_flow")
    with op.batch_alter_table("ivr_payments", schema=None) as batch_op:
        batch_op.drop_index("ix_ivr_payments_created_at")
        batch_op.drop_index("ix_ivr_payments_session_id")
    op.drop_table("ivr_payments")
