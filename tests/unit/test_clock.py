"""VirtualClock: sleepers wake in time order, at their time, or early when woken."""

from __future__ import annotations

import asyncio
import time

from relayguard.clock import SystemClock, VirtualClock

START = 1_700_000_000.0
SETTLE = 0.001


def test_now_set_and_advance_never_go_back():
    c = VirtualClock()
    assert c.now() == START
    c.advance(10)
    assert c.now() == START + 10
    c.set(START)  # backwards: ignored
    assert c.now() == START + 10
    c.set(START + 100)
    assert c.now() == START + 100
    assert VirtualClock(5.0).now() == 5.0
    assert c.next_wakeup() is None


async def test_sleep_until_the_past_returns_at_once():
    c = VirtualClock(100.0)
    await asyncio.wait_for(c.sleep_until(50.0), 1)
    await asyncio.wait_for(c.sleep_until(100.0), 1)
    assert c.now() == 100.0
    assert c.next_wakeup() is None


async def test_run_to_wakes_sleepers_in_order_at_their_time():
    c = VirtualClock(0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, when: float) -> None:
        await c.sleep_until(when)
        woke.append((name, c.now()))

    tasks = [
        asyncio.create_task(sleeper(n, w))
        for n, w in [("c", 30.0), ("a", 10.0), ("b", 20.0), ("a2", 10.0), ("d", 50.0)]
    ]
    await asyncio.sleep(0)
    assert c.next_wakeup() == 10.0
    await c.run_to(25.0, settle=SETTLE)
    assert woke == [("a", 10.0), ("a2", 10.0), ("b", 20.0)]
    assert c.now() == 25.0
    assert c.next_wakeup() == 30.0
    await c.run_to(100.0, settle=SETTLE)
    assert woke[3:] == [("c", 30.0), ("d", 50.0)]
    assert c.now() == 100.0
    assert c.next_wakeup() is None
    await asyncio.gather(*tasks)


async def test_run_to_stops_at_each_wakeup_for_periodic_work():
    c = VirtualClock(0.0)
    ticks: list[float] = []

    async def periodic() -> None:
        while True:
            await c.sleep_until(c.now() + 10.0)
            ticks.append(c.now())

    task = asyncio.create_task(periodic())
    await asyncio.sleep(0)
    await c.run_to(45.0, settle=SETTLE)
    assert ticks == [10.0, 20.0, 30.0, 40.0]
    assert c.now() == 45.0
    assert c.next_wakeup() == 50.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_set_wakes_only_the_due():
    c = VirtualClock(0.0)
    early = asyncio.create_task(c.sleep_until(5.0))
    late = asyncio.create_task(c.sleep_until(15.0))
    await asyncio.sleep(0)
    c.set(10.0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert early.done()
    assert not late.done()
    c.advance(5.0)
    await asyncio.wait_for(late, 1)
    assert c.now() == 15.0


async def test_wake_event_ends_sleep_early_without_moving_time():
    c = VirtualClock(0.0)
    wake = asyncio.Event()
    task = asyncio.create_task(c.sleep_until(1000.0, wake))
    await asyncio.sleep(0)
    assert c.next_wakeup() == 1000.0
    assert not task.done()
    wake.set()
    await asyncio.wait_for(task, 1)
    assert c.now() == 0.0
    assert c.next_wakeup() is None  # the abandoned wake-up is not kept


async def test_wake_event_already_set_returns_at_once():
    c = VirtualClock(0.0)
    wake = asyncio.Event()
    wake.set()
    await asyncio.wait_for(c.sleep_until(1000.0, wake), 1)
    assert c.now() == 0.0
    assert c.next_wakeup() is None


async def test_sleep_with_wake_event_still_ends_at_its_time():
    c = VirtualClock(0.0)
    wake = asyncio.Event()
    task = asyncio.create_task(c.sleep_until(30.0, wake))
    await c.run_to(40.0, settle=SETTLE)
    assert task.done()
    await task
    assert not wake.is_set()
    assert c.now() == 40.0


async def test_cancelled_sleeper_is_forgotten():
    c = VirtualClock(0.0)
    task = asyncio.create_task(c.sleep_until(10.0))
    other = asyncio.create_task(c.sleep_until(20.0, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()
    other.cancel()
    await asyncio.gather(task, other, return_exceptions=True)
    assert c.next_wakeup() is None
    c.set(30.0)  # nothing to wake, no error


async def test_system_clock():
    c = SystemClock()
    assert abs(c.now() - time.time()) < 1.0
    t0 = time.monotonic()
    await c.sleep_until(c.now() - 10)
    await c.sleep_until(c.now() + 0.02)
    wake = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, wake.set)
    await c.sleep_until(c.now() + 30, wake)
    assert time.monotonic() - t0 < 5.0
