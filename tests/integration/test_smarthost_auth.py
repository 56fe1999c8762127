"""SMTP AUTH to a smarthost over real sockets: aiosmtpd upstreams with an
authenticator and a trustme certificate, on 127.0.0.1 port 0.

Every upstream logs the bytes it receives with whether they arrived encrypted, so
"was AUTH or MAIL sent, and in the clear?" is read off the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from structlog.testing import capture_logs
from support import config_head, make_message, run_cli, running_relay, send, until

from relayguard.config import RouteSettings, Secret, load_settings
from relayguard.model import Phase, Transaction
from relayguard.smtp.delivery import Delivery

USER = "relay@example.net"
PASSWORD = "s3cret-Pa55word-that-must-never-show"
WAIT = 10.0


@dataclass
class Upstream:
    """One scripted smarthost: which password it takes, and what it saw."""

    password: str = PASSWORD
    rcpt_reply: dict[str, str] = field(default_factory=dict)  # address -> refusal
    wire: list[tuple[bool, bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, user)
    delivered: list[tuple[str, list[str], bytes, bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def verbs(self, *, encrypted: bool) -> list[str]:
        data = b"".join(d for e, d in self.wire if e is encrypted)
        return [line.split(b" ", 1)[0].decode().upper() for line in data.splitlines() if line]

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = auth_data.password.decode() == self.password
        if ok:
            self.logins.append((mechanism, auth_data.login.decode()))
        # auth_data set: aiosmtpd keeps it rather than the deprecated login_data.
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_reply:
            return self.rcpt_reply[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.delivered.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
            )
        )
        self.arrived.set()
        return "250 2.0.0 Ok: queued"

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()


class AuthSMTP(SMTP):  # type: ignore[misc]
    def __init__(self, up: Upstream, **kw: Any) -> None:
        super().__init__(
            up,
            decode_data=False,
            hostname="smarthost.test",
            authenticator=up.authenticate,
            auth_required=True,
            **kw,
        )
        self.up = up

    def data_received(self, data: bytes) -> None:
        encrypted = self.session is not None and self.session.ssl is not None
        self.up.wire.append((encrypted, data))
        super().data_received(data)


@dataclass
class Certs:
    server: ssl.SSLContext
    ca_file: Path


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(server, ca_file)


@contextlib.asynccontextmanager
async def smarthost(
    up: Upstream, tls_context: ssl.SSLContext | None, *, auth_require_tls: bool = True
) -> AsyncIterator[Upstream]:
    server = await asyncio.get_running_loop().create_server(
        lambda: AuthSMTP(up, tls_context=tls_context, auth_require_tls=auth_require_tls),
        "127.0.0.1",
        0,
    )
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()


def _tx() -> Transaction:
    body = b"Subject: hi\r\nMessage-ID: <auth-1@test.example>\r\n\r\nHello.\r\n"
    return Transaction("s@example.org", [("r@example.com", ())], body)


def _route(port: int, **kw: Any) -> RouteSettings:
    return RouteSettings(
        "r",
        "127.0.0.1",
        port,
        auth_username=USER,
        auth_password=Secret(PASSWORD),
        auth_password_source="password file /etc/relayguard/r.pw",
        **kw,
    )


async def _send(route: RouteSettings) -> Any:
    d = Delivery([route], "relay.test")
    try:
        async with asyncio.timeout(WAIT):
            return await d.send("r", _tx())
    finally:
        await d.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_after_starttls_delivers_as_the_configured_user(
    certs: Certs, mechanism: str
) -> None:
    async with smarthost(Upstream(), certs.server) as up:
        route = _route(
            up.port,
            tls="required",
            tls_verify=True,
            tls_ca_file=certs.ca_file,
            auth_mechanisms=(mechanism,),
        )
        outcome = await _send(route)
    assert {r.code for r in outcome.replies.values()} == {250}
    assert outcome.tls
    assert up.logins == [(mechanism, USER)]
    assert "AUTH" not in up.verbs(encrypted=False)
    encrypted = up.verbs(encrypted=True)
    assert encrypted[:2] == ["EHLO", "AUTH"]
    assert encrypted.index("MAIL") > 1  # the envelope only after the login
    assert [d[3] for d in up.delivered] == [True]
    assert PASSWORD not in repr(route)
    assert PASSWORD not in str(route)


# The upstream takes AUTH in the clear on purpose: that is what is tested.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_no_auth_and_no_envelope_when_tls_does_not_come_up() -> None:
    """The smarthost offers no STARTTLS but would take AUTH in the clear: an
    opportunistic route with a password says neither AUTH nor MAIL FROM, and the
    reply is relayguard's own 454 in the AUTH phase."""
    async with smarthost(Upstream(), None, auth_require_tls=False) as up:
        outcome = await _send(_route(up.port, tls="opportunistic"))
    [reply] = outcome.replies.values()
    assert (reply.code, reply.enhanced, reply.phase) == (454, "4.7.0", Phase.AUTH)
    assert reply.text == "TLS not available for AUTH on route r"
    assert {"AUTH", "MAIL", "RCPT", "DATA"}.isdisjoint(up.verbs(encrypted=False))
    assert up.logins == []
    assert up.delivered == []


