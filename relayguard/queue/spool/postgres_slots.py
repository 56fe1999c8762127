"""Connection slots a route's nodes share (`max_connections_total`), on PostgreSQL.

A slot is a session-level advisory lock, (the route's key, slot number), held on a
connection of this node's own for as long as one delivery uses the route. A lock
lives and dies with the session that holds it: a node killed mid-delivery frees its
slots the moment its connections close, so no lease has to run out and no row has
to be cleaned up. A node that gives a slot back says so (NOTIFY) to wake the nodes
waiting for one; a dead node cannot, and the waiters look again each second.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
import structlog

log = structlog.get_logger("relayguard.queue")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Params = Sequence[Any] | Mapping[str, Any]
SLOTS_CHANNEL = "relayguard_slots"
CONNECT_TIMEOUT = 10
# The two-key advisory locks with this first key are a route's slots; a route's key
# is the CRC-32 of its name under this prefix, kept positive so that pg_locks
# (whose classid is unsigned) shows it as it is.
_KEY_PREFIX = b"relayguard route slots:"

# The CASE keeps a slot this session holds from being taken again (advisory locks
# stack within a session, so pg_try_advisory_lock would say yes); the LIMIT stops at
# the first slot taken, so no other is locked by the way.
_TAKE = (
    "SELECT s FROM generate_series(0, %(total)s - 1) AS s"
    " WHERE CASE WHEN s = ANY(%(held)s) THEN false"
    " ELSE pg_try_advisory_lock(%(key)s, s) END LIMIT 1"
)
_GIVE_BACK = "SELECT pg_advisory_unlock(%s, %s), pg_notify(%s, %s)"
_IN_USE = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 2 AND classid = %s::bigint::oid AND objid < %s"
)


def route_key(route: str) -> int:
    return zlib.crc32(_KEY_PREFIX + route.encode()) & 0x7FFFFFFF


class ConnectionSlots:
    """This node's share of the routes' slots, on one connection of its own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Conn | None = None
        self._lock = asyncio.Lock()
        self._held: dict[str, set[int]] = {}

    async def take(self, route: str, total: int) -> int | None:
        """A free slot of the `total` the route has across every node, now taken by
        this node; None when every one is in use."""
        key = route_key(route)
        async with self._lock:
            row = await self._query(
                lambda: {"total": total, "held": sorted(self._held.get(route, ())), "key": key},
                _TAKE,
            )
            if row is None:
                return None
            slot = int(row[0])
            self._held.setdefault(route, set()).add(slot)
            return slot

    async def give_back(self, route: str, slot: int) -> None:
        """Free the slot and wake the nodes waiting for one. A slot the connection
        lost meanwhile is free already."""
        async with self._lock:
            held = self._held.get(route, set())
            if slot not in held or self._conn is None:
                return
            held.discard(slot)
            try:
                await self._conn.execute(_GIVE_BACK, (route_key(route), slot, SLOTS_CHANNEL, route))
            except psycopg.Error as exc:
                log.warning("connection_slot_lost", route=route, error=str(exc).strip())
                await self._lost()

    async def in_use(self, route: str, total: int) -> int:
        """How many of the route's slots the nodes hold now (for `routes`)."""
        async with self._lock:
            row = await self._query(lambda: (route_key(route), total), _IN_USE)
            return 0 if row is None else int(row[0])

    async def close(self) -> None:
        async with self._lock:
            await self._lost()

    async def _query(self, params: Callable[[], Params], query: str) -> tuple[Any, ...] | None:
        """The query's first row. A connection that broke since its last use (the
        server restarted, or ended it) is noticed only now: its slots are gone with
        it, and the query runs once more on a new one (`params` read afresh, as the
        slots held are none now)."""
        reused = self._conn is not None and not self._conn.closed
        try:
            return await self._first_row(query, params())
        except psycopg.OperationalError:
            if not reused:
                raise
        return await self._first_row(query, params())

    async def _first_row(self, query: str, params: Params) -> tuple[Any, ...] | None:
        conn = await self._connection()
        try:
            cur = await conn.execute(query, params)
            return await cur.fetchone()
        except psycopg.Error:
            await self._lost()
            raise

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self._lost()
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                # A node cut off by the network holds its slots until its server
                # notices: keepalives make that tens of seconds, not hours.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        return self._conn

    async def _lost(self) -> None:
        """The connection is gone or going, and every slot with it."""
        self._held.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None
