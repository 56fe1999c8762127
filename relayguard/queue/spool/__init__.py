"""The durable queue: an interface and its backends.

The front end calls `accept` and answers 250 only when it returns; the queue
manager reads the index at start, loads messages when they are due and
records what happened to them; the operator's tools (ops/control.py) select,
hold, release, reschedule and delete messages, and the metrics read counts.

Beside the queue, a spool keeps copies of finished messages that bounced because
of our egress ([queue] keep_bounced): `finish_with_reports` keeps one in the same
transaction that records the round, `drop_kept` ends them, `resend_kept` queues
them again. Kept copies are not in the queue: `load`, `index`, `messages`,
`shape`, `hold`... never see them, so nothing that delivers or counts the queue
can take one for a queued message.
Every backend must make its writes durable (fsynced) before returning, and may
group concurrent commits.

Everything a caller may ask is in `Spool`, with plain values in and out (no
SQL, no connections), so every backend answers it the same way:
tests/unit/test_spool_contract.py runs one suite over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage


class SpoolError(Exception):
    """The spool could not do what was asked; the message is not lost."""


class SpoolFullError(SpoolError):
    """No space left: the front end answers 452 4.3.1."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the scheduler needs of a queued message: small, so 1M fit in memory."""

    seq: int
    next_attempt_at: float
    state: MessageState


@dataclass(frozen=True, slots=True)
class NewMessage:
    envelope: Envelope
    body: bytes
    arrival_at: float
    message_id: str = ""
    queue_id: str = ""  # chosen by the front end for its Received header; made here if empty

    def queued(self, seq: int, queue_id: str) -> QueuedMessage:
        """The message as a spool answers once it has stored it, as `seq`."""
        return QueuedMessage(
            seq=seq,
            queue_id=queue_id,
            envelope=self.envelope,
            arrival_at=self.arrival_at,
            next_attempt_at=self.arrival_at,
            size=len(self.body),
            message_id=self.message_id,
        )


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Which messages an operator means. Every field that is set narrows the selection
    (they are ANDed); the default selects every message. Times are absolute (POSIX
    seconds): the caller turns "due now" or "older than an hour" into them with its
    own clock, so no backend reads one."""

    queue_ids: frozenset[str] | None = None  # exactly these ids (as stored: no case folding)
    states: frozenset[MessageState] | None = None
    sender: str | None = None
    domain: str | None = None  # a recipient still queued for this domain (any case)
    due_by: float | None = None  # next_attempt_at <= due_by
    due_after: float | None = None  # next_attempt_at > due_after
    arrived_by: float | None = None  # arrival_at <= arrived_by: at least this old
    arrived_after: float | None = None  # arrival_at > arrived_after

    def matches(self, m: QueuedMessage) -> bool:
        """The meaning of the query, one message at a time: every backend must select
        exactly the messages for which this is true."""
        return (
            (self.queue_ids is None or m.queue_id in self.queue_ids)
            and (self.states is None or m.state in self.states)
            and (self.sender is None or m.envelope.sender == self.sender)
            and (self.due_by is None or m.next_attempt_at <= self.due_by)
            and (self.due_after is None or m.next_attempt_at > self.due_after)
            and (self.arrived_by is None or m.arrival_at <= self.arrived_by)
            and (self.arrived_after is None or m.arrival_at > self.arrived_after)
            and (self.domain is None or self.domain.lower() in queued_domains(m.envelope))
        )


def queued_domains(envelope: Envelope) -> tuple[str, ...]:
    """The domains of the recipients still queued, each once, in envelope order
    ('' for a bare local part)."""
    return tuple(dict.fromkeys(r.domain for r in envelope.pending()))


@dataclass(frozen=True, slots=True)
class ShapeEntry:
    """What qshape needs of one message: when it arrived, where it still has to go."""

    seq: int
    arrival_at: float
    domains: tuple[str, ...]  # queued_domains of its envelope


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue's size for the metrics, by state as an operator sees it at `now`."""

    active: int = 0  # ACTIVE and due (next_attempt_at <= now)
    deferred: int = 0  # ACTIVE, waiting for a retry
    held: int = 0
    # The arrival time of the first-queued message (lowest seq; 0 when empty). Not the
    # minimum over all messages: seq follows arrival closely enough, and finding it is
    # then a lookup in the primary key instead of a scan at every scrape.
    oldest_arrival: float = 0.0

    kept: int = 0  # kept copies (not queued: beside the queue)
    kept_size: int = 0  # their total size in bytes, what keep_bounced_max_size caps

    def as_dict(self) -> dict[str, float]:
        """The mapping `Observer.set_queue` reads."""
        return {
            "active": float(self.active),
            "deferred": float(self.deferred),
            "held": float(self.held),
            "oldest_arrival": self.oldest_arrival,
            "kept": float(self.kept),
            "kept_size": float(self.kept_size),
        }


