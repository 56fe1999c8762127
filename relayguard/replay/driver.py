"""The replay driver: the relay's own delivery round on a virtual clock, against a
scripted upstream, driven from a plain heap of events.

Only time and the upstream are simulated. The messages go into a spool (the
in-memory backend); each becomes due exactly as in `relayguard serve`, and its
delivery round (queue/round.py: route choice, policy, reroutes, second opinions,
holds, expiry) is the one the live queue manager runs. The route table is shared
by all rounds as in the server. Where the live shell awaits a socket, the driver
asks the simulated upstream for the outcome and its latency and files the
outcome on the heap at the moment it arrives; nothing here uses an event loop.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from relayguard.clock import VirtualClock
from relayguard.config import Settings
from relayguard.dns.providers import ProviderTable, provider_key
from relayguard.model import Attempt, MessageState, QueuedMessage, Recipient
from relayguard.ndr.reports import make_report_builder
from relayguard.policy import Policy
from relayguard.queue.manager import emit, max_in_flight_for, reports_for, route_table, routes_of
from relayguard.queue.round import Blocked, DeliveryRound, Done, Send
from relayguard.queue.scheduler import DueQueue
from relayguard.queue.spool import Keep, NewMessage
from relayguard.queue.spool.memory import MemorySpool, seeded_queue_ids
from relayguard.replay.inputs import InputMessage
from relayguard.replay.scenario import DEFAULT_START, Scenario
from relayguard.replay.stats import SAMPLES, Stats
from relayguard.replay.upstream import SimulatedUpstream

T = TypeVar("T")
Progress = Callable[[float, Stats], None]
# A round waiting for a connection its route's throttle withholds asks again this often,
# as the live queue manager does.
_RECHECK = 1.0


class ReplayError(RuntimeError):
    """The simulation cannot go on (a spool call that would need real I/O)."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (the in-memory spool's) to its end, without an
    event loop: one `send`, which must finish it."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise ReplayError("a spool call waited on I/O, which the replay does not do")


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # POSIX time on the virtual clock
    message: NewMessage
    index: int  # position in the input


def plan_arrivals(
    messages: Sequence[InputMessage], scenario: Scenario, seed: int
) -> tuple[float, list[Arrival], int]:
    """(t0, arrivals in time order, how many messages had no time of their own)."""
    times = [m.arrival for m in messages]
    untimed = sum(1 for t in times if t is None)
    known = [t for t in times if t is not None]
    mode = scenario.arrivals.mode
    t0 = scenario.start
    if t0 is None:
        t0 = min(known) if (mode == "input" and known) else DEFAULT_START
    n = len(messages)
    if mode == "input":
        first = min(known) if known else t0
        offsets, last = [], 0.0
        for t in times:
            last = t - first if t is not None else last  # untimed: with the one before
            offsets.append(max(0.0, last))
    elif mode == "spread":
        offsets = [scenario.arrivals.over * i / n for i in range(n)] if n else []
    elif mode == "random":
        rng = random.Random(f"arrivals/{seed}")
        offsets = sorted(rng.uniform(0, scenario.arrivals.over) for _ in range(n))
    else:  # burst
        offsets = [scenario.arrivals.at] * n
    order = sorted(range(n), key=lambda i: offsets[i])  # stable: input order at equal times
    arrivals = [
        Arrival(
            t0 + offsets[i],
            NewMessage(
                envelope=messages[i].envelope,
                body=messages[i].body,
                arrival_at=t0 + offsets[i],
                message_id=messages[i].message_id,
            ),
            i,
        )
        for i in order
    ]
    return t0, arrivals, untimed


class _RecordingSpool(MemorySpool):
    """The in-memory spool, telling the statistics about every finished round."""

    def __init__(self, seed: int, stats: Stats, clock: VirtualClock) -> None:
        super().__init__(seeded_queue_ids(seed))
        self.stats = stats
        self.clock = clock

    async def finish_with_reports(
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
        keep: Keep | None = None,
    ) -> list[QueuedMessage]:
        queued = await super().finish_with_reports(message, new_attempts, reports, keep)
        self.stats.round_finished(message, new_attempts, queued, self.clock.now())
        return queued


