"""Shared spool: PostgreSQL, for several relay nodes on one queue.

Writes go through one writer task on one connection, as in SqliteSpool: it takes
whatever jobs are waiting, runs them in one transaction (each in its own
savepoint, so one bad job does not spoil the rest) and commits once. With
`synchronous_commit` on (never turned off here), that commit returns when the WAL
is flushed on the server: 250 still means on disk, and the sessions that finish
DATA while a commit is under way join the next batch.

Reads (loads, the operator's queries, stats) go through a small pool, each in a
read-only REPEATABLE READ transaction: one snapshot, never waiting behind the
writer. Nodes share messages by leases (spool/leases.py); the queries here are
those of every spool and answer exactly as SQLite's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from relayguard.clock import QueueIdFactory, new_queue_id
from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage
from relayguard.queue.spool import (
    ClaimRound,
    IndexEntry,
    Keep,
    KeptMessage,
    KeptSweep,
    MessageQuery,
    NewMessage,
    QueueStats,
    Resend,
    RouteRecord,
    ShapeEntry,
    SpoolError,
    SpoolFullError,
    queued_domains,
)
from relayguard.queue.spool import postgres_leases as leases
from relayguard.queue.spool import postgres_rows as rows
from relayguard.queue.spool.common import (
    StateChanges,
    queued_for,
    settle,
    state_change_sql,
    stored_json,
)
from relayguard.queue.spool.postgres_schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from relayguard.queue.spool.postgres_slots import SLOTS_CHANNEL, ConnectionSlots

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
JobFn = Callable[[Conn], Awaitable[Any]]

MAX_BATCH = 1024
READERS = 4
CONNECT_TIMEOUT = 10
# NOTIFY'd when mail arrives or becomes due (accepted, released, rescheduled): idle
# nodes wake and claim it.
QUEUE_CHANNEL = "relayguard_queue"


def map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
        return SpoolFullError(str(exc))
    if isinstance(exc, psycopg.Error):
        return SpoolError(str(exc).strip() or type(exc).__name__)
    return exc


async def connect(dsn: str) -> Conn:
    """One connection, its errors as SpoolError (what open() turns into a config error)."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise SpoolError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None


