"""Plain values shared by every layer: replies, recipients, attempts, decisions.

Nothing here does I/O or reads the clock. Times are POSIX seconds (float) handed
in by the caller, so the same values serve the live server and the replay.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Phase(StrEnum):
    """Where in the SMTP conversation a reply was received (or a failure happened)."""

    CONNECT = "connect"
    GREETING = "greeting"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"  # SMTP AUTH to a smarthost (RFC 4954), after STARTTLS
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    AFTER_DATA = "after-data"


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def split_enhanced(text: str) -> tuple[str | None, str]:
    """Split an RFC 3463 enhanced status code off the front of a reply text."""
    stripped = text.strip()
    m = _ENHANCED.match(stripped)
    if m is None:
        return None, stripped
    return m.group(0), stripped[m.end() :].strip()


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from an upstream server, or a synthetic one for a network failure.

    `synthetic` replies are made by relayguard at the delivery boundary
    (connection refused, timeout, TLS failure, drop) so that nothing above the
    boundary deals with socket exceptions.
    """

    code: int
    enhanced: str | None
    text: str
    phase: Phase
    remote_host: str = ""
    synthetic: bool = False

    @classmethod
    def parse(
        cls,
        code: int,
        message: str,
        phase: Phase,
        remote_host: str = "",
        *,
        synthetic: bool = False,
    ) -> Reply:
        # Multi-line replies arrive joined by newlines; each line repeats the
        # enhanced code, so keep the first and strip it from the others.
        lines = [ln for ln in message.replace("\r", "").split("\n") if ln.strip()]
        enhanced: str | None = None
        texts: list[str] = []
        for line in lines:
            enh, rest = split_enhanced(line)
            if enhanced is None and enh is not None:
                enhanced = enh
            texts.append(rest)
        return cls(code, enhanced, " ".join(texts), phase, remote_host, synthetic)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def status(self) -> str:
        """The RFC 3463 status for this reply, derived from the basic code if absent."""
        if self.enhanced is not None:
            return self.enhanced
        return f"{self.code // 100}.0.0"

    def render(self) -> str:
        """The reply as an operator reads it in logs: `554 5.7.1 text`."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "phase": self.phase.value,
            "remote_host": self.remote_host,
            "synthetic": self.synthetic,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Reply:
        enhanced = d.get("enhanced")
        return cls(
            code=int(str(d["code"])),
            enhanced=str(enhanced) if enhanced is not None else None,
            text=str(d.get("text", "")),
            phase=Phase(str(d.get("phase", Phase.AFTER_DATA.value))),
            remote_host=str(d.get("remote_host", "")),
            synthetic=bool(d.get("synthetic", False)),
        )


def network_reply(enhanced: str, text: str, phase: Phase, remote_host: str = "") -> Reply:
    """A synthetic 4xx reply standing for a network failure (Postfix says the same)."""
    return Reply(421, enhanced, text, phase, remote_host, synthetic=True)


class RecipientState(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient and where it stands."""

    address: str
    state: RecipientState = RecipientState.QUEUED
    orcpt: str | None = None
    notify: tuple[str, ...] = ()
    last_reply: Reply | None = None
    delivered_via: str | None = None
    failed_rule: str | None = None
    delay_warned: bool = False

    @property
    def domain(self) -> str:
        return domain_of(self.address)

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "state": self.state.value,
            "orcpt": self.orcpt,
            "notify": list(self.notify),
            "last_reply": self.last_reply.to_dict() if self.last_reply else None,
            "delivered_via": self.delivered_via,
            "failed_rule": self.failed_rule,
            "delay_warned": self.delay_warned,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Recipient:
        last = d.get("last_reply")
        notify = d.get("notify") or []
        assert isinstance(notify, list)
        orcpt = d.get("orcpt")
        via = d.get("delivered_via")
        rule = d.get("failed_rule")
        return cls(
            address=str(d["address"]),
            state=RecipientState(str(d.get("state", "queued"))),
            orcpt=str(orcpt) if orcpt is not None else None,
            notify=tuple(str(n) for n in notify),
            last_reply=Reply.from_dict(last) if isinstance(last, dict) else None,
            delivered_via=str(via) if via is not None else None,
            failed_rule=str(rule) if rule is not None else None,
            delay_warned=bool(d.get("delay_warned", False)),
        )


