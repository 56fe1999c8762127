"""SqliteSpool: durable round trips, group commit, isolation of failing jobs, a full disk."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.queue.spool import NewMessage, SpoolError, SpoolFullError
from relayguard.queue.spool.sqlite import DB_NAME, SqliteSpool, new_queue_id, spool_usable


@pytest.fixture
def spool(tmp_path):
    s = SqliteSpool(tmp_path / "spool")
    yield s
    s.close_sync()


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


def new(body: bytes = b"Subject: hi\r\n\r\nhello\r\n", at: float = 1000.0, **kw) -> NewMessage:
    env = kw.pop("env", None) or envelope("a@one.example", "b@two.example")
    return NewMessage(envelope=env, body=body, arrival_at=at, **kw)


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


def count(conn_path, sql: str) -> int:
    conn = sqlite3.connect(conn_path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


BODIES = [
    b"",
    b"Subject: plain\r\n\r\nline one\r\nline two\r\n",
    "Subject: caf\u00e9\r\n\r\n\u00fcber \u2603\r\n".encode(),
    bytes(range(256)) * 4,  # every byte value, NUL and bare CR/LF included
    b"no final newline",
    b"\r\n.\r\n..\r\n",
]


@pytest.mark.parametrize("body", BODIES)
async def test_accept_then_load_round_trips_byte_exact(spool, body):
    env = envelope("x@y.example")
    queued = await spool.accept(new(body, at=1234.5, env=env, message_id="<m@id>", queue_id="QID1"))
    assert queued.queue_id == "QID1"
    assert queued.size == len(body)
    assert queued.arrival_at == queued.next_attempt_at == 1234.5
    assert queued.state is MessageState.ACTIVE
    loaded = await spool.load(queued.seq)
    assert loaded is not None
    msg, raw = loaded
    assert raw == body
    assert type(raw) is bytes
    assert msg.envelope == env
    assert (msg.seq, msg.queue_id, msg.message_id, msg.size) == (
        queued.seq,
        "QID1",
        "<m@id>",
        len(body),
    )
    assert msg.arrival_at == 1234.5
    assert msg.attempts == []


async def test_queue_id_is_made_when_empty(spool):
    a = await spool.accept(new())
    b = await spool.accept(new())
    assert a.queue_id
    assert b.queue_id
    assert a.queue_id != b.queue_id
    assert b.seq > a.seq
    assert len(new_queue_id()) == len(a.queue_id)


async def test_load_missing_is_none(spool):
    assert await spool.load(12345) is None


async def test_accept_many_and_index(spool):
    queued = await spool.accept_many([new(at=float(i)) for i in range(5)])
    assert [q.arrival_at for q in queued] == [0.0, 1.0, 2.0, 3.0, 4.0]
    seqs = [q.seq for q in queued]
    assert len(set(seqs)) == 5
    entries = sorted(await spool.index(), key=lambda e: e.seq)
    assert [(e.seq, e.next_attempt_at, e.state) for e in entries] == [
        (q.seq, q.arrival_at, MessageState.ACTIVE) for q in queued
    ]
    after = await spool.index(after_seq=seqs[2])
    assert sorted(e.seq for e in after) == seqs[3:]


async def test_update_stores_states_attempts_and_next_time(spool):
    queued = await spool.accept(new())
    a1 = attempt(1001.0)
    rcpts = queued.envelope.recipients
    reply = Reply.parse(250, "2.0.0 Ok: queued as X", Phase.AFTER_DATA, "mx.two.example")
    queued.envelope = queued.envelope.with_recipients(
        (
            rcpts[0],
            Recipient(
                rcpts[1].address,
                RecipientState.DELIVERED,
                rcpts[1].orcpt,
                rcpts[1].notify,
                reply,
                delivered_via="primary",
            ),
        )
    )
    queued.next_attempt_at = 1300.0
    await spool.update(queued, [a1])

    msg, _ = await spool.load(queued.seq)
    assert msg.envelope == queued.envelope
    assert msg.envelope.recipients[1].state is RecipientState.DELIVERED
    assert msg.envelope.recipients[1].last_reply == reply
    assert msg.pending == (rcpts[0],)
    assert msg.next_attempt_at == 1300.0
    assert msg.attempts == [a1]
    assert [(e.seq, e.next_attempt_at) for e in await spool.index()] == [(queued.seq, 1300.0)]

    # A second update appends, in order; an update with no attempts adds none.
    a2 = attempt(1300.0, 421, action="reroute")
    queued.state = MessageState.HELD
    await spool.update(queued, [a2])
    await spool.update(queued, [])
    msg, _ = await spool.load(queued.seq)
    assert msg.attempts == [a1, a2]
    assert msg.state is MessageState.HELD
    [entry] = await spool.index()
    assert entry.state is MessageState.HELD


async def test_done_deletes_message_and_attempts(spool):
    keep = await spool.accept(new())
    gone = await spool.accept(new())
    await spool.update(gone, [attempt(1.0)])
    await spool.update(keep, [attempt(2.0)])
    gone.state = MessageState.DONE
    await spool.update(gone, [attempt(3.0, 550, action="bounce")])
    assert await spool.load(gone.seq) is None
    assert [e.seq for e in await spool.index()] == [keep.seq]
    n = await spool._run(
        lambda c: c.execute("SELECT count(*) FROM attempts WHERE seq=?", (gone.seq,)).fetchone()[0]
    )
    assert n == 0
    msg, _ = await spool.load(keep.seq)
    assert len(msg.attempts) == 1


async def test_finish_with_reports_inserts_reports(spool):
    original = await spool.accept(new())
    original.state = MessageState.DONE
    ndr_env = Envelope(
        sender="", recipients=(Recipient("sender@example.org"),), pinned_routes=("primary",)
    )
    reports = [
        new(b"NDR one\r\n", at=2000.0, env=ndr_env),
        new(b"NDR two\r\n", at=2000.0, env=ndr_env),
    ]
    queued = await spool.finish_with_reports(original, [attempt(2000.0, 550)], reports)
    assert len(queued) == 2
    assert await spool.load(original.seq) is None
    bodies = []
    for q in queued:
        msg, body = await spool.load(q.seq)
        assert msg.envelope == ndr_env
        bodies.append(body)
    assert bodies == [b"NDR one\r\n", b"NDR two\r\n"]
    assert sorted(e.seq for e in await spool.index()) == sorted(q.seq for q in queued)


async def test_finish_with_reports_is_atomic(spool):
    original = await spool.accept(new(queue_id="ORIG"))
    other = await spool.accept(new(queue_id="OTHER"))
    original.state = MessageState.DONE
    # The second report reuses a queue id: the whole job must fail, update included.
    reports = [new(b"ok report"), new(b"clashing report", queue_id="OTHER")]
    with pytest.raises(SpoolError):
        await spool.finish_with_reports(original, [attempt(5.0, 550)], reports)
    loaded = await spool.load(original.seq)
    assert loaded is not None
    msg, _ = loaded
    assert msg.state is MessageState.ACTIVE
    assert msg.attempts == []
    assert sorted(e.seq for e in await spool.index()) == [original.seq, other.seq]


async def test_restart_sees_everything(tmp_path):
    directory = tmp_path / "spool"
    first = SqliteSpool(directory)
    try:
        a = await first.accept(new(b"\xff\xfe 8-bit\r\n", at=10.0))
        b = await first.accept(new(b"second\r\n", at=20.0))
        c = await first.accept(new(b"third\r\n", at=30.0))
        b.next_attempt_at = 99.0
        await first.update(b, [attempt(21.0)])
        c.state = MessageState.DONE
        await first.update(c, [])
    finally:
        await first.close()
    with pytest.raises(SpoolError, match="closed"):
        await first.accept(new())

    second = SqliteSpool(directory)
    try:
        entries = {e.seq: e.next_attempt_at for e in await second.index()}
        assert entries == {a.seq: 10.0, b.seq: 99.0}
        msg, body = await second.load(a.seq)
        assert body == b"\xff\xfe 8-bit\r\n"
        msg, body = await second.load(b.seq)
        assert body == b"second\r\n"
        assert len(msg.attempts) == 1
        assert await second.load(c.seq) is None
        d = await second.accept(new())
        assert d.seq > c.seq  # AUTOINCREMENT: a deleted seq is never reused
    finally:
        await second.close()
    assert spool_usable(directory)


async def test_concurrent_accepts_are_grouped(spool):
    before_batches, before_jobs = spool.batches, spool.batched_jobs
    results = await asyncio.gather(
        *(spool.accept(new(f"body {i}\r\n".encode(), at=float(i))) for i in range(200))
    )
    assert len({q.seq for q in results}) == 200
    assert len({q.queue_id for q in results}) == 200
    assert spool.batched_jobs - before_jobs == 200
    assert 0 < spool.batches - before_batches < 200
    assert len(await spool.index()) == 200
    msg, body = await spool.load(results[123].seq)
    assert body == b"body 123\r\n"
    assert msg.arrival_at == 123.0


async def test_failing_job_does_not_fail_the_batch(spool):
    def bad(conn):
        conn.execute(
            "INSERT INTO messages (queue_id, state, arrival_at, next_attempt_at, sender,"
            " message_id, size, envelope, body) VALUES ('BAD','active',0,0,'','',0,'{}',x'')"
        )
        raise ValueError("job failed")

    before_batches, before_jobs = spool.batches, spool.batched_jobs
    jobs = []
    for i in range(30):
        jobs.append(spool.accept(new(f"m{i}".encode())))
        if i % 10 == 5:
            jobs.append(spool._run(bad))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 3
    assert all(type(e) is ValueError and str(e) == "job failed" for e in errors)
    good = [r for r in results if not isinstance(r, BaseException)]
    assert len(good) == 30
    # the failing jobs were committed in batches with the others, not on their own
    assert spool.batched_jobs - before_jobs == 33
    assert spool.batches - before_batches < 33
    assert len(await spool.index()) == 30
    # the bad job's own insert was rolled back with its savepoint
    n = await spool._run(
        lambda c: c.execute("SELECT count(*) FROM messages WHERE queue_id='BAD'").fetchone()[0]
    )
    assert n == 0


async def test_sqlite_error_in_a_job_becomes_spool_error(spool):
    await spool.accept(new(queue_id="SAME"))
    results = await asyncio.gather(
        spool.accept(new(queue_id="SAME")),
        spool.accept(new(queue_id="OTHER")),
        return_exceptions=True,
    )
    assert isinstance(results[0], SpoolError)
    assert not isinstance(results[0], SpoolFullError)
    assert results[1].queue_id == "OTHER"
    assert len(await spool.index()) == 2


async def test_full_spool_raises_and_writes_nothing(tmp_path):
    directory = tmp_path / "small"
    spool = SqliteSpool(directory, max_page_count=12)
    try:
        first = await spool.accept(new(b"small\r\n"))
        with pytest.raises(SpoolFullError):
            await spool.accept(new(b"x" * 200_000, queue_id="BIG"))
        assert [e.seq for e in await spool.index()] == [first.seq]
        # an NDR too big to fit fails the whole finish: the original stays as it was
        first.state = MessageState.DONE
        with pytest.raises(SpoolFullError):
            await spool.finish_with_reports(first, [attempt(1.0)], [new(b"y" * 200_000)])
        msg, body = await spool.load(first.seq)
        assert msg.state is MessageState.ACTIVE
        assert msg.attempts == []
        assert body == b"small\r\n"
        # still usable for what fits
        again = await spool.accept(new(b"tiny\r\n"))
        assert (await spool.load(again.seq))[1] == b"tiny\r\n"
    finally:
        await spool.close()
    path = directory / DB_NAME
    assert count(path, "SELECT count(*) FROM messages WHERE queue_id='BIG'") == 0
    assert count(path, "SELECT count(*) FROM messages") == 2
    assert count(path, "SELECT count(*) FROM attempts") == 0


async def test_messages_query(spool):
    a = await spool.accept(new(env=envelope("a@x.example", sender="alice@example.org")))
    await spool.accept(new(env=envelope("b@x.example", sender="bob@example.org")))
    found = await spool.messages("sender = ?", ["alice@example.org"])
    assert [m.seq for m in found] == [a.seq]
    assert len(await spool.messages()) == 2


def test_run_sync_goes_through_the_writer(spool):
    assert spool.run_sync(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]) == 42


def test_spool_usable(tmp_path):
    assert not spool_usable(tmp_path)  # no database yet
    s = SqliteSpool(tmp_path)
    s.close_sync()
    assert spool_usable(tmp_path)
