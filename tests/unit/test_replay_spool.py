"""What is MemorySpool's own: seeded queue ids, and calls that never wait.

That it answers every operation as SqliteSpool does is tested in
test_spool_contract.py, for every backend at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine
from typing import Any

import pytest

from relayguard.clock import new_queue_id
from relayguard.model import Envelope, MessageState, Recipient
from relayguard.queue.spool import MessageQuery, NewMessage, SpoolError
from relayguard.queue.spool.memory import MemorySpool, seeded_queue_ids


def new(n: int, *, qid: str = "") -> NewMessage:
    env = Envelope(sender=f"s{n}@example.org", recipients=(Recipient("a@one.example"),))
    return NewMessage(
        envelope=env,
        body=f"Subject: {n}\r\n\r\nhi\r\n".encode(),
        arrival_at=1000.0 + n,
        queue_id=qid,
    )


def at_once(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must not wait, as the replay's driver does (no event loop)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    pytest.fail("a MemorySpool call waited")


def test_seeded_ids_are_stable_and_seed_dependent():
    one, two, other = seeded_queue_ids(1), seeded_queue_ids(1), seeded_queue_ids(2)
    first = [one() for _ in range(3)]
    assert first == [two() for _ in range(3)]
    assert first != [other() for _ in range(3)]
    assert len(set(first)) == 3
    spool = MemorySpool(seeded_queue_ids(7))
    m = at_once(spool.accept(new(1)))
    assert m.queue_id == seeded_queue_ids(7)()


def test_seeded_ids_are_the_ones_replays_always_had():
    """Replays (and their recorded results) depend on these exact ids."""
    make = seeded_queue_ids(0)
    assert [make(), make()] == ["0000000018B70FB", "0000000029AA4C9"]


def test_ids_come_from_the_clock_without_a_factory():
    spool = MemorySpool()
    assert len(at_once(spool.accept(new(1))).queue_id) == len(new_queue_id())


def test_no_call_ever_waits():
    spool = MemorySpool(seeded_queue_ids(1))
    a, b = at_once(spool.accept_many([new(1), new(2)]))
    msg, _ = at_once(spool.load(a.seq))
    at_once(spool.update(msg, []))
    assert at_once(spool.hold(b.seq))
    assert at_once(spool.release(b.seq, 5.0))
    assert at_once(spool.reschedule(b.seq, 6.0))
    assert [m.seq for m in at_once(spool.messages(MessageQuery(sender="s2@example.org")))] == [
        b.seq
    ]
    assert at_once(spool.queue_stats(1000.0)).deferred == 1
    assert len(at_once(spool.shape())) == 2
    assert [e.seq for e in at_once(spool.index())] == [a.seq, b.seq]
    done = dataclasses.replace(msg, state=MessageState.DONE)
    [report] = at_once(spool.finish_with_reports(done, [], [new(3)]))
    assert at_once(spool.delete(report.seq))
    assert len(spool) == 1
    at_once(spool.close())
    with pytest.raises(SpoolError):
        at_once(spool.load(b.seq))