def domain_of(address: str) -> str:
    """The destination domain of an address, lower-cased; '' for a bare local part."""
    _, _, domain = address.rpartition("@")
    return domain.lower() if "@" in address else ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the sending MTA told us in MAIL FROM / RCPT TO."""

    sender: str
    recipients: tuple[Recipient, ...]
    mail_options: tuple[str, ...] = ()  # passed upstream (BODY=8BITMIME, SMTPUTF8...)
    ret: str | None = None  # DSN RET=FULL|HDRS
    envid: str | None = None  # DSN ENVID
    client_address: str = ""
    client_helo: str = ""
    pinned_routes: tuple[str, ...] = ()  # only these routes (NDRs through [ndr] route)

    def to_dict(self) -> dict[str, object]:
        return {
            "sender": self.sender,
            "recipients": [r.to_dict() for r in self.recipients],
            "mail_options": list(self.mail_options),
            "ret": self.ret,
            "envid": self.envid,
            "client_address": self.client_address,
            "client_helo": self.client_helo,
            "pinned_routes": list(self.pinned_routes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Envelope:
        rcpts = d.get("recipients") or []
        opts = d.get("mail_options") or []
        assert isinstance(rcpts, list)
        assert isinstance(opts, list)
        ret = d.get("ret")
        envid = d.get("envid")
        return cls(
            sender=str(d["sender"]),
            recipients=tuple(Recipient.from_dict(r) for r in rcpts),
            mail_options=tuple(str(o) for o in opts),
            ret=str(ret) if ret is not None else None,
            envid=str(envid) if envid is not None else None,
            client_address=str(d.get("client_address", "")),
            client_helo=str(d.get("client_helo", "")),
            pinned_routes=tuple(str(r) for r in d.get("pinned_routes") or []),  # type: ignore[attr-defined]
        )

    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.state is RecipientState.QUEUED)

    def with_recipients(self, recipients: tuple[Recipient, ...]) -> Envelope:
        return replace(self, recipients=recipients)


class SecondOpinion(StrEnum):
    """An attempt's part in a second opinion (asking another egress before bouncing)."""

    NONE = ""
    ASKED = "asked"  # this reply was refused here; another egress is asked next
    ACCEPTED = "accepted"  # the other egress took the mail: the refusal was egress-specific
    REFUSED = "refused"  # the other egress refused too: the recipient bounces


class Action(StrEnum):
    """What the policy decided for a recipient after a non-success reply."""

    DEFER = "defer"  # keep queued, try again at retry_at
    REROUTE = "reroute"  # try again now, through the named routes
    BOUNCE = "bounce"  # permanent failure: NDR


@dataclass(frozen=True, slots=True)
class Suspension:
    """A route held back from a destination ('*' for every destination) until a time."""

    route: str
    destination: str
    until: float
    reason: str  # the reply, rendered
    rule: str
    # Held back only while another egress gives its second opinion: lifted when that
    # opinion is a refusal too (the reply was about the message, not the route).
    provisional: bool = False
    # The reply's category: a route whose egress leaves a DNSBL gets its rbl_block
    # suspensions lifted early.
    category: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "route": self.route,
            "destination": self.destination,
            "until": self.until,
            "reason": self.reason,
            "rule": self.rule,
            "provisional": self.provisional,
            "category": self.category,
        }


