"""Front-end worker processes: more SMTP sessions per second than one event loop.

One Python process tops out near Postfix's ingest rate on two cores (see
PERFORMANCE.md): SMTP sessions and deliveries share one event loop. With
`server.workers = N` the relay starts N processes that each accept on the same
port (SO_REUSEPORT: the kernel spreads connections) and commit to the same
spool with their own group commit; the main process only delivers. A worker
tells the main process about each message it committed over a datagram socket;
the main process also reads the spool index now and then, so a lost notice
delays a message, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from relayguard import logging as rg_logging
from relayguard.clock import SystemClock
from relayguard.config import ServerSettings, Settings, load_settings
from relayguard.model import QueuedMessage
from relayguard.queue.spool.factory import open_spool
from relayguard.smtp.frontend import ConnectionLimits, RelayHandler, make_protocol_factory

log = structlog.get_logger("relayguard.smtp.workers")

NOTICE = struct.Struct("!q")
READY = -1  # a worker's first notice: it listens (spool sequence numbers are positive)
READY_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1
ORPHAN_CHECK_INTERVAL = 0.5


# How many connections the kernel holds for us before we accept them. asyncio's
# create_server calls listen() again with its own backlog (100 unless told): a burst
# beyond that leaves clients connected at the TCP level but never greeted.
LISTEN_BACKLOG = 1024


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)  # noqa: FBT003 - socket API
    return sock


# A TLS handshake on the implicit-TLS listener must finish within this: a client that
# connects and says nothing holds a socket, uncounted, until then.
TLS_HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the front end accepts on: `[server] listen`, or `tls_listen`, where
    TLS starts with the first byte."""

    host: str
    port: int
    implicit_tls: bool = False


def listeners_of(server: ServerSettings, ports: Sequence[int] | None = None) -> list[Listener]:
    """The configured addresses, in a fixed order (listen, then tls_listen); with
    `ports`, on those ports instead: the ones the main process bound, for its workers."""
    out = [Listener(*server.listen)]
    if server.tls_listen is not None:
        out.append(Listener(*server.tls_listen, implicit_tls=True))
    if ports is not None:
        out = [replace(listener, port=port) for listener, port in zip(out, ports, strict=True)]
    return out


async def start_servers(
    handler: RelayHandler,
    limits: ConnectionLimits,
    listeners: Sequence[Listener],
    *,
    reuse_port: bool = False,
) -> list[asyncio.Server]:
    """Listen on every address, one protocol factory (so one set of caps) for all."""
    loop = asyncio.get_running_loop()
    factory = make_protocol_factory(handler, limits)
    servers = []
    for listener in listeners:
        sock = bind_listener(listener.host, listener.port, reuse_port=reuse_port)
        tls: dict[str, Any] = {}
        if listener.implicit_tls:
            tls = {"ssl": handler.tls_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
        servers.append(await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG, **tls))
    return servers


