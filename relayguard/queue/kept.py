"""What bounced because of our egress: which copies to keep, and what to send again.

During an RBL listing of our egress, receivers refuse mail that they would take
from any other address; once the listing is over, the senders' mail can simply
go again. So when a message finishes with recipients that failed on such a
refusal, the spool keeps its copy for `[queue] keep_bounced` (`keep_for`), and
`relayguard queue resend` queues those recipients again as a new message
(`plan_resend`). The NDR is sent as ever: keeping is in addition, never instead.

Pure: the caller hands in the messages, the settings and `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from relayguard.config import QueueSettings
from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    QueuedMessage,
    Recipient,
    RecipientState,
)
from relayguard.policy.categories import Scope
from relayguard.queue.spool import Keep, KeptMessage, Resend


def egress_failures(message: QueuedMessage) -> dict[str, Attempt]:
    """The failed recipients whose failure was a refusal of our egress, each with the
    attempt of that refusal. The refusal is the attempt whose reply the recipient
    failed with (what its NDR quotes): not necessarily the last attempt, since a bounce
    after our own synthetic reply (a timeout) quotes the last real one. An operator's
    bounce, or an expiry with no real reply, quotes no attempt: not kept."""
    found: dict[str, Attempt] = {}
    for r in message.envelope.recipients:
        if r.state is not RecipientState.FAILED or r.last_reply is None:
            continue
        refusal = next(
            (
                a
                for a in reversed(message.attempts)
                if a.reply == r.last_reply and (not a.recipients or r.address in a.recipients)
            ),
            None,
        )
        if refusal is not None and refusal.scope == Scope.EGRESS:
            found[r.address] = refusal
    return found


def keep_for(message: QueuedMessage, queue: QueueSettings, now: float) -> Keep | None:
    """Whether the finished `message` is kept, and until when: only when keeping is on,
    the message is done, one of its recipients failed because of our egress, and its
    copy fits in keep_bounced_max_size at all."""
    if (
        queue.keep_bounced <= 0
        or message.state is not MessageState.DONE
        or message.size > queue.keep_bounced_max_size
        or not egress_failures(message)
    ):
        return None
    return Keep(now, now + queue.keep_bounced, queue.keep_bounced_max_size)


@dataclass(frozen=True, slots=True)
class ResendChoice:
    """One kept copy to queue again: which of its recipients, and why each failed."""

    kept: KeptMessage
    refusals: tuple[tuple[Recipient, Attempt], ...]  # as they failed, in envelope order
    resend: Resend

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(r.address for r, _ in self.refusals)


def bounced_at(refusal: Attempt) -> float:
    """When the refusal came back: when the recipient bounced."""
    return refusal.at + refusal.duration


def plan_resend(
    kept: Sequence[KeptMessage],
    now: float,
    *,
    category: str | None = None,
    since: float | None = None,
    route: str | None = None,
) -> list[ResendChoice]:
    """What `queue resend` queues: of every copy whose window is still open, the
    recipients that failed because of our egress and have not been resent, narrowed
    to the refusals of `category` and to those that bounced in the last `since`
    seconds; each copy becomes one new message, due now, pinned to `route` if given."""
    choices = []
    for k in kept:
        if k.until <= now:
            continue  # its window has ended: the sweep drops it
        failures = egress_failures(k.message)
        refusals = tuple(
            (r, failures[r.address])
            for r in k.message.envelope.recipients
            if r.address in failures
            and r.address not in k.resent
            and (category is None or failures[r.address].category == category)
            and (since is None or bounced_at(failures[r.address]) >= now - since)
        )
        if refusals:
            envelope = resend_envelope(k.message.envelope, [r for r, _ in refusals], route)
            choices.append(ResendChoice(k, refusals, Resend(k.message.seq, envelope, now)))
    return choices


def resend_envelope(
    envelope: Envelope, recipients: Sequence[Recipient], route: str | None
) -> Envelope:
    """The envelope of the new delivery: the sender's own, with these recipients queued
    afresh (their DSN requests kept, what happened to them forgotten), pinned to
    `route` when one is named."""
    fresh = tuple(Recipient(r.address, orcpt=r.orcpt, notify=r.notify) for r in recipients)
    pinned = (route,) if route is not None else envelope.pinned_routes
    return replace(envelope, recipients=fresh, pinned_routes=pinned)
