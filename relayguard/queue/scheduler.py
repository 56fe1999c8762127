"""What is due next, and where each route stands with each destination.

Pure data structures, no I/O and no clock: every method takes `now`.

- `DueQueue`: a heap on next_attempt_at with lazy invalidation, O(log n).
- `RouteTable`: suspensions (route and destination, or route and '*'), the single
  probe after a suspension ends, throttles (a lowered per-destination connection
  cap), and every route's connections: the one owner of the connection window,
  as Postfix's qmgr owns its per-destination window. A round gets a connection
  (and with it its route) from `grant`, and gives it back with `release`.

A destination is a recipient domain and, when its MX is at a known provider, that
provider's key too ("provider:microsoft", dns/providers.py): a suspension or a
throttle may be keyed by either, so that one block seen for one Microsoft-hosted
domain holds the route back from all of them. Every method that takes a
destination takes its `provider` key (None: the domain is its own key).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relayguard.model import Suspension, Throttle

ALL_DESTINATIONS = "*"


def destination_keys(destination: str, provider: str | None) -> tuple[str, ...]:
    """The keys a suspension or throttle for this destination may be stored under, the
    most specific first: the domain, its provider, every destination."""
    if provider and provider != destination:
        return (destination, provider, ALL_DESTINATIONS)
    return (destination, ALL_DESTINATIONS)


class DueQueue:
    """Message sequence numbers keyed by when they are next due."""

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, seq: int) -> bool:
        return seq in self._due

    def schedule(self, seq: int, at: float) -> None:
        """(Re)schedule; a later call replaces an earlier one."""
        self._due[seq] = at
        heapq.heappush(self._heap, (at, seq))

    def remove(self, seq: int) -> None:
        self._due.pop(seq, None)

    def next_due(self) -> float | None:
        heap = self._heap
        while heap:
            at, seq = heap[0]
            if self._due.get(seq) == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float, limit: int) -> list[int]:
        """Up to `limit` messages due at `now`, earliest first; they leave the queue."""
        out: list[int] = []
        heap = self._heap
        while heap and len(out) < limit:
            at, seq = heap[0]
            if at > now:
                break
            heapq.heappop(heap)
            if self._due.get(seq) == at:
                del self._due[seq]
                out.append(seq)
        return out


@dataclass(slots=True)
class _Probe:
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """A connection of `route` for one transaction; `probe`: the first after a suspension."""

    route: str
    probe: bool


@dataclass(slots=True)
class RouteTable:
    """Suspensions, probes and throttles, per route and destination."""

    routes: tuple[str, ...]
    suspensions: dict[tuple[str, str], Suspension] = field(default_factory=dict)
    throttles: dict[tuple[str, str], Throttle] = field(default_factory=dict)
    # (route, destination) whose suspension ended and that have not yet had a
    # successful probe: one message at a time until one gets through.
    probing: dict[tuple[str, str], _Probe] = field(default_factory=dict)
    active: dict[tuple[str, str], int] = field(default_factory=dict)
    # Each route's cap on connections to all destinations together, and how many it has.
    max_connections: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)
    # Routes whose egress address a DNSBL lists (dns/reputation.py), with the zones:
    # mail avoids them while another route may take it.
    avoided: dict[str, frozenset[str]] = field(default_factory=dict)

    def grant(
        self,
        destination: str,
        now: float,
        *,
        exclude: Iterable[str] = (),
        prefer: Sequence[str] = (),
        provider: str | None = None,
    ) -> Grant | str | None:
        """A connection for a transaction to `destination`: on the first usable route
        (`prefer`red first) when it has one free; that route's name when it is at its cap
        (wait: mail does not spill onto a fallback route for being busy); None when no
        route may take the destination now (every one suspended, or its probe out)."""
        route = self.choose(destination, now, exclude=exclude, prefer=prefer, provider=provider)
        if route is None:
            return None
        cap = self.max_connections.get(route)
        if (cap is not None and self.in_use.get(route, 0) >= cap) or self.at_cap(
            route, destination, now, provider=provider
        ):
            return route
        self.in_use[route] = self.in_use.get(route, 0) + 1
        return Grant(route, self.begin(route, destination, provider=provider))

    def release(
        self,
        route: str,
        destination: str,
        *,
        probe: bool,
        success: bool,
        provider: str | None = None,
    ) -> None:
        """A granted connection comes back (the transaction ended, or never began)."""
        left = self.in_use.get(route, 1) - 1
        if left:
            self.in_use[route] = left
        else:
            self.in_use.pop(route, None)
        self.end(route, destination, probe=probe, success=success, provider=provider)

    def _expire(self, now: float) -> None:
        for key, s in list(self.suspensions.items()):
            if s.until <= now:
                del self.suspensions[key]
                self.probing.setdefault(key, _Probe())
        for key, t in list(self.throttles.items()):
            if t.until <= now:
                del self.throttles[key]

    def suspension(
        self, route: str, destination: str, now: float, *, provider: str | None = None
    ) -> Suspension | None:
        self._expire(now)
        for key in destination_keys(destination, provider):
            s = self.suspensions.get((route, key))
            if s is not None:
                return s
        return None

    def suspended_routes(
        self, destination: str, now: float, *, provider: str | None = None
    ) -> frozenset[str]:
        return frozenset(
            r for r in self.routes if self.suspension(r, destination, now, provider=provider)
        )

    def _probe_key(
        self, route: str, destination: str, provider: str | None
    ) -> tuple[str, str] | None:
        for key in destination_keys(destination, provider):
            if (route, key) in self.probing:
                return (route, key)
        return None

    def unavailable(
        self, route: str, destination: str, now: float, *, provider: str | None = None
    ) -> bool:
        """Suspended, or its probe is out and not yet back."""
        if self.suspension(route, destination, now, provider=provider) is not None:
            return True
        key = self._probe_key(route, destination, provider)
        return key is not None and self.probing[key].in_flight

    def choose(
        self,
        destination: str,
        now: float,
        *,
        exclude: Iterable[str] = (),
        prefer: Sequence[str] = (),
        provider: str | None = None,
    ) -> str | None:
        """The first usable route, `prefer`red ones first, and one whose egress is not
        listed before one that is; None if all are held back."""
        excluded = set(exclude)
        order = [*prefer, *(r for r in self.routes if r not in prefer)]
        usable = [
            r
            for r in order
            if r not in excluded
            and r in self.routes
            and not self.unavailable(r, destination, now, provider=provider)
        ]
        clean = [r for r in usable if r not in self.avoided]
        chosen = clean or usable
        return chosen[0] if chosen else None

    def wait_until(
        self, destination: str, now: float, *, provider: str | None = None
    ) -> float | None:
        """When the earliest suspension for this destination ends (for held mail)."""
        ends = [
            s.until
            for r in self.routes
            if (s := self.suspension(r, destination, now, provider=provider))
        ]
        return min(ends) if ends else None

    def _counted(self, route: str, destination: str, provider: str | None) -> list[tuple[str, str]]:
        # A provider's throttle caps the connections to all its domains together, so
        # they are counted under the provider key as well as the domain's.
        keys = [(route, destination)]
        if provider and provider != destination:
            keys.append((route, provider))
        return keys

    def begin(self, route: str, destination: str, *, provider: str | None = None) -> bool:
        """Count a transaction in; True if it is the probe after a suspension."""
        for key in self._counted(route, destination, provider):
            self.active[key] = self.active.get(key, 0) + 1
        pkey = self._probe_key(route, destination, provider)
        if pkey is not None and not self.probing[pkey].in_flight:
            self.probing[pkey].in_flight = True
            return True
        return False

    def end(
        self,
        route: str,
        destination: str,
        *,
        probe: bool,
        success: bool,
        provider: str | None = None,
    ) -> None:
        for key in self._counted(route, destination, provider):
            left = self.active.get(key, 1) - 1
            if left:
                self.active[key] = left
            else:
                self.active.pop(key, None)
        if probe:
            pkey = self._probe_key(route, destination, provider)
            if pkey is not None:
                if success:
                    del self.probing[pkey]
                else:
                    self.probing[pkey].in_flight = False

    def _throttle_for(self, route: str, destination: str, provider: str | None) -> Throttle | None:
        for key in destination_keys(destination, provider):
            t = self.throttles.get((route, key))
            if t is not None:
                return t
        return None

    def connection_cap(
        self, route: str, destination: str, now: float, *, provider: str | None = None
    ) -> int | None:
        """The cap of the most specific throttle on this route for the destination."""
        self._expire(now)
        t = self._throttle_for(route, destination, provider)
        return t.max_connections if t else None

    def at_cap(
        self, route: str, destination: str, now: float, *, provider: str | None = None
    ) -> bool:
        """A throttle's cap reached. The domain's own throttle (else the route-wide one)
        counts the connections to this domain; a provider's throttle counts those to
        every domain it hosts, and holds as well."""
        self._expire(now)
        own = self._throttle_for(route, destination, None)
        if own is not None and self.active.get((route, destination), 0) >= own.max_connections:
            return True
        if provider and provider != destination:
            t = self.throttles.get((route, provider))
            if t is not None and self.active.get((route, provider), 0) >= t.max_connections:
                return True
        return False

    def suspend(self, s: Suspension) -> None:
        key = (s.route, s.destination)
        current = self.suspensions.get(key)
        # A real suspension replaces a provisional one (a second opinion's hold) whatever
        # their ends, so that lifting the provisional one never lifts a real one.
        if current is None or _replaces(s, current):
            self.suspensions[key] = s
        self.probing.pop(key, None)

    def lift_provisional(self, route: str, destination: str) -> bool:
        """End a second opinion's provisional hold (not a real suspension); True if lifted."""
        key = (route, destination)
        current = self.suspensions.get(key)
        if current is None or not current.provisional:
            return False
        del self.suspensions[key]
        return True

    def throttle(self, t: Throttle) -> None:
        key = (t.route, t.destination)
        current = self.throttles.get(key)
        if (
            current is None
            or current.until < t.until
            or current.max_connections > t.max_connections
        ):
            self.throttles[key] = t

    def resume(
        self, route: str, destination: str | None = None, *, category: str | None = None
    ) -> list[str]:
        """Lift a route's suspensions early: for one destination key or all, of one
        reply category or all (an operator's `routes resume`; a delisted egress lifts
        its rbl_block ones). The destination keys lifted."""
        keys = [
            k
            for k, s in self.suspensions.items()
            if k[0] == route and destination in (None, k[1]) and category in (None, s.category)
        ]
        for k in keys:
            del self.suspensions[k]
            self.probing.pop(k, None)
        return [k[1] for k in keys]


def _replaces(new: Suspension, current: Suspension) -> bool:
    if current.provisional != new.provisional:
        return current.provisional
    return current.until < new.until
