"""The Spool contract: every backend answers every operation the same way.

Two halves. A suite parametrized over the backends (the `open_spool` fixture)
states what each operation promises, the two operator races with a delivery
round included. A hypothesis state machine applies the same random operations
(accepts, delivery rounds that start and finish later, operator actions between
them, queries, copies kept, dropped and resent) to every backend at once and
requires identical answers.

Adding a backend (PostgreSQL, say) is one entry in BACKENDS: `open` makes an
empty spool of its own with the given queue-id factory (a fresh schema, or a
database named after the directory it is given), `unavailable` says why it
cannot run here (no server configured), and both halves pick it up. Spools are
opened inside each test's event loop, not in a fixture, because a server
backend's connections belong to the loop that made them. Seqs are compared
through the order of creation, not as numbers: the protocol promises they
increase and are never reused, not that they have no gaps (a PostgreSQL
sequence skips the values of a rolled-back insert).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgserver
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

import relayguard
from relayguard import clock
from relayguard.clock import QueueIdFactory, new_queue_id, seeded_queue_ids
from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
)
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
    Spool,
    SpoolError,
)
from relayguard.queue.spool.memory import MemorySpool
from relayguard.queue.spool.sqlite import SqliteSpool
from relayguard.smtp import frontend

SEED = 13

# ---------------------------------------------------------------- the backends


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path, QueueIdFactory], Awaitable[Spool]]
    unavailable: Callable[[], str | None] = lambda: None


async def _open_sqlite(directory: Path, ids: QueueIdFactory) -> Spool:
    return SqliteSpool(directory / "sqlite", queue_ids=ids)


async def _open_memory(_directory: Path, ids: QueueIdFactory) -> Spool:
    return MemorySpool(ids)


async def _open_postgres(_directory: Path, ids: QueueIdFactory) -> Spool:
    # A schema of its own in the session's private cluster (tests/pgserver.py): each
    # spool starts empty, and the schema is made by the spool's own migration.
    from relayguard.queue.spool.postgres import PgSpool  # noqa: PLC0415 - optional extra

    return await PgSpool.open(pgserver.shared_cluster().create_schema(), queue_ids=ids)


BACKENDS = [
    Backend("sqlite", _open_sqlite),
    Backend("memory", _open_memory),
    Backend("postgres", _open_postgres, pgserver.unavailable),
]

Opener = Callable[..., contextlib.AbstractAsyncContextManager[Spool]]


@contextlib.asynccontextmanager
async def opened(
    backend: Backend, directory: Path, ids: QueueIdFactory | None = None
) -> AsyncIterator[Spool]:
    spool = await backend.open(directory, ids or seeded_queue_ids(SEED))
    try:
        yield spool
    finally:
        await spool.close()


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def open_spool(request, tmp_path) -> Opener:
    """Each backend in turn, as `async with open_spool() as spool:` (in tmp_path)."""
    backend: Backend = request.param
    why = backend.unavailable()
    if why is not None:
        pytest.skip(why)
    return lambda ids=None: opened(backend, tmp_path, ids)


# ---------------------------------------------------------------- values


def envelope(*rcpts: str, sender: str = "sender@example.org") -> Envelope:
    return Envelope(
        sender=sender,
        recipients=tuple(
            Recipient(address=a, orcpt=f"rfc822;{a}", notify=("FAILURE", "DELAY")) for a in rcpts
        ),
        mail_options=("BODY=8BITMIME", "SMTPUTF8"),
        ret="HDRS",
        envid="env+2Bid",
        client_address="127.0.0.1",
        client_helo="client.example",
    )


def new(
    n: int = 0,
    *rcpts: str,
    at: float | None = None,
    qid: str = "",
    body: bytes | None = None,
    sender: str = "sender@example.org",
) -> NewMessage:
    return NewMessage(
        envelope=envelope(*(rcpts or ("a@one.example", "b@two.example")), sender=sender),
        body=f"Subject: {n}\r\n\r\nhi\r\n".encode() if body is None else body,
        arrival_at=1000.0 + n if at is None else at,
        message_id=f"<{n}@x>",
        queue_id=qid,
    )


def attempt(at: float, code: int = 451, rcpts=("a@one.example",), action="defer") -> Attempt:
    return Attempt(
        at=at,
        route="primary",
        recipients=tuple(rcpts),
        reply=Reply.parse(code, "4.7.1 try later\n4.7.1 greylisted", Phase.RCPT, "mx.one.example"),
        action=action,
        rule="greylist",
        duration=0.25,
    )


def delivered(r: Recipient) -> Recipient:
    reply = Reply(250, "2.0.0", "Ok: queued as X", Phase.AFTER_DATA, "mx.example")
    return dataclasses.replace(
        r, state=RecipientState.DELIVERED, last_reply=reply, delivered_via="primary"
    )


def failed(r: Recipient) -> Recipient:
    reply = Reply(550, "5.1.1", "User unknown", Phase.RCPT, "mx.example")
    return dataclasses.replace(r, state=RecipientState.FAILED, last_reply=reply, failed_rule="x")


def ndr(n: int = 0, qid: str = "") -> NewMessage:
    env = Envelope(sender="", recipients=(Recipient("sender@example.org"),), pinned_routes=("p",))
    return NewMessage(envelope=env, body=f"NDR {n}\r\n".encode(), arrival_at=2000.0, queue_id=qid)


def seeded(count: int) -> list[str]:
    ids = seeded_queue_ids(SEED)
    return [ids() for _ in range(count)]


BODIES = [
    b"",
    b"Subject: plain\r\n\r\nline one\r\nline two\r\n",
    "Subject: caf\u00e9\r\n\r\n\u00fcber \u2603\r\n".encode(),
    bytes(range(256)) * 4,  # every byte value, NUL and bare CR/LF included
    b"no final newline",
    b"\r\n.\r\n..\r\n",
]


# ---------------------------------------------------------------- accept, load, index


async def test_accept_then_load_round_trips_byte_exact(open_spool):
    async with open_spool() as spool:
        for i, body in enumerate(BODIES):
            env = envelope("x@y.example")
            m = NewMessage(env, body, 1234.5 + i, message_id="<m@id>", queue_id=f"QID{i}")
            queued = await spool.accept(m)
            assert (queued.queue_id, queued.size, queued.message_id) == (
                f"QID{i}",
                len(body),
                "<m@id>",
            )
            assert queued.arrival_at == queued.next_attempt_at == 1234.5 + i
            assert queued.state is MessageState.ACTIVE
            assert queued.attempts == []
            loaded = await spool.load(queued.seq)
            assert loaded is not None
            msg, raw = loaded
            assert raw == body
            assert type(raw) is bytes
            assert msg == queued


async def test_seqs_increase_and_are_never_reused(open_spool):
    async with open_spool() as spool:
        a = await spool.accept(new(1))
        b = await spool.accept(new(2))
        assert await spool.delete(b.seq)
        c = await spool.accept(new(3))
        c_done, _ = await spool.load(c.seq)
        c_done.state = MessageState.DONE
        await spool.update(c_done, [])
        d = await spool.accept(new(4))
        assert a.seq < b.seq < c.seq < d.seq


async def test_load_is_the_callers_copy_and_missing_is_none(open_spool):
    async with open_spool() as spool:
        assert await spool.load(12345) is None
        q = await spool.accept(new(1))
        msg, _ = await spool.load(q.seq)
        msg.attempts.append(attempt(1.0))
        msg.next_attempt_at = 5.0
        msg.state = MessageState.HELD
        again, _ = await spool.load(q.seq)
        assert again == q


async def test_queue_ids_are_made_by_the_factory_when_empty(open_spool):
    async with open_spool() as spool:
        a = await spool.accept(new(1))
        b = await spool.accept(new(2, qid="MINE"))
        c, d = await spool.accept_many([new(3), new(4)])
        [report] = await spool.finish_with_reports(a, [], [ndr()])
        assert [a.queue_id, b.queue_id, c.queue_id, d.queue_id, report.queue_id] == [
            *seeded(1),
            "MINE",
            *seeded(4)[1:],
        ]


async def test_a_queued_id_is_refused_and_a_removed_one_is_free_again(open_spool):
    async with open_spool() as spool:
        held = await spool.accept(new(1, qid="SAME"))
        with pytest.raises(SpoolError):
            await spool.accept(new(2, qid="SAME"))
        assert [e.seq for e in await spool.index()] == [held.seq]
        assert await spool.delete(held.seq)
        again = await spool.accept(new(3, qid="SAME"))
        again.state = MessageState.DONE
        await spool.update(again, [])
        third = await spool.accept(new(4, qid="SAME"))
        assert [m.queue_id for m in await spool.messages()] == ["SAME"]
        assert third.seq > again.seq > held.seq


async def test_accept_many_is_all_or_nothing(open_spool):
    async with open_spool() as spool:
        queued = await spool.accept_many([new(i, at=float(i)) for i in range(5)])
        assert [q.arrival_at for q in queued] == [0.0, 1.0, 2.0, 3.0, 4.0]
        seqs = [q.seq for q in queued]
        assert seqs == sorted(set(seqs))
        assert await spool.accept_many([]) == []
        for batch in (
            [new(10, qid="X1"), new(11, qid="X1")],  # a clash inside the batch
            [new(12), new(13, qid=queued[2].queue_id)],  # with a message queued
        ):
            with pytest.raises(SpoolError):
                await spool.accept_many(batch)
            assert [e.seq for e in await spool.index()] == seqs
        # The ids made for the failed batch are spent, as a seeded factory is only called.
        later = await spool.accept(new(14))
        assert later.queue_id == seeded(7)[6]
        assert later.seq > seqs[-1]


async def test_index_lists_what_is_stored_in_seq_order(open_spool):
    async with open_spool() as spool:
        assert await spool.index() == []
        queued = await spool.accept_many([new(i, at=float(10 - i)) for i in range(4)])
        seqs = [q.seq for q in queued]
        assert await spool.hold(seqs[1])
        assert await spool.index() == [
            IndexEntry(seqs[0], 10.0, MessageState.ACTIVE),
            IndexEntry(seqs[1], 9.0, MessageState.HELD),
            IndexEntry(seqs[2], 8.0, MessageState.ACTIVE),
            IndexEntry(seqs[3], 7.0, MessageState.ACTIVE),
        ]
        assert [e.seq for e in await spool.index(after_seq=seqs[1])] == seqs[2:]
        assert await spool.index(after_seq=seqs[3]) == []


# ---------------------------------------------------------------- recording rounds


async def test_update_stores_recipients_next_attempt_and_appends_attempts(open_spool):
    async with open_spool() as spool:
        queued = await spool.accept(new(1))
        rcpts = queued.envelope.recipients
        queued.envelope = queued.envelope.with_recipients((rcpts[0], delivered(rcpts[1])))
        queued.next_attempt_at = 1300.0
        a1, a2 = attempt(1001.0), attempt(1300.0, 421, action="reroute")
        await spool.update(queued, [a1])
        msg, _ = await spool.load(queued.seq)
        assert msg.envelope == queued.envelope
        assert msg.pending == (rcpts[0],)
        assert (msg.next_attempt_at, msg.attempts) == (1300.0, [a1])
        assert await spool.index() == [IndexEntry(queued.seq, 1300.0, MessageState.ACTIVE)]
        await spool.update(msg, [a2])
        await spool.update(msg, [])  # no attempts: none added
        msg, _ = await spool.load(queued.seq)
        assert msg.attempts == [a1, a2]
        # A state in the message is stored too (HELD here).
        msg.state = MessageState.HELD
        await spool.update(msg, [])
        assert (await spool.load(queued.seq))[0].state is MessageState.HELD
        # A message never stored, or gone: nothing happens.
        await spool.update(dataclasses.replace(msg, seq=99999), [a1])
        assert await spool.load(99999) is None


async def test_done_removes_the_message_and_its_attempts(open_spool):
    async with open_spool() as spool:
        keep = await spool.accept(new(1))
        gone = await spool.accept(new(2))
        await spool.update(gone, [attempt(1.0)])
        await spool.update(keep, [attempt(2.0)])
        gone.state = MessageState.DONE
        await spool.update(gone, [attempt(3.0, 550, action="bounce")])
        assert await spool.load(gone.seq) is None
        assert [m.seq for m in await spool.messages()] == [keep.seq]
        assert len((await spool.load(keep.seq))[0].attempts) == 1


async def test_finish_with_reports_records_and_queues_the_reports(open_spool):
    async with open_spool() as spool:
        original = await spool.accept(new(1))
        original.state = MessageState.DONE
        queued = await spool.finish_with_reports(original, [attempt(2000.0, 550)], [ndr(1), ndr(2)])
        assert await spool.load(original.seq) is None
        assert [q.seq for q in queued] == [e.seq for e in await spool.index()]
        assert all(q.seq > original.seq for q in queued)
        loaded = [await spool.load(q.seq) for q in queued]
        assert [body for _, body in loaded] == [b"NDR 1\r\n", b"NDR 2\r\n"]
        assert [m for m, _ in loaded] == queued
        assert queued[0].envelope == ndr().envelope
        # A message that is not done stays, with its attempt; no report is fine too.
        other = await spool.accept(new(3))
        other.next_attempt_at = 3000.0
        assert await spool.finish_with_reports(other, [attempt(2500.0)], []) == []
        msg, _ = await spool.load(other.seq)
        assert (msg.next_attempt_at, msg.attempts) == (3000.0, [attempt(2500.0)])


async def test_finish_with_reports_is_all_or_nothing(open_spool):
    async with open_spool() as spool:
        original = await spool.accept(new(1, qid="ORIG"))
        other = await spool.accept(new(2, qid="OTHER"))
        original.state = MessageState.DONE
        # The second report reuses a queue id: the whole job fails, the update included.
        with pytest.raises(SpoolError):
            await spool.finish_with_reports(
                original, [attempt(5.0, 550)], [ndr(1), ndr(2, qid="OTHER")]
            )
        msg, _ = await spool.load(original.seq)
        assert (msg.state, msg.attempts) == (MessageState.ACTIVE, [])
        assert [e.seq for e in await spool.index()] == [original.seq, other.seq]
        # Removed in the same transaction, a done message's own id is free for its report.
        [report] = await spool.finish_with_reports(original, [], [ndr(3, qid="ORIG")])
        assert [m.queue_id for m in await spool.messages()] == ["OTHER", "ORIG"]
        assert report.seq > other.seq


# ---------------------------------------------------------------- the two races


async def test_a_hold_during_a_round_stays_when_the_round_is_recorded(open_spool):
    """Race (a): the operator holds a message while a delivery round of it is under
    way; the round's record keeps what it learnt but not the state it started with."""
    async with open_spool() as spool:
        q = await spool.accept(new(1))
        for record in ("finish_with_reports", "update"):
            msg, _ = await spool.load(q.seq)  # the round starts
            assert await spool.hold(q.seq)  # the operator, meanwhile
            rcpts = msg.envelope.recipients
            msg.envelope = msg.envelope.with_recipients((rcpts[0], delivered(rcpts[1])))
            msg.next_attempt_at = 1500.0
            tried = attempt(1400.0)
            if record == "update":
                await spool.update(msg, [tried])
            else:
                assert await spool.finish_with_reports(msg, [tried], []) == []
            after, _ = await spool.load(q.seq)
            assert after.state is MessageState.HELD
            assert (after.envelope, after.next_attempt_at) == (msg.envelope, 1500.0)
            assert after.attempts[-1] == tried
            assert await spool.index() == [IndexEntry(q.seq, 1500.0, MessageState.HELD)]
            assert await spool.release(q.seq, 1600.0)
        # A round that finished every recipient removes the message, held or not.
        msg, _ = await spool.load(q.seq)
        assert await spool.hold(q.seq)
        msg.envelope = msg.envelope.with_recipients(tuple(map(failed, msg.envelope.recipients)))
        msg.state = MessageState.DONE
        [report] = await spool.finish_with_reports(msg, [attempt(1700.0, 550)], [ndr()])
        assert [m.seq for m in await spool.messages()] == [report.seq]


