"""The PostgreSQL spool's schema, created or migrated when a spool opens.

`schema_version` holds one row: the last migration applied. Each migration runs
once, in order, in the transaction that records it; an advisory lock makes nodes
that start together wait for each other instead of migrating twice.
"""

from __future__ import annotations

# Any constant works: it only has to be the same for every node of one database.
MIGRATION_LOCK = 0x72656C61  # "rela"

# Index i holds the step from version i to i + 1. Append only: a node that meets a
# database with a higher version than it knows refuses to open it.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue_id text NOT NULL UNIQUE,
        state text NOT NULL,
        arrival_at double precision NOT NULL,
        next_attempt_at double precision NOT NULL,
        sender text NOT NULL,
        message_id text NOT NULL,
        size bigint NOT NULL,
        envelope text NOT NULL,
        body bytea NOT NULL,
        -- The node delivering it, until when: a lease it renews while it delivers.
        -- Both NULL when nobody holds it.
        node text,
        lease_until double precision
    );
    -- What a node claims next: due, and held by nobody.
    CREATE INDEX messages_due ON messages (next_attempt_at)
        WHERE state = 'active' AND node IS NULL;
    -- Leases, to find those that ran out (a node died).
    CREATE INDEX messages_leases ON messages (lease_until) WHERE node IS NOT NULL;
    CREATE TABLE attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        seq bigint NOT NULL,
        at double precision NOT NULL,
        data text NOT NULL
    );
    CREATE INDEX attempts_seq ON attempts (seq, id);
    -- Kept copies ([queue] keep_bounced), beside the queue, as in SQLite.
    CREATE TABLE kept (
        seq bigint PRIMARY KEY,
        queue_id text NOT NULL,
        kept_at double precision NOT NULL,
        until double precision NOT NULL,
        arrival_at double precision NOT NULL,
        next_attempt_at double precision NOT NULL,
        message_id text NOT NULL,
        size bigint NOT NULL,
        envelope text NOT NULL,
        resent text NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX kept_order ON kept (kept_at, seq);
    CREATE INDEX kept_until ON kept (until);
    """,
    # 2: route state several nodes share. A record of what one node learned
    # (a suspension, a throttle) or an operator did (a resume), in the order it
    # happened; every node applies the others' records to its own route table with
    # the same rules as its own findings, so all of them hold back alike.
    """
    CREATE TABLE route_state (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node text NOT NULL,
        kind text NOT NULL,
        until double precision NOT NULL,
        data text NOT NULL
    );
    CREATE INDEX route_state_until ON route_state (until);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
