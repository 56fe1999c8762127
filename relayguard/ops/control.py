"""The control channel: what `relayguard queue …` and `relayguard routes` talk to.

A running relay listens on a Unix socket in its spool directory
(`<spool>/control.sock`, mode 0660): one JSON request per line, one JSON
response per line. Every operation that changes a message goes through the
queue manager as well as the spool, so the in-memory scheduler never disagrees
with the spool, and operations are applied one at a time.

When no relay runs, the CLI does the same operations directly on the spool,
with the same `Controller` and an idle queue manager. To be sure nothing runs
meanwhile, a relay holds a shared `flock` on the spool directory while it is
up and the CLI takes an exclusive one for a direct operation: if the socket
does not answer but the lock is taken, the CLI says so instead of racing.

The controller knows the spool only by its protocol (queue/spool/__init__.py):
the same operations on SQLite, in memory, or any later backend.

Races with a delivery round that is under way:
- hold: the message leaves the due queue at once; the round finishes and the
  spool keeps the message held when it records the round (`Spool.update`).
- retry / release: never start a second round of a message already in one.
- delete / bounce: hold first, wait for the round to be recorded, then act, so
  a delivery and an operator's bounce never both happen, and a deleted message
  is not brought back (the spool records nothing for a message that is gone).

`resend` queues kept copies (what bounced because of our egress) again as new
messages; the spool marks their recipients resent in the same transaction, so
none goes twice, and the running queue manager schedules them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from relayguard.clock import Clock, SystemClock
from relayguard.config import RouteSettings, Settings
from relayguard.dns.mx import ProviderKeys
from relayguard.dns.reputation import ReputationMonitor
from relayguard.dns.wiring import monitor_for, provider_keys_for
from relayguard.model import MessageState, Phase, QueuedMessage, Reply
from relayguard.ops.metrics import Observer
from relayguard.ops.queue_tools import (
    STATES,
    detail,
    matches,
    query_for,
    resend_result,
    shape_of,
    summarize,
    summarize_kept,
)
from relayguard.policy.categories import Category
from relayguard.queue.kept import plan_resend
from relayguard.queue.listings import Listings
from relayguard.queue.manager import bounce_now, route_table
from relayguard.queue.scheduler import RouteTable
from relayguard.queue.spool import MessageQuery, SharedSpool, Spool, SpoolError
from relayguard.queue.spool.factory import open_spool
from relayguard.queue.spool.sqlite import DB_NAME

log = structlog.get_logger("relayguard.ops.control")

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20
SETTLE_TIMEOUT = 120.0  # how long delete/bounce wait for a delivery round under way
CLIENT_TIMEOUT = SETTLE_TIMEOUT + 60.0
OPERATOR_REPLY = Reply(
    550, "5.0.0", "message bounced by the operator", Phase.CONNECT, synthetic=True
)
ACTIONS = ("retry", "hold", "release", "delete", "bounce")

Json = dict[str, Any]


class ControlError(Exception):
    """A request that cannot be done; the text is for the operator."""


def socket_path(spool_dir: Path) -> Path:
    return Path(spool_dir) / SOCKET_NAME


# ---------------------------------------------------------------- the spool lock


async def lock_spool_shared(spool_dir: Path) -> int:
    """For a running relay: a shared lock on the spool directory, held until closed.
    Waits while a direct CLI operation (exclusive lock) finishes."""

    def lock() -> int:
        directory = Path(spool_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return await asyncio.to_thread(lock)


def try_lock_exclusive(spool_dir: Path) -> int | None:
    """For the CLI: an exclusive lock on the spool directory, or None if a relay runs."""
    fd = os.open(spool_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ---------------------------------------------------------------- operations


class QueueView(Protocol):
    """What the operations need of the queue's in-memory side: the running queue
    manager, or `StoppedQueue` when the CLI works on the spool of a stopped relay."""

    @property
    def delivering(self) -> Collection[int]: ...
    @property
    def routes(self) -> RouteTable: ...
    @property
    def listings(self) -> Listings: ...
    def hold(self, seq: int) -> None: ...
    def schedule_now(self, seq: int) -> bool: ...
    def enqueue(self, message: QueuedMessage) -> None: ...
    def resume(self, route: str, destination: str | None = None) -> int: ...
    async def bounce(self, seq: int, reply: Reply, rule: str = "operator") -> list[str]: ...
    async def provider_keys(self, domains: Iterable[str]) -> dict[str, str]: ...


class StoppedQueue:
    """The relay is stopped: nothing is being delivered, no route is suspended (those
    live in the running relay's memory), and a bounce is the same finisher the running
    relay uses, on the spool."""

    def __init__(self, settings: Settings, spool: Spool, clock: Clock) -> None:
        from relayguard.ndr.reports import make_report_builder  # noqa: PLC0415 - CLI only

        self.delivering: frozenset[int] = frozenset()
        self.routes = route_table(settings)
        self.listings = Listings()  # checked by the running relay: none when stopped
        self._spool = spool
        self._clock = clock
        self._build = make_report_builder(settings)
        self._queue = settings.queue
        self._dns = settings.dns
        self._providers: ProviderKeys | None = None

    async def provider_keys(self, domains: Iterable[str]) -> dict[str, str]:
        """Looked up now, as the relay would (nothing is cached while it is stopped)."""
        if self._providers is None:
            self._providers = provider_keys_for(self._dns, self._clock.now)
        return await self._providers.keys(domains) if self._providers else {}

    def hold(self, seq: int) -> None:  # noqa: ARG002 - QueueView's signature
        return None  # the spool's hold is all there is

    def schedule_now(self, seq: int) -> bool:  # noqa: ARG002 - QueueView's signature
        return True  # the spool's next-attempt time is all there is: due at the next start

    def enqueue(self, message: QueuedMessage) -> None:  # noqa: ARG002 - QueueView's signature
        return None  # queued in the spool: due at the next start

    def resume(self, route: str, destination: str | None = None) -> int:  # noqa: ARG002
        return 0  # suspensions live in the running relay's memory: none when stopped

    async def bounce(self, seq: int, reply: Reply, rule: str = "operator") -> list[str]:
        addresses, _ = await bounce_now(
            self._spool, seq, reply, rule, self._build, self._clock.now(), queue=self._queue
        )
        return addresses


class Controller:
    """The operations, on a spool and a queue manager (running, or idle for the CLI)."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        manager: QueueView,
        clock: Clock,
        observer: Observer | None = None,
        *,
        running: bool = True,
        reputation: ReputationMonitor | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.manager = manager
        self.clock = clock
        self.observer = observer
        self.running = running
        self.reputation = reputation
        self._lock = asyncio.Lock()

    async def handle(self, request: object) -> Json:
        """One request: {"op": ..., ...} -> the result (JSON-able). Raises ControlError."""
        if not isinstance(request, dict):
            raise ControlError("a request is a JSON object")
        op = request.get("op")
        reads: dict[str, Callable[[Json], Any]] = {
            "ping": self._ping,
            "list": self._list,
            "show": self._show,
            "shape": self._shape,
            "routes": self._routes,
            "reputation": self._reputation,
        }
        if op in reads:
            result: Json = await reads[op](request)
            return result
        if op in ACTIONS or op in ("resume", "resend"):
            async with self._lock:
                if op == "resume":
                    return self._resume(request)
                if op == "resend":
                    return await self._resend(request)
                return await self._act(op, request)
        raise ControlError(f"unknown operation {op!r}")

    # -- reads ------------------------------------------------------------------------

    async def _ping(self, _req: Json) -> Json:
        return {"pid": os.getpid(), "now": self.clock.now()}

    @staticmethod
    def _query(req: Json, now: float) -> MessageQuery | None:
        state = req.get("state")
        if state is not None and state not in STATES:
            raise ControlError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        return query_for(state, req.get("domain"), now)

    async def _list(self, req: Json) -> Json:
        now = self.clock.now()
        if req.get("kept"):
            # Not the queue: the copies kept for `queue resend`, while their window is open.
            kept = [summarize_kept(k, now) for k in await self.spool.kept() if k.until > now]
            return {"now": now, "messages": kept}
        messages = await self.spool.messages(self._query(req, now))
        route = req.get("route")
        # The route a recipient was last tried through is in the attempts: chosen here.
        summaries = [s for s in (summarize(m, now) for m in messages) if matches(s, route=route)]
        if isinstance(self.spool, SharedSpool):
            # Several nodes: which one holds each message's lease (delivering it now, or
            # died holding it: then until when the others wait).
            held = await self.spool.leases([m.seq for m in messages])
            by_id = {m.queue_id: m.seq for m in messages}
            for s in summaries:
                node, until = held.get(by_id[s["queue_id"]], (None, None))
                s["node"], s["lease_until"] = node, until
        return {"now": now, "messages": summaries}

    async def _find_all(self, queue_ids: list[str]) -> dict[str, QueuedMessage]:
        """The messages named, by the id as typed (ids are stored in upper case)."""
        wanted = {qid: qid.strip().upper() for qid in queue_ids}
        found = await self.spool.messages(MessageQuery(queue_ids=frozenset(wanted.values())))
        by_id = {m.queue_id: m for m in found}
        return {qid: by_id[stored] for qid, stored in wanted.items() if stored in by_id}

    async def _show(self, req: Json) -> Json:
        queue_id = str(req.get("id") or "")
        message = (await self._find_all([queue_id])).get(queue_id)
        loaded = await self.spool.load(message.seq) if message else None
        if loaded is None:
            kept = queue_id.strip().upper() in {k.message.queue_id for k in await self.spool.kept()}
            hint = " (a kept copy of a bounced message: see queue list --kept)" if kept else ""
            raise ControlError(f"{queue_id}: not in the queue{hint}")
        now = self.clock.now()
        return {"now": now, "message": detail(loaded[0], loaded[1], now)}

    async def _shape(self, req: Json) -> Json:
        now = self.clock.now()
        entries = await self.spool.shape(self._query({"state": req.get("state")}, now))
        if req.get("by") == "provider":
            # A domain at a known provider counts under the provider's key, the rest
            # under their own; a message counts once per key.
            keys = await self.manager.provider_keys({d for e in entries for d in e.domains})
            entries = [
                replace(e, domains=tuple(dict.fromkeys(keys.get(d, d) for d in e.domains)))
                for e in entries
            ]
        return {"now": now, "shape": shape_of(entries, now)}

    async def _connections_total(self, route: RouteSettings) -> Json:
        """A cap the nodes share: how many connections every node together has now
        (None when the database cannot say)."""
        total = route.max_connections_total
        if total is None or not isinstance(self.spool, SharedSpool):
            return {}  # one node is all of them: max_connections is the total already
        in_use: int | None = None
        with contextlib.suppress(SpoolError):
            in_use = await self.spool.slots_in_use(route.name, total)
        return {"max_connections_total": total, "connections_total": in_use}

    async def _routes(self, _req: Json) -> Json:
        now = self.clock.now()
        table = self.manager.routes
        routes = []
        for r in self.settings.routes:
            suspensions = [
                s.to_dict()
                for (route, _), s in sorted(table.suspensions.items())
                if route == r.name and s.until > now
            ]
            throttles = [
                {
                    "destination": t.destination,
                    "max_connections": t.max_connections,
                    "until": t.until,
                    "rule": t.rule,
                }
                for (route, _), t in sorted(table.throttles.items())
                if route == r.name and t.until > now
            ]
            probing = sorted(d for (route, d) in table.probing if route == r.name)
            obs = self.observer
            routes.append(
                {
                    "name": r.name,
                    "host": r.host,
                    "port": r.port,
                    # Who the route logs in as and where the password comes from; the
                    # password itself never leaves the route's settings.
                    "auth": r.describe_auth(),
                    "max_connections": r.node_connections,
                    "connections": sum(
                        n for (route, _), n in table.active.items() if route == r.name
                    ),
                    **(await self._connections_total(r)),
                    "suspensions": suspensions,
                    "throttles": throttles,
                    "probing": probing,
                    # By this node's checks and, on a shared spool, the other nodes'.
                    "listed": [
                        {**listing.check, "node": listing.node or None}
                        for listing in self.manager.listings.seen_by(r.name)
                    ],
                    "counts": dict(obs.counts.get(r.name, {})) if obs else {},
                    "recent": list(obs.recent.get(r.name, ())) if obs else [],
                }
            )
        return {"now": now, "running": self.running, "routes": routes}

    async def _reputation(self, _req: Json) -> Json:
        """Check every egress in every zone now (a running relay acts on what changed)."""
        return await check_reputation(self.settings, self.clock, self.reputation)

    # -- changes ----------------------------------------------------------------------

    def _route(self, name: str) -> RouteSettings:
        for r in self.settings.routes:
            if r.name == name:
                return r
        names = ", ".join(r.name for r in self.settings.routes)
        raise ControlError(f"no route {name!r} (routes: {names})")

    def _resume(self, req: Json) -> Json:
        route = self._route(str(req.get("route") or "")).name
        if not self.running:
            raise ControlError(
                "relayguard is not running: suspensions live in the server and ended with it"
            )
        domain = req.get("domain")
        lifted = self.manager.resume(route, domain.lower() if domain else None)
        return {"route": route, "domain": domain, "lifted": lifted}

    async def _resend(self, req: Json) -> Json:
        """Queue kept copies again as new messages (or, dry, say which would go)."""
        route = req.get("route")
        if route is not None and self._route(str(route)).ndr_only:
            raise ControlError(
                f"route {route!r} carries only reports (ndr_only = true): name a mail route"
            )
        category = req.get("category")
        if category is not None and category not in set(Category):
            names = ", ".join(Category)
            raise ControlError(f"category must be one of {names}, not {category!r}")
        since = req.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int | float) or since < 0
        ):
            raise ControlError(f"since must be a number of seconds, not {since!r}")
        now = self.clock.now()
        # A recipient that bounced in the window was kept in it too: the spool narrows.
        kept = await self.spool.kept(None if since is None else now - since)
        choices = plan_resend(kept, now, category=category, since=since, route=route)
        dry_run = bool(req.get("dry_run"))
        queued = (
            [None] * len(choices)
            if dry_run
            else await self.spool.resend_kept([c.resend for c in choices])
        )
        for choice, message in zip(choices, queued, strict=True):
            if message is None:
                continue
            self.manager.enqueue(message)
            log.info(
                "resent",
                queue_id=message.queue_id,
                kept_queue_id=choice.kept.message.queue_id,
                message_id=message.message_id,
                recipients=list(choice.recipients),
                route=route,
            )
        return resend_result(choices, queued, now, dry_run=dry_run, route=route)

    async def _select(self, req: Json) -> tuple[list[QueuedMessage], list[str]]:
        ids = [str(i) for i in req.get("ids") or []]
        if ids:
            by_id = await self._find_all(ids)
            return [by_id[i] for i in ids if i in by_id], [i for i in ids if i not in by_id]
        if req.get("all"):
            return await self.spool.messages(), []
        domain = req.get("domain")
        if domain:
            return await self.spool.messages(MessageQuery(domain=str(domain))), []
        raise ControlError("name queue IDs, or --domain D, or --all")

    async def _act(self, op: str, req: Json) -> Json:
        messages, missing = await self._select(req)
        action = {
            "retry": self._retry,
            "hold": self._hold,
            "release": self._release,
            "delete": self._delete,
            "bounce": self._bounce,
        }[op]
        done: list[str] = []
        skipped: list[Json] = []
        for message in messages:
            why = await action(message)
            if why is None:
                done.append(message.queue_id)
            else:
                skipped.append({"queue_id": message.queue_id, "why": why})
        if done:
            log.info("operator_action", op=op, queue_ids=done)
        return {"op": op, "done": done, "skipped": skipped, "missing": missing}

    async def _retry(self, m: QueuedMessage) -> str | None:
        if m.state is MessageState.HELD:
            return "held: release it instead"
        if m.seq in self.manager.delivering:
            return "being delivered right now"
        if not await self.spool.reschedule(m.seq, self.clock.now()):
            return "no longer queued"
        self.manager.schedule_now(m.seq)
        return None

    async def _hold(self, m: QueuedMessage) -> str | None:
        if m.state is MessageState.HELD:
            return "already held"
        self.manager.hold(m.seq)
        if not await self.spool.hold(m.seq):
            return "no longer queued"
        return None

    async def _release(self, m: QueuedMessage) -> str | None:
        if m.state is not MessageState.HELD:
            return "not held"
        if not await self.spool.release(m.seq, self.clock.now()):
            return "no longer held"
        self.manager.schedule_now(m.seq)  # a round under way reschedules it itself
        return None

    async def _hold_and_settle(self, m: QueuedMessage) -> bool:
        """Hold, then wait until no delivery round of this message is under way."""
        self.manager.hold(m.seq)
        await self.spool.hold(m.seq)  # False if held already: held either way
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while m.seq in self.manager.delivering:  # noqa: ASYNC110 - no per-message event
                await asyncio.sleep(0.05)
        self.manager.hold(m.seq)  # the round may have rescheduled it
        return True

    async def _delete(self, m: QueuedMessage) -> str | None:
        try:
            await self._hold_and_settle(m)
        except TimeoutError:
            return "still being delivered; it stays held, try again"
        if not await self.spool.delete(m.seq):
            return "no longer queued"
        return None

    async def _bounce(self, m: QueuedMessage) -> str | None:
        try:
            await self._hold_and_settle(m)
        except TimeoutError:
            return "still being delivered; it stays held, try again"
        if not await self.manager.bounce(m.seq, OPERATOR_REPLY):
            return "nothing left to bounce (delivered or gone meanwhile)"
        return None


