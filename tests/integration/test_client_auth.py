"""Client AUTH on the listener (RFC 4954) over real sockets: offered only over TLS, an
authenticated client relays from outside allowed_networks, failed logins lock an
address out, outsiders have a cap of their own, and implicit TLS (RFC 8314)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog
import trustme
from support import config_head, make_message, running_relay, upstream

from relayguard.client_logins import hash_password
from relayguard.clock import SystemClock
from relayguard.config import ConfigError, Settings, load_settings, load_settings_text

PASSWORD = "correct horse battery"
OUTSIDER = "127.0.0.2"  # Linux routes all of 127/8 to lo: another host to the listener


class ShiftedClock(SystemClock):
    """The system clock, moved forward by the test: a lockout window passes at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def _write_config(
    tmp_path: Path, up_port: int, extra: str = "", users: dict[str, str] | None = None
) -> Path:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    users_file = tmp_path / "users"
    # ln=10: a test needs a real scrypt hash, not the production cost of each check.
    users_file.write_text(
        "".join(
            f"{u}:{hash_password(p, ln=10)}\n" for u, p in (users or {"alice": PASSWORD}).items()
        )
    )
    users_file.chmod(0o600)
    server = (
        f'tls_cert_file = "{tmp_path / "relay.crt"}"\ntls_key_file = "{tmp_path / "relay.key"}"\n'
        f'auth_users_file = "{users_file}"\nallowed_networks = ["127.0.0.1/32"]\n{extra}\n'
    )
    path = tmp_path / "relayguard.toml"
    path.write_text(
        config_head(tmp_path).replace("[dns]", server + "[dns]", 1)
        + f'\n[[route]]\nname = "p"\nhost = "127.0.0.1"\nport = {up_port}\n'
    )
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return path


def _trust(tmp_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))


def _client(
    tmp_path: Path, address: tuple[str, int], source: str = OUTSIDER, **kw: Any
) -> aiosmtplib.SMTP:
    kw.setdefault("start_tls", True)
    return aiosmtplib.SMTP(
        hostname=address[0],
        port=address[1],
        tls_context=_trust(tmp_path),
        source_address=(source, 0),
        timeout=10,
        **kw,
    )


async def _log_in(
    client: aiosmtplib.SMTP, login: str, password: str, mechanism: str = "PLAIN"
) -> aiosmtplib.SMTPResponse:
    """One AUTH exchange (aiosmtplib's login() tries every mechanism in turn: two
    failures for one wrong password), after the EHLO that follows STARTTLS."""
    if client.is_ehlo_or_helo_needed:
        await client.ehlo()
    if mechanism == "LOGIN":
        return await client.auth_login(login, password)
    return await client.auth_plain(login, password)


async def _lines(reader: asyncio.StreamReader) -> list[str]:
    """One reply, all its lines."""
    out = []
    while True:
        line = (await asyncio.wait_for(reader.readline(), 5)).decode()
        out.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return out


async def test_auth_is_offered_only_after_starttls(tmp_path: Path) -> None:
    async with upstream() as up:
        settings = load_settings(_write_config(tmp_path, up.port))
        async with running_relay(settings) as relay:
            reader, writer = await asyncio.open_connection(*relay.address)
            greeting = await _lines(reader)
            writer.write(b"EHLO client.test\r\n")
            clear_ehlo = await _lines(reader)
            writer.write(
                b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()) + b"\r\n"
            )
            clear_auth = await _lines(reader)
            writer.close()
            async with _client(tmp_path, relay.address) as client:
                await client.ehlo()  # the EHLO after STARTTLS (RFC 3207 4.2)
                tls_ehlo = client.esmtp_extensions
    assert greeting[0].startswith("220 ")
    assert not any("AUTH" in line for line in clear_ehlo), clear_ehlo
    assert clear_auth[0].startswith("538 5.7.11 "), clear_auth
    assert set(tls_ehlo["auth"].split()) == {"LOGIN", "PLAIN"}, tls_ehlo