@dataclass(frozen=True, slots=True)
class Keep:
    """Keep the copy of a finished message instead of removing it (its recipients
    bounced because of our egress): until `until`, at `at`. In the same transaction
    the kept copies whose window has ended by `at` are dropped, then the oldest kept
    while all of them together are larger than `max_size` bytes."""

    at: float
    until: float
    max_size: int


@dataclass(frozen=True, slots=True)
class KeptMessage:
    """A kept copy: the message as it was when it finished (state KEPT, its envelope
    and every attempt), when it was kept, until when, and which of its recipients
    `queue resend` has queued again already."""

    message: QueuedMessage
    kept_at: float
    until: float
    resent: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Resend:
    """Queue kept copy `seq` again as a new message: its body and message id, with
    this envelope (the recipients to try again, queued), arriving at `arrival_at`."""

    seq: int
    envelope: Envelope
    arrival_at: float


@dataclass(frozen=True, slots=True)
class KeptSweep:
    """What `drop_kept` did: how many copies it dropped, and when the window of the
    first copy left ends (None when none is left), so a sweeper knows when to return."""

    dropped: int
    next_end: float | None


class Spool(Protocol):
    """Messages are numbered by `seq` (increasing, never reused) and named by
    `queue_id` (unique among the messages queued). A stored message is ACTIVE or
    HELD: one that reaches DONE is removed with its attempts, or becomes a kept copy
    (KEPT, keeping its seq). A closed spool raises SpoolError for everything but
    `close`."""

    # -- the front end and the queue manager ---------------------------------------

    async def accept(self, message: NewMessage) -> QueuedMessage:
        """Commit durably; return only when the message is on disk. The queue id is
        made (clock.new_queue_id, or the backend's injected factory) when empty; one
        already queued raises SpoolError."""
        ...

    async def accept_many(self, messages: Sequence[NewMessage]) -> list[QueuedMessage]:
        """`accept` for several, all or nothing."""
        ...

    async def load(self, seq: int) -> tuple[QueuedMessage, bytes] | None:
        """The message and its body, or None if it is gone (deleted by an operator).
        The message is the caller's copy: changing it changes nothing stored."""
        ...

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        """Store recipient states, state and next attempt; append the new attempts.
        A message in state DONE is removed. Two operator races are settled here, the
        same in every backend: a message held meanwhile stays held (its envelope, next
        attempt and attempts are still stored), and one deleted meanwhile is not
        brought back."""
        ...

    async def finish_with_reports(
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
        keep: Keep | None = None,
    ) -> list[QueuedMessage]:
        """`update` and queue generated reports (NDRs) in one transaction, so a crash
        never loses the failure nor sends its report twice. If the message is gone
        (deleted meanwhile) nothing is stored and no report queued: []. The
        operator's bounce is `load` then this, with the message DONE and no attempts.

        With `keep`, a DONE message becomes a kept copy (with every attempt, these
        included) instead of being removed, in the same transaction: a crash never
        loses the copy nor keeps it twice. Its queue id is free again, as when it is
        removed. `keep` means nothing for a message that is not DONE."""
        ...

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        """Every stored message with seq > after_seq, in seq order, for loading the
        scheduler."""
        ...

    # -- the operator (queue tools) ------------------------------------------------

    async def messages(self, query: MessageQuery | None = None) -> list[QueuedMessage]:
        """The messages `query` selects (every one without a query), with their
        attempts, in seq order, read in one snapshot."""
        ...

    async def hold(self, seq: int) -> bool:
        """ACTIVE -> HELD: never tried until released. False if gone or not ACTIVE."""
        ...

    async def release(self, seq: int, next_attempt_at: float) -> bool:
        """HELD -> ACTIVE, due at `next_attempt_at`. False if gone or not HELD."""
        ...

    async def reschedule(self, seq: int, next_attempt_at: float) -> bool:
        """An ACTIVE message due at `next_attempt_at` (an operator's retry). False if
        gone or HELD."""
        ...

    async def delete(self, seq: int) -> bool:
        """Remove the message and its attempts, sending nothing. False if already gone."""
        ...

    # -- kept copies (queue resend) --------------------------------------------------

    async def kept(self, since: float | None = None) -> list[KeptMessage]:
        """The kept copies (those kept at or after `since`), oldest kept first (by the
        time kept, then seq), with their attempts, read in one snapshot. Copies whose
        window has ended but that `drop_kept` has not dropped yet are listed too."""
        ...

    async def drop_kept(self, now: float, max_size: int) -> KeptSweep:
        """Drop the kept copies whose window has ended (until <= now), then the oldest
        kept while the rest are together larger than `max_size` bytes."""
        ...

    async def resend_kept(self, resends: Sequence[Resend]) -> list[QueuedMessage | None]:
        """Queue kept copies again as new messages (new queue ids, made as for reports)
        and mark their recipients resent, all in one transaction. One answer per
        resend, in order: the new message, or None when its copy is gone or one of its
        recipients was resent before (in an earlier call or earlier in this one): a
        recipient is never resent twice from one copy."""
        ...

    # -- the metrics and qshape ----------------------------------------------------

    async def queue_stats(self, now: float) -> QueueStats:
        """Messages by state at `now`, the oldest arrival and the kept copies, for the
        metrics. (Not called `stats`: the replay's spool keeps its statistics under
        that name.)"""
        ...

    async def shape(self, query: MessageQuery | None = None) -> list[ShapeEntry]:
        """`messages`, cut down to what qshape tabulates (no attempts read)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """A message a node has claimed to deliver, and the node whose lease on it had run
    out ('' when nobody held it): a takeover after a node died. `loaded` is the message
    and its body as the claim found them (what `load` would answer), so the node need
    not read them again; it is a payload, not part of which claim this is."""

    seq: int
    taken_from: str = ""
    loaded: tuple[QueuedMessage, bytes] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ClaimRound:
    """What one look at a shared queue found: the claims, whether it took all it
    could, and if not, when there may next be something to claim."""

    claims: list[Claim]
    next_due: float | None
    full: bool


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """One node's finding about a route, shared through the spool."""

    id: int
    node: str
    kind: str  # suspension | throttle | resume | listed | delisted
    data: dict[str, Any]
    until: float = 0.0  # when it stops mattering


