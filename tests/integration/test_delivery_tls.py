"""STARTTLS in delivery over real sockets: a failure stays with its connection, and a
route that requires TLS never says MAIL, RCPT or DATA in the clear.

The upstream is aiosmtpd with a scripted STARTTLS. It logs every byte it receives
together with whether it arrived encrypted, so "what did the peer see in plaintext"
is read off the wire rather than off our own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP

from relayguard.config import RouteSettings
from relayguard.model import Phase, Transaction
from relayguard.smtp.delivery import Delivery

# What a client may say in plaintext before TLS is up (RFC 3207), and nothing else.
BEFORE_TLS = {"EHLO", "HELO", "STARTTLS", "QUIT", "NOOP", "RSET"}
WAIT = 10.0  # bound on every scripted wait: a broken ordering fails, never hangs


@dataclass
class Conn:
    """What one upstream connection saw: (encrypted, bytes) in arrival order."""

    index: int
    wire: list[tuple[bool, bytes]] = field(default_factory=list)
    delivered_encrypted: list[bool] = field(default_factory=list)

    def verbs(self, *, encrypted: bool) -> list[str]:
        data = b"".join(d for e, d in self.wire if e is encrypted)
        return [line.split(b" ", 1)[0].decode().upper() for line in data.splitlines() if line]


Hook = Callable[[Conn], Awaitable[None]]


async def _nothing(conn: Conn) -> None:
    return None


@dataclass
class Script:
    """The upstream's behaviour per connection. `starttls` answers "ok", "refuse"
    (454, the session goes on in plaintext), "garbage" (220, then bytes that are
    not a TLS handshake, then close) or "drop" (220, then close)."""

    starttls: Callable[[Conn], Awaitable[str]]
    before_greeting: Hook = _nothing
    before_plain_ehlo: Hook = _nothing
    conns: list[Conn] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self) -> None:
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def handle_DATA(self, server: TlsScriptedSMTP, session: Any, envelope: Any) -> str:
        server.conn.delivered_encrypted.append(session.ssl is not None)
        self.note()
        return "250 2.0.0 Ok: queued"

    @property
    def delivered(self) -> int:
        return sum(len(c.delivered_encrypted) for c in self.conns)


async def _ok(conn: Conn) -> str:
    return "ok"


class TlsScriptedSMTP(SMTP):  # type: ignore[misc]
    def __init__(self, script: Script, **kw: Any) -> None:
        super().__init__(script, decode_data=False, hostname="upstream.test", **kw)
        self.script = script
        self.conn = Conn(len(script.conns))
        script.conns.append(self.conn)
        script.note()

    def data_received(self, data: bytes) -> None:
        # Called with plaintext bytes before STARTTLS and with decrypted ones after.
        encrypted = self.session is not None and self.session.ssl is not None
        self.conn.wire.append((encrypted, data))
        self.script.note()
        super().data_received(data)

    async def _handle_client(self) -> None:
        await self.script.before_greeting(self.conn)
        await super()._handle_client()

    async def smtp_EHLO(self, arg: str) -> None:
        if self.session is not None and self.session.ssl is None:
            await self.script.before_plain_ehlo(self.conn)
        await super().smtp_EHLO(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        action = await self.script.starttls(self.conn)
        if action == "refuse":
            await self.push("454 4.7.0 TLS not available due to temporary reason")
        elif action == "garbage":
            await self.push("220 2.0.0 Ready to start TLS")
            self._writer.write(b"this is not a TLS server hello\r\n")
            self.transport.close()
        elif action == "drop":
            await self.push("220 2.0.0 Ready to start TLS")
            self.transport.close()
        else:
            await super().smtp_STARTTLS(arg)


@dataclass
class Certs:
    server: ssl.SSLContext
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the server's certificate


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file, other_ca_file = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other.cert_pem.write_to_path(str(other_ca_file))
    return Certs(server, ca_file, other_ca_file)


@contextlib.asynccontextmanager
async def tls_upstream(script: Script, tls_context: ssl.SSLContext | None) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(
        lambda: TlsScriptedSMTP(script, tls_context=tls_context), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def delivery(route: RouteSettings) -> AsyncIterator[Delivery]:
    d = Delivery([route], "relay.test")
    try:
        yield d
    finally:
        await d.close()


def _tx(i: int) -> Transaction:
    body = f"Subject: {i}\r\nMessage-ID: <tls-{i}@test.example>\r\n\r\nHello.\r\n".encode()
    return Transaction(
        f"s{i}@example.org", [(f"r{i}@example.com", ()), ("x@example.com", ())], body
    )


async def test_one_connections_failed_handshake_leaves_the_others_on_tls(certs: Certs) -> None:
    """The first connection's handshake breaks and it falls back to plaintext; while that
    fallback is still opening, the route's other connections reach their STARTTLS
    decision, and every one of them still encrypts."""
    others = 4
    initial = others + 1  # the victim is connection 0; its fallback is connection `initial`
    script: Script

    async def starttls(conn: Conn) -> str:
        if conn.index == 0:
            await script.until(lambda: len(script.conns) >= initial)
            return "garbage"
        return "ok"

    async def before_plain_ehlo(conn: Conn) -> None:
        if 1 <= conn.index < initial:
            # Answer only once the fallback connection exists: the victim's fallback
            # is under way from then on, for as long as its greeting is held.
            await script.until(lambda: len(script.conns) > initial)

    def decided(conn: Conn) -> bool:
        return bool({"STARTTLS", "MAIL"} & set(conn.verbs(encrypted=False)))

    async def before_greeting(conn: Conn) -> None:
        if conn.index == initial:
            await script.until(lambda: all(decided(c) for c in script.conns[1:initial]))

    script = Script(starttls, before_greeting, before_plain_ehlo)
    async with tls_upstream(script, certs.server) as port:
        route = RouteSettings("r", "127.0.0.1", port, tls="opportunistic")
        async with delivery(route) as d:
            async with asyncio.timeout(WAIT * 3):
                outcomes = await asyncio.gather(*(d.send("r", _tx(i)) for i in range(initial)))
            assert d.routes["r"].route is route  # never swapped, not even for a moment

    assert len(script.conns) == initial + 1
    assert all(r.code == 250 for o in outcomes for r in o.replies.values())
    assert sorted(o.tls for o in outcomes) == [False] + [True] * others
    victim, fallback = script.conns[0], script.conns[initial]
    assert victim.verbs(encrypted=False) == ["EHLO", "STARTTLS"]
    assert victim.delivered_encrypted == []
    assert "STARTTLS" not in fallback.verbs(encrypted=False)
    assert fallback.delivered_encrypted == [False]
    for conn in script.conns[1:initial]:
        # Plaintext up to STARTTLS, the whole transaction encrypted.
        assert conn.verbs(encrypted=False) == ["EHLO", "STARTTLS"], conn.index
        assert conn.verbs(encrypted=True)[:4] == ["EHLO", "MAIL", "RCPT", "RCPT"], conn.index
        assert conn.delivered_encrypted == [True], conn.index


async def _refuse(conn: Conn) -> str:
    return "refuse"


async def _garbage(conn: Conn) -> str:
    return "garbage"


async def _drop(conn: Conn) -> str:
    return "drop"


@pytest.mark.parametrize(
    "failure",
    [
        "starttls-refused",
        "starttls-not-offered",
        "handshake-failure",
        "untrusted-cert",
        "dropped-after-220",
    ],
)
async def test_required_tls_never_sends_the_envelope_in_clear(certs: Certs, failure: str) -> None:
    starttls = {
        "starttls-refused": _refuse,
        "handshake-failure": _garbage,
        "dropped-after-220": _drop,
    }.get(failure, _ok)
    script = Script(starttls)
    server_ctx = None if failure == "starttls-not-offered" else certs.server
    ca_file = certs.other_ca_file if failure == "untrusted-cert" else certs.ca_file
    async with tls_upstream(script, server_ctx) as port:
        route = RouteSettings(
            "r", "127.0.0.1", port, tls="required", tls_verify=True, tls_ca_file=ca_file
        )
        async with delivery(route) as d, asyncio.timeout(WAIT):
            # Several at once and then one more: concurrency or a retry changes nothing.
            outcomes = await asyncio.gather(*(d.send("r", _tx(i)) for i in range(3)))
            outcomes.append(await d.send("r", _tx(3)))

    assert len(script.conns) >= 4
    for conn in script.conns:
        plain = conn.verbs(encrypted=False)
        assert set(plain) <= BEFORE_TLS, (conn.index, plain)
        assert conn.verbs(encrypted=True) == [], conn.index  # TLS never came up
        assert conn.delivered_encrypted == []
    for o in outcomes:
        assert not o.tls
        for reply in o.replies.values():
            assert 400 <= reply.code < 500, reply
            assert reply.phase is Phase.STARTTLS, reply


async def test_required_tls_with_one_failed_handshake_defers_only_that_one(certs: Certs) -> None:
    """A required route does not fall back: the connection whose handshake broke defers its
    message, the others deliver encrypted, and no connection says MAIL in the clear."""

    async def starttls(conn: Conn) -> str:
        return "garbage" if conn.index == 0 else "ok"

    script = Script(starttls)
    async with tls_upstream(script, certs.server) as port:
        route = RouteSettings(
            "r", "127.0.0.1", port, tls="required", tls_verify=True, tls_ca_file=certs.ca_file
        )
        async with delivery(route) as d, asyncio.timeout(WAIT):
            outcomes = await asyncio.gather(*(d.send("r", _tx(i)) for i in range(4)))

    codes = sorted(next(iter(o.replies.values())).code for o in outcomes)
    assert codes == [250, 250, 250, 421]
    [failed] = [o for o in outcomes if not o.tls]
    assert {r.enhanced for r in failed.replies.values()} == {"4.7.5"}
    assert len(script.conns) == 4  # no plaintext retry
    for conn in script.conns:
        assert set(conn.verbs(encrypted=False)) <= BEFORE_TLS, conn.index
    assert sorted(e for c in script.conns for e in c.delivered_encrypted) == [True] * 3


async def test_opportunistic_refused_starttls_goes_on_in_plaintext(certs: Certs) -> None:
    """A 454 to STARTTLS leaves the session usable: opportunistic TLS delivers on it in
    plaintext, on the same connection (no reconnect)."""
    script = Script(_refuse)
    async with tls_upstream(script, certs.server) as port:
        route = RouteSettings("r", "127.0.0.1", port, tls="opportunistic")
        async with delivery(route) as d, asyncio.timeout(WAIT):
            outcome = await d.send("r", _tx(0))
    assert {r.code for r in outcome.replies.values()} == {250}
    assert not outcome.tls
    [conn] = script.conns
    assert conn.verbs(encrypted=False)[:4] == ["EHLO", "STARTTLS", "MAIL", "RCPT"]
    assert conn.delivered_encrypted == [False]


async def test_another_routes_fallback_never_downgrades_a_required_route(certs: Certs) -> None:
    """Two routes at once: an opportunistic one whose smarthost breaks the handshake
    (and falls back to plaintext there), and a required one to a good TLS smarthost.
    The required route's messages still arrive over TLS, as the server's session sees."""
    broken, good = Script(_garbage), Script(_ok)
    async with (
        tls_upstream(broken, certs.server) as bad_port,
        tls_upstream(good, certs.server) as good_port,
    ):
        routes = [
            RouteSettings("opp", "127.0.0.1", bad_port, tls="opportunistic"),
            RouteSettings(
                "req",
                "127.0.0.1",
                good_port,
                tls="required",
                tls_verify=True,
                tls_ca_file=certs.ca_file,
            ),
        ]
        d = Delivery(routes, "relay.test")
        try:
            async with asyncio.timeout(WAIT):
                outcomes = await asyncio.gather(
                    *(d.send("opp" if i % 2 else "req", _tx(i)) for i in range(6))
                )
        finally:
            await d.close()
    assert all(r.code == 250 for o in outcomes for r in o.replies.values())
    assert [o.tls for o in outcomes] == [True, False] * 3
    assert sorted(e for c in good.conns for e in c.delivered_encrypted) == [True] * 3
    for conn in good.conns:
        assert set(conn.verbs(encrypted=False)) <= BEFORE_TLS, conn.index
    assert sorted(e for c in broken.conns for e in c.delivered_encrypted) == [False] * 3
