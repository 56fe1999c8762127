"""Leases on the PostgreSQL spool: which node delivers which message, until when.

A node claims due messages with `FOR UPDATE SKIP LOCKED`, so two nodes claiming at
once take different messages instead of waiting on each other; the lease it sets
(`node`, `lease_until`) keeps the others off while it delivers and renews it. A
node that dies stops renewing, its leases run out, and the next claim by any node
takes those messages over (at least once: the dead node may have delivered some).
Times are the nodes' own clocks, as next_attempt_at is: nodes keep them in step
(NTP) and the lease is long beside any skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import structlog
from psycopg import sql

from relayguard.model import MessageState
from relayguard.queue.spool import Claim, ClaimRound, RouteRecord
from relayguard.queue.spool import postgres_rows as rows

log = structlog.get_logger("relayguard.queue")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
ACTIVE = MessageState.ACTIVE.value
LISTEN_RETRY_MAX = 30.0
ROUTES_CHANNEL = "relayguard_routes"
STATE_KEPT = 86400.0


async def claim_due(c: Conn, node: str, now: float, lease_until: float, limit: int) -> list[Claim]:
    """Leases that ran out first (their messages have waited longest), then due mail
    nobody holds. Two statements, each able to use its partial index; each returns its
    messages with their bodies and attempts, so that delivering them reads nothing more."""
    claims: list[Claim] = []
    for where, order in (
        ("node IS NOT NULL AND lease_until <= %(now)s", "lease_until"),
        ("node IS NULL", "next_attempt_at"),
    ):
        if len(claims) >= limit:
            break
        query = sql.SQL(
            "WITH c AS (SELECT seq, node AS was FROM messages"
            " WHERE {where} AND state = %(active)s AND next_attempt_at <= %(now)s"
            " ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            " UPDATE messages m SET node = %(node)s, lease_until = %(until)s"
            " FROM c WHERE m.seq = c.seq RETURNING c.was, m.body,"
            " ARRAY(SELECT a.data FROM attempts a WHERE a.seq = m.seq ORDER BY a.id), {columns}"
        ).format(where=sql.SQL(where), order=sql.Identifier(order), columns=rows.columns("m"))
        cur = await c.execute(
            query,
            {
                "now": now,
                "active": ACTIVE,
                "limit": limit - len(claims),
                "node": node,
                "until": lease_until,
            },
        )
        claims += [_claim(node, row) for row in await cur.fetchall()]
    return claims


def _claim(node: str, row: Sequence[Any]) -> Claim:
    was, body, attempt_data, *message_row = row
    message = rows.message(message_row, rows.attempts(attempt_data))
    # Its own lease run out (it stalled) is no takeover: taken from nobody else.
    return Claim(message.seq, was if was and was != node else "", (message, bytes(body)))


async def renew(c: Conn, node: str, seqs: Sequence[int], lease_until: float) -> set[int]:
    if not seqs:
        return set()
    cur = await c.execute(
        "UPDATE messages SET lease_until = %s WHERE node = %s AND seq = ANY(%s) RETURNING seq",
        (lease_until, node, list(seqs)),
    )
    return {int(seq) for (seq,) in await cur.fetchall()}


async def release(c: Conn, node: str, seqs: Sequence[int], next_attempt_at: float | None) -> None:
    if not seqs:
        return
    if next_attempt_at is None:
        await c.execute(
            "UPDATE messages SET node = NULL, lease_until = NULL WHERE node = %s AND seq = ANY(%s)",
            (node, list(seqs)),
        )
    else:
        await c.execute(
            "UPDATE messages SET node = NULL, lease_until = NULL, next_attempt_at = %s"
            " WHERE node = %s AND seq = ANY(%s)",
            (next_attempt_at, node, list(seqs)),
        )


async def share_route_state(
    c: Conn, node: str, kind: str, until: float, data: dict[str, Any], now: float
) -> None:
    await c.execute(
        "INSERT INTO route_state (node, kind, until, data) VALUES (%s, %s, %s, %s)",
        (node, kind, until, json.dumps(data, separators=(",", ":"))),
    )
    # Records long past: no node needs them (a resume older than a day lifts nothing
    # that is still in force, suspensions being minutes to hours).
    await c.execute("DELETE FROM route_state WHERE until < %s", (now - STATE_KEPT,))
    await c.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(ROUTES_CHANNEL)))


async def route_state(c: Conn, after: int, now: float) -> list[RouteRecord]:
    cur = await c.execute(
        "SELECT id, node, kind, data, until FROM route_state"
        " WHERE id > %s AND (until > %s OR kind = 'resume') ORDER BY id",
        (after, now),
    )
    return [
        RouteRecord(int(i), node, kind, json.loads(data), float(until))
        for i, node, kind, data, until in await cur.fetchall()
    ]


async def claim_round(c: Conn, node: str, now: float, lease_until: float, limit: int) -> ClaimRound:
    """claim_due and, unless it took all it could, next_due: in one transaction, which
    spares a busy loop a transaction (two round trips and a commit) per wake."""
    claims = await claim_due(c, node, now, lease_until, limit) if limit > 0 else []
    full = limit > 0 and len(claims) == limit
    return ClaimRound(claims, None if full else await next_due(c, node), full)


async def next_due(c: Conn, node: str) -> float | None:
    cur = await c.execute(
        "SELECT LEAST("
        " (SELECT MIN(next_attempt_at) FROM messages WHERE state = %s AND node IS NULL),"
        " (SELECT MIN(GREATEST(lease_until, next_attempt_at)) FROM messages"
        "  WHERE node IS NOT NULL AND node <> %s AND state = %s))",
        (ACTIVE, node, ACTIVE),
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


async def listen_forever(dsn: str, channels: dict[str, Callable[[], None]]) -> None:
    """LISTEN on its own connection; each channel's callback at each of its notices,
    and every callback once after each (re)connection. A lost connection is made
    again, waiting longer each time."""
    delay = 1.0
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            log.warning("spool_listen_failed", error=str(exc).strip(), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)
            continue
        try:
            for channel in channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            delay = 1.0
            for callback in channels.values():
                callback()
            async for notice in conn.notifies():
                follower = channels.get(notice.channel)
                if follower is not None:
                    follower()
        except psycopg.Error as exc:
            log.warning("spool_listen_lost", error=str(exc).strip(), retry_in=delay)
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
