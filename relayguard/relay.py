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
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from relayguard.clock import Clock, SystemClock
from relayguard.config import Settings, load_settings
from relayguard.dns.reputation import ReputationMonitor
from relayguard.dns.wiring import monitor_for, provider_keys_for
from relayguard.model import MessageState, QueuedMessage
from relayguard.ndr.reports import make_report_builder
from relayguard.ops import systemd
from relayguard.ops.control import Controller, ControlServer, lock_spool_shared, socket_path
from relayguard.ops.metrics import MetricsServer, Observer
from relayguard.policy import Policy, load_policy
from relayguard.policy.rules import DurationRange
from relayguard.queue.manager import QueueManager, ReportBuilder, Sender
from relayguard.queue.spool import Spool
from relayguard.queue.spool.factory import describe, node_name, open_spool, usable
from relayguard.smtp.delivery import Delivery
from relayguard.smtp.frontend import RelayHandler
from relayguard.smtp.workers import (
    WorkerPool,
    bind_listener,
    listeners_of,
    per_worker_limits,
    start_servers,
)

log = structlog.get_logger("relayguard.relay")

SPOOL_POLL_INTERVAL = 2.0


def policy_for(settings: Settings) -> Policy:
    q = settings.queue
    p = settings.policy
    return load_policy(
        p.files,
        [r.name for r in settings.routes],
        max_lifetime=q.max_lifetime,
        backoff_start=q.backoff_start,
        backoff_max=q.backoff_max,
        second_opinions=p.second_opinions,
        second_opinion_suspend=DurationRange(*p.second_opinion_suspend),
    )


