"""The 2023-24 incident's replies, verbatim, over real sockets on a virtual clock.

Route A leaves from 127.0.0.2 (the listed egress), route B from 127.0.0.3 (clean),
both to the same upstream; reports go back through route "back" to a second
upstream standing for the origin MTA. The upstream refuses A with the incident's
reply; B takes everything. Nothing may bounce while B is there, and A must not
be tried by more messages than it had connections when the first refusal came.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from support import UpstreamHandler, config_head, make_message, running_relay, send, upstream

from relayguard.clock import VirtualClock
from relayguard.config import load_settings_text
from relayguard.model import SecondOpinion

A, B = "127.0.0.2", "127.0.0.3"
MAX_CONNECTIONS = 5
MESSAGES = 20


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _settings(tmp_path: Path, mail_port: int, back_port: int) -> object:
    text = (
        config_head(tmp_path)
        + f"""
[ndr]
route = "back"
record_file = "{tmp_path / "bounces.jsonl"}"

[[route]]
name = "A"
host = "127.0.0.1"
port = {mail_port}
source_address = "{A}"
max_connections = {MAX_CONNECTIONS}

[[route]]
name = "B"
host = "127.0.0.1"
port = {mail_port}
source_address = "{B}"
max_connections = {MAX_CONNECTIONS}

[[route]]
name = "back"
host = "127.0.0.1"
port = {back_port}
"""
    )
    return load_settings_text(text, "test.toml")


class Counting(UpstreamHandler):
    """Counts the transactions each egress began (a RCPT seen from that peer)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.transactions: dict[str, int] = {}

    async def handle_RCPT(self, server, session, envelope, address, options):
        peer = session.peer[0]
        self.transactions[peer] = self.transactions.get(peer, 0) + 1
        return await super().handle_RCPT(server, session, envelope, address, options)


INCIDENT = [
    pytest.param(
        "rcpt",
        "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked",
        "rbl_block",
        "rbl-block",
        id="554-client-host-blocked",
    ),
    pytest.param(
        "data",
        "550 5.7.350 Remote server returned message detected as spam",
        "spam_content",
        "spam-verdict",
        id="550-5.7.350-detected-as-spam",
    ),
    pytest.param(
        "data",
        "550 5.7.1 This email was rejected because it violates our security policy",
        "policy",
        "policy-refusal",
        id="550-5.7.1-security-policy",
    ),
]


@pytest.mark.parametrize(("phase", "reply", "category", "rule"), INCIDENT)
async def test_incident_reply_on_a_ends_in_delivery_via_b(
    tmp_path: Path, phase: str, reply: str, category: str, rule: str
) -> None:
    def refuse_a(peer: str, *_: object) -> str | None:
        return reply if peer == A else None

    handler = Counting(
        on_rcpt=refuse_a if phase == "rcpt" else lambda p, r: None,
        on_data=refuse_a if phase == "data" else lambda p, c: None,
    )
    handler.data_delay = 0.05  # keep A's first connections busy while the others queue
    clock = VirtualClock()
    async with upstream(handler) as up, upstream() as back:
        settings = _settings(tmp_path, up.port, back.port)
        with capture_logs() as logs:
            async with running_relay(settings, clock) as relay:
                await asyncio.gather(
                    *(
                        send(
                            relay.address,
                            "s@origin.example",
                            [f"r{i}@example.com"],
                            make_message(i),
                        )
                        for i in range(MESSAGES)
                    )
                )
                await up.wait_for(MESSAGES)
                await _until(lambda: relay.manager.in_flight == 0)
                left = await relay.spool.messages()
                suspension = relay.manager.routes.suspension("A", "example.com", clock.now())
    # Every message arrived, through B, and nobody got an NDR.
    assert {g.peer for g in up.received} == {B}
    assert sorted(g.message_id for g in up.received) == sorted(
        f"<msg-{i}@test.example>" for i in range(MESSAGES)
    )
    assert back.received == []
    assert left == []
    assert not (tmp_path / "bounces.jsonl").exists()
    # A was tried only by the messages already on its connections when it first refused.
    assert 1 <= handler.transactions.get(A, 0) <= MAX_CONNECTIONS
    # A stays off example.com as for an RBL block (a real suspension, not a provisional one).
    assert suspension is not None
    assert not suspension.provisional
    assert suspension.rule == rule
    refusals = [e for e in logs if e["event"] in ("rerouted", "deferred", "bounced")]
    assert refusals
    assert {e["category"] for e in refusals} == {category}
    assert {e["event"] for e in refusals} == {"rerouted"}
    delivered = [e for e in logs if e["event"] == "delivered"]
    assert len(delivered) == MESSAGES
    after_a = [e for e in delivered if e.get("after_route") == "A"]
    assert after_a
    assert all(e["category"] == category for e in after_a)
    if rule != "rbl-block":  # a second opinion: the log says the refusal was egress-specific
        assert all(e["second_opinion"] == SecondOpinion.ACCEPTED for e in after_a)
        assert all(e["egress_specific"] is True for e in after_a)
        assert all("specific to the egress of A" in e["reason"] for e in after_a)


