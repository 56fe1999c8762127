"""DueQueue ordering and RouteTable suspensions, probes and throttles."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import Suspension, Throttle
from relayguard.queue.scheduler import ALL_DESTINATIONS, DueQueue, RouteTable

INF = math.inf
BIG = 10**9

# -- DueQueue --------------------------------------------------------------------


def test_due_queue_orders_by_time_then_seq():
    q = DueQueue()
    for seq, at in [(5, 30.0), (1, 10.0), (3, 20.0), (2, 10.0), (4, 40.0)]:
        q.schedule(seq, at)
    assert len(q) == 5
    assert 3 in q
    assert 99 not in q
    assert q.next_due() == 10.0
    assert q.pop_due(25.0, BIG) == [1, 2, 3]
    assert len(q) == 2
    assert not any(seq in q for seq in (1, 2, 3))  # popped: gone from the queue
    assert q.next_due() == 30.0
    assert q.pop_due(29.9, BIG) == []
    assert q.pop_due(INF, BIG) == [5, 4]
    assert len(q) == 0
    assert q.next_due() is None
    assert q.pop_due(INF, BIG) == []


def test_reschedule_replaces_earlier_and_later():
    q = DueQueue()
    q.schedule(1, 10.0)
    q.schedule(2, 20.0)
    q.schedule(1, 30.0)  # later: the entry at 10 is stale
    assert len(q) == 2
    assert q.next_due() == 20.0
    assert q.pop_due(25.0, BIG) == [2]
    q.schedule(1, 5.0)  # earlier again
    assert q.next_due() == 5.0
    assert q.pop_due(10.0, BIG) == [1]
    assert q.pop_due(INF, BIG) == []  # the stale 30.0 entry does not come back
    assert len(q) == 0


def test_remove():
    q = DueQueue()
    q.schedule(1, 10.0)
    q.schedule(2, 20.0)
    q.remove(1)
    q.remove(42)  # unknown: no error
    assert (1 in q, 2 in q) == (False, True)
    assert len(q) == 1
    assert q.next_due() == 20.0
    assert q.pop_due(INF, BIG) == [2]


def test_pop_due_limit():
    q = DueQueue()
    for seq in range(10):
        q.schedule(seq, float(seq))
    assert q.pop_due(100.0, 3) == [0, 1, 2]
    assert q.pop_due(100.0, 0) == []
    assert q.pop_due(4.0, 5) == [3, 4]
    assert len(q) == 5
    assert q.pop_due(100.0, BIG) == [5, 6, 7, 8, 9]


def test_pop_due_limit_counts_only_live_entries():
    q = DueQueue()
    for seq in range(5):
        q.schedule(seq, 1.0)
    for seq in range(5):
        q.schedule(seq, 2.0)  # five stale entries at 1.0 ahead of the live ones
    assert q.pop_due(2.0, 2) == [0, 1]
    assert q.pop_due(2.0, BIG) == [2, 3, 4]


def test_next_due_skips_stale_entries():
    q = DueQueue()
    q.schedule(1, 1.0)
    q.schedule(2, 2.0)
    q.schedule(3, 3.0)
    q.remove(1)
    q.schedule(2, 50.0)
    assert q.next_due() == 3.0
    q.remove(3)
    assert q.next_due() == 50.0
    q.remove(2)
    assert q.next_due() is None


def test_same_time_scheduled_twice_is_popped_once():
    q = DueQueue()
    q.schedule(7, 5.0)
    q.schedule(7, 5.0)
    assert len(q) == 1
    assert q.pop_due(5.0, BIG) == [7]
    assert q.pop_due(INF, BIG) == []
    q.schedule(7, 6.0)
    assert q.pop_due(INF, BIG) == [7]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 15), st.integers(0, 20)),
        st.tuples(st.just("remove"), st.integers(0, 15), st.just(0)),
        st.tuples(st.just("pop"), st.integers(0, 20), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_due_queue_matches_a_model(operations):
    q = DueQueue()
    model: dict[int, float] = {}
    for op, a, b in operations:
        if op == "schedule":
            q.schedule(a, float(b))
            model[a] = float(b)
        elif op == "remove":
            q.remove(a)
            model.pop(a, None)
        else:
            now, limit = float(a), b
            due = sorted((at, seq) for seq, at in model.items() if at <= now)[:limit]
            assert q.pop_due(now, limit) == [seq for _, seq in due]
            for _, seq in due:
                del model[seq]
        assert len(q) == len(model)
        assert q.next_due() == (min(model.values()) if model else None)
    expected = [seq for _, seq in sorted((at, seq) for seq, at in model.items())]
    assert q.pop_due(INF, BIG) == expected
    assert len(q) == 0


# -- RouteTable ------------------------------------------------------------------


def table() -> RouteTable:
    return RouteTable(routes=("primary", "backup", "third"))


def susp(route: str, destination: str, until: float, rule: str = "r") -> Suspension:
    return Suspension(route=route, destination=destination, until=until, reason="421 x", rule=rule)


def test_choose_order_prefer_exclude():
    t = table()
    assert t.choose("gmail.com", 0.0) == "primary"
    assert t.choose("gmail.com", 0.0, exclude=["primary"]) == "backup"
    assert t.choose("gmail.com", 0.0, exclude={"primary", "backup"}) == "third"
    assert t.choose("gmail.com", 0.0, exclude=t.routes) is None
    assert t.choose("gmail.com", 0.0, prefer=("third",)) == "third"
    assert t.choose("gmail.com", 0.0, prefer=("third", "backup"), exclude=["third"]) == "backup"
    assert t.choose("gmail.com", 0.0, prefer=("unknown",)) == "primary"


def test_suspension_for_one_destination():
    t = table()
    t.suspend(susp("primary", "gmail.com", 100.0))
    assert t.suspension("primary", "gmail.com", 50.0) is not None
    assert t.suspension("primary", "yahoo.com", 50.0) is None
    assert t.choose("gmail.com", 50.0) == "backup"
    assert t.choose("yahoo.com", 50.0) == "primary"
    assert t.suspended_routes("gmail.com", 50.0) == frozenset({"primary"})
    assert t.suspended_routes("yahoo.com", 50.0) == frozenset()
    assert t.unavailable("primary", "gmail.com", 50.0)
    assert not t.unavailable("primary", "yahoo.com", 50.0)


def test_suspension_for_all_destinations():
    t = table()
    t.suspend(susp("primary", ALL_DESTINATIONS, 100.0))
    for dest in ("gmail.com", "yahoo.com"):
        assert t.suspension("primary", dest, 10.0).destination == "*"
        assert t.choose(dest, 10.0) == "backup"
    t.suspend(susp("backup", "gmail.com", 100.0))
    assert t.choose("gmail.com", 10.0) == "third"
    t.suspend(susp("third", "*", 100.0))
    assert t.choose("gmail.com", 10.0) is None
    assert t.choose("yahoo.com", 10.0) == "backup"


def test_longer_suspension_wins():
    t = table()
    t.suspend(susp("primary", "d", 200.0, rule="long"))
    t.suspend(susp("primary", "d", 100.0, rule="short"))
    assert t.suspension("primary", "d", 150.0).rule == "long"
    t.suspend(susp("primary", "d", 300.0, rule="longer"))
    assert t.suspension("primary", "d", 250.0).rule == "longer"


def test_expiry_gives_exactly_one_probe_and_success_clears():
    t = table()
    t.suspend(susp("primary", "gmail.com", 100.0))
    assert t.choose("gmail.com", 100.0) == "primary"  # until <= now: expired
    assert t.begin("primary", "gmail.com") is True  # this one is the probe
    # while it is out, nobody else uses primary for gmail.com
    assert t.choose("gmail.com", 101.0) == "backup"
    assert t.unavailable("primary", "gmail.com", 101.0)
    assert t.choose("yahoo.com", 101.0) == "primary"  # other destinations are unaffected
    assert t.begin("primary", "yahoo.com") is False
    t.end("primary", "yahoo.com", probe=False, success=True)
    t.end("primary", "gmail.com", probe=True, success=True)
    assert t.choose("gmail.com", 102.0) == "primary"
    assert t.begin("primary", "gmail.com") is False  # no more probing
    assert t.begin("primary", "gmail.com") is False
    t.end("primary", "gmail.com", probe=False, success=True)
    t.end("primary", "gmail.com", probe=False, success=True)
    assert t.active == {}


def test_probe_failure_allows_another_probe():
    t = table()
    t.suspend(susp("primary", "gmail.com", 100.0))
    assert t.choose("gmail.com", 150.0) == "primary"
    assert t.begin("primary", "gmail.com") is True
    assert t.begin("primary", "gmail.com") is False  # a second transaction is no probe
    t.end("primary", "gmail.com", probe=False, success=False)
    assert t.choose("gmail.com", 151.0) == "backup"
    t.end("primary", "gmail.com", probe=True, success=False)
    assert t.choose("gmail.com", 152.0) == "primary"
    assert t.begin("primary", "gmail.com") is True  # one new probe
    assert t.choose("gmail.com", 153.0) == "backup"
    t.end("primary", "gmail.com", probe=True, success=True)
    assert t.choose("gmail.com", 154.0) == "primary"
    assert t.begin("primary", "gmail.com") is False


def test_probe_for_all_destinations_suspension():
    t = table()
    t.suspend(susp("primary", "*", 100.0))
    assert t.choose("a.example", 100.0) == "primary"
    assert t.begin("primary", "a.example") is True
    # the route-wide probe is out: every destination skips primary
    assert t.choose("b.example", 100.0) == "backup"
    assert t.choose("a.example", 100.0) == "backup"
    t.end("primary", "a.example", probe=True, success=True)
    assert t.choose("b.example", 100.0) == "primary"
    assert t.begin("primary", "b.example") is False


def test_new_suspension_cancels_probe():
    t = table()
    t.suspend(susp("primary", "d", 10.0))
    assert t.choose("d", 10.0) == "primary"
    assert t.begin("primary", "d") is True
    t.suspend(susp("primary", "d", 50.0))  # the probe failed and the policy suspended again
    t.end("primary", "d", probe=True, success=False)
    assert t.choose("d", 20.0) == "backup"
    assert t.choose("d", 50.0) == "primary"
    assert t.begin("primary", "d") is True


def test_wait_until():
    t = table()
    assert t.wait_until("d", 0.0) is None
    t.suspend(susp("primary", "d", 100.0))
    t.suspend(susp("backup", "*", 60.0))
    t.suspend(susp("third", "other", 10.0))
    assert t.wait_until("other", 0.0) == 10.0
    assert t.wait_until("d", 0.0) == 60.0
    assert t.wait_until("d", 70.0) == 100.0
    assert t.wait_until("other", 70.0) is None
    assert t.wait_until("d", 100.0) is None


def throttle(dest: str, cap: int, until: float, route: str = "primary") -> Throttle:
    return Throttle(route=route, destination=dest, max_connections=cap, until=until, rule="t")


def test_throttle_caps_and_expires():
    t = table()
    assert t.connection_cap("primary", "d", 0.0) is None
    assert not t.at_cap("primary", "d", 0.0)
    t.throttle(throttle("d", 2, 100.0))
    assert t.connection_cap("primary", "d", 0.0) == 2
    assert t.connection_cap("backup", "d", 0.0) is None
    assert t.connection_cap("primary", "e", 0.0) is None
    t.begin("primary", "d")
    assert not t.at_cap("primary", "d", 1.0)
    t.begin("primary", "d")
    assert t.at_cap("primary", "d", 1.0)
    assert not t.at_cap("primary", "e", 1.0)
    t.end("primary", "d", probe=False, success=True)
    assert not t.at_cap("primary", "d", 1.0)
    t.begin("primary", "d")
    assert t.at_cap("primary", "d", 99.9)
    assert not t.at_cap("primary", "d", 100.0)  # expired
    assert t.connection_cap("primary", "d", 100.0) is None
    assert t.throttles == {}


def test_throttle_for_all_destinations_and_tightening():
    t = table()
    t.throttle(throttle("*", 3, 100.0))
    assert t.connection_cap("primary", "any.example", 0.0) == 3
    t.throttle(throttle("*", 5, 50.0))  # looser and shorter: ignored
    assert t.connection_cap("primary", "any.example", 0.0) == 3
    t.throttle(throttle("*", 1, 50.0))  # tighter: taken
    assert t.connection_cap("primary", "any.example", 0.0) == 1
    t.throttle(throttle("d", 4, 10.0))  # a destination-specific throttle comes first
    assert t.connection_cap("primary", "d", 0.0) == 4
    assert t.connection_cap("primary", "d", 20.0) == 1


def test_resume():
    t = table()
    t.suspend(susp("primary", "a", 100.0))
    t.suspend(susp("primary", "b", 100.0))
    t.suspend(susp("primary", "*", 100.0))
    t.suspend(susp("backup", "a", 100.0))
    assert t.resume("primary", "a") == ["a"]
    assert t.suspension("primary", "a", 0.0).destination == "*"  # route-wide one still holds
    assert len(t.resume("primary")) == 2
    assert t.choose("a", 0.0) == "primary"
    assert t.begin("primary", "a") is False  # resumed by hand: no probe
    assert t.resume("primary") == []
    assert t.resume("backup", "b") == []
    assert t.choose("a", 0.0, exclude=["primary"]) == "third"
    assert len(t.resume("backup", None)) == 1
    assert t.choose("a", 0.0, exclude=["primary"]) == "backup"


def test_end_without_begin_does_not_go_negative():
    t = table()
    t.end("primary", "d", probe=False, success=True)
    assert t.active == {}


# -- provider keys -----------------------------------------------------------------

MS = "provider:microsoft"


def test_a_provider_suspension_holds_every_domain_of_that_provider():
    t = table()
    t.suspend(susp("primary", MS, 100.0))
    for domain in ("contoso.example", "fabrikam.example"):
        assert t.suspension("primary", domain, 0.0, provider=MS) is not None
        assert t.choose(domain, 0.0, provider=MS) == "backup"
        assert t.wait_until(domain, 0.0, provider=MS) == 100.0
    # A domain of another provider, or one whose provider is not known, is free.
    assert t.suspension("primary", "gmail.example", 0.0, provider="provider:google") is None
    assert t.choose("contoso.example", 0.0) == "primary"
    # The domain's own suspension is found first.
    t.suspend(susp("primary", "contoso.example", 200.0, rule="own"))
    own = t.suspension("primary", "contoso.example", 0.0, provider=MS)
    assert own is not None
    assert own.rule == "own"


def test_after_a_provider_suspension_one_probe_for_all_its_domains():
    t = table()
    t.suspend(susp("primary", MS, 10.0))
    g1 = t.grant("contoso.example", 10.0, provider=MS)
    assert g1 is not None
    assert not isinstance(g1, str)
    assert (g1.route, g1.probe) == ("primary", True)
    # While that probe is out, no other domain of the provider takes the route.
    g2 = t.grant("fabrikam.example", 10.0, provider=MS)
    assert g2 is not None
    assert not isinstance(g2, str)
    assert (g2.route, g2.probe) == ("backup", False)
    t.release("primary", "contoso.example", probe=True, success=True, provider=MS)
    g3 = t.grant("fabrikam.example", 10.0, provider=MS)
    assert g3 is not None
    assert not isinstance(g3, str)
    assert (g3.route, g3.probe) == ("primary", False)


def test_a_provider_throttle_counts_the_connections_to_all_its_domains():
    t = table()
    t.throttle(throttle(MS, 2, 100.0))
    t.begin("primary", "contoso.example", provider=MS)
    assert not t.at_cap("primary", "fabrikam.example", 1.0, provider=MS)
    t.begin("primary", "fabrikam.example", provider=MS)
    assert t.at_cap("primary", "fabrikam.example", 1.0, provider=MS)
    assert t.at_cap("primary", "third.example", 1.0, provider=MS)
    assert t.grant("third.example", 1.0, provider=MS) == "primary"  # wait for a connection
    assert not t.at_cap("primary", "other.example", 1.0)  # another key, not counted
    assert t.connection_cap("primary", "third.example", 1.0, provider=MS) == 2
    t.end("primary", "contoso.example", probe=False, success=True, provider=MS)
    assert not t.at_cap("primary", "fabrikam.example", 1.0, provider=MS)
    # The domain's own throttle counts that domain's connections, and holds as well.
    t.throttle(throttle("fabrikam.example", 1, 100.0))
    assert t.at_cap("primary", "fabrikam.example", 1.0, provider=MS)
    assert not t.at_cap("primary", "contoso.example", 1.0, provider=MS)
    t.end("primary", "fabrikam.example", probe=False, success=True, provider=MS)
    assert t.active == {}