@dataclass(frozen=True, slots=True)
class Throttle:
    """A lowered connection limit for a route and destination until a time."""

    route: str
    destination: str
    max_connections: int
    until: float
    rule: str

    def to_dict(self) -> dict[str, object]:
        return {
            "route": self.route,
            "destination": self.destination,
            "max_connections": self.max_connections,
            "until": self.until,
            "rule": self.rule,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to one reply; names the rule so every choice can be explained."""

    action: Action
    rule: str
    reply: Reply
    retry_at: float | None = None
    reroute_to: tuple[str, ...] = ()
    suspend: Suspension | None = None
    throttle: Throttle | None = None
    reason: str = ""
    category: str = ""  # the reply's classification (policy/categories.py)
    scope: str = ""
    evidence: str = ""
    second_opinion: SecondOpinion = SecondOpinion.NONE

    def to_dict(self) -> dict[str, object]:
        return {
            "action": self.action.value,
            "rule": self.rule,
            "retry_at": self.retry_at,
            "reroute_to": list(self.reroute_to),
            "suspend": self.suspend.to_dict() if self.suspend else None,
            "throttle": self.throttle.to_dict() if self.throttle else None,
            "reason": self.reason,
            "category": self.category,
            "scope": self.scope,
            "evidence": self.evidence,
            "second_opinion": self.second_opinion.value,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt of some recipients of a message through one route."""

    at: float
    route: str
    recipients: tuple[str, ...]
    reply: Reply
    action: str  # "delivered" or a Decision action
    rule: str = ""
    duration: float = 0.0
    category: str = ""  # the reply's classification; "" for a delivery
    second_opinion: str = ""  # a SecondOpinion value
    scope: str = ""  # whose problem the reply was (a Scope value); "" for a delivery

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "at": self.at,
            "route": self.route,
            "recipients": list(self.recipients),
            "reply": self.reply.to_dict(),
            "action": self.action,
            "rule": self.rule,
            "duration": self.duration,
        }
        if self.category:
            d["category"] = self.category
        if self.second_opinion:
            d["second_opinion"] = self.second_opinion
        if self.scope:
            d["scope"] = self.scope
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Attempt:
        rcpts = d.get("recipients") or []
        reply = d["reply"]
        assert isinstance(rcpts, list)
        assert isinstance(reply, dict)
        return cls(
            at=float(str(d["at"])),
            route=str(d["route"]),
            recipients=tuple(str(r) for r in rcpts),
            reply=Reply.from_dict(reply),
            action=str(d["action"]),
            rule=str(d.get("rule", "")),
            duration=float(str(d.get("duration", 0.0))),
            category=str(d.get("category", "")),
            second_opinion=str(d.get("second_opinion", "")),
            scope=str(d.get("scope", "")),
        )


class MessageState(StrEnum):
    ACTIVE = "active"  # queued, will be tried when due
    HELD = "held"  # operator hold: never tried until released
    DONE = "done"  # every recipient delivered or failed
    # A copy of a done message some of whose recipients bounced because of our egress
    # ([queue] keep_bounced): never delivered, dropped when its window ends, sent again
    # only by `relayguard queue resend`.
    KEPT = "kept"


@dataclass(slots=True)
class QueuedMessage:
    """A message as the queue manager sees it (the body is loaded separately)."""

    seq: int  # the spool's own ordering key; compact, for the scheduler
    queue_id: str  # what operators see and type
    envelope: Envelope
    arrival_at: float
    next_attempt_at: float
    state: MessageState = MessageState.ACTIVE
    size: int = 0
    message_id: str = ""
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return self.envelope.pending()


@dataclass(frozen=True, slots=True)
class Transaction:
    """One SMTP transaction to send upstream: what the queue asks of delivery."""

    sender: str
    recipients: Sequence[tuple[str, Sequence[str]]]  # address, RCPT parameters
    body: bytes
    mail_options: Sequence[str] = ()  # parameters for MAIL FROM, passed when the peer has them
    dsn_mail_options: Sequence[str] = ()  # RET=, ENVID=: only when the peer offers DSN
    dsn_rcpt: bool = False  # whether RCPT parameters are DSN ones (dropped without DSN)

    @classmethod
    def of(cls, envelope: Envelope, recipients: Sequence[Recipient], body: bytes) -> Transaction:
        """The transaction for these recipients of a message; DSN parameters (RFC 3461)
        are passed upstream as the sender gave them, when the peer offers DSN."""
        dsn_mail = []
        if envelope.ret:
            dsn_mail.append(f"RET={envelope.ret}")
        if envelope.envid:
            dsn_mail.append(f"ENVID={envelope.envid}")
        rcpts = []
        for r in recipients:
            params = []
            if r.notify:
                params.append("NOTIFY=" + ",".join(r.notify))
            if r.orcpt:
                params.append(f"ORCPT={r.orcpt}")
            rcpts.append((r.address, tuple(params)))
        return cls(
            sender=envelope.sender,
            recipients=rcpts,
            body=body,
            mail_options=envelope.mail_options,
            dsn_mail_options=tuple(dsn_mail),
            dsn_rcpt=True,
        )


@dataclass(slots=True)
class Outcome:
    """Per-recipient replies of one transaction, and facts about the session: what
    delivery answers the queue (every network failure already a synthetic Reply)."""

    replies: dict[str, Reply]
    remote_host: str
    peer_has_dsn: bool = False
    tls: bool = False
    possible_duplicate: bool = False
