"""Embedded spool: SQLite in WAL mode with group commit.

Every write goes through one writer thread. It takes whatever jobs are waiting,
runs them in one transaction (each inside its own savepoint, so one bad job
does not spoil the rest) and commits once: with `synchronous=FULL` that is one
fsync of the WAL for the whole batch. Sessions that finish DATA while an fsync
is running simply join the next batch, so the batch grows with the load.

Several processes may open the same spool: SQLite's file locks serialise
their transactions, and `busy_timeout` makes them wait instead of failing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from relayguard.clock import QueueIdFactory, new_queue_id
from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage
from relayguard.queue.spool import (
    IndexEntry,
    Keep,
    KeptMessage,
    KeptSweep,
    MessageQuery,
    NewMessage,
    QueueStats,
    Resend,
    ShapeEntry,
    SpoolError,
    SpoolFullError,
    queued_domains,
)
from relayguard.queue.spool.common import (
    Outcome,
    StateChanges,
    queued_for,
    settle,
    state_change_sql,
    stored_json,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    arrival_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_due ON messages(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_seq ON attempts(seq);
-- Copies of done messages that bounced because of our egress ([queue] keep_bounced),
-- beside the queue so that nothing reading `messages` meets one. A copy keeps the seq
-- it had there (never reused), and its attempts stay in `attempts` under that seq.
CREATE TABLE IF NOT EXISTS kept (
    seq INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL,
    kept_at REAL NOT NULL,
    until REAL NOT NULL,
    arrival_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    message_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    resent TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kept_order ON kept(kept_at, seq);
CREATE INDEX IF NOT EXISTS kept_until ON kept(until);
"""

MAX_BATCH = 1024
DB_NAME = "queue.db"
WRITE_LOCK_NAME = "queue.db.writelock"


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc) or "No space" in str(exc)


# A job's result goes to an asyncio future (the server) or a concurrent one (the CLI).
Job = tuple[Callable[[sqlite3.Connection], Any], Any]


