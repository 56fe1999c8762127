"""Which nodes see which route listed: any node's word lists it, an other node's
word lapses unless said again, a node's own stands until its own check says
otherwise."""

from __future__ import annotations

from relayguard.queue.listings import LISTING_KEPT, Listing, Listings


def listing(node: str, until: float, *, avoid: bool = True, zone: str = "bl.test") -> Listing:
    return Listing(
        node, until, {"route": "A", "zone": zone, "address": "192.0.2.10", "avoid": avoid}
    )


def test_a_route_is_listed_while_any_node_says_so():
    table = Listings()
    table.listed(listing("node-1", 100.0))
    table.listed(listing("node-2", 100.0))
    table.listed(listing("node-2", 100.0, avoid=False, zone="info.test"))
    assert table.avoided_zones("A") == frozenset({"bl.test"})  # info.test: listed, not avoided
    assert table.is_listed("A")
    assert not table.is_listed("B")
    assert [x.node for x in table.seen_by("A")] == ["node-1", "node-2", "node-2"]
    table.delisted("node-1", "A", "bl.test")
    assert table.avoided_zones("A") == frozenset({"bl.test"})  # node 2 still sees it
    table.delisted("node-2", "A", "bl.test")
    assert table.avoided_zones("A") == frozenset()
    assert table.is_listed("A")  # in info.test
    table.delisted("node-2", "A", "info.test")
    assert not table.is_listed("A")
    assert table.by_zone == {}


def test_other_nodes_words_lapse_this_nodes_own_are_said_again():
    table = Listings()
    table.listed(listing("me", 100.0))
    table.listed(listing("dead", 100.0))
    table.listed(listing("alive", 300.0))
    assert table.lapse(99.0, "me") == []
    assert [x.node for x in table.lapse(100.0, "me")] == ["dead"]
    assert sorted(x.node for x in table.seen_by("A")) == ["alive", "me"]
    # Renewed when half its life is left, so the others never see it lapse.
    assert table.due_again("me", 100.0 - LISTING_KEPT / 2 - 1) == []
    assert [x.node for x in table.due_again("me", 100.0 - LISTING_KEPT / 2)] == ["me"]
