"""The listener as an attacker on the network meets it: an audit tool's verdict, clients
that may not relay, and replies that leave in one piece."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trustme
from support import free_port, make_message, relay_settings, running_relay, send, upstream

from relayguard.client_logins import hash_password

EHLO = b"EHLO client.test\r\n"


def _settings(tmp_path: Path, extra: str, port: int | None = None):
    return relay_settings(
        tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": port or free_port()}], extra
    )


async def _connect_from(source: str, address: tuple[str, int]):
    """A client whose address is `source`: Linux routes all of 127/8 to lo, so a
    socket bound to 127.0.0.2 reaches a listener on 127.0.0.1 as another host."""
    return await asyncio.open_connection(*address, local_addr=(source, 0))


async def test_a_multi_line_reply_leaves_in_one_write(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path, "")) as relay:
        reader, writer = await asyncio.open_connection(*relay.address)
        assert (await reader.readline()).startswith(b"220")
        writer.write(EHLO)
        # A reader that takes the first segment for the whole reply (as nmap's does)
        # must find the last line, "250 ...", in it.
        first = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    lines = first.decode().splitlines()
    assert len(lines) > 3, first
    assert all(line.startswith("250-") for line in lines[:-1]), first
    assert lines[-1].startswith("250 "), first


async def test_clients_that_may_not_relay_do_not_fill_the_cap_of_those_that_may(
    tmp_path: Path,
) -> None:
    extra = 'allowed_networks = ["127.0.0.1/32"]\nmax_connections = 20'
    async with upstream() as up, running_relay(_settings(tmp_path, extra, up.port)) as relay:
        outsiders = [await _connect_from(f"127.0.0.{2 + i % 10}", relay.address) for i in range(60)]
        greetings = [await asyncio.wait_for(r.readline(), 5) for r, _ in outsiders]
        # Every outsider is still connected on its side while the allowed client sends.
        async with asyncio.timeout(5):
            refused, reply = await send(
                relay.address, "s@example.org", ["r@example.com"], make_message(1)
            )
        for _, w in outsiders:
            w.close()
        arrived = await up.wait_for(1)
    assert {g[:10] for g in greetings} == {b"554 5.7.1 "}
    assert refused == {}
    assert reply.startswith("2.0.0") or "Ok" in reply, reply
    assert len(arrived) == 1


def _client_auth(tmp_path: Path) -> str:
    """[server] keys that offer client AUTH (over STARTTLS), so that a client from
    outside allowed_networks gets a session instead of a refusal at connect."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('not guessable by nmap', ln=4)}\n")
    users.chmod(0o600)
    return (
        f'\ntls_cert_file = "{tmp_path / "relay.crt"}"\ntls_key_file = "{tmp_path / "relay.key"}"'
        f'\nauth_users_file = "{users}"'
    )


@pytest.mark.parametrize("with_auth", [False, True], ids=["no-auth", "auth-offered"])
def test_nmap_finds_no_open_relay(tmp_path: Path, with_auth: bool) -> None:
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap not installed (make system-deps installs it)")

    async def audit() -> tuple[str, list[object]]:
        extra = 'allowed_networks = ["192.0.2.0/24"]' + (
            _client_auth(tmp_path) if with_auth else ""
        )
        async with upstream() as up:
            async with running_relay(_settings(tmp_path, extra, up.port)) as relay:
                proc = await asyncio.create_subprocess_exec(
                    nmap,
                    "-Pn",
                    "-n",
                    "-p",
                    str(relay.address[1]),
                    "--script",
                    # "+": run it although the port is not 25/465/587.
                    "+smtp-open-relay",
                    "--script-args",
                    "smtp-open-relay.domain=example.com,smtp-open-relay.ip=192.0.2.1",
                    "127.0.0.1",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return out.decode(), list(up.received)

    out, received = asyncio.run(audit())
    assert "open" in out  # the port was scanned and found
    assert "smtp-open-relay: " in out, out  # nmap ran it and gave a verdict
    assert "Server is an open relay" not in out, out
    assert received == []


def test_bound_source_addresses_work_here() -> None:
    """The lockout test's premise: 127.0.0.2 is a usable source address."""
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.bind(("127.0.0.2", 0))
        client.connect(listener.getsockname())
        conn, peer = listener.accept()
        conn.close()
    assert peer[0] == "127.0.0.2"
