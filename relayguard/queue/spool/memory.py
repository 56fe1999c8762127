"""In-memory spool: the Spool protocol without a disk, for the replay and for tests.

It answers every operation exactly as `SqliteSpool` does (tests/unit/
test_spool_contract.py runs the same suite and random sequences on both):
increasing `seq`s never reused, unique queue ids, `load` returns a fresh copy,
`update` keeps an operator's hold and does not bring back a deleted message,
`finish_with_reports` is all-or-nothing and queues nothing for a deleted one, a
closed spool refuses work. It is not durable, so it never backs a live server: a
crash loses everything in it.

No method ever waits: the replay runs them without an event loop (driver.run_sync).

Queue ids come from an injected factory, so a replay seeded with N gets the same
ids (and so the same retry jitter, which the queue manager seeds from the id)
on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from relayguard.clock import QueueIdFactory, new_queue_id, seeded_queue_ids
from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage
from relayguard.queue.spool import (
    IndexEntry,
    MessageQuery,
    NewMessage,
    QueueStats,
    ShapeEntry,
    SpoolError,
    queued_domains,
)

# seeded_queue_ids lives in clock.py with every other way of making queue ids; the
# replay has always imported it from here.
__all__ = ["MemorySpool", "seeded_queue_ids"]


@dataclass(slots=True)
class _Stored:
    queue_id: str
    state: MessageState
    arrival_at: float
    next_attempt_at: float
    message_id: str
    size: int
    envelope: Envelope
    body: bytes
    attempts: list[Attempt] = field(default_factory=list)

    def view(self, seq: int) -> QueuedMessage:
        return QueuedMessage(
            seq=seq,
            queue_id=self.queue_id,
            envelope=self.envelope,  # frozen: safe to share
            arrival_at=self.arrival_at,
            next_attempt_at=self.next_attempt_at,
            state=self.state,
            size=self.size,
            message_id=self.message_id,
            attempts=list(self.attempts),  # the caller extends its own list
        )


class MemorySpool:
    """The Spool protocol in a dict (in seq order: seqs only grow)."""

    def __init__(self, queue_ids: QueueIdFactory | None = None) -> None:
        self._new_id = queue_ids or new_queue_id
        self._messages: dict[int, _Stored] = {}
        self._ids: set[str] = set()
        self._last_seq = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._messages)

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    def _prepare(
        self, messages: Sequence[NewMessage], freed: str | None = None
    ) -> list[tuple[str, NewMessage]]:
        """Choose and check every queue id before storing anything (all or nothing).
        Ids are made in order and up to the first clash, as SQLite's inserts do, so a
        seeded factory is at the same point afterwards in both. `freed`: the id of a
        message removed in the same transaction, before these are inserted."""
        chosen: list[tuple[str, NewMessage]] = []
        taken: set[str] = set()
        for m in messages:
            qid = m.queue_id or self._new_id()
            if (qid in self._ids and qid != freed) or qid in taken:
                raise SpoolError(f"UNIQUE constraint failed: messages.queue_id ({qid})")
            taken.add(qid)
            chosen.append((qid, m))
        return chosen

    def _insert(self, qid: str, m: NewMessage) -> QueuedMessage:
        self._last_seq += 1
        seq = self._last_seq
        self._ids.add(qid)
        self._messages[seq] = _Stored(
            queue_id=qid,
            state=MessageState.ACTIVE,
            arrival_at=m.arrival_at,
            next_attempt_at=m.arrival_at,
            message_id=m.message_id,
            size=len(m.body),
            envelope=m.envelope,
            body=m.body,
        )
        return QueuedMessage(
            seq=seq,
            queue_id=qid,
            envelope=m.envelope,
            arrival_at=m.arrival_at,
            next_attempt_at=m.arrival_at,
            size=len(m.body),
            message_id=m.message_id,
        )

    def _remove(self, seq: int) -> bool:
        stored = self._messages.pop(seq, None)
        if stored is None:
            return False
        self._ids.discard(stored.queue_id)  # free again, as a deleted row's UNIQUE value
        return True

    def _update(self, m: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        stored = self._messages.get(m.seq)
        if stored is None:
            return  # deleted by an operator meanwhile: not brought back
        if m.state is MessageState.DONE:
            self._remove(m.seq)
            return
        stored.attempts.extend(new_attempts)
        # Held by an operator while the round was under way: the hold wins, as in
        # SQLite's UPDATE (state = CASE WHEN state = 'held' THEN state ELSE ? END).
        if stored.state is not MessageState.HELD:
            stored.state = m.state
        stored.next_attempt_at = m.next_attempt_at
        stored.envelope = m.envelope

    def _set_state(
        self, seq: int, state: MessageState, only_from: MessageState, at: float | None = None
    ) -> bool:
        stored = self._messages.get(seq)
        if stored is None or stored.state is not only_from:
            return False
        stored.state = state
        if at is not None:
            stored.next_attempt_at = at
        return True

    def _select(self, query: MessageQuery | None) -> list[QueuedMessage]:
        views = [m.view(seq) for seq, m in self._messages.items()]
        return views if query is None else [v for v in views if query.matches(v)]

    # -- the Spool interface -----------------------------------------------

    async def accept(self, message: NewMessage) -> QueuedMessage:
        self._check_open()
        [(qid, m)] = self._prepare([message])
        return self._insert(qid, m)

    async def accept_many(self, messages: Sequence[NewMessage]) -> list[QueuedMessage]:
        self._check_open()
        return [self._insert(qid, m) for qid, m in self._prepare(messages)]

    async def load(self, seq: int) -> tuple[QueuedMessage, bytes] | None:
        self._check_open()
        stored = self._messages.get(seq)
        if stored is None:
            return None
        return stored.view(seq), stored.body

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        self._check_open()
        self._update(message, new_attempts)

    async def finish_with_reports(
        self, message: QueuedMessage, new_attempts: Sequence[Attempt], reports: Sequence[NewMessage]
    ) -> list[QueuedMessage]:
        self._check_open()
        stored = self._messages.get(message.seq)
        if stored is None:
            # Deleted by an operator meanwhile: no reports for it either, and no ids
            # made for them (SQLite's job stops before its inserts).
            return []
        # SQLite removes a DONE message before inserting the reports: its id is free
        # for them. May raise: then nothing has changed.
        done = message.state is MessageState.DONE
        chosen = self._prepare(reports, stored.queue_id if done else None)
        self._update(message, new_attempts)
        return [self._insert(qid, r) for qid, r in chosen]

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        self._check_open()
        return [
            IndexEntry(seq, m.next_attempt_at, m.state)
            for seq, m in self._messages.items()
            if seq > after_seq and m.state is not MessageState.DONE
        ]

    async def messages(self, query: MessageQuery | None = None) -> list[QueuedMessage]:
        self._check_open()
        return self._select(query)

    async def hold(self, seq: int) -> bool:
        self._check_open()
        return self._set_state(seq, MessageState.HELD, MessageState.ACTIVE)

    async def release(self, seq: int, next_attempt_at: float) -> bool:
        self._check_open()
        return self._set_state(seq, MessageState.ACTIVE, MessageState.HELD, next_attempt_at)

    async def reschedule(self, seq: int, next_attempt_at: float) -> bool:
        self._check_open()
        return self._set_state(seq, MessageState.ACTIVE, MessageState.ACTIVE, next_attempt_at)

    async def delete(self, seq: int) -> bool:
        self._check_open()
        return self._remove(seq)

    async def queue_stats(self, now: float) -> QueueStats:
        self._check_open()
        active = deferred = held = 0
        for m in self._messages.values():
            if m.state is MessageState.HELD:
                held += 1
            elif m.state is MessageState.ACTIVE:
                if m.next_attempt_at <= now:
                    active += 1
                else:
                    deferred += 1
        first = next(iter(self._messages.values()), None)  # the lowest seq, as in SQLite
        oldest = first.arrival_at if first is not None else 0.0
        return QueueStats(active, deferred, held, oldest)

    async def shape(self, query: MessageQuery | None = None) -> list[ShapeEntry]:
        self._check_open()
        return [
            ShapeEntry(m.seq, m.arrival_at, queued_domains(m.envelope)) for m in self._select(query)
        ]

    async def close(self) -> None:
        self._closed = True

    def close_sync(self) -> None:
        self._closed = True
