"""decide(): rules, built-ins, caps, reroutes, suspensions and throttles."""

from __future__ import annotations

import random

import pytest

from relayguard.model import Action, Attempt, Phase, Reply
from relayguard.policy import Policy, RouteView, decide
from relayguard.policy.hints import HINT_MAX, HINT_MIN, retry_hint
from relayguard.policy.loader import parse_policy_text

ROUTES = ("primary", "backup", "third")
NOW = 1_000_000.0
HOUR = 3600.0


def policy_from(text: str, **kw) -> Policy:
    # These tests are about matching and scheduling; the second opinion (which turns a
    # bounce on the first route into a reroute) has tests of its own below.
    kw.setdefault("second_opinions", 0)
    return Policy(rules=parse_policy_text(text, "test.toml", ROUTES).rules, **kw)


def reply(line: str, phase: Phase = Phase.RCPT, *, synthetic: bool = False) -> Reply:
    code, _, rest = line.partition(" ")
    return Reply.parse(int(code), rest, phase, synthetic=synthetic)


def view(route="primary", destination="example.com", tried=(), suspended=()) -> RouteView:
    return RouteView(
        route=route,
        destination=destination,
        routes=ROUTES,
        tried_now=frozenset({route, *tried}),
        suspended=frozenset(suspended),
    )


def run(r: Reply, policy: Policy, *, history=(), rv=None, now=NOW, arrival_at=None, seed=1):
    return decide(
        r,
        tuple(history),
        rv or view(),
        now,
        policy,
        arrival_at=now if arrival_at is None else arrival_at,
        rng=random.Random(seed),
    )


def attempt(at: float, r: Reply, action: str, rule: str, route: str = "primary") -> Attempt:
    return Attempt(
        at=at, route=route, recipients=("a@example.com",), reply=r, action=action, rule=rule
    )


# --- matching: a table of rules and replies -------------------------------------

MATCH_TABLE = """
[[rule]]
id = "exact"
match = { code = 554, text = "exact-me" }
action = "bounce"

[[rule]]
id = "class-list"
match = { code = ["421", "45x"], text = "listy" }
action = "defer"
retry_after = "1m"

[[rule]]
id = "enhanced-glob"
match = { enhanced = ["5.7.*", "5.1.1"], text = "globby" }
action = "bounce"

[[rule]]
id = "phase"
match = { phase = ["connect", "greeting"], synthetic = false }
action = "defer"
retry_after = "2m"

[[rule]]
id = "domain"
match = { domain = ["*.outlook.com", "hotmail.com"] }
action = "defer"
retry_after = "3m"

[[rule]]
id = "route"
match = { route = "backup", code = "4xx" }
action = "defer"
retry_after = "4m"

[[rule]]
id = "text-case"
match = { text = 'Try\\s+Elsewhere' }
action = "reroute"
reroute = ["third"]
"""


@pytest.mark.parametrize(
    ("line", "phase", "rv", "rule", "action"),
    [
        ("554 5.7.1 exact-me please", Phase.RCPT, view(), "exact", Action.BOUNCE),
        ("550 5.7.1 exact-me please", Phase.RCPT, view(), "builtin:5xx", Action.BOUNCE),
        ("421 4.7.0 listy", Phase.RCPT, view(), "class-list", Action.DEFER),
        ("452 4.2.2 listy", Phase.RCPT, view(), "class-list", Action.DEFER),
        ("441 4.2.2 listy", Phase.RCPT, view(), "builtin:4xx", Action.DEFER),
        ("550 5.7.606 globby", Phase.RCPT, view(), "enhanced-glob", Action.BOUNCE),
        ("550 5.1.1 globby", Phase.RCPT, view(), "enhanced-glob", Action.BOUNCE),
        ("550 5.1.2 globby", Phase.RCPT, view(), "builtin:5xx", Action.BOUNCE),
        ("550 globby", Phase.RCPT, view(), "builtin:5xx", Action.BOUNCE),  # no enhanced code
        ("421 4.3.2 going down", Phase.GREETING, view(), "phase", Action.DEFER),
        ("421 4.3.2 going down", Phase.MAIL, view(), "builtin:4xx", Action.DEFER),
        ("450 4.0.0 x", Phase.RCPT, view(destination="eur.outlook.com"), "domain", Action.DEFER),
        ("450 4.0.0 x", Phase.RCPT, view(destination="hotmail.com"), "domain", Action.DEFER),
        ("450 4.0.0 x", Phase.RCPT, view(destination="outlook.com"), "builtin:4xx", Action.DEFER),
        ("450 4.0.0 x", Phase.RCPT, view(route="backup"), "route", Action.DEFER),
        ("550 5.0.0 x", Phase.RCPT, view(route="backup"), "builtin:5xx", Action.BOUNCE),
        ("550 5.0.0 please TRY  elsewhere", Phase.RCPT, view(), "text-case", Action.REROUTE),
    ],
)
def test_matching_table(line, phase, rv, rule, action):
    d = run(reply(line, phase), policy_from(MATCH_TABLE), rv=rv)
    assert (d.rule, d.action) == (rule, action)


