"""Leases on the PostgreSQL spool: two nodes' spools on one database (SharedSpool).

Times are given, not read: a lease "runs out" because the claim says it is later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from relayguard.model import Attempt, Envelope, MessageState, Phase, Recipient, Reply
from relayguard.queue.spool import Claim, ClaimRound, NewMessage, SharedSpool

pytest.importorskip("psycopg", reason="psycopg is not installed (relayguard[postgres])")

from relayguard.queue.spool.memory import MemorySpool
from relayguard.queue.spool.postgres import PgSpool
from relayguard.queue.spool.sqlite import SqliteSpool


def new(n: int, at: float = 100.0) -> NewMessage:
    env = Envelope(sender="s@example.org", recipients=(Recipient("r@example.com"),))
    return NewMessage(env, f"Subject: {n}\r\n\r\nhi\r\n".encode(), at, f"<{n}@x>")


async def claim(spool: PgSpool, now: float, lease_until: float, limit: int) -> list[Claim]:
    return (await spool.claim_round(now, lease_until, limit)).claims


async def next_due(spool: PgSpool) -> float | None:
    """When there may next be something to claim: a look that claims nothing."""
    return (await spool.claim_round(0.0, 0.0, 0)).next_due


@contextlib.asynccontextmanager
async def two_nodes(pg_cluster) -> AsyncIterator[tuple[PgSpool, PgSpool]]:
    dsn = pg_cluster.create_database()
    one = await PgSpool.open(dsn, node="node-1")
    two = await PgSpool.open(dsn, node="node-2")
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


def test_only_the_shared_spool_has_leases(tmp_path):
    assert not isinstance(MemorySpool(), SharedSpool)
    spool = SqliteSpool(tmp_path)
    try:
        assert not isinstance(spool, SharedSpool)
    finally:
        spool.close_sync()


async def test_a_claim_is_one_nodes_until_its_lease_runs_out(pg_cluster):
    async with two_nodes(pg_cluster) as (one, two):
        assert isinstance(one, SharedSpool)
        queued = await one.accept_many([new(i, at=100.0 + i) for i in range(4)])
        seqs = [q.seq for q in queued]
        assert await next_due(one) == 100.0
        assert await claim(one, now=99.0, lease_until=130.0, limit=10) == []  # not due
        first = await claim(one, now=102.0, lease_until=130.0, limit=2)
        assert first == [Claim(seqs[0]), Claim(seqs[1])]  # most overdue first
        # Node 2 takes only what node 1 does not hold.
        assert await claim(two, now=110.0, lease_until=1000.0, limit=10) == [
            Claim(seqs[2]),
            Claim(seqs[3]),
        ]
        # Node 2 waits for node 1's leases to run out; node 1 for nothing of its own.
        assert await next_due(two) == 130.0
        assert await next_due(one) == 1000.0
        assert await one.renew(seqs[:2], lease_until=150.0) == set(seqs[:2])
        assert await claim(two, now=139.0, lease_until=170.0, limit=10) == []  # renewed
        # Node 1 dies: its leases run out, node 2 takes them over and says from whom.
        taken = await claim(two, now=151.0, lease_until=1000.0, limit=10)
        assert taken == [Claim(seqs[0], "node-1"), Claim(seqs[1], "node-1")]
        assert await one.renew(seqs[:2], lease_until=200.0) == set()  # lost, and it knows


async def test_recording_a_round_ends_only_this_nodes_lease(pg_cluster):
    async with two_nodes(pg_cluster) as (one, two):
        q = await one.accept(new(1))
        await claim(one, now=100.0, lease_until=110.0, limit=1)
        # Node 1 stalls past its lease; node 2 takes the message over.
        assert await claim(two, now=111.0, lease_until=1000.0, limit=1) == [Claim(q.seq, "node-1")]
        loaded = await one.load(q.seq)
        assert loaded is not None
        late = loaded[0]
        late.next_attempt_at = 500.0
        await one.update(late, [])  # node 1's late round: node 2 keeps its lease
        assert await claim(one, now=600.0, lease_until=700.0, limit=1) == []
        assert await two.renew([q.seq], lease_until=1000.0) == {q.seq}
        await two.update(late, [])  # node 2's round ends its lease
        assert await claim(one, now=600.0, lease_until=700.0, limit=1) == [Claim(q.seq)]


async def test_a_held_message_is_never_claimed_and_end_leases_frees_it(pg_cluster):
    async with two_nodes(pg_cluster) as (one, two):
        a, b = await one.accept_many([new(1), new(2)])
        assert await two.hold(a.seq)
        assert await claim(one, now=200.0, lease_until=210.0, limit=5) == [Claim(b.seq)]
        await one.end_leases([b.seq], next_attempt_at=300.0)  # a round cut by a bug
        assert await claim(two, now=250.0, lease_until=260.0, limit=5) == []
        assert await claim(two, now=300.0, lease_until=400.0, limit=5) == [Claim(b.seq)]
        assert await one.release(a.seq, 100.0)
        assert await claim(one, now=320.0, lease_until=330.0, limit=5) == [Claim(a.seq)]
        messages = {m.seq: m.state for m in await one.messages()}
        assert messages == {a.seq: MessageState.ACTIVE, b.seq: MessageState.ACTIVE}


async def test_a_claim_brings_its_message_as_load_would_and_says_when_to_look_again(pg_cluster):
    async with two_nodes(pg_cluster) as (one, two):
        a, b, c = await one.accept_many([new(1, at=100.0), new(2, at=101.0), new(3, at=500.0)])
        # A message with a round behind it: its attempts come with the claim, in order.
        busy = Reply(451, "4.7.500", "Server busy", Phase.RCPT, "mx.example.net")
        tried = [Attempt(at, "primary", ("r@example.com",), busy, "defer") for at in (1.0, 2.0)]
        await one.update(a, tried)
        assert await two.hold(b.seq)
        found = await one.claim_round(now=200.0, lease_until=300.0, limit=5)
        assert found.claims == [Claim(a.seq)]  # the held one is not claimed
        assert not found.full
        assert found.next_due == 500.0  # in the same look: c, nobody's yet
        assert found.claims[0].loaded == await one.load(a.seq)
        assert found.claims[0].loaded[0].attempts == tried
        assert await two.release(b.seq, 150.0)
        taken = await two.claim_round(now=250.0, lease_until=700.0, limit=1)
        assert taken.claims == [Claim(b.seq)]
        assert taken.full
        assert taken.next_due is None  # full: no need to know
        idle = await two.claim_round(now=250.0, lease_until=700.0, limit=0)
        assert idle == ClaimRound([], 300.0, full=False)  # no room: when node 1's lease ends
        assert c.seq not in {claim.seq for claim in found.claims + taken.claims}


async def test_mail_accepted_on_one_node_wakes_the_other(pg_cluster):
    async with two_nodes(pg_cluster) as (one, two):
        woken = asyncio.Event()
        listening = asyncio.create_task(two.listen(woken.set))
        try:
            async with asyncio.timeout(10):
                await woken.wait()  # once when it is listening
                woken.clear()
                await one.accept(new(1))
                await woken.wait()
                woken.clear()
                q = await one.accept(new(2))
                await woken.wait()
                await one.hold(q.seq)  # a hold wakes nobody: nothing became due
                woken.clear()
                await one.release(q.seq, 100.0)  # due again: the other node hears of it
                await woken.wait()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening


async def test_queue_list_shows_which_node_holds_what(pg_cluster):
    from relayguard.clock import VirtualClock  # noqa: PLC0415
    from relayguard.config import load_settings_text  # noqa: PLC0415
    from relayguard.ops.control import Controller, StoppedQueue  # noqa: PLC0415
    from relayguard.ops.queue_tools import format_list  # noqa: PLC0415

    settings = load_settings_text('[[route]]\nname = "primary"\nhost = "127.0.0.1"\n')
    async with two_nodes(pg_cluster) as (one, two):
        a, b, c = await one.accept_many([new(1), new(2), new(3)])
        await claim(one, now=100.0, lease_until=130.0, limit=1)
        await claim(two, now=100.0, lease_until=105.0, limit=1)
        clock = VirtualClock(110.0)
        controller = Controller(
            settings, two, StoppedQueue(settings, two, clock), clock, running=False
        )
        listed = await controller.handle({"op": "list"})
        held = {m["queue_id"]: (m["node"], m["lease_until"]) for m in listed["messages"]}
        assert held == {
            a.queue_id: ("node-1", 130.0),
            b.queue_id: ("node-2", 105.0),
            c.queue_id: (None, None),
        }
        text = format_list(listed["messages"], 110.0)
        assert "being delivered by node node-1, lease ends in 20s" in text
        assert "node node-2's lease ran out: the next claim takes it over" in text
