"""A hypothesis state machine that speaks random and malformed SMTP to a real listener.

Whatever it sends, the relay lives, every reply is well formed with an enhanced code,
no internal error surfaces as a 5xx, and the spool holds exactly the messages that
were answered 250 at the end of DATA: none without a 250, none twice."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support import free_port, relay_settings, running_relay

_REPLY_LINE = re.compile(rb"[2-5][0-9]{2}[ -]")
_ENHANCED = re.compile(rb"[2-5][0-9]{2}[ -][245]\.[0-9]{1,3}\.[0-9]{1,3}( |$)")
# aiosmtpd's own answer to an exception in a handler: must never reach a client.
_PYTHON_ERROR = re.compile(rb"Error: \(|Traceback|Exception")

ADDRESSES = [
    "<r@example.com>",
    "<>",
    "<a@b>",
    "<@route:r@example.com>",
    "<r@[192.0.2.1]>",
    "<ü@exämple.com>",
    "<" + "x" * 300 + "@example.com>",
    "r@example.com",
    "<r@example.com",
    '<"quoted local"@example.com>',
]
PARAMS = [
    "",
    " SIZE=100",
    " SIZE=x",
    " BODY=8BITMIME",
    " BODY=BINARYMIME",
    " SMTPUTF8",
    " RET=HDRS",
    " ENVID=+ZZ",
    " NOTIFY=NEVER,SUCCESS",
    " ORCPT=rfc822;x@y",
    " FOO=bar",
    " =",
]
COMMANDS = [
    "EHLO client.test",
    "HELO client.test",
    "EHLO",
    "RSET",
    "NOOP",
    "VRFY r",
    "EXPN x",
    "HELP",
    "STARTTLS",
    "AUTH PLAIN AGZvbwBiYXI=",
    "BDAT 10",
    "BDAT 0 LAST",
    "BDAT x",
    "TURN",
    "MAIL",
    "RCPT",
    "DATA x",
    "mail from:<s@example.org>",
    "QUIT x",
]


class _Relay:
    """One relay for the whole machine, on an event loop in a thread of its own."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.settings = relay_settings(
            tmp,
            [{"name": "p", "host": "127.0.0.1", "port": free_port()}],
            "max_message_size = 65536",
        )
        self.relay: Any = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))
        self._thread.start()
        assert self._ready.wait(20)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_relay(self.settings) as relay:
            self.relay = relay
            self._ready.set()
            await self._stop.wait()
        # Sessions the machine left open end with the loop, not after it.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def queued(self) -> int:
        future = asyncio.run_coroutine_threadsafe(self.relay.spool.index(), self.loop)
        return len(future.result(10))

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        self.loop.close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[_Relay]:
    r = _Relay(tmp_path)
    try:
        yield r
    finally:
        r.close()