def test_first_match_wins():
    policy = policy_from(
        """
        [[rule]]
        id = "first"
        match = { code = "5xx" }
        action = "defer"
        retry_after = "7m"

        [[rule]]
        id = "second"
        match = { code = "554" }
        action = "bounce"
        """
    )
    d = run(reply("554 5.7.1 blocked"), policy)
    assert d.rule == "first"
    assert d.action is Action.DEFER
    assert d.retry_at == pytest.approx(NOW + 7 * 60)


def test_rule_without_match_matches_everything():
    policy = policy_from('[[rule]]\nid = "all"\naction = "bounce"\n')
    assert run(reply("421 4.4.2 timeout"), policy).rule == "all"


# --- the built-ins ---------------------------------------------------------------


def test_builtin_5xx_bounces_with_the_reply():
    r = reply("550 5.1.1 no such user")
    d = run(r, Policy(second_opinions=0))
    assert (d.action, d.rule, d.reply) == (Action.BOUNCE, "builtin:5xx", r)


@pytest.mark.parametrize(
    ("deferrals", "delay"),
    [(0, 300), (1, 600), (2, 1200), (3, 2400), (4, 4000), (5, 4000), (5000, 4000)],
)
def test_builtin_backoff_doubles_per_deferral_up_to_the_cap(deferrals, delay):
    r = reply("450 4.3.0 try later")
    history = [attempt(NOW - 10 - i, r, "defer", "builtin:4xx") for i in range(deferrals)]
    history.append(attempt(NOW - 5, r, "reroute", "builtin:fallback-relay"))
    d = run(r, Policy(), history=history, arrival_at=NOW - 60)
    assert d.action is Action.DEFER
    assert d.rule == "builtin:4xx"
    assert d.retry_at == pytest.approx(NOW + delay)


def test_fallback_relay_reroutes_a_connection_failure_to_the_next_route():
    r = reply(
        "421 4.4.1 connect to 127.0.0.1[127.0.0.1]:2526: Connection refused",
        Phase.CONNECT,
        synthetic=True,
    )
    d = run(r, Policy())
    assert d.action is Action.REROUTE
    assert d.rule == "builtin:fallback-relay"
    assert d.reroute_to == ("backup", "third")
    assert d.suspend is None


def test_fallback_relay_order_wraps_round_and_skips_tried_and_suspended():
    r = reply("421 4.4.2 greeting timeout", Phase.GREETING, synthetic=True)
    d = run(r, Policy(), rv=view(route="backup", suspended=("third",)))
    assert d.reroute_to == ("primary",)
    d = run(r, Policy(), rv=view(route="backup", tried=("primary",), suspended=("third",)))
    assert (d.action, d.rule) == (Action.DEFER, "builtin:4xx")


def test_fallback_relay_is_only_for_synthetic_connection_failures():
    real = reply("421 4.3.2 Service shutting down", Phase.GREETING)
    assert run(real, Policy()).rule == "builtin:4xx"
    late = reply("421 4.4.2 timeout after DATA", Phase.AFTER_DATA, synthetic=True)
    assert run(late, Policy()).rule == "builtin:4xx"


