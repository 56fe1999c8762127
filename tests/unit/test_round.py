"""The delivery round without sockets or an event loop: steps in, outcomes back."""

from __future__ import annotations

import pytest

from relayguard.model import (
    Envelope,
    MessageState,
    Outcome,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
    Suspension,
)
from relayguard.policy import load_policy
from relayguard.queue.round import Blocked, DeliveryRound, Done, Routes, Send, fail_pending
from relayguard.queue.scheduler import RouteTable

NOW = 1_700_000_000.0
ROUTES = Routes(names=("A", "B"), egress={"A": "h|192.0.2.1", "B": "h|192.0.2.2"})
POLICY = load_policy([], ["A", "B"])
OK = Reply(250, "2.0.0", "Ok: queued", Phase.AFTER_DATA)
RBL = Reply(554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked", Phase.RCPT)
SPAM = Reply(550, "5.7.350", "Remote server returned message detected as spam", Phase.AFTER_DATA)
UNKNOWN = Reply(550, "5.1.1", "User unknown", Phase.RCPT)


def message(*rcpts: str, seq: int = 1, arrival: float = NOW) -> QueuedMessage:
    env = Envelope("s@origin.example", tuple(Recipient(r) for r in rcpts))
    return QueuedMessage(seq, f"Q{seq}", env, arrival, arrival, message_id=f"<m{seq}@x>")


def table(**caps: int) -> RouteTable:
    return RouteTable(("A", "B"), max_connections={"A": caps.get("A", 10), "B": caps.get("B", 10)})


def new_round(msg: QueuedMessage, t: RouteTable) -> DeliveryRound:
    return DeliveryRound(msg, b"body\r\n", POLICY, ROUTES, t)


def answer(send: Send, reply: Reply) -> Outcome:
    return Outcome(dict.fromkeys(send.recipients, reply), "mx.test")


def send_step(rnd: DeliveryRound, now: float = NOW) -> Send:
    step = rnd.next_step(now)
    assert isinstance(step, Send), step
    return step


def done_step(rnd: DeliveryRound, now: float = NOW) -> Done:
    step = rnd.next_step(now)
    assert isinstance(step, Done), step
    return step


def test_a_delivery_ends_the_round_and_gives_the_connection_back():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    send = send_step(rnd)
    assert (send.route, send.domain, send.recipients) == ("A", "example.com", ("r@example.com",))
    assert t.in_use == {"A": 1}
    rnd.record(send, answer(send, OK), NOW, NOW + 0.5)
    done = done_step(rnd, NOW + 0.5)
    assert done.message.state is MessageState.DONE
    assert [r.state for r in done.message.envelope.recipients] == [RecipientState.DELIVERED]
    assert [(a.route, a.action) for a in done.attempts] == [("A", "delivered")]
    assert t.in_use == {}
    assert [name for name, _ in rnd.drain_events()] == ["delivered"]


def test_the_route_is_chosen_when_the_connection_is_granted():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    t.suspend(Suspension("A", "example.com", NOW + 600, "554 ...", "rbl-block"))
    assert send_step(rnd).route == "B"  # A was suspended before the grant: never used


def test_a_route_at_its_cap_makes_the_round_wait_not_spill_over():
    t = table(A=1)
    first, second = (
        new_round(message("a@example.com"), t),
        new_round(message("b@example.com", seq=2), t),
    )
    s1 = send_step(first)
    assert second.next_step(NOW) == Blocked(for_connection=True)
    first.record(s1, answer(s1, OK), NOW, NOW + 1)
    assert send_step(second, NOW + 1).route == "A"


def test_a_route_suspended_while_a_round_waited_is_not_used():
    t = table(A=1)
    first, second = (
        new_round(message("a@example.com"), t),
        new_round(message("b@example.com", seq=2), t),
    )
    s1 = send_step(first)
    assert isinstance(second.next_step(NOW), Blocked)
    first.record(s1, answer(s1, RBL), NOW, NOW + 1)  # A refused: suspended for example.com
    assert send_step(second, NOW + 1).route == "B"
    assert send_step(first, NOW + 1).route == "B"  # rerouted at once


def test_an_rbl_block_reroutes_and_suspends():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    s1 = send_step(rnd)
    rnd.record(s1, answer(s1, RBL), NOW, NOW + 1)
    s2 = send_step(rnd, NOW + 1)
    assert s2.route == "B"
    assert t.suspension("A", "example.com", NOW + 1) is not None
    rnd.record(s2, answer(s2, OK), NOW + 1, NOW + 2)
    done = done_step(rnd, NOW + 2)
    assert [a.action for a in done.attempts] == ["reroute", "delivered"]
    assert done.failed == ()


def test_a_second_opinion_accepted_suspends_the_first_route():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    s1 = send_step(rnd)
    rnd.record(s1, answer(s1, SPAM), NOW, NOW + 1)
    held = t.suspension("A", "example.com", NOW + 1)
    assert held is not None
    assert held.provisional
    s2 = send_step(rnd, NOW + 1)
    assert s2.route == "B"
    rnd.record(s2, answer(s2, OK), NOW + 1, NOW + 2)
    real = t.suspension("A", "example.com", NOW + 2)
    assert real is not None
    assert not real.provisional
    events = dict(rnd.drain_events()[-2:])
    assert events["delivered"]["egress_specific"] is True


def test_a_second_opinion_refused_bounces_and_lifts_the_hold():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    s1 = send_step(rnd)
    rnd.record(s1, answer(s1, SPAM), NOW, NOW + 1)
    s2 = send_step(rnd, NOW + 1)
    rnd.record(s2, answer(s2, SPAM), NOW + 1, NOW + 2)
    done = done_step(rnd, NOW + 2)
    assert [r.address for r in done.failed] == ["r@example.com"]
    assert [a.second_opinion for a in done.attempts] == ["asked", "refused"]
    assert t.suspension("A", "example.com", NOW + 2) is None


def test_every_route_suspended_holds_without_spending_an_attempt():
    t = table()
    for r in ("A", "B"):
        t.suspend(Suspension(r, "example.com", NOW + 300 + (r == "B") * 100, "554", "rbl-block"))
    rnd = new_round(message("r@example.com"), t)
    done = done_step(rnd)
    assert done.attempts == ()
    assert done.message.state is MessageState.ACTIVE
    assert done.message.next_attempt_at == NOW + 300
    assert [name for name, _ in rnd.drain_events()] == ["held"]


def test_held_past_the_lifetime_bounces():
    t = table()
    for r in ("A", "B"):
        t.suspend(Suspension(r, "example.com", NOW + 300, "554", "rbl-block"))
    rnd = new_round(message("r@example.com", arrival=NOW - 6 * 86400), t)
    done = done_step(rnd)
    assert [(r.address, r.failed_rule) for r in done.failed] == [("r@example.com", "lifetime")]
    assert done.message.state is MessageState.DONE


def test_destinations_go_out_side_by_side_and_fail_on_their_own():
    t = table()
    rnd = new_round(message("a@one.example", "b@two.example"), t)
    s1, s2 = send_step(rnd), send_step(rnd)
    assert {s1.domain, s2.domain} == {"one.example", "two.example"}
    assert rnd.next_step(NOW) == Blocked(for_connection=False)
    rnd.record(s2, answer(s2, UNKNOWN), NOW, NOW + 1)
    rnd.record(s1, answer(s1, OK), NOW, NOW + 1)
    done = done_step(rnd, NOW + 1)
    states = {r.address: r.state for r in done.message.envelope.recipients}
    assert states == {
        "a@one.example": RecipientState.DELIVERED,
        "b@two.example": RecipientState.FAILED,
    }
    assert [r.address for r in done.failed] == ["b@two.example"]


def test_stopping_leaves_the_waiting_recipients_queued_and_due_now():
    t = table(A=1)
    busy = new_round(message("x@example.com", seq=9), t)
    send_step(busy)
    rnd = new_round(message("r@example.com"), t)
    assert isinstance(rnd.next_step(NOW), Blocked)
    rnd.stop(NOW)
    done = done_step(rnd)
    assert done.attempts == ()
    assert done.message.state is MessageState.ACTIVE
    assert done.message.next_attempt_at == NOW


def test_unsend_gives_the_connection_back_without_an_attempt():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    s = send_step(rnd)
    rnd.unsend(s)
    assert t.in_use == {}
    rnd.stop(NOW)
    assert done_step(rnd).attempts == ()


@pytest.mark.parametrize("pinned", [("B",)])
def test_a_report_pinned_to_a_route_takes_only_it(pinned):
    t = table()
    msg = message("origin@example.org")
    msg.envelope = Envelope(msg.envelope.sender, msg.envelope.recipients, pinned_routes=pinned)
    assert send_step(new_round(msg, t)).route == "B"


def test_the_operator_bounce_fails_only_pending_recipients():
    msg = message("a@example.com", "b@example.com")
    msg.envelope = msg.envelope.with_recipients(
        (
            Recipient("a@example.com", RecipientState.DELIVERED),
            Recipient("b@example.com"),
        )
    )
    reply = Reply(554, "5.0.0", "bounced by the operator", Phase.CONNECT, synthetic=True)
    failed = fail_pending(msg, reply, "operator")
    assert [r.address for r in failed] == ["b@example.com"]
    assert msg.state is MessageState.DONE
    assert msg.envelope.recipients[0].state is RecipientState.DELIVERED


def test_provider_keys_hold_a_domain_and_the_round_says_what_it_waits_on():
    t = table()
    ms = "provider:microsoft"
    msg = message("r@contoso.example", "s@own.example")
    rnd = DeliveryRound(msg, b"body\r\n", POLICY, ROUTES, t, providers={"contoso.example": ms})
    t.suspend(Suspension("A", ms, NOW + 600, "554 ...", "rbl-block", category="rbl_block"))
    t.suspend(Suspension("B", ms, NOW + 300, "554 ...", "rbl-block", category="rbl_block"))
    # contoso.example is held by its provider's suspensions; own.example goes out.
    send = send_step(rnd)
    assert (send.domain, send.route) == ("own.example", "A")
    rnd.record(send, answer(send, OK), NOW, NOW + 0.1)
    done = done_step(rnd, NOW + 0.1)
    assert done.waiting == ("*", "contoso.example", ms)  # a route-wide lift counts too
    assert done.message.next_attempt_at == NOW + 300  # the earliest suspension's end
    assert t.active == {}


def test_a_block_with_no_route_left_defers_and_waits_on_the_destination():
    t = table()
    rnd = new_round(message("r@example.com"), t)
    first = send_step(rnd)
    rnd.record(first, answer(first, RBL), NOW, NOW + 0.1)
    second = send_step(rnd, NOW + 0.1)
    assert second.route == "B"
    rnd.record(second, answer(second, RBL), NOW + 0.1, NOW + 0.2)
    done = done_step(rnd, NOW + 0.2)
    assert done.message.state is MessageState.ACTIVE
    assert done.waiting == ("*", "example.com")
    # Delivered in the end: nothing to wait on.
    rnd2 = new_round(message("q@example.com", seq=2), table())
    only = send_step(rnd2)
    rnd2.record(only, answer(only, OK), NOW, NOW + 0.1)
    assert done_step(rnd2, NOW + 0.1).waiting == ()
