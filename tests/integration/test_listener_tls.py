"""STARTTLS on the listener (RFC 3207): offered with a certificate, required when
`require_tls` says so, and a renewed certificate taken on SIGHUP."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiosmtplib
import pytest
import trustme
from support import config_head, make_message, raw_session, running_relay, upstream

from relayguard.config import ConfigError, load_settings, load_settings_text


def _issue(ca: trustme.CA, where: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = where / "relay.crt", where / "relay.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _write_config(tmp_path: Path, up_port: int, extra: str = "") -> Path:
    cert_file, key_file = tmp_path / "relay.crt", tmp_path / "relay.key"
    path = tmp_path / "relayguard.toml"
    head = config_head(tmp_path).replace(
        "[dns]", f'tls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\n{extra}\n[dns]', 1
    )
    path.write_text(head + f'\n[[route]]\nname = "p"\nhost = "127.0.0.1"\nport = {up_port}\n')
    return path


async def _send_over_tls(address: tuple[str, int], trust: ssl.SSLContext, n: int) -> str:
    async with aiosmtplib.SMTP(
        hostname=address[0], port=address[1], start_tls=True, tls_context=trust
    ) as client:
        _, reply = await client.sendmail("s@example.org", ["r@example.com"], make_message(n))
        return reply


async def test_starttls_is_offered_and_mail_arrives_over_it(tmp_path: Path) -> None:
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with upstream() as up:
        cfg = _write_config(tmp_path, up.port)
        async with running_relay(load_settings(cfg), config_path=cfg) as relay:
            ehlo = await raw_session(relay.address, [b"EHLO client.test\r\n"])
            reply = await _send_over_tls(relay.address, _client_context(ca), 1)
            arrived = await up.wait_for(1)
    assert "250-STARTTLS" in ehlo[1]
    assert "queued" in reply
    assert b"Message-ID: <msg-1@test.example>" in arrived[0].content


async def test_require_tls_refuses_mail_in_clear(tmp_path: Path) -> None:
    ca = trustme.CA()
    _issue(ca, tmp_path)
    async with upstream() as up:
        cfg = _write_config(tmp_path, up.port, "require_tls = true")
        async with running_relay(load_settings(cfg), config_path=cfg) as relay:
            replies = await raw_session(
                relay.address, [b"EHLO client.test\r\n", b"MAIL FROM:<s@example.org>\r\n"]
            )
            reply = await _send_over_tls(relay.address, _client_context(ca), 2)
            arrived = await up.wait_for(1)
    assert replies[2].startswith("530 5.7.0 "), replies
    assert "queued" in reply
    assert len(arrived) == 1


async def test_a_renewed_certificate_is_taken_on_reload(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    _issue(old_ca, tmp_path)
    async with upstream() as up:
        cfg = _write_config(tmp_path, up.port)
        async with running_relay(load_settings(cfg), config_path=cfg) as relay:
            await _send_over_tls(relay.address, _client_context(old_ca), 3)
            _issue(new_ca, tmp_path)  # the same paths, as certbot renews them
            relay.reload()
            # The front-end process reads it on its SIGHUP, a moment later.
            async with asyncio.timeout(10):
                while True:
                    try:
                        await _send_over_tls(relay.address, _client_context(new_ca), 4)
                        break
                    except ssl.SSLCertVerificationError:
                        await asyncio.sleep(0.05)
            with pytest.raises(ssl.SSLCertVerificationError):  # the old one is gone
                await _send_over_tls(relay.address, _client_context(old_ca), 5)
            arrived = await up.wait_for(2)
    assert len(arrived) == 2


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ('tls_cert_file = "{d}/relay.crt"', "server.tls_key_file: expected both"),
        ('tls_key_file = "{d}/relay.key"', "server.tls_cert_file: expected both"),
        ("require_tls = true", "server.require_tls: expected tls_cert_file and tls_key_file"),
        (
            'tls_cert_file = "{d}/relay.key"\ntls_key_file = "{d}/relay.key"',
            "server.tls_cert_file: expected a certificate and key that load",
        ),
        (
            'tls_cert_file = "{d}/missing.crt"\ntls_key_file = "{d}/relay.key"',
            "server.tls_cert_file: expected a certificate and key that load",
        ),
    ],
)
def test_bad_listener_tls_settings_name_the_key(tmp_path: Path, server: str, message: str) -> None:
    _issue(trustme.CA(), tmp_path)
    text = f'[server]\n{server.format(d=tmp_path)}\n[[route]]\nname = "p"\nhost = "h"\n'
    with pytest.raises(ConfigError) as caught:
        load_settings_text(text, "relayguard.toml")
    assert f"relayguard.toml: {message}" in str(caught.value)
