"""Two relayguard nodes on one PostgreSQL spool, as real child processes.

20 concurrent clients send through both nodes to one aiosmtpd upstream in this
process; node 1 gets SIGKILL while several of its deliveries sit in the
upstream's DATA phase. Node 2 must then take over node 1's leases once they run
out and deliver every Message-ID that got a 250, none twice but those the
upstream had already taken when node 1 died (it could not record them). And the
operator's tools on one node act on mail the other would deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from procs import RelayProcess, SmtpClients, message, message_id, pick_port
from support import UpstreamHandler, run_cli, upstream
from test_kill9 import SignallingHandler, until

pytestmark = pytest.mark.slow

LEASE = 3.0  # seconds: short, so the takeover is quick to see


def node_config(
    tmp: Path, name: str, dsn: str, *, listen_port: int, upstream_port: int, extra: str = ""
) -> Path:
    directory = tmp / name
    directory.mkdir()
    path = directory / "relayguard.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:{listen_port}"\nhostname = "{name}.test"\n'
        f'spool = "{dsn}"\nrun_dir = "{directory / "run"}"\nnode_name = "{name}"\n'
        f'lease_time = "{LEASE}s"\n{extra}\n'
        "[dns]\nprovider_keys = false\n"
        f'[[route]]\nname = "primary"\nhost = "127.0.0.1"\nport = {upstream_port}\n'
        'tls = "none"\n',
        encoding="utf-8",
    )
    return path


def rows(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg  # noqa: PLC0415 - optional: only where PostgreSQL runs

    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


async def wait_queue_empty(dsn: str, timeout: float) -> None:
    """Poll the shared spool (no event says 'queue empty') until nothing is left."""
    deadline = time.monotonic() + timeout
    while (left := rows(dsn, "SELECT message_id, state, node FROM messages")) != []:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(left)} message(s) still queued: {left[:5]}")
        await asyncio.sleep(0.1)


async def test_kill9_one_node_the_other_delivers_every_acknowledged_message(
    pg_cluster, tmp_path
) -> None:
    dsn = pg_cluster.create_database()
    handler = SignallingHandler(data_delay=1.0)
    async with upstream(handler) as up:
        ports = [pick_port(), pick_port()]
        nodes = [
            RelayProcess(
                node_config(
                    tmp_path, f"node-{i + 1}", dsn, listen_port=ports[i], upstream_port=up.port
                ),
                f"node-{i + 1}",
            )
            for i in range(2)
        ]
        one, two = nodes
        clients_tasks: list[asyncio.Task[None]] = []
        try:
            addresses = [await n.start_listening(p) for n, p in zip(nodes, ports, strict=True)]
            clients = [
                SmtpClients(a, count=10, per_client=5, body_size=2000, prefix=f"n{i + 1}")
                for i, a in enumerate(addresses)
            ]
            clients_tasks = [asyncio.create_task(c.run()) for c in clients]
            at_kill: dict[str, Any] = {}

            def node1_in_data() -> int:
                """Deliveries node 1 has in the upstream's DATA phase right now."""
                leased = rows(
                    dsn, "SELECT count(*) FROM messages WHERE node = 'node-1' AND state = 'active'"
                )
                return int(leased[0][0])

            def kill_when_mid_delivery() -> bool:
                if handler.concurrent < 6 or node1_in_data() < 3:
                    return False
                one.kill()
                at_kill.update(
                    t=time.monotonic(),
                    in_upstream_data=handler.concurrent,
                    arrived={r.message_id for r in handler.received},
                )
                return True

            await until(
                kill_when_mid_delivery,
                handler.changed,
                30,
                lambda: f"in upstream DATA: {handler.concurrent}",
            )
            assert await one.wait_exit(10) == -9
            # Node 2 claims node 1's mail as soon as node 1's last renewal runs out.
            await two.wait_event("lease_taken_over", LEASE * 3 + 10)
            takeover = time.monotonic() - at_kill["t"]
            assert takeover < LEASE + 3, f"first lease taken over {takeover:.2f}s after the kill"
            async with asyncio.timeout(60):
                await asyncio.gather(*clients_tasks)
            acked = clients[0].acked | clients[1].acked
            sent = clients[0].sent | clients[1].sent
            assert len(clients[1].acked) == 50, clients[1].errors  # node 2 lived throughout

            def arrived() -> set[str]:
                return {r.message_id for r in handler.received}

            await until(
                lambda: acked <= arrived(),
                handler.arrived,
                LEASE * 3 + 30,
                lambda: f"{len(acked - arrived())} acknowledged never arrived\n{two.tail()}",
            )
            await wait_queue_empty(dsn, 20)  # committed but not acknowledged: delivered too
            takeovers = two.find("lease_taken_over")
            assert takeovers, f"node 2 took over no lease of node 1\n{two.tail()}"
            assert {e["previous_node"] for e in takeovers} == {"node-1"}

            ids = [r.message_id for r in handler.received]
            twice = {m for m in ids if ids.count(m) > 1}
            summary = (
                f"acked {len(acked)}, sent {len(sent)}, arrived {len(set(ids))} distinct, "
                f"{len(twice)} twice; {len(takeovers)} lease(s) taken over; "
                f"{at_kill['in_upstream_data']} in upstream DATA at the kill; first lease "
                f"taken over {takeover:.2f}s after the kill (lease_time {LEASE}s)"
            )
            print(summary)  # noqa: T201 - the figures the issue asks to see
            assert acked <= set(ids), summary
            assert set(ids) <= sent, summary
            # Only what the upstream had taken before node 1 could record it comes twice.
            assert twice <= at_kill["arrived"], f"{sorted(twice)}; {summary}"
            for node in nodes:
                assert not node.find("delivery_error"), node.find("delivery_error")
        finally:
            for task in clients_tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            for node in nodes:
                node.cleanup()