def test_rules_decide_a_connection_failure_when_no_route_is_left():
    policy = policy_from(
        """
        [[rule]]
        id = "down"
        match = { synthetic = true, phase = "connect" }
        action = "suspend"
        suspend_for = "10m"
        suspend_scope = "route"
        retry_after = "10m"
        """
    )
    r = reply("421 4.4.1 connection refused", Phase.CONNECT, synthetic=True)
    assert run(r, policy).rule == "builtin:fallback-relay"
    d = run(r, policy, rv=view(tried=("backup", "third")))
    assert d.rule == "down"
    assert d.action is Action.DEFER
    assert d.suspend is not None
    assert d.suspend.destination == "*"


# --- lifetime and caps -----------------------------------------------------------


def test_lifetime_expiry_bounces_with_the_reply():
    r = reply("450 4.3.0 try later")
    d = run(r, Policy(max_lifetime=5 * 86400), arrival_at=NOW - 5 * 86400)
    assert d.action is Action.BOUNCE
    assert d.rule == "builtin:lifetime"
    assert d.reply == r
    assert d.reason == "message lifetime expired"


def test_lifetime_bounce_reports_the_last_real_reply_not_a_synthetic_one():
    real = reply("451 4.7.1 greylisted")
    synthetic = reply("421 4.4.1 connection refused", Phase.CONNECT, synthetic=True)
    history = [attempt(NOW - 100, real, "defer", "builtin:4xx")]
    d = run(
        synthetic,
        Policy(),
        history=history,
        rv=view(tried=("backup", "third")),
        arrival_at=NOW - 6 * 86400,
    )
    assert d.action is Action.BOUNCE
    assert d.rule == "builtin:lifetime"
    assert d.reply == real


def test_a_deferral_is_clamped_to_the_lifetime_so_the_last_try_is_at_expiry():
    r = reply("450 4.3.0 try later")
    arrival = NOW - 5 * 86400 + 100
    d = run(r, Policy(), arrival_at=arrival)
    assert d.action is Action.DEFER
    assert d.retry_at == pytest.approx(arrival + 5 * 86400)
    later = run(r, Policy(), now=d.retry_at, arrival_at=arrival)
    assert (later.action, later.rule) == (Action.BOUNCE, "builtin:lifetime")


RBL = """
[[rule]]
id = "rbl"
description = "our IP is listed"
match = { text = "blocked using" }
action = "reroute"
reroute = "next"
suspend_for = "5m..10m"
treat_as = "temporary"
give_up_after = "48h"
retry_after = "5m..10m"
"""


def test_give_up_after_is_measured_from_the_rules_first_decision():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org")
    first = NOW - 47 * HOUR
    history = [
        attempt(NOW - 60 * HOUR, reply("451 4.7.1 greylisted"), "defer", "builtin:4xx"),
        attempt(first, r, "defer", "rbl"),
        attempt(NOW - HOUR, r, "defer", "rbl", route="backup"),
    ]
    rv = view(tried=("backup", "third"))
    d = run(r, policy, history=history, rv=rv, arrival_at=NOW - 61 * HOUR)
    assert d.action is Action.DEFER
    assert d.retry_at is not None
    assert d.retry_at <= first + 48 * HOUR  # clamped to the cap
    d = run(r, policy, history=history, rv=rv, now=first + 48 * HOUR, arrival_at=NOW - 61 * HOUR)
    assert d.action is Action.BOUNCE
    assert d.rule == "rbl"
    assert d.reply == r
    assert d.reason == "gave up after 2d: our IP is listed"


def test_give_up_after_counts_from_arrival_without_earlier_decisions():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 blocked using zen.spamhaus.org")
    d = run(r, policy, rv=view(tried=("backup", "third")), arrival_at=NOW - 49 * HOUR)
    assert (d.action, d.rule) == (Action.BOUNCE, "rbl")


