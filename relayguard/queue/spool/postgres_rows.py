"""A message row of the PostgreSQL spool as a QueuedMessage: one reading for the
spool's queries and for the claims that bring their messages along."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage

COLUMNS = (
    "seq",
    "queue_id",
    "state",
    "arrival_at",
    "next_attempt_at",
    "message_id",
    "size",
    "envelope",
)


def columns(table: str = "") -> sql.Composable:
    """The message's columns, in the order `message` reads them (`table`: qualified)."""
    names = [sql.Identifier(table, c) if table else sql.Identifier(c) for c in COLUMNS]
    return sql.SQL(", ").join(names)


def message(row: Sequence[Any], attempts: Sequence[Attempt]) -> QueuedMessage:
    seq, qid, state, arrival, nxt, mid, size, env = row
    return QueuedMessage(
        seq=int(seq),
        queue_id=qid,
        envelope=Envelope.from_dict(json.loads(env)),
        arrival_at=arrival,
        next_attempt_at=nxt,
        state=MessageState(state),
        size=int(size),
        message_id=mid,
        attempts=list(attempts),
    )


def attempts(data: Sequence[str]) -> list[Attempt]:
    return [Attempt.from_dict(json.loads(d)) for d in data]
