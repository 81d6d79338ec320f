"""A campaign's disposition catalogue: the codes an agent picks when wrap-up ends.

Types (`dialer.domain.DispositionType`): R callback (needs a date and time when used; private
to the agent or public), N negative (closes the contact), C sale/close (a cart becomes a
contract), T appointment (booked into a field agent's agenda). The flags say how reports and
the dialer count the call: `human_answered`, `sale`, `dnc`, `completed`, `customer_contact`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Connection, Engine, insert, select

from dialer.db import write_transaction
from dialer.db.models import Disposition
from dialer.domain import CallbackScope, DispositionType


class DispositionError(ValueError):
    """A bad disposition definition; the message names the code and the field."""


_CODE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class DispositionSpec:
    code: str
    label: str
    type: DispositionType
    callback_scope: CallbackScope | None = None
    human_answered: bool = True
    sale: bool = False
    dnc: bool = False
    completed: bool = False
    customer_contact: bool = True
    quick_key: str | None = None
    colour: str | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain values (enums as their codes), as stored and as `--json` prints them."""
        d = asdict(self)
        d["type"] = self.type.value
        d["callback_scope"] = self.callback_scope.value if self.callback_scope else None
        return d

    def validate(self) -> None:
        """Raise `DispositionError` naming the first rule the definition breaks."""
        where = f"disposition {self.code!r}"
        if not _CODE.match(self.code):
            raise DispositionError(f"{where}: code must be 1-16 letters, digits, '-' or '_'")
        if not self.label.strip() or len(self.label) > 100:
            raise DispositionError(f"{where}: label must be 1-100 characters")
        if self.type is DispositionType.CALLBACK and self.callback_scope is None:
            raise DispositionError(f"{where}: a callback (R) needs callback_scope private|public")
        if self.type is not DispositionType.CALLBACK and self.callback_scope is not None:
            raise DispositionError(f"{where}: only a callback (R) takes a callback_scope")
        if self.sale and self.type is not DispositionType.CLOSE:
            raise DispositionError(f"{where}: only a sale/close (C) can set the sale flag")
        if self.quick_key is not None and (len(self.quick_key) != 1 or self.quick_key.isspace()):
            raise DispositionError(f"{where}: quick_key must be one character")
        if self.colour is not None and not _COLOUR.match(self.colour):
            raise DispositionError(f"{where}: colour must look like #1a2b3c")


#: The catalogue every new campaign starts with; edit per campaign afterwards.
DEFAULT_CATALOGUE: tuple[DispositionSpec, ...] = (
    DispositionSpec(
        "SALE",
        "Sale",
        DispositionType.CLOSE,
        sale=True,
        completed=True,
        quick_key="1",
        colour="#2e7d32",
    ),
    DispositionSpec(
        "CBP",
        "Callback (me)",
        DispositionType.CALLBACK,
        CallbackScope.PRIVATE,
        quick_key="2",
        colour="#1565c0",
    ),
    DispositionSpec(
        "CB",
        "Callback (anyone)",
        DispositionType.CALLBACK,
        CallbackScope.PUBLIC,
        quick_key="3",
        colour="#42a5f5",
    ),
    DispositionSpec(
        "APPT",
        "Appointment booked",
        DispositionType.APPOINTMENT,
        completed=True,
        quick_key="4",
        colour="#6a1b9a",
    ),
    DispositionSpec(
        "NI",
        "Not interested",
        DispositionType.NEGATIVE,
        completed=True,
        quick_key="5",
        colour="#757575",
    ),
    DispositionSpec(
        "DNC",
        "Do not call",
        DispositionType.NEGATIVE,
        dnc=True,
        completed=True,
        quick_key="9",
        colour="#c62828",
    ),
    DispositionSpec(
        "WRONG",
        "Wrong person",
        DispositionType.NEGATIVE,
        customer_contact=False,
        completed=True,
        colour="#8d6e63",
    ),
)


def _row(campaign_id: int, spec: DispositionSpec) -> dict[str, object]:
    return {"campaign_id": campaign_id, **spec.to_dict()}


def add_dispositions(conn: Connection, campaign_id: int, specs: Sequence[DispositionSpec]) -> None:
    """Add codes to a campaign's catalogue, all or nothing.

    Refuses a code or quick key the campaign already uses, naming it.
    """
    existing = conn.execute(
        select(Disposition.code, Disposition.quick_key).where(
            Disposition.campaign_id == campaign_id
        )
    ).all()
    codes = {r.code for r in existing}
    keys = {r.quick_key for r in existing if r.quick_key}
    for spec in specs:
        spec.validate()
        if spec.code in codes:
            raise DispositionError(f"disposition {spec.code!r} exists already in this campaign")
        if spec.quick_key and spec.quick_key in keys:
            raise DispositionError(
                f"disposition {spec.code!r}: quick key {spec.quick_key!r} is taken"
            )
        codes.add(spec.code)
        if spec.quick_key:
            keys.add(spec.quick_key)
    if specs:
        conn.execute(insert(Disposition), [_row(campaign_id, s) for s in specs])


def add_disposition(engine: Engine, campaign_id: int, spec: DispositionSpec) -> None:
    with write_transaction(engine) as conn:
        add_dispositions(conn, campaign_id, [spec])


def list_dispositions(conn: Connection, campaign_id: int) -> list[DispositionSpec]:
    rows = conn.execute(
        select(Disposition).where(Disposition.campaign_id == campaign_id).order_by(Disposition.id)
    ).all()
    return [
        DispositionSpec(
            r.code,
            r.label,
            DispositionType(r.type),
            CallbackScope(r.callback_scope) if r.callback_scope else None,
            r.human_answered,
            r.sale,
            r.dnc,
            r.completed,
            r.customer_contact,
            r.quick_key,
            r.colour,
        )
        for r in rows
    ]
