"""Egress reputation checks against a real DNS server (dnsmasq on 127.0.0.1).

Route A leaves from 127.0.0.2, seen by receivers as 192.0.2.10 (NAT); route B
from 127.0.0.3, seen as 192.0.2.11. bl.test lists 192.0.2.10; refuse.test
answers 127.255.255.254 (Spamhaus's "query via a public resolver") for B, which
is a failed check, not a listing. The relay must avoid A while B takes mail;
when the listing disappears, lift A's blocklist suspension and send the mail it
held back at once, long before its retry time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from dnsserver import Records, dns_server
from structlog.testing import capture_logs
from support import UpstreamHandler, config_head, make_message, running_relay, send, upstream

from relayguard.clock import VirtualClock
from relayguard.config import load_settings_text
from relayguard.ops.control import Controller
from relayguard.ops.queue_tools import format_routes

A, B = "127.0.0.2", "127.0.0.3"
A_PUBLIC, B_PUBLIC = "192.0.2.10", "192.0.2.11"
BLOCKED = f"554 5.7.1 Service unavailable; Client host [{A_PUBLIC}] blocked"
LISTING = "Listed in bl.test: see https://bl.test/lookup?ip=192.0.2.10"


def records(*, a_listed: bool) -> Records:
    a = {"11.2.0.192.refuse.test": "127.255.255.254"}
    txt = {}
    if a_listed:
        a["10.2.0.192.bl.test"] = "127.0.0.2"
        txt["10.2.0.192.bl.test"] = LISTING
    return Records(zones=("test",), a=a, txt=txt)


def config_text(tmp_path: Path, mail_port: int, nameserver: str) -> str:
    return (
        config_head(tmp_path, dns=f'nameservers = ["{nameserver}"]\ntimeout = "1s"')
        + f"""

[reputation]
interval = "1m"

[[reputation.zone]]
zone = "bl.test"
avoid = "all"

[[reputation.zone]]
zone = "refuse.test"

[[route]]
name = "A"
host = "127.0.0.1"
port = {mail_port}
source_address = "{A}"
public_address = "{A_PUBLIC}"

