"""The default policy acting on real replies over real sockets, on a virtual clock.

Route A leaves from 127.0.0.2, route B from 127.0.0.3; the upstream refuses
127.0.0.2 at the greeting with the RBL reply of the 2023-24 incident.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import UpstreamHandler, make_message, relay_settings, running_relay, send, upstream

from relayguard.clock import VirtualClock

RBL = (
    "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org;"
    " https://www.spamhaus.org/query/ip/127.0.0.2"
)
BUSY = "451 4.7.500 Server busy. Please try again later"


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _two_routes(tmp_path: Path, port: int) -> object:
    return relay_settings(
        tmp_path,
        [
            {
                "name": "A",
                "host": "127.0.0.1",
                "port": port,
                "source_address": "127.0.0.2",
                "max_connections": 5,
            },
            {
                "name": "B",
                "host": "127.0.0.1",
                "port": port,
                "source_address": "127.0.0.3",
                "max_connections": 5,
            },
        ],
    )


async def test_rbl_listing_reroutes_suspends_and_probes(tmp_path: Path) -> None:
    listed = {"127.0.0.2"}
    handler = UpstreamHandler(on_connect=lambda peer: RBL if peer in listed else None)
    clock = VirtualClock()
    async with (
        upstream(handler) as up,
        running_relay(_two_routes(tmp_path, up.port), clock) as relay,
    ):
        await send(relay.address, "s@example.org", ["r0@example.com"], make_message(0))
        [first] = await up.wait_for(1)
        assert first.peer == "127.0.0.3"
        assert handler.connections.count("127.0.0.2") == 1
        suspension = relay.manager.routes.suspension("A", "example.com", clock.now())
        assert suspension is not None
        assert 300 <= suspension.until - clock.now() <= 600
        assert "blocked using" in suspension.reason

        # While A is suspended for example.com, nothing tries it.
        await asyncio.gather(
            *(
                send(relay.address, "s@example.org", [f"r{i}@example.com"], make_message(i))
                for i in range(1, 50)
            )
        )
        await up.wait_for(50)
        await _until(lambda: relay.manager.in_flight == 0)
        assert handler.connections.count("127.0.0.2") == 1
        assert {g.peer for g in up.received} == {"127.0.0.3"}
        assert all(g.mail_from == "s@example.org" for g in up.received)  # no NDR
        assert sorted(g.message_id for g in up.received) == sorted(
            f"<msg-{i}@test.example>" for i in range(50)
        )
        assert await relay.spool.messages() == []

        # Delisted; the suspension ends: one probe goes to A, alone, and then A carries mail.
        listed.clear()
        await clock.run_to(suspension.until + 1)
        handler.data_delay = 0.3  # keep the probe in flight while the others choose
        await asyncio.gather(
            *(
                send(relay.address, "s@example.org", [f"p{i}@example.com"], make_message(100 + i))
                for i in range(5)
            )
        )
        await up.wait_for(55)
        after = up.received[50:]
        assert [g.peer for g in after].count("127.0.0.2") == 1  # the probe
        handler.data_delay = 0.0
        await send(relay.address, "s@example.org", ["q@example.com"], make_message(200))
        await up.wait_for(56)
        assert up.received[-1].peer == "127.0.0.2"  # the flood is released to A


async def test_rbl_listing_on_every_route_defers_not_bounces(tmp_path: Path) -> None:
    handler = UpstreamHandler(on_connect=lambda peer: RBL.replace("127.0.0.2", peer))
    clock = VirtualClock()
    async with (
        upstream(handler) as up,
        running_relay(_two_routes(tmp_path, up.port), clock) as relay,
    ):
        t0 = clock.now()
        await send(relay.address, "s@example.org", ["r@example.com"], make_message(1))
        await _until(lambda: len(handler.connections) >= 2)
        await _until(lambda: relay.manager.in_flight == 0)
        [msg] = await relay.spool.messages()
        assert [a.route for a in msg.attempts] == ["A", "B"]
        assert {a.rule for a in msg.attempts} == {"rbl-block"}
        # Both routes are suspended; the message waits for the first to come back
        # and spends no attempt while held.
        assert 300 <= msg.next_attempt_at - t0 <= 600
        assert up.received == []

        # Listed for 48 h: then it bounces with the last real reply (an NDR to the sender).
        handler.on_connect = lambda peer: (
            RBL.replace("127.0.0.2", peer) if peer != "127.0.0.1" else None
        )
        await clock.run_to(t0 + 49 * 3600, settle=0.002, busy=lambda: relay.manager.in_flight > 0)
        await _until(lambda: relay.manager.in_flight == 0)
        assert await relay.spool.messages() == [] or all(
            m.envelope.sender == "" for m in await relay.spool.messages()
        )


async def test_throttling_upstream_gets_fewer_connections_and_5_to_10_minute_deferrals(
    tmp_path: Path,
) -> None:
    busy = {"on": True}
    handler = UpstreamHandler(
        on_data=lambda peer, content: BUSY if busy["on"] else None, data_delay=0.05
    )
    clock = VirtualClock()
    async with upstream(handler) as up:
        settings = relay_settings(
            tmp_path, [{"name": "A", "host": "127.0.0.1", "port": up.port, "max_connections": 8}]
        )
        async with running_relay(settings, clock) as relay:
            t0 = clock.now()
            await asyncio.gather(
                *(
                    send(relay.address, "s@example.org", [f"r{i}@example.com"], make_message(i))
                    for i in range(16)
                )
            )
            await _until(lambda: relay.manager.in_flight == 0 and len(handler.connections) > 0)
            first_round_peak = handler.max_concurrent
            msgs = await relay.spool.messages()
            assert len(msgs) == 16
            for m in msgs:
                deferred = [a for a in m.attempts if a.action == "defer"]
                assert deferred, m.attempts
                assert {a.rule for a in deferred} == {"rate-limited"}
                assert 300 <= m.next_attempt_at - deferred[-1].at <= 600
            cap = relay.manager.routes.connection_cap("A", "example.com", clock.now())
            assert cap == 2

            # Still busy at the retry: the next deferral is again 5-10 minutes on.
            handler.max_concurrent = 0
            await clock.run_to(t0 + 601)
            await _until(lambda: relay.manager.in_flight == 0)
            assert handler.max_concurrent <= 2 < first_round_peak
            for m in await relay.spool.messages():
                defers = [a for a in m.attempts if a.action == "defer"]
                assert len(defers) == 2
                # Not retried early, and scheduled 5-10 minutes after each refusal came
                # back. (When the second try ran, and how much virtual time its loopback
                # transaction took, is the test clock's business: run_to jumps.)
                first_back = defers[0].at + defers[0].duration
                assert defers[1].at - first_back >= 300 - 1e-6
                assert 300 <= m.next_attempt_at - (defers[1].at + defers[1].duration) <= 600

            busy["on"] = False
            await clock.run_to(t0 + 1300)
            await up.wait_for(16)
            assert handler.max_concurrent <= 2