async def test_a_logged_in_client_relays_from_outside_the_allowed_networks(
    tmp_path: Path,
) -> None:
    async with upstream() as up:
        settings = load_settings(_write_config(tmp_path, up.port))
        async with running_relay(settings) as relay:
            async with _client(tmp_path, relay.address) as client:
                # Before logging in, an outsider is a stranger: no relaying.
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                    await client.sendmail("s@example.org", ["r@example.com"], make_message(1))
                await client.rset()
                login = await _log_in(client, "alice", PASSWORD)
                _, reply = await client.sendmail(
                    "s@example.org", ["r@example.com"], make_message(2)
                )
            async with _client(tmp_path, relay.address) as client:
                await _log_in(client, "alice", PASSWORD, "LOGIN")  # the other mechanism
                await client.sendmail("s@example.org", ["r@example.com"], make_message(3))
            arrived = await up.wait_for(2)
    [(code, text)] = [(r.code, r.message) for r in refused.value.recipients]
    assert (code, text.split(" ")[0]) == (554, "5.7.1"), text
    assert (login.code, login.message.split(" ")[0]) == (235, "2.7.0")
    assert "queued" in reply
    assert sorted(m.content.count(b"Message-ID: <msg-2@") for m in arrived) == [0, 1]
    received = next(m.content for m in arrived if b"<msg-2@" in m.content)
    assert b"with ESMTPSA" in received  # RFC 3848: TLS and AUTH both recorded


async def test_failed_logins_lock_the_address_out_and_the_password_is_never_logged(
    tmp_path: Path,
) -> None:
    clock = ShiftedClock()
    extra = 'auth_failure_limit = 3\nauth_failure_window = "10m"'
    async with upstream() as up:
        settings = load_settings(_write_config(tmp_path, up.port, extra))
        with structlog.testing.capture_logs() as events:
            async with running_relay(settings, clock=clock) as relay:
                answers = []
                async with _client(tmp_path, relay.address, "127.0.0.3") as client:
                    for attempt in range(3):
                        try:
                            await _log_in(client, "alice", f"guess {attempt}")
                        except aiosmtplib.SMTPAuthenticationError as exc:
                            answers.append((exc.code, exc.message))
                        except aiosmtplib.SMTPServerDisconnected:
                            answers.append((0, "disconnected"))
                # Locked out at connect now, even with the right password.
                with pytest.raises(aiosmtplib.SMTPConnectError) as at_connect:
                    async with _client(tmp_path, relay.address, "127.0.0.3") as client:
                        pass
                # Another address is not locked out; the allowed network never is.
                async with _client(tmp_path, relay.address, "127.0.0.4") as client:
                    await _log_in(client, "alice", PASSWORD)
                    await client.sendmail("s@example.org", ["r@example.com"], make_message(1))
                async with _client(tmp_path, relay.address, "127.0.0.1") as client:
                    for _ in range(5):
                        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                            await _log_in(client, "alice", "wrong")
                    await client.sendmail("s@example.org", ["r@example.com"], make_message(2))
                # The window passes: the address may try again.
                clock.offset += 601
                async with _client(tmp_path, relay.address, "127.0.0.3") as client:
                    await _log_in(client, "alice", PASSWORD)
                    await client.sendmail("s@example.org", ["r@example.com"], make_message(3))
                arrived = await up.wait_for(3)
    assert [code for code, _ in answers[:2]] == [535, 535], answers
    assert all(text.startswith("5.7.8 ") for _, text in answers[:2]), answers
    assert (answers[2][0], answers[2][1][:6]) == (421, "4.7.0 "), answers
    assert (at_connect.value.code, "4.7.0" in at_connect.value.message) == (421, True)
    assert len(arrived) == 3
    failed = [e for e in events if e["event"] == "auth_failed" and e["client"] == "127.0.0.3"]
    assert [e["failures"] for e in failed] == [1, 2, 3]
    assert [e["client"] for e in events if e["event"] == "auth_locked_out"] == ["127.0.0.3"]
    assert any(e["event"] == "auth_succeeded" and e["login"] == "alice" for e in events)
    logged = repr(events)
    for secret in (PASSWORD, base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()):
        assert secret not in logged
    assert "guess 0" not in logged


async def test_outsiders_share_a_cap_of_their_own(tmp_path: Path) -> None:
    extra = "max_outside_connections = 5\nmax_connections = 5"
    async with upstream() as up:
        settings = load_settings(_write_config(tmp_path, up.port, extra))
        async with running_relay(settings) as relay:
            held = [
                await asyncio.open_connection(*relay.address, local_addr=(f"127.0.0.{10 + i}", 0))
                for i in range(8)
            ]
            greetings = [(await _lines(r))[0][:10] for r, _ in held]
            # The allowed network keeps its cap: it is not shared with the outsiders.
            async with _client(tmp_path, relay.address, "127.0.0.1") as client:
                await client.sendmail("s@example.org", ["r@example.com"], make_message(1))
            for _, w in held:
                w.close()
            arrived = await up.wait_for(1)
    assert greetings.count("421 4.7.0 ") == 3, greetings
    assert all(g.startswith("220") for g in greetings if not g.startswith("421")), greetings
    assert len(arrived) == 1


