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
import selectors
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from relayguard.clock import SimulationClock, VirtualClock
from relayguard.config import Settings
from relayguard.model import Attempt, QueuedMessage, Recipient
from relayguard.ndr.reports import make_report_builder
from relayguard.policy import Policy
from relayguard.queue.manager import QueueManager
from relayguard.queue.spool import NewMessage
from relayguard.queue.spool.memory import MemorySpool, seeded_queue_ids
from relayguard.replay.inputs import InputMessage
from relayguard.replay.scenario import DEFAULT_START, Scenario
from relayguard.replay.stats import SAMPLES, Stats
from relayguard.replay.upstream import SimulatedUpstream

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

Progress = Callable[[float, Stats], None]
_NAP = 0.001


class ReplayError(RuntimeError):
    """The simulation cannot go on (a task waits on something that is not the clock)."""


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
    ) -> list[QueuedMessage]:
        queued = await super().finish_with_reports(message, new_attempts, reports)
        self.stats.round_finished(message, new_attempts, queued, self.clock.now())
        return queued


def replay_settings(settings: Settings) -> Settings:
    """The settings as the replay uses them: nothing written outside the replay."""
    return replace(settings, ndr=replace(settings.ndr, record_file=None))


class _Replay:
    """One run: the manager, its spool and upstream, and the loop that moves time."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        scenario: Scenario,
        messages: Sequence[InputMessage],
        seed: int,
    ) -> None:
        self.settings = replay_settings(settings)
        self.t0, self.arrivals, self.untimed = plan_arrivals(messages, scenario, seed)
        self.clock = SimulationClock(self.t0)
        self.end = self.t0 + scenario.duration
        self.stats = Stats(self.t0, scenario.duration)
        self.spool = _RecordingSpool(seed, self.stats, self.clock)
        self.upstream = SimulatedUpstream(
            scenario, self.settings.routes, self.clock, random.Random(f"upstream/{seed}"), self.t0
        )
        self._builder = make_report_builder(self.settings)
        self.manager = QueueManager(
            self.settings,
            self.spool,
            self.upstream,
            self.clock,
            policy,
            build_reports=self._build_reports,
        )
        self.fed = 0  # arrivals in the spool
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

    async def _feed(self) -> None:
        """Put every message that arrives before the end into the spool and the scheduler,
        as the front end does, each due first at its arrival time.

        Queued ahead of time rather than one by one as the clock passes their arrival:
        the queue manager takes none of them before it is due, and waking its run loop
        by the clock is cheaper than through its wake-up event, once per message."""
        batch = self.arrivals[: self.arrived_by_end]
        self.fed = len(batch)
        queued = await self.spool.accept_many([a.message for a in batch])
        self.stats.queued(queued, [a.index for a in batch])
        for q in queued:
            self.manager.enqueue(q)

    def _next_time(self) -> float | None:
        """Where to jump once nothing is runnable; None when the replay is over."""
        now, manager = self.clock.now(), self.manager
        next_due = manager.due.next_due()
        if now >= self.end or (manager.in_flight == 0 and next_due is None):
            return None
        nxt = self.clock.next_event(next_due)
        if nxt is None:
            raise ReplayError(
                f"stuck at t={now - self.t0:.3f}s: {manager.in_flight} deliveries "
                "wait on something other than the clock"
            )
        return min(nxt, self.end)

    async def run(self, progress: Progress | None) -> dict[str, object]:
        stats, every = self.stats, max(1, SAMPLES // 100)
        await self._feed()
        runner = asyncio.create_task(self.manager.run())
        try:
            while True:
                await self.clock.settle()
                nxt = self._next_time()
                if nxt is None:
                    break
                before = len(stats.samples)
                stats.sample_until(nxt, self.manager.in_flight)
                if progress is not None and len(stats.samples) // every != before // every:
                    progress((nxt - self.t0) / stats.duration, stats)
                self.clock.set(nxt)
        finally:
            ended_at = self.clock.now()
            await self.manager.stop(0)  # whatever is in flight stays queued
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        stats.sample_until(self.end, 0)
        for message in await self.spool.messages():
            stats.still_queued(message)
        await self.spool.close()
        if progress is not None:
            progress((ended_at - self.t0) / stats.duration, stats)
        result = stats.result(not_arrived=len(self.arrivals) - self.fed, ended_at=ended_at)
        result["input_without_time"] = self.untimed
        result["transactions"] = self.upstream.sends
        return result


async def run_replay(
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
    result = await run.run(progress)
    if on_stats is not None:
        on_stats(run.stats)
    return result


class _NoIOSelector(selectors.BaseSelector):
    """The replay does no I/O: nothing to poll between two steps of the simulation.

    Saves the epoll call the event loop makes on every iteration (hundreds of
    thousands in a large replay). Should the loop ever wait (it does not while
    the simulation runs), it naps briefly instead of polling."""

    def __init__(self) -> None:
        self._keys: dict[FileDescriptorLike, selectors.SelectorKey] = {}

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: object = None
    ) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            time.sleep(min(timeout or _NAP, _NAP))
        return []

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


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
    """`run_replay` on an event loop of its own, one that does not poll for I/O."""
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(_NoIOSelector())) as r:
        return r.run(
            run_replay(
                settings,
                policy,
                scenario,
                messages,
                seed=seed,
                progress=progress,
                on_clock=on_clock,
                on_stats=on_stats,
            )
        )
