"""What is SQLite's own in SqliteSpool: durability across restarts, group commit,
isolation of failing jobs, a full disk, the reader beside the writer, the tables.

What every backend promises is tested once for all of them in
test_spool_contract.py."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3

import pytest

from relayguard.clock import new_queue_id
from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    Recipient,
    Reply,
)
from relayguard.queue.spool import MessageQuery, NewMessage, SpoolError, SpoolFullError
from relayguard.queue.spool.sqlite import (
    DB_NAME,
    WRITE_LOCK_NAME,
    SqliteSpool,
    queue_stats,
    select_messages,
    spool_usable,
)


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


async def attempt_rows(spool, seq: int) -> int:
    return await spool._run(
        lambda c: c.execute("SELECT count(*) FROM attempts WHERE seq=?", (seq,)).fetchone()[0]
    )


async def test_done_and_delete_remove_the_attempt_rows(spool):
    keep = await spool.accept(new())
    done = await spool.accept(new())
    deleted = await spool.accept(new())
    for m in (keep, done, deleted):
        await spool.update(m, [attempt(1.0)])
    done.state = MessageState.DONE
    await spool.update(done, [attempt(3.0, 550, action="bounce")])
    assert await spool.delete(deleted.seq)
    assert [await attempt_rows(spool, m.seq) for m in (keep, done, deleted)] == [1, 0, 0]
    # A round recorded for the deleted message stores no attempt either.
    await spool.finish_with_reports(deleted, [attempt(4.0)], [new()])
    assert await attempt_rows(spool, deleted.seq) == 0


async def test_queue_ids_come_from_the_clock_by_default(spool):
    """The front end names what it accepts; a report is named here, by clock.py."""
    original = await spool.accept(new(queue_id="FROM-THE-FRONT-END"))
    original.state = MessageState.DONE
    [report] = await spool.finish_with_reports(original, [], [new()])
    assert len(report.queue_id) == len(new_queue_id())
    assert int(report.queue_id, 16) > 0


async def test_operator_reads_do_not_wait_for_the_writer(spool):
    """Queries, stats and loads go through the reader connection: a writer held up
    (here: another process's batch, by its lock) does not hold up the queue tools."""
    queued = await spool.accept(new())
    fd = os.open(spool.directory / WRITE_LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        blocked = asyncio.ensure_future(spool.hold(queued.seq))
        async with asyncio.timeout(5):
            assert [m.seq for m in await spool.messages()] == [queued.seq]
            assert await spool.messages(MessageQuery(queue_ids=frozenset({"NONE"}))) == []
            assert (await spool.queue_stats(2000.0)).active == 1
            assert [e.seq for e in await spool.shape()] == [queued.seq]
            assert (await spool.load(queued.seq))[0].state is MessageState.ACTIVE
        assert not blocked.done()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert await blocked
    assert (await spool.load(queued.seq))[0].state is MessageState.HELD


async def test_queue_stats_for_the_metrics_match_the_spool(spool):
    _, held, _ = await spool.accept_many([new(at=10.0), new(at=20.0), new(at=30.0)])
    assert await spool.hold(held.seq)
    stats = queue_stats(spool.directory, 25.0)
    assert stats == (await spool.queue_stats(25.0)).as_dict()
    assert stats == {
        "active": 1.0,
        "deferred": 1.0,
        "held": 1.0,
        "oldest_arrival": 10.0,
        "kept": 0.0,
        "kept_size": 0.0,
    }


async def test_select_messages_for_readers_of_the_file(spool):
    """The replay reads a spool directory with its own connection, by the same query."""
    a, b = await spool.accept_many([new(at=1.0), new(at=2.0)])
    assert await spool.hold(b.seq)
    conn = sqlite3.connect(spool.path)
    try:
        assert [m.seq for m in select_messages(conn)] == [a.seq, b.seq]
        held = MessageQuery(states=frozenset({MessageState.HELD}))
        assert [m.seq for m in select_messages(conn, held)] == [b.seq]
    finally:
        conn.close()


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
        assert await first.hold(a.seq)  # an operator's hold is on disk too
    finally:
        await first.close()
    with pytest.raises(SpoolError, match="closed"):
        await first.accept(new())

    second = SqliteSpool(directory)
    try:
        entries = {e.seq: (e.next_attempt_at, e.state) for e in await second.index()}
        assert entries == {a.seq: (10.0, MessageState.HELD), b.seq: (99.0, MessageState.ACTIVE)}
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


def test_run_sync_goes_through_the_writer(spool):
    assert spool.run_sync(lambda c: c.execute("SELECT 41 + 1").fetchone()[0]) == 42


def test_spool_usable(tmp_path):
    assert not spool_usable(tmp_path)  # no database yet
    s = SqliteSpool(tmp_path)
    s.close_sync()
    assert spool_usable(tmp_path)
