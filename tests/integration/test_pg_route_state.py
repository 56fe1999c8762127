"""Route state shared through the PostgreSQL spool: one node's RBL hit holds every node
back from that route for that destination, and an operator's resume on one node lifts
it on all. Relays in-process on real sockets, on one database.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from support import UpstreamHandler, make_message, running_relay, send, until, upstream

from relayguard.config import load_settings
from relayguard.relay import Relay

RBL = (
    "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org;"
    " https://www.spamhaus.org/query/ip/127.0.0.2"
)


def node_settings(tmp: Path, name: str, dsn: str, port: int):
    directory = tmp / name
    directory.mkdir()
    routes = "".join(
        f'[[route]]\nname = "{r}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'source_address = "{source}"\ntls = "none"\nmax_connections = 5\n'
        for r, source in (("A", "127.0.0.2"), ("B", "127.0.0.3"))
    )
    path = directory / "relayguard.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nhostname = "{name}.test"\nspool = "{dsn}"\n'
        f'run_dir = "{directory / "run"}"\nnode_name = "{name}"\n'
        f"[dns]\nprovider_keys = false\n{routes}",
        encoding="utf-8",
    )
    return load_settings(path)


@contextlib.asynccontextmanager
async def node(tmp: Path, name: str, dsn: str, port: int) -> AsyncIterator[Relay]:
    async with running_relay(node_settings(tmp, name, dsn, port)) as relay:
        yield relay


async def test_an_rbl_reply_seen_by_node_1_keeps_node_2_off_the_route(pg_cluster, tmp_path):
    dsn = pg_cluster.create_database()
    handler = UpstreamHandler(on_connect=lambda peer: RBL if peer == "127.0.0.2" else None)
    with structlog.testing.capture_logs() as logs:
        async with (
            upstream(handler) as up,
            node(tmp_path, "node-1", dsn, up.port) as one,
            node(tmp_path, "node-2", dsn, up.port) as two,
        ):
            two.manager.max_in_flight = 0  # node 1 takes the first message, surely
            await send(one.address, "s@example.org", ["r0@example.com"], make_message(0))
            [first] = await up.wait_for(1)
            assert first.peer == "127.0.0.3"  # rerouted by node 1 after the RBL reply
            assert handler.connections.count("127.0.0.2") == 1
            theirs = one.manager.routes.suspension("A", "example.com", one.clock.now())
            assert theirs is not None
            # Node 2 follows node 1's notice: the same suspension, to the second.
            await until(lambda: two.manager.routes.suspension("A", "example.com", 0.0))
            ours = two.manager.routes.suspension("A", "example.com", two.clock.now())
            assert ours == theirs

            # A node started later reads it at start.
            async with node(tmp_path, "node-3", dsn, up.port) as three:
                await until(lambda: three.manager.routes.suspension("A", "example.com", 0.0))
            # Node 2 alone delivers the next ones: never through A for example.com.
            await one.stop(grace=2)
            two.manager.max_in_flight = 20
            for i in range(1, 11):
                await send(two.address, "s@example.org", [f"r{i}@example.com"], make_message(i))
            got = await up.wait_for(11)
            assert {g.peer for g in got} == {"127.0.0.3"}
            assert handler.connections.count("127.0.0.2") == 1
            followed = [e for e in logs if e["event"] == "route_state_followed"]
            assert {e["node"] for e in followed} == {"node-1"}
            assert {(e["kind"], e["route"], e["destination"]) for e in followed} == {
                ("suspension", "A", "example.com")
            }


async def test_a_resume_on_one_node_lifts_the_suspension_on_every_node(pg_cluster, tmp_path):
    dsn = pg_cluster.create_database()
    listed = {"127.0.0.2"}
    handler = UpstreamHandler(on_connect=lambda peer: RBL if peer in listed else None)
    async with (
        upstream(handler) as up,
        node(tmp_path, "node-1", dsn, up.port) as one,
        node(tmp_path, "node-2", dsn, up.port) as two,
    ):
        await send(one.address, "s@example.org", ["r0@example.com"], make_message(0))
        await up.wait_for(1)
        for relay in (one, two):
            await until(lambda r=relay: r.manager.routes.suspension("A", "example.com", 0.0))
        listed.clear()  # delisted; the operator lifts the suspension through node 2
        assert two.manager.resume("A") == 1
        await until(lambda: one.manager.routes.suspension("A", "example.com", 0.0) is None)
        for i in range(1, 4):
            await send(one.address, "s@example.org", [f"r{i}@example.com"], make_message(i))
        got = await up.wait_for(4)
        assert "127.0.0.2" in {g.peer for g in got[1:]}  # A carries mail again


async def test_mail_held_back_on_one_node_is_due_at_once_when_another_resumes(pg_cluster, tmp_path):
    """Both routes listed: the message waits 5-10 minutes for its next attempt. A
    resume through node 2 lifts node 1's suspensions, and node 1 makes what it held
    back due now: it arrives in seconds, not at that next attempt."""
    dsn = pg_cluster.create_database()
    listed = {"127.0.0.2", "127.0.0.3"}
    handler = UpstreamHandler(on_connect=lambda peer: RBL if peer in listed else None)
    async with (
        upstream(handler) as up,
        node(tmp_path, "node-1", dsn, up.port) as one,
        node(tmp_path, "node-2", dsn, up.port) as two,
    ):
        two.manager.max_in_flight = 0  # node 1 tries it, and holds it back
        await send(one.address, "s@example.org", ["r0@example.com"], make_message(0))
        await until(lambda: len(handler.connections) == 2)  # A, then B: both refuse
        await until(lambda: one.manager.in_flight == 0)
        [queued] = await one.spool.messages()
        assert queued.next_attempt_at - one.clock.now() > 200  # minutes away
        listed.clear()
        for route in ("A", "B"):
            await until(lambda r=route: two.manager.routes.suspension(r, "example.com", 0.0))
            assert two.manager.resume(route) == 1
        [arrived] = await up.wait_for(1, timeout=15)
    assert arrived.message_id == "<msg-0@test.example>"
