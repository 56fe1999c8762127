"""In-memory spool: the Spool protocol without a disk, for the replay and for tests.

It answers every operation exactly as `SqliteSpool` does (tests/unit/
test_spool_contract.py runs the same suite and random sequences on both):
increasing `seq`s never reused, unique queue ids, `load` returns a fresh copy,
`update` keeps an operator's hold and does not bring back a deleted message,
`finish_with_reports` is all-or-nothing and queues nothing for a deleted one, kept
copies live beside the queue and are dropped and resent alike, a closed spool
refuses work. It is not durable, so it never backs a live server: a
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
    Keep,
    KeptMessage,
    KeptSweep,
    MessageQuery,
    NewMessage,
    QueueStats,
    Resend,
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


@dataclass(slots=True)
class _Kept:
    stored: _Stored
    kept_at: float
    until: float
    resent: set[str] = field(default_factory=set)

    def view(self, seq: int) -> KeptMessage:
        message = self.stored.view(seq)
        message.state = MessageState.KEPT
        return KeptMessage(message, self.kept_at, self.until, frozenset(self.resent))


class MemorySpool:
    """The Spool protocol in a dict (in seq order: seqs only grow)."""

    def __init__(self, queue_ids: QueueIdFactory | None = None) -> None:
        self._new_id = queue_ids or new_queue_id
        self._messages: dict[int, _Stored] = {}
        self._kept: dict[int, _Kept] = {}  # beside the queue, by the seq they had in it
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
        return m.queued(seq, qid)

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

    def _keep(self, m: QueuedMessage, new_attempts: Sequence[Attempt], keep: Keep) -> None:
        """A done message becomes a kept copy: out of the queue (its id free again), with
        the envelope and attempts it finished with."""
        stored = self._messages[m.seq]
        self._remove(m.seq)
        stored.attempts.extend(new_attempts)
        stored.envelope = m.envelope
        stored.next_attempt_at = m.next_attempt_at
        self._kept[m.seq] = _Kept(stored, keep.at, keep.until)

    def _drop_kept(self, now: float, max_size: int) -> KeptSweep:
        ended = [seq for seq, k in self._kept.items() if k.until <= now]
        for seq in ended:
            del self._kept[seq]
        total = sum(k.stored.size for k in self._kept.values())
        dropped = len(ended)
        for seq, k in sorted(self._kept.items(), key=lambda sk: (sk[1].kept_at, sk[0])):
            if total <= max_size:
                break
            del self._kept[seq]
            total -= k.stored.size
            dropped += 1
        return KeptSweep(dropped, min((k.until for k in self._kept.values()), default=None))

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
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
        keep: Keep | None = None,
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
        if done and keep is not None:
            self._keep(message, new_attempts, keep)
        else:
            self._update(message, new_attempts)
        queued = [self._insert(qid, r) for qid, r in chosen]
        if done and keep is not None:
            self._drop_kept(keep.at, keep.max_size)
        return queued

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

    async def kept(self, since: float | None = None) -> list[KeptMessage]:
        self._check_open()
        return [
            k.view(seq)
            for seq, k in sorted(self._kept.items(), key=lambda sk: (sk[1].kept_at, sk[0]))
            if since is None or k.kept_at >= since
        ]

    async def drop_kept(self, now: float, max_size: int) -> KeptSweep:
        self._check_open()
        return self._drop_kept(now, max_size)

    async def resend_kept(self, resends: Sequence[Resend]) -> list[QueuedMessage | None]:
        self._check_open()
        # Every answer and every id first, then the changes: all or nothing, as SQLite's
        # job is (its inserts make the ids in this same order).
        marks: dict[int, set[str]] = {}
        wanted: list[NewMessage | None] = []
        for r in resends:
            kept = self._kept.get(r.seq)
            addresses = {rcpt.address for rcpt in r.envelope.recipients}
            taken = marks.setdefault(r.seq, set())
            if kept is None or not addresses or addresses & (kept.resent | taken):
                wanted.append(None)
                continue
            taken |= addresses
            stored = kept.stored
            wanted.append(NewMessage(r.envelope, stored.body, r.arrival_at, stored.message_id))
        chosen = iter(self._prepare([m for m in wanted if m is not None]))
        for seq, addresses in marks.items():
            if seq in self._kept:
                self._kept[seq].resent |= addresses
        return [None if m is None else self._insert(*next(chosen)) for m in wanted]

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
        kept_size = sum(k.stored.size for k in self._kept.values())
        return QueueStats(active, deferred, held, oldest, len(self._kept), kept_size)

    async def shape(self, query: MessageQuery | None = None) -> list[ShapeEntry]:
        self._check_open()
        return [
            ShapeEntry(m.seq, m.arrival_at, queued_domains(m.envelope)) for m in self._select(query)
        ]

    async def close(self) -> None:
        self._closed = True

    def close_sync(self) -> None:
        self._closed = True
