"""Scale figures for relayguard alone, from its own modules.

- the scheduler (`relayguard.queue.scheduler.DueQueue`): enqueue and dequeue rates
  with N deferred messages, and its memory per entry;
- restart with N messages in the spool: a spool built with direct
  `executemany` into relayguard's own SCHEMA (envelopes and attempts as the
  real code writes them), then, in a fresh process, what `QueueManager.load()`
  does: `SqliteSpool(dir)`, `await spool.index()`, `DueQueue.schedule` for
  each ACTIVE entry. Timed in one process, traced (tracemalloc) in another,
  so that tracing does not slow the timing.

    python bench/scale_figures.py restart DIR [--trace]   # used by run.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from harness import BenchError, rss_kb, vm_hwm_kb


def _reset_hwm() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# -- the scheduler ----------------------------------------------------------------


def scheduler_figures(n: int, *, seed: int = 1) -> dict[str, object]:
    from relayguard.queue.scheduler import DueQueue  # noqa: PLC0415

    rng = random.Random(seed)
    now = 1_700_000_000.0
    # Deferred: due between 5 minutes and ~an hour from now, like backoff would spread them.
    times = [now + rng.uniform(300.0, 4000.0) for _ in range(n)]

    gc.collect()
    q = DueQueue()
    t0 = time.perf_counter()
    for seq, at in enumerate(times, 1):
        q.schedule(seq, at)
    fill = time.perf_counter() - t0

    # At depth n: new arrivals due now, taken by the queue manager in batches of 40
    # (its max_in_flight with one 20-connection route).
    k = max(1000, n // 10)
    t0 = time.perf_counter()
    for i in range(k):
        q.schedule(n + 1 + i, now)
    enq_deep = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = 0
    while True:
        batch = q.pop_due(now, 40)
        if not batch:
            break
        got += len(batch)
        q.next_due()
    deq_deep = time.perf_counter() - t0
    if got != k:
        raise BenchError(f"DueQueue.pop_due returned {got} of {k} due messages")

    # Rescheduling (a deferral) leaves a stale heap entry behind: lazy invalidation.
    r = max(1000, n // 10)
    t0 = time.perf_counter()
    for seq in range(1, r + 1):
        q.schedule(seq, times[seq - 1] + 600.0)
    resched = time.perf_counter() - t0

    # Drain everything (as if all became due): dequeue rate over the whole depth.
    t0 = time.perf_counter()
    drained = 0
    while True:
        batch = q.pop_due(float("inf"), 1000)
        if not batch:
            break
        drained += len(batch)
    drain = time.perf_counter() - t0
    if drained != n or len(q):
        raise BenchError(f"DueQueue drained {drained} of {n}, {len(q)} left")

    # Memory per entry (traced separately so tracing does not slow the timings).
    del q
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    q = DueQueue()
    for seq, at in enumerate(times, 1):
        q.schedule(seq, at)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # The float objects were made before tracing began (they are the caller's), but the
    # queue keeps them alive: count them as the queue's (24 bytes each).
    per_entry = (used + 24 * n) / n
    del q
    return {
        "n": n,
        "enqueue_per_s": round(n / fill),
        "enqueue_at_depth_per_s": round(k / enq_deep),
        "dequeue_at_depth_per_s": round(k / deq_deep),
        "reschedule_per_s": round(r / resched),
        "dequeue_drain_per_s": round(n / drain),
        "fill_seconds": round(fill, 3),
        "drain_seconds": round(drain, 3),
        "bytes_per_entry": round(per_entry, 1),
    }


# -- the spool ----------------------------------------------------------------------


def build_spool(
    directory: Path, n: int, *, body_bytes: int = 256, seed: int = 2
) -> dict[str, float]:
    """N deferred messages, one failed attempt each, in relayguard's schema, fast."""
    from relayguard.model import (  # noqa: PLC0415
        Attempt,
        Envelope,
        MessageState,
        Phase,
        Recipient,
        Reply,
    )
    from relayguard.queue.spool.sqlite import DB_NAME, SCHEMA  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DB_NAME
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    # Built without a journal (it is a fixture), then switched to WAL as relayguard runs it.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    rng = random.Random(seed)
    now = time.time()
    reply = Reply(451, "4.7.1", "Try again later", Phase.RCPT, "127.0.0.1")
    attempt_json = json.dumps(
        Attempt(
            now - 60, "primary", ("rcpt@example.com",), reply, "defer", "transient-default", 0.012
        ).to_dict(),
        separators=(",", ":"),
    )
    # The envelope as the real code serialises it, made once; rows differ in the
    # recipient's and sender's numbers only.
    env_template = json.dumps(
        Envelope(
            sender="sender@@S@@@example.org",
            recipients=(Recipient("user@@R@@@example.com", last_reply=reply),),
            client_address="127.0.0.1",
            client_helo="client.example.org",
        ).to_dict(),
        separators=(",", ":"),
    )
    body = (
        b"Received: from client.example.org ([127.0.0.1])\r\n"
        b"Subject: scale\r\n\r\n" + b"x" * body_bytes
    )[: max(body_bytes, 64)]
    size = len(body)
    active = MessageState.ACTIVE.value
    uniform = rng.uniform
    chunk = 100_000
    conn.execute("PRAGMA cache_size=-262144")  # 256 MB while building
    conn.execute("BEGIN")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = []
        for i in range(start, stop):
            s_i = str(i % 997)
            arrival = now - uniform(60.0, 3600.0)
            rows.append(
                (
                    f"{int(arrival * 1e6):013X}{i:06X}",
                    active,
                    arrival,
                    now + uniform(300.0, 4000.0),
                    f"sender{s_i}@example.org",
                    f"<{i}@example.org>",
                    size,
                    env_template.replace("@@S@@", s_i).replace("@@R@@", str(i)),
                    body,
                )
            )
        conn.executemany(
            "INSERT INTO messages (queue_id, state, arrival_at, next_attempt_at, sender,"
            " message_id, size, envelope, body) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO attempts (seq, at, data) VALUES (?,?,?)",
            [(i + 1, now - 60, attempt_json) for i in range(start, stop)],
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    if count != n:
        raise BenchError(f"built a spool with {count} rows, wanted {n}")
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    return {
        "build_seconds": round(time.perf_counter() - t0, 2),
        "spool_bytes": size,
        "body_bytes": len(body),
    }


def index_query_plan(directory: Path) -> str:
    from relayguard.queue.spool.sqlite import DB_NAME  # noqa: PLC0415

    conn = sqlite3.connect(directory / DB_NAME)
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq, next_attempt_at, state FROM messages"
            " WHERE seq > ? AND state != ?",
            (0, "done"),
        ).fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[-1]) for r in rows)


