"""Prometheus metrics and /healthz over real HTTP, after real deliveries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from support import (
    UpstreamHandler,
    make_message,
    relay_settings,
    running_relay,
    samples,
    send,
    upstream,
)

from relayguard.model import MessageState


async def http_get(address: tuple[str, int], path: str) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


async def until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_metrics_count_deliveries_and_healthz(tmp_path: Path) -> None:
    handler = UpstreamHandler(
        on_rcpt=lambda peer, rcpt: (
            "550 5.1.1 <gone@example.com>: User unknown"
            if rcpt.startswith("gone")
            else "450 4.2.0 Greylisted"
            if rcpt.startswith("grey")
            else None
        )
    )
    async with upstream(handler) as up:
        settings = relay_settings(
            tmp_path,
            [{"name": "primary", "host": "127.0.0.1", "port": up.port}],
            extra='[metrics]\nlisten = "127.0.0.1:0"',
        )
        with structlog.testing.capture_logs():
            async with running_relay(settings) as relay:
                address = relay.metrics_address
                assert address is not None
                assert address[1] != 0
                for i in range(3):
                    await send(
                        relay.address, "s@example.org", [f"r{i}@example.com"], make_message(i)
                    )
                await send(
                    relay.address,
                    "s@example.org",
                    ["gone@example.com", "grey@example.com"],
                    make_message(9),
                )
                await up.wait_for(4)  # three messages and the NDR
                await until(lambda: not relay.manager.delivering and len(relay.manager.due) == 1)

                status, headers, body = await http_get(address, "/metrics")
                assert status == 200
                assert headers["content-type"].startswith("text/plain; version=0.0.4")
                m = samples(body)
                assert m["relayguard_accepted_messages_total"] == 4
                # three messages and the NDR went out through primary
                assert m['relayguard_delivered_recipients_total{route="primary"}'] == 4
                assert (
                    m['relayguard_bounced_recipients_total{route="primary",rule="user-unknown"}']
                    == 1
                )
                assert (
                    m['relayguard_deferred_recipients_total{route="primary",rule="greylisted"}']
                    == 1
                )
                # every refusal counted once, by what kind of reply it was
                assert m['relayguard_replies_total{category="no_such_user",route="primary"}'] == 1
                assert (
                    m['relayguard_replies_total{category="temporary_other",route="primary"}'] == 1
                )
                assert m['relayguard_delivery_duration_seconds_count{route="primary"}'] == 5
                assert (
                    m['relayguard_delivery_duration_seconds_bucket{le="+Inf",route="primary"}'] == 5
                )
                assert m['relayguard_queue_messages{state="deferred"}'] == 1
                assert m['relayguard_queue_messages{state="active"}'] == 0
                assert m['relayguard_queue_messages{state="held"}'] == 0
                assert 0 <= m["relayguard_oldest_message_age_seconds"] < 60
                assert m['relayguard_route_suspensions{route="primary"}'] == 0

                # An operator's hold shows in the queue gauges, a bounce in the counters.
                [msg] = await relay.spool.messages()
                await relay.spool.set_state(msg.seq, MessageState.HELD)
                m = samples((await http_get(address, "/metrics"))[2])
                assert m['relayguard_queue_messages{state="held"}'] == 1
                assert m['relayguard_queue_messages{state="deferred"}'] == 0

                assert (await http_get(address, "/healthz"))[:1] == (200,)
                assert (await http_get(address, "/nothing"))[0] == 404

                # The spool directory goes away: unhealthy, and the scrape still answers.
                spool = tmp_path / "spool"
                spool.rename(tmp_path / "elsewhere")
                try:
                    status, _, body = await http_get(address, "/healthz")
                    assert status == 503
                    assert "unhealthy" in body
                    assert (await http_get(address, "/metrics"))[0] == 200
                finally:
                    (tmp_path / "elsewhere").rename(spool)
                assert (await http_get(address, "/healthz"))[0] == 200


async def test_no_metrics_listener_unless_configured(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": 9}])
    with structlog.testing.capture_logs():
        async with running_relay(settings) as relay:
            assert relay.metrics_address is None
            # The counters still run: `relayguard routes` shows them.
            assert relay.observer.counts == {"primary": {}}
