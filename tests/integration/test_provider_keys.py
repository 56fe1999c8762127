"""Provider keys from MX, against a real DNS server (dnsmasq on 127.0.0.1).

Two domains whose MX is at Microsoft 365, one with its own mail host: an RBL
reply for one Microsoft-hosted domain suspends the route for both (one rejected
attempt, not two), not for the third. A lookup that times out gives the domain
as its own key and the mail goes out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dnsserver import Records, dns_server, silent_nameserver
from structlog.testing import capture_logs
from support import UpstreamHandler, config_head, make_message, running_relay, send, upstream

from relayguard.clock import VirtualClock
from relayguard.config import load_settings_text
from relayguard.dns.mx import FAILURE_TTL, ProviderKeys, make_resolver
from relayguard.dns.providers import ProviderTable
from relayguard.model import Envelope, Recipient
from relayguard.ops.control import Controller, StoppedQueue
from relayguard.ops.queue_tools import format_routes
from relayguard.queue.spool import NewMessage
from relayguard.queue.spool.sqlite import SqliteSpool

A, B = "127.0.0.2", "127.0.0.3"
BLOCKED = "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked"

RECORDS = Records(
    mx={
        "contoso.test": [(10, "contoso-test.mail.protection.outlook.com")],
        "fabrikam.test": [(10, "fabrikam-test.mail.protection.outlook.com")],
        "own.test": [(10, "mx.own.test")],
        "filtered.test": [
            (10, "mx0a-001.pphosted.com"),
            (20, "f-test.mail.protection.outlook.com"),
        ],
    },
    a={"mx.own.test": "192.0.2.25", "implicit.test": "192.0.2.26"},
)


def _keys(server_address: str, now=time.time, timeout: float = 2.0) -> ProviderKeys:
    host, port = server_address.split(":")
    resolver = make_resolver([(host, int(port))], timeout)
    return ProviderKeys(resolver, ProviderTable.build(), now, cache_size=100, timeout=timeout)


async def test_keys_from_real_mx_answers(tmp_path: Path) -> None:
    with dns_server(RECORDS, tmp_path) as dns:
        keys = _keys(dns.address)
        asked_for = ["contoso.test", "FABRIKAM.test", "own.test", "filtered.test"]
        found = await keys.keys([*asked_for, "implicit.test", "nosuch.test"])
        assert found == {
            "contoso.test": "provider:microsoft",
            "fabrikam.test": "provider:microsoft",
            "filtered.test": "provider:proofpoint",  # the most preferred MX decides
        }
        # own.test (its own host), implicit.test (no MX: its A record is the mail host,
        # RFC 5321 5.1) and nosuch.test (NXDOMAIN) are each their own key.
        assert keys.failures == 0
        asked = dns.queries()
        assert asked.count("contoso.test") == 1
        assert "fabrikam.test" in asked  # asked in lower case


async def test_answers_are_cached_by_ttl_and_concurrent_asks_share_a_query(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    with dns_server(RECORDS, tmp_path) as dns:
        keys = _keys(dns.address, now=lambda: now[0])
        results = await asyncio.gather(*(keys.keys(["contoso.test"]) for _ in range(20)))
        assert all(r == {"contoso.test": "provider:microsoft"} for r in results)
        assert dns.queries().count("contoso.test") == 1
        assert keys.cached("contoso.test") == "provider:microsoft"
        # Within the TTL (300 s here): from the cache, nothing asked.
        now[0] += 299
        await keys.keys(["contoso.test", "nosuch.test"])
        await keys.keys(["nosuch.test"])  # the NXDOMAIN is cached too
        assert dns.queries().count("contoso.test") == 1
        assert dns.queries().count("nosuch.test") == 1
        # Past it: asked again.
        now[0] += 2
        await keys.keys(["contoso.test"])
        assert dns.queries().count("contoso.test") == 2


async def test_a_lookup_timeout_gives_the_domain_as_its_own_key_briefly() -> None:
    now = [0.0]
    with silent_nameserver() as nameserver:
        keys = _keys(nameserver, now=lambda: now[0], timeout=0.3)
        started = time.monotonic()
        assert await keys.keys(["contoso.test"]) == {}
        took = time.monotonic() - started
        assert 0.2 <= took < 1.5
        assert keys.failures == 1
        # Remembered as failed for a minute: the next message is not held up again.
        started = time.monotonic()
        assert await keys.keys(["contoso.test"]) == {}
        assert time.monotonic() - started < 0.1
        assert keys.lookups == 1
        now[0] += FAILURE_TTL + 1
        await keys.keys(["contoso.test"])
        assert keys.lookups == 2


def _relay_settings(tmp_path: Path, mail_port: int, nameserver: str, timeout: str = "2s"):
    return load_settings_text(
        config_head(tmp_path, dns=f'nameservers = ["{nameserver}"]\ntimeout = "{timeout}"')
        + f"""

[[route]]
name = "A"
host = "127.0.0.1"
port = {mail_port}
source_address = "{A}"