def test_give_up_after_still_reroutes_while_a_route_is_left():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 blocked using zen.spamhaus.org")
    d = run(r, policy, arrival_at=NOW - 49 * HOUR)
    assert d.action is Action.REROUTE
    assert d.reroute_to == ("backup", "third")


def test_the_cap_bounce_reports_the_last_real_reply():
    policy = policy_from(RBL.replace('match = { text = "blocked using" }', "match = {}"))
    real = reply("554 5.7.1 blocked using zen.spamhaus.org")
    synthetic = reply("421 4.4.2 timeout", Phase.DATA, synthetic=True)
    history = [attempt(NOW - 50 * HOUR, real, "defer", "rbl")]
    d = run(
        synthetic,
        policy,
        history=history,
        rv=view(tried=("backup", "third")),
        arrival_at=NOW - 50 * HOUR,
    )
    assert d.action is Action.BOUNCE
    assert d.reply == real


# --- retry timing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Greylisted, please try again in 5 minutes", 300),
        ("try again later in 2 hours", 7200),
        ("Please retry in 300 seconds", 300),
        ("retry after 10 mins", 600),
        ("deferred; after 3 min.", 180),
        ("Trying again in 90 s", 90),
        ("try again in 1 second", HINT_MIN),
        ("try again in 400 hours", HINT_MAX),
        ("try again later", None),
        ("try again in a few minutes", None),
        ("4.16.55.1 nothing", None),
        ("retry in 99999999999999999999 hours", None),
    ],
)
def test_retry_hints(text, seconds):
    assert retry_hint(text) == seconds


HINTED = """
[[rule]]
id = "hinted"
match = { code = "4xx" }
action = "defer"
retry_after = "20m..30m"

[[rule]]
id = "unhinted"
match = { code = "5xx" }
treat_as = "temporary"
retry_after = "20m..30m"
honor_retry_hint = false
"""


def test_retry_hint_replaces_the_rules_delay():
    d = run(reply("451 4.7.1 Greylisted, please try again in 5 minutes"), policy_from(HINTED))
    assert d.retry_at is not None
    assert NOW + 300 <= d.retry_at <= NOW + 330


def test_retry_hint_is_ignored_when_the_rule_says_so():
    d = run(reply("550 5.7.1 busy, try again in 5 minutes"), policy_from(HINTED))
    assert d.action is Action.DEFER  # treat_as temporary: a 5xx deferred
    assert d.retry_at is not None
    assert NOW + 1200 <= d.retry_at <= NOW + 1800


def test_builtin_deferral_honours_a_retry_hint_too():
    d = run(reply("450 4.2.0 try again in 30 minutes"), Policy())
    assert d.retry_at is not None
    assert NOW + 1800 <= d.retry_at <= NOW + 1860


BACKOFF = """
[[rule]]
id = "slow"
match = { code = "452" }
action = "defer"
backoff = { start = "5m", factor = 3, cap = "1h" }
"""


@pytest.mark.parametrize(("mine", "delay"), [(0, 300), (1, 900), (2, 2700), (3, 3600), (40, 3600)])
def test_backoff_schedule_counts_the_rules_own_deferrals(mine, delay):
    r = reply("452 4.2.2 mailbox full")
    history = [attempt(NOW - 100 - i, r, "defer", "slow") for i in range(mine)]
    history += [attempt(NOW - 50, r, "defer", "other-rule")] * 4
    d = run(r, policy_from(BACKOFF), history=history, arrival_at=NOW - 1000)
    assert d.retry_at == pytest.approx(NOW + delay)


def test_backoff_factor_defaults_to_two():
    policy = policy_from(BACKOFF.replace("factor = 3, ", ""))
    r = reply("452 4.2.2 mailbox full")
    d = run(r, policy, history=[attempt(NOW - 100, r, "defer", "slow")], arrival_at=NOW - 200)
    assert d.retry_at == pytest.approx(NOW + 600)


