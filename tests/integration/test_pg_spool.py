"""`[server] spool = "postgresql://..."`: the config, errors at start, and a relay on it.

Every test here runs against the session's private cluster (tests/pgserver.py),
each on a database of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from support import UpstreamHandler, make_message, run_cli, running_relay, send, upstream

from relayguard.config import ConfigError, load_settings, load_settings_text
from relayguard.queue.spool.factory import open_spool


def pg_config(tmp: Path, dsn: str, upstream_port: int = 1, extra: str = "") -> Path:
    path = tmp / "relayguard.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nhostname = "relay.test"\nspool = "{dsn}"\n'
        f'run_dir = "{tmp / "run"}"\n{extra}\n'
        "[dns]\nprovider_keys = false\n"
        f'[[route]]\nname = "primary"\nhost = "127.0.0.1"\nport = {upstream_port}\ntls = "none"\n',
        encoding="utf-8",
    )
    return path


ROUTE = '[[route]]\nname = "primary"\nhost = "127.0.0.1"\n'


def test_a_postgresql_url_chooses_the_shared_spool(pg_cluster):
    for scheme in ("postgresql", "postgres"):
        s = load_settings_text(
            f'[server]\nspool = "{scheme}://relay@db.example/relayguard"\n'
            'run_dir = "/run/relayguard"\nnode_name = "relay-1"\nlease_time = "10s"\n' + ROUTE,
            "relayguard.toml",
        )
        assert s.server.spool_dsn == f"{scheme}://relay@db.example/relayguard"
        assert s.server.spool == Path("/run/relayguard")  # the node's own: control socket
        assert s.server.node_name == "relay-1"
        assert s.server.lease_time == 10.0
    path = load_settings_text('[server]\nspool = "/var/spool/relayguard"\n' + ROUTE)
    assert path.server.spool_dsn is None
    assert path.server.spool == Path("/var/spool/relayguard")


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ('spool = "postgresql://relay@db/x?sslmode"', "server.spool: expected"),
        ('spool = "postgresql://relay@db/x?nosuchoption=1"', "server.spool: expected"),
        ('spool = "/var/spool/x"\nrun_dir = "/run/x"', "server.run_dir: expected only with"),
        ('spool = "postgresql://db/x"\nlease_time = "0s"', "server.lease_time: expected"),
        ('spool = "postgresql://db/x"\nnode_name = "two words"', "server.node_name: expected"),
    ],
)
def test_a_bad_spool_url_names_the_key(pg_cluster, server, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings_text(f"[server]\n{server}\n" + ROUTE, "relayguard.toml")
    assert str(info.value).startswith("relayguard.toml: ")


async def test_an_unreachable_server_at_start_names_the_file_and_key(tmp_path, pg_cluster):
    from support import free_port  # noqa: PLC0415

    config = pg_config(tmp_path, f"postgresql://relayguard@127.0.0.1:{free_port()}/none")
    with pytest.raises(ConfigError) as info:
        await open_spool(load_settings(config))
    text = str(info.value)
    assert text.startswith(f"{config}: server.spool: cannot connect to PostgreSQL")
    assert "refused" in text.lower()
    missing = pg_config(tmp_path, pg_cluster.dsn("no_such_database"))
    with pytest.raises(ConfigError, match=r"server\.spool: .*no_such_database"):
        await open_spool(load_settings(missing))


async def test_the_schema_is_made_once_and_its_version_kept(pg_cluster, tmp_path):
    import psycopg  # noqa: PLC0415

    from relayguard.queue.spool.postgres_schema import SCHEMA_VERSION  # noqa: PLC0415

    dsn = pg_cluster.create_database()
    settings = load_settings(pg_config(tmp_path, dsn))
    first = await open_spool(settings)
    second = await open_spool(settings)  # a second node: migrates nothing again
    await first.close()
    await second.close()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (await conn.execute("SELECT version FROM schema_version")).fetchall()
        assert rows == [(SCHEMA_VERSION,)]
        await conn.execute("UPDATE schema_version SET version = version + 1")
        await conn.commit()
    with pytest.raises(ConfigError, match="newer than this relayguard knows"):
        await open_spool(settings)


async def test_a_relay_on_postgresql_accepts_delivers_and_lists(pg_cluster, tmp_path, capsys):
    dsn = pg_cluster.create_database()
    handler = UpstreamHandler()
    async with upstream(handler) as up:
        config = pg_config(tmp_path, dsn, up.port)
        with structlog.testing.capture_logs() as logs:
            async with running_relay(load_settings(config), config_path=None) as relay:
                assert relay.settings.server.spool_dsn == dsn
                for n in range(5):
                    _, reply = await send(
                        relay.address, "s@example.org", ["r@example.com"], make_message(n)
                    )
                    assert reply.startswith("2.0.0")
                got = await up.wait_for(5)
                assert sorted(r.message_id for r in got) == [
                    f"<msg-{n}@test.example>" for n in range(5)
                ]
                code, _, _ = await run_cli(capsys, config, "queue", "list")
                assert code == 0
        listening = next(e for e in logs if e["event"] == "listening")
        assert "password" not in listening["spool"]
        assert "dbname=" in listening["spool"]


async def test_a_database_at_an_older_version_is_migrated_keeping_its_mail(pg_cluster, tmp_path):
    import psycopg  # noqa: PLC0415

    from relayguard.queue.spool.postgres_schema import MIGRATIONS, SCHEMA_VERSION  # noqa: PLC0415

    dsn = pg_cluster.create_database()
    settings = load_settings(pg_config(tmp_path, dsn))
    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # a version-1 node's work
        await conn.execute(MIGRATIONS[0].encode())
        await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES (1)")
        await conn.execute(
            "INSERT INTO messages (queue_id, state, arrival_at, next_attempt_at, sender,"
            " message_id, size, envelope, body) VALUES ('OLD1', 'active', 1.0, 1.0,"
            " 's@example.org', '<old@x>', 2, %s, 'hi')",
            ('{"sender":"s@example.org","recipients":[{"address":"r@example.com"}]}',),
        )
        await conn.commit()
    spool = await open_spool(settings)
    try:
        [old] = await spool.messages()
        assert (old.queue_id, old.message_id) == ("OLD1", "<old@x>")
        loaded = await spool.load(old.seq)
        assert loaded is not None
        assert loaded[1] == b"hi"
    finally:
        await spool.close()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        version = await (await conn.execute("SELECT version FROM schema_version")).fetchall()
        assert version == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 2
        await conn.execute("SELECT id, node, kind, until, data FROM route_state")


@pytest.mark.parametrize("named", [False, True], ids=["ids-drawn", "ids-given"])
async def test_one_failing_commit_in_a_batch_spoils_no_other(pg_cluster, named):
    """Sessions committing together share a transaction. When one of them cannot be
    queued (its queue id is taken), the others are still committed, each once. With
    their queue ids given (the front end's), a batch's messages go in one insert."""
    import asyncio  # noqa: PLC0415

    from relayguard.model import Envelope, Recipient  # noqa: PLC0415
    from relayguard.queue.spool import NewMessage, SpoolError  # noqa: PLC0415
    from relayguard.queue.spool.postgres import PgSpool  # noqa: PLC0415

    def new(i: int, queue_id: str = "") -> NewMessage:
        envelope = Envelope(sender="s@example.org", recipients=(Recipient(f"r{i}@example.com"),))
        return NewMessage(envelope, b"body\r\n", 1.0, f"<{i}@x>", queue_id=queue_id)

    spool = await PgSpool.open(pg_cluster.create_database())
    try:
        await spool.accept(new(0, "TAKEN"))
        batches_before = spool.batches
        outcomes = await asyncio.gather(
            *(
                spool.accept(new(i, "TAKEN" if i == 5 else (f"Q{i}" if named else "")))
                for i in range(1, 11)
            ),
            return_exceptions=True,
        )
        batched = spool.batches - batches_before
        stored = await spool.messages()
    finally:
        await spool.close()
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], SpoolError)
    assert batched < 10  # they did share transactions
    assert sorted(m.message_id for m in stored) == sorted(f"<{i}@x>" for i in range(11) if i != 5)
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert {(m.seq, m.queue_id) for m in answered} <= {(m.seq, m.queue_id) for m in stored}
    if named:
        assert sorted(m.queue_id for m in answered) == sorted(
            f"Q{i}" for i in range(1, 11) if i != 5
        )