[[route]]
name = "B"
host = "127.0.0.1"
port = {mail_port}
source_address = "{B}"
""",
        "test.toml",
    )


class RefusesA(UpstreamHandler):
    """The incident: the upstream refuses egress A with the blocklist reply."""

    def __init__(self) -> None:
        super().__init__(on_rcpt=lambda peer, _rcpt: BLOCKED if peer == A else None)
        self.tried_a: list[str] = []

    async def handle_RCPT(self, server, session, envelope, address, options):
        if session.peer[0] == A:
            self.tried_a.append(address)
        return await super().handle_RCPT(server, session, envelope, address, options)


async def _send_and_wait(relay, up, rcpt: str, n: int) -> None:
    await send(relay.address, "s@origin.example", [rcpt], make_message(n))
    await up.wait_for(n + 1)
    async with asyncio.timeout(20):
        while relay.manager.in_flight:
            await asyncio.sleep(0.02)


async def test_one_blocklist_reply_suspends_the_route_for_every_domain_of_the_provider(
    tmp_path: Path,
) -> None:
    handler = RefusesA()
    clock = VirtualClock(time.time())
    with dns_server(RECORDS, tmp_path) as dns:
        async with upstream(handler) as up:
            settings = _relay_settings(tmp_path, up.port, dns.address)
            with capture_logs() as logs:
                async with running_relay(settings, clock) as relay:
                    await _send_and_wait(relay, up, "u1@contoso.test", 0)
                    await _send_and_wait(relay, up, "u2@fabrikam.test", 1)
                    tried_for_microsoft = list(handler.tried_a)
                    # A domain at no known provider is not covered: A is tried for it.
                    await _send_and_wait(relay, up, "u3@own.test", 2)
                    controller = Controller(
                        relay.settings, relay.spool, relay.manager, clock, relay.observer
                    )
                    routes = await controller.handle({"op": "routes"})
    # One rejected attempt for both Microsoft-hosted domains, then B for everyone.
    assert tried_for_microsoft == ["u1@contoso.test"]
    assert handler.tried_a == ["u1@contoso.test", "u3@own.test"]
    assert [(g.peer, g.rcpt_tos) for g in up.received] == [
        (B, ["u1@contoso.test"]),
        (B, ["u2@fabrikam.test"]),
        (B, ["u3@own.test"]),
    ]
    suspended = [e for e in logs if e["event"] == "route_suspended"]
    assert [(e["route"], e["destination"], e["category"]) for e in suspended] == [
        ("A", "provider:microsoft", "rbl_block"),
        ("A", "own.test", "rbl_block"),
    ]
    # `routes` shows the provider key, in the operator's words.
    [route_a, _] = routes["routes"]
    assert [s["destination"] for s in route_a["suspensions"]] == ["own.test", "provider:microsoft"]
    text = format_routes(routes)
    assert "suspended for provider:microsoft (every domain whose MX is at microsoft)" in text


async def test_an_mx_lookup_timeout_falls_back_to_the_domain_and_delivers(
    tmp_path: Path,
) -> None:
    handler = RefusesA()
    clock = VirtualClock(time.time())
    with silent_nameserver() as nameserver:
        async with upstream(handler) as up:
            settings = _relay_settings(tmp_path, up.port, nameserver, timeout="300ms")
            with capture_logs() as logs:
                async with running_relay(settings, clock) as relay:
                    await _send_and_wait(relay, up, "u1@contoso.test", 0)
    [got] = up.received
    assert (got.peer, got.rcpt_tos) == (B, ["u1@contoso.test"])
    failed = [e for e in logs if e["event"] == "mx_lookup_failed"]
    assert [e["domain"] for e in failed] == ["contoso.test"]
    suspended = [e for e in logs if e["event"] == "route_suspended"]
    assert [(e["route"], e["destination"]) for e in suspended] == [("A", "contoso.test")]


async def test_queue_shape_by_provider_on_a_stopped_relay(tmp_path: Path) -> None:
    with dns_server(RECORDS, tmp_path) as dns:
        settings = _relay_settings(tmp_path, 25, dns.address)
        clock = VirtualClock(10_000.0)
        spool = SqliteSpool(settings.server.spool)
        try:
            await spool.accept_many(
                [
                    NewMessage(
                        Envelope("s@origin.example", tuple(Recipient(r) for r in rcpts)),
                        b"Subject: x\r\n\r\nhi\r\n",
                        10_000.0 - 60,
                    )
                    for rcpts in (
                        ["a@contoso.test", "b@fabrikam.test"],  # once under the provider
                        ["c@fabrikam.test"],
                        ["d@own.test"],
                    )
                ]
            )
            controller = Controller(
                settings, spool, StoppedQueue(settings, spool, clock), clock, running=False
            )
            by_provider = await controller.handle({"op": "shape", "by": "provider"})
            by_domain = await controller.handle({"op": "shape"})
        finally:
            await spool.close()
    assert [row[:2] for row in by_provider["shape"]["rows"]] == [
        ["provider:microsoft", 2],
        ["own.test", 1],
    ]
    assert [row[:2] for row in by_domain["shape"]["rows"]] == [
        ["fabrikam.test", 2],
        ["contoso.test", 1],
        ["own.test", 1],
    ]
