"""The replay driver: the server's queue manager on a virtual clock, against a scripted upstream.

Only the clock and the upstream are simulated. The messages go into a spool
(the in-memory backend), the `QueueManager` takes them when due exactly as in
`relayguard serve`, asks the policy engine about every reply, suspends and
throttles routes in the scheduler's route table, and queues NDRs built by the
same report builder. The driver only moves time: when nothing is runnable it
jumps the clock to the earliest of the next registered sleeper (the manager's
run loop waits for the next due message that way, a transaction for its
latency), the next due message, and the next arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from relayguard.clock import VirtualClock
from relayguard.config import Settings
from relayguard.model import Attempt, QueuedMessage, Recipient
from relayguard.policy import Policy
from relayguard.queue_manager import QueueManager
from relayguard.replay.inputs import InputMessage
from relayguard.replay.scenario import DEFAULT_START, Scenario
from relayguard.replay.stats import SAMPLES, Stats
from relayguard.replay.upstream import SimulatedUpstream
from relayguard.reports import make_report_builder
from relayguard.spool import NewMessage
from relayguard.spool.memory import MemorySpool, seeded_queue_ids

Progress = Callable[[float, Stats], None]


class ReplayError(RuntimeError):
    """The simulation cannot go on (a task waits on something that is not the clock)."""


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # POSIX time on the virtual clock
    message: NewMessage


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
    arrivals = [
        Arrival(t0 + off, NewMessage(envelope=m.envelope, body=m.body, arrival_at=t0 + off,
                                     message_id=m.message_id))
        for off, m in sorted(zip(offsets, messages, strict=True), key=lambda x: x[0])
    ]
    return t0, arrivals, untimed


class _RecordingSpool(MemorySpool):
    """The in-memory spool, telling the statistics about every finished round."""

    def __init__(self, seed: int, stats: Stats, clock: VirtualClock) -> None:
        super().__init__(seeded_queue_ids(seed))
        self.stats = stats
        self.clock = clock

    async def finish_with_reports(
        self, message: QueuedMessage, new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
    ) -> list[QueuedMessage]:
        queued = await super().finish_with_reports(message, new_attempts, reports)
        self.stats.round_finished(message, new_attempts, queued, self.clock.now())
        return queued


def replay_settings(settings: Settings) -> Settings:
    """The settings as the replay uses them: nothing written outside the replay."""
    return replace(settings, ndr=replace(settings.ndr, record_file=None))


async def run_replay(
    settings: Settings, policy: Policy, scenario: Scenario, messages: Sequence[InputMessage],
    *, seed: int = 1, progress: Progress | None = None,
) -> dict[str, object]:
    """Replay the messages through the scenario; the result as a JSON-ready dict."""
    settings = replay_settings(settings)
    t0, arrivals, untimed = plan_arrivals(messages, scenario, seed)
    clock = VirtualClock(t0)
    end = t0 + scenario.duration
    stats = Stats(t0, scenario.duration)
    spool = _RecordingSpool(seed, stats, clock)
    upstream = SimulatedUpstream(scenario, settings.routes, clock,
                                 random.Random(f"upstream/{seed}"), t0)
    base_builder = make_report_builder(settings)

    def build_reports(
        message: QueuedMessage, body: bytes, rcpts: Sequence[Recipient], kind: str, now: float,
    ) -> list[NewMessage]:
        out = base_builder(message, body, rcpts, kind, now)
        stats.report_built(kind, len(out))
        return out

    manager = QueueManager(settings, spool, upstream, clock, policy, build_reports=build_reports)
    runner = asyncio.create_task(manager.run())
    fed = 0
    every = max(1, SAMPLES // 100)
    try:
        while True:
            now = clock.now()
            if fed < len(arrivals) and arrivals[fed].at <= now:
                batch = []
                while fed < len(arrivals) and arrivals[fed].at <= now:
                    batch.append(arrivals[fed].message)
                    fed += 1
                queued = await spool.accept_many(batch)
                stats.arrived(queued, fed - len(batch))
                for q in queued:
                    manager.enqueue(q)
            await clock.settle()
            next_arrival = arrivals[fed].at if fed < len(arrivals) else None
            if next_arrival is None and manager.in_flight == 0 and manager.due.next_due() is None:
                break  # everything delivered or bounced, nothing more to come
            if now >= end:
                break
            nxt = clock.next_event(next_arrival, manager.due.next_due())
            if nxt is None:
                raise ReplayError(f"stuck at t={now - t0:.3f}s: {manager.in_flight} deliveries "
                                  "wait on something other than the clock")
            nxt = min(nxt, end)
            before = len(stats.samples)
            stats.sample_until(nxt, manager.in_flight)
            if progress is not None and len(stats.samples) // every != before // every:
                progress((nxt - t0) / scenario.duration, stats)
            clock.set(nxt)
    finally:
        ended_at = clock.now()
        await manager.stop(0)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    stats.sample_until(end, 0)
    for message in await spool.messages():
        stats.still_queued(message)
    await spool.close()
    result = stats.result(not_arrived=len(arrivals) - fed, ended_at=ended_at)
    result["input_without_time"] = untimed
    result["transactions"] = upstream.sends
    return result
