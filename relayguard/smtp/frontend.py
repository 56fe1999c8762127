"""The SMTP front end: aiosmtpd, with the checks and limits of a relay.

`RelaySMTP` is aiosmtpd's protocol with the parts a relay needs done
differently: MAIL/RCPT parameters (SIZE, BODY, SMTPUTF8 and the DSN ones,
whose values keep their case), DATA read in large pieces (one `readuntil`
per chunk instead of one per line), enhanced status codes on every reply,
connection caps and a 421 on timeouts. `RelayHandler` decides what to accept
and answers 250 only once the spool has the message on disk.

Two things here lean on private details, for speed: `make_protocol_factory`
clones a template protocol instead of running aiosmtpd's constructor, and
`_read_data` raises the stream's `_limit` while it reads DATA. Both are why
aiosmtpd is pinned to a minor release in pyproject.toml, and both assumptions
are checked by tests/unit/test_aiosmtpd_assumptions.py; a new aiosmtpd or
Python that breaks them fails there first.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import ipaddress
import re
import ssl
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from relayguard import __version__
from relayguard.client_logins import AuthFailures, ClientLogins
from relayguard.clock import Clock, new_queue_id
from relayguard.config import ServerSettings
from relayguard.model import Envelope, QueuedMessage, Recipient
from relayguard.queue.spool import NewMessage, Spool, SpoolFullError
from relayguard.smtp.esmtp import (
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
)

log = structlog.get_logger("relayguard.smtp.frontend")

# Replies that carry no enhanced status code by RFC 2034 convention.
_NO_ENHANCED = (b"220", b"354", b"334")
_DEFAULT_ENHANCED = {
    b"221": b"2.0.0",
    b"250": b"2.0.0",
    b"251": b"2.1.5",
    b"252": b"2.0.0",
    b"421": b"4.3.0",
    b"450": b"4.2.0",
    b"451": b"4.3.0",
    b"452": b"4.3.1",
    b"454": b"4.7.0",
    b"500": b"5.5.2",
    b"501": b"5.5.4",
    b"502": b"5.5.1",
    b"503": b"5.5.1",
    b"504": b"5.5.4",
    b"530": b"5.7.0",
    b"535": b"5.7.8",
    b"550": b"5.0.0",
    b"552": b"5.3.4",
    b"553": b"5.1.3",
    b"554": b"5.0.0",
    b"555": b"5.5.4",
}
INVALID_LOGIN = "535 5.7.8 Authentication credentials invalid"  # RFC 4954's wording
_HAS_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]{1,900}>)")
DATA_CHUNK_LIMIT = 1 << 20  # the stream's buffer limit while reading DATA
_SIMPLE_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>(?:[ \t]+(.*))?\Z"
)


def with_enhanced_code(reply: bytes) -> bytes:
    """Add an RFC 3463 code to replies that lack one (aiosmtpd's own ones)."""
    code = reply[:3]
    if code in _NO_ENHANCED or _HAS_ENHANCED.match(reply):
        return reply
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None:
        return reply
    separator = reply[3:4] or b" "
    return (code + separator + enhanced + b" " + reply[4:].lstrip()).rstrip(b" ")


@dataclass(slots=True)
class ConnectionLimits:
    """Connection caps shared by all sessions of one listener. Clients outside the
    allowed networks (who get a session only to log in) count against `outside`, of
    their own: however many of them come, the networks that relay keep their cap."""

    total: int
    per_client: int
    outside: int = 0
    active: int = 0
    active_outside: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def admit(self, client: str, *, outside: bool = False) -> str | None:
        """Count the connection in; return why it is refused, or None."""
        if outside and self.active_outside >= self.outside:
            return "Too many connections from outside the relay's networks, try again later"
        if not outside and self.active >= self.total:
            return "Too many connections, try again later"
        if self.by_client.get(client, 0) >= self.per_client:
            return f"Too many connections from {client}, try again later"
        if outside:
            self.active_outside += 1
        else:
            self.active += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return None

    def release(self, client: str, *, outside: bool = False) -> None:
        if outside:
            self.active_outside -= 1
        else:
            self.active -= 1
        left = self.by_client.get(client, 1) - 1
        if left <= 0:
            self.by_client.pop(client, None)
        else:
            self.by_client[client] = left


class DataError(Exception):
    """A DATA problem with its SMTP reply."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def unstuff_and_check(raw: bytes) -> bytes:
    """Undo dot-stuffing and refuse what must not be relayed.

    `raw` is the DATA content up to, not including, the final `.CRLF`. Bare CR
    or LF could make an upstream see a different end of data than we did
    (SMTP smuggling), and NUL breaks many MTAs: both are refused.
    """
    if b"\x00" in raw:
        raise DataError("550 5.6.0 Message content rejected: NUL character in message")
    crlf = raw.count(b"\r\n")
    if crlf != raw.count(b"\r") or crlf != raw.count(b"\n"):
        raise DataError("550 5.6.0 Message content rejected: bare CR or LF in message")
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


_RECEIVED = re.compile(rb"(?:^|\r\n)received:", re.IGNORECASE)


def hop_count(content: bytes) -> int:
    """Received: headers in the message's header section (RFC 5321 6.3: loop detection)."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    return len(_RECEIVED.findall(head))


def check_hops(content: bytes, max_hops: int) -> None:
    """Refuse a message that has been through max_hops relays already: ours would be one
    more than the limit, as Postfix's hopcount_limit. A loop ends instead of circling."""
    hops = hop_count(content)
    if hops >= max_hops:
        log.warning("too_many_hops", hops=hops, limit=max_hops)
        raise DataError(
            f"554 5.4.6 Too many hops: {hops} Received: headers (limit {max_hops}), a mail loop?"
        )


class RelayEnvelope(SmtpEnvelope):
    """aiosmtpd's envelope plus the parsed parameters, which keep their case."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_params: MailParams | None = None
        self.rcpt_params: list[RcptParams] = []


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with a relay's limits and reply conventions."""

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def __init__(self, handler: RelayHandler, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd keeps these per-command line limits in a class attribute, and
        # each EHLO adds to it: shared by every connection of the process. A dict
        # of our own keeps one session's EHLOs from loosening another's limits.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self._limits = limits
        self._handler = handler
        self._client = ""
        self._outside = False  # a client outside allowed_networks, admitted to log in
        self._unchecked_login: LoginPassword | None = None  # see _authenticate
        self._refusal: str | None = None
        # Lines of a multi-line reply waiting for its last line (see push).
        self._reply_lines: list[bytes] = []
        self._counted = False
        self._settings: ServerSettings = handler.settings

    # -- connections ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if peer else ""
            self._refusal = self._admit()
            self._counted = self._refusal is None
            if transport.get_extra_info("sslcontext") is not None:
                self._implicit_tls(transport)
        super().connection_made(transport)
        if first and self._tls_session is not None:
            assert self.session is not None
            self.session.ssl = self._tls_session

    def _admit(self) -> str | None:
        """Why this connection is refused at once, or None once it is counted in."""
        handler, client = self._handler, self._client
        if handler.locked_out(client):
            return (
                f"421 4.7.0 {self.hostname} Too many failed logins from {client}, try again later"
            )
        self._outside = not handler.client_allowed(client)
        if self._outside and handler.logins is None:
            # Refused before it is counted: clients that may not relay must not fill
            # the caps that clients which may relay depend on. Postfix's
            # smtpd_client_restrictions answer 554 5.7.1 the same way.
            return f"554 5.7.1 {self.hostname} Access denied: {client} may not relay here"
        refusal = self._limits.admit(client, outside=self._outside)
        return None if refusal is None else f"421 4.7.0 {self.hostname} {refusal}"

    # What STARTTLS would have put in session.ssl, on connections to the implicit-TLS
    # listener ([server] tls_listen).
    _tls_session: dict[str, Any] | None = None

    def _implicit_tls(self, transport: asyncio.BaseTransport) -> None:
        """This connection spoke TLS from its first byte (RFC 8314): it is already what
        STARTTLS would make it, so STARTTLS is not offered, and AUTH and MAIL need no
        STARTTLS first. Set on this connection only (each has its own attributes)."""
        self._tls_session = {
            name: transport.get_extra_info(name)
            for name in ("sslcontext", "ssl_object", "peercert", "cipher", "compression")
        }
        self.tls_context = None
        self.require_starttls = False
        self._auth_require_tls = False

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._limits.release(self._client, outside=self._outside)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            log.warning("connection_refused", client=self._client, reply=self._refusal)
            await self.push(self._refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes; Postfix says why first, and so do we.
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "replace")
        if not self._greeting_reply:
            status = with_enhanced_code(status)
        # One write per reply, however many lines: a client that reads a reply per
        # segment (nmap's smtp-open-relay does) would otherwise read every later
        # reply one command late. It is also one send per reply on the hot path.
        if status[3:4] == b"-":
            self._reply_lines.append(status + b"\r\n")
            return
        if self._reply_lines:
            status = b"".join(self._reply_lines) + status
            self._reply_lines.clear()
        await super().push(status)

    # -- AUTH (RFC 4954) ---------------------------------------------------------
    # aiosmtpd parses PLAIN and LOGIN, then calls _authenticate synchronously: a scrypt
    # check (about 50 ms) there would stall every session of the process. So
    # _authenticate only keeps what the client sent, and the check runs off the loop,
    # in _check_login, once aiosmtpd's parsing has returned.

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        del mechanism
        self._unchecked_login = auth_data if isinstance(auth_data, LoginPassword) else None
        return AuthResult(success=False, handled=True)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's naming
        return await self._check_login("PLAIN", await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's naming
        return await self._check_login("LOGIN", await super().auth_LOGIN(server, args))

    async def _check_login(self, mechanism: str, parsed: AuthResult) -> AuthResult:
        login, self._unchecked_login = self._unchecked_login, None
        if login is None:
            return parsed  # a malformed exchange: aiosmtpd answers it (501 or 535)
        result = await self._handler.check_login(self._client, mechanism, login)
        if result is not None:
            return result
        # The address has failed too often: say so and hang up, as Postfix's anvil does.
        await self.push(
            f"421 4.7.0 {self.hostname} Too many failed logins from {self._client}, try again later"
        )
        if self.transport is not None:
            self.transport.close()
        return AuthResult(success=False, handled=True)

    # RFC 2034: EHLO/HELO replies carry no enhanced codes (their lines are keywords).
    _greeting_reply = False

    async def smtp_EHLO(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's naming
        await self._without_enhanced(super().smtp_EHLO, arg)

    async def smtp_HELO(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's naming
        await self._without_enhanced(super().smtp_HELO, arg)

    async def _without_enhanced(
        self, command: Callable[[str | None], Any], arg: str | None
    ) -> None:
        self._greeting_reply = bool(arg)  # a syntax error still gets its code
        try:
            await command(arg)
        finally:
            self._greeting_reply = False

    # -- MAIL and RCPT ----------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's naming
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.envelope is not None
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        parsed = await self._parse_path("FROM:", arg)
        if parsed is None:
            return
        address, rest = parsed
        try:
            params = parse_mail_params(rest, max_size=self.data_size_limit)
        except ParamError as exc:
            await self.push(exc.reply)
            return
        if params.smtputf8 and not self.enable_SMTPUTF8:
            await self.push("555 5.5.4 SMTPUTF8 is not enabled")
            return
        self.envelope.mail_from = address
        self.envelope.smtp_utf8 = params.smtputf8
        self.envelope.mail_options = list(params.upstream)
        assert isinstance(self.envelope, RelayEnvelope)
        self.envelope.mail_params = params
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's naming
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        parsed = await self._parse_path("TO:", arg)
        if parsed is None:
            return
        address, rest = parsed
        if not address:
            await self.push("501 5.1.3 Bad recipient address syntax: empty address")
            return
        try:
            params = parse_rcpt_params(rest)
        except ParamError as exc:
            await self.push(exc.reply)
            return
        status = await self.event_handler.handle_RCPT(
            self, self.session, self.envelope, address, params
        )
        await self.push(status)

    async def _parse_path(  # noqa: PLR0911 - one early answer per kind of bad path
        self, keyword: str, arg: str | None
    ) -> tuple[str, str] | None:
        """'FROM:<a@b> PARAMS' → ('a@b', 'PARAMS'), or None after answering the error."""
        syntax = f"501 5.5.4 Syntax: {'MAIL FROM' if keyword == 'FROM:' else 'RCPT TO'}: <address>"
        if arg is None:
            await self.push(syntax)
            return None
        raw = self._strip_command_keyword(keyword, arg)
        if raw is None or not raw:
            await self.push(syntax)
            return None
        if any(c in raw for c in "\r\n\x00"):
            await self.push("501 5.1.3 Bad address syntax: control character in address")
            return None
        if raw.startswith("<@"):
            await self.push("501 5.1.3 Bad address syntax: source routes are not accepted")
            return None
        if raw.startswith("<>"):
            return "", raw[2:].strip()
        simple = _SIMPLE_PATH.match(raw)
        if simple is not None:
            # The common case; aiosmtpd's RFC 5322 parser costs ~50 µs per call.
            address, rest = simple.group(1), simple.group(2) or ""
        else:
            address, rest = self._getaddr(raw)
        if (
            address is None
            or not address
            or ("@" not in address and keyword == "TO:" and (address.lower() != "postmaster"))
        ):
            await self.push("501 5.1.3 Bad address syntax")
            return None
        if not self.session.extended_smtp and rest:  # type: ignore[union-attr]
            await self.push(syntax)
            return None
        return address, rest or ""

    # -- DATA -------------------------------------------------------------------

    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802 - aiosmtpd's naming
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            async with asyncio.timeout(self._settings.data_timeout):
                raw, too_big = await self._read_data()
        except TimeoutError:
            await self.push(f"421 4.4.2 {self.hostname} Error: timeout exceeded")
            if self.transport is not None:
                self.transport.close()
            return
        if too_big:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("552 5.3.4 Message size exceeds fixed limit")
            return
        try:
            content = unstuff_and_check(raw)
            check_hops(content, self._settings.max_hops)
        except DataError as exc:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(exc.reply)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, bool]:
        """Read up to the lone dot in as few calls as the stream allows.

        Each `readuntil(b".\\r\\n")` ends at the next dot-CRLF; we are done when
        that dot stands alone on its line (the CRLF that ended the DATA command
        counts as the line before the first one).
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        # aiosmtpd sizes the stream's limit for command lines; DATA is read in bigger
        # pieces. StreamReader has no public way to change it, and `readuntil` reads
        # `_limit` on every call; the `finally` below puts it back for the commands
        # after DATA, however DATA ends.
        saved_limit = reader._limit  # type: ignore[attr-defined]  # noqa: SLF001
        reader._limit = DATA_CHUNK_LIMIT  # type: ignore[attr-defined]  # noqa: SLF001
        chunks: list[bytes] = []
        size = 0
        too_big = False
        tail = b"\r\n"  # the last bytes seen, to recognise CRLF . CRLF across chunks
        try:
            while True:
                try:
                    chunk = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as exc:
                    chunk = await reader.readexactly(exc.consumed)
                    done = False
                except asyncio.IncompleteReadError:
                    raise asyncio.CancelledError from None
                else:
                    done = (tail + chunk[-5:])[-5:] == b"\r\n.\r\n"
                size += len(chunk)
                if limit and size > limit + 3:
                    too_big = True
                    chunks.clear()
                elif not too_big:
                    chunks.append(chunk)
                tail = (tail + chunk[-4:])[-4:]  # never copy the whole chunk
                if done:
                    break
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]  # noqa: SLF001
        if too_big:
            return b"", True
        data = b"".join(chunks)
        return data[:-3], False


def listener_tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The context STARTTLS uses, or None when no certificate is configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


@dataclass(frozen=True, slots=True)
class ClientLogin:
    """What a successful AUTH leaves in the session (aiosmtpd's `auth_data`): the login
    only, never the password the client sent."""

    login: str


def client_logins(settings: ServerSettings) -> ClientLogins | None:
    return ClientLogins(dict(settings.client_logins)) if settings.auth_users_file else None


@dataclass(slots=True)
class RelayHandler:
    """Decides what to accept; answers 250 only after the spool committed."""

    settings: ServerSettings
    spool: Spool
    clock: Clock
    on_accepted: Callable[[QueuedMessage], None] = lambda _m: None
    accepting: bool = True
    accepted_count: int = 0
    _networks: tuple[Any, ...] = ()
    tls_context: ssl.SSLContext | None = None  # from settings, in __post_init__
    logins: ClientLogins | None = None  # from settings: None when AUTH is not offered
    # Not "auth_...": aiosmtpd takes every handler attribute so named for a mechanism.
    failed_logins: AuthFailures = field(init=False)

    def __post_init__(self) -> None:
        self._networks = self.settings.allowed_networks
        self.tls_context = listener_tls_context(self.settings)
        self.logins = client_logins(self.settings)
        self.failed_logins = AuthFailures(
            self.settings.auth_failure_limit, self.settings.auth_failure_window
        )

    def reload(self, settings: ServerSettings) -> None:
        """SIGHUP: what the listener takes without a restart, the certificate and the
        users file (a new login from `relayguard passwd`)."""
        if self.logins is not None and settings.auth_users_file is not None:
            self.logins = client_logins(settings)
            log.info("logins_reloaded", users=len(settings.client_logins))
        self._reload_tls(settings)

    def _reload_tls(self, settings: ServerSettings) -> None:
        """The certificate files again, into the same context, so that every connection
        from now on (each clone shares the context) shows the new one."""
        if self.tls_context is None or settings.tls_cert_file is None:
            return  # offering TLS or not is decided at start
        try:
            self.tls_context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("tls_reload_failed", error=str(exc), kept="previous certificate")
            return
        log.info("tls_reloaded", cert=str(settings.tls_cert_file))

    def locked_out(self, client: str) -> bool:
        return self.failed_logins.locked_out(client, self.clock.now())

    async def check_login(
        self, client: str, mechanism: str, login: LoginPassword
    ) -> AuthResult | None:
        """The answer to one AUTH; None when the client is now locked out. The password
        goes to the check and nowhere else: not to a log, not into the session."""
        name = login.login.decode("utf-8", "replace")
        logins = self.logins
        # scrypt releases the GIL: other sessions go on while it runs.
        right = logins is not None and await asyncio.to_thread(logins.check, name, login.password)
        if right:
            log.info("auth_succeeded", client=client, login=name, mechanism=mechanism)
            return AuthResult(success=True, auth_data=ClientLogin(name))
        if self.client_allowed(client):
            # Allowed networks are not locked out (Postfix exempts mynetworks from anvil
            # the same way): the relay's own MTAs must not lose it to one bad password.
            log.warning("auth_failed", client=client, mechanism=mechanism)
            return AuthResult(success=False, handled=False, message=INVALID_LOGIN)
        now = self.clock.now()
        failures = self.failed_logins.failed(client, now)
        log.warning("auth_failed", client=client, mechanism=mechanism, failures=failures)
        until = self.failed_logins.locked_until(client, now)
        if until is None:
            return AuthResult(success=False, handled=False, message=INVALID_LOGIN)
        log.warning("auth_locked_out", client=client, failures=failures, until=until)
        return None

    def client_allowed(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.logins is None:
            # aiosmtpd lists AUTH once TLS is up whether or not anyone could log in.
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        # RFC 3461 4: with DSN offered, MAIL lines may be 100 characters longer (RET,
        # ENVID) and RCPT lines 500 (NOTIFY, ORCPT).
        server.command_size_limits["MAIL"] += 100
        server.command_size_limits["RCPT"] += 500
        last = responses.pop()  # "250 HELP"
        responses.extend(["250-ENHANCEDSTATUSCODES", "250-DSN", "250-PIPELINING"])
        responses.append(last)
        return responses

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        params: RcptParams,
    ) -> str:
        client = session.peer[0] if session.peer else ""
        if not session.authenticated and not self.client_allowed(str(client)):
            log.warning("relay_denied", client=client, recipient=address)
            return f"554 5.7.1 <{address}>: Relay access denied"
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        assert isinstance(envelope, RelayEnvelope)
        envelope.rcpt_params.append(params)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: RelaySMTP, session: Session, envelope: SmtpEnvelope
    ) -> str:
        if not self.accepting:
            return f"421 4.3.2 {self.settings.hostname} Service shutting down, try again later"
        commit: asyncio.Task[QueuedMessage] | None = None
        try:
            message = self._new_message(server, session, envelope)
            # The commit is its own task: if the client hangs up now, aiosmtpd cancels
            # this session, and the message must still be queued *and scheduled*.
            commit = asyncio.ensure_future(self.spool.accept(message))
            queued = await asyncio.shield(commit)
        except SpoolFullError:
            log.error("spool_full", client=session.peer)
            return "452 4.3.1 Insufficient system storage"
        except asyncio.CancelledError:
            if commit is not None:
                commit.add_done_callback(self._accepted_after_hangup)
            raise
        except Exception as exc:
            log.error("accept_failed", error=repr(exc), traceback=traceback.format_exc())
            return "451 4.3.0 Error: queue file write error"
        login = session.auth_data.login if isinstance(session.auth_data, ClientLogin) else None
        self._accepted(queued, client_gone=False, login=login)
        return f"250 2.0.0 Ok: queued as {queued.queue_id}"

    def _accepted(
        self, queued: QueuedMessage, *, client_gone: bool, login: str | None = None
    ) -> None:
        self.accepted_count += 1
        log.info(
            "accepted",
            queue_id=queued.queue_id,
            message_id=queued.message_id,
            sender=queued.envelope.sender,
            recipients=len(queued.envelope.recipients),
            size=queued.size,
            client=queued.envelope.client_address,
            **({"client_gone": True} if client_gone else {}),
            **({"login": login} if login else {}),
        )
        self.on_accepted(queued)

    def _accepted_after_hangup(self, commit: asyncio.Task[QueuedMessage]) -> None:
        """The client left during the commit: it never saw 250 and will likely send the
        message again (at-least-once), but what we committed is delivered too."""
        if commit.cancelled() or commit.exception() is not None:
            return
        self._accepted(commit.result(), client_gone=True)

    async def handle_exception(self, error: Exception) -> str:
        log.error(
            "session_error", error=repr(error), traceback="".join(traceback.format_exception(error))
        )
        return "451 4.3.0 Error: internal error, try again later"

    def _new_message(
        self, server: RelaySMTP, session: Session, envelope: SmtpEnvelope
    ) -> NewMessage:
        now = self.clock.now()
        queue_id = new_queue_id()
        client = str(session.peer[0]) if session.peer else ""
        helo = session.host_name or ""
        assert isinstance(envelope, RelayEnvelope)
        params = envelope.mail_params
        recipients = tuple(
            Recipient(address=a, orcpt=p.orcpt, notify=p.notify)
            for a, p in zip(envelope.rcpt_tos, envelope.rcpt_params, strict=True)
        )
        content: bytes = envelope.original_content or b""
        received = self._received_header(server, helo, client, queue_id, recipients, now)
        head_end = content.find(b"\r\n\r\n")
        head = content if head_end < 0 else content[:head_end]
        m = _MESSAGE_ID.search(head)
        env = Envelope(
            sender=envelope.mail_from or "",
            recipients=recipients,
            mail_options=tuple(envelope.mail_options),
            ret=params.ret if params else None,
            envid=params.envid if params else None,
            client_address=client,
            client_helo=helo,
        )
        return NewMessage(
            envelope=env,
            body=received + content,
            arrival_at=now,
            message_id=m.group(1).decode("utf-8", "replace") if m else "",
            queue_id=queue_id,
        )

    def _received_header(
        self,
        server: RelaySMTP,
        helo: str,
        client: str,
        queue_id: str,
        recipients: tuple[Recipient, ...],
        now: float,
    ) -> bytes:
        session = server.session
        # RFC 3848's names: ESMTP, S with TLS, A when the client logged in.
        proto = "ESMTP"
        if session is not None:
            proto += ("S" if session.ssl else "") + ("A" if session.authenticated else "")
            if not session.extended_smtp:
                proto = "SMTP"
        for_clause = f"\r\n\tfor <{recipients[0].address}>" if len(recipients) == 1 else ""
        date = format_datetime(datetime.fromtimestamp(now, UTC))
        safe_helo = re.sub(r"[^\x21-\x7e]", "?", helo)[:255]
        text = (
            f"Received: from {safe_helo} ([{client}])\r\n"
            f"\tby {self.settings.hostname} (relayguard {__version__}) with {proto}"
            f" id {queue_id}{for_clause};\r\n\t{date}\r\n"
        )
        return text.encode("utf-8", "replace")


def new_protocol(
    handler: RelayHandler, limits: ConnectionLimits, *, enable_smtputf8: bool = True
) -> RelaySMTP:
    """A protocol built the public way, by aiosmtpd's constructor: the template of
    `make_protocol_factory`, and what the tests hold its clones to."""
    s = handler.settings
    return RelaySMTP(
        handler,
        limits,
        hostname=s.hostname,
        ident=f"ESMTP relayguard {__version__}",
        data_size_limit=s.max_message_size,
        enable_SMTPUTF8=enable_smtputf8,
        decode_data=False,
        timeout=s.idle_timeout,
        tls_context=handler.tls_context,
        require_starttls=s.require_tls,
    )


# Rebuilt for each clone, bound to it; every other container is copied.
_REBOUND = frozenset({"_smtp_methods", "_auth_methods"})
_CONTAINERS = (dict, list, set, bytearray, collections.deque)


def make_protocol_factory(
    handler: RelayHandler, limits: ConnectionLimits, *, enable_smtputf8: bool = True
) -> Callable[[], RelaySMTP]:
    """One protocol per connection, cloned from a template.

    aiosmtpd's constructor inspects the class and the handler (`dir`,
    `inspect.getmembers`) on every connection: a fifth of the front end's CPU
    at a few hundred connections a second. What it computes is the same every
    time, so we build one template and give each connection a copy with its
    own stream state and methods bound to itself.

    A copy shares nothing mutable with the template or other copies: every dict,
    list, set or deque among the template's attributes is copied per connection
    (aiosmtpd's hook table and command limits among them), whether or not this
    aiosmtpd version mutates it during a session. What stays shared is meant to
    be: the handler, the listener's limits, settings and plain values.
    """
    template = new_protocol(handler, limits, enable_smtputf8=enable_smtputf8)
    state = dict(template.__dict__)
    containers = tuple(
        name
        for name, value in state.items()
        if name not in _REBOUND and isinstance(value, _CONTAINERS)
    )
    smtp_methods = {name: m.__func__ for name, m in template._smtp_methods.items()}  # noqa: SLF001
    auth_methods = template._auth_methods  # noqa: SLF001
    loop = template.loop

    def factory() -> RelaySMTP:
        proto: RelaySMTP = RelaySMTP.__new__(RelaySMTP)
        proto.__dict__.update(state)
        for name in containers:
            proto.__dict__[name] = copy.copy(state[name])
        asyncio.StreamReaderProtocol.__init__(
            proto,
            asyncio.StreamReader(loop=loop, limit=proto.line_length_limit),
            client_connected_cb=proto._cb_client_connected,  # noqa: SLF001
            loop=loop,
        )
        proto._smtp_methods = {  # noqa: SLF001
            name: types.MethodType(func, proto) for name, func in smtp_methods.items()
        }
        proto._auth_methods = {  # noqa: SLF001
            name: attr._replace(method=types.MethodType(attr.method.__func__, proto))  # type: ignore[attr-defined]
            if attr.is_builtin
            else attr
            for name, attr in auth_methods.items()
        }
        return proto

    return factory
