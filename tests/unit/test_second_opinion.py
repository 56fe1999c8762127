"""The second opinion: a bounce is first asked of another egress, once, and only then sent."""

from __future__ import annotations

import random

import pytest

from relayguard.model import Action, Attempt, Phase, Reply, SecondOpinion, Suspension
from relayguard.policy import PolicyError, RouteView, decide, load_policy
from relayguard.policy.loader import parse_policy_text
from relayguard.policy.rules import DurationRange, Policy
from relayguard.queue.scheduler import RouteTable

NOW = 1_700_000_000.0
ROUTES = ("a", "b", "c")
SPAM = Reply(550, "5.7.350", "Remote server returned message detected as spam", Phase.AFTER_DATA)
CONFIRM = parse_policy_text(
    '[[rule]]\nid = "verdict"\nmatch = { code = "5xx" }\naction = "bounce"\nconfirm = true\n',
    "t.toml",
    None,
).rules


def view(route="a", egresses=("h|1", "h|2", "h|3"), tried=(), suspended=()):
    return RouteView(
        route=route,
        destination="example.com",
        routes=ROUTES,
        tried_now=frozenset({route, *tried}),
        suspended=frozenset(suspended),
        egresses=egresses,
    )


def run(policy, rv, history=()):
    return decide(SPAM, history, rv, NOW, policy, arrival_at=NOW, rng=random.Random(1))


def test_confirm_asks_the_next_egress_and_holds_this_route_back_provisionally():
    d = run(Policy(rules=CONFIRM), view())
    assert d.action is Action.REROUTE
    assert d.second_opinion is SecondOpinion.ASKED
    assert d.reroute_to == ("b", "c")
    assert d.suspend is not None
    assert d.suspend.provisional
    assert (d.suspend.route, d.suspend.destination) == ("a", "example.com")
    assert 300 <= d.suspend.until - NOW <= 600
    assert "second opinion" in d.reason


def test_a_route_that_leaves_from_the_same_egress_is_no_second_opinion():
    d = run(Policy(rules=CONFIRM), view(egresses=("h|1", "h|1", "h|2")))
    assert d.reroute_to == ("c",)
    d = run(Policy(rules=CONFIRM), view(egresses=("h|1", "h|1", "h|1")))
    assert d.action is Action.BOUNCE
    assert d.second_opinion is SecondOpinion.NONE


def test_routes_this_message_tried_before_give_no_second_opinion():
    earlier = Attempt(NOW - 600, "b", ("r@example.com",), SPAM, "defer", "x")
    d = run(Policy(rules=CONFIRM), view(), history=[earlier])
    assert d.reroute_to == ("c",)


def test_a_suspended_route_is_not_asked():
    d = run(Policy(rules=CONFIRM), view(suspended=("b", "c")))
    assert d.action is Action.BOUNCE


def test_refused_there_too_bounces_naming_both_routes():
    asked = Attempt(
        NOW - 1,
        "a",
        ("r@example.com",),
        SPAM,
        "reroute",
        "verdict",
        second_opinion=SecondOpinion.ASKED.value,
    )
    d = run(Policy(rules=CONFIRM), view(route="b", tried=("a",)), history=[asked])
    assert d.action is Action.BOUNCE
    assert d.second_opinion is SecondOpinion.REFUSED
    assert "refused through a" in d.reason
    assert "as a second opinion, through b" in d.reason


def test_at_most_second_opinions_extra_attempts():
    asked = Attempt(NOW - 1, "a", (), SPAM, "reroute", "verdict", second_opinion="asked")
    two = Policy(rules=CONFIRM, second_opinions=2)
    d = run(two, view(route="b", tried=("a",)), history=[asked])
    assert d.action is Action.REROUTE
    assert d.reroute_to == ("c",)
    assert run(Policy(rules=CONFIRM, second_opinions=0), view()).action is Action.BOUNCE


def test_the_built_in_5xx_asks_too_and_a_4xx_never_does():
    assert run(Policy(), view()).second_opinion is SecondOpinion.ASKED
    busy = Reply(451, "4.3.0", "try later", Phase.RCPT)
    d = decide(busy, (), view(), NOW, Policy(), arrival_at=NOW, rng=random.Random(1))
    assert d.action is Action.DEFER


def test_the_suspension_length_is_configurable():
    policy = Policy(rules=CONFIRM, second_opinion_suspend=DurationRange(60.0, 60.0))
    d = run(policy, view())
    assert d.suspend is not None
    assert d.suspend.until == NOW + 60


def test_confirm_is_only_for_bounces():
    with pytest.raises(
        PolicyError, match=r"rule 'x' \(rule\[0\]\): confirm: only used with action 'bounce'"
    ):
        parse_policy_text('[[rule]]\nid = "x"\naction = "defer"\nconfirm = true\n', "t.toml", None)


def test_the_default_pack_confirms_spam_and_generic_policy_but_not_unknown_users():
    policy = load_policy([], ["a", "b"])
    two = RouteView("a", "example.com", ("a", "b"), frozenset({"a"}), egresses=("x", "y"))

    def action(line: str) -> Action:
        code, _, text = line.partition(" ")
        r = Reply.parse(int(code), text, Phase.RCPT)
        return decide(r, (), two, NOW, policy, arrival_at=NOW, rng=random.Random(0)).action

    assert action("550 5.7.350 Remote server returned message detected as spam") is Action.REROUTE
    assert action("554 5.7.1 Delivery not authorized") is Action.REROUTE
    assert action("550 5.1.1 User unknown") is Action.BOUNCE
    assert (
        action(
            "550 5.7.26 Unauthenticated email from example.org is not accepted due to domain's DMARC policy"
        )
        is Action.BOUNCE
    )


# --- the route table keeps real suspensions over provisional ones ----------------------


def sus(until: float, *, provisional: bool) -> Suspension:
    return Suspension("a", "example.com", until, "550 x", "r", provisional=provisional)


def test_lifting_a_provisional_hold_never_lifts_a_real_suspension():
    t = RouteTable(("a", "b"))
    t.suspend(sus(NOW + 500, provisional=True))
    assert t.lift_provisional("a", "example.com")
    assert t.suspension("a", "example.com", NOW) is None
    t.suspend(sus(NOW + 900, provisional=True))
    t.suspend(sus(NOW + 300, provisional=False))  # confirmed: real, whatever the ends
    assert not t.lift_provisional("a", "example.com")
    s = t.suspension("a", "example.com", NOW)
    assert s is not None
    assert not s.provisional
    t.suspend(sus(NOW + 2000, provisional=True))  # a later hold does not replace a real one
    s = t.suspension("a", "example.com", NOW)
    assert s is not None
    assert not s.provisional