async def test_a_delete_during_a_round_is_not_undone_and_queues_no_report(open_spool):
    """Race (b): the operator deletes a message while a round (or a bounce) of it is
    under way; recording the round stores nothing and queues no report."""
    async with open_spool() as spool:
        for state in (MessageState.DONE, MessageState.ACTIVE):
            q = await spool.accept(new(1))
            msg, _ = await spool.load(q.seq)  # the round starts
            assert await spool.delete(q.seq)  # the operator, meanwhile
            msg.state = state
            assert await spool.finish_with_reports(msg, [attempt(1.0)], [ndr(1), ndr(2)]) == []
            await spool.update(msg, [attempt(2.0)])
            assert await spool.load(q.seq) is None
            assert await spool.messages() == []
            assert await spool.index() == []
        # The operator's bounce: load, then finish DONE without attempts; gone meanwhile.
        q = await spool.accept(new(2))
        msg, _ = await spool.load(q.seq)
        assert await spool.delete(q.seq)
        msg.state = MessageState.DONE
        assert (
            await spool.finish_with_reports(msg, [], [ndr(3, qid="CLASH"), ndr(4, qid="CLASH")])
            == []
        )
        # No id was made for the reports that were not queued.
        after = await spool.accept(new(3))
        assert after.queue_id == seeded(4)[3]


