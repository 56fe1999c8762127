"""DNSBL listings shared through the PostgreSQL spool: node 1 checks the egress
addresses (a real dnsmasq answering for bl.test), node 2 checks nothing, and still
keeps off the listed route while node 1 sees it listed, and takes it again at
node 1's delisting. Relays in-process on real sockets, on one database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dnsserver import Records, dns_server
from structlog.testing import capture_logs
from support import UpstreamHandler, make_message, running_relay, send, until, upstream

from relayguard.config import load_settings
from relayguard.ops.control import Controller
from relayguard.ops.queue_tools import format_routes
from relayguard.queue.listings import LISTING_KEPT

pytest.importorskip("psycopg", reason="psycopg is not installed (relayguard[postgres])")

A, B = "127.0.0.2", "127.0.0.3"
A_PUBLIC = "192.0.2.10"
LISTING = "Listed in bl.test: see https://bl.test/lookup?ip=192.0.2.10"


def records(*, a_listed: bool) -> Records:
    if not a_listed:
        return Records(zones=("test",), a={}, txt={})
    return Records(
        zones=("test",),
        a={"10.2.0.192.bl.test": "127.0.0.2"},
        txt={"10.2.0.192.bl.test": LISTING},
    )


def node_settings(tmp: Path, name: str, dsn: str, port: int, checks: str | None):
    """Two routes, A first; `checks`: the nameserver of node's reputation checks
    (None: the node checks nothing itself)."""
    directory = tmp / name
    directory.mkdir()
    dns = "provider_keys = false\n"
    reputation = ""
    if checks is not None:
        dns += f'nameservers = ["{checks}"]\ntimeout = "1s"\n'
        reputation = '[reputation]\ninterval = "1h"\n[[reputation.zone]]\nzone = "bl.test"\n'
    routes = "".join(
        f'[[route]]\nname = "{r}"\nhost = "127.0.0.1"\nport = {port}\n'
        f'source_address = "{source}"\ntls = "none"\n'
        + (f'public_address = "{A_PUBLIC}"\n' if r == "A" else "")
        for r, source in (("A", A), ("B", B))
    )
    path = directory / "relayguard.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nhostname = "{name}.test"\nspool = "{dsn}"\n'
        f'run_dir = "{directory / "run"}"\nnode_name = "{name}"\n'
        f"[dns]\n{dns}{reputation}{routes}",
        encoding="utf-8",
    )
    return load_settings(path)


async def test_a_listing_one_node_finds_keeps_every_node_off_the_route(pg_cluster, tmp_path):
    dsn = pg_cluster.create_database()
    handler = UpstreamHandler()
    with dns_server(records(a_listed=True), tmp_path) as dns, capture_logs() as logs:
        async with (
            upstream(handler) as up,
            running_relay(node_settings(tmp_path, "node-1", dsn, up.port, dns.address)) as one,
            running_relay(node_settings(tmp_path, "node-2", dsn, up.port, None)) as two,
        ):
            one.manager.max_in_flight = 0  # node 2 delivers: it alone must know
            assert two.reputation is None
            await until(lambda: two.manager.routes.avoided.get("A") == frozenset({"bl.test"}))
            await send(two.address, "s@example.org", ["r1@example.com"], make_message(1))
            [first] = await up.wait_for(1)
            controller = Controller(two.settings, two.spool, two.manager, two.clock, two.observer)
            shown = format_routes(await controller.handle({"op": "routes"}))

            # The listing goes; node 1's next check says so, and node 2 takes A again.
            dns.replace(records(a_listed=False))
            assert one.reputation is not None
            await one.reputation.check_now()
            await until(lambda: "A" not in two.manager.routes.avoided)
            await send(two.address, "s@example.org", ["r2@example.com"], make_message(2))
            second = (await up.wait_for(2))[1]

    assert first.peer == B  # A is first, but listed by node 1
    assert handler.connections.count(A) == 1  # the second message only
    assert second.peer == A
    assert (
        "listed in bl.test (192.0.2.10 -> 127.0.0.2): Listed in bl.test: see "
        "https://bl.test/lookup?ip=192.0.2.10 [avoided while another route is clean] "
        "[seen by node-1]"
    ) in shown
    # Node 2's log says whose check it followed.
    followed = [
        (e["event"], e["route"], e["zone"], e.get("node"))
        for e in logs
        if e["event"].startswith("egress_") and e.get("node") == "node-1"
    ]
    assert followed == [
        ("egress_listed", "A", "bl.test", "node-1"),
        ("egress_delisted", "A", "bl.test", "node-1"),
    ]


async def test_a_stopped_nodes_listing_lapses_a_running_nodes_is_said_again(pg_cluster, tmp_path):
    dsn = pg_cluster.create_database()
    with dns_server(records(a_listed=True), tmp_path) as dns, capture_logs() as logs:
        async with (
            upstream(UpstreamHandler()) as up,
            running_relay(node_settings(tmp_path, "node-1", dsn, up.port, dns.address)) as one,
            running_relay(node_settings(tmp_path, "node-2", dsn, up.port, None)) as two,
            running_relay(node_settings(tmp_path, "node-3", dsn, up.port, None)) as three,
        ):
            await until(lambda: "A" in two.manager.routes.avoided)
            await until(lambda: "A" in three.manager.routes.avoided)
            # Node 1, still running, says it again before its word could lapse...
            later = one.clock.now() + LISTING_KEPT * 0.6
            one.manager._tend_listings(later)
            [renewed] = list(one.manager.listings.seen_by("A"))
            assert renewed.until == later + LISTING_KEPT
            await until(lambda: two.manager.listings.seen_by("A")[0].until == renewed.until)
            # ...and when it stops saying it (stopped, cut off), the others stop avoiding A.
            await one.stop(grace=2)
            three.manager._tend_listings(renewed.until)
            assert "A" not in three.manager.routes.avoided
    [lapsed] = [e for e in logs if e["event"] == "egress_delisted"]
    assert (lapsed["route"], lapsed["zone"], lapsed["node"]) == ("A", "bl.test", "node-1")
    assert "did not say it again in time" in lapsed["lapsed"]
