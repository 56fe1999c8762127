"""What enhanced status codes mean when the text does not say: RFC 3463 and the
codes registered since (RFC 3886, 4468, 4954, 5248, 6710, 7293, 7372, 7505,
8689), then the provider codes that carry more than their class.

Consulted only after the text signals (signals.py): an RBL text on 5.1.x is an
RBL block, quota on 5.1.1 is a full mailbox. Keys are "subject.detail"; a key
with a class ("5.4.4") applies to that class only.
"""

from __future__ import annotations

from relayguard.policy.categories import (
    DEST,
    EGRESS,
    FULL,
    MSG,
    NO_USER,
    PERM,
    POLICY,
    RBL,
    RCPT,
    SPAM,
    TEMP,
    THROTTLE,
    TOO_BIG,
    Category,
    Scope,
)

# Provider codes (three-digit details and Microsoft's ranges), checked first.
# Microsoft: learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-
# in-exchange-online/non-delivery-reports-in-exchange-online; Gmail: support.google.com/a/
# answer/3726730.
PROVIDER_CODES: dict[str, tuple[Category, Scope, str]] = {
    "5.7.350": (SPAM, MSG, "Microsoft: the remote server returned the message as spam"),
    "5.7.501": (RBL, EGRESS, "Microsoft: access denied, spam abuse detected"),
    "5.7.502": (RBL, EGRESS, "Microsoft: access denied, spam abuse detected"),
    "5.7.503": (RBL, EGRESS, "Microsoft: access denied, spam abuse detected"),
    "5.7.504": (NO_USER, RCPT, "Microsoft: recipient address rejected, access denied"),
    "5.7.505": (NO_USER, RCPT, "Microsoft: recipient address rejected, access denied"),
    "5.7.506": (POLICY, EGRESS, "Microsoft: access denied, bad HELO"),
    "5.7.507": (RBL, EGRESS, "Microsoft: access denied, rejected by recipient (IP block)"),
    "5.7.508": (THROTTLE, EGRESS, "Microsoft: the sending IP exceeded permitted limits"),
    "5.7.509": (POLICY, MSG, "Microsoft: sending domain does not pass DMARC"),
    "5.7.510": (POLICY, EGRESS, "Microsoft: access denied, create an outbound connector"),
    "5.7.511": (RBL, EGRESS, "Microsoft: access denied, banned sender"),
    "5.7.512": (POLICY, MSG, "Microsoft: the message must be RFC 5322 compliant"),
    "5.7.513": (RBL, EGRESS, "Microsoft: client host blocked by the customer's block list"),
    "5.7.514": (POLICY, MSG, "Microsoft: the message must be RFC 5322 compliant"),
    "5.7.515": (POLICY, MSG, "Microsoft: the sending domain fails the authentication level"),
    "5.7.520": (POLICY, MSG, "Microsoft: external forwarding is not allowed"),
    "5.7.57": (POLICY, EGRESS, "Microsoft: the client was not authenticated"),
    "5.7.708": (RBL, EGRESS, "Microsoft: traffic not accepted from this IP"),
    "5.7.750": (POLICY, MSG, "Microsoft: client blocked from sending from unregistered domains"),
    "5.2.121": (THROTTLE, RCPT, "Microsoft: sender's hourly limit for this recipient"),
    "5.2.122": (THROTTLE, RCPT, "Microsoft: recipient's hourly receiving limit"),
    "5.4.14": (PERM, DEST, "Microsoft: hop count exceeded (a loop)"),
    "5.4.310": (NO_USER, RCPT, "Microsoft: the recipient's domain does not exist"),
    "5.1.10": (NO_USER, RCPT, "Microsoft: recipient not found"),
    "5.1.90": (THROTTLE, EGRESS, "Microsoft: the sender's daily limit was reached"),
    "4.7.26": (POLICY, MSG, "Gmail: unauthenticated (SPF/DKIM) mail is rate limited"),
    "4.7.27": (POLICY, MSG, "Gmail: the sender's SPF does not pass"),
    "5.7.27": (POLICY, MSG, "Gmail: the sender's SPF does not pass"),
    "4.7.28": (THROTTLE, EGRESS, "Gmail: an unusual rate of unsolicited mail from this IP"),
    "4.7.29": (POLICY, EGRESS, "Gmail: TLS is required for this sender"),
    "4.7.30": (POLICY, MSG, "Gmail: DKIM required"),
    "4.7.32": (POLICY, MSG, "Gmail: From: domain alignment required"),
}