# ---------------------------------------------------------------- operator actions


async def test_hold_release_reschedule_delete(open_spool):
    async with open_spool() as spool:
        q = await spool.accept(new(1, at=100.0))

        async def state() -> tuple[MessageState, float]:
            msg, _ = await spool.load(q.seq)
            return msg.state, msg.next_attempt_at

        assert not await spool.release(q.seq, 150.0)  # not held
        assert await spool.reschedule(q.seq, 120.0)
        assert await state() == (MessageState.ACTIVE, 120.0)
        assert await spool.hold(q.seq)
        assert not await spool.hold(q.seq)  # already held
        assert not await spool.reschedule(q.seq, 130.0)  # held: release it instead
        assert await state() == (MessageState.HELD, 120.0)
        assert await spool.release(q.seq, 140.0)
        assert await state() == (MessageState.ACTIVE, 140.0)
        assert await spool.delete(q.seq)
        assert await spool.load(q.seq) is None
        for gone in (q.seq, 99999):
            assert not await spool.hold(gone)
            assert not await spool.release(gone, 1.0)
            assert not await spool.reschedule(gone, 1.0)
            assert not await spool.delete(gone)


# ---------------------------------------------------------------- queries, stats, shape


async def _queue_for_queries(spool: Spool) -> dict[str, QueuedMessage]:
    """Five messages: arrivals 10..50, due times 15..55 (after the updates below)."""
    queued = await spool.accept_many(
        [
            new(1, "a@One.Example", "b@two.example", at=10.0, qid="Q1", sender="alice@x.example"),
            new(2, "c@two.example", at=20.0, qid="Q2", sender="bob@x.example"),
            new(3, "d@one.example", "postmaster", at=30.0, qid="Q3", sender="alice@x.example"),
            new(4, "e@three.example", at=40.0, qid="Q4", sender=""),
            new(5, "f@\u00c9X.example", at=50.0, qid="Q5", sender="bob@x.example"),
        ]
    )
    by_id = {}
    for q in queued:
        msg, _ = await spool.load(q.seq)
        msg.next_attempt_at = msg.arrival_at + 5.0
        if q.queue_id == "Q2":  # its only recipient delivered: pending nowhere, still queued
            msg.envelope = msg.envelope.with_recipients(
                tuple(map(delivered, msg.envelope.recipients))
            )
        await spool.update(msg, [attempt(msg.arrival_at + 1.0)])
        by_id[q.queue_id], _ = await spool.load(q.seq)
    assert await spool.hold(by_id["Q4"].seq)
    by_id["Q4"].state = MessageState.HELD
    return by_id


