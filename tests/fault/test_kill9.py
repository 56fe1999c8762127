"""kill -9 relayguard under load, restart it on the same spool: nothing acknowledged is lost.

relayguard runs as a child process on a real port; 20 concurrent SMTP clients
send through it to an aiosmtpd upstream in this process. At a chosen moment the
relay gets SIGKILL; a second run on the same spool must then deliver every
Message-ID that got a 250 (at least once: duplicates are allowed), and nothing
that was never sent. The upstream only records a message when it could still
answer the relay (aiosmtpd cancels the handler when the connection drops), so a
delivery cut by the kill does not count as arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from procs import (
    PartialData,
    RelayProcess,
    SmtpClients,
    message_id,
    pick_port,
    spool_count,
    write_config,
)
from support import UpstreamHandler, upstream

pytestmark = pytest.mark.slow

CLIENTS = 20
PER_CLIENT = 5
RESTART_DEADLINE = 12.0  # seconds for the restarted relay to deliver what was acknowledged


@dataclass
class SignallingHandler(UpstreamHandler):
    """The scripted upstream, waking waiters whenever a DATA phase starts or ends."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.changed.set()
        try:
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.changed.set()


def arrived_ids(handler: UpstreamHandler) -> set[str]:
    return {r.message_id for r in handler.received}


