"""The vocabulary of reply classification: categories, scopes and a classification.

Stable names: they appear in logs, JSON records, metrics labels, policy files
and the NDR, so a rename is a breaking change for operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    """What kind of reply it is, whatever its code says."""

    RBL_BLOCK = "rbl_block"  # our IP/range/HELO on a DNSBL or a provider's block list
    THROTTLE = "throttle"  # rate limits, busy, too many connections or messages
    SPAM_CONTENT = "spam_content"  # this message judged spam/virus; domain/URI lists
    POLICY = "policy"  # SPF/DKIM/DMARC, auth, relay, TLS, PTR, format, allow lists
    NO_SUCH_USER = "no_such_user"  # the recipient address is not valid
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_BIG = "message_too_big"
    TEMPORARY_OTHER = "temporary_other"  # greylisting, local errors, DNS failures
    PERMANENT_OTHER = "permanent_other"  # loops, protocol errors, generic rejects


class Scope(StrEnum):
    """Whose problem the reply is: what another attempt would have to change."""

    EGRESS = "egress"  # our address, range, HELO, smarthost account or reputation
    DESTINATION = "destination"  # the receiving system as a whole
    RECIPIENT = "recipient"  # this one recipient
    MESSAGE = "message"  # this message: content, size, sender domain, format


# Short names for the signal and status-code tables, which list hundreds of entries.
RBL, THROTTLE, SPAM = Category.RBL_BLOCK, Category.THROTTLE, Category.SPAM_CONTENT
POLICY, NO_USER, FULL = Category.POLICY, Category.NO_SUCH_USER, Category.MAILBOX_FULL
TOO_BIG, TEMP, PERM = (
    Category.MESSAGE_TOO_BIG,
    Category.TEMPORARY_OTHER,
    Category.PERMANENT_OTHER,
)
EGRESS, DEST, RCPT, MSG = Scope.EGRESS, Scope.DESTINATION, Scope.RECIPIENT, Scope.MESSAGE

DEFAULT_SCOPE = {
    Category.RBL_BLOCK: Scope.EGRESS,
    Category.THROTTLE: Scope.DESTINATION,
    Category.SPAM_CONTENT: Scope.MESSAGE,
    Category.POLICY: Scope.MESSAGE,
    Category.NO_SUCH_USER: Scope.RECIPIENT,
    Category.MAILBOX_FULL: Scope.RECIPIENT,
    Category.MESSAGE_TOO_BIG: Scope.MESSAGE,
    Category.TEMPORARY_OTHER: Scope.DESTINATION,
    Category.PERMANENT_OTHER: Scope.MESSAGE,
}

# Plain words for the NDR and `explain`: what the receiver meant.
CATEGORY_MEANING = {
    Category.RBL_BLOCK: "the receiving system blocks the address the mail was sent from",
    Category.THROTTLE: "the receiving system is limiting how much mail it takes from us",
    Category.SPAM_CONTENT: "the receiving system judged the message to be spam or harmful",
    Category.POLICY: "the receiving system's rules do not allow this mail",
    Category.NO_SUCH_USER: "the recipient address does not exist or is disabled",
    Category.MAILBOX_FULL: "the recipient's mailbox is full",
    Category.MESSAGE_TOO_BIG: "the message is larger than the receiving system accepts",
    Category.TEMPORARY_OTHER: "the receiving system had a temporary problem",
    Category.PERMANENT_OTHER: "the receiving system refused the message for good",
}


@dataclass(frozen=True, slots=True)
class Classification:
    """What a reply means. `signal` names the pattern or code-table entry that decided
    (a stable id such as `rbl.dnsbl-name` or `code:X.2.2`); `evidence` says what in the
    reply matched it, for `explain` and the logs."""

    category: Category
    scope: Scope
    signal: str
    evidence: str
    retry_in: float | None = None  # seconds the text asks us to wait, bounded

    def to_dict(self) -> dict[str, object]:
        return {
            "category": self.category.value,
            "scope": self.scope.value,
            "signal": self.signal,
            "evidence": self.evidence,
            "retry_in": self.retry_in,
        }