# The upstream takes AUTH in the clear on purpose: that is what is tested.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_over_plaintext_when_the_operator_says_so() -> None:
    async with smarthost(Upstream(), None, auth_require_tls=False) as up:
        outcome = await _send(_route(up.port, tls="none", auth_over_plaintext=True))
    assert {r.code for r in outcome.replies.values()} == {250}
    assert up.logins == [("PLAIN", USER)]


async def test_wrong_password_is_the_routes_problem(certs: Certs) -> None:
    async with smarthost(Upstream(password="another"), certs.server) as up:
        outcome = await _send(_route(up.port, tls="required", tls_ca_file=certs.ca_file))
    [reply] = outcome.replies.values()
    assert (reply.code, reply.phase) == (535, Phase.AUTH)
    assert "MAIL" not in up.verbs(encrypted=True)
    assert PASSWORD not in reply.render()


def _config(tmp_path: Path, certs: Certs, a: int, b: int) -> Path:
    password_file = tmp_path / "smarthost.pw"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    routes = "".join(
        textwrap.dedent(f"""
        [[route]]
        name = "{name}"
        host = "127.0.0.1"
        port = {port}
        tls = "required"
        tls_verify = true
        tls_ca_file = "{certs.ca_file}"
        auth_username = "{USER}"
        auth_password_file = "{password_file}"
        """)
        for name, port in (("A", a), ("B", b))
    )
    path = tmp_path / "relayguard.toml"
    path.write_text(
        config_head(tmp_path)
        + textwrap.dedent(f"""
        [ndr]
        record_file = "{tmp_path / "bounces.jsonl"}"
        """)
        + routes
    )
    return path


async def test_refused_login_suspends_the_route_and_the_next_one_delivers(
    tmp_path: Path, certs: Certs, capsys: Any
) -> None:
    """Route A's smarthost refuses our password: A is suspended for every destination
    and the message goes through B in the same round, with no NDR for it. A recipient
    B refuses gets the one NDR, and neither it, the JSON record, the logs nor
    `routes` show the password."""
    rejected = "nobody@example.com"
    b_up = Upstream(rcpt_reply={rejected: "550 5.1.1 <nobody@example.com>: no such user"})
    async with (
        smarthost(Upstream(password="stale"), certs.server) as a_up,
        smarthost(b_up, certs.server) as b_up,
    ):
        config = _config(tmp_path, certs, a_up.port, b_up.port)
        with capture_logs() as logs:
            async with running_relay(load_settings(config)) as relay:
                await send(
                    relay.address,
                    "s@example.org",
                    ["ok@example.com", rejected],
                    make_message(1, to="ok@example.com"),
                )
                await b_up.wait_for(2)  # the message, then the NDR for `rejected`
                await until(lambda: not relay.manager.delivering)
                now = relay.clock.now()
                suspension = relay.manager.routes.suspension("A", "example.com", now)
                assert suspension is not None
                assert suspension.rule == "route-refuses-us"
                assert relay.manager.routes.suspension("A", "elsewhere.example", now)
                code, routes_out, _ = await run_cli(capsys, config, "routes")
                _, routes_json, _ = await run_cli(capsys, config, "routes", "--json")

    assert code == 0
    assert f"auth: {USER} (password file {tmp_path / 'smarthost.pw'})" in routes_out
    assert json.loads(routes_json)["routes"][0]["auth"].startswith(USER)
    assert a_up.logins == []
    assert a_up.delivered == []
    assert "MAIL" not in a_up.verbs(encrypted=True)
    message, ndr = b_up.delivered
    assert message[:2] == ("s@example.org", ["ok@example.com"])
    assert ndr[:2] == ("<>", ["s@example.org"])
    assert b"Final-Recipient: rfc822; nobody@example.com" in ndr[2]
    assert b"rfc822; ok@example.com" not in ndr[2]  # no NDR for the refused login
    assert all(d[3] for d in b_up.delivered)  # everything over TLS
    assert b_up.logins == [("PLAIN", USER)] * len(b_up.logins)

    record = (tmp_path / "bounces.jsonl").read_text()
    for shown in (
        routes_out,
        routes_json,
        record,
        repr(logs),
        *(d[2].decode() for d in b_up.delivered),
    ):
        assert PASSWORD not in shown