def per_worker_limits(settings: Settings, workers: int) -> ConnectionLimits:
    """Each process enforces its share of the connection caps."""
    s = settings.server

    def share(cap: int) -> int:
        return max(1, -(-cap // max(1, workers)))  # rounded up

    return ConnectionLimits(
        share(s.max_connections),
        share(s.max_connections_per_client),
        outside=share(s.max_outside_connections),
    )


@dataclass
class WorkerPool:
    """The main process's side: started workers and the notices they send."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        config_path: Path,
        count: int,
        ports: Sequence[int],
        on_notice: Callable[[int], None],
    ) -> WorkerPool:
        """Start the workers; return once every one of them listens."""
        pool = cls()
        loop = asyncio.get_running_loop()
        ready: set[int] = set()
        all_ready = asyncio.Event()

        def notice(index: int) -> Callable[[int], None]:
            def handle(seq: int) -> None:
                if seq != READY:
                    on_notice(seq)
                    return
                ready.add(index)
                if len(ready) == count:
                    all_ready.set()

            return handle

        for index in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            ours.setblocking(False)  # noqa: FBT003 - socket API
            # fork+exec returns at once; asyncio's subprocess API would own the pipes
            proc = subprocess.Popen(  # noqa: S603, ASYNC220
                [
                    sys.executable,
                    "-m",
                    "relayguard",
                    "worker",
                    "--config",
                    str(config_path),
                    "--ports",
                    ",".join(str(p) for p in ports),
                    "--notify-fd",
                    str(theirs.fileno()),
                    "--workers",
                    str(count),
                    "--index",
                    str(index + 1),
                    "--parent",
                    str(os.getpid()),
                    "--log-level",
                    rg_logging.current_level,
                ],
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            loop.add_reader(ours.fileno(), _read_notices, ours, notice(index))
            pool.processes.append(proc)
            pool._sockets.append(ours)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                while not all_ready.is_set() and pool.alive():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(all_ready.wait(), 0.1)
        except BaseException:
            pool.terminate()
            await pool.wait(0)
            raise
        if not all_ready.is_set():
            pool.terminate()
            await pool.wait(0)
            raise RuntimeError("a front-end worker process exited while starting")
        log.info("workers_started", count=count, pids=[p.pid for p in pool.processes])
        return pool

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.processes)

    def reload(self) -> None:
        """SIGHUP to each front end: they read their certificate files again."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    def terminate(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def wait(self, grace: float) -> None:
        """Until every worker has finished its sessions (it has `grace` for them)."""
        for proc in self.processes:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=grace + 5)
            except TimeoutError:
                proc.kill()
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()


def _read_notices(sock: socket.socket, on_notice: Callable[[int], None]) -> None:
    while True:
        try:
            data = sock.recv(NOTICE.size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(data) == NOTICE.size:
            on_notice(NOTICE.unpack(data)[0])


def _die_with_parent() -> None:
    """A worker must not outlive the main process (e.g. after kill -9)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Belt and braces beside PR_SET_PDEATHSIG: a worker whose main process is gone
    (whatever the way it went) stops taking mail that nobody would deliver."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event says "my parent died"
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
    log.warning("worker_orphaned", parent=parent)
    stop.set()


def _reload(handler: RelayHandler, config_path: Path) -> None:
    """A front end's SIGHUP: only the listener's certificate and logins can change
    under it."""
    try:
        settings = load_settings(config_path)
    except ValueError as exc:
        log.error("reload_failed", error=str(exc), kept="previous certificate")
        return
    handler.reload(settings.server)


async def run_worker(
    settings: Settings,
    ports: Sequence[int],
    notify_fd: int,
    workers: int,
    index: int,
    parent: int,
    config_path: Path | None = None,
) -> None:
    """A front end only: accept, commit, tell the main process; no delivery."""
    _die_with_parent()
    if os.getppid() != parent:  # it died before the line above could take effect
        return
    notify = socket.socket(fileno=notify_fd)
    notify.setblocking(False)  # noqa: FBT003 - socket API

    def tell(message: QueuedMessage) -> None:
        with contextlib.suppress(OSError):
            notify.send(NOTICE.pack(message.seq))

    spool = await open_spool(settings)
    handler = RelayHandler(settings.server, spool, SystemClock(), on_accepted=tell)
    limits = per_worker_limits(settings, workers)
    servers = await start_servers(
        handler, limits, listeners_of(settings.server, ports), reuse_port=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, handler, config_path)
    log.info("worker_listening", index=index, pid=os.getpid(), ports=list(ports))
    with contextlib.suppress(OSError):
        notify.send(NOTICE.pack(READY))
    orphan_watch = asyncio.create_task(_stop_when_orphaned(parent, stop))
    await stop.wait()
    orphan_watch.cancel()
    handler.accepting = False
    for server in servers:
        server.close()
    # Sessions already in DATA may still commit: give them the grace period.
    deadline = loop.time() + settings.server.shutdown_grace
    while limits.active and loop.time() < deadline:  # noqa: ASYNC110 - a count, not an event
        await asyncio.sleep(0.05)
    await spool.close()
    notify.close()