@runtime_checkable
class SharedSpool(Protocol):
    """A spool several nodes deliver from at once (PostgreSQL). A node delivers only
    the messages it has claimed: each claim is a lease in the spool (this node's
    `node`, until when) that the node renews while it delivers and that recording the
    round ends; a lease that runs out (its node died) lets another node claim the
    message. At least once, as ever: a node that stalls past its lease may deliver
    a message another node delivers too. The queue manager asks for this capability
    (`isinstance`); SQLite and memory spools do not have it, and are scheduled from
    the index read at start, as they always were."""

    node: str

    async def claim_round(self, now: float, lease_until: float, limit: int) -> ClaimRound:
        """Up to `limit` ACTIVE messages due by `now` that nobody holds (or whose lease
        has run out), leased to this node until `lease_until`, the most overdue first,
        each with its message and body; messages another node is claiming at this
        moment are skipped, never waited on. Unless it took `limit`: when there may
        next be something to claim (the earliest due message nobody holds, or the
        earliest end of another node's lease; None: nothing queued)."""
        ...

    async def renew(self, seqs: Sequence[int], lease_until: float) -> set[int]:
        """Extend this node's leases; the seqs it still holds (a lease lost to another
        node, or a message gone, is left out)."""
        ...

    async def end_leases(self, seqs: Sequence[int], next_attempt_at: float | None = None) -> None:
        """End this node's leases without recording a round (a message found held, a
        round cut by a bug: then due again at `next_attempt_at`)."""
        ...

    async def leases(self, seqs: Sequence[int]) -> dict[int, tuple[str, float]]:
        """Which node holds each of these messages, until when (those nobody holds are
        left out): for `queue list`."""
        ...

    async def listen(
        self,
        wake: Callable[[], None],
        routes_changed: Callable[[], None] | None = None,
        slot_freed: Callable[[], None] | None = None,
    ) -> None:
        """Call `wake` whenever mail arrives or becomes due on any node,
        `routes_changed` whenever a node shares route state, and `slot_freed` whenever
        a node gives back a connection slot (runs until cancelled; each also once
        after every reconnection, for what may have been missed)."""
        ...

    async def take_slot(self, route: str, total: int) -> int | None:
        """One of the `total` connection slots the route has across every node
        (`max_connections_total`), held by this node until given back or until this
        node dies; None when all are in use."""
        ...

    async def give_back_slot(self, route: str, slot: int) -> None: ...

    async def slots_in_use(self, route: str, total: int) -> int:
        """How many of the route's slots every node together holds now."""
        ...

    async def share_route_state(
        self, kind: str, until: float, data: dict[str, Any], now: float
    ) -> None:
        """Record what this node learned of a route (kind "suspension", "throttle") or
        an operator did ("resume"), for every node; `until`: when it stops mattering."""
        ...

    async def route_state(self, after: int, now: float) -> list[RouteRecord]:
        """The route records after record `after` (0: from the start), oldest first:
        those still in force at `now`, and every resume."""
        ...