def test_jitter_is_uniform_in_the_range_and_seeded():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 blocked using zen.spamhaus.org")
    rv = view(tried=("backup", "third"))
    delays = {run(r, policy, rv=rv, seed=s).retry_at - NOW for s in range(200)}
    assert all(300 <= x <= 600 for x in delays)
    assert len(delays) > 150
    assert min(delays) < 330
    assert max(delays) > 570
    assert run(r, policy, rv=rv, seed=7) == run(r, policy, rv=rv, seed=7)


# --- reroute, suspend, throttle, remap ---------------------------------------------


def test_reroute_next_suspends_the_failing_route_for_the_destination():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 blocked using zen.spamhaus.org")
    d = run(r, policy, rv=view(destination="gmail.com"))
    assert d.action is Action.REROUTE
    assert d.rule == "rbl"
    assert d.reroute_to == ("backup", "third")
    assert d.retry_at is None
    assert d.suspend is not None
    assert d.suspend.route == "primary"
    assert d.suspend.destination == "gmail.com"
    assert d.suspend.reason == r.render()
    assert d.suspend.rule == "rbl"
    assert NOW + 300 <= d.suspend.until <= NOW + 600


def test_reroute_to_named_routes_in_their_order():
    policy = policy_from(RBL.replace('reroute = "next"', 'reroute = ["third", "backup"]'))
    d = run(reply("554 5.7.1 blocked using x"), policy)
    assert d.reroute_to == ("third", "backup")
    d = run(reply("554 5.7.1 blocked using x"), policy, rv=view(suspended=("third",)))
    assert d.reroute_to == ("backup",)


def test_reroute_falls_back_to_defer_when_no_route_is_left():
    policy = policy_from(RBL)
    r = reply("554 5.7.1 blocked using zen.spamhaus.org")
    d = run(r, policy, rv=view(route="third", tried=("primary",), suspended=("backup",)))
    assert d.action is Action.DEFER
    assert d.rule == "rbl"
    assert d.reroute_to == ()
    assert d.retry_at is not None
    assert NOW + 300 <= d.retry_at <= NOW + 600
    assert d.suspend is not None
    assert d.suspend.route == "third"
    assert "no other route left" in d.reason


def test_reroute_ignores_routes_the_view_does_not_know():
    policy = policy_from(RBL.replace('reroute = "next"', 'reroute = ["backup"]'))
    rv = RouteView(
        route="primary",
        destination="example.com",
        routes=("primary",),
        tried_now=frozenset({"primary"}),
    )
    assert run(reply("554 5.7.1 blocked using x"), policy, rv=rv).action is Action.DEFER


def test_suspend_scope_route_suspends_for_every_destination():
    policy = policy_from(
        """
        [[rule]]
        id = "ip-banned"
        match = { enhanced = "5.7.511" }
        action = "suspend"
        suspend_for = "1h"
        suspend_scope = "route"
        treat_as = "temporary"
        """
    )
    d = run(reply("550 5.7.511 banned sender"), policy, rv=view(route="backup"))
    assert d.action is Action.DEFER
    assert d.suspend is not None
    assert (d.suspend.route, d.suspend.destination) == ("backup", "*")
    assert d.suspend.until == pytest.approx(NOW + HOUR)


def test_throttle_lowers_the_routes_connections_and_defers():
    policy = policy_from(
        """
        [[rule]]
        id = "busy"
        match = { code = "4xx", text = "server busy" }
        action = "throttle"
        throttle = { max_connections = 2, for = "30m" }
        retry_after = "5m..10m"
        """
    )
    d = run(
        reply("451 4.7.500 Server busy. Please try again later"),
        policy,
        rv=view(destination="outlook.com"),
    )
    assert d.action is Action.DEFER
    assert d.throttle is not None
    assert (d.throttle.route, d.throttle.destination) == ("primary", "outlook.com")
    assert d.throttle.max_connections == 2
    assert d.throttle.until == pytest.approx(NOW + 1800)
    assert d.throttle.rule == "busy"
    assert d.suspend is None
    assert d.retry_at is not None
    assert NOW + 300 <= d.retry_at <= NOW + 600