def _deliver_outcomes(outcomes: list[Outcome]) -> None:
    """Wake the waiters: one call into each event loop per batch, not one per job
    (each call_soon_threadsafe is a write to the loop's wake-up pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        waiter = outcome[0]
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append(outcome)
        else:
            settle([outcome])
    for loop, group in by_loop.items():
        with suppress(RuntimeError):  # that loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, group)


class SqliteSpool(StateChanges):
    """The Spool protocol on SQLite. `queue_ids` makes the ids of messages that come
    without one (NDRs); it is called in the writer thread."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_page_count: int | None = None,
        queue_ids: QueueIdFactory = new_queue_id,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self._max_page_count = max_page_count
        self._new_id = queue_ids
        conn = self._connect()
        conn.executescript(SCHEMA)
        conn.close()
        self._write_lock = os.open(self.directory / WRITE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="spool-writer", daemon=True)
        # One reader thread with its own connection, kept open.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-reader")
        self._reader_state = threading.local()
        self._closed = False
        self.batches = 0  # for the benchmark: how well group commit groups
        self.batched_jobs = 0
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit fsyncs the WAL. 250 means on disk.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        if self._max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
        return conn

    # -- the writer thread -------------------------------------------------

    def _writer(self) -> None:
        conn = self._connect()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
        # Writers in other processes (front-end workers) queue on this lock, and the
        # kernel wakes the next one the moment it is free. Left to SQLite, a busy
        # writer sleeps 1, 2, 5, 10… ms between tries, which starves group commit.
        fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            self._run_batch_locked(conn, batch)
        finally:
            fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def _run_batch_locked(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
        results: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, waiter in batch:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((waiter, fn(conn), None))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    if not conn.in_transaction:
                        # SQLite aborted the whole transaction (disk full, I/O
                        # error): every job in the batch fails with this error.
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((waiter, None, _map_error(exc)))
            conn.execute("COMMIT")
        except Exception as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = _map_error(exc)
            _deliver_outcomes([(waiter, None, err) for _, waiter in batch])
            return
        self.batches += 1
        self.batched_jobs += len(batch)
        _deliver_outcomes(results)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SpoolError("spool is closed")
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, waiter))
        # shield: a client that hangs up after the dot must not cancel the commit.
        return await asyncio.shield(waiter)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """For the CLI: one job through the same writer, waited on synchronously."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return fut.result()

    # -- the Spool interface -----------------------------------------------

    async def accept(self, message: NewMessage) -> QueuedMessage:
        return await self._run(lambda c: _insert(c, message, self._new_id))

    async def accept_many(self, messages: Sequence[NewMessage]) -> list[QueuedMessage]:
        return await self._run(lambda c: [_insert(c, m, self._new_id) for m in messages])

    async def load(self, seq: int) -> tuple[QueuedMessage, bytes] | None:
        # Through the reader: a delivery must not wait behind other messages' fsync.
        return await self._read(lambda c: load_message(c, seq))

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        await self._run(lambda c: _update(c, message, new_attempts))

    async def finish_with_reports(
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
        keep: Keep | None = None,
    ) -> list[QueuedMessage]:
        keeping = keep if message.state is MessageState.DONE else None

        def job(c: sqlite3.Connection) -> list[QueuedMessage]:
            recorded = (
                _keep(c, message, new_attempts, keeping)
                if keeping is not None
                else _update(c, message, new_attempts)
            )
            if not recorded:
                return []  # deleted by an operator meanwhile: no reports for it either
            queued = [_insert(c, r, self._new_id) for r in reports]
            if keeping is not None:
                _drop_kept(c, keeping.at, keeping.max_size)
            return queued

        return await self._run(job)

    async def kept(self, since: float | None = None) -> list[KeptMessage]:
        return await self.read(lambda c: _kept(c, since))

    async def drop_kept(self, now: float, max_size: int) -> KeptSweep:
        # Looked at by the reader first: most sweeps find nothing to drop, and then need
        # neither the writer nor a place in a batch of accepts.
        (next_end, total) = await self.read(
            lambda c: c.execute("SELECT MIN(until), COALESCE(SUM(size), 0) FROM kept").fetchone()
        )
        if (next_end is None or next_end > now) and total <= max_size:
            return KeptSweep(0, next_end)
        return await self._run(lambda c: _drop_kept(c, now, max_size))

    async def resend_kept(self, resends: Sequence[Resend]) -> list[QueuedMessage | None]:
        return await self._run(lambda c: [_resend(c, r, self._new_id) for r in resends])

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        return await self._run(lambda c: list(_index(c, after_seq)))

    async def messages(self, query: MessageQuery | None = None) -> list[QueuedMessage]:
        return await self.read(lambda c: select_messages(c, query))

    async def shape(self, query: MessageQuery | None = None) -> list[ShapeEntry]:
        return await self.read(lambda c: _shape(c, query))

    async def queue_stats(self, now: float) -> QueueStats:
        return await self.read(lambda c: _stats(c, now))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only query in one snapshot on the reader connection (operator
        queries, stats): WAL readers never hold up the writer, nor wait for its fsync."""

        def snapshot(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")

        return await self._read(snapshot)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SpoolError("spool is closed")

        def job() -> T:
            conn = getattr(self._reader_state, "conn", None)
            if conn is None:
                conn = self._reader_state.conn = self._connect()
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise _map_error(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, job)

    async def set_state(
        self,
        seq: int,
        state: MessageState,
        *,
        next_attempt_at: float | None = None,
        only_from: MessageState | None = None,
    ) -> bool:
        """What hold, release and reschedule do; not in the protocol (tests set a state
        directly with it). False if the message is gone (or not in `only_from`)."""
        return await self._run(lambda c: _set_state(c, seq, state, next_attempt_at, only_from))

    async def delete(self, seq: int) -> bool:
        return await self._run(lambda c: _delete(c, seq))

    async def close(self) -> None:
        if not self._closed:
            await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join()
        os.close(self._write_lock)

        def close_reader() -> None:
            conn = getattr(self._reader_state, "conn", None)
            if conn is not None:
                conn.close()

        self._reader.submit(close_reader).result()
        self._reader.shutdown()


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error) and _is_full(exc):
        return SpoolFullError(str(exc))
    if isinstance(exc, OSError) and exc.errno in (28, 122):  # ENOSPC, EDQUOT
        return SpoolFullError(str(exc))
    if isinstance(exc, sqlite3.Error):
        return SpoolError(str(exc))
    return exc