async def migrate(conn: Conn) -> int:
    """Create or bring up to date the schema; the version it is at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise SpoolError(
                f"the database's schema is version {version}, newer than this relayguard "
                f"knows ({SCHEMA_VERSION}): upgrade relayguard on this node"
            )
        for step in MIGRATIONS[version:]:
            await conn.execute(step.encode())
        if row is None:
            await conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
        else:
            await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


class PgSpool(StateChanges):
    """The Spool protocol on PostgreSQL. Open it with `await PgSpool.open(dsn)`."""

    def __init__(
        self,
        dsn: str,
        writer: Conn,
        pool: AsyncConnectionPool[Any],
        ids: QueueIdFactory,
        node: str = "",
    ) -> None:
        self.dsn = dsn
        self.node = node  # whose leases this spool claims, renews and ends ('' for none)
        self._conn: Conn | None = writer
        self._pool = pool
        self._slots = ConnectionSlots(dsn)
        self._new_id = ids
        self._jobs: asyncio.Queue[tuple[JobFn, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._closed = False
        # Set by a job whose mail is new or due again: one NOTIFY for the whole batch
        # (PostgreSQL would fold them anyway, but each would cost a round trip).
        self._notify = False
        self.batches = 0  # for the benchmark: how well group commit groups
        self.batched_jobs = 0
        self._writer = asyncio.create_task(self._write_forever(), name="spool-writer")

    @classmethod
    async def open(
        cls, dsn: str, *, queue_ids: QueueIdFactory = new_queue_id, node: str = ""
    ) -> PgSpool:
        """Connect, migrate, start the writer. SpoolError if the server cannot be
        reached or the schema cannot be brought up to date."""
        conn = await connect(dsn)
        try:
            await migrate(conn)
        except psycopg.Error as exc:
            await conn.close()
            raise SpoolError(f"cannot create the schema: {str(exc).strip()}") from None
        except BaseException:
            await conn.close()
            raise
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=1, max_size=READERS, open=False, timeout=CONNECT_TIMEOUT
        )
        await pool.open()
        return cls(dsn, conn, pool, queue_ids, node)

    # -- the writer ------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            job = await self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < MAX_BATCH and not self._jobs.empty():
                nxt = self._jobs.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._run_batch(batch)
            if stop:
                return

    async def _writer_conn(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await connect(self.dsn)
        return self._conn

    async def _run_batch(self, batch: list[tuple[JobFn, asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn = await self._writer_conn()
            try:
                await self._commit(conn, batch, results, one_by_one=False)
            except psycopg.OperationalError:
                raise  # the connection is lost: every job fails
            except Exception:
                if len(batch) == 1:
                    raise  # alone: its failure is the batch's
                # One job failed and the transaction was rolled back, nothing committed:
                # again, each job in a savepoint of its own, so that it spoils no other.
                results.clear()
                await self._commit(conn, batch, results, one_by_one=True)
        except Exception as exc:
            if self._conn is not None and self._conn.broken:
                self._conn = None  # connected again for the next batch
            err = map_error(exc)
            settle([(waiter, None, err) for _, waiter in batch])
            return
        self.batches += 1
        self.batched_jobs += len(batch)
        settle(results)

    async def _commit(
        self,
        conn: Conn,
        batch: list[tuple[JobFn, asyncio.Future[Any]]],
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        *,
        one_by_one: bool,
    ) -> None:
        """The batch in one transaction. Without `one_by_one` the jobs run straight, no
        savepoints: a savepoint and its release are two round trips per job, which
        halved ingest, and a job fails rarely (a queue id already queued), so the
        careful way is kept for the batch that needs it."""
        self._notify = any(isinstance(fn, _Accept) for fn, _ in batch)
        async with conn.transaction():
            if one_by_one:
                await self._run_jobs(conn, batch, results)
            else:
                rest = await self._accept_together(conn, batch, results)
                for fn, waiter in rest:
                    results.append((waiter, await fn(conn), None))
            if self._notify:
                await _notify_queue(conn)

    async def _accept_together(
        self,
        conn: Conn,
        batch: list[tuple[JobFn, asyncio.Future[Any]]],
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
    ) -> list[tuple[JobFn, asyncio.Future[Any]]]:
        """The batch's new messages in one insert of them all (nothing else in a
        batch can touch a message that has no seq yet); the other jobs, to run."""
        accepts = [(fn, w) for fn, w in batch if isinstance(fn, _Accept) and fn.named]
        if len(accepts) < 2:
            return batch
        messages = [m for fn, _ in accepts for m in fn.messages]
        queued = iter(await _insert_many(conn, messages, self._new_id))
        for fn, waiter in accepts:
            results.append((waiter, [next(queued) for _ in fn.messages], None))
        together = {id(fn) for fn, _ in accepts}
        return [(fn, w) for fn, w in batch if id(fn) not in together]

    async def _run_jobs(
        self,
        conn: Conn,
        batch: list[tuple[JobFn, asyncio.Future[Any]]],
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
    ) -> None:
        for fn, waiter in batch:
            try:
                async with conn.transaction():  # a savepoint: one bad job spoils no other
                    results.append((waiter, await fn(conn), None))
            except (psycopg.errors.InFailedSqlTransaction, psycopg.OperationalError):
                raise  # the whole transaction is lost: every job fails
            except Exception as exc:
                results.append((waiter, None, map_error(exc)))

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise SpoolError("spool is closed")
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((fn, waiter))
        # shield: a client that hangs up after the dot must not cancel the commit.
        return await asyncio.shield(waiter)

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """A read-only query in one snapshot on a pooled connection."""
        if self._closed:
            raise SpoolError("spool is closed")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return await fn(conn)
        except psycopg.Error as exc:
            raise map_error(exc) from exc
        except TimeoutError as exc:  # the pool found no connection in time
            raise SpoolError(f"no connection to PostgreSQL: {exc}") from exc

    # -- the Spool interface ---------------------------------------------------------

    async def accept(self, message: NewMessage) -> QueuedMessage:
        queued: list[QueuedMessage] = await self._run(_Accept([message], self._new_id))
        return queued[0]

    async def accept_many(self, messages: Sequence[NewMessage]) -> list[QueuedMessage]:
        if not messages:
            return []
        return await self._run(_Accept(messages, self._new_id))

    async def load(self, seq: int) -> tuple[QueuedMessage, bytes] | None:
        return await self.read(lambda c: _load(c, seq))

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        await self._run(lambda c: _update(c, message, new_attempts, self.node))

    async def finish_with_reports(
        self,
        message: QueuedMessage,
        new_attempts: Sequence[Attempt],
        reports: Sequence[NewMessage],
        keep: Keep | None = None,
    ) -> list[QueuedMessage]:
        keeping = keep if message.state is MessageState.DONE else None

        async def job(c: Conn) -> list[QueuedMessage]:
            recorded = (
                await _keep(c, message, new_attempts, keeping)
                if keeping is not None
                else await _update(c, message, new_attempts, self.node)
            )
            if not recorded:
                return []  # deleted by an operator meanwhile: no reports for it either
            queued = [await _insert(c, r, self._new_id) for r in reports]
            if queued:
                self._notify = True
            if keeping is not None:
                await _drop_kept(c, keeping.at, keeping.max_size)
            return queued

        return await self._run(job)

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        async def query(c: Conn) -> list[IndexEntry]:
            cur = await c.execute(
                "SELECT seq, next_attempt_at, state FROM messages WHERE seq > %s AND state != %s"
                " ORDER BY seq",
                (after_seq, MessageState.DONE.value),
            )
            return [IndexEntry(s, n, MessageState(st)) for s, n, st in await cur.fetchall()]

        return await self.read(query)

    async def messages(self, query: MessageQuery | None = None) -> list[QueuedMessage]:
        return await self.read(lambda c: _select(c, query))

    async def shape(self, query: MessageQuery | None = None) -> list[ShapeEntry]:
        async def select(c: Conn) -> list[ShapeEntry]:
            where, params = _where(query)
            cur = await c.execute(
                sql.SQL(
                    "SELECT seq, arrival_at, envelope FROM messages WHERE {} ORDER BY seq"
                ).format(where),
                params,
            )
            entries = []
            for seq, arrival, env in await cur.fetchall():
                envelope = Envelope.from_dict(json.loads(env))
                if queued_for(query, envelope):
                    entries.append(ShapeEntry(seq, arrival, queued_domains(envelope)))
            return entries

        return await self.read(select)

    async def queue_stats(self, now: float) -> QueueStats:
        return await self.read(lambda c: _stats(c, now))

    async def set_state(
        self,
        seq: int,
        state: MessageState,
        *,
        next_attempt_at: float | None = None,
        only_from: MessageState | None = None,
    ) -> bool:
        """What hold, release and reschedule do (as SqliteSpool.set_state)."""

        async def job(c: Conn) -> bool:
            query, params = state_change_sql("%s", seq, state, next_attempt_at, only_from)
            changed = (await c.execute(query.encode(), params)).rowcount > 0
            if changed and state is MessageState.ACTIVE:
                self._notify = True  # due now, perhaps: an idle node takes it
            return changed

        return await self._run(job)

    async def delete(self, seq: int) -> bool:
        return await self._run(lambda c: _delete(c, seq))

    async def kept(self, since: float | None = None) -> list[KeptMessage]:
        return await self.read(lambda c: _kept(c, since))

    async def drop_kept(self, now: float, max_size: int) -> KeptSweep:
        # Looked at by a reader first: most sweeps find nothing to drop.
        async def look(c: Conn) -> tuple[Any, ...] | None:
            cur = await c.execute("SELECT MIN(until), COALESCE(SUM(size), 0) FROM kept")
            return await cur.fetchone()

        row = await self.read(look)
        assert row is not None
        next_end, total = row
        if (next_end is None or next_end > now) and total <= max_size:
            return KeptSweep(0, next_end)
        return await self._run(lambda c: _drop_kept(c, now, max_size))

    async def resend_kept(self, resends: Sequence[Resend]) -> list[QueuedMessage | None]:
        async def job(c: Conn) -> list[QueuedMessage | None]:
            queued = [await _resend(c, r, self._new_id) for r in resends]
            if any(queued):
                self._notify = True
            return queued

        return await self._run(job)

    # -- leases (SharedSpool): several nodes on one queue --------------------------

    async def _leases(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """A lease operation in a transaction of its own on a pooled connection: claims
        and renewals must not wait behind a batch of accepts being committed."""
        if self._closed:
            raise SpoolError("spool is closed")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await fn(conn)
        except psycopg.Error as exc:
            raise map_error(exc) from exc
        except TimeoutError as exc:
            raise SpoolError(f"no connection to PostgreSQL: {exc}") from exc

    async def claim_round(self, now: float, lease_until: float, limit: int) -> ClaimRound:
        return await self._leases(
            lambda c: leases.claim_round(c, self.node, now, lease_until, limit)
        )

    async def renew(self, seqs: Sequence[int], lease_until: float) -> set[int]:
        return await self._leases(lambda c: leases.renew(c, self.node, seqs, lease_until))

    async def end_leases(self, seqs: Sequence[int], next_attempt_at: float | None = None) -> None:
        async def job(c: Conn) -> None:
            await leases.release(c, self.node, seqs, next_attempt_at)
            await _notify_queue(c)  # free again: another node may take it

        await self._leases(job)

    async def leases(self, seqs: Sequence[int]) -> dict[int, tuple[str, float]]:
        async def query(c: Conn) -> dict[int, tuple[str, float]]:
            cur = await c.execute(
                "SELECT seq, node, lease_until FROM messages"
                " WHERE node IS NOT NULL AND seq = ANY(%s)",
                (list(seqs),),
            )
            return {int(s): (str(n), float(u)) for s, n, u in await cur.fetchall()}

        return await self.read(query) if seqs else {}

    async def listen(
        self,
        wake: Callable[[], None],
        routes_changed: Callable[[], None] | None = None,
        slot_freed: Callable[[], None] | None = None,
    ) -> None:
        channels = {QUEUE_CHANNEL: wake}
        if routes_changed is not None:
            channels[leases.ROUTES_CHANNEL] = routes_changed
        if slot_freed is not None:
            channels[SLOTS_CHANNEL] = slot_freed
        await leases.listen_forever(self.dsn, channels)

    async def take_slot(self, route: str, total: int) -> int | None:
        try:
            return await self._slots.take(route, total)
        except psycopg.Error as exc:
            raise map_error(exc) from exc

    async def give_back_slot(self, route: str, slot: int) -> None:
        await self._slots.give_back(route, slot)

    async def slots_in_use(self, route: str, total: int) -> int:
        try:
            return await self._slots.in_use(route, total)
        except psycopg.Error as exc:
            raise map_error(exc) from exc

    async def share_route_state(
        self, kind: str, until: float, data: dict[str, Any], now: float
    ) -> None:
        await self._leases(lambda c: leases.share_route_state(c, self.node, kind, until, data, now))

    async def route_state(self, after: int, now: float) -> list[RouteRecord]:
        return await self._leases(lambda c: leases.route_state(c, after, now))

    def usable(self) -> bool:
        """For /healthz: the writer's connection is up (or will be made at the next
        batch after the server came back)."""
        return not self._closed and (self._conn is None or not self._conn.broken)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._writer
        if self._conn is not None:
            await self._conn.close()
        await self._slots.close()
        await self._pool.close()


# ---------------------------------------------------------------- the queries


class _Accept:
    """A writer job that queues new messages. The writer inserts every such job of
    a batch at once; alone (or in the careful rerun, a savepoint each) it runs as
    any job does."""

    def __init__(self, messages: Sequence[NewMessage], new_id: QueueIdFactory) -> None:
        self.messages = messages
        self._new_id = new_id

    @property
    def named(self) -> bool:
        """Every message has its queue id already (the front end's, in its Received
        header): inserting them together draws no ids."""
        return all(m.queue_id for m in self.messages)

    async def __call__(self, c: Conn) -> list[QueuedMessage]:
        # One by one: an id is drawn only for a message reached, as SQLite does.
        return [await _insert(c, m, self._new_id) for m in self.messages]


async def _notify_queue(c: Conn) -> None:
    # Sent at commit; PostgreSQL folds the same notice within one transaction.
    await c.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(QUEUE_CHANNEL)))


_INSERT = (
    "INSERT INTO messages (queue_id, state, arrival_at, next_attempt_at, sender, message_id,"
    " size, envelope, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq"
)


async def _insert(c: Conn, m: NewMessage, new_id: QueueIdFactory) -> QueuedMessage:
    [queued] = await _insert_many(c, [m], new_id)
    return queued


async def _insert_many(
    c: Conn, messages: Sequence[NewMessage], new_id: QueueIdFactory
) -> list[QueuedMessage]:
    """Insert them all in one pipelined exchange (executemany): one round trip for
    the lot instead of one each."""
    ids = [m.queue_id or new_id() for m in messages]
    params = [
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
        )
        for qid, m in zip(ids, messages, strict=True)
    ]
    seqs: list[int] = []
    async with c.cursor() as cur:
        await cur.executemany(_INSERT, params, returning=True)
        while True:
            row = await cur.fetchone()
            assert row is not None
            seqs.append(int(row[0]))
            if not cur.nextset():
                break
    return [m.queued(seq, qid) for seq, qid, m in zip(seqs, ids, messages, strict=True)]


async def _update(c: Conn, m: QueuedMessage, new_attempts: Sequence[Attempt], node: str) -> bool:
    """As sqlite._update: a hold meanwhile stays, a delete meanwhile is not undone. The
    round is over, so this node's lease ends; one another node took over (this node
    stalled past its lease) stays that node's."""
    if m.state is MessageState.DONE:
        return await _delete(c, m.seq)
    cur = await c.execute(
        "UPDATE messages SET state = CASE WHEN state = %s THEN state ELSE %s END,"
        " next_attempt_at = %s, envelope = %s,"
        " lease_until = CASE WHEN node = %s THEN NULL ELSE lease_until END,"
        " node = CASE WHEN node = %s THEN NULL ELSE node END WHERE seq = %s",
        (
            MessageState.HELD.value,
            m.state.value,
            m.next_attempt_at,
            stored_json(m.envelope.to_dict()),
            node,
            node,
            m.seq,
        ),
    )
    if not cur.rowcount:
        return False
    await _append_attempts(c, m.seq, new_attempts)
    return True


