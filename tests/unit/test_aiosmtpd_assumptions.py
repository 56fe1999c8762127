"""What relayguard.smtp.frontend assumes about aiosmtpd's and asyncio's private parts.

`make_protocol_factory` clones one template protocol per connection instead of
running aiosmtpd's constructor, and `_read_data` raises `StreamReader._limit`
while it reads DATA. Both lean on details no public API promises, so aiosmtpd
is pinned to a minor release (pyproject.toml) and this file checks each detail
by name. When one fails after an upgrade, re-read aiosmtpd's `SMTP.__init__`
(or asyncio's StreamReader) against the factory before touching the test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import inspect
import re
import tomllib
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from packaging.requirements import Requirement
from support import raw_session, relay_settings

from relayguard.clock import SystemClock
from relayguard.queue.spool.memory import MemorySpool
from relayguard.smtp.frontend import (
    ConnectionLimits,
    RelayHandler,
    RelaySMTP,
    make_protocol_factory,
    new_protocol,
)

ROOT = Path(__file__).resolve().parents[2]

# The instance attributes aiosmtpd's constructor and ours leave on a protocol that
# has not seen a connection (asyncio.StreamReaderProtocol's own are left out: the
# factory runs that constructor for every clone). Each is one of:
CONFIG = {  # the same for every connection, and immutable or never changed
    "__ident__",
    "loop",
    "data_size_limit",
    "enable_SMTPUTF8",
    "_decode_data",
    "hostname",
    "tls_context",
    "require_starttls",
    "_timeout_duration",
    "_auth_require_tls",
    "_proxy_timeout",
    "_authenticator",
    "_auth_callback",
    "_auth_required",
    "_ehlo_hook_ver",
    "_enforce_call_limit",
    "_settings",
}
SHARED_BY_DESIGN = {  # the handler (twice: aiosmtpd's name and ours), the listener's caps
    "event_handler",
    "_limits",
    "_handler",
}
PER_CONNECTION = {  # set when the connection is made; before that, plain values
    "_timeout_handle",
    "_tls_handshake_okay",
    "_tls_protocol",
    "_original_transport",
    "session",
    "envelope",
    "transport",
    "_handler_coroutine",
    "_client",
    "_refusal",
    "_counted",
    "_outside",
    "_unchecked_login",  # an AUTH's credentials between aiosmtpd's parsing and our check
}
PER_CLONE = {  # containers: each clone needs its own
    "_smtp_methods",  # bound to the clone
    "_auth_methods",  # built-in mechanisms bound to the clone
    "_handle_hooks",  # the handler's hooks (copied, not rebound)
    "command_size_limits",  # EHLO adds to it (RelaySMTP makes it per instance)
    "_reply_lines",  # a multi-line reply's lines until its last one
}
MUTABLE = (dict, list, set, collections.deque, bytearray)


def _handler(tmp_path: Path, **server: object) -> RelayHandler:
    settings = relay_settings(tmp_path, [{"name": "p", "host": "127.0.0.1", "port": 1}])
    return RelayHandler(replace(settings.server, **server), MemorySpool(), SystemClock())


def _srp_attributes() -> set[str]:
    """What asyncio.StreamReaderProtocol's constructor sets (call with a loop running)."""

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    reader = asyncio.StreamReader()
    return set(asyncio.StreamReaderProtocol(reader, client_connected_cb=connected).__dict__)


def _aiosmtpd_pin() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [r for r in map(Requirement, project["dependencies"]) if r.name == "aiosmtpd"]
    return pin


# -- the pin --------------------------------------------------------------------------


def test_installed_aiosmtpd_is_inside_the_pinned_range() -> None:
    pin = _aiosmtpd_pin()
    installed = importlib.metadata.version("aiosmtpd")
    assert pin.specifier.contains(installed), (
        f"aiosmtpd {installed} is outside {pin}: audit make_protocol_factory, then move the pin"
    )


def test_the_pin_stops_before_the_next_minor_release() -> None:
    pin = _aiosmtpd_pin()
    assert pin.specifier.contains("1.4.6")
    assert not pin.specifier.contains("1.5.0"), str(pin)