def _insert(conn: sqlite3.Connection, m: NewMessage, new_id: QueueIdFactory) -> QueuedMessage:
    qid = m.queue_id or new_id()
    cur = conn.execute(
        "INSERT INTO messages (queue_id, state, arrival_at, next_attempt_at, sender, message_id,"
        " size, envelope, body) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            qid,
            MessageState.ACTIVE.value,
            m.arrival_at,
            m.arrival_at,
            m.envelope.sender,
            m.message_id,
            len(m.body),
            stored_json(m.envelope.to_dict()),
            m.body,
        ),
    )
    seq = cur.lastrowid
    assert seq is not None
    return m.queued(seq, qid)


def _update(conn: sqlite3.Connection, m: QueuedMessage, new_attempts: Sequence[Attempt]) -> bool:
    """Store what a delivery round did. Two operator races are settled here: a message
    held while it was being delivered stays held, and one deleted meanwhile is not
    brought back (nor are attempts stored for it). False if the message is gone."""
    if m.state is MessageState.DONE:
        # Finished: its attempts would only be deleted with it, so they are not stored
        # (the log has them).
        return _delete(conn, m.seq)  # with earlier rounds' attempts
    updated = conn.execute(
        "UPDATE messages SET state=CASE WHEN state=? THEN state ELSE ? END,"
        " next_attempt_at=?, envelope=? WHERE seq=?",
        (
            MessageState.HELD.value,
            m.state.value,
            m.next_attempt_at,
            stored_json(m.envelope.to_dict()),
            m.seq,
        ),
    ).rowcount
    if not updated:
        return False
    _append_attempts(conn, m.seq, new_attempts)
    return True


def _append_attempts(conn: sqlite3.Connection, seq: int, attempts: Sequence[Attempt]) -> None:
    if attempts:
        conn.executemany(
            "INSERT INTO attempts (seq, at, data) VALUES (?,?,?)",
            [(seq, a.at, stored_json(a.to_dict())) for a in attempts],
        )


def _keep(
    conn: sqlite3.Connection, m: QueuedMessage, new_attempts: Sequence[Attempt], keep: Keep
) -> bool:
    """A done message becomes a kept copy, moved within the file (the body never leaves
    SQLite), with every attempt. False if the message is gone."""
    moved = conn.execute(
        "INSERT INTO kept (seq, queue_id, kept_at, until, arrival_at, next_attempt_at,"
        " message_id, size, envelope, resent, body)"
        " SELECT seq, queue_id, ?, ?, arrival_at, ?, message_id, size, ?, '[]', body"
        " FROM messages WHERE seq=?",
        (
            keep.at,
            keep.until,
            m.next_attempt_at,
            stored_json(m.envelope.to_dict()),
            m.seq,
        ),
    ).rowcount
    if not moved:
        return False
    conn.execute("DELETE FROM messages WHERE seq=?", (m.seq,))
    _append_attempts(conn, m.seq, new_attempts)
    return True