# ---------------------------------------------------------------- the server


class ControlServer:
    """JSON lines over a Unix socket, for the `relayguard` CLI on the same host."""

    def __init__(self, controller: Controller, path: Path) -> None:
        self.controller = controller
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._inode: int | None = None

    async def start(self) -> bool:
        """Listen; False (logged) if the socket cannot be made, e.g. a path too long."""
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
            self.path.chmod(0o660)  # the relayguard group may use the queue tools
            self._inode = self.path.stat().st_ino
        except OSError as exc:
            log.warning(
                "control_socket_unavailable",
                path=str(self.path),
                error=str(exc),
                effect="queue tools cannot reach this server",
            )
            return False
        return True

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            st = self.path.stat()
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._inode:
                self.path.unlink()
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass  # the client went away, or sent a line beyond MAX_LINE
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> Json:
        try:
            return {"ok": True, "result": await self.controller.handle(json.loads(line))}
        except json.JSONDecodeError:
            return {"ok": False, "error": "a request is one line of JSON"}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control_error", error=repr(exc))
            return {"ok": False, "error": f"internal error: {exc!r}"}


# ---------------------------------------------------------------- the client


class NotRunningError(Exception):
    """Nothing answers on the control socket."""


def call(path: Path, request: Json, timeout: float = CLIENT_TIMEOUT) -> Json:
    """One request to a running relay; raises NotRunningError if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunningError(str(exc)) from None
        except OSError as exc:  # e.g. a path too long for AF_UNIX
            raise NotRunningError(str(exc)) from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("relayguard closed the control connection without answering")
            data += chunk
    response = json.loads(data)
    if not response.get("ok"):
        raise ControlError(str(response.get("error")))
    result: Json = response["result"]
    return result


async def _direct(settings: Settings, request: Json) -> Json:
    spool = await open_spool(settings)
    clock = SystemClock()
    try:
        controller = Controller(
            settings, spool, StoppedQueue(settings, spool, clock), clock, running=False
        )
        return await controller.handle(request)
    finally:
        await spool.close()


def run(settings: Settings, request: Json) -> Json:
    """What the CLI calls: through the running relay, or directly on its spool."""
    spool_dir = Path(settings.server.spool)
    try:
        return call(socket_path(spool_dir), request)
    except NotRunningError:
        pass
    if settings.server.spool_dsn is not None:
        # A shared spool: other nodes may be running on it, and need no lock to keep
        # out of the way: each operation is one transaction, and nodes deliver only
        # what they claim from the database, so they see a hold or a delete at once.
        return asyncio.run(_direct(settings, request))
    if not (spool_dir / DB_NAME).exists():
        raise ControlError(f"no spool at {spool_dir} (is server.spool right?)")
    fd = try_lock_exclusive(spool_dir)
    if fd is None:
        raise ControlError(
            f"relayguard is running on {spool_dir} but its control socket "
            f"{socket_path(spool_dir)} does not answer"
        )
    try:
        return asyncio.run(_direct(settings, request))
    finally:
        os.close(fd)


async def check_reputation(
    settings: Settings, clock: Clock, monitor: ReputationMonitor | None = None
) -> Json:
    """The checks' results now: through the running relay's monitor (which acts on
    what changed), or a monitor of its own (a stopped relay: nothing acts on them)."""
    monitor = monitor or monitor_for(settings, clock)
    checks = await monitor.check_now() if monitor is not None else []
    unchecked = [r.name for r in settings.routes if not r.egress_address]
    return {
        "now": clock.now(),
        "checks": [c.to_dict() for c in checks],
        "zones": [z.zone for z in settings.reputation.zones],
        "unchecked": unchecked,
    }


def reputation_now(settings: Settings) -> Json:
    """What `relayguard reputation check` calls: the running relay if there is one,
    else the checks from here (they need no spool)."""
    try:
        return call(socket_path(Path(settings.server.spool)), {"op": "reputation"})
    except NotRunningError:
        return asyncio.run(check_reputation(settings, SystemClock()))


def request_for(op: str, **fields: object) -> Json:
    """A request without the fields left unset (argparse's None and empty lists)."""
    return {"op": op, **{k: v for k, v in fields.items() if v not in (None, [], False)}}
