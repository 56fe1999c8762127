"""MemorySpool keeps the Spool protocol's promises exactly as SqliteSpool does."""

from __future__ import annotations

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
from relayguard.queue.spool import NewMessage, SpoolError
from relayguard.queue.spool.memory import MemorySpool, seeded_queue_ids
from relayguard.queue.spool.sqlite import SqliteSpool


def new(n: int, *, qid: str = "", rcpts=("a@one.example", "b@two.example")) -> NewMessage:
    env = Envelope(sender=f"s{n}@example.org", recipients=tuple(Recipient(a) for a in rcpts))
    return NewMessage(
        envelope=env,
        body=f"Subject: {n}\r\n\r\nhi\r\n".encode(),
        arrival_at=1000.0 + n,
        message_id=f"<{n}@x>",
        queue_id=qid,
    )


def attempt(at: float) -> Attempt:
    return Attempt(
        at,
        "primary",
        ("a@one.example",),
        Reply(451, "4.7.1", "try later", Phase.RCPT),
        "defer",
        "greylisted",
        0.5,
    )


async def script(spool) -> list[object]:
    """The same operations on either backend; what they return, in comparable form."""
    out: list[object] = []
    a = await spool.accept(new(1, qid="QA"))
    b, c = await spool.accept_many([new(2, qid="QB"), new(3, qid="QC")])
    out.append([(m.seq, m.queue_id, m.arrival_at, m.next_attempt_at, m.size) for m in (a, b, c)])
    msg, body = await spool.load(a.seq)
    msg.attempts.append(attempt(1.0))  # the caller's list: must not leak into the spool
    out.append((body, (await spool.load(a.seq))[0].attempts))
    msg.attempts = [attempt(5.0)]
    msg.next_attempt_at = 2000.0
    msg.envelope = msg.envelope.with_recipients(
        (
            Recipient("a@one.example", RecipientState.DELIVERED, delivered_via="primary"),
            Recipient("b@two.example"),
        )
    )
    await spool.update(msg, [attempt(5.0)])
    again, _ = await spool.load(a.seq)
    out.append(
        (again.attempts, again.next_attempt_at, [r.state for r in again.envelope.recipients])
    )
    again.state = MessageState.DONE
    queued = await spool.finish_with_reports(again, [attempt(6.0)], [new(4, qid="QD")])
    out.append([(q.seq, q.queue_id) for q in queued])
    out.append(await spool.load(a.seq))
    out.append(sorted((e.seq, e.next_attempt_at, e.state) for e in await spool.index()))
    out.append(sorted(e.seq for e in await spool.index(after_seq=b.seq)))
    with pytest.raises(SpoolError):  # a duplicate id fails the whole batch
        await spool.accept_many([new(5, qid="QE"), new(6, qid="QB")])
    out.append(sorted(m.queue_id for m in await spool.messages()))
    held, _ = await spool.load(c.seq)
    held.state = MessageState.HELD
    with pytest.raises(SpoolError):  # a failing report leaves the message as it was
        await spool.finish_with_reports(held, [attempt(7.0)], [new(7, qid="QC")])
    out.append((await spool.load(c.seq))[0].state)
    out.append([m.queue_id for m in await spool.messages("sender = ?", ["s2@example.org"])])
    return out


async def test_memory_spool_matches_sqlite(tmp_path):
    sqlite = SqliteSpool(tmp_path / "spool")
    try:
        expected = await script(sqlite)
    finally:
        await sqlite.close()
    memory = MemorySpool()
    assert await script(memory) == expected
    await memory.close()
    with pytest.raises(SpoolError):
        await memory.load(1)


async def test_seeded_ids_are_stable_and_seed_dependent():
    one, two, other = seeded_queue_ids(1), seeded_queue_ids(1), seeded_queue_ids(2)
    first = [one() for _ in range(3)]
    assert first == [two() for _ in range(3)]
    assert first != [other() for _ in range(3)]
    assert len(set(first)) == 3
    spool = MemorySpool(seeded_queue_ids(7))
    m = await spool.accept(new(1))
    assert m.queue_id == seeded_queue_ids(7)()


async def test_messages_accepts_a_predicate_and_rejects_unknown_sql():
    spool = MemorySpool()
    await spool.accept_many([new(1), new(2)])
    assert [m.message_id for m in await spool.messages(lambda m: m.message_id == "<2@x>")] == [
        "<2@x>"
    ]
    assert len(await spool.messages("state = ? AND size > ?", ["active", 0])) == 2
    with pytest.raises(SpoolError):
        await spool.messages("sender LIKE ?", ["%"])
