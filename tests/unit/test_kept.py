"""What is kept, and what `queue resend` queues again: the pure selection (queue/kept.py),
the operator's bounce, and how the queue tools show it."""

from __future__ import annotations

import dataclasses

from relayguard.clock import seeded_queue_ids
from relayguard.config import QueueSettings
from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.ops.control import OPERATOR_REPLY
from relayguard.ops.queue_tools import format_kept, format_resend, resend_result, summarize_kept
from relayguard.queue.kept import egress_failures, keep_for, plan_resend
from relayguard.queue.manager import bounce_now, no_reports
from relayguard.queue.spool import Keep, KeptMessage, NewMessage
from relayguard.queue.spool.memory import MemorySpool

NOW = 1_700_000_000.0
HOUR = 3600.0
RBL = Reply(554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked", Phase.RCPT)
PTR = Reply(550, "5.7.25", "The IP address sending this message does not have a PTR", Phase.RCPT)
UNKNOWN = Reply(550, "5.1.1", "User unknown", Phase.RCPT)
TIMEOUT = Reply(421, "4.4.2", "timed out", Phase.DATA, synthetic=True)
WANTED = QueueSettings(keep_bounced=72 * HOUR, keep_bounced_max_size=10_000)


def refusal(
    reply: Reply, rcpts: tuple[str, ...], *, at: float, route: str = "A", scope: str = "egress"
) -> Attempt:
    category = {RBL: "rbl_block", PTR: "policy", UNKNOWN: "no_such_user"}.get(reply, "")
    return Attempt(at, route, rcpts, reply, "bounce", "r", 1.0, category=category, scope=scope)


def failed(address: str, reply: Reply, **kw: object) -> Recipient:
    return Recipient(address, RecipientState.FAILED, last_reply=reply, failed_rule="r", **kw)  # type: ignore[arg-type]


def message(*recipients: Recipient, attempts: list[Attempt], size: int = 100) -> QueuedMessage:
    envelope = Envelope(
        "alice@origin.example",
        recipients,
        mail_options=("BODY=8BITMIME",),
        ret="HDRS",
        envid="E1",
        client_address="192.0.2.9",
        client_helo="mta.origin.example",
    )
    return QueuedMessage(
        7, "KEPT1", envelope, NOW - 50 * HOUR, NOW, MessageState.DONE, size, "<m@x>", attempts
    )


def incident() -> QueuedMessage:
    """Four recipients: two refused because of our egress (an RBL listing on route A, our
    PTR on route B), one unknown, one delivered."""
    return message(
        failed("r1@example.com", RBL, orcpt="rfc822;r1@example.com", notify=("FAILURE",)),
        failed("r2@example.net", PTR),
        failed("gone@example.com", UNKNOWN),
        Recipient("ok@example.org", RecipientState.DELIVERED, delivered_via="B"),
        attempts=[
            refusal(RBL, ("r1@example.com", "gone@example.com"), at=NOW - 49 * HOUR),
            refusal(UNKNOWN, ("gone@example.com",), at=NOW - 49 * HOUR, scope="recipient"),
            refusal(RBL, ("r1@example.com",), at=NOW - 2 * HOUR),
            refusal(PTR, ("r2@example.net",), at=NOW - 30 * HOUR, route="B"),
        ],
    )


def kept(m: QueuedMessage, *, until: float = NOW + HOUR, resent=frozenset()) -> KeptMessage:
    return KeptMessage(dataclasses.replace(m, state=MessageState.KEPT), NOW, until, resent)


# ---------------------------------------------------------------- what failed because of us


def test_egress_failures_are_the_refusals_the_recipients_failed_with() -> None:
    m = incident()
    assert egress_failures(m) == {
        "r1@example.com": m.attempts[2],  # the latest of its RBL refusals
        "r2@example.net": m.attempts[3],
    }


def test_a_bounce_after_our_own_timeout_is_about_the_refusal_it_quotes() -> None:
    # The round bounced on a synthetic timeout (scope: none of the receiver's) and the
    # NDR quotes the last real reply, the RBL one: that is what the recipient failed on.
    m = message(
        failed("r@example.com", RBL),
        attempts=[
            refusal(RBL, ("r@example.com",), at=NOW - 60),
            refusal(TIMEOUT, ("r@example.com",), at=NOW - 10, route="B", scope=""),
        ],
    )
    assert egress_failures(m) == {"r@example.com": m.attempts[0]}


def test_an_operators_bounce_or_an_expiry_without_a_reply_keeps_nothing() -> None:
    bounced_by_hand = message(
        failed("r@example.com", OPERATOR_REPLY),
        attempts=[refusal(RBL, ("r@example.com",), at=NOW - 60)],
    )
    expired = dataclasses.replace(
        bounced_by_hand,
        envelope=bounced_by_hand.envelope.with_recipients(
            (Recipient("r@example.com", RecipientState.FAILED),)
        ),
    )
    assert egress_failures(bounced_by_hand) == egress_failures(expired) == {}


def test_an_attempt_naming_no_recipient_counts_for_every_one() -> None:
    m = message(failed("r@example.com", RBL), attempts=[refusal(RBL, (), at=NOW - 60)])
    assert list(egress_failures(m)) == ["r@example.com"]


def test_keep_for() -> None:
    m = incident()
    assert keep_for(m, WANTED, NOW) == Keep(NOW, NOW + 72 * HOUR, 10_000)
    assert keep_for(m, QueueSettings(), NOW) is None  # off by default
    assert keep_for(dataclasses.replace(m, state=MessageState.ACTIVE), WANTED, NOW) is None
    assert keep_for(dataclasses.replace(m, size=10_001), WANTED, NOW) is None  # never fits
    assert keep_for(dataclasses.replace(m, size=10_000), WANTED, NOW) is not None
    unknown_only = message(
        failed("gone@example.com", UNKNOWN),
        attempts=[refusal(UNKNOWN, ("gone@example.com",), at=NOW, scope="recipient")],
    )
    assert keep_for(unknown_only, WANTED, NOW) is None


# ---------------------------------------------------------------- what resend queues


def addresses(choices) -> list[list[str]]:
    return [list(c.recipients) for c in choices]


def test_resend_takes_every_egress_refusal_of_every_open_copy() -> None:
    m = incident()
    [choice] = plan_resend([kept(m)], NOW)
    assert choice.recipients == ("r1@example.com", "r2@example.net")  # envelope order
    assert [a for _, a in choice.refusals] == [m.attempts[2], m.attempts[3]]
    assert (choice.resend.seq, choice.resend.arrival_at) == (7, NOW)  # the copy; due now
    env = choice.resend.envelope
    assert env.recipients == (
        Recipient("r1@example.com", orcpt="rfc822;r1@example.com", notify=("FAILURE",)),
        Recipient("r2@example.net"),
    )
    # The sender's own envelope otherwise: DSN requests, options, client.
    assert dataclasses.replace(env, recipients=m.envelope.recipients) == m.envelope


def test_resend_filters() -> None:
    copy = kept(incident())
    assert addresses(plan_resend([copy], NOW, category="rbl_block")) == [["r1@example.com"]]
    assert addresses(plan_resend([copy], NOW, category="policy")) == [["r2@example.net"]]
    assert plan_resend([copy], NOW, category="no_such_user") == []  # never kept for that
    # --since: bounced within the window, the refusal's reply being when it bounced
    # (r1 at NOW - 2h + 1 s of transaction).
    assert addresses(plan_resend([copy], NOW, since=2 * HOUR)) == [["r1@example.com"]]
    assert addresses(plan_resend([copy], NOW, since=2 * HOUR - 1.0)) == [["r1@example.com"]]
    assert plan_resend([copy], NOW, since=2 * HOUR - 1.5) == []
    assert addresses(plan_resend([copy], NOW, since=30 * HOUR)) == [
        ["r1@example.com", "r2@example.net"]
    ]
    assert plan_resend([copy], NOW, category="policy", since=HOUR) == []


def test_resend_pins_the_route_named() -> None:
    m = incident()
    [choice] = plan_resend([kept(m)], NOW, route="B")
    assert choice.resend.envelope.pinned_routes == ("B",)
    # Without one, the copy's own pinning stays (an NDR kept keeps its report route).
    pinned = dataclasses.replace(m, envelope=dataclasses.replace(m.envelope, pinned_routes=("n",)))
    [choice] = plan_resend([kept(pinned)], NOW)
    assert choice.resend.envelope.pinned_routes == ("n",)


def test_resend_never_twice_and_never_past_the_window() -> None:
    m = incident()
    assert addresses(plan_resend([kept(m, resent=frozenset({"r1@example.com"}))], NOW)) == [
        ["r2@example.net"]
    ]
    everything = frozenset({"r1@example.com", "r2@example.net"})
    assert plan_resend([kept(m, resent=everything)], NOW) == []
    assert plan_resend([kept(m, until=NOW)], NOW) == []  # its window has ended
    assert len(plan_resend([kept(m, until=NOW + 0.5), kept(m)], NOW)) == 2


# ---------------------------------------------------------------- how the tools show it


def test_kept_listing() -> None:
    m = incident()
    summary = summarize_kept(
        kept(m, until=NOW + 70 * HOUR, resent=frozenset({"r2@example.net"})), NOW
    )
    assert (summary["state"], summary["kept_at"], summary["until"]) == (
        "kept",
        NOW,
        NOW + 70 * HOUR,
    )
    marks = {
        r["address"]: (r["category"], r["resent"], r["resendable"]) for r in summary["recipients"]
    }
    assert marks == {
        "r1@example.com": ("rbl_block", False, True),
        "r2@example.net": ("policy", True, False),
        "gone@example.com": (None, False, False),
        "ok@example.org": (None, False, False),
    }
    text = format_kept([summary], NOW + HOUR)
    lines = text.splitlines()
    assert lines[0].split() == ["Queue", "ID", "Kept", "Kept", "for", "Size", "Sender"]
    assert lines[1].split() == ["KEPT1", "1h", "in", "2d21h", "100", "<alice@origin.example>"]
    assert "r1@example.com (failed) 554 5.7.1 Service unavailable" in lines[2]
    assert lines[2].endswith("-- rbl_block: can be resent")
    assert lines[3].endswith("-- policy: resent")
    assert "-- " not in lines[4]
    assert lines[-1] == "-- 1 kept copy(ies), 100 bytes"
    assert format_kept([], NOW) == "No kept copies"


def test_resend_report() -> None:
    m = incident()
    choices = plan_resend([kept(m)], NOW, route="B")
    new = dataclasses.replace(m, queue_id="NEW1", state=MessageState.ACTIVE)
    result = resend_result(choices, [new], NOW, dry_run=False, route="B")
    assert (result["messages"], result["recipients"], result["skipped"]) == (1, 2, [])
    [resent] = result["resent"]
    assert (resent["kept_id"], resent["queue_id"], resent["sender"]) == (
        "KEPT1",
        "NEW1",
        "alice@origin.example",
    )
    assert resent["recipients"][0] == {
        "address": "r1@example.com",
        "category": "rbl_block",
        "reply": RBL.render(),
        "route": "A",
        "bounced_at": NOW - 2 * HOUR + 1.0,
    }
    assert format_resend(result).splitlines() == [
        "resend: queued 1 message(s), 2 recipient(s) through route B",
        "  KEPT1 as NEW1 <alice@origin.example>",
        f"    r1@example.com: {RBL.render()} [rbl_block, route A, bounced 1h59m ago]",
        f"    r2@example.net: {PTR.render()} [policy, route B, bounced 1d5h ago]",
    ]
    dry = resend_result(choices, [None], NOW, dry_run=True, route=None)
    assert (dry["messages"], dry["recipients"], dry["resent"][0]["queue_id"]) == (1, 2, None)
    assert format_resend(dry).splitlines()[:2] == [
        "resend: would queue 1 message(s), 2 recipient(s) (dry run: nothing changed)",
        "  KEPT1 <alice@origin.example>",
    ]
    raced = resend_result(choices, [None], NOW, dry_run=False, route="B")
    assert (raced["messages"], raced["skipped"]) == (
        0,
        [{"kept_id": "KEPT1", "why": "resent or dropped meanwhile"}],
    )
    nothing = resend_result([], [], NOW, dry_run=False, route=None)
    assert format_resend(nothing) == (
        "resend: queued 0 message(s), 0 recipient(s); "
        "no kept copy has a recipient left to resend that matches"
    )


async def test_an_operators_bounce_keeps_what_failed_on_our_egress_in_earlier_rounds() -> None:
    spool = MemorySpool(seeded_queue_ids(1))
    env = Envelope("alice@origin.example", (Recipient("r1@example.com"), Recipient("r2@x.org")))
    queued = await spool.accept(NewMessage(env, b"Subject: hi\r\n\r\nhi\r\n", NOW - HOUR))
    # An earlier round: r1 bounced on the RBL reply, r2 is still queued.
    queued.envelope = env.with_recipients((failed("r1@example.com", RBL), env.recipients[1]))
    await spool.update(queued, [refusal(RBL, ("r1@example.com",), at=NOW - HOUR)])
    failed_now, _ = await bounce_now(
        spool, queued.seq, OPERATOR_REPLY, "operator", no_reports, NOW, queue=WANTED
    )
    assert failed_now == ["r2@x.org"]
    [copy] = await spool.kept()
    assert (copy.kept_at, copy.until) == (NOW, NOW + 72 * HOUR)
    assert [c.recipients for c in plan_resend([copy], NOW)] == [("r1@example.com",)]
    # Keeping off: the same bounce keeps nothing.
    again = await spool.accept(NewMessage(env, b"x", NOW))
    await bounce_now(spool, again.seq, OPERATOR_REPLY, "operator", no_reports, NOW)
    assert len(await spool.kept()) == 1