@dataclass
class Relay:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    sender: Sender | None = None  # the live delivery unless a test or test mode gives one
    build_reports: ReportBuilder | None = None
    config_path: Path | None = None
    spool: Spool = field(init=False)
    manager: QueueManager = field(init=False)
    handler: RelayHandler = field(init=False)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _run_task: asyncio.Task[None] | None = None
    _poll_task: asyncio.Task[None] | None = None
    _workers: WorkerPool | None = None
    # The ports (listen, tls_listen), held while worker processes accept on them.
    _reserved: list[socket.socket] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    on_ready: Callable[[], None] = lambda: None
    observer: Observer = field(init=False)
    control: ControlServer | None = None  # the queue tools' Unix socket
    metrics: MetricsServer | None = None  # /metrics and /healthz, when [metrics] listen is set
    _spool_lock: int | None = None
    reputation: ReputationMonitor | None = None  # DNSBL checks of our egress addresses
    _reputation_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        # Held while running: the queue tools work on the spool directly only when no
        # relay holds it (relayguard/control.py).
        self._spool_lock = await lock_spool_shared(s.server.spool)
        try:
            self.spool = await open_spool(s, node=node_name(s))
        except BaseException:
            os.close(self._spool_lock)
            self._spool_lock = None
            raise
        if self.sender is None:
            self.sender = Delivery(s.routes, s.server.hostname)
        builder = self.build_reports or make_report_builder(s)
        self.manager = QueueManager(
            s,
            self.spool,
            self.sender,
            self.clock,
            policy_for(s),
            build_reports=builder,
            providers=provider_keys_for(s.dns, self.clock.now),
        )
        self.observer = Observer(
            self.clock,
            [r.name for r in s.routes],
            [(r.name, z.zone) for r in s.routes if r.egress_address for z in s.reputation.zones],
        )
        self.manager.on_event = self.observer.on_event
        await self.manager.load()
        self.handler = RelayHandler(s.server, self.spool, self.clock, on_accepted=self._accepted)
        workers = s.server.workers if self.config_path is not None else 0
        listeners = listeners_of(s.server)
        if workers:
            # Front-end processes take the connections; this one only delivers. The
            # bound (not listening) sockets keep the ports ours and tell them to them.
            self._reserved = [
                bind_listener(x.host, x.port, reuse_port=True, listen=False) for x in listeners
            ]
            assert self.config_path is not None
            self._workers = await WorkerPool.start(
                self.config_path,
                workers,
                [sock.getsockname()[1] for sock in self._reserved],
                self._worker_accepted,
            )
            if self.manager.shared is None:  # a shared spool's claims poll it already
                self._poll_task = asyncio.create_task(self._poll_spool())
        else:
            self._servers = await start_servers(self.handler, per_worker_limits(s, 1), listeners)
        self._run_task = asyncio.create_task(self.manager.run())
        self.reputation = monitor_for(s, self.clock, self.manager.egress_changed)
        if self.reputation is not None:
            self._reputation_task = asyncio.create_task(self.reputation.run(self._stopped))
        self.control = ControlServer(
            Controller(
                s, self.spool, self.manager, self.clock, self.observer, reputation=self.reputation
            ),
            socket_path(s.server.spool),
        )
        await self.control.start()
        if s.metrics.listen is not None:
            self.metrics = MetricsServer(
                self.observer,
                self.healthy,
                s.server.spool,
                lambda: list(self.manager.routes.suspensions.values()),
                self._stats if s.server.spool_dsn is not None else None,
            )
            await self.metrics.start(*s.metrics.listen)
        log.info(
            "listening",
            address=self.address,
            routes=[r.name for r in s.routes],
            spool=describe(s),
            pid=os.getpid(),
        )
        self.on_ready()

    async def _poll_spool(self) -> None:
        """The safety net under the workers' notices: pick up anything committed
        that the queue manager has not heard of."""
        mark = max((e.seq for e in await self.spool.index()), default=0)
        while True:
            await asyncio.sleep(SPOOL_POLL_INTERVAL)
            for entry in await self.spool.index(after_seq=mark):
                mark = max(mark, entry.seq)
                if entry.state is MessageState.ACTIVE:
                    self.manager.enqueue_seq(entry.seq, entry.next_attempt_at)

    def _accepted(self, message: QueuedMessage) -> None:
        self.manager.enqueue(message)
        self.observer.message_accepted()

    def _worker_accepted(self, seq: int) -> None:
        """A worker process's notice of a message it committed."""
        self.manager.enqueue_seq(seq, self.clock.now())
        self.observer.message_accepted()

    def _bound(self, index: int) -> tuple[str, int] | None:
        socks = [srv.sockets[0] for srv in self._servers] or self._reserved
        if index >= len(socks):
            return None
        name = socks[index].getsockname()
        return str(name[0]), int(name[1])

    @property
    def address(self) -> tuple[str, int]:
        """Where the listener accepts (the bound port when configured as 0)."""
        bound = self._bound(0)
        assert bound is not None
        return bound

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """Where the implicit-TLS listener accepts, when tls_listen is set."""
        return self._bound(1) if self.settings.server.tls_listen is not None else None

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where /metrics and /healthz answer (the bound port when configured as 0)."""
        return self.metrics.address if self.metrics is not None else None

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM: refuse new mail (421 4.3.2), let deliveries finish, keep the rest."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.server.shutdown_grace if grace is None else grace
        self.handler.accepting = False
        for server in self._servers:
            server.close()
        if self._workers is not None:
            self._workers.terminate()  # they close their listeners at once
        log.info("stopping", grace=grace, accepting=False)
        if self.control is not None:
            await self.control.close()
        if self._poll_task is not None:
            self._poll_task.cancel()
        # Front ends finish the sessions in DATA while the deliveries under way finish.
        await asyncio.gather(
            self.manager.stop(grace),
            *([self._workers.wait(grace)] if self._workers is not None else []),
        )
        await self._release()
        log.info("stopped")

    async def _release(self) -> None:
        for sock in self._reserved:
            sock.close()
        for task in (self._run_task, self._reputation_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        close = getattr(self.sender, "close", None)
        if close is not None:
            await close()
        await self.spool.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self._spool_lock is not None:
            os.close(self._spool_lock)
            self._spool_lock = None

    def healthy(self) -> bool:
        """The listener is open (or every front-end process is alive) and the spool
        answers (for /healthz and the watchdog)."""
        if self._workers is not None:
            listening = self._workers.alive()
        else:
            listening = bool(self._servers) and all(srv.is_serving() for srv in self._servers)
        return listening and usable(self.settings, self.spool)

    async def _stats(self, now: float) -> dict[str, float]:
        return (await self.spool.queue_stats(now)).as_dict()

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
        old = self.settings
        # Policies, retry timing and reports change at once; the listener, the spool
        # and the routes' connections are built at start, so those changes wait.
        needs_restart = [
            name
            for name, before, after in (
                # The logins are reloaded below, like the certificate.
                (
                    "server",
                    replace(old.server, client_logins=()),
                    replace(settings.server, client_logins=()),
                ),
                ("route", old.routes, settings.routes),
                ("metrics", old.metrics, settings.metrics),
            )
            if before != after
        ]
        kept = replace(settings, server=old.server, routes=old.routes, metrics=old.metrics)
        self.settings = kept
        self.manager.settings = kept
        self.manager.policy = policy
        self.manager.build_reports = self.build_reports or make_report_builder(kept)
        if settings.dns != old.dns:
            self.manager.providers = provider_keys_for(settings.dns, self.clock.now)
        if needs_restart:
            log.warning(
                "reload_needs_restart",
                sections=needs_restart,
                reason="these sections are read at start; restart to apply them",
            )
        # The listener's certificate is the one server setting a reload takes (a renewed
        # certificate must not need a restart); the front-end processes read it too.
        if self.handler is not None:
            self.handler.reload(settings.server)
        if self._workers is not None:
            self._workers.reload()
        log.info("reloaded", config=str(self.config_path), policy_rules=len(policy.rules))

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(
    settings: Settings, config_path: Path | None = None, *, sender: Sender | None = None
) -> None:
    """Run until SIGTERM. `sender` replaces live delivery (`serve --test-mode`)."""
    relay = Relay(settings, config_path=config_path, sender=sender)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    started = asyncio.Event()

    def reload() -> None:
        if not started.is_set():
            log.warning("reload_ignored", reason="still starting")
            return
        systemd.notify("RELOADING=1")
        relay.reload()
        systemd.notify("READY=1")

    # Signal handlers go in first: a SIGHUP right after start must not kill us.
    loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
    loop.add_signal_handler(signal.SIGINT, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await relay.start()
    started.set()
    mode = "listening"
    if sender is not None:
        mode = "test mode, listening"
        log.warning(
            "test_mode",
            delivering="nowhere: every transaction is captured in-process",
            routes=[r.name for r in settings.routes],
        )
    systemd.notify(f"READY=1\nSTATUS={mode} on {relay.address[0]}:{relay.address[1]}")
    watchdog = asyncio.create_task(systemd.run_watchdog(relay.healthy))
    await stop_requested.wait()
    systemd.notify("STOPPING=1")
    watchdog.cancel()
    if sender is not None:
        log.info("test_mode_stopping", captured=getattr(sender, "count", None))
    await relay.stop()