async def test_implicit_tls_listener_with_auth_in_a_front_end_process(tmp_path: Path) -> None:
    async with upstream() as up:
        cfg = _write_config(tmp_path, up.port, 'tls_listen = "127.0.0.1:0"')
        async with running_relay(load_settings(cfg), config_path=cfg) as relay:
            assert relay.tls_address is not None
            async with _client(tmp_path, relay.tls_address, use_tls=True, start_tls=False) as c:
                await c.ehlo()
                extensions = dict(c.esmtp_extensions)
                await _log_in(c, "alice", PASSWORD)
                await c.sendmail("s@example.org", ["r@example.com"], make_message(1))
            # A client that does not speak TLS first gets nothing it can read as SMTP.
            reader, writer = await asyncio.open_connection(*relay.tls_address)
            writer.write(b"EHLO client.test\r\n")
            plain = await asyncio.wait_for(reader.read(100), 10)
            writer.close()
            arrived = await up.wait_for(1)
    assert "starttls" not in extensions, extensions  # already TLS
    assert set(extensions["auth"].split()) == {"LOGIN", "PLAIN"}
    assert not plain.startswith(b"220"), plain
    assert b"with ESMTPSA" in arrived[0].content


async def test_a_login_added_with_passwd_works_after_reload(tmp_path: Path) -> None:
    async with upstream() as up:
        cfg = _write_config(tmp_path, up.port)
        async with running_relay(load_settings(cfg), config_path=cfg) as relay:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                async with _client(tmp_path, relay.address) as client:
                    await _log_in(client, "bob", "bob's password")
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "relayguard", "--config", str(cfg), "passwd", "bob"],
                input="bob's password\n",
                capture_output=True,
                text=True,
                check=False,
            )
            relay.reload()
            # The front-end process reads the file on its SIGHUP, a moment later.
            async with asyncio.timeout(10):
                while True:
                    try:
                        async with _client(tmp_path, relay.address) as client:
                            await _log_in(client, "bob", "bob's password")
                            await client.sendmail(
                                "s@example.org", ["r@example.com"], make_message(1)
                            )
                        break
                    except aiosmtplib.SMTPAuthenticationError:
                        await asyncio.sleep(0.05)
            arrived = await up.wait_for(1)
    assert done.returncode == 0, done.stderr
    assert "added bob" in done.stdout
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "users").read_text().startswith("alice:$scrypt$")
    assert len(arrived) == 1


def _settings_text(tmp_path: Path, server: str) -> Settings:
    return load_settings_text(
        f'[server]\n{server.format(d=tmp_path)}\n[[route]]\nname = "p"\nhost = "h"\n',
        "relayguard.toml",
    )


@pytest.mark.parametrize(
    ("users", "mode", "tls", "message"),
    [
        ("alice:{h}\n", 0o600, False, "server.auth_users_file: expected tls_cert_file and"),
        ("alice:{h}\n", 0o640, True, "that only its owner can read"),
        ("# only a comment\n", 0o600, True, "lists none"),
        ("alice:{h}\nbob:plain-text\n", 0o600, True, "line 2 (bob): expected a scrypt hash"),
        ("alice:{h}\nalice:{h}\n", 0o600, True, "line 2: 'alice' is listed twice"),
        ("alice {h}\n", 0o600, True, "line 1: expected login:hash"),
    ],
)
def test_bad_users_files_name_the_key_and_the_line(
    tmp_path: Path, users: str, mode: int, tls: bool, message: str
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    (tmp_path / "users").write_text(users.format(h=hash_password("x", ln=4)))
    (tmp_path / "users").chmod(mode)
    server = 'auth_users_file = "{d}/users"'
    if tls:
        server += '\ntls_cert_file = "{d}/relay.crt"\ntls_key_file = "{d}/relay.key"'
    with pytest.raises(ConfigError) as caught:
        _settings_text(tmp_path, server)
    assert message in str(caught.value)
    assert str(caught.value).startswith("relayguard.toml: server.auth_users_file: ")
