"""Which DNSBLs list which route's egress, as every node sees it.

Pure. Each node checks the egress addresses itself (dns/reputation.py); on a shared
spool it also records its listings for the others, and follows theirs. A route is
listed in a zone while any node's latest word on it says listed: being wrong that
way costs a detour through another route for a while, being wrong the other way
costs mail refused by every receiver using that list. A node's word lapses after
`LISTING_KEPT` unless the node says it again (it renews what it still sees), so a
node that died holding a listing does not keep the route avoided for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How long another node's listing holds without being said again; a node renews its
# own when half of this has passed.
LISTING_KEPT = 1800.0


@dataclass(frozen=True, slots=True)
class Listing:
    node: str
    until: float
    check: dict[str, Any]  # the check as the node that made it saw it (ZoneCheck.to_dict)

    @property
    def key(self) -> tuple[str, str]:
        return str(self.check["route"]), str(self.check["zone"])

    @property
    def avoid(self) -> bool:
        """The zone's avoid = "all": mail avoids the route while another is clean."""
        return bool(self.check.get("avoid", True))


@dataclass
class Listings:
    # (route, zone) -> node -> its listing
    by_zone: dict[tuple[str, str], dict[str, Listing]] = field(default_factory=dict)

    def listed(self, listing: Listing) -> None:
        self.by_zone.setdefault(listing.key, {})[listing.node] = listing

    def delisted(self, node: str, route: str, zone: str) -> None:
        nodes = self.by_zone.get((route, zone), {})
        nodes.pop(node, None)
        if not nodes:
            self.by_zone.pop((route, zone), None)

    def lapse(self, now: float, keep_node: str) -> list[Listing]:
        """Forget the other nodes' listings not said again in time, and say which.
        This node's own stand until its own checks say otherwise."""
        lapsed: list[Listing] = []
        for (route, zone), nodes in list(self.by_zone.items()):
            for node, listing in list(nodes.items()):
                if node != keep_node and listing.until <= now:
                    self.delisted(node, route, zone)
                    lapsed.append(listing)
        return lapsed

    def avoided_zones(self, route: str) -> frozenset[str]:
        """The zones listing the route in which a listing means: avoid it."""
        return frozenset(
            zone
            for (r, zone), nodes in self.by_zone.items()
            if r == route and any(listing.avoid for listing in nodes.values())
        )

    def is_listed(self, route: str) -> bool:
        return any(r == route for r, _zone in self.by_zone)

    def seen_by(self, route: str) -> list[Listing]:
        """Every node's listings of the route, zone by zone (for `routes`)."""
        return [
            nodes[node]
            for (r, _zone), nodes in sorted(self.by_zone.items())
            if r == route
            for node in sorted(nodes)
        ]

    def due_again(self, node: str, now: float) -> list[Listing]:
        """This node's listings whose record is past half its life: to say again."""
        return [
            nodes[node]
            for nodes in self.by_zone.values()
            if node in nodes and nodes[node].until - now <= LISTING_KEPT / 2
        ]
