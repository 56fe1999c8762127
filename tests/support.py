"""Real SMTP peers for the tests: scripted upstream servers and a relay in-process.

Everything listens on 127.0.0.x with port 0; nothing assumes a fixed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP

from relayguard.clock import Clock, SystemClock
from relayguard.config import Settings, load_settings_text
from relayguard.relay import Relay


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: str
    mail_options: list[str]
    rcpt_options: list[str]

    @property
    def message(self) -> email.message.Message:
        return email.message_from_bytes(self.content, policy=email.policy.default)

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


Script = Callable[..., "str | None"]


@dataclass
class UpstreamHandler:
    """Scripted replies. Each hook returns a reply string, or None for the default 250."""

    on_connect: Callable[[str], str | None] = lambda peer: None
    on_mail: Callable[[str, str], str | None] = lambda peer, sender: None
    on_rcpt: Callable[[str, str], str | None] = lambda peer, rcpt: None
    on_data: Callable[[str, bytes], str | None] = lambda peer, content: None
    received: list[Received] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    data_delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.on_mail(session.peer[0], address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.on_rcpt(session.peer[0], address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = session.peer[0]
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
            reply = self.on_data(peer, envelope.original_content)
        finally:
            self.concurrent -= 1
        if reply == "DROP":  # take the message, then vanish before answering the dot
            self.dropped.append(envelope.original_content)
            server.transport.abort()
            return "250 2.0.0 never sent"
        if reply:
            return reply
        # aiosmtpd keeps the null sender as "<>"
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        self.received.append(
            Received(
                sender,
                list(envelope.rcpt_tos),
                envelope.original_content,
                peer,
                list(envelope.mail_options),
                list(envelope.rcpt_options),
            )
        )
        self.arrived.set()
        return "250 2.0.0 Ok: queued"


class ScriptedSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd that can refuse at the greeting (per peer address) and accepts DSN params."""

    def __init__(
        self,
        handler: UpstreamHandler,
        *,
        dsn: bool,
        starttls: bool,
        extensions: tuple[str, ...] = (),
        **kw: Any,
    ) -> None:
        super().__init__(handler, decode_data=False, enable_SMTPUTF8=True, **kw)
        self._script = handler
        self._dsn = dsn
        self._extensions = extensions

    async def _handle_client(self) -> None:
        peer = self.session.peer[0]
        self._script.connections.append(peer)
        greeting = self._script.on_connect(peer)
        if greeting:
            await self.push(greeting)
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_EHLO(self, arg: str) -> None:
        extra = [*(["DSN"] if self._dsn else []), *self._extensions]
        if not extra:
            await super().smtp_EHLO(arg)
            return
        # Advertise more: put the extra keywords before the final "250 HELP" line.
        original_push = self.push

        async def push(status: str) -> None:
            if status == "250 HELP":
                for keyword in extra:
                    await original_push(f"250-{keyword}")
            await original_push(status)

        self.push = push
        try:
            await super().smtp_EHLO(arg)
        finally:
            del self.push

    def _getparams(self, params: Any) -> dict[str, Any]:
        result = super()._getparams(params)
        if self._dsn and result is not None:
            for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(key, None)
        return result


@dataclass
class Upstream:
    handler: UpstreamHandler
    server: asyncio.Server
    host: str
    port: int

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.handler.received) < count:
                self.handler.arrived.clear()
                await self.handler.arrived.wait()
        return self.handler.received


