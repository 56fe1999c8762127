"""The queue manager: a thin async shell around the pure delivery round.

Like Postfix's qmgr it owns the in-memory view of the queue (what is due, the
route table) and hands transactions to delivery; the spool stays the truth. All
choices are made by `DeliveryRound` (queue/round.py); this module loads, sends,
waits, logs and writes. The replay drives the same round from a heap of events
(replay/driver.py) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from relayguard.clock import Clock
from relayguard.config import QueueSettings, Settings
from relayguard.dns.mx import ProviderKeys
from relayguard.dns.reputation import ZoneCheck
from relayguard.model import MessageState, Outcome, QueuedMessage, Recipient, Reply, Transaction
from relayguard.policy import Policy
from relayguard.policy.categories import Category
from relayguard.queue import shared_routes
from relayguard.queue.kept import egress_failures, keep_for
from relayguard.queue.listings import LISTING_KEPT, Listing, Listings
from relayguard.queue.round import Blocked, DeliveryRound, Done, Routes, Send, fail_pending
from relayguard.queue.scheduler import ALL_DESTINATIONS, DueQueue, RouteTable
from relayguard.queue.spool import Keep, NewMessage, RouteRecord, SharedSpool, Spool, SpoolError

log = structlog.get_logger("relayguard.queue")

_WARNING_EVENTS = frozenset({"route_suspended", "route_throttled", "egress_listed"})
# After a failed sweep of the kept copies (the spool refused), try again this much later.
SWEEP_RETRY = 60.0
# On a shared spool: look again this often for a connection slot of a route whose
# nodes share a cap (a node that died gave its slots back without a notice).
SLOT_RECHECK = 1.0
# On a shared spool: look for due mail at least this often, whatever the notices say (a
# notice is lost while the listening connection is being made again).
SHARED_POLL = 10.0
# After a claim or a look for due mail fails (the database is away), try again later.
CLAIM_RETRY = 2.0
# Due mail that a claim skipped (another node is claiming it this very moment): look
# again this much later rather than at once.
CLAIM_BACKOFF = 0.05


class Sender(Protocol):
    """What the queue manager needs of delivery: the live adapter, or the test-mode
    capture."""

    async def send(self, route: str, tx: Transaction) -> Outcome: ...


ReportBuilder = Callable[[QueuedMessage, bytes, Sequence[Recipient], str, float], list[NewMessage]]


def no_reports(
    _m: QueuedMessage, _b: bytes, _r: Sequence[Recipient], _kind: str, _now: float
) -> list[NewMessage]:
    return []


def routes_of(settings: Settings) -> Routes:
    return Routes(
        names=tuple(r.name for r in settings.routes),
        ndr_only=frozenset(r.name for r in settings.routes if r.ndr_only),
        egress={r.name: f"{r.host}|{r.source_address or ''}" for r in settings.routes},
    )


def route_table(settings: Settings) -> RouteTable:
    return RouteTable(
        tuple(r.name for r in settings.routes),
        max_connections={r.name: r.node_connections for r in settings.routes},
    )


def max_in_flight_for(settings: Settings) -> int:
    """Delivery rounds at once: twice the connections, so a round waiting on a reply
    does not leave a connection idle."""
    return 2 * sum(r.node_connections for r in settings.routes)


def reports_for(done: Done, body: bytes, build: ReportBuilder, now: float) -> list[NewMessage]:
    """NDRs for new failures, a delay warning, 'relayed' reports: what the round wants."""
    reports: list[NewMessage] = []
    for kind, group in (
        ("bounce", done.failed),
        ("delay", done.delayed),
        ("relayed", done.relayed),
    ):
        if group:
            reports += build(done.message, body, group, kind, now)
    return reports


def kept_event(message: QueuedMessage, keep: Keep) -> tuple[str, dict[str, Any]]:
    """The log line for a copy kept for `queue resend`."""
    return (
        "bounced_copy_kept",
        {
            "queue_id": message.queue_id,
            "message_id": message.message_id,
            "recipients": sorted(egress_failures(message)),
            "until": keep.until,
        },
    )


async def bounce_now(
    spool: Spool,
    seq: int,
    reply: Reply,
    rule: str,
    build: ReportBuilder,
    now: float,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    queue: QueueSettings | None = None,
) -> tuple[list[str], list[QueuedMessage]]:
    """An operator's bounce, on the spool: every pending recipient fails now with `reply`
    (the round's own finisher), the NDR is queued. The recipients failed and the reports
    queued; nothing if the message is gone. Used by the running relay and by the CLI on
    a stopped one alike. The operator's reply is no refusal of our egress, but recipients
    that failed on one in earlier rounds keep the copy (`queue`'s keep_bounced)."""
    loaded = await spool.load(seq)
    if loaded is None:
        return [], []
    message, body = loaded
    failed = fail_pending(message, reply, rule)
    reports = build(message, body, failed, "bounce", now) if failed else []
    keep = keep_for(message, queue, now) if queue is not None else None
    queued = await spool.finish_with_reports(message, [], reports, keep)
    addresses = sorted(r.address for r in failed)
    event = {
        "queue_id": message.queue_id,
        "message_id": message.message_id,
        "route": "",
        "recipients": addresses,
        "rule": rule,
        "code": reply.code,
        "enhanced": reply.enhanced,
        "text": reply.text,
        "reason": "bounced by the operator",
    }
    emit([("bounced", event), *([kept_event(message, keep)] if keep else [])], on_event)
    return addresses, queued


@dataclass
class QueueManager:
    settings: Settings
    spool: Spool
    sender: Sender
    clock: Clock
    policy: Policy
    build_reports: ReportBuilder = no_reports
    max_in_flight: int = 0
    due: DueQueue = field(default_factory=DueQueue)
    routes: RouteTable = field(init=False)
    on_event: Callable[[str, dict[str, Any]], None] = lambda _e, _f: None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Rounds waiting for a connection: each registers a future before it waits, and any
    # connection given back resolves them all (no wake-up lost between ask and wait).
    _connection_waiters: set[asyncio.Future[None]] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False
    _stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    _kept_changed: asyncio.Event = field(default_factory=asyncio.Event)  # wakes the sweep
    delivering: set[int] = field(default_factory=set)  # seqs in a delivery round right now
    # MX lookups for provider keys (dns/mx.py); None: every domain is its own key.
    providers: ProviderKeys | None = None
    # Messages waiting on suspensions: the destination keys they wait on, and their next
    # attempt. Lifting a suspension early (an operator, a delisted egress) makes them
    # due at once.
    _waiting: dict[int, tuple[frozenset[str], float]] = field(default_factory=dict)
    # A spool several nodes share (PostgreSQL): this node delivers what it claims from
    # it, by lease, instead of scheduling the index it read at start; None otherwise.
    shared: SharedSpool | None = field(init=False, default=None)
    _route_mark: int = 0  # the last shared route record applied (a shared spool's id)
    # Claimed messages as the claim read them, until their round starts: deliver takes
    # one from here instead of a read of its own (one round trip per message fewer).
    _claimed: dict[int, tuple[QueuedMessage, bytes]] = field(default_factory=dict)
    _routes_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _sharing: set[asyncio.Task[None]] = field(default_factory=set)
    # Routes whose connections every node on the shared spool counts together
    # (`max_connections_total`), and a notice that some node gave one back.
    _totals: dict[str, int] = field(init=False, default_factory=dict)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    # Which DNSBLs list which route, by this node's checks and (shared) the others'.
    listings: Listings = field(default_factory=Listings)

    def __post_init__(self) -> None:
        if isinstance(self.spool, SharedSpool):
            self.shared = self.spool
        self.routes = route_table(self.settings)
        self._routes = routes_of(self.settings)
        if self.shared is not None:
            self._totals = {
                r.name: r.max_connections_total
                for r in self.settings.routes
                if r.max_connections_total is not None
            }
        if not self.max_in_flight:
            self.max_in_flight = max_in_flight_for(self.settings)

    # -- feeding the scheduler -----------------------------------------------------

    async def load(self) -> int:
        """Read the spool's index: messages caught mid-delivery are simply due again.
        On a shared spool nothing is read: the queue is claimed as it comes due."""
        if self.shared is not None:
            log.info(
                "queue_shared",
                node=self.shared.node,
                lease_time=self.settings.server.lease_time,
            )
            return 0
        count = 0
        for entry in await self.spool.index():
            if entry.state is MessageState.ACTIVE:
                self.due.schedule(entry.seq, entry.next_attempt_at)
                count += 1
        log.info("queue_loaded", messages=count)
        return count

    def enqueue(self, message: QueuedMessage) -> None:
        self.enqueue_seq(message.seq, message.next_attempt_at)

    def enqueue_seq(self, seq: int, at: float) -> None:
        """Schedule a message committed elsewhere (a worker process, a poll of the spool).
        One already scheduled or being delivered is left alone: never two deliveries at once.
        On a shared spool it only wakes the loop: the message is claimed like any other."""
        if self.shared is not None:
            self._wake.set()
            return
        if seq in self.delivering or seq in self.due:
            return
        self.due.schedule(seq, at)
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- operator actions (relayguard queue ... / routes resume, via the control socket) --

    def hold(self, seq: int) -> None:
        """Take a message out of the due queue (the spool marks it held). A round already
        under way finishes; the spool keeps the message held when it records the round."""
        self.due.remove(seq)

    def schedule_now(self, seq: int) -> bool:
        """Due now, ignoring backoff (retry, release). False while a round of this message
        is under way: that round reschedules it itself, and a second must not start."""
        if seq in self.delivering:
            return False
        if self.shared is None:  # shared: the spool's next attempt, made now, is claimed
            self.due.schedule(seq, self.clock.now())
        self._wake.set()
        return True

    async def bounce(self, seq: int, reply: Reply, rule: str = "operator") -> list[str]:
        """Fail every pending recipient now with `reply` and queue the NDR, like a policy
        bounce. The caller holds the message and waits until no round is under way.
        Returns the recipients failed (empty if the message is gone)."""
        self.due.remove(seq)
        addresses, reports = await bounce_now(
            self.spool,
            seq,
            reply,
            rule,
            self.build_reports,
            self.clock.now(),
            self.on_event,
            self.settings.queue,
        )
        for report in reports:
            self.enqueue(report)
        self._kept_changed.set()
        return addresses

    def resume(self, route: str, destination: str | None = None) -> int:
        """Lift a route's suspensions early (all, or for one destination); how many.
        Mail held back by them is due at once."""
        lifted = self.routes.resume(route, destination)
        if lifted and self.shared is not None:  # every node's suspensions, not only ours
            self._share(
                [
                    (
                        shared_routes.RESUME,
                        self.clock.now(),
                        {"route": route, "destination": destination},
                    )
                ]
            )
        if lifted:
            log.info(
                "route_resumed",
                route=route,
                destination=destination or "*",
                suspensions=len(lifted),
                due_now=self.redrive(lifted),
            )
        return len(lifted)

    def egress_changed(self, what: str, check: ZoneCheck) -> None:
        """This node's reputation check changed a route's standing in a zone
        (dns/reputation.py); on a shared spool the other nodes are told."""
        node, data, until = self.node_name, check.to_dict(), self.clock.now() + LISTING_KEPT
        if what == "listed":
            self.listings.listed(Listing(node, until, data))
            self._share([(shared_routes.LISTED, until, data)])
        else:
            self.listings.delisted(node, check.route, check.zone)
            self._share([(shared_routes.DELISTED, until, data)])
        self._listing_changed(what, data, node)

    def _listing_changed(
        self, what: str, check: dict[str, Any], node: str, *, lapsed: bool = False
    ) -> None:
        """A node's word on a route's listing changed what it is. Listed (in a zone
        with avoid = "all"), by any node: mail avoids the route while another may take
        it. Delisted, and listed nowhere else by any node: its suspensions for
        blocklist replies end now, and the mail they held back is due at once."""
        route = str(check["route"])
        fields: dict[str, Any] = {
            "route": route,
            "zone": check["zone"],
            "address": check["address"],
            "answers": list(check.get("answers", ())),
            "reason": check.get("reason", ""),
        }
        if node != self.node_name:
            fields["node"] = node  # another node's check
        if lapsed:
            fields["lapsed"] = "that node did not say it again in time (stopped, or cut off)"
        if what == "listed":
            fields["avoid"] = "all" if check.get("avoid", True) else "none"
        elif not self.listings.is_listed(route):
            lifted = self.routes.resume(route, category=Category.RBL_BLOCK.value)
            fields.update(suspensions_lifted=sorted(lifted), due_now=self.redrive(lifted))
        zones = self.listings.avoided_zones(route)
        if zones:
            self.routes.avoided[route] = zones
        else:
            self.routes.avoided.pop(route, None)
        emit([(f"egress_{what}", fields)], self.on_event)
        self._wake.set()

    @property
    def node_name(self) -> str:
        return self.shared.node if self.shared is not None else ""

    def _follow_listing(self, record: RouteRecord) -> None:
        """Another node's word on a route's listing."""
        data = record.data
        route, zone = str(data.get("route")), str(data.get("zone"))
        if route not in self.routes.routes:
            return  # a route this node does not have (configured differently)
        if record.kind == shared_routes.LISTED:
            self.listings.listed(Listing(record.node, record.until, data))
            self._listing_changed("listed", data, record.node)
        else:
            self.listings.delisted(record.node, route, zone)
            self._listing_changed("delisted", data, record.node)

    def _tend_listings(self, now: float) -> None:
        """Other nodes' listings not said again in time lapse; this node's own are
        said again before theirs would."""
        for listing in self.listings.lapse(now, self.node_name):
            self._listing_changed("delisted", listing.check, listing.node, lapsed=True)
        renewed = []
        for listing in self.listings.due_again(self.node_name, now):
            again = replace(listing, until=now + LISTING_KEPT)
            self.listings.listed(again)
            renewed.append((shared_routes.LISTED, again.until, again.check))
        self._share(renewed)

    def redrive(self, keys: Iterable[str]) -> int:
        """Messages waiting on a suspension of these destination keys (held while every
        route was suspended, or deferred after a block) are due now; how many."""
        lifted = set(keys)
        now = self.clock.now()
        redriven: list[int] = []
        for seq, (waiting, _next_attempt) in list(self._waiting.items()):
            if ALL_DESTINATIONS in lifted or waiting & lifted:
                del self._waiting[seq]
                if self.shared is not None or seq in self.due:
                    redriven.append(seq)
        if self.shared is not None and redriven:
            # Due now in the database: the NOTIFY of the change wakes every node.
            task = asyncio.create_task(self._reschedule(redriven, now))
            self._sharing.add(task)
            task.add_done_callback(self._sharing.discard)
        elif redriven:
            for seq in redriven:
                self.due.schedule(seq, now)
            self._wake.set()
        return len(redriven)

    def _forget_due_waiting(self, now: float) -> None:
        """On a shared spool, the next round of a message this node held back may be
        another node's, and this node never hears of it: forget the entries whose next
        attempt has come (the message is due by itself), so the table stays bounded."""
        for seq in [s for s, (_, at) in self._waiting.items() if at <= now]:
            del self._waiting[seq]

    async def _reschedule(self, seqs: list[int], now: float) -> None:
        for seq in seqs:
            try:
                await self.spool.reschedule(seq, now)
            except SpoolError as exc:  # it stays due at its own next attempt
                log.warning("redrive_failed", seq=seq, error=str(exc))
        self._wake.set()

    # -- the loop -----------------------------------------------------------------

    async def sweep_kept(self) -> float | None:
        """Drop the kept copies whose window has ended, and the oldest beyond the size
        cap; when the next window ends (None: nothing kept)."""
        sweep = await self.spool.drop_kept(
            self.clock.now(), self.settings.queue.keep_bounced_max_size
        )
        if sweep.dropped:
            log.info(
                "kept_copies_dropped",
                copies=sweep.dropped,
                reason="keep_bounced window ended, or over keep_bounced_max_size",
            )
        return sweep.next_end

    async def _sweep_kept_forever(self) -> None:
        """Each kept copy is dropped when its window ends: the sweep sleeps until the
        first end, or until a copy is kept (after a shorter window since a reload, that
        one may end first)."""
        while not self._stopping:
            self._kept_changed.clear()  # before reading: a copy kept meanwhile wakes us
            try:
                next_end = await self.sweep_kept()
            except Exception as exc:
                # The copies stay (past their window, until a sweep succeeds): the
                # spool's trouble is not the queue's.
                log.warning("kept_sweep_failed", error=repr(exc), retry_in=SWEEP_RETRY)
                next_end = self.clock.now() + SWEEP_RETRY
            if next_end is None:
                await self._kept_changed.wait()
            else:
                await self.clock.sleep_until(next_end, self._kept_changed)

    async def run(self) -> None:
        sweeper = asyncio.create_task(self._sweep_kept_forever())
        try:
            await self._run()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _run(self) -> None:
        if self.shared is not None:
            await self._run_shared(self.shared)
            return
        while not self._stopping:
            now = self.clock.now()
            room = self.max_in_flight - len(self._tasks)
            if room > 0:
                for seq in self.due.pop_due(now, room):
                    self._start(seq)
            nxt = self.due.next_due()
            room = self.max_in_flight - len(self._tasks)
            if nxt is not None and nxt <= now and room > 0:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            until = nxt if (nxt is not None and room > 0) else now + 3600.0
            await self.clock.sleep_until(until, self._wake)

    def _start(self, seq: int) -> None:
        self.delivering.add(seq)  # from here on, until the round is recorded
        task = asyncio.create_task(self._deliver_guarded(seq))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _run_shared(self, spool: SharedSpool) -> None:
        """The loop on a shared spool: claim what is due (leased to this node), deliver
        it, sleep until the next due time or a notice that mail arrived on any node."""
        await self._follow_routes(spool)  # before the first claim: held back as the others
        helpers = [
            asyncio.create_task(
                spool.listen(self._wake.set, self._routes_changed.set, self._slot_freed.set)
            ),
            asyncio.create_task(self._renew_forever(spool)),
            asyncio.create_task(self._follow_routes_forever(spool)),
        ]
        try:
            while not self._stopping:
                self._wake.clear()  # before the claim: a notice meanwhile wakes us again
                until = await self._claim_round(spool)
                if until is None:
                    continue
                await self.clock.sleep_until(until, self._wake)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _claim_round(self, spool: SharedSpool) -> float | None:
        """Claim and start what there is room for; when to look again (None: now)."""
        lease = self.settings.server.lease_time
        now = self.clock.now()
        room = self.max_in_flight - len(self._tasks)
        try:
            found = await spool.claim_round(now, now + lease, max(room, 0))
        except SpoolError as exc:
            log.warning("claim_failed", error=str(exc), retry_in=CLAIM_RETRY)
            return now + CLAIM_RETRY
        full, nxt = found.full, found.next_due
        for claim in found.claims:
            if claim.taken_from:
                log.warning(
                    "lease_taken_over",
                    seq=claim.seq,
                    node=spool.node,
                    previous_node=claim.taken_from,
                    reason="its lease ran out: that node stopped renewing (it died or stalls)",
                )
            if claim.loaded is not None:  # deliver takes it instead of reading it again
                self._claimed[claim.seq] = claim.loaded
            self._start(claim.seq)
        if full:
            return None  # there may be more, and room again after a round ends
        poll = now + SHARED_POLL
        if self.max_in_flight - len(self._tasks) <= 0 or nxt is None:
            return poll  # a round ending wakes the loop
        if nxt <= now:
            return now + CLAIM_BACKOFF  # due but skipped: another node is claiming it
        return min(nxt, poll)

    def _share(self, records: Sequence[tuple[str, float, dict[str, Any]]]) -> None:
        """Tell the other nodes (in the background: a round does not wait on it)."""
        if self.shared is None:
            return
        for kind, until, data in records:
            task = asyncio.create_task(self._share_one(self.shared, kind, until, data))
            self._sharing.add(task)
            task.add_done_callback(self._sharing.discard)

    async def _share_one(
        self, spool: SharedSpool, kind: str, until: float, data: dict[str, Any]
    ) -> None:
        try:
            await spool.share_route_state(kind, until, data, self.clock.now())
        except SpoolError as exc:  # the other nodes learn it themselves, later
            log.warning(
                "route_state_share_failed", kind=kind, route=data.get("route"), error=str(exc)
            )

    async def _follow_routes(self, spool: SharedSpool) -> None:
        """Apply what the other nodes shared since the last look."""
        try:
            records = await spool.route_state(self._route_mark, self.clock.now())
        except SpoolError as exc:
            log.warning("route_state_unreadable", error=str(exc))
            return
        for record in records:
            self._route_mark = max(self._route_mark, record.id)
            if record.node == spool.node:
                continue  # ours: applied when we found it
            if record.kind in shared_routes.LISTING_KINDS:
                self._follow_listing(record)
                continue
            lifted = shared_routes.apply(self.routes, record)
            if lifted:
                self.redrive(lifted)  # what this node held back for them is due now
            log.info(
                "route_state_followed",
                kind=record.kind,
                node=record.node,
                route=record.data.get("route"),
                destination=record.data.get("destination"),
                until=record.data.get("until"),
                lifted=sorted(lifted),
            )
        self._wake.set()  # a route lifted or held back: rounds waiting ask again

    async def _follow_routes_forever(self, spool: SharedSpool) -> None:
        while not self._stopping:
            self._routes_changed.clear()  # before reading: a notice meanwhile wakes us
            await self._follow_routes(spool)
            self._forget_due_waiting(self.clock.now())
            self._tend_listings(self.clock.now())
            await self.clock.sleep_until(self.clock.now() + SHARED_POLL, self._routes_changed)

    async def _renew_forever(self, spool: SharedSpool) -> None:
        """Renew the leases of the rounds under way, three times per lease."""
        lease = self.settings.server.lease_time
        while not self._stopping:
            now = self.clock.now()
            await self.clock.sleep_until(now + lease / 3, self._stop_event)
            seqs = list(self.delivering)
            if not seqs:
                continue
            try:
                held = await spool.renew(seqs, self.clock.now() + lease)
            except SpoolError as exc:
                log.warning("lease_renew_failed", error=str(exc), leases=len(seqs))
                continue
            lost = (set(seqs) - held) & self.delivering  # those still under way
            if lost:
                log.warning(
                    "lease_lost",
                    seqs=sorted(lost),
                    node=spool.node,
                    reason="another node took them over; both may deliver (at least once)",
                )

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Take nothing new; give in-flight deliveries `grace` seconds, then cancel.
        Whatever is cancelled stays queued in the spool and is due at next start."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        self._kept_changed.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "deliveries_cut",
                    count=len(pending),
                    grace=grace,
                    reason="still in flight at the end of the grace period; "
                    "they stay queued and may be sent again",
                )
                await asyncio.wait(pending)

    async def drain(self) -> None:
        """Wait for the in-flight deliveries (tests)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- one message ---------------------------------------------------------------

    async def _deliver_guarded(self, seq: int) -> None:
        try:
            await self.deliver(seq)
        except asyncio.CancelledError:
            if self.shared is not None:  # cut at shutdown: another node may take it now
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.shared.end_leases([seq]))
            raise
        except Exception as exc:
            # A bug must not lose the message: it stays in the spool, due again later.
            log.exception("delivery_error", seq=seq, error=repr(exc))
            retry_at = self.clock.now() + self.settings.queue.backoff_start
            if self.shared is not None:
                with contextlib.suppress(Exception):  # else its lease runs out: the same
                    await self.shared.end_leases([seq], retry_at)
            else:
                self.due.schedule(seq, retry_at)
        finally:
            self.delivering.discard(seq)

    async def deliver(self, seq: int) -> None:
        loaded = self._claimed.pop(seq, None) or await self.spool.load(seq)
        if loaded is None or loaded[0].state is not MessageState.ACTIVE:
            if self.shared is not None and loaded is not None:  # held meanwhile
                await self.shared.end_leases([seq])
            return
        message, body = loaded
        q = self.settings.queue
        rnd = DeliveryRound(
            message,
            body,
            self.policy,
            self._routes,
            self.routes,
            delay_warning=q.delay_warning,
            backoff_start=q.backoff_start,
            providers=await self._provider_keys(message),
        )
        sending: dict[asyncio.Future[tuple[Outcome, float, float]], Send] = {}
        try:
            done = await self._drive(rnd, sending)
        finally:
            for future, send in sending.items():  # cut by a cancellation: connections back
                future.cancel()
                rnd.unsend(send)
            if sending:
                self._connection_given_back()
        now = self.clock.now()
        reports = reports_for(done, body, self.build_reports, now)
        keep = keep_for(done.message, q, now)
        queued = await self.spool.finish_with_reports(done.message, done.attempts, reports, keep)
        for report in queued:
            self.enqueue(report)
        if keep is not None:
            emit([kept_event(done.message, keep)], self.on_event)
            self._kept_changed.set()
        # What it waits on is this node's to know, shared spool or not: a resume or a
        # delisting anywhere (ours, or another node's record) makes it due at once.
        if done.waiting:
            self._waiting[done.message.seq] = (
                frozenset(done.waiting),
                done.message.next_attempt_at,
            )
        else:
            self._waiting.pop(done.message.seq, None)
        if self.shared is not None:
            # Recorded with its next attempt in the shared spool, lease ended: whichever
            # node is free then claims it.
            self._wake.set()
            return
        if done.message.state is MessageState.ACTIVE:
            self.due.schedule(done.message.seq, done.message.next_attempt_at)
            self._wake.set()

    async def provider_keys(self, domains: Iterable[str]) -> dict[str, str]:
        """The provider key of each of `domains` that has one (for `queue shape`)."""
        return await self.providers.keys(domains) if self.providers else {}

    async def _provider_keys(self, message: QueuedMessage) -> dict[str, str]:
        """The provider keys of the message's domains; none (each domain its own key)
        when lookups are off, and whatever goes wrong: a lookup never holds mail."""
        if self.providers is None:
            return {}
        try:
            return await self.providers.keys(r.domain for r in message.pending)
        except Exception as exc:  # any failure means: the domain is its own key
            log.warning("provider_keys_failed", queue_id=message.queue_id, error=repr(exc))
            return {}

    async def _drive(
        self,
        rnd: DeliveryRound,
        sending: dict[asyncio.Future[tuple[Outcome, float, float]], Send],
    ) -> Done:
        """Run the round: start what it asks, wait for what it waits on, record outcomes."""
        while True:
            step = rnd.next_step(self.clock.now())
            if isinstance(step, Done):
                self._round_events(rnd.drain_events())
                return step
            if isinstance(step, Send):
                if self._stopping:  # nothing new begins during shutdown
                    rnd.unsend(step)
                    self._connection_given_back()
                    rnd.stop(self.clock.now())
                    continue
                sending[asyncio.ensure_future(self._send(step))] = step
                continue
            assert isinstance(step, Blocked)
            if self._stopping and not sending:
                rnd.stop(self.clock.now())
                continue
            await self._wait(step, sending)
            for future in [f for f in sending if f.done()]:
                send = sending.pop(future)
                outcome, started, finished = future.result()
                rnd.record(send, outcome, started, finished)
                self._connection_given_back()
            self._round_events(rnd.drain_events())

    async def _wait(
        self, step: Blocked, sending: dict[asyncio.Future[tuple[Outcome, float, float]], Send]
    ) -> None:
        waits: set[asyncio.Future[Any]] = set(sending)
        helpers: list[asyncio.Future[Any]] = []
        freed: asyncio.Future[None] | None = None
        if step.for_connection:
            # A connection given back by any round, a throttle ending (checked each
            # second), or shutdown: then the round asks again.
            freed = asyncio.get_running_loop().create_future()
            self._connection_waiters.add(freed)
            waits.add(freed)
            helpers.append(asyncio.ensure_future(self.clock.sleep_until(self.clock.now() + 1.0)))
            helpers.append(asyncio.ensure_future(self._stop_event.wait()))
        try:
            await asyncio.wait(waits | set(helpers), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if freed is not None:
                self._connection_waiters.discard(freed)
                freed.cancel()
            for h in helpers:
                h.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await h

    def _round_events(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        emit(events, self.on_event)
        if self.shared is not None:
            self._share(shared_routes.records_to_share(events))

    def _connection_given_back(self) -> None:
        waiters, self._connection_waiters = self._connection_waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _send(self, step: Send) -> tuple[Outcome, float, float]:
        slot = await self._take_slot(step.route)
        try:
            started = self.clock.now()
            outcome = await self.sender.send(step.route, step.transaction)
            return outcome, started, self.clock.now()
        finally:
            if slot is not None and self.shared is not None:
                # Shielded: a round cut at shutdown still frees the slot for the others.
                await asyncio.shield(self.shared.give_back_slot(step.route, slot))

    async def _take_slot(self, route: str) -> int | None:
        """One of the connection slots the route's nodes share, waited for (None: the
        route has no shared cap). A slot another node gives back wakes the wait; one
        a dead node held is found free at the next look, each second."""
        total = self._totals.get(route)
        if total is None or self.shared is None:
            return None
        while True:
            self._slot_freed.clear()  # before the look: a notice meanwhile wakes us
            try:
                slot = await self.shared.take_slot(route, total)
            except SpoolError as exc:
                log.warning("connection_slot_failed", route=route, error=str(exc))
                slot = None
            if slot is not None:
                return slot
            await self.clock.sleep_until(self.clock.now() + SLOT_RECHECK, self._slot_freed)


def emit(
    events: Sequence[tuple[str, dict[str, Any]]],
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> None:
    """A round's events as log lines (structlog JSON), and to the metrics' hook."""
    for name, fields in events:
        (log.warning if name in _WARNING_EVENTS else log.info)(name, **fields)
        if on_event is not None:
            on_event(name, fields)
