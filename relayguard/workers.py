"""Front-end worker processes: more SMTP sessions per second than one event loop.

One Python process tops out near Postfix's ingest rate on two cores (see
PERFORMANCE.md), so with `server.workers = N` the relay starts N-1 extra
processes that each accept on the same port (SO_REUSEPORT: the kernel spreads
connections) and commit to the same spool with their own group commit. The
main process keeps the queue manager. A worker tells the main process about
each message it committed over a datagram socket; the main process also reads
the spool index now and then, so a lost notice delays a message, never loses it.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from relayguard.clock import SystemClock
from relayguard.config import Settings
from relayguard.frontend import ConnectionLimits, RelayHandler, make_protocol_factory
from relayguard.model import QueuedMessage
from relayguard.spool.sqlite import SqliteSpool

log = structlog.get_logger("relayguard.workers")

NOTICE = struct.Struct("!q")
PR_SET_PDEATHSIG = 1


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)  # noqa: FBT003 - socket API
    return sock


def per_worker_limits(settings: Settings, workers: int) -> ConnectionLimits:
    """Each process enforces its share of the connection caps."""
    s = settings.server
    def share(cap: int) -> int:
        return max(1, -(-cap // workers))  # rounded up

    return ConnectionLimits(share(s.max_connections), share(s.max_connections_per_client))


@dataclass
class WorkerPool:
    """The main process's side: started workers and the notices they send."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def start(
        cls, config_path: Path, count: int, host: str, port: int, on_notice: Callable[[int], None]
    ) -> WorkerPool:
        pool = cls()
        loop = asyncio.get_running_loop()
        for index in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            ours.setblocking(False)  # noqa: FBT003 - socket API
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "relayguard", "worker", "--config", str(config_path),
                 "--port", str(port), "--host", host, "--notify-fd", str(theirs.fileno()),
                 "--workers", str(count + 1), "--index", str(index + 1)],
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            loop.add_reader(ours.fileno(), _read_notices, ours, on_notice)
            pool.processes.append(proc)
            pool._sockets.append(ours)
        log.info("workers_started", count=count, pids=[p.pid for p in pool.processes])
        return pool

    async def stop(self, grace: float) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
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


async def run_worker(
    settings: Settings, host: str, port: int, notify_fd: int, workers: int, index: int
) -> None:
    """A front end only: accept, commit, tell the main process; no delivery."""
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return
    notify = socket.socket(fileno=notify_fd)
    notify.setblocking(False)  # noqa: FBT003 - socket API

    def tell(message: QueuedMessage) -> None:
        with contextlib.suppress(OSError):
            notify.send(NOTICE.pack(message.seq))

    spool = SqliteSpool(settings.server.spool)
    handler = RelayHandler(settings.server, spool, SystemClock(), on_accepted=tell)
    limits = per_worker_limits(settings, workers)
    sock = bind_listener(host, port, reuse_port=True)
    server = await asyncio.get_running_loop().create_server(
        make_protocol_factory(handler, limits), sock=sock
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("worker_listening", index=index, pid=os.getpid(), port=port)
    await stop.wait()
    handler.accepting = False
    server.close()
    # Sessions already in DATA may still commit: give them the grace period.
    deadline = loop.time() + settings.server.shutdown_grace
    while limits.active and loop.time() < deadline:  # noqa: ASYNC110 - a count, not an event
        await asyncio.sleep(0.05)
    await spool.close()
    notify.close()
