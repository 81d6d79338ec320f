"""The disposition catalogue: defaults per campaign, and validated additions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from dialer.campaigns import create_campaign
from dialer.dispositions import (
    DEFAULT_CATALOGUE,
    DispositionError,
    DispositionSpec,
    add_disposition,
    list_dispositions,
)
from dialer.domain import CallbackScope, DispositionType

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_new_campaign_starts_with_the_default_catalogue(engine: Engine) -> None:
    cid = create_campaign(engine, "d", NOW)
    with engine.connect() as conn:
        got = list_dispositions(conn, cid)
    assert got == list(DEFAULT_CATALOGUE)
    types = {d.type for d in got}
    assert types == set(DispositionType)  # R, N, C and T all present
    assert any(d.dnc for d in got) and any(d.sale for d in got)


def test_added_disposition_round_trips(engine: Engine) -> None:
    cid = create_campaign(engine, "d", NOW)
    spec = DispositionSpec("FAX", "Fax tone", DispositionType.NEGATIVE, human_answered=False,
                           customer_contact=False, completed=True, quick_key="f",
                           colour="#000000")
    add_disposition(engine, cid, spec)
    with engine.connect() as conn:
        assert list_dispositions(conn, cid)[-1] == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (DispositionSpec("CB2", "x", DispositionType.CALLBACK), "needs callback_scope"),
        (DispositionSpec("N2", "x", DispositionType.NEGATIVE, CallbackScope.PUBLIC),
         "only a callback"),
        (DispositionSpec("S2", "x", DispositionType.NEGATIVE, sale=True), "only a sale"),
        (DispositionSpec("bad code!", "x", DispositionType.NEGATIVE), "code must be"),
        (DispositionSpec("K", "x", DispositionType.NEGATIVE, quick_key="ab"), "one character"),
        (DispositionSpec("C1", "x", DispositionType.NEGATIVE, colour="red"), "#1a2b3c"),
        (DispositionSpec("SALE", "again", DispositionType.CLOSE), "exists already"),
        (DispositionSpec("N3", "x", DispositionType.NEGATIVE, quick_key="9"), "quick key '9'"),
    ],
)
def test_bad_definitions_are_refused_naming_the_code(
    sqlite_engine: Engine, spec: DispositionSpec, message: str
) -> None:
    cid = create_campaign(sqlite_engine, "d", NOW)
    with pytest.raises(DispositionError, match=message) as exc:
        add_disposition(sqlite_engine, cid, spec)
    assert repr(spec.code) in str(exc.value)