def microsoft_range(code: str) -> tuple[Category, Scope, str] | None:
    """Microsoft's numbered ranges: 5.7.6xx banned sending IPs, 4.7.5xx/6xx busy or
    rate limited, 5.7.7xx tenant sending thresholds, 5.7.13x restricted groups."""
    klass, _, rest = code.partition(".")
    subject, _, detail = rest.partition(".")
    if subject != "7" or not detail.isdigit():
        return None
    n = int(detail)
    if klass == "5" and 600 <= n <= 649:
        return RBL, EGRESS, "Microsoft 5.7.600-649: access denied, banned sending IP"
    if klass == "4" and 500 <= n <= 699:
        return THROTTLE, EGRESS, "Microsoft 4.7.500-699: server busy or rate limited"
    if klass == "5" and 700 <= n <= 749:
        return THROTTLE, EGRESS, "Microsoft 5.7.700-749: the tenant's sending threshold"
    if klass == "5" and 130 <= n <= 139:
        return POLICY, RCPT, "Microsoft 5.7.13x: the group only accepts mail from some senders"
    return None


# RFC 3463 subject.detail, and the codes registered later (IANA "Enumerated Status Codes").
RFC_CODES: dict[str, tuple[Category, Scope, str]] = {
    "1.0": (NO_USER, RCPT, "other address status"),
    "1.1": (NO_USER, RCPT, "bad destination mailbox address"),
    "1.2": (NO_USER, RCPT, "bad destination system address"),
    "1.3": (NO_USER, RCPT, "bad destination mailbox address syntax"),
    "1.4": (NO_USER, RCPT, "destination mailbox address ambiguous"),
    "1.6": (NO_USER, RCPT, "destination mailbox has moved"),
    "1.7": (POLICY, MSG, "bad sender's mailbox address syntax"),
    "1.8": (POLICY, MSG, "bad sender's system address"),
    "1.10": (NO_USER, RCPT, "recipient address has null MX (RFC 7505)"),
    "2.1": (NO_USER, RCPT, "mailbox disabled, not accepting messages"),
    "2.2": (FULL, RCPT, "mailbox full"),
    "2.3": (TOO_BIG, MSG, "message length exceeds administrative limit"),
    "2.4": (PERM, DEST, "mailing list expansion problem"),
    "3.1": (TEMP, DEST, "mail system full"),
    "3.2": (TEMP, DEST, "system not accepting network messages"),
    "3.3": (PERM, DEST, "system not capable of selected features"),
    "3.4": (TOO_BIG, MSG, "message too big for system"),
    "3.5": (TEMP, DEST, "system incorrectly configured"),
    "4.4.1": (TEMP, DEST, "no answer from host"),
    "4.4.2": (TEMP, DEST, "bad connection"),
    "4.4.3": (TEMP, DEST, "directory server failure"),
    "4.4": (TEMP, DEST, "unable to route"),
    "5.4.4": (NO_USER, RCPT, "unable to route: the destination domain has no mail host"),
    "4.5": (THROTTLE, DEST, "mail system congestion"),
    "4.6": (PERM, DEST, "routing loop detected"),
    "4.7": (TEMP, DEST, "delivery time expired"),
    "5.0": (PERM, DEST, "other or undefined protocol status"),
    "5.1": (PERM, DEST, "invalid command"),
    "5.2": (PERM, DEST, "syntax error"),
    "5.3": (THROTTLE, MSG, "too many recipients"),
    "5.4": (PERM, DEST, "invalid command arguments"),
    "5.5": (PERM, DEST, "wrong protocol version"),
    "5.6": (PERM, DEST, "authentication exchange line is too long"),
    "6.0": (PERM, MSG, "other or undefined media error"),
    "6.1": (PERM, MSG, "media not supported"),
    "6.2": (PERM, MSG, "conversion required and prohibited"),
    "6.3": (PERM, MSG, "conversion required but not supported"),
    "6.4": (PERM, MSG, "conversion with loss performed"),
    "6.5": (PERM, MSG, "conversion failed"),
    "6.6": (PERM, MSG, "message content not available"),
    "6.7": (POLICY, MSG, "non-ASCII addresses not permitted for that sender/recipient"),
    "6.8": (POLICY, MSG, "UTF-8 string reply is required, but not permitted by the SMTP client"),
    "6.9": (POLICY, MSG, "UTF-8 header message cannot be transferred"),
    "6.10": (POLICY, MSG, "non-ASCII addresses not permitted"),
    "7.0": (POLICY, MSG, "other or undefined security status"),
    "7.1": (POLICY, MSG, "delivery not authorized, message refused"),
    "7.2": (POLICY, RCPT, "mailing list expansion prohibited"),
    "7.3": (POLICY, MSG, "security conversion required but not possible"),
    "7.4": (POLICY, EGRESS, "security features not supported"),
    "7.5": (POLICY, MSG, "cryptographic failure"),
    "7.6": (POLICY, MSG, "cryptographic algorithm not supported"),
    "7.7": (POLICY, MSG, "message integrity failure"),
    "7.8": (POLICY, EGRESS, "authentication credentials invalid"),
    "7.9": (POLICY, EGRESS, "authentication mechanism is too weak"),
    "7.10": (POLICY, EGRESS, "encryption needed"),
    "7.11": (POLICY, EGRESS, "encryption required for requested authentication mechanism"),
    "7.12": (POLICY, EGRESS, "a password transition is needed"),
    "7.13": (NO_USER, RCPT, "user account disabled"),
    "7.14": (POLICY, EGRESS, "trust relationship required"),
    "7.15": (POLICY, MSG, "priority level is too low"),
    "7.16": (TOO_BIG, MSG, "message is too big for the specified priority"),
    "7.17": (NO_USER, RCPT, "mailbox owner has changed"),
    "7.18": (NO_USER, RCPT, "domain owner has changed"),
    "7.19": (POLICY, MSG, "RRVS test cannot be completed"),
    "7.20": (POLICY, MSG, "no passing DKIM signature found"),
    "7.21": (POLICY, MSG, "no acceptable DKIM signature found"),
    "7.22": (POLICY, MSG, "no valid author-matched DKIM signature found"),
    "7.23": (POLICY, MSG, "SPF validation failed"),
    "7.24": (POLICY, MSG, "SPF validation error"),
    "7.25": (POLICY, EGRESS, "reverse DNS validation failed"),
    "7.26": (POLICY, MSG, "multiple authentication checks failed"),
    "7.27": (POLICY, MSG, "sender address has null MX"),
    "7.28": (THROTTLE, EGRESS, "mail flood detected: too much similar mail from us"),
    "7.29": (POLICY, MSG, "ARC validation failure"),
    "7.30": (POLICY, EGRESS, "REQUIRETLS support required"),
}


# "Other or undefined" details say only the subject; the text's generic words
# ("try again later", "rejected") say as much, and come first.
WEAK_CODES = frozenset({"0.0", "1.0", "2.0", "5.0", "6.0", "7.0"})


def lookup(code: str) -> tuple[Category, Scope, str] | None:
    """The table entry for an enhanced code such as '5.7.606'; None if it says nothing."""
    entry = PROVIDER_CODES.get(code) or microsoft_range(code)
    if entry is not None:
        return entry
    rest = code.partition(".")[2]
    return RFC_CODES.get(code) or RFC_CODES.get(rest)