QUERIES: list[tuple[MessageQuery | None, list[str]]] = [
    (None, ["Q1", "Q2", "Q3", "Q4", "Q5"]),
    (MessageQuery(), ["Q1", "Q2", "Q3", "Q4", "Q5"]),
    (MessageQuery(queue_ids=frozenset({"Q3", "Q1", "NOPE"})), ["Q1", "Q3"]),
    (MessageQuery(queue_ids=frozenset({"q3"})), []),  # no case folding
    (MessageQuery(queue_ids=frozenset()), []),
    (MessageQuery(states=frozenset({MessageState.HELD})), ["Q4"]),
    (MessageQuery(states=frozenset({MessageState.ACTIVE})), ["Q1", "Q2", "Q3", "Q5"]),
    (
        MessageQuery(states=frozenset({MessageState.ACTIVE, MessageState.HELD})),
        ["Q1", "Q2", "Q3", "Q4", "Q5"],
    ),
    (MessageQuery(states=frozenset()), []),
    (MessageQuery(sender="alice@x.example"), ["Q1", "Q3"]),
    (MessageQuery(sender=""), ["Q4"]),
    (MessageQuery(domain="one.example"), ["Q1", "Q3"]),  # a@One.Example counts, any case
    (MessageQuery(domain="ONE.EXAMPLE"), ["Q1", "Q3"]),
    (MessageQuery(domain="two.example"), ["Q1"]),  # Q2's recipient there is delivered
    (MessageQuery(domain=""), ["Q3"]),  # a bare local part
    (MessageQuery(domain="\u00e9x.example"), ["Q5"]),
    (MessageQuery(domain="nowhere.example"), []),
    (MessageQuery(due_by=35.0), ["Q1", "Q2", "Q3"]),  # next attempts 15, 25, 35: inclusive
    (MessageQuery(due_after=35.0), ["Q4", "Q5"]),
    (MessageQuery(arrived_by=20.0), ["Q1", "Q2"]),  # arrivals 10, 20: inclusive
    (MessageQuery(arrived_after=20.0), ["Q3", "Q4", "Q5"]),
    (MessageQuery(arrived_after=10.0, arrived_by=40.0), ["Q2", "Q3", "Q4"]),
    # "deferred at 30", as queue_tools.query_for asks: active, not due yet
    (MessageQuery(states=frozenset({MessageState.ACTIVE}), due_after=30.0), ["Q3", "Q5"]),
    (MessageQuery(sender="bob@x.example", domain="two.example"), []),
    (
        MessageQuery(queue_ids=frozenset({"Q1", "Q2", "Q5"}), sender="bob@x.example", due_by=60.0),
        ["Q2", "Q5"],
    ),
]


async def test_messages_selects_by_every_field_anded(open_spool):
    async with open_spool() as spool:
        by_id = await _queue_for_queries(spool)
        for query, expected in QUERIES:
            found = await spool.messages(query)
            assert [m.queue_id for m in found] == expected, query
            assert found == [by_id[q] for q in expected]  # whole messages, attempts included
            assert [m.queue_id for m in found if query is None or query.matches(m)] == expected
            shaped = await spool.shape(query)
            assert [e.seq for e in shaped] == [m.seq for m in found]


async def test_messages_by_many_queue_ids(open_spool):
    async with open_spool() as spool:
        q = await spool.accept(new(1))
        many = frozenset({q.queue_id, *(f"N{i}" for i in range(40_000))})  # past SQLite's 32766
        assert [m.seq for m in await spool.messages(MessageQuery(queue_ids=many))] == [q.seq]


async def test_shape_lists_arrival_and_pending_domains(open_spool):
    async with open_spool() as spool:
        by_id = await _queue_for_queries(spool)
        assert await spool.shape() == [
            ShapeEntry(by_id["Q1"].seq, 10.0, ("one.example", "two.example")),
            ShapeEntry(by_id["Q2"].seq, 20.0, ()),
            ShapeEntry(by_id["Q3"].seq, 30.0, ("one.example", "")),
            ShapeEntry(by_id["Q4"].seq, 40.0, ("three.example",)),
            ShapeEntry(by_id["Q5"].seq, 50.0, ("\u00e9x.example",)),
        ]


async def test_queue_stats(open_spool):
    async with open_spool() as spool:
        assert await spool.queue_stats(0.0) == QueueStats(0, 0, 0, 0.0)
        by_id = await _queue_for_queries(spool)
        # due at 15, 25, 35, (held), 55
        assert await spool.queue_stats(25.0) == QueueStats(2, 2, 1, 10.0)
        assert await spool.queue_stats(100.0) == QueueStats(4, 0, 1, 10.0)
        assert await spool.queue_stats(0.0) == QueueStats(0, 4, 1, 10.0)
        assert (await spool.queue_stats(0.0)).as_dict() == {
            "active": 0.0,
            "deferred": 4.0,
            "held": 1.0,
            "oldest_arrival": 10.0,
            "kept": 0.0,
            "kept_size": 0.0,
        }
        assert await spool.delete(by_id["Q1"].seq)
        assert (await spool.queue_stats(0.0)).oldest_arrival == 20.0
        # The first queued, not the earliest arrival: an NDR's arrival comes later in
        # time, but a replay may queue an old message after a new one.
        for m in by_id.values():
            await spool.delete(m.seq)
        await spool.accept_many([new(6, at=500.0), new(7, at=400.0)])
        assert (await spool.queue_stats(0.0)).oldest_arrival == 500.0


# ---------------------------------------------------------------- kept copies (queue resend)