class Session(RuleBasedStateMachine):
    relay: _Relay

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[list[bytes]] = []
        self.first_queued = self.relay.queued()
        self.accepted = 0
        self.connect()

    def connect(self) -> None:
        self.sock = socket.create_connection(self.relay.relay.address, timeout=10)
        self.file = self.sock.makefile("rb")
        self.closed = False
        self.in_mail = False
        assert self.expect_reply(greeting=True).startswith(b"220")

    @precondition(lambda self: self.closed)
    @rule()
    def reconnect(self) -> None:
        """The relay hung up (QUIT, 421, too many errors): a new session."""
        self.sock.close()
        self.connect()

    # -- reading -------------------------------------------------------------------

    def expect_reply(self, *, greeting: bool = False, helo: bool = False) -> bytes:
        lines: list[bytes] = []
        while True:
            line = self.file.readline(100_000)
            if not line:
                self.closed = True
                break
            lines.append(line)
            if line[3:4] != b"-":
                break
        if lines:
            self.check(lines, exempt=greeting or helo)
            self.replies.append(lines)
        return lines[-1] if lines else b""

    def check(self, lines: list[bytes], *, exempt: bool) -> None:
        for line in lines:
            assert line.endswith(b"\r\n"), line
            assert _REPLY_LINE.match(line), line
            assert not _PYTHON_ERROR.search(line), line
        last = lines[-1]
        if last[:1] in b"45" and not exempt:
            assert _ENHANCED.match(last), last

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        if self.closed:
            return b""
        word = line.split(b" ", 1)[0].upper()
        reply = self.expect_reply(helo=word in (b"EHLO", b"HELO") and b" " in line)
        if reply.startswith((b"221", b"421")):
            self.closed = True
        return reply

    # -- rules -----------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(cmd=st.sampled_from(COMMANDS))
    def known_command(self, cmd: str) -> None:
        reply = self.command(cmd.encode())
        if cmd.upper().startswith(("RSET", "EHLO ", "HELO ")) and reply.startswith(b"250"):
            self.in_mail = False

    @precondition(lambda self: not self.closed)
    @rule()
    def valid_envelope(self) -> None:
        """A sender and a recipient that are fine, so that DATA has something to take."""
        for line in (b"EHLO client.test", b"MAIL FROM:<s@example.org>", b"RCPT TO:<r@example.com>"):
            if self.closed:
                return
            self.command(line)

    @precondition(lambda self: not self.closed)
    @rule(address=st.sampled_from(ADDRESSES), params=st.sampled_from(PARAMS))
    def mail_from(self, address: str, params: str) -> None:
        reply = self.command(f"MAIL FROM:{address}{params}".encode())
        if reply.startswith(b"250"):
            self.in_mail = True

    @precondition(lambda self: not self.closed)
    @rule(address=st.sampled_from(ADDRESSES), params=st.sampled_from(PARAMS))
    def rcpt_to(self, address: str, params: str) -> None:
        self.command(f"RCPT TO:{address}{params}".encode())

    @precondition(lambda self: not self.closed)
    @rule(junk=st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
    def garbage(self, junk: bytes) -> None:
        self.command(junk)

    @precondition(lambda self: not self.closed)
    @rule(size=st.sampled_from([600, 1100, 5000]))
    def overlong_line(self, size: int) -> None:
        self.command(b"NOOP " + b"x" * size)

    @precondition(lambda self: not self.closed)
    @rule(
        burst=st.lists(
            st.sampled_from(
                [
                    "NOOP",
                    "RSET",
                    "MAIL FROM:<s@example.org>",
                    "RCPT TO:<r@example.com>",
                    "VRFY x",
                    "BOGUS",
                ]
            ),
            min_size=2,
            max_size=6,
        )
    )
    def pipelined(self, burst: list[str]) -> None:
        self.send(b"".join(c.encode() + b"\r\n" for c in burst))
        for c in burst:
            if self.closed:
                return
            reply = self.expect_reply()
            if c == "RSET" and reply.startswith(b"250"):
                self.in_mail = False
            elif c.startswith("MAIL") and reply.startswith(b"250"):
                self.in_mail = True

    @precondition(lambda self: not self.closed)
    @rule(
        body=st.lists(
            st.sampled_from(
                [
                    b"Subject: fuzz",
                    b"",
                    b"text",
                    b"..dot",
                    b"bare\nLF",
                    b"bare\rCR",
                    b"nul\0byte",
                    b"8bit \xc3\xa9",
                    b"x" * 1200,
                ]
            ),
            max_size=8,
        )
    )
    def data(self, body: list[bytes]) -> None:
        reply = self.command(b"DATA")
        if not reply.startswith(b"354"):
            return
        self.send(
            b"\r\n".join([f"Message-ID: <fuzz-{id(body)}@test>".encode(), *body]) + b"\r\n.\r\n"
        )
        if self.closed:
            return
        end = self.expect_reply()
        if end.startswith(b"250"):
            self.accepted += 1
        self.in_mail = False

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def nothing_queued_without_its_250(self) -> None:
        assert self.relay.queued() - self.first_queued == self.accepted

    def teardown(self) -> None:
        try:
            self.sock.close()
        finally:
            # The relay lives: a new client is greeted.
            with socket.create_connection(self.relay.relay.address, timeout=10) as s:
                assert s.recv(512).startswith(b"220")


def test_random_and_malformed_sessions(relay: _Relay) -> None:
    Session.relay = relay
    runner = Session.TestCase
    runner.settings = settings(
        max_examples=40,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    runner().runTest()
