"""The I/O shell: wires spool, front end, queue manager and delivery, runs the loops.

`Relay` is what `relayguard serve` runs and what the integration tests start
in-process (port 0, a virtual clock when they need one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from relayguard import systemd
from relayguard.clock import Clock, SystemClock
from relayguard.config import Settings, load_settings
from relayguard.delivery import Delivery
from relayguard.frontend import ConnectionLimits, RelayHandler, make_protocol_factory
from relayguard.policy import Policy, load_policy
from relayguard.queue_manager import QueueManager, ReportBuilder
from relayguard.reports import make_report_builder
from relayguard.spool.sqlite import SqliteSpool, spool_usable

log = structlog.get_logger("relayguard.relay")


def policy_for(settings: Settings) -> Policy:
    q = settings.queue
    return load_policy(
        settings.policy.files,
        [r.name for r in settings.routes],
        max_lifetime=q.max_lifetime,
        backoff_start=q.backoff_start,
        backoff_max=q.backoff_max,
    )


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


@dataclass
class Relay:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    sender: Any = None  # delivery adapter; the live one unless a test or test mode gives one
    build_reports: ReportBuilder | None = None
    config_path: Path | None = None
    spool: SqliteSpool = field(init=False)
    manager: QueueManager = field(init=False)
    handler: RelayHandler = field(init=False)
    _server: asyncio.Server | None = None
    _run_task: asyncio.Task[None] | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    on_ready: Callable[[], None] = lambda: None

    async def start(self) -> None:
        s = self.settings
        self.spool = SqliteSpool(s.server.spool)
        if self.sender is None:
            self.sender = Delivery(s.routes, s.server.hostname)
        builder = self.build_reports or make_report_builder(s)
        self.manager = QueueManager(s, self.spool, self.sender, self.clock, policy_for(s),
                                    build_reports=builder)
        await self.manager.load()
        self.handler = RelayHandler(s.server, self.spool, self.clock,
                                    on_accepted=self.manager.enqueue)
        limits = ConnectionLimits(s.server.max_connections, s.server.max_connections_per_client)
        host, port = s.server.listen
        sock = bind_listener(host, port)
        self._server = await asyncio.get_running_loop().create_server(
            make_protocol_factory(self.handler, limits), sock=sock
        )
        self._run_task = asyncio.create_task(self.manager.run())
        log.info("listening", address=self.address, routes=[r.name for r in s.routes],
                 spool=str(s.server.spool), pid=os.getpid())
        self.on_ready()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM: refuse new mail (421 4.3.2), let deliveries finish, keep the rest."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.handler.accepting = False
        if self._server is not None:
            self._server.close()
        await self.manager.stop(self.settings.server.shutdown_grace if grace is None else grace)
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        close = getattr(self.sender, "close", None)
        if close is not None:
            await close()
        await self.spool.close()
        log.info("stopped")

    def healthy(self) -> bool:
        """The listener is open and the spool answers (for /healthz and the watchdog)."""
        return (
            self._server is not None and self._server.is_serving()
            and spool_usable(self.settings.server.spool)
        )

    def reload(self) -> None:
        """SIGHUP: re-read config and policies; a bad file keeps the old ones."""
        if self.config_path is None:
            return
        try:
            settings = load_settings(self.config_path)
            policy = policy_for(settings)
        except ValueError as exc:
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            return
        self.manager.policy = policy
        log.info("reloaded", config=str(self.config_path))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(settings: Settings, config_path: Path | None = None) -> None:
    relay = Relay(settings, config_path=config_path)
    await relay.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def reload() -> None:
        systemd.notify("RELOADING=1")
        relay.reload()
        systemd.notify("READY=1")

    loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
    loop.add_signal_handler(signal.SIGINT, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    systemd.notify(f"READY=1\nSTATUS=listening on {relay.address[0]}:{relay.address[1]}")
    watchdog = asyncio.create_task(systemd.run_watchdog(relay.healthy))
    await stop_requested.wait()
    systemd.notify("STOPPING=1")
    log.info("stopping", grace=settings.server.shutdown_grace)
    watchdog.cancel()
    await relay.stop()
