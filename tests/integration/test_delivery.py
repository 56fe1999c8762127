"""Delivery through smarthost routes over real sockets, time on a virtual clock."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs
from support import (
    UpstreamHandler,
    free_port,
    make_message,
    relay_settings,
    running_relay,
    send,
    strip_received,
    upstream,
)

from relayguard.clock import VirtualClock
from relayguard.config import RouteSettings
from relayguard.model import MessageState, RecipientState, Transaction
from relayguard.smtp.delivery import Delivery


@dataclass
class _HeldData(UpstreamHandler):
    """Holds each of the first `hold` DATA commands until `hold` are in DATA at once,
    which proves that many transactions ran side by side; `peak` is the most ever seen."""

    hold: int = 0
    held: int = 0
    in_data: int = 0
    peak: int = 0
    _all_in: asyncio.Event = field(default_factory=asyncio.Event)  # set once, stays set

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_data += 1
        self.peak = max(self.peak, self.in_data)
        if self.in_data >= self.hold:
            self._all_in.set()
        try:
            if self.held < self.hold:
                self.held += 1
                async with asyncio.timeout(10):
                    await self._all_in.wait()
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.in_data -= 1


async def _until(predicate, clock: VirtualClock | None = None, timeout: float = 15.0) -> None:
    """Wait (real time, a little at a time) until predicate() holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _queued(relay) -> list:
    return await relay.spool.messages()


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain-peer", "peer-offers-pipelining"])
async def test_partial_rcpt_rejection_keeps_only_refused(tmp_path: Path, pipelining: bool) -> None:
    handler = UpstreamHandler(
        on_rcpt=lambda peer, rcpt: (
            "550 5.1.1 <bad@example.com>: User unknown"
            if rcpt.startswith("bad")
            else ("450 4.2.0 Greylisted" if rcpt.startswith("grey") else None)
        )
    )
    clock = VirtualClock()
    async with upstream(handler, pipelining=pipelining) as up:
        settings = relay_settings(
            tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": up.port}]
        )
        async with running_relay(settings, clock) as relay:
            await send(
                relay.address,
                "s@example.org",
                ["good@example.com", "bad@example.com", "grey@example.com"],
                make_message(1),
            )
            [got] = await up.wait_for(1)
            assert got.rcpt_tos == ["good@example.com"]
            await _until(lambda: relay.manager.in_flight == 0)
            [msg] = await _queued(relay)
            states = {r.address: r.state for r in msg.envelope.recipients}
            assert states == {
                "good@example.com": RecipientState.DELIVERED,
                "bad@example.com": RecipientState.FAILED,
                "grey@example.com": RecipientState.QUEUED,
            }
            # Greylisting lifts; the deferred recipient goes alone, once.
            handler.on_rcpt = lambda peer, rcpt: None
            await clock.run_to(clock.now() + 3600)
            await up.wait_for(3)
            mail = [g for g in up.received if g.mail_from]
            [ndr] = [g for g in up.received if not g.mail_from]
            assert [g.rcpt_tos for g in mail] == [["good@example.com"], ["grey@example.com"]]
            # The sender learns about the unknown user, once.
            assert ndr.rcpt_tos == ["s@example.org"]
            assert "bad@example.com" in ndr.content.decode()
            await _until(lambda: relay.manager.in_flight == 0)


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain-peer", "peer-offers-pipelining"])
async def test_4xx_then_success_with_backoff(tmp_path: Path, pipelining: bool) -> None:
    answers = ["451 4.3.0 Temporary local problem", "451 4.3.0 Temporary local problem"]
    handler = UpstreamHandler(on_data=lambda peer, content: answers.pop(0) if answers else None)
    clock = VirtualClock()
    async with upstream(handler, pipelining=pipelining) as up:
        settings = relay_settings(
            tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": up.port}]
        )
        async with running_relay(settings, clock) as relay:
            t0 = clock.now()
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(7))
            await _until(lambda: not answers[1:])  # first attempt refused
            await _until(lambda: relay.manager.in_flight == 0)
            [msg] = await _queued(relay)
            # Postfix-like: first retry 5 minutes later, then 10.
            assert msg.next_attempt_at - t0 == 300
            await clock.run_to(t0 + 299)
            assert answers  # not retried early
            await clock.run_to(t0 + 301)
            await _until(lambda: not answers)
            await _until(lambda: relay.manager.in_flight == 0)
            [msg] = await _queued(relay)
            assert msg.next_attempt_at - t0 == 300 + 600
            await clock.run_to(t0 + 901)
            [got] = await up.wait_for(1)
            assert got.message_id == "<msg-7@test.example>"
            await _until(lambda: relay.manager.in_flight == 0)
            assert await _queued(relay) == []


