"""RFC 3464 delivery reports (NDRs, delay warnings, relay reports) and their JSON record.

Pure: time and host names come in through `ReportContext`; nothing here reads
the clock or does I/O. The report is built by hand as bytes with CRLF line
ends, so the returned original stays byte-exact (8-bit content included).

Shaped after Postfix's bounce(8): the same subjects, the same three parts
(notification, delivery report, original), `X-Relayguard-Queue-ID` in place
of `X-Postfix-Queue-ID`. For SMTPUTF8 mail (or non-ASCII addresses) the
RFC 6533 types are used: message/global-delivery-status and message/global(-headers).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from relayguard.ndr.facts import (
    LIFETIME_RULE,
    RecipientFacts,
    ReportContext,
    ReportKind,
    clean,
    format_fields,
    iso_utc,
    parse_orcpt,
    recipient_facts,
    remote_mta,
    rfc5322_date,
    route_counts,
    typed_address,
    xtext_decode,
)
from relayguard.ndr.text import human_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relayguard.model import QueuedMessage, Recipient

__all__ = [
    "LIFETIME_RULE",
    "ReportContext",
    "ReportKind",
    "bounce_record",
    "build_delay_warning",
    "build_ndr",
    "build_relayed_report",
    "report_envelope",
    "report_mail_options",
    "should_report",
]

CRLF = b"\r\n"
SUBJECTS = {
    ReportKind.BOUNCE: "Undelivered Mail Returned to Sender",
    ReportKind.DELAY: "Delayed Mail (still being retried)",
    ReportKind.RELAYED: "Successful Mail Delivery Report",
}
_NOT_BCHARS = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")
_NOT_ATOM = re.compile(r"[^0-9A-Za-z!#$%&'*+\-/=?^_`{|}~.]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


# ---------------------------------------------------------------- public API


def report_envelope(message: QueuedMessage) -> tuple[str, str]:
    """(MAIL FROM, RCPT TO) for a report: from `<>`, to the original envelope sender."""
    return "", message.envelope.sender


def should_report(message: QueuedMessage, recipient: Recipient, kind: str) -> bool:
    """RFC 3461 NOTIFY: does this recipient want a report of this kind?

    No NOTIFY means FAILURE,DELAY (a delay warning is the MTA's choice; we
    send one, once per recipient). NEVER means nothing. A null sender never
    gets a report: that is how bounce loops are avoided.
    """
    report_kind = ReportKind(kind)
    if not message.envelope.sender:
        return False
    notify = {n.strip().upper() for n in recipient.notify}
    if "NEVER" in notify:
        return False
    if report_kind is ReportKind.BOUNCE:
        return not notify or "FAILURE" in notify
    if report_kind is ReportKind.DELAY:
        return (not notify or "DELAY" in notify) and not recipient.delay_warned
    return "SUCCESS" in notify


def build_ndr(
    message: QueuedMessage,
    body: bytes,
    failed: Sequence[Recipient],
    ctx: ReportContext,
    *,
    reason_rule: str | None = None,
) -> bytes | None:
    """One non-delivery report covering every failed recipient that asked for one."""
    return _build(message, body, failed, ctx, ReportKind.BOUNCE, rule=reason_rule)


def build_delay_warning(
    message: QueuedMessage,
    body: bytes,
    delayed: Sequence[Recipient],
    ctx: ReportContext,
    *,
    will_retry_until: float,
) -> bytes | None:
    """A delay warning (Action: delayed, Will-Retry-Until); headers of the original only."""
    return _build(message, body, delayed, ctx, ReportKind.DELAY, until=will_retry_until)


def build_relayed_report(
    message: QueuedMessage,
    body: bytes,
    relayed: Sequence[Recipient],
    ctx: ReportContext,
) -> bytes | None:
    """NOTIFY=SUCCESS for recipients handed to an upstream without DSN: Action: relayed."""
    return _build(message, body, relayed, ctx, ReportKind.RELAYED)


def report_mail_options(message: QueuedMessage, report: bytes) -> tuple[str, ...]:
    """MAIL FROM parameters the report itself needs (BODY=8BITMIME, SMTPUTF8)."""
    options: list[str] = []
    if not report.isascii():
        options.append("BODY=8BITMIME")
    if _utf8_mode(message, message.envelope.recipients):
        options.append("SMTPUTF8")
    return tuple(options)


def bounce_record(
    message: QueuedMessage,
    recipients: Sequence[Recipient],
    kind: str,
    ctx: ReportContext,
    rule: str | None,
    *,
    will_retry_until: float | None = None,
) -> dict[str, object]:
    """The facts of a report as a JSON-serialisable dict (for logs and `queue` tools)."""
    report_kind = ReportKind(kind)
    facts = [recipient_facts(message, r, report_kind, ctx, rule) for r in recipients]
    env = message.envelope
    return {
        "kind": report_kind.value,
        "queue_id": message.queue_id,
        "message_id": message.message_id,
        "sender": env.sender,
        "envid": xtext_decode(env.envid) if env.envid else None,
        "ret": env.ret,
        "reporting_mta": ctx.reporting_mta,
        "arrival": iso_utc(message.arrival_at),
        "now": iso_utc(ctx.now),
        "will_retry_until": iso_utc(will_retry_until) if will_retry_until is not None else None,
        "rule": rule,
        "attempts": len(message.attempts),
        "routes": [{"route": r, "attempts": n} for r, n in route_counts(message.attempts)],
        "recipients": [_recipient_record(f) for f in facts],
    }


# ---------------------------------------------------------------- assembly


def _build(
    message: QueuedMessage,
    body: bytes,
    recipients: Sequence[Recipient],
    ctx: ReportContext,
    kind: ReportKind,
    *,
    rule: str | None = None,
    until: float | None = None,
) -> bytes | None:
    chosen = [r for r in recipients if should_report(message, r, kind)]
    if not chosen:
        return None
    facts = [recipient_facts(message, r, kind, ctx, rule) for r in chosen]
    utf8 = _utf8_mode(message, chosen)

    full = kind is ReportKind.BOUNCE and (message.envelope.ret or "").upper() == "FULL"
    too_big = ctx.return_size_limit is not None and len(body) > ctx.return_size_limit
    if full and too_big:
        returned = "the message headers only (the message is too large to return)"
    else:
        returned = "the full message" if full else "the message headers only"
    original = body if full and not too_big else _headers_of(body)
    text = human_text(message, facts, kind, ctx, returned=returned, will_retry_until=until)

    parts = [
        _notification_part(text),
        _status_part(message, facts, ctx, utf8=utf8, until=until),
        _original_part(original, kind, utf8=utf8, full=full and not too_big),
    ]
    boundary = _boundary(message.queue_id, ctx, [content for _, content in parts])
    eight_bit = any(not content.isascii() for _, content in parts)
    out = _top_headers(message, kind, ctx, boundary, eight_bit=eight_bit)
    out += [b"", b"This is a MIME-encapsulated message.", b""]
    chunks = [CRLF.join(out)]
    for headers, content in parts:
        chunks.append(b"--" + boundary.encode() + CRLF + CRLF.join([*headers, b""]) + CRLF)
        chunks.append(content + CRLF)
    chunks.append(b"--" + boundary.encode() + b"--" + CRLF)
    return b"".join(chunks)


def _top_headers(
    message: QueuedMessage, kind: ReportKind, ctx: ReportContext, boundary: str, *, eight_bit: bool
) -> list[bytes]:
    headers = [
        f"Date: {rfc5322_date(ctx.now)}",
        f"From: Mail Delivery System <MAILER-DAEMON@{ctx.reporting_mta}>",
        f"To: <{clean(message.envelope.sender)}>",
        f"Subject: {SUBJECTS[kind]}",
        f"Message-ID: {_report_message_id(message, kind, ctx)}",
    ]
    original_id = _angle(message.message_id)
    if original_id:
        headers += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    headers += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    return [h.encode() for h in headers]


def _notification_part(text: str) -> tuple[list[bytes], bytes]:
    content = text.replace("\n", "\r\n").encode()
    return [
        b"Content-Description: Notification",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: " + (b"7bit" if content.isascii() else b"8bit"),
    ], content


def _status_part(
    message: QueuedMessage,
    facts: Sequence[RecipientFacts],
    ctx: ReportContext,
    *,
    utf8: bool,
    until: float | None,
) -> tuple[list[bytes], bytes]:
    env = message.envelope
    fields = [("Reporting-MTA", f"dns; {ctx.reporting_mta}")]
    if env.envid:
        fields.append(("Original-Envelope-Id", xtext_decode(env.envid)))
    fields.append(("X-Relayguard-Queue-ID", message.queue_id))
    fields.append(("X-Relayguard-Sender", typed_address(env.sender, utf8=utf8)))
    fields.append(("Arrival-Date", rfc5322_date(message.arrival_at)))
    blocks = [format_fields(fields, utf8=utf8)]
    blocks += [
        format_fields(_recipient_fields(f, utf8=utf8, until=until), utf8=utf8) for f in facts
    ]
    content = (CRLF + CRLF).join(blocks) + CRLF
    kind = b"message/global-delivery-status" if utf8 else b"message/delivery-status"
    headers = [b"Content-Description: Delivery report", b"Content-Type: " + kind]
    if not content.isascii():
        headers.append(b"Content-Transfer-Encoding: 8bit")
    return headers, content


def _recipient_fields(
    fact: RecipientFacts, *, utf8: bool, until: float | None
) -> list[tuple[str, str]]:
    fields = [("Final-Recipient", typed_address(fact.recipient.address, utf8=utf8))]
    if fact.orcpt is not None:
        addr_type, address = fact.orcpt
        original = typed_address(address, utf8=utf8, addr_type=addr_type)
        fields.append(("Original-Recipient", original))
    fields += [("Action", fact.action), ("Status", fact.status)]
    mta = remote_mta(fact.reply)
    if mta:
        fields.append(("Remote-MTA", f"dns; {mta}"))
    diagnostic = _diagnostic(fact)
    if diagnostic:
        fields.append(("Diagnostic-Code", diagnostic))
    if fact.last_attempt_at is not None:
        fields.append(("Last-Attempt-Date", rfc5322_date(fact.last_attempt_at)))
    if until is not None:
        fields.append(("Will-Retry-Until", rfc5322_date(until)))
    return fields


def _diagnostic(fact: RecipientFacts) -> str | None:
    reply = fact.reply
    if reply is None:
        return "X-Relayguard; delivery time expired" if fact.expired else None
    if reply.synthetic:
        return f"X-Relayguard; {reply.text or reply.render()}"
    return f"smtp; {reply.render()}"


def _original_part(
    original: bytes, kind: ReportKind, *, utf8: bool, full: bool
) -> tuple[list[bytes], bytes]:
    undelivered = "" if kind is ReportKind.RELAYED else "Undelivered "
    if full:
        description = f"{undelivered}Message"
        ctype = "message/global" if utf8 else "message/rfc822"
    else:
        description = f"{undelivered}Message Headers"
        ctype = "message/global-headers" if utf8 else "text/rfc822-headers"
    headers = [f"Content-Description: {description}".encode(), f"Content-Type: {ctype}".encode()]
    if not original.isascii():
        headers.append(b"Content-Transfer-Encoding: 8bit")
    return headers, original


# ---------------------------------------------------------------- helpers


def _headers_of(body: bytes) -> bytes:
    """The header block of a message, with the line end of its last header line."""
    if body.startswith((b"\r\n", b"\n")):
        return b""
    end = _HEADER_END.search(body)
    if end is None:
        return body
    start = end.start()
    return body[:start] + (b"\r\n" if body[start : start + 1] == b"\r" else b"\n")


def _boundary(queue_id: str, ctx: ReportContext, contents: Sequence[bytes]) -> str:
    """Deterministic (queue ID, time, host), and made longer until no content contains it."""
    base = _NOT_BCHARS.sub("-", f"{queue_id}.{int(ctx.now)}/{ctx.reporting_mta}")[:60]
    boundary, n = base, 0
    while any(b"--" + boundary.encode() in c for c in contents):
        n += 1
        boundary = f"{base}={n}"
    return boundary


def _report_message_id(message: QueuedMessage, kind: ReportKind, ctx: ReportContext) -> str:
    millis = round(ctx.now * 1000)
    local = _NOT_ATOM.sub("-", f"{millis}.{message.queue_id}.{kind.value}")
    return f"<{local}@{ctx.reporting_mta}>"


def _angle(message_id: str) -> str:
    mid = clean(message_id).strip()
    if not mid:
        return ""
    return mid if mid.startswith("<") else f"<{mid}>"


def _utf8_mode(message: QueuedMessage, recipients: Sequence[Recipient]) -> bool:
    env = message.envelope
    if any(o.strip().upper() == "SMTPUTF8" for o in env.mail_options):
        return True
    if not env.sender.isascii():
        return True
    for r in recipients:
        orcpt = parse_orcpt(r.orcpt)
        if not r.address.isascii() or (orcpt is not None and not orcpt[1].isascii()):
            return True
    return False


def _recipient_record(fact: RecipientFacts) -> dict[str, object]:
    reply = fact.reply
    return {
        "address": fact.recipient.address,
        "orcpt": fact.orcpt[1] if fact.orcpt else None,
        "action": fact.action,
        "status": fact.status,
        "expired": fact.expired,
        "reply": reply.render() if reply else None,
        "remote_host": reply.remote_host if reply else None,
        "rule": fact.rule,
        "category": fact.category,
        "second_opinion": (
            {
                "first_route": fact.second_opinion[0],
                "first_reply": fact.second_opinion[1].render(),
                "second_route": fact.second_opinion[2],
            }
            if fact.second_opinion is not None
            else None
        ),
        "attempts": fact.attempts,
        "routes": [{"route": r, "attempts": n} for r, n in fact.routes],
        "last_attempt": (
            iso_utc(fact.last_attempt_at) if fact.last_attempt_at is not None else None
        ),
    }
