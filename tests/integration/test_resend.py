"""`[queue] keep_bounced` and `relayguard queue resend`, end to end over real sockets.

The 2023-24 incident: an RBL lists our egress, receivers answer `554 5.7.1 Service
unavailable; Client host [x] blocked`, mail bounces; once a route is clean again,
the operator sends what bounced once more. Route A's upstream refuses with the
RBL reply, route B's does too while "listed", reports go back through their own
route. The CLI is `relayguard.cli.main` in a thread, as in test_queue_tools.py.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
import structlog
from support import (
    UpstreamHandler,
    make_message,
    run_cli,
    running_relay,
    samples,
    send,
    strip_received,
    until,
    upstream,
)

import relayguard
from relayguard.clock import VirtualClock
from relayguard.config import load_settings

RBL_A = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked"
RBL_B = "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked"
UNKNOWN = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"
HOUR = 3600.0


@pytest.fixture
def logs():
    # The relay logs to stdout; keep it out of the CLI output that capsys reads.
    with structlog.testing.capture_logs() as captured:
        yield captured


def write_config(tmp_path: Path, a: int, b: int, n: int, extra: str = "") -> Path:
    path = tmp_path / "relayguard.toml"
    path.write_text(
        textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        hostname = "relay.test"
        spool = "{tmp_path / "spool"}"

        [queue]
        keep_bounced = "72h"

        [ndr]
        route = "ndr"

        [[route]]
        name = "A"
        host = "127.0.0.1"
        port = {a}

        [[route]]
        name = "B"
        host = "127.0.0.1"
        port = {b}

        [[route]]
        name = "ndr"
        host = "127.0.0.1"
        port = {n}
        ndr_only = true
        """)
        + textwrap.dedent(extra)
    )
    return path


def route_a() -> UpstreamHandler:
    return UpstreamHandler(
        on_rcpt=lambda peer, rcpt: UNKNOWN if rcpt.startswith("gone@") else RBL_A
    )