async def _append_attempts(c: Conn, seq: int, attempts: Sequence[Attempt]) -> None:
    if attempts:
        async with c.cursor() as cur:
            await cur.executemany(
                "INSERT INTO attempts (seq, at, data) VALUES (%s, %s, %s)",
                [(seq, a.at, stored_json(a.to_dict())) for a in attempts],
            )


async def _keep(c: Conn, m: QueuedMessage, new_attempts: Sequence[Attempt], keep: Keep) -> bool:
    cur = await c.execute(
        "INSERT INTO kept (seq, queue_id, kept_at, until, arrival_at, next_attempt_at,"
        " message_id, size, envelope, resent, body)"
        " SELECT seq, queue_id, %s, %s, arrival_at, %s, message_id, size, %s, '[]', body"
        " FROM messages WHERE seq = %s",
        (keep.at, keep.until, m.next_attempt_at, stored_json(m.envelope.to_dict()), m.seq),
    )
    if not cur.rowcount:
        return False
    await c.execute("DELETE FROM messages WHERE seq = %s", (m.seq,))
    await _append_attempts(c, m.seq, new_attempts)
    return True


async def _drop_kept(c: Conn, now: float, max_size: int) -> KeptSweep:
    cur = await c.execute("SELECT seq FROM kept WHERE until <= %s", (now,))
    ended = [int(seq) for (seq,) in await cur.fetchall()]
    cur = await c.execute("SELECT COALESCE(SUM(size), 0) FROM kept WHERE until > %s", (now,))
    row = await cur.fetchone()
    assert row is not None
    total = int(row[0])
    over = []
    if total > max_size:
        cur = await c.execute(
            "SELECT seq, size FROM kept WHERE until > %s ORDER BY kept_at, seq", (now,)
        )
        for seq, size in await cur.fetchall():
            if total <= max_size:
                break
            over.append(int(seq))
            total -= int(size)
    gone = ended + over
    if gone:
        await c.execute("DELETE FROM kept WHERE seq = ANY(%s)", (gone,))
        await c.execute("DELETE FROM attempts WHERE seq = ANY(%s)", (gone,))
    cur = await c.execute("SELECT MIN(until) FROM kept")
    row = await cur.fetchone()
    assert row is not None
    return KeptSweep(len(gone), row[0])