def replay_settings(settings: Settings) -> Settings:
    """The settings as the replay uses them: nothing written outside the replay."""
    return replace(settings, ndr=replace(settings.ndr, record_file=None))


@dataclass(slots=True)
class _Active:
    round: DeliveryRound
    body: bytes
    finished: bool = False


@dataclass(order=True, slots=True)
class _Arrival:
    """An outcome on the heap: when it comes back, and for which send."""

    at: float
    order: int
    seq: int = field(compare=False)
    send: Send = field(compare=False)
    started: float = field(compare=False)
    outcome: object = field(compare=False)


class _Replay:
    """One run: the rounds, their spool and upstream, and the heap that moves time."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        scenario: Scenario,
        messages: Sequence[InputMessage],
        seed: int,
    ) -> None:
        self.settings = replay_settings(settings)
        self.policy = policy
        self.t0, self.arrivals, self.untimed = plan_arrivals(messages, scenario, seed)
        self.clock = VirtualClock(self.t0)
        self.end = self.t0 + scenario.duration
        self.stats = Stats(self.t0, scenario.duration)
        self.spool = _RecordingSpool(seed, self.stats, self.clock)
        self.upstream = SimulatedUpstream(
            scenario, self.settings.routes, self.clock, random.Random(f"upstream/{seed}"), self.t0
        )
        self._builder = make_report_builder(self.settings)
        self.due = DueQueue()
        self.table = route_table(self.settings)
        self.routes = routes_of(self.settings)
        self.max_in_flight = max_in_flight_for(self.settings)
        self.scenario = scenario
        self.provider_table = ProviderTable.build(dict(self.settings.dns.providers))
        self.provider_keys: dict[str, str | None] = {}
        self.active: dict[int, _Active] = {}
        self.waiting: set[int] = set()  # rounds waiting for a connection
        self.heap: list[_Arrival] = []
        self._order = itertools.count()
        self.fed = 0
        self.arrived_by_end = sum(1 for a in self.arrivals if a.at <= self.end)

    def _build_reports(
        self,
        message: QueuedMessage,
        body: bytes,
        rcpts: Sequence[Recipient],
        kind: str,
        now: float,
    ) -> list[NewMessage]:
        out = self._builder(message, body, rcpts, kind, now)  # the server's report builder
        self.stats.report_built(kind, len(out))
        return out

    def _feed(self) -> None:
        """Every message that arrives before the end goes into the spool, each due first
        at its arrival time, as the front end queues it."""
        batch = self.arrivals[: self.arrived_by_end]
        self.fed = len(batch)
        queued = run_sync(self.spool.accept_many([a.message for a in batch]))
        self.stats.queued(queued, [a.index for a in batch])
        for q in queued:
            self.due.schedule(q.seq, q.next_attempt_at)

    # -- rounds ------------------------------------------------------------------------

    def _start_due(self, now: float) -> None:
        room = self.max_in_flight - len(self.active)
        if room <= 0:
            return
        for seq in self.due.pop_due(now, room):
            loaded = run_sync(self.spool.load(seq))
            if loaded is None or loaded[0].state is not MessageState.ACTIVE:
                continue
            message, body = loaded
            q = self.settings.queue
            rnd = DeliveryRound(
                message,
                body,
                self.policy,
                self.routes,
                self.table,
                delay_warning=q.delay_warning,
                backoff_start=q.backoff_start,
                providers=self._providers(message),
            )
            self.active[seq] = _Active(rnd, body)
            self._advance(seq, now)

    def _providers(self, message: QueuedMessage) -> dict[str, str]:
        """Provider keys as the live relay has them from DNS, from the scenario's [mx]."""
        out: dict[str, str] = {}
        for r in message.pending:
            domain = r.domain.lower()
            if domain not in self.provider_keys:
                hosts = self.scenario.mx_of(domain)
                provider = self.provider_table.provider_of(enumerate(hosts))
                self.provider_keys[domain] = provider_key(provider) if provider else None
            key = self.provider_keys[domain]
            if key is not None:
                out[domain] = key
        return out

    def _advance(self, seq: int, now: float) -> None:
        """Let a round start what it can; file its sends' outcomes on the heap."""
        active = self.active[seq]
        rnd = active.round
        while True:
            step = rnd.next_step(now)
            if isinstance(step, Send):
                outcome, latency = self.upstream.answer(step.route, step.transaction, now)
                heapq.heappush(
                    self.heap, _Arrival(now + latency, next(self._order), seq, step, now, outcome)
                )
                continue
            emit(rnd.drain_events())
            if isinstance(step, Blocked):
                if step.for_connection:
                    self.waiting.add(seq)
                return
            assert isinstance(step, Done)
            self._finish(seq, step, now)
            return

    def _finish(self, seq: int, done: Done, now: float) -> None:
        active = self.active.pop(seq)
        self.waiting.discard(seq)
        reports = reports_for(done, active.body, self._build_reports, now)
        for report in run_sync(
            self.spool.finish_with_reports(done.message, done.attempts, reports)
        ):
            self.due.schedule(report.seq, report.next_attempt_at)
        if done.message.state is MessageState.ACTIVE:
            self.due.schedule(done.message.seq, done.message.next_attempt_at)

    def _arrive(self, arrival: _Arrival) -> None:
        """An outcome comes back: the round records it, and every round that waited for
        a connection asks again."""
        active = self.active.get(arrival.seq)
        if active is None:
            return
        active.round.record(arrival.send, arrival.outcome, arrival.started, arrival.at)  # type: ignore[arg-type]
        self._advance(arrival.seq, arrival.at)
        self._retry_waiting(arrival.at)

    def _retry_waiting(self, now: float) -> None:
        waiting, self.waiting = sorted(self.waiting), set()
        for seq in waiting:
            if seq in self.active:
                self._advance(seq, now)

    def _next_time(self, now: float) -> float | None:
        """When something happens next; None when the replay is over."""
        candidates = [self.heap[0].at] if self.heap else []
        nxt = self.due.next_due()
        if nxt is not None:
            candidates.append(max(nxt, now))
        if self.waiting:
            candidates.append(now + _RECHECK)
        if not candidates or now >= self.end:
            return None
        return min(*candidates, self.end)

    def run(self, progress: Progress | None) -> dict[str, object]:
        stats, every = self.stats, max(1, SAMPLES // 100)
        self._feed()
        now = self.t0
        while True:
            self._start_due(now)
            nxt = self._next_time(now)
            if nxt is None:
                break
            before = len(stats.samples)
            stats.sample_until(nxt, len(self.active))
            if progress is not None and len(stats.samples) // every != before // every:
                progress((nxt - self.t0) / stats.duration, stats)
            if nxt >= self.end and (not self.heap or self.heap[0].at > self.end):
                now = self.end
                self.clock.set(now)
                break
            now = nxt
            self.clock.set(now)
            if self.waiting and (not self.heap or self.heap[0].at > now):
                self._retry_waiting(now)
            while self.heap and self.heap[0].at <= now:
                self._arrive(heapq.heappop(self.heap))
        # Whatever is in flight at the end stays queued, as after a stop.
        stats.sample_until(self.end, 0)
        for message in run_sync(self.spool.messages()):
            stats.still_queued(message)
        run_sync(self.spool.close())
        if progress is not None:
            progress((now - self.t0) / stats.duration, stats)
        result = stats.result(not_arrived=len(self.arrivals) - self.fed, ended_at=now)
        result["input_without_time"] = self.untimed
        result["transactions"] = self.upstream.sends
        return result


def replay(
    settings: Settings,
    policy: Policy,
    scenario: Scenario,
    messages: Sequence[InputMessage],
    *,
    seed: int = 1,
    progress: Progress | None = None,
    on_clock: Callable[[VirtualClock], None] | None = None,
    on_stats: Callable[[Stats], None] | None = None,
) -> dict[str, object]:
    """Replay the messages through the scenario; the result as a JSON-ready dict.

    `on_clock` gets the virtual clock before anything runs (to stamp log lines),
    `on_stats` the statistics at the end (per-message outcomes are there)."""
    run = _Replay(settings, policy, scenario, messages, seed)
    if on_clock is not None:
        on_clock(run.clock)
    result = run.run(progress)
    if on_stats is not None:
        on_stats(run.stats)
    return result