async def test_resend_through_the_clean_route_after_a_listing_on_both(
    tmp_path: Path, capsys, logs
) -> None:
    listed = {"B": True}
    b_handler = UpstreamHandler(on_rcpt=lambda peer, rcpt: RBL_B if listed["B"] else None)
    clock = VirtualClock()
    async with upstream(route_a()) as a, upstream(b_handler) as b, upstream() as reports:
        metrics = '[metrics]\nlisten = "127.0.0.1:0"\n'
        config = write_config(tmp_path, a.port, b.port, reports.port, metrics)
        async with running_relay(load_settings(config), clock) as relay:
            t0 = clock.now()
            unknown = make_message(2)
            await send(relay.address, "s@example.org", ["gone@example.net"], unknown)
            original = make_message(1, body="Please read this.\r\n")
            await send(relay.address, "s@example.org", ["r@example.com"], original)
            # Both egresses listed: the default policy keeps the mail for 48 h, then
            # bounces it with the RBL reply.
            await clock.run_to(
                t0 + 49 * HOUR, settle=0.002, busy=lambda: relay.manager.in_flight > 0
            )
            ndrs = await reports.wait_for(2)
            await until(lambda: relay.manager.in_flight == 0)
            assert await relay.spool.messages() == []
            assert {r.rcpt_tos[0] for r in ndrs} == {"s@example.org"}
            about = {str(r.message["In-Reply-To"]): r.content.decode() for r in ndrs}
            rbl_ndr, unknown_ndr = about["<msg-1@test.example>"], about["<msg-2@test.example>"]
            assert "Diagnostic-Code: smtp; 554 5.7.1 Service unavailable;" in rbl_ndr
            assert "Diagnostic-Code: smtp; 550 5.1.1" in unknown_ndr

            # One copy kept: the RBL bounce; not the unknown user.
            code, out, _ = await run_cli(capsys, config, "queue", "list", "--kept", "--json")
            assert code == 0
            [copy] = json.loads(out)
            assert copy["state"] == "kept"
            assert copy["message_id"] == "<msg-1@test.example>"
            [rcpt] = copy["recipients"]
            assert (rcpt["address"], rcpt["category"], rcpt["resendable"]) == (
                "r@example.com",
                "rbl_block",
                True,
            )
            assert copy["until"] - copy["kept_at"] == 72 * HOUR
            assert t0 + 48 * HOUR <= copy["kept_at"] <= clock.now()  # kept when it bounced
            code, out, _ = await run_cli(capsys, config, "queue", "list")
            assert out.strip() == "Queue is empty"  # a kept copy is not queued
            # Nor counted as queued in the metrics: it has gauges of its own.
            assert relay.metrics is not None
            await relay.metrics.refresh()
            m = samples(relay.observer.exposition()[0].decode())
            assert {
                state: m[f'relayguard_queue_messages{{state="{state}"}}']
                for state in ("active", "deferred", "held")
            } == {"active": 0, "deferred": 0, "held": 0}
            assert (m["relayguard_kept_messages"], m["relayguard_kept_bytes"]) == (1, copy["size"])
            [kept_event] = [e for e in logs if e["event"] == "bounced_copy_kept"]
            assert kept_event["queue_id"] == copy["queue_id"]

            # B is delisted. Names that are not mail routes are refused.
            listed["B"] = False
            code, _, err = await run_cli(capsys, config, "queue", "resend", "--route", "nosuch")
            assert (code, err.strip()) == (2, "relayguard: no route 'nosuch' (routes: A, B, ndr)")
            code, _, err = await run_cli(capsys, config, "queue", "resend", "--route", "ndr")
            assert code == 2
            assert "route 'ndr' carries only reports (ndr_only = true)" in err
            code, _, err = await run_cli(capsys, config, "queue", "resend", "--since", "a while")
            assert code == 2
            assert "--since: expected a duration like '90s'" in err

            # A dry run says what would go, and changes nothing.
            code, out, _ = await run_cli(
                capsys, config, "queue", "resend", "--route", "B", "--dry-run"
            )
            assert code == 0
            lines = out.splitlines()
            assert lines[0] == (
                "resend: would queue 1 message(s), 1 recipient(s) through route B "
                "(dry run: nothing changed)"
            )
            assert lines[1] == f"  {copy['queue_id']} <s@example.org>"
            # The last reply, from whichever listed route the jittered retries tried last.
            assert lines[2].startswith(
                (
                    f"    r@example.com: {RBL_A} [rbl_block, route A, bounced",
                    f"    r@example.com: {RBL_B} [rbl_block, route B, bounced",
                )
            ), lines[2]
            await asyncio.sleep(0.2)
            assert b.received == []
            assert await relay.spool.messages() == []
            assert [k.resent for k in await relay.spool.kept()] == [frozenset()]

            # B may still be suspended for example.com since its last refusal (5-10 min):
            # the operator who knows it is clean lifts that first.
            code, _, _ = await run_cli(capsys, config, "routes", "resume", "B")
            assert code == 0
            assert relay.manager.routes.suspension("B", "example.com", clock.now()) is None
            a_connections = len(a.handler.connections)
            code, out, _ = await run_cli(
                capsys, config, "queue", "resend", "--route", "B", "--since", "24h"
            )
            assert code == 0
            lines = out.splitlines()
            assert lines[0] == "resend: queued 1 message(s), 1 recipient(s) through route B"
            assert lines[1].startswith(f"  {copy['queue_id']} as ")
            new_id = lines[1].split()[2]
            assert new_id != copy["queue_id"]

            # The running relay delivers it at once, through B only, as the sender sent it.
            [got] = await b.wait_for(1)
            assert (got.mail_from, got.rcpt_tos) == ("s@example.org", ["r@example.com"])
            assert strip_received(got.content) == original
            await until(lambda: relay.manager.in_flight == 0)
            assert len(a.handler.connections) == a_connections
            assert await relay.spool.messages() == []
            [resent] = [e for e in logs if e["event"] == "resent"]
            assert (resent["queue_id"], resent["kept_queue_id"], resent["route"]) == (
                new_id,
                copy["queue_id"],
                "B",
            )
            [delivered] = [e for e in logs if e["event"] == "delivered" and e["queue_id"] == new_id]
            assert delivered["route"] == "B"

            # Not twice.
            code, out, _ = await run_cli(capsys, config, "queue", "resend", "--route", "B")
            assert code == 0
            assert out.strip() == (
                "resend: queued 0 message(s), 0 recipient(s) through route B; "
                "no kept copy has a recipient left to resend that matches"
            )
            code, out, _ = await run_cli(capsys, config, "queue", "list", "--kept")
            assert "r@example.com (failed) 554 5.7.1" in out
            assert out.splitlines()[2].endswith("-- rbl_block: resent")
            await asyncio.sleep(0.2)
            assert len(b.received) == 1

            # The window ends: the copy is dropped, on the relay's clock.
            [kept] = await relay.spool.kept()
            await clock.run_to(kept.until - 60)
            assert len(await relay.spool.kept()) == 1
            await clock.run_to(kept.until + 1)
            async with asyncio.timeout(10):
                while await relay.spool.kept():
                    await asyncio.sleep(0.02)
            code, out, _ = await run_cli(capsys, config, "queue", "list", "--kept")
            assert out.strip() == "No kept copies"
            assert [e["copies"] for e in logs if e["event"] == "kept_copies_dropped"] == [1]