@contextlib.asynccontextmanager
async def upstream(
    handler: UpstreamHandler | None = None,
    *,
    host: str = "127.0.0.1",
    dsn: bool = False,
    tls_context: Any = None,
    pipelining: bool = False,
) -> AsyncIterator[Upstream]:
    h = handler or UpstreamHandler()

    def factory() -> ScriptedSMTP:
        return ScriptedSMTP(
            h,
            dsn=dsn,
            starttls=tls_context is not None,
            extensions=("PIPELINING",) if pipelining else (),
            hostname="upstream.test",
            tls_context=tls_context,
        )

    server = await asyncio.get_running_loop().create_server(factory, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Upstream(h, server, host, port)
    finally:
        server.close()


def free_port() -> int:
    """A port nothing listens on (for 'connection refused' routes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_head(tmp: Path, listen: str = "127.0.0.1:0", dns: str = "provider_keys = false") -> str:
    """The [server] table a test config file starts with (spool under `tmp`), and
    [dns]: MX lookups off unless a test that starts its own DNS server says otherwise."""
    return (
        f'[server]\nlisten = "{listen}"\nhostname = "relay.test"\nspool = "{tmp / "spool"}"\n'
        f"[dns]\n{dns}\n"
    )


def relay_settings(tmp: Path, routes: list[dict[str, Any]], extra: str = "") -> Settings:
    route_text = ""
    for r in routes:
        route_text += (
            "\n[[route]]\n"
            + "\n".join(
                f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
                for k, v in r.items()
            ).replace("'", '"')
            + "\n"
        )
    # MX lookups only where a test starts its own DNS server and says so ([dns]): the
    # rest must not depend on what the machine's resolver says of example.com.
    dns_off = "" if "[dns]" in extra else "[dns]\nprovider_keys = false\n"
    text = (
        textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        hostname = "relay.test"
        spool = "{tmp / "spool"}"
        {extra}
    """)
        + dns_off
        + route_text
    )
    return load_settings_text(text, "test.toml")


@contextlib.asynccontextmanager
async def running_relay(
    settings: Settings, clock: Clock | None = None, **kw: Any
) -> AsyncIterator[Relay]:
    relay = Relay(settings, clock=clock or SystemClock(), **kw)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop(grace=2)


def make_message(
    n: int = 0,
    *,
    to: str = "rcpt@example.com",
    sender: str = "sender@example.org",
    body: str = "Hello.\r\n",
    extra_headers: str = "",
) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: test {n}\r\n"
        f"Message-ID: <msg-{n}@test.example>\r\n{extra_headers}\r\n{body}"
    ).encode()


async def send(
    relay_address: tuple[str, int],
    sender: str,
    recipients: list[str],
    content: bytes,
    *,
    mail_options: list[str] | None = None,
    rcpt_options: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Send through the relay over SMTP; returns (refused recipients, final reply)."""
    host, port = relay_address
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False) as client:
        return await client.sendmail(
            sender,
            recipients,
            content,
            mail_options=mail_options or [],
            rcpt_options=rcpt_options or [],
        )


async def raw_session(
    address: tuple[str, int], items: list[bytes], *, timeout: float = 5.0
) -> list[str]:
    """Speak SMTP by hand: after the greeting and after each item, read one reply.

    An item may be a command line or a whole DATA body with its final dot.
    Returns the replies (multi-line ones joined by newlines), greeting first.
    """
    reader, writer = await asyncio.open_connection(*address)
    replies: list[str] = []

    async def read_reply() -> None:
        lines = []
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                break
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        replies.append("\n".join(lines))

    await read_reply()
    for item in items:
        writer.write(item)
        await writer.drain()
        await read_reply()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return replies


def strip_received(content: bytes) -> bytes:
    """The message without the Received header relayguard put on top."""
    assert content.startswith(b"Received: ")
    end = 0
    while True:
        end = content.index(b"\r\n", end) + 2
        if content[end : end + 1] not in (b"\t", b" "):
            return content[end:]


def _cli(argv: list[str]) -> int:
    from relayguard.cli import main  # noqa: PLC0415 - only the CLI tests need it

    try:
        return main(argv)
    except SystemExit as exc:  # argparse refusing the command line
        return int(exc.code or 0)


async def run_cli(capsys: Any, config: Path, *argv: str) -> tuple[int, str, str]:
    """Run the CLI as an operator would, in a thread (it may talk to a relay on this
    event loop through its control socket); returns (exit status, stdout, stderr)."""
    code = await asyncio.to_thread(_cli, ["--config", str(config), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll observable state (real time) until it holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def samples(exposition: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
