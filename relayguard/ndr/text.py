"""The human-readable first part of a delivery report (pure).

Postfix's wording where it fits, plus what relayguard knows that Postfix does
not say: the routes tried, the policy rule that decided, and what the sender
can do about this class of failure.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from relayguard.model import Phase, QueuedMessage, Reply, domain_of
from relayguard.ndr.facts import (
    RecipientFacts,
    ReportContext,
    ReportKind,
    clean,
    duration_words,
    hard_split,
    rfc5322_date,
)
from relayguard.policy.categories import CATEGORY_MEANING, Category

if TYPE_CHECKING:
    from collections.abc import Sequence

WIDTH = 78

_IN_REPLY_TO = {
    Phase.GREETING: "in reply to the initial greeting",
    Phase.HELO: "in reply to EHLO command",
    Phase.STARTTLS: "in reply to STARTTLS command",
    Phase.AUTH: "in reply to AUTH command",
    Phase.MAIL: "in reply to MAIL FROM command",
    Phase.RCPT: "in reply to RCPT TO command",
    Phase.DATA: "in reply to DATA command",
    Phase.AFTER_DATA: "in reply to end of DATA command",
}

WARNING_BANNER = (
    "####################################################################\n"
    "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
    "####################################################################"
)


def _wrap(text: str, *, indent: str = "") -> list[str]:
    lines = textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [piece for line in lines for piece in hard_split(line, indent + "    ")] or [""]


def describe_reply(reply: Reply | None) -> str:
    """`host mx[192.0.2.1] said: 550 5.1.1 text (in reply to RCPT TO command)`."""
    if reply is None:
        return "no delivery attempt got a reply"
    if reply.synthetic:
        return clean(reply.text) or clean(reply.render())
    said = clean(reply.render())
    where = _IN_REPLY_TO.get(reply.phase)
    suffix = f" ({where})" if where else ""
    if reply.remote_host:
        return f"host {clean(reply.remote_host)} said: {said}{suffix}"
    return f"the receiving server said: {said}{suffix}"


def _routes(facts: RecipientFacts) -> str:
    if not facts.routes:
        return "No delivery attempt was made."
    routes = ", ".join(f"{route} ({n} time{'' if n == 1 else 's'})" for route, n in facts.routes)
    return f"Tried {facts.attempts} time{'' if facts.attempts == 1 else 's'}, through: {routes}."


_EXPIRED_ADVICE = (
    "The receiving system could not be reached, or kept deferring the message, "
    "for the whole time it could stay in our queue ({age}). Nothing is known to be "
    "wrong with the message itself: you may send it again later, and if this keeps "
    "happening, tell the recipient another way that their mail system is not "
    "accepting mail."
)
_SIZE_ADVICE = (
    "The message is larger than the receiving system accepts. Send it in smaller "
    "parts, or share large files by link."
)
_DOMAIN_ADVICE = (
    "The recipient's domain does not accept mail, or does not exist. Check the "
    'part of the address after the "@".'
)
# By (subject, detail) of the RFC 3463 status first, then by subject alone.
_ADVICE_DETAIL: dict[tuple[int, int], str] = {
    (1, 2): _DOMAIN_ADVICE,
    (1, 10): _DOMAIN_ADVICE,
    (2, 2): "The recipient's mailbox is full. Try again later, or reach the recipient another way.",
    (2, 3): _SIZE_ADVICE,
    (3, 4): _SIZE_ADVICE,
}
_ADVICE_SUBJECT: dict[int, str] = {
    1: (
        "The receiving system says this address does not exist. Check it for typing "
        "errors, or ask the recipient for the correct address."
    ),
    2: "The recipient's mailbox is not accepting mail. Reach the recipient another way.",
    4: (
        "The receiving system could not be reached or routed to. Try again later; if "
        "it keeps failing, contact the recipient's postmaster {theirs}."
    ),
    6: (
        "The receiving system did not accept the content or format of the message. "
        "Check its attachments and encoding, or send it as plain text."
    ),
    7: (
        "The receiving system refused the message for policy or reputation reasons "
        "(a block list, a spam filter, or sender authentication). Changing the message "
        "rarely helps. Contact the recipient's postmaster {theirs} by other means and "
        "include the reply quoted above; please also tell our postmaster {ours}."
    ),
}
_ADVICE_DEFAULT = "Contact our postmaster {ours} and include this report."


def _subject_detail(status: str) -> tuple[int, int]:
    parts = status.split(".")
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return 0, 0


def advice(facts: RecipientFacts, message: QueuedMessage, ctx: ReportContext) -> str:
    """What the sender can do, by the class of the failure."""
    subject, detail = _subject_detail(facts.status)
    if facts.expired:
        template = _EXPIRED_ADVICE
    else:
        template = _ADVICE_DETAIL.get(
            (subject, detail), _ADVICE_SUBJECT.get(subject, _ADVICE_DEFAULT)
        )
    domain = domain_of(facts.recipient.address) or "the recipient domain"
    return template.format(
        age=duration_words(ctx.now - message.arrival_at),
        ours=f"<{ctx.postmaster_address}>",
        theirs=f"<postmaster@{clean(domain)}>",
    )


_DELAY_NOTES: dict[int, str] = {
    4: "The receiving system cannot be reached at the moment.",
    7: (
        "The receiving system is refusing mail from our servers for policy or "
        "reputation reasons (a block list, or throttling)."
    ),
}


def delay_note(facts: RecipientFacts) -> str:
    """Why a delayed recipient is still waiting; nothing for the sender to do yet."""
    subject, _ = _subject_detail(facts.status)
    why = _DELAY_NOTES.get(subject, "The receiving system is deferring the message.")
    return f"{why} We keep trying, through other routes where we have them."


def _intro(kind: ReportKind, message: QueuedMessage, ctx: ReportContext) -> list[str]:
    if kind is ReportKind.RELAYED:
        return [
            "Your message was delivered to the next mail system for the destinations",
            "listed below. That system does not send delivery notifications, so this",
            "is the last report you will get from us for them.",
        ]
    if kind is ReportKind.DELAY:
        age = duration_words(ctx.now - message.arrival_at)
        return [WARNING_BANNER, "", f"Your message could not be delivered for {age}."]
    return [
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. Details are below.",
    ]


def _about_message(message: QueuedMessage, ctx: ReportContext, returned: str) -> list[str]:
    lines: list[str] = []
    if message.message_id:
        lines.append(f"Message-ID: {clean(message.message_id)}")
    age = duration_words(ctx.now - message.arrival_at)
    lines.append(
        f"Received:   {rfc5322_date(message.arrival_at)}, {age} ago (queue ID {message.queue_id})"
    )
    lines.append(f"Attempts:   {len(message.attempts)} delivery attempt(s) so far")
    lines.append(f"Returned:   {returned}")
    return lines


def human_text(
    message: QueuedMessage,
    facts: Sequence[RecipientFacts],
    kind: ReportKind,
    ctx: ReportContext,
    *,
    returned: str,
    will_retry_until: float | None = None,
) -> str:
    """The text/plain part, with `\\n` line ends (the caller makes them CRLF)."""
    lines = [f"This is the mail system at host {ctx.reporting_mta}.", ""]
    lines += _intro(kind, message, ctx)
    if will_retry_until is not None:
        lines.append(f"It will be retried until {rfc5322_date(will_retry_until)}.")
    if kind is not ReportKind.RELAYED:
        lines += [
            "",
            f"For further assistance, please send mail to <{ctx.postmaster_address}>.",
            "If you do so, please include this problem report.",
        ]
    lines += ["", "                   The mail system", ""]
    lines += _about_message(message, ctx, returned)
    for fact in facts:
        lines.append("")
        lines += _wrap(f"<{clean(fact.recipient.address)}>: {describe_reply(fact.reply)}")
        if fact.orcpt is not None:
            lines += _wrap(f"(original recipient: <{clean(fact.orcpt[1])}>)", indent="    ")
        lines += _wrap(f"Status {fact.status}. {_routes(fact)}", indent="    ")
        if fact.category in CATEGORY_MEANING:
            meaning = CATEGORY_MEANING[Category(fact.category)]
            lines += _wrap(f"Kind of failure: {fact.category} ({meaning}).", indent="    ")
        if fact.second_opinion is not None:
            first, reply, second = fact.second_opinion
            lines += _wrap(
                f"First refused through route {clean(first)}: {describe_reply(reply)}. "
                f"A second opinion through route {clean(second)}, which leaves from "
                "another address, was refused too.",
                indent="    ",
            )
        if fact.rule:
            lines += _wrap(f"Decided by policy rule: {clean(fact.rule)}", indent="    ")
        if kind is ReportKind.BOUNCE:
            lines += _wrap(f"What you can do: {advice(fact, message, ctx)}", indent="    ")
        elif kind is ReportKind.DELAY:
            lines += _wrap(f"What happens now: {delay_note(fact)}", indent="    ")
    return "\n".join(lines) + "\n"