async def _kept(c: Conn, since: float | None) -> list[KeptMessage]:
    cur = await c.execute(
        "SELECT seq, queue_id, %s, arrival_at, next_attempt_at, message_id, size, envelope,"
        " kept_at, until, resent FROM kept WHERE kept_at >= %s ORDER BY kept_at, seq",
        (MessageState.KEPT.value, float("-inf") if since is None else since),
    )
    kept_rows = await cur.fetchall()
    attempts = await _attempts(c, [r[0] for r in kept_rows])
    return [
        KeptMessage(
            rows.message(row[:8], attempts.get(int(row[0]), [])),
            row[8],
            row[9],
            frozenset(json.loads(row[10])),
        )
        for row in kept_rows
    ]


async def _resend(c: Conn, r: Resend, new_id: QueueIdFactory) -> QueuedMessage | None:
    addresses = {rcpt.address for rcpt in r.envelope.recipients}
    cur = await c.execute(
        "SELECT resent, message_id, body FROM kept WHERE seq = %s FOR UPDATE", (r.seq,)
    )
    row = await cur.fetchone()
    if row is None or not addresses:
        return None
    resent = set(json.loads(row[0]))
    if addresses & resent:
        return None  # never twice from one copy
    await c.execute(
        "UPDATE kept SET resent = %s WHERE seq = %s",
        (stored_json(sorted(resent | addresses)), r.seq),
    )
    return await _insert(c, NewMessage(r.envelope, bytes(row[2]), r.arrival_at, row[1]), new_id)