[[route]]
name = "B"
host = "127.0.0.1"
port = {mail_port}
source_address = "{B}"
public_address = "{B_PUBLIC}"
messages_per_connection = 1        # a new connection (and greeting) for every message
"""
    )


class Upstream(UpstreamHandler):
    """Refuses A with the blocklist reply while `a_blocked`; B is down while `b_down`."""

    def __init__(self) -> None:
        super().__init__(
            on_connect=lambda peer: (
                "421 4.3.2 Service not available" if self._b_down(peer) else None
            ),
            on_rcpt=lambda peer, _r: BLOCKED if peer == A and self.a_blocked else None,
        )
        self.a_blocked = True
        self.b_down = False

    def _b_down(self, peer: str) -> bool:
        return peer == B and self.b_down


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _metric(body: str, route: str, zone: str) -> float:
    for line in body.splitlines():
        if line.startswith(f'relayguard_egress_listed{{route="{route}",zone="{zone}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no relayguard_egress_listed for {route}/{zone}")


async def test_a_listed_egress_is_avoided_and_its_delisting_sends_held_mail_at_once(
    tmp_path: Path,
) -> None:
    handler = Upstream()
    clock = VirtualClock(time.time())
    with dns_server(records(a_listed=True), tmp_path) as dns:
        async with upstream(handler) as up:
            settings = load_settings_text(config_text(tmp_path, up.port, dns.address), "t.toml")
            with capture_logs() as logs:
                async with running_relay(settings, clock) as relay:
                    monitor = relay.reputation
                    assert monitor is not None
                    await _until(lambda: len(monitor.last) == 4)  # 2 routes x 2 zones, at start
                    controller = Controller(
                        relay.settings,
                        relay.spool,
                        relay.manager,
                        clock,
                        relay.observer,
                        reputation=monitor,
                    )
                    routes = await controller.handle({"op": "routes"})
                    listed_metric = _metric(relay.observer.exposition()[0].decode(), "A", "bl.test")

                    # A is the first route, but listed: mail goes through B.
                    await send(relay.address, "s@origin.example", ["r1@dest.test"], make_message(1))
                    await up.wait_for(1)
                    tried_a_while_listed = [c for c in handler.connections if c == A]

                    # B goes down: A, listed or not, is all there is; it refuses, and the
                    # message waits (rbl-block: retry in 5-10 minutes).
                    handler.b_down = True
                    await send(relay.address, "s@origin.example", ["r2@dest.test"], make_message(2))
                    await _until(lambda: any(e["event"] == "deferred" for e in logs))
                    await _until(lambda: relay.manager.in_flight == 0)
                    [deferred] = [e for e in logs if e["event"] == "deferred"]

                    # The listing goes; A is taken again. The next check (within 72 s,
                    # the interval jittered) lifts A's suspension and sends the message.
                    handler.a_blocked = False
                    dns.replace(records(a_listed=False))
                    started = clock.now()
                    await clock.run_to(started + 75)
                    await up.wait_for(2, timeout=10)
                    delivered_at = clock.now()
                    delisted_metric = _metric(
                        relay.observer.exposition()[0].decode(), "A", "bl.test"
                    )

    # Listed from a real A and TXT answer, shown by `routes`, counted by the metric.
    [route_a, route_b] = routes["routes"]
    assert [(c["zone"], c["answers"], c["reason"]) for c in route_a["listed"]] == [
        ("bl.test", ["127.0.0.2"], LISTING)
    ]
    assert route_b["listed"] == []
    assert (
        "listed in bl.test (192.0.2.10 -> 127.0.0.2): Listed in bl.test: see "
        "https://bl.test/lookup?ip=192.0.2.10 [avoided while another route is clean]"
    ) in format_routes(routes)
    assert listed_metric == 1.0
    assert delisted_metric == 0.0
    # The 127.255.255.254 answer: a logged check failure, never a listing.
    failed = [e for e in logs if e["event"] == "reputation_check_failed"]
    assert failed
    assert {(e["route"], e["zone"]) for e in failed} == {("B", "refuse.test")}
    assert all(e["answers"] == ["127.255.255.254"] for e in failed)
    assert all("public or open resolver" in e["reason"] for e in failed)
    changes = [e for e in logs if e["event"].startswith("egress_")]
    assert [(e["event"], e["route"], e["zone"]) for e in changes] == [
        ("egress_listed", "A", "bl.test"),
        ("egress_delisted", "A", "bl.test"),
    ]
    # While listed, A carried nothing B could take.
    assert tried_a_while_listed == []
    assert up.received[0].peer == B
    # Delisted: the suspension lifted early, the held message sent at once through A.
    assert deferred["route"] == "A"
    assert deferred["category"] == "rbl_block"
    assert changes[1]["suspensions_lifted"] == ["dest.test"]
    assert changes[1]["due_now"] == 1
    assert up.received[1].peer == A
    assert up.received[1].rcpt_tos == ["r2@dest.test"]
    assert delivered_at < deferred["retry_at"]


def relayguard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (its own process: its own logging setup)."""
    return subprocess.run(
        [sys.executable, "-m", "relayguard", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reputation_check_command_on_a_stopped_relay(tmp_path: Path) -> None:
    with dns_server(records(a_listed=True), tmp_path) as dns:
        config = tmp_path / "relayguard.toml"
        config.write_text(config_text(tmp_path, 25, dns.address))
        as_json = relayguard(config, "reputation", "check", "--json")
        as_table = relayguard(config, "reputation", "check")
    assert as_json.returncode == 1, as_json.stderr  # a route is listed
    assert as_table.returncode == 1
    result = json.loads(as_json.stdout)
    table = as_table.stdout
    # The failed check is in the table, and logged on standard error, not stdout.
    assert "reputation_check_failed" in as_json.stderr
    by_key = {(c["route"], c["zone"]): c for c in result["checks"]}
    assert by_key["A", "bl.test"]["verdict"] == "listed"
    assert by_key["A", "bl.test"]["reason"] == LISTING
    assert by_key["B", "bl.test"]["verdict"] == "clean"
    assert by_key["B", "refuse.test"]["verdict"] == "failed"
    assert by_key["A", "refuse.test"]["verdict"] == "clean"
    assert "A     192.0.2.10 bl.test" in table
    assert "listed" in table
