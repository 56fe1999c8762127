"""The facts a delivery report states about a message and its recipients (pure).

Shared by the machine-readable part (`bounce`), the human-readable part
(`dsn_text`) and the JSON record, so that all three tell the same story.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relayguard.model import Attempt, QueuedMessage, Recipient, Reply

# The rule name the policy engine gives a bounce for an expired message lifetime.
LIFETIME_RULE = "builtin:lifetime"
# RFC 3463 "Delivery time expired": used only when no better 4.x.y code is known.
EXPIRED_STATUS = "4.4.7"


class ReportKind(StrEnum):
    BOUNCE = "bounce"
    DELAY = "delay"
    RELAYED = "relayed"


ACTIONS: dict[ReportKind, str] = {
    ReportKind.BOUNCE: "failed",
    ReportKind.DELAY: "delayed",
    ReportKind.RELAYED: "relayed",
}


@dataclass(frozen=True, slots=True)
class ReportContext:
    """What a report needs from outside the message: who reports, and when.

    `max_lifetime` (seconds) lets a failure be recognised as a lifetime expiry
    even when the deciding rule is not `LIFETIME_RULE`. `return_size_limit`
    (bytes): a RET=FULL original larger than this is returned as headers only,
    as Postfix does with `bounce_size_limit`; None returns it whole.
    """

    reporting_mta: str
    now: float
    postmaster: str = "postmaster"
    max_lifetime: float | None = None
    return_size_limit: int | None = None

    @property
    def postmaster_address(self) -> str:
        if "@" in self.postmaster:
            return self.postmaster
        return f"{self.postmaster}@{self.reporting_mta}"


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    """One recipient as a report states it."""

    recipient: Recipient
    action: str
    status: str
    expired: bool
    rule: str | None
    routes: tuple[tuple[str, int], ...]  # (route, attempts) in first-tried order
    attempts: int
    last_attempt_at: float | None
    orcpt: tuple[str, str] | None  # (address type, decoded address)
    category: str | None = None  # the classification of the last refusal
    # A second opinion that was refused too: (first route, its reply, second route).
    second_opinion: tuple[str, Reply, str] | None = None

    @property
    def reply(self) -> Reply | None:
        return self.recipient.last_reply


# ---------------------------------------------------------------- dates


def rfc5322_date(ts: float) -> str:
    """`Mon, 01 Jan 2024 12:00:00 +0000` (UTC, so the result is pure)."""
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def duration_words(seconds: float) -> str:
    """`2 days 3 hours`, `45 minutes`: the two largest units, for people."""
    total = max(0, int(seconds))
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    words: list[str] = []
    for name, size in units:
        count, total = divmod(total, size)
        if count:
            words.append(f"{count} {name}{'' if count == 1 else 's'}")
        if len(words) == 2:
            break
    return " ".join(words) or "0 seconds"


# ---------------------------------------------------------------- xtext (RFC 3461, RFC 6533)

_XTEXT_HEX = re.compile(rb"\+([0-9A-Fa-f]{2})")
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_MAX_CODEPOINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (`+2B` is `+`); a stray `+` is kept as it is."""
    raw = _XTEXT_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def unitext_decode(value: str) -> str:
    r"""Decode RFC 6533 utf-8-addr-xtext / -unitext (`\x{E9}` is `é`)."""

    def one(m: re.Match[str]) -> str:
        point = int(m.group(1), 16)
        if point > _MAX_CODEPOINT or point in _SURROGATES:
            return m.group(0)
        return chr(point)

    return _EMBEDDED.sub(one, value)


def _needs_escape(ch: str, *, ascii_only: bool) -> bool:
    point = ord(ch)
    if point <= 0x20 or point == 0x7F or ch in "+=\\":
        return True
    return ascii_only and point > 0x7F


def unitext_encode(address: str, *, ascii_only: bool) -> str:
    """RFC 6533 utf-8-addr-xtext (`ascii_only`) or utf-8-addr-unitext."""
    return "".join(
        f"\\x{{{ord(ch):X}}}" if _needs_escape(ch, ascii_only=ascii_only) else ch for ch in address
    )


def parse_orcpt(orcpt: str | None) -> tuple[str, str] | None:
    """`rfc822;bob+2Bx@example.com` as received -> (`rfc822`, `bob+x@example.com`)."""
    if not orcpt:
        return None
    addr_type, sep, value = orcpt.partition(";")
    if not sep:
        addr_type, value = "rfc822", orcpt
    addr_type = addr_type.strip().lower() or "rfc822"
    address = xtext_decode(value.strip())
    if addr_type == "utf-8":
        address = unitext_decode(address)
    return addr_type, address


def typed_address(address: str, *, utf8: bool, addr_type: str = "rfc822") -> str:
    """An address as a DSN field value: `rfc822; a@b` or `utf-8; ...` (RFC 6533).

    Like Postfix, the `utf-8` type is used for non-ASCII addresses (or when the
    ORCPT said so); in a message/global-delivery-status the address appears as
    UTF-8, in a plain message/delivery-status as 7-bit utf-8-addr-xtext.
    """
    if addr_type not in ("rfc822", "utf-8"):
        return f"{addr_type}; {address}"
    if addr_type == "rfc822" and address.isascii():
        return f"rfc822; {address}"
    if utf8 and not any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in address):
        return f"utf-8; {address}"  # the plain utf-8-address (Mailbox) form
    return f"utf-8; {unitext_encode(address, ascii_only=not utf8)}"


# ---------------------------------------------------------------- field syntax