async def _delete(c: Conn, seq: int) -> bool:
    # One statement, one round trip: every delivered message ends here, in the writer's
    # transaction that everything else waits behind. Attempts go only with the message
    # (a seq not in messages may be a kept copy's, whose attempts these are).
    cur = await c.execute(
        "WITH gone AS (DELETE FROM messages WHERE seq = %s RETURNING seq),"
        " a AS (DELETE FROM attempts WHERE seq IN (SELECT seq FROM gone))"
        " SELECT COUNT(*) FROM gone",
        (seq,),
    )
    row = await cur.fetchone()
    return row is not None and int(row[0]) > 0


async def _attempts(c: Conn, seqs: Sequence[int]) -> dict[int, list[Attempt]]:
    """The attempts of these messages, in the order they were stored: one query."""
    out: dict[int, list[Attempt]] = {}
    if not seqs:
        return out
    cur = await c.execute(
        "SELECT seq, data FROM attempts WHERE seq = ANY(%s) ORDER BY seq, id", (list(seqs),)
    )
    for seq, data in await cur.fetchall():
        out.setdefault(int(seq), []).append(Attempt.from_dict(json.loads(data)))
    return out


async def _load(c: Conn, seq: int) -> tuple[QueuedMessage, bytes] | None:
    cur = await c.execute(
        sql.SQL("SELECT {}, body FROM messages WHERE seq = %s").format(rows.columns()), (seq,)
    )
    row = await cur.fetchone()
    if row is None:
        return None
    attempts = await _attempts(c, [seq])
    return rows.message(row[:-1], attempts.get(seq, [])), bytes(row[-1])


