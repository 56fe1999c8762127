"""A route's connection cap shared by every node (`max_connections_total`): the slots
on the PostgreSQL spool, and two relays on one database that together never have
more transactions open to the smarthost than the cap. Real sockets, a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import UpstreamHandler, make_message, running_relay, send, until, upstream

from relayguard.config import load_settings
from relayguard.ops.control import Controller
from relayguard.ops.queue_tools import format_routes
from relayguard.relay import Relay

pytest.importorskip("psycopg", reason="psycopg is not installed (relayguard[postgres])")

from relayguard.queue.spool.postgres import PgSpool
from relayguard.queue.spool.postgres_slots import route_key


@contextlib.asynccontextmanager
async def spools(dsn: str, *nodes: str) -> AsyncIterator[list[PgSpool]]:
    opened = [await PgSpool.open(dsn, node=n) for n in nodes]
    try:
        yield opened
    finally:
        for s in opened:
            await s.close()


async def holders(spool: PgSpool, route: str) -> list[int]:
    """The server processes holding the route's slots, one entry per slot."""

    async def query(c):
        cur = await c.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
            " AND classid = %s::bigint::oid ORDER BY objid",
            (route_key(route),),
        )
        return [int(pid) for (pid,) in await cur.fetchall()]

    return await spool.read(query)


async def test_slots_are_shared_and_a_dead_nodes_slots_come_free(pg_cluster):
    dsn = pg_cluster.create_database()
    async with spools(dsn, "node-1", "node-2", "tool") as (one, two, tool):
        taken = [await one.take_slot("A", 3) for _ in range(3)]
        assert sorted(taken) == [0, 1, 2]  # type: ignore[type-var]
        assert await one.take_slot("A", 3) is None  # its own are not taken twice
        assert await two.take_slot("A", 3) is None
        assert await two.take_slot("B", 3) == 0  # another route, other slots
        assert await tool.slots_in_use("A", 3) == 3

        await one.give_back_slot("A", taken[1])
        assert await two.take_slot("A", 3) == taken[1]
        await one.give_back_slot("A", taken[1])  # not its slot any more: nothing freed
        assert await tool.slots_in_use("A", 3) == 3

        # Node 1 dies: its server process goes, and its slots with it, no lease to wait out.
        [pid_one] = set(await holders(tool, "A")) - set(await holders(tool, "B"))

        async def terminate(c):
            await c.execute("SELECT pg_terminate_backend(%s)", (pid_one,))

        await tool.read(terminate)
        for _ in range(100):
            if await tool.slots_in_use("A", 3) == 1:
                break
            await asyncio.sleep(0.02)
        assert await tool.slots_in_use("A", 3) == 1
        assert {await two.take_slot("A", 3), await two.take_slot("A", 3)} == {0, 2}
        # Node 1 lost its connection: it makes another, and finds every slot in use.
        assert await one.take_slot("A", 3) is None
        await one.give_back_slot("A", 0)  # a slot its old connection held: nothing freed
        assert await tool.slots_in_use("A", 3) == 3


def node_settings(tmp: Path, name: str, dsn: str, port: int, total: int | None):
    directory = tmp / name
    directory.mkdir()
    cap = "" if total is None else f"max_connections_total = {total}\n"
    path = directory / "relayguard.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nhostname = "{name}.test"\nspool = "{dsn}"\n'
        f'run_dir = "{directory / "run"}"\nnode_name = "{name}"\n'
        f"[dns]\nprovider_keys = false\n"
        f'[[route]]\nname = "A"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        f"max_connections = 5\nmessages_per_connection = 1\n{cap}",
        encoding="utf-8",
    )
    return load_settings(path)


async def deliver_across_two_nodes(
    pg_cluster, tmp_path: Path, total: int | None, count: int = 16
) -> tuple[UpstreamHandler, dict[str, int], str]:
    """`count` messages, half through each node, to one slow smarthost; how many
    DATA phases the smarthost had at once at most, each node's share of the
    deliveries, and node 1's `routes` as the operator reads it mid-run."""
    dsn = pg_cluster.create_database()
    handler = UpstreamHandler(data_delay=0.3)
    async with (
        upstream(handler) as up,
        running_relay(node_settings(tmp_path, "node-1", dsn, up.port, total)) as one,
        running_relay(node_settings(tmp_path, "node-2", dsn, up.port, total)) as two,
    ):
        nodes: list[Relay] = [one, two]
        await asyncio.gather(
            *(
                send(nodes[i % 2].address, "s@example.org", [f"r{i}@example.com"], make_message(i))
                for i in range(count)
            )
        )
        await until(lambda: handler.concurrent > 0)  # mid-run: a DATA under way
        controller = Controller(one.settings, one.spool, one.manager, one.clock, one.observer)
        shown = format_routes(await controller.handle({"op": "routes"}))
        got = await up.wait_for(count)
    by_node = {"node-1": 0, "node-2": 0}
    for g in got:
        for name in by_node:
            if f"by {name}.test".encode() in g.content:
                by_node[name] += 1
    return handler, by_node, shown


async def test_two_nodes_never_open_more_than_the_shared_cap(pg_cluster, tmp_path):
    handler, by_node, shown = await deliver_across_two_nodes(pg_cluster, tmp_path, total=3)
    assert len(handler.received) == 16
    assert handler.max_concurrent == 3  # reached, never passed
    assert by_node["node-1"] > 0
    assert by_node["node-2"] > 0
    # This node's connections of its own cap (at most the shared one), then every node's.
    assert re.search(
        r"^A  127\.0\.0\.1:\d+  connections [0-3]/3, [1-3]/3 across the nodes$", shown, re.MULTILINE
    )


async def test_without_a_shared_cap_each_node_has_its_own(pg_cluster, tmp_path):
    # The control for the test above: the same load goes past 3 when each node counts
    # only its own connections (5 each).
    handler, _by_node, shown = await deliver_across_two_nodes(pg_cluster, tmp_path, total=None)
    assert len(handler.received) == 16
    assert handler.max_concurrent > 5
    assert "across the nodes" not in shown