def test_treat_as_permanent_bounces_a_4xx():
    policy = policy_from(
        """
        [[rule]]
        id = "never"
        description = "this mailbox is gone for good"
        match = { code = "450", text = "mailbox disabled" }
        treat_as = "permanent"
        """
    )
    r = reply("450 4.2.1 mailbox disabled")
    d = run(r, policy)
    assert (d.action, d.rule, d.reply) == (Action.BOUNCE, "never", r)
    assert d.reason == "this mailbox is gone for good"


def test_treat_as_temporary_defers_a_5xx():
    policy = policy_from('[[rule]]\nid = "t"\nmatch = { code = "5xx" }\ntreat_as = "temporary"\n')
    d = run(reply("550 5.7.1 blocked"), policy)
    assert (d.action, d.rule) == (Action.DEFER, "t")
    assert d.retry_at == pytest.approx(NOW + 300)  # the built-in backoff


def test_decision_to_dict_is_plain_data():
    d = run(reply("554 5.7.1 blocked using x"), policy_from(RBL))
    out = d.to_dict()
    assert out["rule"] == "rbl"
    assert out["action"] == "reroute"


def test_only_this_destinations_attempts_count():
    r = reply("450 4.3.0 try later")
    other = Attempt(
        at=NOW - 100,
        route="primary",
        recipients=("b@other.example",),
        reply=r,
        action="defer",
        rule="builtin:4xx",
    )
    mine = attempt(NOW - 50, r, "defer", "builtin:4xx")
    d = run(r, Policy(), history=[other, other, mine], arrival_at=NOW - 200)
    assert d.retry_at == pytest.approx(NOW + 600)  # one earlier deferral, not three


# -- which destinations a suspension or throttle holds ------------------------------

SCOPED = """
[[rule]]
id = "blocked"
match = {{ category = "rbl_block" }}
action = "suspend"
suspend_for = "10m"
{scope}

[[rule]]
id = "busy"
match = {{ category = "throttle" }}
action = "throttle"
throttle = {{ max_connections = 2, for = "30m" {throttle_scope} }}
"""


def provider_view(provider: str | None = "provider:microsoft") -> RouteView:
    return RouteView(
        route="primary",
        destination="contoso.example",
        routes=ROUTES,
        tried_now=frozenset({"primary"}),
        provider=provider,
    )


def scoped_policy(scope: str = "", throttle_scope: str = "") -> Policy:
    return policy_from(SCOPED.format(scope=scope, throttle_scope=throttle_scope))


BLOCK = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked"
IP_THROTTLE = (
    "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation"
)
BUSY = "451 4.7.500 Server busy. Please try again later"


def test_an_egress_block_suspends_for_the_provider_by_default():
    d = run(reply(BLOCK), scoped_policy(), rv=provider_view())
    assert d.suspend is not None
    assert (d.suspend.destination, d.suspend.category) == ("provider:microsoft", "rbl_block")
    # Its provider not known: the domain is its own key.
    d = run(reply(BLOCK), scoped_policy(), rv=provider_view(None))
    assert d.suspend is not None
    assert d.suspend.destination == "contoso.example"


def test_a_rule_may_say_which_destinations_it_holds():
    for scope, key in (("destination", "contoso.example"), ("route", "*")):
        d = run(reply(BLOCK), scoped_policy(f'suspend_scope = "{scope}"'), rv=provider_view())
        assert d.suspend is not None
        assert d.suspend.destination == key


def test_throttles_follow_the_scope_of_the_reply_unless_told():
    # Rate limited for our address's reputation: about our egress, for the provider.
    d = run(reply(IP_THROTTLE), scoped_policy(), rv=provider_view())
    assert d.throttle is not None
    assert d.throttle.destination == "provider:microsoft"
    # A busy server is about the destination: that domain only.
    d = run(reply(BUSY), scoped_policy(), rv=provider_view())
    assert d.throttle is not None
    assert d.throttle.destination == "contoso.example"
    d = run(reply(BUSY), scoped_policy(throttle_scope=', scope = "provider"'), rv=provider_view())
    assert d.throttle is not None
    assert d.throttle.destination == "provider:microsoft"