async def test_connection_refused_falls_back_to_next_route(tmp_path: Path) -> None:
    async with upstream() as up:
        settings = relay_settings(
            tmp_path,
            [
                {"name": "primary", "host": "127.0.0.1", "port": free_port()},
                {"name": "backup", "host": "127.0.0.1", "port": up.port},
            ],
        )
        async with running_relay(settings) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(2))
            [got] = await up.wait_for(1)
            assert got.message_id == "<msg-2@test.example>"
            await _until(lambda: relay.manager.in_flight == 0)
            assert await _queued(relay) == []


async def test_tls_required_but_not_offered_defers_without_sending(tmp_path: Path) -> None:
    async with upstream() as up:
        settings = relay_settings(
            tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": up.port, "tls": "required"}]
        )
        async with running_relay(settings) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(3))
            await _until(lambda: len(up.handler.connections) >= 1)
            await _until(lambda: relay.manager.in_flight == 0)
            [msg] = await _queued(relay)
            assert msg.state is MessageState.ACTIVE
            [rcpt] = msg.envelope.recipients
            assert rcpt.state is RecipientState.QUEUED
            assert rcpt.last_reply is not None
            assert rcpt.last_reply.enhanced == "4.7.4"
            assert "TLS is required" in rcpt.last_reply.text
        assert up.received == []


async def test_tls_required_and_offered_delivers_encrypted(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with upstream(tls_context=server_ctx) as up:
        settings = relay_settings(
            tmp_path,
            [
                {
                    "name": "primary",
                    "host": "127.0.0.1",
                    "port": up.port,
                    "tls": "required",
                    "tls_verify": True,
                    "tls_ca_file": str(ca_file),
                }
            ],
        )
        async with running_relay(settings) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(4))
            [got] = await up.wait_for(1)
    assert strip_received(got.content) == make_message(4)


async def test_connections_are_reused_for_several_messages(tmp_path: Path) -> None:
    """The queue caps the route at max_connections; delivery reuses those connections."""
    handler = _HeldData(hold=2)
    async with upstream(handler) as up:
        settings = relay_settings(
            tmp_path,
            [{"name": "primary", "host": "127.0.0.1", "port": up.port, "max_connections": 2}],
        )
        async with running_relay(settings) as relay:
            await asyncio.gather(
                *(
                    send(relay.address, "s@example.org", ["r@example.com"], make_message(i))
                    for i in range(10)
                )
            )
            await up.wait_for(10)
    assert handler.peak == 2  # two side by side (the hold), never a third (the cap)
    assert len(up.handler.connections) == 2  # and the other eight went on those two
    assert sorted(g.message_id for g in up.received) == sorted(
        f"<msg-{i}@test.example>" for i in range(10)
    )


def _tx(i: int) -> Transaction:
    return Transaction("s@example.org", [("r@example.com", ())], make_message(i))


async def test_delivery_reuses_idle_connections_and_leaves_the_cap_to_its_caller() -> None:
    """Delivery opens what it is asked to (the cap is the queue's), then reuses idle
    connections up to messages_per_connection each."""
    handler = _HeldData(hold=3)
    async with upstream(handler) as up:
        route = RouteSettings(
            "p", "127.0.0.1", up.port, max_connections=1, messages_per_connection=2
        )
        delivery = Delivery([route], "relay.test")
        try:
            async with asyncio.timeout(15):
                # Three at once although max_connections is 1: nothing here waits for a slot.
                first = await asyncio.gather(*(delivery.send("p", _tx(i)) for i in range(3)))
                assert handler.peak == 3
                assert len(handler.connections) == 3
                # One after another, each on an idle connection, which then has had its
                # two messages and is closed.
                later = [await delivery.send("p", _tx(i)) for i in range(3, 6)]
                assert len(handler.connections) == 3
                assert delivery.routes["p"].idle == []
                # Nothing idle left: the next one needs a new connection.
                later.append(await delivery.send("p", _tx(6)))
                assert len(handler.connections) == 4
                assert len(delivery.routes["p"].idle) == 1
        finally:
            await delivery.close()
    assert all(r.code == 250 for o in first + later for r in o.replies.values())
    assert sorted(g.message_id for g in up.received) == sorted(
        f"<msg-{i}@test.example>" for i in range(7)
    )


