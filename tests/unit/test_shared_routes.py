"""What a node shares of its route table, and how another node's record applies."""

from __future__ import annotations

from relayguard.model import Suspension, Throttle
from relayguard.queue import shared_routes
from relayguard.queue.scheduler import RouteTable
from relayguard.queue.spool import RouteRecord

REAL = Suspension("A", "example.com", 500.0, "554 5.7.1 blocked", "rbl", category="rbl_block")
HOLD = Suspension("A", "example.net", 400.0, "550 5.7.1 no", "second", provisional=True)
SLOW = Throttle("B", "example.org", 2, 600.0, "throttle")


def test_real_suspensions_and_throttles_are_shared_provisional_holds_are_not():
    events = [
        ("route_suspended", REAL.to_dict()),
        ("route_suspended", HOLD.to_dict()),
        ("route_throttled", SLOW.to_dict()),
        ("delivered", {"route": "A"}),
    ]
    assert shared_routes.records_to_share(events) == [
        ("suspension", 500.0, REAL.to_dict()),
        ("throttle", 600.0, SLOW.to_dict()),
    ]


def test_records_apply_with_the_tables_own_rules():
    table = RouteTable(("A", "B"))
    for i, (kind, _, data) in enumerate(
        shared_routes.records_to_share(
            [("route_suspended", REAL.to_dict()), ("route_throttled", SLOW.to_dict())]
        )
    ):
        assert shared_routes.apply(table, RouteRecord(i + 1, "node-1", kind, data)) == []
    assert table.suspension("A", "example.com", 100.0) == REAL
    assert table.throttles[("B", "example.org")] == SLOW
    # A shorter suspension does not cut a longer one short (RouteTable.suspend's rule).
    shorter = {**REAL.to_dict(), "until": 200.0}
    shared_routes.apply(table, RouteRecord(3, "node-2", "suspension", shorter))
    assert table.suspension("A", "example.com", 100.0) == REAL
    # A route this node does not have changes nothing; a resume lifts.
    other = {**REAL.to_dict(), "route": "C"}
    assert shared_routes.apply(table, RouteRecord(4, "node-2", "suspension", other)) == []
    resume = {"route": "A", "destination": None}
    assert shared_routes.apply(table, RouteRecord(5, "node-2", "resume", resume)) == ["example.com"]
    assert table.suspension("A", "example.com", 100.0) is None
