"""SIGHUP: policies and config are re-read after validation; a bad file keeps the old ones."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import free_port, running_relay

from relayguard.config import load_settings
from relayguard.model import Phase, Reply
from relayguard.policy import RouteView, decide

LOCAL_RULE = """
[[rule]]
id = "local-hold-everything"
match = { code = "5xx" }
action = "defer"
retry_after = "7m"
"""


def _config(tmp_path: Path, policy: Path) -> Path:
    cfg = tmp_path / "relayguard.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:0"
spool = "{tmp_path / "spool"}"
[dns]
provider_keys = false

[policy]
files = ["{policy}"]

[[route]]
name = "primary"
host = "127.0.0.1"
port = {free_port()}
""")
    return cfg


def _rule_for_550(relay) -> str:
    reply = Reply(550, "5.1.1", "User unknown", Phase.RCPT, "mx")
    view = RouteView(route="primary", destination="example.com", routes=("primary",))
    return decide(
        reply, [], view, 0.0, relay.manager.policy, arrival_at=0.0, rng=random.Random(0)
    ).rule


async def test_reload_applies_good_policy_and_keeps_old_on_bad(tmp_path: Path) -> None:
    policy = tmp_path / "local.toml"
    policy.write_text(LOCAL_RULE)
    cfg = _config(tmp_path, policy)
    async with running_relay(load_settings(cfg), config_path=cfg) as relay:
        assert _rule_for_550(relay) == "local-hold-everything"
        policy.write_text(LOCAL_RULE.replace('action = "defer"', 'action = "explode"'))
        relay.reload()
        assert _rule_for_550(relay) == "local-hold-everything"  # old policy kept
        policy.write_text("# no rules: the built-ins decide\n")
        relay.reload()
        assert _rule_for_550(relay) == "builtin:5xx"


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    policy = tmp_path / "local.toml"
    policy.write_text(LOCAL_RULE)
    cfg = _config(tmp_path, policy)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relayguard", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    events: list[dict] = []

    def read_until(event: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            events.append(record)
            if record.get("event") == event:
                return record
        raise AssertionError(f"no {event!r} event; saw {[e.get('event') for e in events]}")

    try:
        read_until("listening")
        policy.write_text("[[rule]]\nid = 'broken'\naction = 'nope'\n")
        proc.send_signal(signal.SIGHUP)
        failed = read_until("reload_failed")
        assert "local.toml" in failed["error"]
        assert "nope" in failed["error"] or "action" in failed["error"]
        policy.write_text(LOCAL_RULE)
        proc.send_signal(signal.SIGHUP)
        assert read_until("reloaded")["policy_rules"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