RBL = Reply(554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked", Phase.RCPT)


def refused(at: float, rcpts=("a@one.example",)) -> Attempt:
    return Attempt(
        at, "A", tuple(rcpts), RBL, "bounce", "rbl-block", 0.5, category="rbl_block", scope="egress"
    )


async def bounced(spool: Spool, n: int, keep: Keep, *, body: bytes | None = None) -> QueuedMessage:
    """A message whose first recipient bounced on our egress and whose second was
    delivered, finished with `keep`: the message as it was finished."""
    queued = await spool.accept(new(n, body=body))
    msg, _ = await spool.load(queued.seq)
    a, b = msg.envelope.recipients
    fail = dataclasses.replace(a, state=RecipientState.FAILED, last_reply=RBL, failed_rule="x")
    msg.envelope = msg.envelope.with_recipients((fail, delivered(b)))
    msg.state = MessageState.DONE
    await spool.finish_with_reports(msg, [refused(keep.at - 1.0)], [], keep)
    return msg


def as_kept(msg: QueuedMessage, at: float, until: float, resent=frozenset()) -> KeptMessage:
    return KeptMessage(dataclasses.replace(msg, state=MessageState.KEPT), at, until, resent)


async def test_keep_turns_a_done_message_into_a_kept_copy(open_spool):
    async with open_spool() as spool:
        original = await spool.accept(new(1, qid="ORIG"))
        await spool.update(original, [attempt(1001.0)])  # an earlier round's attempt
        msg, _ = await spool.load(original.seq)
        msg.envelope = msg.envelope.with_recipients(tuple(map(failed, msg.envelope.recipients)))
        msg.state = MessageState.DONE
        msg.next_attempt_at = 1900.0
        # The report may take the id: the copy is out of the queue, as a removed message.
        [report] = await spool.finish_with_reports(
            msg, [refused(1999.0)], [ndr(1, qid="ORIG")], Keep(2000.0, 5000.0, 10**6)
        )
        assert await spool.load(original.seq) is None
        assert [m.seq for m in await spool.messages()] == [report.seq]
        assert [e.seq for e in await spool.index()] == [report.seq]
        assert await spool.shape() == [ShapeEntry(report.seq, 2000.0, ("example.org",))]
        [kept] = await spool.kept()
        expected = dataclasses.replace(msg, attempts=[attempt(1001.0), refused(1999.0)])
        assert kept == as_kept(expected, 2000.0, 5000.0)
        assert kept.message.size == len(new(1).body)
        stats = await spool.queue_stats(2000.0)
        assert (stats.active, stats.kept, stats.kept_size) == (1, 1, kept.message.size)
        assert stats.oldest_arrival == 2000.0  # the report's: a kept copy is not queued
        # The copy's own seq is not the queue's: nothing there touches it.
        assert not await spool.hold(kept.message.seq)
        assert not await spool.delete(kept.message.seq)
        assert await spool.kept() == [kept]


async def test_keep_means_nothing_unless_the_message_is_done_and_still_there(open_spool):
    async with open_spool() as spool:
        keep = Keep(2000.0, 5000.0, 10**6)
        active = await spool.accept(new(1))
        active.next_attempt_at = 3000.0
        await spool.finish_with_reports(active, [refused(1999.0)], [], keep)
        msg, _ = await spool.load(active.seq)
        assert (msg.state, msg.next_attempt_at, msg.attempts) == (
            MessageState.ACTIVE,
            3000.0,
            [refused(1999.0)],
        )
        gone = await spool.accept(new(2))
        assert await spool.delete(gone.seq)
        gone.state = MessageState.DONE
        assert await spool.finish_with_reports(gone, [], [ndr(1)], keep) == []
        await spool.update(msg, [])
        assert await spool.kept() == []
        assert (await spool.queue_stats(0.0)).kept == 0


async def test_keep_is_all_or_nothing_with_the_round(open_spool):
    async with open_spool() as spool:
        queued = await spool.accept(new(1))
        other = await spool.accept(new(2, qid="OTHER"))
        queued.state = MessageState.DONE
        with pytest.raises(SpoolError):
            await spool.finish_with_reports(
                queued, [refused(10.0)], [ndr(1, qid="OTHER")], Keep(20.0, 30.0, 10**6)
            )
        assert await spool.kept() == []
        assert [m.seq for m in await spool.messages()] == [queued.seq, other.seq]
        assert (await spool.load(queued.seq))[0].attempts == []


async def test_drop_kept_ends_windows_then_drops_the_oldest_over_the_cap(open_spool):
    async with open_spool() as spool:
        ten = b"0123456789"
        # Kept at 100, 300, 200 (the order kept, not of seq, is what counts), 10 bytes each.
        a = await bounced(spool, 1, Keep(100.0, 1000.0, 10**6), body=ten)
        b = await bounced(spool, 2, Keep(300.0, 900.0, 10**6), body=ten)
        c = await bounced(spool, 3, Keep(200.0, 800.0, 10**6), body=ten)
        assert [k.message.seq for k in await spool.kept()] == [a.seq, c.seq, b.seq]
        assert [k.message.seq for k in await spool.kept(since=200.0)] == [c.seq, b.seq]
        assert await spool.kept(since=300.5) == []
        assert await spool.drop_kept(799.0, 30) == KeptSweep(0, 800.0)
        assert await spool.drop_kept(800.0, 30) == KeptSweep(1, 900.0)  # c: until is inclusive
        assert [k.message.seq for k in await spool.kept()] == [a.seq, b.seq]
        assert await spool.drop_kept(800.0, 10) == KeptSweep(1, 900.0)  # a: kept first
        assert await spool.drop_kept(800.0, 10) == KeptSweep(0, 900.0)  # 10 bytes fit in 10
        assert await spool.drop_kept(900.0, 10) == KeptSweep(1, None)
        assert await spool.kept() == []
        # Keeping drops what has ended by then, and the oldest over the cap, at once.
        await bounced(spool, 4, Keep(1000.0, 2000.0, 10**6), body=ten)
        await bounced(spool, 5, Keep(1100.0, 1500.0, 10**6), body=ten)
        f = await bounced(spool, 6, Keep(1600.0, 2600.0, 15), body=ten)  # 5 ended, 4 oldest
        assert [k.message.seq for k in await spool.kept()] == [f.seq]
        assert (await spool.queue_stats(0.0)).kept_size == 10
        # A copy larger than the cap is not kept at all.
        await bounced(spool, 7, Keep(1700.0, 2700.0, 5), body=ten)
        assert await spool.kept() == []


async def test_resend_queues_a_new_message_once_per_recipient(open_spool):
    async with open_spool() as spool:
        body = "Subject: caf\u00e9\r\n\r\n\u00fcber\r\n".encode()
        msg = await bounced(spool, 1, Keep(100.0, 1000.0, 10**6), body=body)
        seq = msg.seq
        a, b = (Recipient(r.address, orcpt=r.orcpt) for r in msg.envelope.recipients)
        only_a = dataclasses.replace(msg.envelope, recipients=(a,), pinned_routes=("B",))
        [queued] = await spool.resend_kept([Resend(seq, only_a, 500.0)])
        assert queued is not None
        assert (queued.queue_id, queued.envelope, queued.message_id) == (
            seeded(2)[1],
            only_a,
            msg.message_id,
        )
        assert (queued.state, queued.arrival_at, queued.next_attempt_at) == (
            MessageState.ACTIVE,
            500.0,
            500.0,
        )
        assert queued.seq > seq
        assert await spool.load(queued.seq) == (queued, body)
        assert [e.seq for e in await spool.index()] == [queued.seq]
        [kept] = await spool.kept()
        assert kept.resent == {a.address}
        assert kept.message.envelope == msg.envelope  # the copy itself is as it was
        # Never twice: a recipient resent already, even beside a new one, or twice in
        # one call; nothing for a copy that is gone or a resend naming nobody.
        both = dataclasses.replace(only_a, recipients=(a, b))
        only_b = dataclasses.replace(only_a, recipients=(b,))
        nobody = dataclasses.replace(only_a, recipients=())
        answers = await spool.resend_kept(
            [
                Resend(seq, both, 600.0),
                Resend(seq, nobody, 600.0),
                Resend(seq, only_b, 600.0),
                Resend(seq, only_b, 600.0),
                Resend(MISSING, only_b, 600.0),
            ]
        )
        assert [m is not None for m in answers] == [False, False, True, False, False]
        assert answers[2].envelope == only_b
        assert (await spool.kept())[0].resent == {a.address, b.address}
        assert await spool.resend_kept([Resend(seq, only_a, 700.0)]) == [None]
        # A dropped copy is not resent.
        assert (await spool.drop_kept(1000.0, 10**6)).dropped == 1
        assert await spool.resend_kept([Resend(seq, only_b, 1100.0)]) == [None]


async def test_resend_is_all_or_nothing(open_spool):
    ids = iter(["KEPT", "TAKEN", "NEW1", "TAKEN"])
    async with open_spool(lambda: next(ids)) as spool:
        first = await bounced(spool, 1, Keep(100.0, 1000.0, 10**6))
        second = await bounced(spool, 2, Keep(100.0, 1000.0, 10**6), body=b"two")
        assert [k.message.queue_id for k in await spool.kept()] == ["KEPT", "TAKEN"]
        await spool.accept(new(3, qid="TAKEN"))
        rcpt = (Recipient("a@one.example"),)
        again = dataclasses.replace(first.envelope, recipients=rcpt)
        # The second new message would be named TAKEN, which is queued: neither goes.
        with pytest.raises(SpoolError):
            await spool.resend_kept([Resend(first.seq, again, 1.0), Resend(second.seq, again, 1.0)])
        assert [k.resent for k in await spool.kept()] == [frozenset(), frozenset()]
        assert [m.queue_id for m in await spool.messages()] == ["TAKEN"]


# ---------------------------------------------------------------- closing


async def test_a_closed_spool_refuses_work(open_spool):
    async with open_spool() as spool:
        q = await spool.accept(new(1))
        await spool.close()
        await spool.close()  # twice is fine
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: spool.accept(new(2)),
            lambda: spool.accept_many([new(3)]),
            lambda: spool.load(q.seq),
            lambda: spool.update(q, []),
            lambda: spool.finish_with_reports(q, [], []),
            spool.index,
            spool.messages,
            lambda: spool.hold(q.seq),
            lambda: spool.release(q.seq, 1.0),
            lambda: spool.reschedule(q.seq, 1.0),
            lambda: spool.delete(q.seq),
            lambda: spool.queue_stats(1.0),
            spool.shape,
            spool.kept,
            lambda: spool.drop_kept(1.0, 10),
            lambda: spool.resend_kept([Resend(q.seq, q.envelope, 1.0)]),
        ]
        for call in calls:
            with pytest.raises(SpoolError, match="closed"):
                await call()