def _drop_kept(conn: sqlite3.Connection, now: float, max_size: int) -> KeptSweep:
    ended = [seq for (seq,) in conn.execute("SELECT seq FROM kept WHERE until <= ?", (now,))]
    (total,) = conn.execute(
        "SELECT COALESCE(SUM(size), 0) FROM kept WHERE until > ?", (now,)
    ).fetchone()
    over = []
    if total > max_size:
        for seq, size in conn.execute(
            "SELECT seq, size FROM kept WHERE until > ? ORDER BY kept_at, seq", (now,)
        ).fetchall():
            if total <= max_size:
                break
            over.append(seq)
            total -= size
    gone = [(seq,) for seq in ended + over]
    conn.executemany("DELETE FROM kept WHERE seq=?", gone)
    conn.executemany("DELETE FROM attempts WHERE seq=?", gone)
    (next_end,) = conn.execute("SELECT MIN(until) FROM kept").fetchone()
    return KeptSweep(len(gone), next_end)


def _kept(conn: sqlite3.Connection, since: float | None) -> list[KeptMessage]:
    rows = conn.execute(
        "SELECT seq, queue_id, ?, arrival_at, next_attempt_at, message_id, size, envelope,"
        " kept_at, until, resent FROM kept WHERE kept_at >= ? ORDER BY kept_at, seq",
        (MessageState.KEPT.value, float("-inf") if since is None else since),
    ).fetchall()
    return [
        KeptMessage(_row_to_message(conn, row[:8]), row[8], row[9], frozenset(json.loads(row[10])))
        for row in rows
    ]


def _resend(conn: sqlite3.Connection, r: Resend, new_id: QueueIdFactory) -> QueuedMessage | None:
    addresses = {rcpt.address for rcpt in r.envelope.recipients}
    row = conn.execute("SELECT resent, message_id, body FROM kept WHERE seq=?", (r.seq,)).fetchone()
    if row is None or not addresses:
        return None
    resent = set(json.loads(row[0]))
    if addresses & resent:
        return None  # never twice from one copy
    conn.execute(
        "UPDATE kept SET resent=? WHERE seq=?", (stored_json(sorted(resent | addresses)), r.seq)
    )
    return _insert(conn, NewMessage(r.envelope, bytes(row[2]), r.arrival_at, row[1]), new_id)


def _set_state(
    conn: sqlite3.Connection,
    seq: int,
    state: MessageState,
    next_attempt_at: float | None,
    only_from: MessageState | None,
) -> bool:
    sql, params = state_change_sql("?", seq, state, next_attempt_at, only_from)
    return conn.execute(sql, params).rowcount > 0


def _delete(conn: sqlite3.Connection, seq: int) -> bool:
    gone = conn.execute("DELETE FROM messages WHERE seq=?", (seq,)).rowcount > 0
    if gone:  # else the seq may be a kept copy's, whose attempts these are
        conn.execute("DELETE FROM attempts WHERE seq=?", (seq,))
    return gone


_COLUMNS = "seq, queue_id, state, arrival_at, next_attempt_at, message_id, size, envelope"


def _row_to_message(conn: sqlite3.Connection, row: tuple[Any, ...]) -> QueuedMessage:
    seq, qid, state, arrival, nxt, mid, size, env = row
    attempts = [
        Attempt.from_dict(json.loads(d))
        for (d,) in conn.execute("SELECT data FROM attempts WHERE seq=? ORDER BY rowid", (seq,))
    ]
    return QueuedMessage(
        seq=seq,
        queue_id=qid,
        envelope=Envelope.from_dict(json.loads(env)),
        arrival_at=arrival,
        next_attempt_at=nxt,
        state=MessageState(state),
        size=size,
        message_id=mid,
        attempts=attempts,
    )


def load_message(conn: sqlite3.Connection, seq: int) -> tuple[QueuedMessage, bytes] | None:
    query = f"SELECT {_COLUMNS}, body FROM messages WHERE seq=?"  # noqa: S608 - constant columns
    row = conn.execute(query, (seq,)).fetchone()
    if row is None:
        return None
    return _row_to_message(conn, row[:-1]), bytes(row[-1])


