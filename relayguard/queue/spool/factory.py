"""The one way to make the live spool: `[server] spool` chooses the backend.

A directory path is SQLite (the embedded default); a `postgresql://` or
`postgres://` URL is PostgreSQL, shared by several nodes. A server that cannot
be reached, or a schema that cannot be made, at start is a configuration error
naming the file and the key, so the operator knows where to look.
"""

from __future__ import annotations

import os
import socket

from relayguard.clock import QueueIdFactory, new_queue_id
from relayguard.config import ConfigError, Settings
from relayguard.queue.spool import Spool, SpoolError
from relayguard.queue.spool.sqlite import SqliteSpool, spool_usable


def _where(settings: Settings) -> str:
    return str(settings.source) if settings.source is not None else "<config>"


def node_name(settings: Settings) -> str:
    """This node's name on a shared spool: [server] node_name, or the host name and
    process id (unique among the nodes running; a restarted node is a new one, and the
    old one's leases simply run out)."""
    return settings.server.node_name or f"{socket.gethostname()}:{os.getpid()}"


async def open_spool(
    settings: Settings, *, queue_ids: QueueIdFactory = new_queue_id, node: str = ""
) -> Spool:
    """The spool `[server] spool` names. `node`: whose leases a shared spool takes
    (the delivering process gives node_name(settings); front ends and tools none)."""
    server = settings.server
    if server.spool_dsn is None:
        return SqliteSpool(server.spool, queue_ids=queue_ids)
    try:
        from relayguard.queue.spool.postgres import PgSpool  # noqa: PLC0415 - optional extra
    except ImportError:
        raise ConfigError(
            f"{_where(settings)}: server.spool: a PostgreSQL spool needs psycopg: "
            "pip install 'relayguard[postgres]'"
        ) from None
    try:
        return await PgSpool.open(server.spool_dsn, queue_ids=queue_ids, node=node)
    except SpoolError as exc:
        raise ConfigError(f"{_where(settings)}: server.spool: {exc}") from None


def usable(settings: Settings, spool: Spool) -> bool:
    """For /healthz and the watchdog: the spool answers writes."""
    if settings.server.spool_dsn is None:
        return spool_usable(settings.server.spool)
    check = getattr(spool, "usable", None)
    return bool(check()) if check is not None else True


def describe(settings: Settings) -> str:
    """The spool for a log line: a path, or the URL without its password."""
    dsn = settings.server.spool_dsn
    if dsn is None:
        return str(settings.server.spool)
    from psycopg import conninfo  # noqa: PLC0415 - only with a PostgreSQL spool

    parts = conninfo.conninfo_to_dict(dsn)
    parts.pop("password", None)
    return conninfo.make_conninfo(**{k: str(v) for k, v in parts.items() if v is not None})
