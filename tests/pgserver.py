"""A private PostgreSQL cluster for the tests: initdb in a temporary directory, a free
port on 127.0.0.1, `pg_ctl -w` to start it and to stop it.

The binaries come from Debian's `postgresql` package (`make system-deps` installs
it) under /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so
when the tests run as root the cluster runs as `nobody` (its directory chowned).
One cluster serves a whole pytest session (`shared_cluster`); each test makes a
database or a schema of its own in it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from support import free_port

SUPERUSER = "relayguard"
UNPRIVILEGED = "nobody"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory with initdb and pg_ctl."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    bin_dir = find_bin_dir()
    if bin_dir is None or not (bin_dir / "pg_ctl").is_file():
        return "PostgreSQL is not installed (initdb/pg_ctl: `make system-deps` installs Debian's postgresql)"
    try:
        import psycopg  # noqa: F401, PLC0415 - only to say why not
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]' or relayguard[postgres])"
    return None


@dataclass
class PgCluster:
    bin_dir: Path
    directory: Path
    port: int
    log_path: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", UNPRIVILEGED, "--", *command]
        return subprocess.run(command, capture_output=True, check=False, timeout=120, cwd="/")

    @classmethod
    def start(cls, bin_dir: Path) -> PgCluster:
        directory = Path(tempfile.mkdtemp(prefix="relayguard-pg-"))
        cluster = cls(bin_dir, directory, free_port(), directory / "server.log")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam(UNPRIVILEGED)
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        init = cluster._run(
            str(bin_dir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",  # a test cluster: nothing in it outlives the session
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')}")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={cluster.port}"
            f" -c unix_socket_directories={directory}"
            " -c max_connections=300 -c fsync=on -c synchronous_commit=on"
        )
        started = cluster._run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(cluster.data),
            "-l",
            str(cluster.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        if started.returncode != 0:
            log = cluster.log_path.read_text(errors="replace") if cluster.log_path.exists() else ""
            raise RuntimeError(
                f"pg_ctl start failed: {started.stderr.decode(errors='replace')}{log}"
            )
        return cluster

    def stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh empty database; its DSN."""
        import psycopg  # noqa: PLC0415 - optional: only when PostgreSQL is available

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def create_schema(self, prefix: str = "s") -> str:
        """A fresh empty schema in the shared test database, as a DSN whose connections
        use it (search_path): cheaper than a database for each of hundreds of spools."""
        import psycopg  # noqa: PLC0415

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(_shared_database(self)), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.dsn(_shared_database(self))}?options=-csearch_path%3D{name}"


_lock = threading.Lock()
_cluster: PgCluster | None = None
_shared_db: str | None = None


def _shared_database(cluster: PgCluster) -> str:
    global _shared_db  # noqa: PLW0603 - one database per session, made once
    with _lock:
        if _shared_db is None:
            import psycopg  # noqa: PLC0415

            _shared_db = "contract"
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{_shared_db}"')
        return _shared_db


def shared_cluster() -> PgCluster:
    """The session's cluster, started at the first call and stopped at exit."""
    global _cluster  # noqa: PLW0603 - one cluster per test session
    with _lock:
        if _cluster is None:
            why = unavailable()
            if why is not None:
                raise RuntimeError(why)
            bin_dir = find_bin_dir()
            assert bin_dir is not None
            _cluster = PgCluster.start(bin_dir)
            atexit.register(stop_shared_cluster)
        return _cluster


def stop_shared_cluster() -> None:
    global _cluster  # noqa: PLW0603
    with _lock:
        if _cluster is not None:
            with contextlib.suppress(Exception):
                _cluster.stop()
            _cluster = None
