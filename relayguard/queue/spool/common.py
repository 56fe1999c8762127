"""What the SQL backends (SQLite, PostgreSQL) do the same way: the stored JSON, the
domain check a query makes on rows, waking the sessions a commit group answers, and
hold/release/reschedule in terms of one state change."""

from __future__ import annotations

import asyncio
import json
from abc import abstractmethod
from typing import Any

from relayguard.model import Envelope, MessageState
from relayguard.queue.spool import MessageQuery, queued_domains

# A commit group's answer to one waiting session: its future, the value or the error.
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def stored_json(data: object) -> str:
    """Envelopes and attempts as stored: compact JSON."""
    return json.dumps(data, separators=(",", ":"))


def queued_for(query: MessageQuery | None, envelope: Envelope) -> bool:
    """The part of a query SQL cannot answer: the domain lives in the envelope's JSON,
    so it is checked on the rows the rest of the query selected."""
    return query is None or query.domain is None or query.domain.lower() in queued_domains(envelope)


def settle(outcomes: list[Outcome]) -> None:
    """Hand each waiting session its answer (unless it gave up waiting)."""
    for waiter, value, error in outcomes:
        if waiter.done():
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(value)


def state_change_sql(
    mark: str,
    seq: int,
    state: MessageState,
    next_attempt_at: float | None,
    only_from: MessageState | None,
) -> tuple[str, list[object]]:
    """The UPDATE behind set_state, with `mark` as the backend's placeholder ('?' for
    sqlite3, '%s' for psycopg)."""
    query = f"UPDATE messages SET state = {mark}"  # noqa: S608 - a placeholder, no values
    params: list[object] = [state.value]
    if next_attempt_at is not None:
        query += f", next_attempt_at = {mark}"
        params.append(next_attempt_at)
    query += f" WHERE seq = {mark}"
    params.append(seq)
    if only_from is not None:
        query += f" AND state = {mark}"
        params.append(only_from.value)
    return query, params


class StateChanges:
    """The operator's hold, release and reschedule: each one `set_state`."""

    @abstractmethod
    async def set_state(
        self,
        seq: int,
        state: MessageState,
        *,
        next_attempt_at: float | None = None,
        only_from: MessageState | None = None,
    ) -> bool: ...

    async def hold(self, seq: int) -> bool:
        return await self.set_state(seq, MessageState.HELD, only_from=MessageState.ACTIVE)

    async def release(self, seq: int, next_attempt_at: float) -> bool:
        return await self.set_state(
            seq, MessageState.ACTIVE, next_attempt_at=next_attempt_at, only_from=MessageState.HELD
        )

    async def reschedule(self, seq: int, next_attempt_at: float) -> bool:
        return await self.set_state(
            seq, MessageState.ACTIVE, next_attempt_at=next_attempt_at, only_from=MessageState.ACTIVE
        )
