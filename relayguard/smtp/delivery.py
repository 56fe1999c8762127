"""The aiosmtplib adapter: one SMTP transaction through one route, outcome → Reply.

It decides nothing. Every way a transaction can end (a reply, a refused or
timed-out connection, a TLS failure, a drop after the final dot) becomes a
`Reply` per recipient; nothing above this module catches socket exceptions.

Connections are kept per route and reused for several messages, up to
`messages_per_connection` each. How many are open at once is not decided here:
the queue's route table owns the route's connection cap and hands out at most
that many transactions at a time, so a second cap here could only disagree
with it (a throttle lowered there would wait on a semaphore here).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from relayguard.config import RouteSettings
from relayguard.model import Outcome, Phase, Reply, Transaction, network_reply

TlsMode = Literal["none", "opportunistic", "required"]


class _SessionFailedError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.render())
        self.reply = reply


@dataclass(slots=True)
class _Connection:
    smtp: aiosmtplib.SMTP
    tls: bool
    used: int = 0


@dataclass(slots=True)
class RouteConnections:
    """The connections of one route: the idle ones, kept for reuse.

    `route` is shared by every connection of the route and is never replaced or
    changed while connections open: what one connection decides (falling back
    to plaintext after a failed handshake) is passed down that connection's
    calls, never written here, where a connection opening meanwhile would read it.
    """

    route: RouteSettings
    local_hostname: str
    idle: list[_Connection] = field(default_factory=list)

    @property
    def peer(self) -> str:
        r = self.route
        return f"{r.host}[{r.host}]:{r.port}"

    def _tls_context(self) -> ssl.SSLContext:
        if self.route.tls_verify:
            ctx = ssl.create_default_context(
                cafile=str(self.route.tls_ca_file) if self.route.tls_ca_file else None
            )
        else:
            # Like Postfix's "may"/"encrypt" levels: encryption without
            # authentication of the peer unless the operator asks for it.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _open(self, tls: TlsMode) -> _Connection:
        r = self.route
        smtp = aiosmtplib.SMTP(
            hostname=r.host,
            port=r.port,
            local_hostname=r.helo_name or self.local_hostname,
            source_address=(r.source_address, 0) if r.source_address else None,
            timeout=r.command_timeout,
            start_tls=False,
        )
        try:
            await smtp.connect(timeout=r.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise _SessionFailedError(
                Reply.parse(exc.code, exc.message, Phase.GREETING, r.host)
            ) from None
        except (aiosmtplib.SMTPConnectTimeoutError, TimeoutError):
            raise _SessionFailedError(
                network_reply(
                    "4.4.1", f"connect to {self.peer}: Connection timed out", Phase.CONNECT, r.host
                )
            ) from None
        except (aiosmtplib.SMTPConnectError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            text = getattr(cause, "strerror", None) or str(cause) or "connection failed"
            raise _SessionFailedError(
                network_reply("4.4.1", f"connect to {self.peer}: {text}", Phase.CONNECT, r.host)
            ) from None
        try:
            await self._hello(smtp)
            encrypted = await self._starttls(smtp, tls)
            await self._auth(smtp, encrypted=encrypted)
        except BaseException:
            smtp.close()
            raise
        return _Connection(smtp, encrypted)

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            try:
                await smtp.helo()
            except aiosmtplib.SMTPHeloError:
                raise _SessionFailedError(
                    Reply.parse(exc.code, exc.message, Phase.HELO, self.route.host)
                ) from None

    async def _starttls(self, smtp: aiosmtplib.SMTP, mode: TlsMode) -> bool:
        if mode == "none":
            return False
        if not smtp.supports_extension("starttls"):
            if mode == "required":
                raise _SessionFailedError(
                    Reply(
                        421,
                        "4.7.4",
                        f"TLS is required, but was not offered by host {self.peer}",
                        Phase.STARTTLS,
                        self.route.host,
                        synthetic=True,
                    )
                )
            return False
        try:
            await smtp.starttls(tls_context=self._tls_context())
        except aiosmtplib.SMTPResponseException as exc:
            if mode == "required":
                raise _SessionFailedError(
                    Reply.parse(exc.code, exc.message, Phase.STARTTLS, self.route.host)
                ) from None
            return False
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
            # The session is unusable after a failed handshake; opportunistic
            # TLS reconnects in plaintext, required TLS gives up on this host.
            raise _SessionFailedError(
                Reply(
                    421,
                    "4.7.5",
                    f"Cannot start TLS: handshake failure with {self.peer}: {exc}",
                    Phase.STARTTLS,
                    self.route.host,
                    synthetic=True,
                )
            ) from None
        await self._hello(smtp)  # RFC 3207: the session starts over after STARTTLS
        return True

    async def _auth(self, smtp: aiosmtplib.SMTP, *, encrypted: bool) -> None:
        """SMTP AUTH (RFC 4954) when the route has a user, before any envelope.

        Every refusal is the smarthost's answer about our account, so it comes back
        as a reply in the AUTH phase: the policy suspends the route for every
        destination and tries the next one. The password goes only into the AUTH
        exchange; none of the replies built here can contain it.
        """
        r = self.route
        if r.auth_username is None or r.auth_password is None:
            return
        if not encrypted and not r.auth_over_plaintext:
            # A password in the clear is readable on the path; no envelope either,
            # since a smarthost that wants AUTH would refuse it anyway.
            raise _SessionFailedError(self._local_auth_reply("TLS not available for AUTH"))
        offered = {m.upper() for m in smtp.server_auth_methods}
        mechanism = next((m for m in r.auth_mechanisms if m in offered), None)
        if mechanism is None:
            theirs = ", ".join(sorted(offered)) or "none"
            raise _SessionFailedError(
                self._local_auth_reply(
                    f"no AUTH mechanism in common with {self.peer}"
                    f" (ours: {', '.join(r.auth_mechanisms)}; theirs: {theirs})"
                )
            )
        login = {
            "PLAIN": smtp.auth_plain,
            "LOGIN": smtp.auth_login,
            "CRAM-MD5": smtp.auth_crammd5,
        }[mechanism]
        try:
            await login(r.auth_username, r.auth_password.reveal(), timeout=r.command_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            raise _SessionFailedError(
                Reply.parse(exc.code, exc.message, Phase.AUTH, r.host)
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._lost(Phase.AUTH, exc) from None

    def _local_auth_reply(self, why: str) -> Reply:
        # Temporary, like Postfix's own "4.7.0" SASL failures: the operator can fix the
        # route (TLS, mechanisms) and the mail waits for that, or goes another route.
        return Reply(
            454,
            "4.7.0",
            f"{why} on route {self.route.name}",
            Phase.AUTH,
            self.route.host,
            synthetic=True,
        )

    async def _acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if conn.smtp.is_connected:
                return conn
            conn.smtp.close()
        mode = _tls_mode(self.route.tls)
        try:
            return await self._open(mode)
        except _SessionFailedError as exc:
            if (
                mode == "opportunistic"
                and exc.reply.phase is Phase.STARTTLS
                and exc.reply.enhanced == "4.7.5"
            ):
                # The handshake broke the session: this one transaction goes on a
                # new plaintext connection. Only this call knows; the route's other
                # connections still try STARTTLS.
                return await self._open("none")
            raise

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        conn.used += 1
        if reusable and conn.used < self.route.messages_per_connection and conn.smtp.is_connected:
            self.idle.append(conn)
        else:
            asyncio.get_running_loop().create_task(_quit(conn.smtp))

    async def close(self) -> None:
        idle, self.idle = self.idle, []
        await asyncio.gather(*(_quit(c.smtp) for c in idle), return_exceptions=True)

    async def send(self, tx: Transaction) -> Outcome:
        """Run one transaction; never raises for anything the peer or network does.

        The caller bounds how many run at once (the queue's connection cap).
        """
        addresses = [a for a, _ in tx.recipients]
        for fresh_retry in (False, True):
            try:
                conn = await self._acquire()
            except _SessionFailedError as exc:
                return Outcome(dict.fromkeys(addresses, exc.reply), self.route.host)
            reused = conn.used > 0
            try:
                outcome = await self._transaction(conn, tx)
            except _SessionFailedError as exc:
                conn.smtp.close()
                if reused and not fresh_retry and exc.reply.phase is Phase.MAIL:
                    # An idle connection the peer closed meanwhile: not the
                    # peer's answer to this message. Try once on a new one.
                    continue
                return Outcome(
                    dict.fromkeys(addresses, exc.reply),
                    self.route.host,
                    tls=conn.tls,
                    possible_duplicate=exc.reply.phase is Phase.AFTER_DATA,
                )
            except Exception:
                conn.smtp.close()
                raise
            self._release(conn, reusable=True)
            return outcome
        raise AssertionError("unreachable")

    def _lost(self, phase: Phase, exc: BaseException) -> _SessionFailedError:
        host = self.route.host
        if phase is Phase.AFTER_DATA:
            text = (
                f"lost connection with {self.peer} while sending end of data"
                " -- message may be sent more than once"
            )
        elif isinstance(exc, TimeoutError):
            text = f"conversation with {self.peer} timed out while sending {phase.value}"
        else:
            text = f"lost connection with {self.peer} while sending {phase.value}"
        return _SessionFailedError(network_reply("4.4.2", text, phase, host))

    async def _exchange(
        self, smtp: aiosmtplib.SMTP, commands: Sequence[tuple[Phase, bytes]]
    ) -> list[Reply]:
        """Write the command lines together, then read one reply each, in order."""
        protocol = smtp.protocol
        phase = commands[0][0]
        try:
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("not connected")
            protocol.write(b"".join(line for _, line in commands))
            replies = []
            for phase, _ in commands:
                resp = await protocol.read_response(timeout=self.route.command_timeout)
                replies.append(Reply.parse(resp.code, resp.message, phase, self.route.host))
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise self._lost(phase, exc) from None
        return replies

    async def _envelope(
        self, smtp: aiosmtplib.SMTP, commands: list[tuple[Phase, bytes]]
    ) -> list[Reply]:
        """MAIL, RCPT… and DATA one at a time, stopping where the peer's answers make
        going on pointless.

        Not pipelined (RFC 2920), although it would save round trips: aiosmtplib's
        protocol keeps one parsed reply at a time and drops bytes that arrive while
        it holds one, so several replies in flight could be lost.
        """
        replies: list[Reply] = []
        for phase, line in commands:
            if phase is Phase.DATA and not any(r.code in (250, 251) for r in replies[1:]):
                break
            [reply] = await self._exchange(smtp, [(phase, line)])
            replies.append(reply)
            if phase is Phase.MAIL and reply.code != 250:
                break
        return replies

    async def _transaction(self, conn: _Connection, tx: Transaction) -> Outcome:
        smtp = conn.smtp
        has_dsn = smtp.supports_extension("dsn")
        mail_params = [o for o in tx.mail_options if _peer_supports(smtp, o)]
        if has_dsn:
            mail_params += tx.dsn_mail_options
        if smtp.supports_extension("size"):
            mail_params.append(f"SIZE={len(tx.body)}")
        commands = [(Phase.MAIL, _line(b"MAIL FROM:<" + tx.sender.encode() + b">", mail_params))]
        for address, params in tx.recipients:
            sent = list(params) if (has_dsn or not tx.dsn_rcpt) else []
            commands.append((Phase.RCPT, _line(b"RCPT TO:<" + address.encode() + b">", sent)))
        commands.append((Phase.DATA, b"DATA\r\n"))
        got = await self._envelope(smtp, commands)
        mail, rcpt_replies = got[0], got[1 : 1 + len(tx.recipients)]
        go_ahead = got[1 + len(tx.recipients)] if len(got) > 1 + len(tx.recipients) else None
        addresses = [a for a, _ in tx.recipients]
        if mail.code != 250:
            replies = dict.fromkeys(addresses, mail)
        else:
            replies = dict(zip(addresses, rcpt_replies, strict=True))
        accepted = [a for a in addresses if replies[a].code in (250, 251)]
        if go_ahead is not None and go_ahead.code == 354 and not accepted:
            # RFC 2920 §3.1: a peer that said 354 anyway gets an empty message, then RSET.
            await self._exchange(smtp, [(Phase.AFTER_DATA, b".\r\n")])
        if go_ahead is None or go_ahead.code != 354 or not accepted:
            await self._rset(smtp)
            for address in accepted:
                replies[address] = go_ahead or mail
            return Outcome(replies, self.route.host, has_dsn, conn.tls)
        # A drop while the peer has the message means "may have been delivered":
        # the phase says so, and the message is retried (at-least-once).
        [final] = await self._exchange(smtp, [(Phase.AFTER_DATA, _dot_stuffed(tx.body))])
        for address in accepted:
            replies[address] = final
        return Outcome(replies, self.route.host, has_dsn, conn.tls)

    async def _rset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.execute_command(b"RSET")
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _line(command: bytes, params: Sequence[str]) -> bytes:
    return b" ".join([command, *(p.encode() for p in params)]) + b"\r\n"


def _dot_stuffed(body: bytes) -> bytes:
    """The body as it goes on the wire: leading dots doubled, then CRLF.CRLF.

    The spool keeps bodies with CRLF line ends (the front end refuses bare CR
    and LF), so nothing else needs rewriting.
    """
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _peer_supports(smtp: aiosmtplib.SMTP, option: str) -> bool:
    keyword = option.partition("=")[0].lower()
    if keyword == "body":
        return smtp.supports_extension("8bitmime")
    return smtp.supports_extension(keyword)


def _tls_mode(value: str) -> TlsMode:
    # The config loader admits only these three; anything else is a bug, and
    # must not quietly become plaintext.
    if value == "none":
        return "none"
    if value == "opportunistic":
        return "opportunistic"
    if value == "required":
        return "required"
    raise ValueError(f"unknown TLS mode {value!r}")


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), timeout=5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()


class Delivery:
    """All routes' connections. The relay calls `send(route_name, tx)`."""

    def __init__(self, routes: Sequence[RouteSettings], local_hostname: str) -> None:
        self.routes = {r.name: RouteConnections(r, local_hostname) for r in routes}

    async def send(self, route: str, tx: Transaction) -> Outcome:
        return await self.routes[route].send(tx)

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.routes.values()))
