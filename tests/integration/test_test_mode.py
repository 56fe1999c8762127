"""`relayguard serve --test-mode`: real SMTP in, a capture instead of the network out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

from support import (
    config_head,
    free_port,
    make_message,
    relay_settings,
    running_relay,
    send,
    upstream,
)

from relayguard.cli import build_parser
from relayguard.cli.replay import capture_sender_for
from relayguard.clock import SystemClock
from relayguard.replay.testmode import CaptureSender, make_capture_sender

ROOT = Path(__file__).resolve().parents[2]


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_capture_instead_of_upstream(tmp_path):
    async with upstream() as up:
        settings = relay_settings(
            tmp_path,
            [
                {"name": "A", "host": "127.0.0.1", "port": up.port},
                {"name": "B", "host": "127.0.0.1", "port": up.port},
            ],
        )
        capture = CaptureSender(settings, SystemClock(), capture_dir=tmp_path / "captured")
        async with running_relay(settings, sender=capture) as relay:
            await send(
                relay.address,
                "s@example.org",
                ["r1@example.com", "r2@example.net"],
                make_message(1),
            )
            await _until(lambda: capture.count == 2 and relay.manager.in_flight == 0)
            assert await relay.spool.messages() == []  # delivered, as far as the relay knows
        assert up.handler.connections == []  # nothing left the process
        assert up.received == []
    by_rcpt = {c.recipients: c for c in capture.captured}
    assert set(by_rcpt) == {("r1@example.com",), ("r2@example.net",)}
    cap = by_rcpt[("r1@example.com",)]
    assert cap.route == "A"
    assert cap.sender == "s@example.org"
    assert b"Message-ID: <msg-1@test.example>" in cap.body
    assert cap.body.startswith(b"Received: ")  # as relayed: with the relay's Received header
    assert cap.replies["r1@example.com"].code == 250
    files = sorted((tmp_path / "captured").iterdir())
    assert len(files) == 2
    assert b"X-Relayguard-Test-Route: A (127.0.0.1:" in files[0].read_bytes()


async def test_scenario_replies_in_test_mode(tmp_path):
    scenario = tmp_path / "down.toml"
    scenario.write_text(
        textwrap.dedent("""
        [scenario]
        duration = "1d"
        [upstream]
        latency = "0"
        [[window]]
        route = "A"
        reply = "refused"
    """)
    )
    settings = relay_settings(
        tmp_path,
        [
            {"name": "A", "host": "127.0.0.1", "port": free_port()},
            {"name": "B", "host": "127.0.0.1", "port": free_port()},
        ],
    )
    capture = make_capture_sender(settings, scenario=str(scenario), seed=1, capture_dir=None)
    async with running_relay(settings, sender=capture) as relay:
        await send(relay.address, "s@example.org", ["r@example.com"], make_message(2))
        await _until(lambda: capture.count == 2 and relay.manager.in_flight == 0)
    refused, delivered = capture.captured
    assert (refused.route, refused.replies["r@example.com"].text) == (
        "A",
        f"connect to 127.0.0.1[127.0.0.1]:{settings.routes[0].port}: Connection refused",
    )
    assert delivered.route == "B"  # the fallback relay took it, as it would live


def test_serve_parser_takes_test_mode(tmp_path):
    settings = relay_settings(tmp_path, [{"name": "A", "host": "127.0.0.1", "port": 25}])
    args = build_parser().parse_args(["serve", "--test-mode", "--capture-dir", str(tmp_path)])
    assert isinstance(capture_sender_for(args, settings), CaptureSender)
    assert capture_sender_for(build_parser().parse_args(["serve"]), settings) is None


async def test_relayguard_serve_test_mode_process(tmp_path):
    port, never = free_port(), free_port()
    config = tmp_path / "relayguard.toml"
    config.write_text(
        config_head(tmp_path, f"127.0.0.1:{port}")
        + textwrap.dedent(f"""
        [[route]]
        name = "primary"
        host = "127.0.0.1"
        port = {never}
    """)
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayguard",
        "--config",
        str(config),
        "serve",
        "--test-mode",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[dict] = []

    async def read_until(event: str) -> dict:
        while True:
            line = await proc.stdout.readline()
            assert line, "relay exited early"
            if line.startswith(b"{"):
                lines.append(json.loads(line))
                if lines[-1]["event"] == event:
                    return lines[-1]

    try:
        async with asyncio.timeout(20):
            await read_until("listening")
            await send(("127.0.0.1", port), "s@example.org", ["r@example.com"], make_message(3))
            captured = await read_until("test_mode_captured")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)
    assert captured["route"] == "primary"
    assert captured["port"] == never
    assert captured["recipients"] == ["r@example.com"]
    assert captured["message_id"] == "<msg-3@test.example>"
    assert captured["replies"] == {"r@example.com": "250 2.0.0 Ok: queued"}
    assert any(x["event"] == "test_mode" for x in lines)