FOLD_AT = 78
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def clean(text: str) -> str:
    """One line of untrusted text (a remote reply) made safe to print."""
    return _CONTROL.sub("?", text.replace("\t", " "))


def format_fields(fields: Sequence[tuple[str, str]], *, utf8: bool) -> bytes:
    """DSN fields as CRLF-separated bytes; 7-bit unless `utf8` (RFC 6533)."""
    lines: list[str] = []
    for name, value in fields:
        text = clean(value)
        if not utf8:
            text = text.encode("ascii", errors="replace").decode("ascii")
        lines += fold_field(f"{name}: {text}")
    return "\r\n".join(lines).encode()


def fold_field(line: str) -> list[str]:
    """Fold before existing spaces, so unfolding gives the value back unchanged."""
    out: list[str] = []
    while len(line) > FOLD_AT:
        cut = line.rfind(" ", 0, FOLD_AT)
        if cut <= 0 or not line[:cut].strip():
            cut = line.find(" ", FOLD_AT)
            if cut <= 0:
                break
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return [piece for part in out for piece in hard_split(part, " ")]


MAX_LINE = 998  # RFC 5322 octets, without CRLF
_CHUNK = MAX_LINE // 4 - 2  # characters: safe for any UTF-8 text after a short prefix


def hard_split(line: str, prefix: str) -> list[str]:
    """Split a pathological line (a 1000-character word) so no line exceeds MAX_LINE octets."""
    if len(line.encode()) <= MAX_LINE:
        return [line]
    first, rest = line[:_CHUNK], line[_CHUNK:]
    return [first, *(prefix + rest[i : i + _CHUNK] for i in range(0, len(rest), _CHUNK))]


# ---------------------------------------------------------------- attempts and status


def attempts_for(message: QueuedMessage, address: str) -> list[Attempt]:
    """The attempts that included this recipient (an attempt naming no one counts for all)."""
    return [a for a in message.attempts if not a.recipients or address in a.recipients]


def route_counts(attempts: list[Attempt]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    for attempt in attempts:
        counts[attempt.route] = counts.get(attempt.route, 0) + 1
    return tuple(counts.items())


def is_expired(
    message: QueuedMessage, recipient: Recipient, rule: str | None, ctx: ReportContext
) -> bool:
    """Did this recipient fail because the message outlived its queue lifetime?"""
    if rule == LIFETIME_RULE:
        return True
    reply = recipient.last_reply
    if reply is not None and reply.is_permanent:
        return False  # a 5xx is its own reason, whatever the age
    return ctx.max_lifetime is not None and ctx.now - message.arrival_at >= ctx.max_lifetime


def _with_class(klass: str, status: str) -> str:
    _, _, rest = status.partition(".")
    return f"{klass}.{rest}" if rest else f"{klass}.0.0"


def report_status(reply: Reply | None, kind: ReportKind, *, expired: bool) -> str:
    """The RFC 3463 Status field for one recipient.

    A failure is class 5 even when the last reply was a 4xx that policy made
    permanent (same subject and detail). A lifetime expiry is the exception,
    as in Postfix: it keeps the last 4.x.y the receiver gave (RFC 3463 says to
    prefer "the code for the actual problem" to 4.4.7), and says 4.4.7 only
    when there is no better code. A delay is always class 4, even while
    policy retries a 5xx (an RBL block, say); a relay report is class 2.
    """
    if kind is ReportKind.RELAYED:
        ok = reply is not None and reply.is_success and reply.enhanced
        return _with_class("2", reply.status()) if ok and reply is not None else "2.0.0"
    if kind is ReportKind.DELAY:
        return _with_class("4", reply.status() if reply is not None else "4.0.0")
    if expired and (reply is None or not reply.is_permanent):
        known = reply is not None and reply.status().startswith("4.") and reply.enhanced
        return reply.status() if known and reply is not None else EXPIRED_STATUS
    return _with_class("5", reply.status() if reply is not None else "5.0.0")


def recipient_facts(
    message: QueuedMessage,
    recipient: Recipient,
    kind: ReportKind,
    ctx: ReportContext,
    rule: str | None,
) -> RecipientFacts:
    rule = recipient.failed_rule or rule
    expired = kind is ReportKind.BOUNCE and is_expired(message, recipient, rule, ctx)
    tried = attempts_for(message, recipient.address)
    category = next((a.category for a in reversed(tried) if a.category), None)
    return RecipientFacts(
        recipient=recipient,
        action=ACTIONS[kind],
        status=report_status(recipient.last_reply, kind, expired=expired),
        expired=expired,
        rule=rule,
        routes=route_counts(tried),
        attempts=len(tried),
        last_attempt_at=max((a.at for a in tried), default=None),
        orcpt=parse_orcpt(recipient.orcpt),
        category=category,
        second_opinion=second_opinion_refused(tried),
    )


def second_opinion_refused(tried: Sequence[Attempt]) -> tuple[str, Reply, str] | None:
    """(first route, its reply, second route) when another egress was asked and refused."""
    for i, asked in enumerate(tried):
        if asked.second_opinion != "asked":
            continue
        for later in tried[i + 1 :]:
            if later.second_opinion == "refused":
                return asked.route, asked.reply, later.route
    return None


def remote_mta(reply: Reply | None) -> str | None:
    """`mx.example.com` from `mx.example.com[192.0.2.1]`; None for synthetic replies."""
    if reply is None or reply.synthetic or not reply.remote_host:
        return None
    host = reply.remote_host.strip()
    name, bracket, _ = host.partition("[")
    return name.strip() if bracket and name.strip() else host
