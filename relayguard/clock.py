"""The only place that reads time.

The live server uses `SystemClock`; tests and the replay use `VirtualClock`,
whose `sleep_until` jumps time forward instead of waiting, so a day of retries
runs in milliseconds while the same scheduling code runs.

Queue ids are made here too, because the live ones are read off the clock:
`new_queue_id` for the server (front end and spools), `seeded_queue_ids` for the
replay, whose ids must not depend on when it runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Protocol

QueueIdFactory = Callable[[], str]


class Clock(Protocol):
    def now(self) -> float:
        """POSIX seconds."""
        ...

    async def sleep_until(self, when: float, wake: asyncio.Event | None = None) -> None:
        """Return at `when`, or earlier if `wake` is set."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float, wake: asyncio.Event | None = None) -> None:
        delay = max(0.0, when - time.time())
        if wake is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            return


async def _wait_event(event: asyncio.Event) -> None:
    await event.wait()


class VirtualClock:
    """Time that moves only when every sleeper is waiting on it.

    A sleeper registers its wake-up time; `advance_when_idle` (run as a task)
    jumps to the earliest registered time once the event loop has nothing else
    ready to run, which is how real I/O (sockets on 127.0.0.1) and virtual
    time coexist in the integration tests.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        """Move time forward (never back) and wake whoever is due."""
        self._now = max(self._now, when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def next_wakeup(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def sleep_until(self, when: float, wake: asyncio.Event | None = None) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), fut))
        if wake is None:
            await fut
            return
        waiter: asyncio.Future[None] = asyncio.ensure_future(_wait_event(wake))
        try:
            await asyncio.wait([fut, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not fut.done():
                fut.cancel()

    async def run_to(
        self, when: float, settle: float = 0.02, busy: Callable[[], bool] | None = None
    ) -> None:
        """Advance virtual time to `when`, stopping at each wake-up and letting the
        woken work (including real socket I/O) finish before jumping again.

        `settle` is real seconds of quiet the loop gets between jumps, enough
        for loopback SMTP exchanges to complete on an idle machine; `busy` says
        when work is still under way (deliveries in flight), and time waits for
        it: on a loaded machine an exchange can outlast any fixed settle, and
        a jump past its retry would skip what the test means to see.
        """
        while True:
            await asyncio.sleep(settle)
            while busy is not None and busy():  # noqa: ASYNC110 - a predicate, not an event
                await asyncio.sleep(settle)
            nxt = self.next_wakeup()
            if nxt is None or nxt > when:
                self.set(when)
                await asyncio.sleep(settle)
                return
            self.set(nxt)


# -- queue ids --------------------------------------------------------------------------


class _SystemQueueIds:
    """Postfix-like ids: sortable by arrival, unique across processes and nodes
    (microseconds, a random per-process part, a counter)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._nonce = secrets.token_hex(2).upper()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{time.time_ns() // 1000:013X}{self._nonce}{next(self._counter) & 0xFFF:03X}"


_system_queue_ids = _SystemQueueIds()
# A forked child would otherwise share the parent's per-process part and counter, and
# the two could make the same id in the same microsecond. (Front-end workers are
# started with fork+exec today, so this is only a guard.)
os.register_at_fork(after_in_child=_system_queue_ids.reseed)


def new_queue_id() -> str:
    """A queue id for a message arriving now (front end, spools, live server)."""
    return _system_queue_ids()


def seeded_queue_ids(seed: int) -> QueueIdFactory:
    """Postfix-like ids that depend only on the seed and the order of creation (the
    replay: the same ids, and so the same retry jitter, on every run)."""
    rng = random.Random(f"queue-ids/{seed}")
    counter = 0

    def make() -> str:
        nonlocal counter
        counter += 1
        return f"{counter:09X}{rng.getrandbits(24):06X}"

    return make