async def test_route_binds_source_address(tmp_path: Path) -> None:
    async with upstream() as up:
        settings = relay_settings(
            tmp_path,
            [
                {
                    "name": "primary",
                    "host": "127.0.0.1",
                    "port": up.port,
                    "source_address": "127.0.0.2",
                }
            ],
        )
        async with running_relay(settings) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(5))
            [got] = await up.wait_for(1)
    assert got.peer == "127.0.0.2"


async def test_restart_delivers_what_was_queued(tmp_path: Path) -> None:
    port = free_port()
    settings = relay_settings(tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": port}])
    async with running_relay(settings) as relay:
        for i in range(3):
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(i))
    # Now the smarthost is up, on the same port; a fresh relay finds the spool.
    handler = UpstreamHandler()
    server = await asyncio.get_running_loop().create_server(
        lambda: __import__("support").ScriptedSMTP(
            handler, dsn=False, starttls=False, hostname="up"
        ),
        "127.0.0.1",
        port,
    )
    try:
        async with running_relay(settings) as relay:
            for m in await _queued(relay):
                relay.manager.schedule_now(m.seq)  # what `queue retry --all` does
            async with asyncio.timeout(15):
                while len(handler.received) < 3:
                    await asyncio.sleep(0.05)
    finally:
        server.close()
    assert sorted(r.message_id for r in handler.received) == [
        f"<msg-{i}@test.example>" for i in range(3)
    ]


async def test_all_recipients_refused_when_pipelined_sends_no_data(tmp_path: Path) -> None:
    handler = UpstreamHandler(on_rcpt=lambda peer, rcpt: "550 5.1.1 User unknown")
    async with upstream(handler, pipelining=True) as up:
        settings = relay_settings(tmp_path, [{"name": "p", "host": "127.0.0.1", "port": up.port}])
        async with running_relay(settings) as relay:
            await send(relay.address, "", ["x@example.com"], make_message(9))
            await _until(lambda: len(handler.connections) >= 1)
            await _until(lambda: relay.manager.in_flight == 0)
            # The connection is still usable afterwards: the next message goes through it.
            handler.on_rcpt = lambda peer, rcpt: None
            await send(relay.address, "s@example.org", ["y@example.com"], make_message(10))
            [got] = await up.wait_for(1)
    assert got.rcpt_tos == ["y@example.com"]
    assert len(handler.connections) == 1


async def test_drop_after_final_dot_is_retried_as_possible_duplicate(tmp_path: Path) -> None:
    answers = ["DROP"]
    handler = UpstreamHandler(on_data=lambda peer, content: answers.pop(0) if answers else None)
    clock = VirtualClock()
    async with upstream(handler) as up:
        settings = relay_settings(tmp_path, [{"name": "p", "host": "127.0.0.1", "port": up.port}])
        with capture_logs() as logs:
            async with running_relay(settings, clock) as relay:
                await send(relay.address, "s@example.org", ["r@example.com"], make_message(11))
                await _until(lambda: len(handler.dropped) == 1)
                await _until(lambda: relay.manager.in_flight == 0)
                [msg] = await _queued(relay)
                [rcpt] = msg.envelope.recipients
                assert rcpt.state is RecipientState.QUEUED
                assert rcpt.last_reply is not None
                assert rcpt.last_reply.phase.value == "after-data"
                assert "may be sent more than once" in rcpt.last_reply.text
                await clock.run_to(clock.now() + 301)
                [got] = await up.wait_for(1)
    assert got.message_id == "<msg-11@test.example>"
    [deferred] = [e for e in logs if e["event"] == "deferred"]
    assert deferred["possible_duplicate"] is True
