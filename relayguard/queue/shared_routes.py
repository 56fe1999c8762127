"""Route state shared between nodes: what one node learns, the others apply.

Pure: which of a round's events are worth sharing (real suspensions and
throttles; a second opinion's provisional hold stays with the node asking), and
how a record from another node changes this node's route table, with the very
rules (`RouteTable.suspend`, `throttle`, `resume`) its own findings go through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relayguard.model import Suspension, Throttle
from relayguard.queue.scheduler import RouteTable
from relayguard.queue.spool import RouteRecord

SUSPENSION = "suspension"
THROTTLE = "throttle"
RESUME = "resume"
# An egress's DNSBL listing as one node sees it (queue/listings.py), and its end.
LISTED = "listed"
DELISTED = "delisted"
LISTING_KINDS = frozenset({LISTED, DELISTED})


def records_to_share(
    events: Sequence[tuple[str, dict[str, Any]]],
) -> list[tuple[str, float, dict[str, Any]]]:
    """(kind, until, data) for each event of a round the other nodes should know."""
    out = []
    for name, fields in events:
        if name == "route_suspended" and not fields.get("provisional"):
            out.append((SUSPENSION, float(fields["until"]), dict(fields)))
        elif name == "route_throttled":
            out.append((THROTTLE, float(fields["until"]), dict(fields)))
    return out


def suspension(d: dict[str, Any]) -> Suspension:
    return Suspension(
        route=str(d["route"]),
        destination=str(d["destination"]),
        until=float(d["until"]),
        reason=str(d.get("reason", "")),
        rule=str(d.get("rule", "")),
        provisional=bool(d.get("provisional", False)),
        category=str(d.get("category", "")),
    )


def throttle(d: dict[str, Any]) -> Throttle:
    return Throttle(
        route=str(d["route"]),
        destination=str(d["destination"]),
        max_connections=int(d["max_connections"]),
        until=float(d["until"]),
        rule=str(d.get("rule", "")),
    )


def apply(table: RouteTable, record: RouteRecord) -> list[str]:
    """Apply another node's record; the destination keys a resume lifted. A record for
    a route this node does not have (configured differently) changes nothing."""
    data = record.data
    if data.get("route") not in table.routes:
        return []
    if record.kind == SUSPENSION:
        table.suspend(suspension(data))
    elif record.kind == THROTTLE:
        table.throttle(throttle(data))
    elif record.kind == RESUME:
        destination = data.get("destination")
        return table.resume(str(data["route"]), None if destination is None else str(destination))
    return []