async def test_hold_on_node_2_holds_what_node_1_was_about_to_deliver(
    pg_cluster, tmp_path, capsys
) -> None:
    dsn = pg_cluster.create_database()
    tries: list[str] = []

    def greylist_once(_peer: str, rcpt: str) -> str | None:
        tries.append(rcpt)
        return "451 4.3.0 Temporary failure, try again" if len(tries) == 1 else None

    handler = UpstreamHandler(on_rcpt=greylist_once)
    async with upstream(handler) as up:
        ports = [pick_port(), pick_port()]
        configs = [
            node_config(
                tmp_path,
                f"node-{i + 1}",
                dsn,
                listen_port=ports[i],
                upstream_port=up.port,
                extra="",
            )
            for i in range(2)
        ]
        for config in configs:  # retry soon: node 1 is "about to" deliver it again
            config.write_text(
                config.read_text().replace("[dns]", '[queue]\nbackoff_start = "2s"\n\n[dns]')
            )
        one, two = RelayProcess(configs[0], "node-1"), RelayProcess(configs[1], "node-2")
        try:
            address = await one.start_listening(ports[0])
            host, port = address
            import aiosmtplib  # noqa: PLC0415

            async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) as smtp:
                await smtp.sendmail("s@example.org", ["r@example.com"], message("held"))
            deferred = await one.wait_event("deferred", 15)
            queue_id = deferred["queue_id"]
            [(next_attempt,)] = rows(dsn, "SELECT next_attempt_at FROM messages")
            await two.start_listening(ports[1])
            code, out, err = await run_cli(capsys, configs[1], "queue", "hold", queue_id, "--json")
            assert code == 0, err
            assert json.loads(out)["done"] == [queue_id]
            # Past the retry node 1 had planned, and past a lease: neither node tries it.
            deadline = max(next_attempt, time.time()) + LEASE + 1
            while time.time() < deadline:
                assert len(tries) == 1, f"tried again while held: {tries}"
                await asyncio.sleep(0.1)
            code, out, _ = await run_cli(capsys, configs[0], "queue", "list", "--json")
            [listed] = json.loads(out)
            assert listed["queue_id"] == queue_id
            assert listed["state"] == "held"
            # Released through node 1, either node delivers it.
            code, out, err = await run_cli(capsys, configs[0], "queue", "release", queue_id)
            assert code == 0, err
            got = await up.wait_for(1, timeout=15)
            assert [r.message_id for r in got] == [message_id("held")]
        finally:
            one.cleanup()
            two.cleanup()