async def _restart(directory: Path) -> tuple[dict[str, float], object]:
    from relayguard.model import MessageState  # noqa: PLC0415
    from relayguard.queue.scheduler import DueQueue  # noqa: PLC0415
    from relayguard.queue.spool.sqlite import SqliteSpool  # noqa: PLC0415

    t0 = time.perf_counter()
    spool = SqliteSpool(directory)
    t1 = time.perf_counter()
    entries = await spool.index()
    t2 = time.perf_counter()
    due = DueQueue()
    count = 0
    for entry in entries:  # as QueueManager.load()
        if entry.state is MessageState.ACTIVE:
            due.schedule(entry.seq, entry.next_attempt_at)
            count += 1
    t3 = time.perf_counter()
    del entries
    await spool.close()
    return {
        "messages": count,
        "open_seconds": t1 - t0,
        "index_seconds": t2 - t1,
        "schedule_seconds": t3 - t2,
        "total_seconds": t3 - t0,
    }, due


def restart_main(directory: Path, *, trace: bool) -> dict[str, object]:
    """In a fresh process: time (or trace) one restart; memory after it."""
    import relayguard.relay  # noqa: F401, PLC0415 - a real restart has everything imported

    gc.collect()
    if trace:
        tracemalloc.start()
    base_rss = rss_kb_self()
    _reset_hwm()
    timings, due = asyncio.run(_restart(directory))  # `due` stays alive while we measure
    out: dict[str, object] = {k: round(v, 3) for k, v in timings.items()}
    gc.collect()
    n = int(out["messages"]) or 1  # type: ignore[call-overload]
    out["rss_delta_bytes_per_message"] = round((rss_kb_self() - base_rss) * 1024 / n, 1)
    out["peak_rss_delta_bytes_per_message"] = round((vm_hwm_kb_self() - base_rss) * 1024 / n, 1)
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["traced_bytes_per_message"] = round(current / n, 1)
        out["traced_peak_bytes_per_message"] = round(peak / n, 1)
    out["queued"] = len(due)  # type: ignore[arg-type]
    return out


def rss_kb_self() -> int:
    import os  # noqa: PLC0415

    return rss_kb(os.getpid())


def vm_hwm_kb_self() -> int:
    import os  # noqa: PLC0415

    return vm_hwm_kb(os.getpid())


def run_restart(directory: Path, *, trace: bool, timeout: float) -> dict[str, object]:
    argv = [sys.executable, str(Path(__file__).resolve()), "restart", str(directory)]
    if trace:
        argv.append("--trace")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"restart with the scale spool took more than {timeout:.0f}s") from None
    if res.returncode != 0:
        raise BenchError(f"restart measurement failed ({res.returncode}): {res.stderr[-1500:]}")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{") and '"messages"' in ln]
    if not lines:
        raise BenchError(f"restart measurement printed no result: {res.stdout[-500:]}")
    return dict(json.loads(lines[-1]))


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restart")
    r.add_argument("dir")
    r.add_argument("--trace", action="store_true")
    args = p.parse_args()
    # relayguard's structlog default prints to stdout; our result is the last JSON line.
    result = restart_main(Path(args.dir), trace=args.trace)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
