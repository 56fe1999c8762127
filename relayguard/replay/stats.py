"""What a replay measured: counted as the queue manager records each delivery round.

`Stats` is fed by the replay's spool (every `finish_with_reports` is one round
of one message) and by the driver (arrivals, samples of the queue). `result()`
turns it into a plain, JSON-ready dict: times are seconds from the start of the
replay, floats are rounded, nothing depends on the wall clock or on queue ids.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from relayguard.model import Attempt, MessageState, QueuedMessage, RecipientState

SAMPLES = 288  # queue-depth samples over the scenario (10 minutes for 48 hours)
TOP_DOMAINS = 100  # destination domains listed one by one in the result
BINS = 96  # delivery bins over the scenario (30 minutes for 48 hours)
TTD_EDGES = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0, 172800.0)
TTD_LABELS = (
    "<1m",
    "1-5m",
    "5-15m",
    "15-30m",
    "30m-1h",
    "1-2h",
    "2-6h",
    "6-12h",
    "12-24h",
    "24-48h",
    ">48h",
)


def r3(x: float) -> float:
    """Rounded for the JSON: short, and the same on every run."""
    return round(x, 3) + 0.0  # + 0.0 turns -0.0 into 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass(slots=True)
class _Track:
    index: int  # position in the input
    arrival: float
    attempts: int = 0
    failed: int = 0
    last_delivery: float = 0.0


@dataclass(slots=True)
class _RouteStats:
    attempts: int = 0
    recipients_delivered: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    busy: float = 0.0  # summed attempt durations
    delivered_bins: list[int] = field(default_factory=lambda: [0] * BINS)


@dataclass
class Stats:
    t0: float
    duration: float
    inputs: dict[int, _Track] = field(default_factory=dict)
    reports: set[int] = field(default_factory=set)
    arrivals: list[float] = field(default_factory=list)  # sorted arrival times
    left_waiting: int = 0  # input messages attempted (or finished) at least once
    deferred: int = 0  # attempted, still queued
    outcomes: Counter[str] = field(default_factory=Counter)  # message outcomes
    recipients: Counter[str] = field(default_factory=Counter)
    ttd: list[float] = field(default_factory=list)  # per fully delivered message
    attempts_done: list[int] = field(default_factory=list)
    routes: dict[str, _RouteStats] = field(default_factory=dict)
    rules: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed_rules: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    domains: dict[str, Counter[str]] = field(default_factory=dict)
    report_kinds: Counter[str] = field(default_factory=Counter)
    reports_delivered: int = 0
    report_attempts: int = 0
    bounced_bins: list[int] = field(default_factory=lambda: [0] * BINS)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    # input index → (outcome, routes that delivered): for tests and scripts, not the JSON
    final: dict[int, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    _next_sample: int = 0
    _now: float = 0.0

    # -- feeding ----------------------------------------------------------------------

    def queued(self, queued: Sequence[QueuedMessage], indices: Sequence[int]) -> None:
        """Input messages in the spool, each due first at its arrival (in time order)."""
        for q, index in zip(queued, indices, strict=True):
            self.inputs[q.seq] = _Track(index, q.arrival_at)
            self.arrivals.append(q.arrival_at)

    def arrived(self, t: float) -> int:
        """How many input messages arrived before t."""
        return bisect.bisect_left(self.arrivals, t)

    @property
    def waiting(self) -> int:
        """Arrived, not yet attempted (now)."""
        return self.arrived(self._now) - self.left_waiting

    def report_built(self, kind: str, count: int) -> None:
        self.report_kinds[kind] += count

    def _bin(self, at: float) -> int:
        return min(BINS - 1, max(0, int((at - self.t0) / self.duration * BINS)))

    def round_finished(
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[QueuedMessage],
        now: float,
    ) -> None:
        for r in reports:
            self.reports.add(r.seq)
        track = self.inputs.get(message.seq)
        if track is None:  # a report (NDR) relayguard made: counted apart
            self.report_attempts += len(new_attempts)
            if message.state is MessageState.DONE and any(
                r.state is RecipientState.DELIVERED for r in message.envelope.recipients
            ):
                self.reports_delivered += 1
            return
        for a in new_attempts:
            self._attempt(a)
        was_waiting = track.attempts == 0
        self._track(track, message, new_attempts, now)
        self._now = now
        if message.state is MessageState.DONE:
            if was_waiting:
                self.left_waiting += 1
            else:
                self.deferred -= 1
            self._done(message, track)
        elif was_waiting and track.attempts:
            self.left_waiting += 1
            self.deferred += 1

    def _track(
        self, track: _Track, message: QueuedMessage, new_attempts: Sequence[Attempt], now: float
    ) -> None:
        track.attempts += len(new_attempts)
        for a in new_attempts:
            if a.action == "delivered":
                track.last_delivery = max(track.last_delivery, a.at + a.duration)
        failed = sum(1 for r in message.envelope.recipients if r.state is RecipientState.FAILED)
        if failed > track.failed:
            self.bounced_bins[self._bin(now)] += failed - track.failed
            track.failed = failed

    def _attempt(self, a: Attempt) -> None:
        rs = self.routes.get(a.route)
        if rs is None:
            rs = self.routes[a.route] = _RouteStats()
        rs.attempts += 1
        rs.actions[a.action] += 1
        rs.busy += a.duration
        if a.action == "delivered":
            rs.recipients_delivered += len(a.recipients)
            rs.delivered_bins[self._bin(a.at + a.duration)] += len(a.recipients)
        else:
            self.rules[(a.rule, a.action)] += 1
            self.replies[a.reply.render()] += 1

    def _done(self, message: QueuedMessage, track: _Track) -> None:
        states = [r.state for r in message.envelope.recipients]
        delivered = states.count(RecipientState.DELIVERED)
        if delivered == len(states):
            outcome = "delivered"
            self.ttd.append(track.last_delivery - track.arrival)
        elif delivered == 0:
            outcome = "bounced"
        else:
            outcome = "partly delivered"
        self.outcomes[outcome] += 1
        self.final[track.index] = (
            outcome,
            tuple(
                sorted({r.delivered_via for r in message.envelope.recipients if r.delivered_via})
            ),
        )
        self.attempts_done.append(track.attempts)
        for r in message.envelope.recipients:
            self._recipient(r.domain, r.state.value)
            if r.state is RecipientState.FAILED:
                self.failed_rules[r.failed_rule or "?"] += 1

    def _recipient(self, domain: str, state: str) -> None:
        self.recipients[state] += 1
        self.domains.setdefault(domain, Counter())[state] += 1

    def sample_until(self, t: float, in_flight: int) -> None:
        """Queue depth at every sample time up to t (the queue did not change before t)."""
        step = self.duration / SAMPLES
        while self._next_sample <= SAMPLES and self.t0 + self._next_sample * step <= t:
            at = self.t0 + self._next_sample * step
            waiting = self.arrived(at) - self.left_waiting
            self.samples.append((self._next_sample * step, waiting, self.deferred, in_flight))
            self._next_sample += 1

    def _top_domains(self) -> dict[str, dict[str, int]]:
        """Recipients by destination domain and state: the TOP_DOMAINS busiest, then '*'."""
        ranked = sorted(self.domains.items(), key=lambda x: (-sum(x[1].values()), x[0]))
        out = {d: dict(sorted(c.items())) for d, c in sorted(ranked[:TOP_DOMAINS])}
        rest: Counter[str] = Counter()
        for _, c in ranked[TOP_DOMAINS:]:
            rest.update(c)
        if rest:
            out["*"] = dict(sorted(rest.items()))
        return out

    def still_queued(self, message: QueuedMessage) -> None:
        """At the end: a message that is still in the queue."""
        track = self.inputs.get(message.seq)
        if track is None:
            return
        self.outcomes["still queued"] += 1
        self.final[track.index] = ("still queued", ())
        self.attempts_done.append(track.attempts)
        for r in message.envelope.recipients:
            self._recipient(r.domain, r.state.value)
            if r.state is RecipientState.FAILED:
                self.failed_rules[r.failed_rule or "?"] += 1

    # -- the result ----------------------------------------------------------------------

    def result(self, *, not_arrived: int, ended_at: float) -> dict[str, object]:
        ttd = sorted(self.ttd)
        attempts = sorted(self.attempts_done)
        arrived = len(self.inputs)
        return {
            "messages": {
                "arrived": arrived,
                "not_arrived": not_arrived,
                "delivered": self.outcomes["delivered"],
                "bounced": self.outcomes["bounced"],
                "partly_delivered": self.outcomes["partly delivered"],
                "still_queued": self.outcomes["still queued"],
            },
            "recipients": {k: self.recipients[k] for k in ("delivered", "failed", "queued")},
            "attempts_per_message": _distribution(attempts),
            "time_to_delivery": {
                **_distribution(ttd),
                "histogram": dict(zip(TTD_LABELS, _histogram(ttd), strict=True)),
            },
            "routes": {
                name: {
                    "attempts": rs.attempts,
                    "recipients_delivered": rs.recipients_delivered,
                    "actions": dict(sorted(rs.actions.items())),
                    "mean_attempt_seconds": r3(rs.busy / rs.attempts) if rs.attempts else 0.0,
                }
                for name, rs in sorted(self.routes.items())
            },
            "rules": [
                {"rule": rule, "action": action, "decisions": n}
                for (rule, action), n in sorted(self.rules.items(), key=lambda x: (-x[1], x[0]))
            ],
            "failures_by_rule": dict(sorted(self.failed_rules.items())),
            "top_replies": [
                {"reply": text, "count": n}
                for text, n in sorted(self.replies.items(), key=lambda x: (-x[1], x[0]))[:10]
            ],
            "domains": self._top_domains(),
            "reports": {
                "built": dict(sorted(self.report_kinds.items())),
                "delivered": self.reports_delivered,
                "attempts": self.report_attempts,
            },
            "timeline": {
                "sample_seconds": r3(self.duration / SAMPLES),
                "queue": [
                    {"t": r3(t), "waiting": w, "deferred": d, "in_flight": f}
                    for t, w, d, f in self.samples
                ],
                "bin_seconds": r3(self.duration / BINS),
                "delivered_per_route": {
                    name: rs.delivered_bins for name, rs in sorted(self.routes.items())
                },
                "bounced": self.bounced_bins,
            },
            "ended_at": r3(ended_at - self.t0),
        }


def _distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    def fmt(v: float | None) -> float | None:
        return None if v is None else r3(v)

    return {
        "count": len(values),
        "mean": fmt(sum(values) / len(values)) if values else None,
        "p50": fmt(percentile(values, 50)),
        "p95": fmt(percentile(values, 95)),
        "max": fmt(values[-1]) if values else None,
    }


def _histogram(values: Sequence[float]) -> list[int]:
    counts = [0] * (len(TTD_EDGES) + 1)
    for v in values:
        i = 0
        while i < len(TTD_EDGES) and v >= TTD_EDGES[i]:
            i += 1
        counts[i] += 1
    return counts
