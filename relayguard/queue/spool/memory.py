"""In-memory spool: the Spool protocol without a disk, for the replay and for tests.

Semantically the same as `SqliteSpool`: `accept` hands out increasing `seq`s and
unique queue ids, `load` returns a fresh copy (the caller may mutate it),
`update` appends attempts and removes a message once it is DONE,
`finish_with_reports` is all-or-nothing, and a closed spool refuses work. It is
not durable, so it never backs a live server: a crash loses everything in it.

Queue ids come from an injected factory, so a replay seeded with N gets the same
ids (and so the same retry jitter, which the queue manager seeds from the id)
on every run.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage
from relayguard.queue.spool import IndexEntry, NewMessage, SpoolError
from relayguard.queue.spool.sqlite import new_queue_id

IdFactory = Callable[[], str]
Predicate = Callable[[QueuedMessage], bool]


def seeded_queue_ids(seed: int) -> IdFactory:
    """Postfix-like ids that depend only on the seed and the order of creation."""
    rng = random.Random(f"queue-ids/{seed}")
    counter = 0

    def make() -> str:
        nonlocal counter
        counter += 1
        return f"{counter:09X}{rng.getrandbits(24):06X}"

    return make


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


_COLUMNS: dict[str, Callable[[int, _Stored], object]] = {
    "seq": lambda seq, _m: seq,
    "queue_id": lambda _s, m: m.queue_id,
    "state": lambda _s, m: m.state.value,
    "arrival_at": lambda _s, m: m.arrival_at,
    "next_attempt_at": lambda _s, m: m.next_attempt_at,
    "sender": lambda _s, m: m.envelope.sender,
    "message_id": lambda _s, m: m.message_id,
    "size": lambda _s, m: m.size,
}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_CONDITION = re.compile(r"^\s*(\w+)\s*(==|=|!=|<>|<=|>=|<|>)\s*\?\s*$")


def _compile_where(where: str, params: Sequence[object]) -> Callable[[int, _Stored], bool]:
    """The subset of SQL the queue tools use: `col op ?` joined by AND, or 1=1."""
    if where.strip() == "1=1":
        return lambda _s, _m: True
    parts = re.split(r"\s+AND\s+", where.strip(), flags=re.IGNORECASE)
    if len(parts) != len(params):
        raise SpoolError(f"memory spool: {len(params)} parameter(s) for {where!r}")
    checks: list[tuple[Callable[[int, _Stored], object], Callable[[Any, Any], bool], object]] = []
    for part, value in zip(parts, params, strict=True):
        m = _CONDITION.match(part)
        if m is None or m.group(1) not in _COLUMNS:
            raise SpoolError(
                f"memory spool: cannot evaluate {part.strip()!r} "
                f"(expected 'column op ?' over {', '.join(_COLUMNS)})"
            )
        checks.append((_COLUMNS[m.group(1)], _OPS[m.group(2)], value))
    return lambda seq, m: all(op(get(seq, m), value) for get, op, value in checks)


class MemorySpool:
    """The Spool protocol in a dict; `messages` takes a simple condition or a predicate."""

    def __init__(self, id_factory: IdFactory | None = None) -> None:
        self._new_id = id_factory or new_queue_id
        self._messages: dict[int, _Stored] = {}
        self._ids: set[str] = set()
        self._last_seq = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._messages)

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("spool is closed")

    def _prepare(self, messages: Sequence[NewMessage]) -> list[tuple[str, NewMessage]]:
        """Choose and check every queue id before storing anything (all or nothing)."""
        chosen: list[tuple[str, NewMessage]] = []
        taken: set[str] = set()
        for m in messages:
            qid = m.queue_id or self._new_id()
            if qid in self._ids or qid in taken:
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

    def _update(self, m: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        stored = self._messages.get(m.seq)
        if stored is None:
            return  # like an UPDATE of a deleted row: nothing to do
        if m.state is MessageState.DONE:
            del self._messages[m.seq]
            self._ids.discard(stored.queue_id)
            return
        stored.attempts.extend(new_attempts)
        stored.state = m.state
        stored.next_attempt_at = m.next_attempt_at
        stored.envelope = m.envelope

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        self._check_open()
        self._update(message, new_attempts)

    async def finish_with_reports(
        self, message: QueuedMessage, new_attempts: Sequence[Attempt], reports: Sequence[NewMessage]
    ) -> list[QueuedMessage]:
        self._check_open()
        chosen = self._prepare(reports)  # may raise: then nothing has changed
        self._update(message, new_attempts)
        return [self._insert(qid, r) for qid, r in chosen]

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        self._check_open()
        return [
            IndexEntry(seq, m.next_attempt_at, m.state)
            for seq, m in self._messages.items()
            if seq > after_seq and m.state is not MessageState.DONE
        ]

    async def messages(
        self, where: str | Predicate = "1=1", params: Sequence[object] = ()
    ) -> list[QueuedMessage]:
        """Messages matching a condition (`sender = ?` ... joined by AND) or a predicate."""
        self._check_open()
        if callable(where):
            views = (m.view(seq) for seq, m in self._messages.items())
            return [v for v in views if where(v)]
        test = _compile_where(where, params)
        return [m.view(seq) for seq, m in self._messages.items() if test(seq, m)]

    async def close(self) -> None:
        self._closed = True

    def close_sync(self) -> None:
        self._closed = True