async def until(
    predicate: Callable[[], bool], event: asyncio.Event, timeout: float, what: Callable[[], str]
) -> None:
    """Wait for predicate() to hold, re-checking each time `event` fires."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                event.clear()
                if predicate():
                    break
                await event.wait()
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what()}") from None


def spool_leftovers(spool: Path) -> str:
    conn = sqlite3.connect(f"file:{spool / 'queue.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT queue_id, message_id, state, next_attempt_at FROM messages"
            " ORDER BY seq LIMIT 10"
        ).fetchall()
    finally:
        conn.close()
    now = time.time()
    return "; ".join(f"{q} {m} {s} due in {n - now:.0f}s" for q, m, s, n in rows)


async def restart_until_acked_arrive(
    relay: RelayProcess,
    port: int,
    handler: UpstreamHandler,
    acked: set[str],
    context: str,
) -> tuple[float, dict[str, Any]]:
    """Start the relay again on the same spool and wait until every acknowledged
    message has arrived upstream; returns when it restarted and its queue_loaded event."""
    await relay.start_listening(port)
    t_restart = time.monotonic()
    [loaded] = relay.find("queue_loaded")

    def missing() -> set[str]:
        return acked - arrived_ids(handler)

    await until(
        lambda: not missing(),
        handler.arrived,
        RESTART_DEADLINE,
        lambda: (
            f"{len(missing())} of {len(acked)} acknowledged message(s) never "
            f"arrived upstream, e.g. {sorted(missing())[:5]}; {context}; restart "
            f"loaded {loaded['messages']} message(s)\n{relay.tail()}"
        ),
    )
    return t_restart, loaded


async def wait_spool_empty(spool: Path, timeout: float) -> None:
    """Poll the spool (no event exists for 'queue empty') until it has no message left."""
    deadline = time.monotonic() + timeout
    while (left := spool_count(spool)) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{left} message(s) still spooled {timeout}s after every "
                f"acknowledged one arrived: {spool_leftovers(spool)}"
            )
        await asyncio.sleep(0.1)


KILL_POINTS = {
    # kill while clients are inside DATA: raw clients stopped mid-content, the
    # 20 aiosmtplib clients streaming bodies, some acknowledged already
    "receiving_data": {"acks": 10, "arrived": 0, "partials": True, "delay": 0.0},
    # kill in the same loop step as the very first 250 is read
    "first_ack": {"acks": 1, "arrived": 0, "partials": False, "delay": 0.0},
    # kill right after a 250 (the 40th or later) once deliveries have started
    "after_acks": {"acks": 40, "arrived": 5, "partials": False, "delay": 0.0, "per_client": 8},
    # a slow upstream: kill while several deliveries sit in its DATA phase
    "mid_delivery": {"acks": 0, "arrived": 3, "partials": False, "delay": 1.0},
}

# Where the partial clients stop: mid-body at a line end, after a dot with no
# CRLF (looks like the end but is not), mid-line, and before the final LF.
PARTIAL_TAILS = [b"", b".", b"half a li", b".\r"]


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
async def test_kill9_loses_nothing_acknowledged(tmp_path: Path, kill_point: str) -> None:
    t_start = time.monotonic()
    point = KILL_POINTS[kill_point]
    handler = SignallingHandler(data_delay=point["delay"])
    async with upstream(handler) as up:
        port = pick_port()
        config = write_config(tmp_path, listen_port=port, upstream_port=up.port)
        spool = tmp_path / "spool"
        first = RelayProcess(config, "first-run")
        second = RelayProcess(config, "restart")
        partials = [PartialData(f"partial-{i}") for i in range(len(PARTIAL_TAILS))]
        killed = asyncio.Event()
        at_kill: dict[str, Any] = {}
        clients_task: asyncio.Task[None] | None = None
        try:
            address = await first.start_listening(port)
            partials_ready = not point["partials"]

            def kill_if_due(_mid: str = "") -> None:
                if killed.is_set() or not partials_ready:
                    return
                if point["acks"] and len(clients.acked) < point["acks"]:
                    return
                if len(handler.received) < point["arrived"]:
                    return
                if point["delay"] and handler.concurrent < 8:
                    return
                first.kill()  # synchronously: no await between the trigger and the signal
                killed.set()
                at_kill.update(
                    acked=len(clients.acked),
                    sent=len(clients.sent),
                    in_upstream_data=handler.concurrent,
                    arrived=len(handler.received),
                    t=round(time.monotonic() - t_start, 2),
                )

            clients = SmtpClients(
                address,
                count=CLIENTS,
                per_client=point.get("per_client", PER_CLIENT),
                body_size=20_000 if point["partials"] else 2_000,
                on_ack=kill_if_due,
            )
            clients_task = asyncio.create_task(clients.run())

            if point["partials"]:
                await asyncio.gather(
                    *(
                        p.begin(address, tail)
                        for p, tail in zip(partials, PARTIAL_TAILS, strict=True)
                    )
                )
                partials_ready = True
                kill_if_due()
            if point["delay"]:
                # mid-delivery: the trigger is on the upstream's side, not the clients'
                def upstream_tick() -> bool:
                    kill_if_due()
                    return killed.is_set()

                await until(
                    upstream_tick,
                    handler.changed,
                    20,
                    lambda: (
                        f"deliveries in flight: {handler.concurrent}, "
                        f"arrived {len(handler.received)}"
                    ),
                )
            kill_wait = asyncio.ensure_future(killed.wait())
            try:
                await asyncio.wait(
                    {kill_wait, clients_task}, timeout=20, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                kill_wait.cancel()
            if not killed.is_set():
                if clients_task.done():
                    clients_task.result()  # a bug in the test's clients shows here
                raise AssertionError(
                    f"kill point {kill_point} never reached: "
                    f"acked={len(clients.acked)} errors={clients.errors[:3]}\n"
                    f"{first.tail()}"
                )
            rc = await first.wait_exit(10)
            assert rc == -9, f"first run ended with {rc}, not by SIGKILL"
            # Clients see the connection drop and stop; their records are then final.
            async with asyncio.timeout(20):
                await clients_task
            acked, sent = set(clients.acked), set(clients.sent)
            assert acked <= sent

            handler.data_delay = 0.0  # the smarthost recovers along with the relay
            t_restart, loaded = await restart_until_acked_arrive(
                second, port, handler, acked, f"kill at {at_kill}"
            )
            # What was committed but not acknowledged (kill between fsync and
            # 250) is delivered too: the queue drains completely.
            t_acked_arrived = time.monotonic() - t_restart
            await wait_spool_empty(spool, 10)

            arrived = arrived_ids(handler)
            duplicates = len(handler.received) - len(arrived)
            summary = (
                f"{kill_point}: kill at {at_kill}; acked {len(acked)}, sent {len(sent)}, "
                f"arrived {len(arrived)} distinct, {duplicates} duplicate(s); restart "
                f"loaded {loaded['messages']}, all acked arrived {t_acked_arrived:.2f}s after "
                f"restart; total {time.monotonic() - t_start:.1f}s"
            )
            assert acked <= arrived, summary
            assert arrived <= sent, f"arrived but never sent: {sorted(arrived - sent)}; {summary}"
            cut = {message_id(p.mid) for p in partials} & arrived
            assert not cut, f"truncated DATA was relayed: {sorted(cut)}; {summary}"
            for run in (first, second):
                assert not run.find("delivery_error"), f"{run.name}: {run.find('delivery_error')}"
        finally:
            for p in partials:
                p.close()
            if clients_task is not None and not clients_task.done():
                clients_task.cancel()
                with contextlib.suppress(BaseException):
                    await clients_task
            first.cleanup()
            second.cleanup()