def _where(query: MessageQuery | None) -> tuple[sql.Composable, list[object]]:
    """A query's conditions but for `domain`, which is checked on the rows."""
    if query is None:
        return sql.SQL("TRUE"), []
    conditions: list[sql.Composable] = []
    params: list[object] = []
    if query.queue_ids is not None:
        conditions.append(sql.SQL("queue_id = ANY(%s)"))
        params.append(sorted(query.queue_ids))
    if query.states is not None:
        conditions.append(sql.SQL("state = ANY(%s)"))
        params.append(sorted(s.value for s in query.states))
    for column, op, value in (
        ("sender", "=", query.sender),
        ("next_attempt_at", "<=", query.due_by),
        ("next_attempt_at", ">", query.due_after),
        ("arrival_at", "<=", query.arrived_by),
        ("arrival_at", ">", query.arrived_after),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} {} %s").format(sql.Identifier(column), sql.SQL(op)))
            params.append(value)
    return (sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")), params


async def _select(c: Conn, query: MessageQuery | None) -> list[QueuedMessage]:
    where, params = _where(query)
    cur = await c.execute(
        sql.SQL("SELECT {} FROM messages WHERE {} ORDER BY seq").format(rows.columns(), where),
        params,
    )
    found_rows = await cur.fetchall()
    attempts = await _attempts(c, [r[0] for r in found_rows])
    found = [rows.message(r, attempts.get(int(r[0]), [])) for r in found_rows]
    return [m for m in found if queued_for(query, m.envelope)]


async def _stats(c: Conn, now: float) -> QueueStats:
    counts = {"active": 0, "deferred": 0, "held": 0}
    cur = await c.execute(
        "SELECT state, next_attempt_at <= %s, COUNT(*) FROM messages GROUP BY 1, 2", (now,)
    )
    for state, due, count in await cur.fetchall():
        if state == MessageState.HELD.value:
            counts["held"] += int(count)
        elif state == MessageState.ACTIVE.value:
            counts["active" if due else "deferred"] += int(count)
    cur = await c.execute("SELECT arrival_at FROM messages ORDER BY seq LIMIT 1")
    row = await cur.fetchone()
    cur = await c.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM kept")
    kept = await cur.fetchone()
    assert kept is not None
    return QueueStats(
        **counts,
        oldest_arrival=float(row[0]) if row is not None else 0.0,
        kept=int(kept[0]),
        kept_size=int(kept[1]),
    )