def _where(query: MessageQuery | None) -> tuple[str, list[object]]:
    """A query's conditions over the messages table, but for `domain`, which lives in
    the envelope's JSON and is checked on the rows (`queued_for`)."""
    if query is None:
        return "1=1", []
    conditions: list[str] = []
    params: list[object] = []
    if query.queue_ids is not None:
        # One parameter however many ids an operator names (SQLite caps parameters).
        conditions.append("queue_id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(sorted(query.queue_ids)))
    if query.states is not None:
        conditions.append("state IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(sorted(s.value for s in query.states)))
    for column, op, value in (
        ("sender", "=", query.sender),
        ("next_attempt_at", "<=", query.due_by),
        ("next_attempt_at", ">", query.due_after),
        ("arrival_at", "<=", query.arrived_by),
        ("arrival_at", ">", query.arrived_after),
    ):
        if value is not None:
            conditions.append(f"{column} {op} ?")
            params.append(value)
    return " AND ".join(conditions) or "1=1", params


def select_messages(
    conn: sqlite3.Connection, query: MessageQuery | None = None
) -> list[QueuedMessage]:
    """The messages a query selects, in seq order (the Spool's `messages`)."""
    where, params = _where(query)
    sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY seq"  # noqa: S608 - fixed pieces
    found = [_row_to_message(conn, r) for r in conn.execute(sql, params).fetchall()]
    return [m for m in found if queued_for(query, m.envelope)]


def _shape(conn: sqlite3.Connection, query: MessageQuery | None) -> list[ShapeEntry]:
    where, params = _where(query)
    sql = f"SELECT seq, arrival_at, envelope FROM messages WHERE {where} ORDER BY seq"  # noqa: S608
    entries = []
    for seq, arrival, env in conn.execute(sql, params):
        envelope = Envelope.from_dict(json.loads(env))
        if queued_for(query, envelope):
            entries.append(ShapeEntry(seq, arrival, queued_domains(envelope)))
    return entries


def _stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    """Counted in the (state, next_attempt_at) index, not the table: cheap at every scrape."""
    counts = {"active": 0, "deferred": 0, "held": 0}
    for state, due, count in conn.execute(
        "SELECT state, next_attempt_at <= ?, COUNT(*) FROM messages GROUP BY 1, 2", (now,)
    ):
        if state == MessageState.HELD.value:
            counts["held"] += count
        elif state == MessageState.ACTIVE.value:
            counts["active" if due else "deferred"] += count
    # seq follows arrival, and this is a lookup in the primary key, not a scan.
    row = conn.execute("SELECT arrival_at FROM messages ORDER BY seq LIMIT 1").fetchone()
    kept, kept_size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM kept").fetchone()
    return QueueStats(
        **counts,
        oldest_arrival=float(row[0]) if row is not None else 0.0,
        kept=kept,
        kept_size=kept_size,
    )


def _index(conn: sqlite3.Connection, after_seq: int) -> Iterator[IndexEntry]:
    for seq, nxt, state in conn.execute(
        "SELECT seq, next_attempt_at, state FROM messages WHERE seq > ? AND state != ?"
        " ORDER BY seq",
        (after_seq, MessageState.DONE.value),
    ):
        yield IndexEntry(seq, nxt, MessageState(state))


def spool_usable(directory: Path) -> bool:
    """For /healthz: the directory is writable and the database opens."""
    path = Path(directory) / DB_NAME
    if not os.access(directory, os.W_OK):
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        conn.execute("SELECT 1 FROM messages LIMIT 1")
        conn.close()
    except sqlite3.Error:
        return False
    return True


def queue_stats(directory: Path, now: float) -> dict[str, float]:
    """`SqliteSpool.queue_stats`, as `Observer.set_queue` reads it, through a read-only
    connection of its own: for the metrics server, which has the directory, not the
    spool."""
    conn = sqlite3.connect(f"file:{Path(directory) / DB_NAME}?mode=ro", uri=True, timeout=5)
    try:
        return _stats(conn, now).as_dict()
    finally:
        conn.close()