# ---------------------------------------------------------------- queue ids and the clock


def test_queue_ids_come_from_the_clock():
    assert frontend.new_queue_id is clock.new_queue_id
    ids = [new_queue_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i == i.upper() and int(i, 16) >= 0 for i in ids)
    assert seeded_queue_ids(1)() == seeded_queue_ids(1)() != seeded_queue_ids(2)()


def test_only_clock_py_reads_the_clock():
    """The house rule, queue ids included: no other module imports `time`."""
    package = Path(relayguard.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "clock.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if "time" in names:
                offenders.append(str(path.relative_to(package)))
    assert offenders == []


# ---------------------------------------------------------------- differential: random runs

TIMES = st.sampled_from([0.0, 5.0, 10.0, 10.5, 20.0, 30.0, 1e9])
ADDRESSES = ["a@one.example", "B@One.Example", "c@two.example", "postmaster", "d@\u00c9X.example"]
EXPLICIT_IDS = ["QA", "QB"]  # never made by the factory: clashes happen only through these
MISSING = -1  # a seq no backend ever hands out

recipient_lists = st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3, unique=True)
new_messages = st.builds(
    lambda rcpts, sender, body, at, qid, mid: NewMessage(
        Envelope(sender, tuple(Recipient(a, notify=("FAILURE",)) for a in rcpts)),
        body,
        at,
        message_id=mid,
        queue_id=qid,
    ),
    recipient_lists,
    st.sampled_from(["s@example.org", "", "t@example.org"]),
    st.binary(max_size=24),
    TIMES,
    st.sampled_from(["", "", "", *EXPLICIT_IDS]),
    st.sampled_from(["", "<m@x>"]),
)
attempts = st.builds(
    Attempt,
    at=TIMES,
    route=st.sampled_from(["primary", "backup"]),
    recipients=st.lists(st.sampled_from(ADDRESSES), max_size=2).map(tuple),
    reply=st.sampled_from(
        [
            Reply(451, "4.7.1", "try later", Phase.RCPT, "mx"),
            Reply(421, "4.4.2", "timed out", Phase.CONNECT, synthetic=True),
        ]
    ),
    action=st.sampled_from(["defer", "reroute", "delivered"]),
    rule=st.sampled_from(["", "greylist"]),
    duration=st.sampled_from([0.0, 0.25]),
)
maybe_time = st.none() | TIMES
queries = st.none() | st.builds(
    MessageQuery,
    queue_ids=st.none()
    | st.frozensets(st.sampled_from([*seeded(8), *EXPLICIT_IDS, "NOPE"]), max_size=3),
    states=st.none() | st.frozensets(st.sampled_from([MessageState.ACTIVE, MessageState.HELD])),
    sender=st.none() | st.sampled_from(["s@example.org", "", "nobody@example.org"]),
    domain=st.none()
    | st.sampled_from(["one.example", "TWO.example", "", "\u00e9x.example", "no.example"]),
    due_by=maybe_time,
    due_after=maybe_time,
    arrived_by=maybe_time,
    arrived_after=maybe_time,
)