async def test_server_busy_throttles_and_defers_without_bouncing(tmp_path: Path) -> None:
    busy = "451 4.7.500 Server busy. Please try again later"
    attempts_on_a = {"n": 0}

    def rcpt(peer: str, _rcpt: str) -> str | None:
        if peer != A:
            return None
        attempts_on_a["n"] += 1
        return busy if attempts_on_a["n"] <= 3 else None

    handler = Counting(on_rcpt=rcpt)
    clock = VirtualClock()
    async with upstream(handler) as up, upstream() as back:
        settings = _settings(tmp_path, up.port, back.port)
        with capture_logs() as logs:
            async with running_relay(settings, clock) as relay:
                for i in range(3):
                    await send(
                        relay.address, "s@origin.example", [f"r{i}@example.com"], make_message(i)
                    )
                await _until(lambda: relay.manager.in_flight == 0)
                throttle_cap = relay.manager.routes.connection_cap("A", "example.com", clock.now())
                deferred = [e for e in logs if e["event"] == "deferred"]
                assert len(deferred) == 3
                assert all(
                    e["category"] == "throttle" and e["rule"] == "rate-limited" for e in deferred
                )
                assert all(300 <= e["retry_at"] - clock.now() <= 601 for e in deferred)
                assert throttle_cap == 2
                assert up.received == []
                # 5-10 minutes later A takes them: deferred, never bounced.
                await clock.run_to(clock.now() + 601)
                await up.wait_for(3)
                await _until(lambda: relay.manager.in_flight == 0)
                assert await relay.spool.messages() == []
    assert back.received == []
    assert [e for e in logs if e["event"] == "bounced"] == []


async def test_refused_through_both_egresses_bounces_once_with_both_replies(tmp_path: Path) -> None:
    spam_a = "550 5.7.350 Remote server returned message detected as spam"
    spam_b = "550 5.7.1 Message rejected as spam by Content Filtering"
    handler = Counting(on_data=lambda peer, c: spam_a if peer == A else spam_b)
    clock = VirtualClock()
    async with upstream(handler) as up, upstream() as back:
        settings = _settings(tmp_path, up.port, back.port)
        async with running_relay(settings, clock) as relay:
            await send(relay.address, "s@origin.example", ["r@example.com"], make_message(1))
            [ndr] = await back.wait_for(1)
            await _until(lambda: relay.manager.in_flight == 0)
            # The first refusal was about the message after all: A carries mail again.
            assert relay.manager.routes.suspension("A", "example.com", clock.now()) is None
            await asyncio.sleep(0.1)
    assert up.received == []
    assert handler.transactions == {A: 1, B: 1}  # one extra attempt, no more
    assert len(back.received) == 1
    assert ndr.rcpt_tos == ["s@origin.example"]
    report = email.message_from_bytes(ndr.content, policy=email.policy.default)
    text = " ".join(report.get_body(preferencelist=("plain",)).get_content().split())
    assert "Remote server returned message detected as spam" in text
    assert "Message rejected as spam by Content Filtering" in text
    assert "A second opinion through route B" in text
    assert "Kind of failure: spam_content" in text
    [record] = [json.loads(x) for x in (tmp_path / "bounces.jsonl").read_text().splitlines()]
    [rcpt] = record["recipients"]
    assert rcpt["category"] == "spam_content"
    assert rcpt["second_opinion"] == {
        "first_route": "A",
        "first_reply": spam_a,
        "second_route": "B",
    }
    assert "Message rejected as spam by Content Filtering" in rcpt["reply"]


async def test_messages_waiting_for_a_connection_do_not_go_out_on_a_route_just_suspended(
    tmp_path: Path,
) -> None:
    rbl = "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.spamhaus.org"
    handler = Counting(on_rcpt=lambda peer, r: rbl if peer == A else None)
    handler.data_delay = 0.05
    clock = VirtualClock()
    async with upstream(handler) as up, upstream() as back:
        settings = _settings(tmp_path, up.port, back.port)
        async with running_relay(settings, clock) as relay:
            await asyncio.gather(
                *(
                    send(relay.address, "s@origin.example", [f"r{i}@example.com"], make_message(i))
                    for i in range(30)
                )
            )
            await up.wait_for(30)
            await _until(lambda: relay.manager.in_flight == 0)
    assert handler.transactions[A] <= MAX_CONNECTIONS
    assert {g.peer for g in up.received} == {B}
    assert back.received == []
