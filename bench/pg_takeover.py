"""How long a dead node's mail waits: two relayguard nodes on one PostgreSQL spool,
node 1 killed with SIGKILL while its deliveries sit in the upstream's DATA phase,
the seconds until node 2 takes over its first lease and until every message that
got a 250 has arrived.

The machinery is the fault test's (tests/fault/test_pg_nodes.py): the same child
processes, clients and scripted upstream, measured here instead of asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
for folder in (TESTS, TESTS / "fault"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from procs import RelayProcess, SmtpClients, pick_port  # noqa: E402
from support import upstream  # noqa: E402
from test_kill9 import SignallingHandler, until  # noqa: E402
from test_pg_nodes import LEASE, node_config  # noqa: E402


async def _measure(dsn: str, tmp: Path) -> dict[str, Any]:
    handler = SignallingHandler(data_delay=1.0)
    async with upstream(handler) as up:
        ports = [pick_port(), pick_port()]
        nodes = [
            RelayProcess(
                node_config(tmp, f"node-{i + 1}", dsn, listen_port=ports[i], upstream_port=up.port),
                f"node-{i + 1}",
            )
            for i in range(2)
        ]
        one, two = nodes
        try:
            address = await one.start_listening(ports[0])
            await two.start_listening(ports[1])
            clients = SmtpClients(address, count=6, per_client=2, body_size=2000, prefix="t")
            sending = asyncio.create_task(clients.run())
            await until(
                lambda: handler.concurrent >= 3,
                handler.changed,
                30,
                lambda: f"in upstream DATA: {handler.concurrent}",
            )
            one.kill()
            killed = time.monotonic()
            await two.wait_event("lease_taken_over", LEASE * 3 + 10)
            first = time.monotonic() - killed
            with contextlib.suppress(BaseException):  # node 1's clients end at its death
                await asyncio.wait_for(sending, 30)
            acked = clients.acked
            await until(
                lambda: acked <= {r.message_id for r in handler.received},
                handler.arrived,
                LEASE * 3 + 30,
                lambda: "acknowledged mail never arrived",
            )
            return {
                "lease_time_s": LEASE,
                "first_takeover_s": round(first, 2),
                "all_acked_arrived_s": round(time.monotonic() - killed, 2),
                "acked": len(acked),
                "taken_over": len(two.find("lease_taken_over")),
            }
        finally:
            for node in nodes:
                node.terminate()
                with contextlib.suppress(Exception):
                    await node.wait_exit(10)
                node.cleanup()


def takeover_figures(cluster: Any) -> dict[str, Any]:
    """One kill -9 on the bench's private cluster; the figures, or why there are none."""
    dsn = cluster.create_database("takeover")
    with tempfile.TemporaryDirectory(prefix="rg-takeover-") as tmp:
        try:
            return asyncio.run(_measure(dsn, Path(tmp)))
        except AssertionError as exc:
            return {"failed": str(exc)}