@dataclass(frozen=True)
class Outcome:
    """How a delivery round ends, applied alike to each backend's copy of the message."""

    fates: tuple[str, ...]  # per recipient, in order: keep / deliver / fail
    attempts: tuple[Attempt, ...]
    next_attempt_at: float
    reports: tuple[NewMessage, ...]
    record: str  # finish_with_reports, or update (then no reports)
    keep: Keep | None = None  # with finish_with_reports: kept if the round finishes it

    def apply(self, m: QueuedMessage) -> QueuedMessage:
        fate = {"keep": lambda r: r, "deliver": delivered, "fail": failed}
        rcpts = tuple(
            fate[f](r) if r.state is RecipientState.QUEUED else r
            for r, f in zip(m.envelope.recipients, (*self.fates, *["keep"] * 3), strict=False)
        )
        m.envelope = m.envelope.with_recipients(rcpts)
        m.next_attempt_at = self.next_attempt_at
        m.state = MessageState.ACTIVE if m.pending else MessageState.DONE
        return m


keeps = st.builds(
    lambda at, window, cap: Keep(at, at + window, cap),
    TIMES,
    st.sampled_from([0.0, 5.0, 5.0, 100.0, 100.0]),  # 0: ended as soon as kept
    st.sampled_from([0, 24, 48, 10**6, 10**6]),
)
outcomes = st.builds(
    Outcome,
    fates=st.lists(st.sampled_from(["keep", "deliver", "fail"]), max_size=3).map(tuple),
    attempts=st.lists(attempts, max_size=2).map(tuple),
    next_attempt_at=TIMES,
    reports=st.lists(
        new_messages.map(lambda m: dataclasses.replace(m, envelope=ndr().envelope)), max_size=2
    ).map(tuple),
    record=st.sampled_from(["finish_with_reports", "finish_with_reports", "update"]),
    keep=st.none() | keeps,
)


