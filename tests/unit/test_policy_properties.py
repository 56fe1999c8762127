"""Properties of decide(): total, in range, reproducible."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import Action, Attempt, Phase, Reply
from relayguard.policy import Policy, RouteView, decide, load_policy
from relayguard.policy.hints import retry_hint
from relayguard.policy.loader import parse_policy_text

ROUTES = ("primary", "backup")
DEFAULT = load_policy([], ROUTES)
NOW = 1_700_000_000.0

JITTERY = Policy(
    second_opinions=0,
    rules=parse_policy_text(
        """
        [[rule]]
        id = "jitter"
        match = { code = "5xx" }
        action = "reroute"
        reroute = "next"
        treat_as = "temporary"
        suspend_for = "5m..10m"
        retry_after = "2m..3m"
        honor_retry_hint = false
        throttle = { max_connections = 1, for = "20m..40m" }
        """,
        "jitter.toml",
        ROUTES,
    ).rules,
)

enhanced = st.one_of(
    st.none(),
    st.builds(
        lambda a, b, c: f"{a}.{b}.{c}",
        st.sampled_from("245"),
        st.integers(0, 999),
        st.integers(0, 999),
    ),
)
replies = st.builds(
    Reply,
    code=st.integers(100, 599),
    enhanced=enhanced,
    text=st.text(max_size=300),
    phase=st.sampled_from(Phase),
    remote_host=st.just("mx.example.com"),
    synthetic=st.booleans(),
)
views = st.builds(
    RouteView,
    route=st.sampled_from(ROUTES),
    destination=st.sampled_from(["example.com", "gmail.com", "eur.outlook.com", "", "ÉX.dk"]),
    routes=st.just(ROUTES),
    tried_now=st.frozensets(st.sampled_from(ROUTES)),
    suspended=st.frozensets(st.sampled_from(ROUTES)),
)
histories = st.lists(
    st.builds(
        Attempt,
        at=st.floats(NOW - 10 * 86400, NOW),
        route=st.sampled_from(ROUTES),
        recipients=st.just(("a@example.com",)),
        reply=replies,
        action=st.sampled_from(["defer", "reroute", "bounce", "delivered"]),
        rule=st.sampled_from(["", "ip-blocklisted", "greylisted", "builtin:4xx"]),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(
    reply=replies,
    view=views,
    history=histories,
    age=st.floats(0, 10 * 86400),
    seed=st.integers(0, 2**32),
)
def test_decide_never_raises_and_is_coherent(reply, view, history, age, seed):
    d = decide(reply, history, view, NOW, DEFAULT, arrival_at=NOW - age, rng=random.Random(seed))
    assert d.rule
    assert d.reason
    if d.action is Action.DEFER:
        assert d.retry_at is not None
        assert NOW <= d.retry_at <= NOW - age + DEFAULT.max_lifetime
    else:
        assert d.retry_at is None
    if d.action is Action.REROUTE:
        assert d.reroute_to
        assert not set(d.reroute_to) & (view.tried_now | view.suspended | {view.route})
    if d.suspend is not None:
        assert d.suspend.route == view.route
        assert d.suspend.until > NOW


@settings(max_examples=100, deadline=None)
@given(reply=replies, view=views, history=histories, seed=st.integers(0, 2**32))
def test_same_seed_same_decision(reply, view, history, seed):
    def once():
        return decide(
            reply, history, view, NOW, DEFAULT, arrival_at=NOW - 3600, rng=random.Random(seed)
        )

    assert once() == once()


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(500, 599), text=st.text(max_size=80), view=views, seed=st.integers(0, 2**32)
)
def test_jitter_stays_in_range(code, text, view, seed):
    reply = Reply(code, None, text, Phase.RCPT)
    d = decide(reply, (), view, NOW, JITTERY, arrival_at=NOW, rng=random.Random(seed))
    assert d.rule == "jitter"
    assert d.suspend is not None
    assert 300 <= d.suspend.until - NOW <= 600
    assert d.throttle is not None
    assert 1200 <= d.throttle.until - NOW <= 2400
    if d.action is Action.DEFER:
        assert d.retry_at is not None
        assert 120 <= d.retry_at - NOW <= 180
    else:
        assert d.action is Action.REROUTE


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_retry_hint_is_total_and_bounded(text):
    hint = retry_hint(text)
    assert hint is None or 30 <= hint <= 86400


@settings(max_examples=100, deadline=None)
@given(minutes=st.integers(1, 600), seed=st.integers(0, 2**32))
def test_a_retry_hint_is_honoured_with_small_jitter(minutes, seed):
    reply = Reply(451, "4.7.1", f"Greylisted, please try again in {minutes} minutes", Phase.RCPT)
    view = RouteView("primary", "example.com", ROUTES, frozenset({"primary"}))
    d = decide(reply, (), view, NOW, DEFAULT, arrival_at=NOW, rng=random.Random(seed))
    assert d.rule == "greylisted"
    assert d.retry_at is not None
    delay = d.retry_at - NOW
    assert minutes * 60 <= delay <= minutes * 60 + 60
