"""NDRs and DSN end to end: what the sender learns, through which route."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from pathlib import Path

from support import (
    UpstreamHandler,
    config_head,
    make_message,
    relay_settings,
    running_relay,
    send,
    upstream,
)

from relayguard.clock import VirtualClock
from relayguard.config import load_settings_text


async def _until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def _with_ndr(tmp_path: Path, mail_port: int, ndr_port: int, extra: str = "") -> object:
    text = (
        config_head(tmp_path)
        + f"""
[queue]
{extra}

[ndr]
route = "back"
record_file = "{tmp_path / "bounces.jsonl"}"

[[route]]
name = "smarthost"
host = "127.0.0.1"
port = {mail_port}

[[route]]
name = "back"
host = "127.0.0.1"
port = {ndr_port}
ndr_only = true
"""
    )
    return load_settings_text(text, "test.toml")


async def test_one_of_three_unknown_gets_exactly_one_ndr_via_ndr_route(tmp_path: Path) -> None:
    unknown = "550 5.1.1 <c@example.com>: Recipient address rejected: User unknown"
    mail_handler = UpstreamHandler(on_rcpt=lambda peer, r: unknown if r.startswith("c@") else None)
    async with upstream(mail_handler) as mail_up, upstream() as back:
        settings = _with_ndr(tmp_path, mail_up.port, back.port)
        async with running_relay(settings) as relay:
            original = make_message(1, body="Please read.\r\n")
            await send(
                relay.address,
                "sender@origin.example",
                ["a@example.com", "b@example.com", "c@example.com"],
                original,
            )
            [delivered] = await mail_up.wait_for(1)
            [ndr] = await back.wait_for(1)
            await _until(lambda: relay.manager.in_flight == 0)
            await asyncio.sleep(0.2)
            assert len(back.received) == 1  # exactly one NDR
            assert len(mail_up.received) == 1  # and never through the mail route
    assert sorted(delivered.rcpt_tos) == ["a@example.com", "b@example.com"]
    assert ndr.mail_from == ""
    assert ndr.rcpt_tos == ["sender@origin.example"]
    report = email.message_from_bytes(ndr.content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    human, status, original_part = report.get_payload()
    text = human.get_content()
    assert "c@example.com" in text
    assert "550 5.1.1" in text
    per_message, *per_recipient = status.get_payload()
    assert str(per_message["Reporting-MTA"]).strip() == "dns; relay.test"
    [rcpt] = per_recipient
    assert str(rcpt["Final-Recipient"]).strip() == "rfc822; c@example.com"
    assert str(rcpt["Action"]).strip() == "failed"
    assert str(rcpt["Status"]).strip() == "5.1.1"
    assert "smtp; 550 5.1.1" in str(rcpt["Diagnostic-Code"])
    assert original_part.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <msg-1@test.example>" in original_part.get_payload()
    [record] = [json.loads(line) for line in (tmp_path / "bounces.jsonl").read_text().splitlines()]
    assert record["kind"] == "bounce"
    assert [r["address"] for r in record["recipients"]] == ["c@example.com"]
    assert record["recipients"][0]["rule"] == "user-unknown"


async def test_null_sender_failure_makes_no_ndr(tmp_path: Path) -> None:
    handler = UpstreamHandler(on_rcpt=lambda peer, r: "550 5.1.1 User unknown")
    async with upstream(handler) as mail_up, upstream() as back:
        settings = _with_ndr(tmp_path, mail_up.port, back.port)
        async with running_relay(settings) as relay:
            await send(relay.address, "", ["x@example.com"], make_message(2))
            await _until(lambda: relay.manager.in_flight == 0 and len(handler.connections) > 0)
            await asyncio.sleep(0.3)
            assert await relay.spool.messages() == []
    assert back.received == []
    [record] = [json.loads(line) for line in (tmp_path / "bounces.jsonl").read_text().splitlines()]
    assert record["sender"] == ""


async def test_dsn_parameters_pass_upstream_when_offered(tmp_path: Path) -> None:
    async with upstream(dsn=True) as up:
        settings = relay_settings(tmp_path, [{"name": "p", "host": "127.0.0.1", "port": up.port}])
        async with running_relay(settings) as relay:
            await send(
                relay.address,
                "s@example.org",
                ["r@example.com"],
                make_message(3),
                mail_options=["RET=HDRS", "ENVID=abc+2B1"],
                rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;Orig+2Bx@example.com"],
            )
            [got] = await up.wait_for(1)
    # (aiosmtpd upper-cases parameters on its side; we compare the same way)
    assert "RET=HDRS" in got.mail_options
    assert "ENVID=ABC+2B1" in got.mail_options
    assert "NOTIFY=FAILURE,DELAY" in got.rcpt_options
    assert "ORCPT=RFC822;ORIG+2BX@EXAMPLE.COM" in got.rcpt_options


async def test_notify_success_without_upstream_dsn_sends_relayed_report(tmp_path: Path) -> None:
    async with upstream() as mail_up, upstream() as back:
        settings = _with_ndr(tmp_path, mail_up.port, back.port)
        async with running_relay(settings) as relay:
            await send(
                relay.address,
                "s@origin.example",
                ["r@example.com"],
                make_message(4),
                rcpt_options=["NOTIFY=SUCCESS"],
            )
            await mail_up.wait_for(1)
            [report] = await back.wait_for(1)
    assert not any("NOTIFY" in o for o in mail_up.received[0].rcpt_options)
    msg = email.message_from_bytes(report.content, policy=email.policy.default)
    _, status, _ = msg.get_payload()
    [_, rcpt] = status.get_payload()
    assert str(rcpt["Action"]).strip() == "relayed"


async def test_delay_warning_once_after_configured_delay(tmp_path: Path) -> None:
    handler = UpstreamHandler(on_rcpt=lambda peer, r: "451 4.3.0 Try later")
    clock = VirtualClock()
    async with upstream(handler) as mail_up, upstream() as back:
        settings = _with_ndr(tmp_path, mail_up.port, back.port, 'delay_warning = "1h"')
        async with running_relay(settings, clock) as relay:
            t0 = clock.now()
            await send(relay.address, "s@origin.example", ["r@example.com"], make_message(5))
            await _until(lambda: relay.manager.in_flight == 0 and len(handler.connections) > 0)
            await clock.run_to(t0 + 3 * 3600)
            [warning] = await back.wait_for(1)
            await clock.run_to(t0 + 6 * 3600)
            await _until(lambda: relay.manager.in_flight == 0)
            assert len(back.received) == 1
    msg = email.message_from_bytes(warning.content, policy=email.policy.default)
    _, status, _ = msg.get_payload()
    [_, rcpt] = status.get_payload()
    assert str(rcpt["Action"]).strip() == "delayed"
    assert "Will-Retry-Until" in rcpt
