"""SIGTERM while deliveries to a slow upstream are in flight.

relayguard runs as a child process with shutdown_grace = 2s. It must stop
taking mail (new connections refused or answered 421, an open session's DATA
answered 421), give in-flight deliveries the grace period, exit 0 within it,
and keep everything it acknowledged: a restart on the same spool delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from procs import (
    RelayProcess,
    SmtpClients,
    message,
    pick_port,
    write_config,
)
from support import upstream
from test_kill9 import (
    SignallingHandler,
    arrived_ids,
    restart_until_acked_arrive,
    until,
    wait_spool_empty,
)

pytestmark = pytest.mark.slow

GRACE = 2.0
EXIT_SLACK = 1.5  # seconds allowed beyond the grace period for the process to wind down


class RawSession:
    """A hand-driven SMTP session: each step sends a line (or content) and reads a reply."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, address: tuple[str, int]) -> str:
        self.reader, self.writer = await asyncio.open_connection(*address)
        return await self.reply()

    async def reply(self) -> str:
        assert self.reader is not None
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                return "(connection closed)" if not lines else "\n".join(lines)
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def step(self, data: bytes) -> str:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def try_mail(session: RawSession, mid: str, *, greeted: bool) -> list[str]:
    """Go as far as the relay lets us; return the replies. Stops at the first non-2xx/3xx."""
    replies: list[str] = []
    steps = (
        []
        if greeted
        else [
            b"EHLO late.test\r\n",
            b"MAIL FROM:<late@example.org>\r\n",
            b"RCPT TO:<rcpt@example.com>\r\n",
        ]
    )
    steps += [b"DATA\r\n", message(mid) + b".\r\n"]
    try:
        for data in steps:
            reply = await session.step(data)
            replies.append(reply)
            if reply[:1] not in ("2", "3"):
                break
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        replies.append(f"({type(exc).__name__})")
    return replies


@pytest.mark.parametrize("upstream_delay", [0.5, 10.0], ids=["finishes_in_grace", "cut_by_grace"])
async def test_sigterm_drains_in_grace_and_keeps_acknowledged(
    tmp_path: Path, upstream_delay: float
) -> None:
    t_start = time.monotonic()
    handler = SignallingHandler(data_delay=upstream_delay)
    async with upstream(handler) as up:
        port = pick_port()
        config = write_config(
            tmp_path,
            listen_port=port,
            upstream_port=up.port,
            extra=f'shutdown_grace = "{GRACE:g}s"',
        )
        spool = tmp_path / "spool"
        first = RelayProcess(config, "first-run")
        second = RelayProcess(config, "restart")
        held = RawSession()
        late = RawSession()
        clients_task: asyncio.Task[None] | None = None
        termed = asyncio.Event()
        at_term: dict[str, Any] = {}
        try:
            address = await first.start_listening(port)
            # A session opened before SIGTERM that only sends DATA afterwards.
            assert (await held.open(address)).startswith("220")
            for line in (
                b"EHLO held.test\r\n",
                b"MAIL FROM:<held@example.org>\r\n",
                b"RCPT TO:<rcpt@example.com>\r\n",
            ):
                assert (await held.step(line)).startswith("250")

            def term_if_due(_mid: str = "") -> None:
                if termed.is_set() or len(clients.acked) < 30 or handler.concurrent < 5:
                    return
                first.terminate()
                termed.set()
                at_term.update(
                    t=time.monotonic(),
                    acked=len(clients.acked),
                    in_upstream_data=handler.concurrent,
                    arrived=len(handler.received),
                )

            clients = SmtpClients(address, count=20, per_client=3, on_ack=term_if_due)
            clients_task = asyncio.create_task(clients.run())
            await until(
                lambda: term_if_due() or termed.is_set(),
                handler.changed,
                20,
                lambda: (
                    f"no moment with 30 acks and 5 deliveries in flight: "
                    f"acked {len(clients.acked)}, in flight {handler.concurrent}"
                ),
            )
            await first.wait_event("stopping", 5)

            # After SIGTERM: nothing new is accepted.
            # ("stopping" is logged just before the listener closes, so a connection can
            # still land in the backlog and be reset when it does: a refusal too.)
            try:
                greeting = await late.open(address)
            except (ConnectionRefusedError, ConnectionResetError) as exc:
                late_replies = [f"({type(exc).__name__})"]
            else:
                late_replies = [greeting]
                if greeting.startswith("220"):
                    late_replies += await try_mail(late, "late-new", greeted=False)
            assert not any(r.startswith("250 2.0.0") for r in late_replies[-1:]), late_replies
            assert late_replies[-1].startswith(("421", "(")), (
                f"a new connection after SIGTERM got {late_replies}"
            )
            held_replies = await try_mail(held, "late-held", greeted=True)
            assert held_replies[-1].startswith(("421", "(")), (
                f"a session open before SIGTERM got {held_replies} for DATA after it"
            )

            rc = await first.wait_exit(GRACE + EXIT_SLACK + 3)
            took = time.monotonic() - at_term["t"]
            assert rc == 0, f"exit status {rc} after SIGTERM\n{first.tail()}"
            assert took <= GRACE + EXIT_SLACK, (
                f"exited {took:.2f}s after SIGTERM (grace {GRACE}s)\n{first.tail()}"
            )
            assert first.find("stopped"), first.tail()

            async with asyncio.timeout(20):
                await clients_task
            acked, sent = set(clients.acked), set(clients.sent)
            delivered_before = arrived_ids(handler)

            handler.data_delay = 0.0
            t_restart, loaded = await restart_until_acked_arrive(
                second, port, handler, acked, "after SIGTERM"
            )
            t_arrived = time.monotonic() - t_restart
            await wait_spool_empty(spool, 10)
            arrived = arrived_ids(handler)
            summary = (
                f"delay {upstream_delay}s: SIGTERM at {at_term}, exit after {took:.2f}s; "
                f"acked {len(acked)}, sent {len(sent)}, delivered before exit "
                f"{len(delivered_before)}, restart loaded {loaded['messages']}, acked "
                f"all arrived {t_arrived:.2f}s after restart, "
                f"{len(handler.received) - len(arrived)} duplicate(s); late: "
                f"{late_replies[-1]!r}, held: {held_replies[-1]!r}; "
                f"total {time.monotonic() - t_start:.1f}s"
            )
            assert acked <= arrived, summary
            assert arrived <= sent, f"arrived but never sent: {sorted(arrived - sent)}"
            if upstream_delay < GRACE:
                # What the upstream was taking at SIGTERM could finish within the grace.
                assert len(delivered_before) >= at_term["in_upstream_data"], summary
            else:
                # Cut off: nothing got through, all of it stayed queued and was due at restart.
                assert not delivered_before, summary
                assert loaded["messages"] >= len(acked), summary
            for run in (first, second):
                assert not run.find("delivery_error"), f"{run.name}: {run.find('delivery_error')}"
        finally:
            held.close()
            late.close()
            if clients_task is not None and not clients_task.done():
                clients_task.cancel()
                with contextlib.suppress(BaseException):
                    await clients_task
            first.cleanup()
            second.cleanup()