# -- the names and shapes the factory copies -------------------------------------------


async def test_template_attributes_are_the_audited_ones(tmp_path: Path) -> None:
    template = new_protocol(_handler(tmp_path), ConnectionLimits(10, 10))
    own = set(template.__dict__) - _srp_attributes()
    audited = CONFIG | SHARED_BY_DESIGN | PER_CONNECTION | PER_CLONE
    assert own == audited, (
        f"new: {sorted(own - audited)}, gone: {sorted(audited - own)}; "
        "classify them above and check make_protocol_factory"
    )
    for name in PER_CONNECTION:
        value = template.__dict__[name]
        assert value is None or isinstance(value, bool | str), (name, value)
    for name in CONFIG:
        assert not isinstance(template.__dict__[name], MUTABLE), name
    for name in PER_CLONE:
        assert isinstance(template.__dict__[name], MUTABLE), name  # the factory copies these


async def test_method_tables_hold_what_the_factory_rebinds(tmp_path: Path) -> None:
    handler = _handler(tmp_path)
    template = new_protocol(handler, ConnectionLimits(10, 10))
    methods = template._smtp_methods
    assert {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT"} <= set(methods)
    for name, method in methods.items():
        # The factory keeps `__func__` and binds it to each clone.
        assert isinstance(method, types.MethodType), name
        assert method.__self__ is template, name
        assert method.__func__ is getattr(RelaySMTP, f"smtp_{name}"), name
    auth = template._auth_methods
    assert {"LOGIN", "PLAIN"} <= set(auth)
    for name, attr in auth.items():
        # A namedtuple (method, is_builtin): the factory uses `_replace` and both fields.
        assert attr._fields == ("method", "is_builtin"), name
        assert isinstance(attr.method, types.MethodType), name
        if attr.is_builtin:
            assert attr.method.__self__ is template, name
    hooks = template._handle_hooks
    assert {"EHLO", "RCPT", "DATA", "exception"} <= set(hooks)
    for name, hook in hooks.items():
        assert hook.__self__ is handler, name


def test_constructor_and_stream_protocol_signatures() -> None:
    """The calls the factory makes in place of aiosmtpd's constructor, and the private
    methods RelaySMTP overrides or calls."""
    srp = inspect.signature(asyncio.StreamReaderProtocol.__init__).parameters
    assert list(srp)[:2] == ["self", "stream_reader"]
    assert {"client_connected_cb", "loop"} <= set(srp)
    assert list(inspect.signature(SMTP._cb_client_connected).parameters) == [
        "self",
        "reader",
        "writer",
    ]
    assert isinstance(SMTP.line_length_limit, int)
    assert isinstance(SMTP.command_size_limit, int)
    assert isinstance(SMTP.command_size_limits, collections.defaultdict)
    expected = {
        "_handle_client": ["self"],
        "_timeout_cb": ["self"],
        "_set_post_data_state": ["self"],
        "_create_envelope": ["self"],
        "_getaddr": ["self", "arg"],
        "_strip_command_keyword": ["self", "keyword", "arg"],
        "check_helo_needed": ["self", "helo"],
        "check_auth_needed": ["self", "caller_method"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(SMTP, name)).parameters) == params, name


async def test_command_limits_are_the_protocols_own(tmp_path: Path) -> None:
    """aiosmtpd adds to command_size_limits on every EHLO (the "line-limits" session
    below shows it) and keeps it on the class, shared by every protocol without a dict
    of its own; RelaySMTP gives itself one, starting where aiosmtpd's constructor
    leaves the class's (cleared)."""
    assert "command_size_limits" in vars(SMTP)
    proto = new_protocol(_handler(tmp_path), ConnectionLimits(10, 10))
    assert proto.command_size_limits is not SMTP.command_size_limits
    assert proto.command_size_limits["MAIL"] == SMTP.command_size_limit


async def test_clones_share_nothing_mutable(tmp_path: Path) -> None:
    handler = _handler(tmp_path)
    limits = ConnectionLimits(10, 10)
    factory = make_protocol_factory(handler, limits)
    a, b = factory(), factory()
    assert type(a) is RelaySMTP
    for name, value in a.__dict__.items():
        if isinstance(value, MUTABLE):
            assert value is not b.__dict__[name], name
    assert a._stream_reader is not b._stream_reader
    assert a._stream_reader._limit == SMTP.line_length_limit
    assert a._closed is not b._closed
    for clone in (a, b):
        for name, method in clone._smtp_methods.items():
            assert method.__self__ is clone, name
        for name, attr in clone._auth_methods.items():
            if attr.is_builtin:
                assert attr.method.__self__ is clone, name
        assert clone.event_handler is handler
        assert clone._limits is limits
    assert a._handle_hooks == b._handle_hooks


# -- behaviour: a clone answers like a freshly constructed protocol --------------------

EHLO = b"EHLO client.test\r\n"
BODY = b"Subject: x\r\nMessage-ID: <m@test>\r\n\r\nHello.\r\n..dot\r\n.\r\n"
# Over the MAIL limit after one EHLO (512, +26 SIZE, +10 SMTPUTF8, +100 DSN), under 1001.
LONG_MAIL = b"MAIL FROM:<" + b"a" * 700 + b"@example.org>\r\n"
SESSIONS: dict[str, list[bytes]] = {
    "transaction": [
        EHLO,
        b"MAIL FROM:<s@example.org> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc\r\n",
        b"RCPT TO:<r@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@example.com\r\n",
        b"RCPT TO:<other@example.com>\r\n",
        b"DATA\r\n",
        BODY,
        b"MAIL FROM:<>\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
    ],
    "helo-and-errors": [
        b"MAIL FROM:<s@example.org>\r\n",
        b"HELO client.test\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"MAIL FROM:<s@example.org> SIZE=10\r\n",
        b"MAIL FROM:<s@example.org>\r\n",
        b"MAIL FROM:<s@example.org>\r\n",
        b"RCPT TO:<@a,@b:r@example.com>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA extra\r\n",
        b"QUIT\r\n",
    ],
    "other-commands": [
        EHLO,
        b"HELP\r\n",
        b"HELP MAIL\r\n",
        b"VRFY r@example.com\r\n",
        b"EXPN list\r\n",
        b"AUTH PLAIN AGFiYwBkZWY=\r\n",
        b"STARTTLS\r\n",
        b"FOO bar\r\n",
        b"EHLO\r\n",
        b"QUIT\r\n",
    ],
    "line-limits": [
        EHLO,
        LONG_MAIL,  # the MAIL limit after one EHLO: 512 + SIZE 26 + SMTPUTF8 10 + DSN 100
        b"NOOP " + b"x" * 1100 + b"\r\n",  # over the stream's line limit
        b"RSET\r\n",
        EHLO,
        EHLO,
        LONG_MAIL,  # two more EHLOs on this connection raise its limit: accepted
        b"QUIT\r\n",
    ],
    "big-data-then-commands": [
        EHLO,
        b"MAIL FROM:<s@example.org>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 300 + b".\r\n",
        b"NOOP " + b"x" * 1100 + b"\r\n",  # the DATA-sized limit must be gone again
        b"NOOP\r\n",
        b"MAIL FROM:<s@example.org>\r\n",
        b"RCPT TO:<r@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: too big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 400 + b".\r\n",
        b"NOOP " + b"x" * 1100 + b"\r\n",
        b"QUIT\r\n",
    ],
}
QUEUE_ID = re.compile(r"queued as \S+")


def _normal(replies: list[str]) -> list[str]:
    return [QUEUE_ID.sub("queued as ID", r) for r in replies]


@contextlib.asynccontextmanager
async def _serve(factory: Callable[[], RelaySMTP]) -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_clone_answers_every_session_like_a_fresh_protocol(tmp_path: Path) -> None:
    handler = _handler(tmp_path, max_message_size=350_000)
    fresh_built: list[RelaySMTP] = []
    cloned: list[RelaySMTP] = []
    clone = make_protocol_factory(handler, ConnectionLimits(100, 100))

    def fresh_factory() -> RelaySMTP:
        fresh_built.append(new_protocol(handler, ConnectionLimits(100, 100)))
        return fresh_built[-1]

    def clone_factory() -> RelaySMTP:
        cloned.append(clone())
        return cloned[-1]

    async with _serve(fresh_factory) as fresh_at, _serve(clone_factory) as clone_at:
        expected = {name: _normal(await raw_session(fresh_at, s)) for name, s in SESSIONS.items()}
        # Each session on a clone, one after another: nothing left over from the
        # sessions before (the "line-limits" one raises its own MAIL limit).
        for _ in range(2):
            for name, items in SESSIONS.items():
                assert _normal(await raw_session(clone_at, items)) == expected[name], name
        # And all at once: nothing shared between clones alive at the same time.
        names = list(SESSIONS) * 3
        got = await asyncio.gather(*(raw_session(clone_at, SESSIONS[n]) for n in names))
        for name, replies in zip(names, got, strict=True):
            assert _normal(replies) == expected[name], name
    # The sessions did what the scripts meant (so the comparison compared something).
    line_limits = expected["line-limits"]
    assert line_limits[2].startswith("500 5.5.2 Command line too long"), line_limits
    assert line_limits[3].startswith("500 5.5.2 Command line too long"), line_limits
    assert line_limits[7].startswith("250 2.1.0"), line_limits
    big = expected["big-data-then-commands"]
    assert "queued as ID" in big[5], big
    assert big[6].startswith("500 5.5.2 Command line too long"), big
    assert big[11].startswith("552 5.3.4"), big
    assert big[12].startswith("500 5.5.2 Command line too long"), big
    assert "queued as ID" in expected["transaction"][6]
    assert len(handler.spool) == 2 * (1 + 2 + 3)  # transaction + big, on each run
    # The DATA reads put the stream's limit back, on every protocol.
    for proto in fresh_built + cloned:
        assert proto._reader._limit == proto.line_length_limit


# -- StreamReader._limit ---------------------------------------------------------------


async def test_stream_reader_limit_is_read_on_every_call() -> None:
    """`_read_data` raises `_limit` for DATA and puts it back; that only works while
    StreamReader keeps the limit in `_limit` and `readuntil` reads it each call."""
    reader = asyncio.StreamReader(limit=16)
    assert reader._limit == 16
    reader.feed_data(b"a" * 40 + b".\r\n" + b"b" * 40 + b".\r\n")
    with pytest.raises(asyncio.LimitOverrunError) as exc:
        await reader.readuntil(b".\r\n")
    assert exc.value.consumed >= 0  # `_read_data` reads that much on an overrun
    reader._limit = 1 << 20
    assert await reader.readuntil(b".\r\n") == b"a" * 40 + b".\r\n"
    reader._limit = 16
    with pytest.raises(asyncio.LimitOverrunError):
        await reader.readuntil(b".\r\n")


async def test_data_limit_is_restored_however_data_ends(tmp_path: Path) -> None:
    """Back to the line limit after a message, a message too big, and bad content."""
    handler = _handler(tmp_path, max_message_size=5000)
    protos: list[RelaySMTP] = []
    factory = make_protocol_factory(handler, ConnectionLimits(10, 10))

    def tracking() -> RelaySMTP:
        protos.append(factory())
        return protos[-1]

    envelope = [EHLO, b"MAIL FROM:<s@example.org>\r\n", b"RCPT TO:<r@example.com>\r\n"]
    endings = {
        "250 2.0.0": b"Subject: ok\r\n\r\nfine\r\n.\r\n",
        "552 5.3.4": b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 10 + b".\r\n",
        "550 5.6.0": b"Subject: bad\r\n\r\nbare\nlf\r\n.\r\n",
    }
    async with _serve(tracking) as at:
        for reply, body in endings.items():
            replies = await raw_session(at, [*envelope, b"DATA\r\n", body])
            assert replies[-1].startswith(reply), replies
            assert protos[-1]._reader._limit == SMTP.line_length_limit, reply
