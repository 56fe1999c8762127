"""Prometheus metrics and /healthz, and the recent outcomes `relayguard routes` shows.

`Observer` receives the queue manager's events (`on_event`) and the front end's
accepts; it counts them in its own registry (one per relay, so several relays
can live in one test process) and keeps the last few outcomes per route.
`MetricsServer` is a small HTTP server on the event loop: GET /metrics (queue
sizes are read from the spool at scrape time) and GET /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from relayguard.clock import Clock
from relayguard.model import Suspension
from relayguard.queue.spool import SpoolError
from relayguard.queue.spool.sqlite import queue_stats

log = structlog.get_logger("relayguard.ops.metrics")

RECENT = 10  # outcomes kept per route for `relayguard routes`
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OUTCOMES = ("delivered", "deferred", "rerouted", "bounced")


class Observer:
    """Counts what the relay does; feeds /metrics and `relayguard routes`."""

    def __init__(
        self, clock: Clock, routes: Iterable[str], checked: Iterable[tuple[str, str]] = ()
    ) -> None:
        """`checked`: the (route, zone) pairs the reputation checks look at."""
        self.clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "relayguard_accepted_messages",
            "Messages accepted (answered 250) by the front end",
            registry=r,
        )
        self.delivered = Counter(
            "relayguard_delivered_recipients",
            "Recipients delivered, by route",
            ["route"],
            registry=r,
        )
        self.deferred = Counter(
            "relayguard_deferred_recipients",
            "Recipients deferred, by route and policy rule",
            ["route", "rule"],
            registry=r,
        )
        self.rerouted = Counter(
            "relayguard_rerouted_recipients",
            "Recipients rerouted, by route and policy rule",
            ["route", "rule"],
            registry=r,
        )
        self.bounced = Counter(
            "relayguard_bounced_recipients",
            "Recipients bounced (NDR), by route and policy rule ('operator', 'lifetime')",
            ["route", "rule"],
            registry=r,
        )
        self.replies = Counter(
            "relayguard_replies",
            "Refusals (4xx/5xx replies) from upstream, by route and what kind of reply it was",
            ["route", "category"],
            registry=r,
        )
        self.latency = Histogram(
            "relayguard_delivery_duration_seconds",
            "Time of one delivery transaction through a route, from connection to reply",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Gauge(
            "relayguard_queue_messages",
            "Messages in the queue by state (active: due now; deferred: waiting; held)",
            ["state"],
            registry=r,
        )
        self.oldest = Gauge(
            "relayguard_oldest_message_age_seconds", "Age of the oldest queued message", registry=r
        )
        # Beside the queue, not in it: what [queue] keep_bounced holds for `queue resend`.
        self.kept = Gauge(
            "relayguard_kept_messages",
            "Copies of messages that bounced because of our egress, kept for queue resend",
            registry=r,
        )
        self.kept_size = Gauge(
            "relayguard_kept_bytes",
            "Total size of the kept copies (capped by keep_bounced_max_size)",
            registry=r,
        )
        self.suspensions = Gauge(
            "relayguard_route_suspensions",
            "Active route suspensions, by route",
            ["route"],
            registry=r,
        )
        self.egress_listed = Gauge(
            "relayguard_egress_listed",
            "1 while a DNSBL lists the route's egress address ([[reputation.zone]]), else 0",
            ["route", "zone"],
            registry=r,
        )
        for route, zone in checked:
            self.egress_listed.labels(route, zone).set(0)
        self.routes = tuple(routes)
        for route in self.routes:
            self.delivered.labels(route)
            self.suspensions.labels(route)
        for state in ("active", "deferred", "held"):
            self.queue.labels(state)
        self.recent: dict[str, deque[dict[str, Any]]] = {
            route: deque(maxlen=RECENT) for route in self.routes
        }
        self.counts: dict[str, dict[str, int]] = {route: {} for route in self.routes}
        self._last_transaction: tuple[object, ...] = ()

    def message_accepted(self) -> None:
        self.accepted.inc()

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        """The queue manager's hook: one call per outcome of a group of recipients,
        and per change of an egress's standing in a DNSBL."""
        if event in ("egress_listed", "egress_delisted"):
            self.egress_listed.labels(fields["route"], fields["zone"]).set(
                1 if event == "egress_listed" else 0
            )
            return
        if event not in OUTCOMES:
            return
        route = str(fields.get("route") or "")
        rule = str(fields.get("rule") or "")
        count = len(fields.get("recipients") or ()) or 1
        if event == "delivered":
            self.delivered.labels(route).inc(count)
        else:
            category = str(fields.get("category") or "")
            if category and route:
                self.replies.labels(route, category).inc()
            {"deferred": self.deferred, "rerouted": self.rerouted, "bounced": self.bounced}[
                event
            ].labels(route, rule).inc(count)
        if "duration" in fields and route:
            # One transaction whose recipients got different replies is reported as one
            # event per reply, one after the other, with the same duration: observe once.
            key = (fields.get("queue_id"), route, fields["duration"])
            if key != self._last_transaction:
                self.latency.labels(route).observe(float(fields["duration"]))
            self._last_transaction = key
        if route in self.recent:
            reply = " ".join(
                str(fields[k])
                for k in ("code", "enhanced", "text")
                if fields.get(k) not in (None, "")
            )
            self.recent[route].appendleft(
                {"at": self.clock.now(), "event": event, "reply": reply, "rule": rule or None}
            )
            per_route = self.counts[route]
            per_route[event] = per_route.get(event, 0) + count

    def set_queue(self, stats: Mapping[str, float], now: float) -> None:
        for state in ("active", "deferred", "held"):
            self.queue.labels(state).set(stats[state])
        oldest = stats["oldest_arrival"]
        self.oldest.set(max(0.0, now - oldest) if oldest else 0.0)
        self.kept.set(stats.get("kept", 0.0))
        self.kept_size.set(stats.get("kept_size", 0.0))

    def set_suspensions(self, suspensions: Iterable[Suspension], now: float) -> None:
        counts = dict.fromkeys(self.routes, 0)
        for s in suspensions:
            if s.until > now:
                counts[s.route] = counts.get(s.route, 0) + 1
        for route, n in counts.items():
            self.suspensions.labels(route).set(n)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the scraper asks for (Prometheus text 0.0.4 by
        default, OpenMetrics on request), and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class MetricsServer:
    """GET /metrics and GET /healthz over plain HTTP/1.1 (one request per connection)."""

    def __init__(
        self,
        observer: Observer,
        healthy: Callable[[], bool],
        spool_dir: Path,
        suspensions: Callable[[], Iterable[Suspension]],
        stats: Callable[[float], Awaitable[dict[str, float]]] | None = None,
    ) -> None:
        self.observer = observer
        # A server spool (PostgreSQL) is asked through the relay's own spool; SQLite is
        # read through a read-only connection of the metrics' own, off the loop.
        self.stats = stats
        self.healthy = healthy
        self.spool_dir = Path(spool_dir)
        self.suspensions = suspensions
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port)
        log.info("metrics_listening", address=f"{self.address[0]}:{self.address[1]}")

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def refresh(self) -> None:
        """Queue sizes from the spool (a read of its own, off the loop) and suspensions."""
        now = self.observer.clock.now()
        self.observer.set_suspensions(list(self.suspensions()), now)
        try:
            if self.stats is not None:
                stats = await self.stats(now)
            else:
                stats = await asyncio.to_thread(queue_stats, self.spool_dir, now)
        except (sqlite3.Error, OSError, SpoolError) as exc:
            log.warning("metrics_spool_unreadable", error=str(exc))
            return
        self.observer.set_queue(stats, now)

    async def _respond(self, method: str, path: str, accept: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            await self.refresh()
            body, content_type = self.observer.exposition(accept)
            return 200, content_type, body
        if path == "/healthz":
            if self.healthy():
                return 200, "text/plain", b"ok\n"
            return 503, "text/plain", b"unhealthy: listener or spool not usable\n"
        return 404, "text/plain", b"not found: try /metrics or /healthz\n"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reasons = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            503: "Service Unavailable",
        }
        try:
            accept = ""
            async with asyncio.timeout(10):
                request = (await reader.readline()).decode("latin-1").split()
                while line := (await reader.readline()).decode("latin-1").strip():
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "accept":
                        accept = value.strip()
            if len(request) == 3:
                status, ctype, body = await self._respond(request[0], request[1], accept)
            else:
                status, ctype, body = 400, "text/plain", b"bad request\n"
            head = (
                f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if request[:1] == ["HEAD"] else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