class SpoolsAgree(RuleBasedStateMachine):
    """The same operations on every backend; every answer must be the same."""

    created = Bundle("created")  # canonical seqs: the order messages were created in
    rounds = Bundle("rounds")  # delivery rounds under way
    finished = Bundle("finished")  # canonical seqs of messages finished with a keep

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="spool-contract-"))
        backends = [b for b in BACKENDS if b.unavailable() is None]
        self.names = [b.name for b in backends]
        self.spools = [
            self.loop.run_until_complete(b.open(self.directory / b.name, seeded_queue_ids(SEED)))
            for b in backends
        ]
        self.canonical: list[dict[int, int]] = [{} for _ in self.spools]  # backend seq -> ours
        self.actual: list[dict[int, int]] = [{MISSING: 10**12} for _ in self.spools]
        self.created_count = 0
        # A round under way: the canonical seq, and each backend's copy of the message.
        self.in_flight: dict[int, tuple[int, list[QueuedMessage]]] = {}
        self.rounds_started = 0

    def teardown(self) -> None:
        for spool in self.spools:
            self.loop.run_until_complete(spool.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- running one operation everywhere ------------------------------------------

    def _run_each(self, op: Callable[[int, Spool], Awaitable[Any]]) -> list[Any]:
        results = []
        for i, spool in enumerate(self.spools):
            try:
                results.append(self.loop.run_until_complete(op(i, spool)))
            except SpoolError as exc:
                results.append(type(exc))
        return results

    def _norm(self, i: int, value: Any) -> Any:
        """A backend's answer with its seqs replaced by the canonical ones."""
        if isinstance(value, QueuedMessage | IndexEntry | ShapeEntry):
            seq = self.canonical[i].get(value.seq, f"unknown seq {value.seq}")
            return dataclasses.replace(value, seq=seq)
        if isinstance(value, KeptMessage):
            return dataclasses.replace(value, message=self._norm(i, value.message))
        if isinstance(value, list | tuple):
            return type(value)(self._norm(i, v) for v in value)
        return value

    def _agree(self, what: str, results: list[Any]) -> Any:
        normed = [self._norm(i, r) for i, r in enumerate(results)]
        for name, other in zip(self.names[1:], normed[1:], strict=True):
            assert other == normed[0], (
                f"{what}: {name} answered {other!r}, {self.names[0]} {normed[0]!r}"
            )
        return normed[0]

    def _learn(self, results: list[Any]) -> list[int]:
        """New messages in each backend's answer, in the same positions: give them the
        next canonical seqs."""
        if not all(isinstance(r, list) for r in results) or len({len(r) for r in results}) > 1:
            return []  # the backends disagree: _agree says how
        new = []
        for position in range(len(results[0])):
            if any(r[position] is None for r in results):
                continue  # nothing made here (a resend refused): or _agree says they differ
            self.created_count += 1
            new.append(self.created_count)
            for i, r in enumerate(results):
                actual = r[position].seq
                assert actual not in self.canonical[i], "a seq handed out twice"
                assert all(actual > seen for seen in self.canonical[i]), "a seq that went down"
                self.canonical[i][actual] = self.created_count
                self.actual[i][self.created_count] = actual
        return new

    def _seq(self, i: int, canonical: int) -> int:
        return self.actual[i][canonical]

    # -- the front end -----------------------------------------------------------

    @rule(target=created, message=new_messages)
    def accept(self, message: NewMessage) -> Any:
        results = self._run_each(lambda _i, s: s.accept(message))
        new = self._learn([[r] if isinstance(r, QueuedMessage) else r for r in results])
        self._agree("accept", results)
        return multiple(*new)

    @rule(target=created, messages=st.lists(new_messages, max_size=3))
    def accept_many(self, messages: list[NewMessage]) -> Any:
        results = self._run_each(lambda _i, s: s.accept_many(messages))
        new = self._learn(results)
        self._agree("accept_many", results)
        return multiple(*new)

    # -- delivery rounds: started, then recorded later, operators acting between ---------

    @rule(target=rounds, seq=created)
    def start_round(self, seq: int) -> Any:
        loaded = self._run_each(lambda i, s: s.load(self._seq(i, seq)))
        self._agree("load", loaded)
        if loaded[0] is None:
            return multiple()
        self.rounds_started += 1
        self.in_flight[self.rounds_started] = (seq, [m for m, _ in loaded])
        return self.rounds_started

    @rule(target=created, key=consumes(rounds), outcome=outcomes)
    def finish_round(self, key: int, outcome: Outcome) -> Any:
        _, copies = self.in_flight.pop(key)

        def record(i: int, spool: Spool) -> Awaitable[Any]:
            message = outcome.apply(copies[i])
            if outcome.record == "update":
                return spool.update(message, outcome.attempts)
            return spool.finish_with_reports(
                message, outcome.attempts, outcome.reports, outcome.keep
            )

        results = self._run_each(record)
        new = self._learn(results)
        self._agree(outcome.record, results)
        return multiple(*new)

    # -- the operator ------------------------------------------------------------

    @rule(key=rounds, action=st.sampled_from(["hold", "delete", "release", "reschedule"]), at=TIMES)
    def act_during_round(self, key: int, action: str, at: float) -> None:
        """The races: an operator acting on a message while a round of it is under way."""
        seq, _ = self.in_flight[key]
        args = () if action in ("hold", "delete") else (at,)
        self._agree(
            action, self._run_each(lambda i, s: getattr(s, action)(self._seq(i, seq), *args))
        )

    @rule(seq=created | st.just(MISSING), action=st.sampled_from(["hold", "delete"]))
    def act(self, seq: int, action: str) -> None:
        self._agree(action, self._run_each(lambda i, s: getattr(s, action)(self._seq(i, seq))))

    @rule(
        seq=created | st.just(MISSING), action=st.sampled_from(["release", "reschedule"]), at=TIMES
    )
    def act_at(self, seq: int, action: str, at: float) -> None:
        self._agree(action, self._run_each(lambda i, s: getattr(s, action)(self._seq(i, seq), at)))

    # -- kept copies ---------------------------------------------------------------

    @rule(
        target=finished,
        seq=created,
        keep=keeps,
        tried=st.lists(attempts, max_size=2).map(tuple),
        reports=st.lists(new_messages, max_size=1).map(tuple),
    )
    def finish_and_keep(
        self, seq: int, keep: Keep, tried: tuple[Attempt, ...], reports: tuple[NewMessage, ...]
    ) -> Any:
        """A round that finishes a message and keeps its copy, in one step: of the
        rounds started above, few finish, and fewer finish their message."""
        loaded = self._run_each(lambda i, s: s.load(self._seq(i, seq)))
        self._agree("load", loaded)
        if loaded[0] is None:
            return multiple()

        def record(i: int, spool: Spool) -> Awaitable[Any]:
            message, _ = loaded[i]
            rcpts = message.envelope.recipients
            message.envelope = message.envelope.with_recipients(
                tuple(failed(r) if r.state is RecipientState.QUEUED else r for r in rcpts)
            )
            message.state = MessageState.DONE
            return spool.finish_with_reports(message, tried, reports, keep)

        results = self._run_each(record)
        self._learn(results)  # the reports: known, not drawn again
        self._agree("finish_with_reports and keep", results)
        return seq

    @rule(now=TIMES, max_size=st.sampled_from([0, 24, 10**6]))
    def drop_kept(self, now: float, max_size: int) -> None:
        self._agree("drop_kept", self._run_each(lambda _i, s: s.drop_kept(now, max_size)))

    @rule(
        target=created,
        seq=finished | created | st.just(MISSING),
        rcpts=st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True),
        at=TIMES,
        twice=st.booleans(),
    )
    def resend(self, seq: int, rcpts: list[str], at: float, twice: bool) -> Any:
        envelope = Envelope("s@example.org", tuple(map(Recipient, rcpts)), pinned_routes=("b",))
        results = self._run_each(
            lambda i, s: s.resend_kept([Resend(self._seq(i, seq), envelope, at)] * (1 + twice))
        )
        new = self._learn(results)
        self._agree("resend_kept", results)
        return multiple(*new)

    @rule(since=maybe_time)
    def read_kept(self, since: float | None) -> None:
        self._agree("kept", self._run_each(lambda _i, s: s.kept(since)))

    # -- reads -------------------------------------------------------------------

    @rule(query=queries)
    def select(self, query: MessageQuery | None) -> None:
        self._agree("messages", self._run_each(lambda _i, s: s.messages(query)))
        self._agree("shape", self._run_each(lambda _i, s: s.shape(query)))

    @rule(now=TIMES)
    def stats(self, now: float) -> None:
        self._agree("queue_stats", self._run_each(lambda _i, s: s.queue_stats(now)))

    @rule(seq=created | st.just(MISSING))
    def load_and_index_after(self, seq: int) -> None:
        self._agree("load", self._run_each(lambda i, s: s.load(self._seq(i, seq))))
        self._agree(
            "index",
            self._run_each(lambda i, s: s.index(0 if seq == MISSING else self._seq(i, seq))),
        )

    @invariant()
    def same_queue(self) -> None:
        self._agree("messages()", self._run_each(lambda _i, s: s.messages()))
        self._agree("index()", self._run_each(lambda _i, s: s.index()))
        self._agree("kept()", self._run_each(lambda _i, s: s.kept()))


TestSpoolsAgree = SpoolsAgree.TestCase
# A failure is shrunk through hundreds of replays, each opening a SQLite spool: past
# pytest-timeout's 120 s the timeout would cut the shrinking short and hypothesis would
# report the interrupted replay as a flaky test instead of the smallest failing run.
TestSpoolsAgree.pytestmark = [pytest.mark.timeout(600)]
TestSpoolsAgree.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_every_backend_takes_part_in_the_random_runs():
    """The differential half needs two backends at least, memory being one."""
    names = [b.name for b in BACKENDS if b.unavailable() is None]
    assert "memory" in names
    assert len(names) >= 2