async def test_resend_on_a_stopped_relay_goes_out_at_the_next_start(
    tmp_path: Path, capsys, logs
) -> None:
    # Here the RBL reply bounces at once: a local rule before the default pack, and no
    # second opinion.
    local = tmp_path / "local.toml"
    local.write_text(
        '[[rule]]\nid = "rbl-bounces-here"\nmatch = { category = "rbl_block" }\naction = "bounce"\n'
    )
    default = Path(relayguard.__file__).parent / "policies" / "default.toml"
    policy = f"""
        [policy]
        files = ["{local}", "{default}"]
        second_opinions = 0
    """
    async with upstream(route_a()) as a, upstream() as b, upstream() as reports:
        config = write_config(tmp_path, a.port, b.port, reports.port, policy)
        async with running_relay(load_settings(config)) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(1))
            [ndr] = await reports.wait_for(1)
            text = ndr.content.decode()
            assert "Diagnostic-Code: smtp; 554 5.7.1 Service unavailable;" in text
            assert "Decided by policy rule: rbl-bounces-here" in text
            await until(lambda: relay.manager.in_flight == 0)
            [kept] = await relay.spool.kept()
        assert b.received == []

        # Stopped: the CLI works on the spool itself.
        code, out, _ = await run_cli(capsys, config, "queue", "resend", "--dry-run", "--json")
        assert code == 0
        dry = json.loads(out)
        assert (dry["dry_run"], dry["messages"], dry["recipients"]) == (True, 1, 1)
        assert dry["resent"][0]["queue_id"] is None
        code, out, _ = await run_cli(capsys, config, "queue", "list", "--json")
        assert json.loads(out) == []
        code, out, _ = await run_cli(
            capsys, config, "queue", "resend", "--route", "B", "--category", "rbl_block", "--json"
        )
        assert code == 0
        done = json.loads(out)
        assert (done["dry_run"], done["messages"], done["recipients"], done["route"]) == (
            False,
            1,
            1,
            "B",
        )
        [resent] = done["resent"]
        assert resent["kept_id"] == kept.message.queue_id
        assert resent["recipients"][0]["address"] == "r@example.com"
        code, out, _ = await run_cli(capsys, config, "queue", "list", "--json")
        [queued] = json.loads(out)
        assert queued["queue_id"] == resent["queue_id"]
        assert [r["address"] for r in queued["recipients"]] == ["r@example.com"]
        code, out, _ = await run_cli(capsys, config, "queue", "show", resent["queue_id"])
        assert "routes=B" in out

        # Started again: it goes out through B.
        async with running_relay(load_settings(config)) as relay:
            [got] = await b.wait_for(1)
            assert (got.mail_from, got.rcpt_tos) == ("s@example.org", ["r@example.com"])
            assert strip_received(got.content) == make_message(1)
            await until(lambda: relay.manager.in_flight == 0)
            code, out, _ = await run_cli(capsys, config, "queue", "resend", "--json")
            assert (code, json.loads(out)["messages"]) == (0, 0)
        assert len(a.received) == 0
