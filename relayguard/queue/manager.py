"""The queue manager: takes due messages, delivers them, applies the policy's decisions.

Like Postfix's qmgr, it owns the in-memory view of the queue (the scheduler)
and hands transactions to the delivery adapter; the spool stays the truth.
Time comes from the injected clock, so the replay runs this same code.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from relayguard.clock import Clock
from relayguard.config import Settings
from relayguard.model import (
    Action,
    Attempt,
    Decision,
    MessageState,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
    SecondOpinion,
    Suspension,
)
from relayguard.policy import Policy, RouteView, decide
from relayguard.queue.scheduler import DueQueue, RouteTable
from relayguard.queue.spool import NewMessage, Spool
from relayguard.smtp.delivery import Outcome, Transaction
from relayguard.smtp.esmtp import rcpt_upstream_params

log = structlog.get_logger("relayguard.queue")

PROBE_WAIT = 30.0  # seconds a message waits while another probes a route that just came back


class Sender(Protocol):
    """What the queue manager needs of delivery: the live adapter, the test-mode capture
    or the replay's simulated upstream."""

    async def send(self, route: str, tx: Transaction) -> Outcome: ...


ReportBuilder = Callable[[QueuedMessage, bytes, Sequence[Recipient], str, float], list[NewMessage]]


def _no_reports(
    _m: QueuedMessage, _b: bytes, _r: Sequence[Recipient], _kind: str, _now: float
) -> list[NewMessage]:
    return []


@dataclass(slots=True)
class _Round:
    """What one delivery round of one message produced."""

    recipients: dict[str, Recipient]
    seed: str  # queue id and attempt count: the same round always draws the same jitter
    attempts: list[Attempt] = field(default_factory=list)
    relayed_without_dsn: set[str] = field(default_factory=set)
    _rng: random.Random | None = None

    def rng(self) -> random.Random:
        """Seeded on first use: most rounds end in a delivery and draw nothing."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng

    next_times: list[float] = field(default_factory=list)


@dataclass
class QueueManager:
    settings: Settings
    spool: Spool
    sender: Sender
    clock: Clock
    policy: Policy
    build_reports: ReportBuilder = _no_reports
    max_in_flight: int = 0
    due: DueQueue = field(default_factory=DueQueue)
    routes: RouteTable = field(init=False)
    on_event: Callable[[str, dict[str, Any]], None] = lambda _e, _f: None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False
    _stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    _route_slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _route_names: tuple[str, ...] = ()
    delivering: set[int] = field(default_factory=set)  # seqs in a delivery round right now

    def __post_init__(self) -> None:
        self._route_names = tuple(r.name for r in self.settings.routes)
        self._ndr_only = frozenset(r.name for r in self.settings.routes if r.ndr_only)
        self._mail_routes = tuple(r for r in self._route_names if r not in self._ndr_only)
        # Where each mail route leaves from: a second opinion must come from elsewhere.
        egress = {r.name: f"{r.host}|{r.source_address or ''}" for r in self.settings.routes}
        self._mail_egresses = tuple(egress[r] for r in self._mail_routes)
        self.routes = RouteTable(self._route_names)
        # The route's connection cap lives here, with the rest of the scheduling, so a
        # message waiting for a connection can still be told to stand down.
        self._route_slots = {
            r.name: asyncio.Semaphore(r.max_connections) for r in self.settings.routes
        }
        if not self.max_in_flight:
            self.max_in_flight = 2 * sum(r.max_connections for r in self.settings.routes)

    # -- feeding the scheduler -----------------------------------------------------

    async def load(self) -> int:
        """Read the spool's index: messages caught mid-delivery are simply due again."""
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
        One already scheduled or being delivered is left alone: never two deliveries at once."""
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
        self.due.schedule(seq, self.clock.now())
        self._wake.set()
        return True

    async def bounce(self, seq: int, reply: Reply, rule: str = "operator") -> list[str]:
        """Fail every pending recipient now with `reply` and queue the NDR, like a policy
        bounce. The caller holds the message and waits until no round is under way.
        Returns the recipients failed (empty if the message is gone)."""
        self.due.remove(seq)
        loaded = await self.spool.load(seq)
        if loaded is None:
            return []
        message, body = loaded
        now = self.clock.now()
        pending = {r.address for r in message.pending}
        message.envelope = message.envelope.with_recipients(
            tuple(
                _failed(r, reply, rule) if r.address in pending else r
                for r in message.envelope.recipients
            )
        )
        failed = [r for r in message.envelope.recipients if r.address in pending]
        message.state = MessageState.DONE
        reports = self.build_reports(message, body, failed, "bounce", now) if failed else []
        for report in await self.spool.finish_with_reports(message, [], reports):
            self.enqueue(report)
        addresses = sorted(pending)
        log.info(
            "bounced",
            queue_id=message.queue_id,
            message_id=message.message_id,
            recipients=addresses,
            rule=rule,
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
            reason="bounced by the operator",
        )
        self.on_event("bounced", {"route": "", "rule": rule, "recipients": addresses})
        return addresses

    def resume(self, route: str, destination: str | None = None) -> int:
        """Lift a route's suspensions early (all, or for one destination); how many."""
        lifted = self.routes.resume(route, destination)
        if lifted:
            log.info(
                "route_resumed", route=route, destination=destination or "*", suspensions=lifted
            )
            self._wake.set()
        return lifted

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            now = self.clock.now()
            room = self.max_in_flight - len(self._tasks)
            if room > 0:
                for seq in self.due.pop_due(now, room):
                    self.delivering.add(seq)  # from here on, until the round is recorded
                    task = asyncio.create_task(self._deliver_guarded(seq))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            nxt = self.due.next_due()
            room = self.max_in_flight - len(self._tasks)
            if nxt is not None and nxt <= now and room > 0:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            until = nxt if (nxt is not None and room > 0) else now + 3600.0
            await self.clock.sleep_until(until, self._wake)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Take nothing new; give in-flight deliveries `grace` seconds, then cancel.
        Whatever is cancelled stays queued in the spool and is due at next start."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
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
        """Wait for the in-flight deliveries (tests and replay)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- one message ---------------------------------------------------------------

    async def _deliver_guarded(self, seq: int) -> None:
        try:
            await self.deliver(seq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug must not lose the message: it stays in the spool, due again later.
            log.exception("delivery_error", seq=seq, error=repr(exc))
            self.due.schedule(seq, self.clock.now() + self.settings.queue.backoff_start)
        finally:
            self.delivering.discard(seq)

    async def deliver(self, seq: int) -> None:
        loaded = await self.spool.load(seq)
        if loaded is None:
            return
        message, body = loaded
        if message.state is not MessageState.ACTIVE:
            return
        before = {r.address: r.state for r in message.envelope.recipients}
        rnd = _Round(
            {r.address: r for r in message.envelope.recipients},
            seed=f"{message.queue_id}/{len(message.attempts)}",
        )
        by_domain: dict[str, list[Recipient]] = {}
        for r in message.pending:
            by_domain.setdefault(r.domain, []).append(r)
        if len(by_domain) == 1:  # the usual case: no task per domain needed
            [(domain, rcpts)] = by_domain.items()
            await self._deliver_domain(message, body, domain, rcpts, rnd)
        else:
            await asyncio.gather(
                *(self._deliver_domain(message, body, d, rs, rnd) for d, rs in by_domain.items())
            )
        await self._finish(message, body, before, rnd)

    async def _finish(
        self, message: QueuedMessage, body: bytes, before: dict[str, RecipientState], rnd: _Round
    ) -> None:
        now = self.clock.now()
        message.envelope = message.envelope.with_recipients(
            tuple(rnd.recipients[r.address] for r in message.envelope.recipients)
        )
        message.attempts.extend(rnd.attempts)
        if message.pending:
            message.next_attempt_at = min(rnd.next_times) if rnd.next_times else now
        else:
            message.state = MessageState.DONE
        reports = self._reports(message, body, before, rnd, now)
        queued = await self.spool.finish_with_reports(message, rnd.attempts, reports)
        for report in queued:
            self.enqueue(report)
        if message.state is MessageState.ACTIVE:
            self.due.schedule(message.seq, message.next_attempt_at)
            self._wake.set()

    def _reports(
        self,
        message: QueuedMessage,
        body: bytes,
        before: dict[str, RecipientState],
        rnd: _Round,
        now: float,
    ) -> list[NewMessage]:
        """NDRs for new failures, a delay warning once past [queue] delay_warning, and
        'relayed' reports for NOTIFY=SUCCESS through peers without DSN."""
        recipients = message.envelope.recipients
        failed = [
            r
            for r in recipients
            if r.state is RecipientState.FAILED and before[r.address] is RecipientState.QUEUED
        ]
        relayed = [
            r for r in recipients if r.address in rnd.relayed_without_dsn and "SUCCESS" in r.notify
        ]
        warn_after = self.settings.queue.delay_warning
        delayed: list[Recipient] = []
        if warn_after and now - message.arrival_at >= warn_after:
            delayed = [r for r in message.pending if not r.delay_warned]
        reports: list[NewMessage] = []
        for kind, group in (("bounce", failed), ("delay", delayed), ("relayed", relayed)):
            if group:
                reports += self.build_reports(message, body, group, kind, now)
        if delayed:
            warned = {r.address for r in delayed}
            message.envelope = message.envelope.with_recipients(
                tuple(
                    replace(r, delay_warned=True) if r.address in warned else r for r in recipients
                )
            )
        return reports

    async def _deliver_domain(
        self,
        message: QueuedMessage,
        body: bytes,
        domain: str,
        recipients: list[Recipient],
        rnd: _Round,
    ) -> None:
        tried: set[str] = set()
        pinned = message.envelope.pinned_routes
        # Ordinary mail never takes an ndr_only route; a report pinned to a route takes only it.
        barred = self._ndr_only if not pinned else frozenset(self._route_names) - set(pinned)
        prefer: tuple[str, ...] = pinned
        todo = recipients
        while todo:
            now = self.clock.now()
            route = self.routes.choose(domain, now, exclude=tried | barred, prefer=prefer)
            if route is None:
                self._hold(message, domain, todo, rnd, now, after_attempt=bool(tried))
                return
            if not await self._take_slot(route, domain):
                # Stopping: this round ends here, the recipients stay queued and are
                # due at the next start. No attempt is spent.
                rnd.next_times.append(now)
                return
            if self.routes.unavailable(route, domain, self.clock.now()):
                # Suspended (or probing) while this message waited for the connection:
                # choose again, so nothing goes out on a route just found blocked.
                self._release_slot(route)
                continue
            try:
                probe = self.routes.begin(route, domain)
                started = self.clock.now()
                outcome = await self.sender.send(route, self._transaction(message, body, todo))
                finished = self.clock.now()
                success = any(rp.is_success for rp in outcome.replies.values())
                self.routes.end(route, domain, probe=probe, success=success)
            finally:
                self._release_slot(route)
            tried.add(route)
            todo, prefer = self._apply(
                message,
                route,
                domain,
                todo,
                outcome,
                rnd,
                (started, finished),
                tried=frozenset(tried),
                probe=probe,
            )

    def _release_slot(self, route: str) -> None:
        self._route_slots[route].release()
        self._slot_freed.set()
        self._slot_freed.clear()

    async def _take_slot(self, route: str, domain: str) -> bool:
        """One of the route's connections (max_connections, and a throttle's lower cap for
        this destination). False when the relay starts stopping while we wait: a
        transaction not yet begun is not begun during shutdown."""
        while self.routes.at_cap(route, domain, self.clock.now()) and not self._stopping:
            await self.clock.sleep_until(self.clock.now() + 1.0, self._slot_freed)
        slots = self._route_slots[route]
        if self._stopping:
            return False
        if not slots.locked():
            await slots.acquire()
            return True
        acquire = asyncio.ensure_future(slots.acquire())
        stopping = asyncio.ensure_future(self._stop_event.wait())
        await asyncio.wait((acquire, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if acquire.done() and not acquire.cancelled():
            if not self._stopping:
                return True
            slots.release()
        acquire.cancel()
        return False

    def _transaction(
        self, message: QueuedMessage, body: bytes, todo: list[Recipient]
    ) -> Transaction:
        env = message.envelope
        dsn_mail = []
        if env.ret:
            dsn_mail.append(f"RET={env.ret}")
        if env.envid:
            dsn_mail.append(f"ENVID={env.envid}")
        return Transaction(
            sender=env.sender,
            recipients=[(r.address, rcpt_upstream_params(r.notify, r.orcpt)) for r in todo],
            body=body,
            mail_options=env.mail_options,
            dsn_mail_options=tuple(dsn_mail),
            dsn_rcpt=True,
        )

    def _hold(
        self,
        message: QueuedMessage,
        domain: str,
        todo: list[Recipient],
        rnd: _Round,
        now: float,
        *,
        after_attempt: bool,
    ) -> None:
        """No route may take this destination now: wait, spending no attempt."""
        wait = self.routes.wait_until(domain, now)
        at = wait if wait is not None else now + PROBE_WAIT
        if now - message.arrival_at >= self.policy.max_lifetime:
            for r in todo:
                last = rnd.recipients[r.address].last_reply or Reply(
                    421,
                    "4.4.7",
                    "message expired while every route was suspended",
                    Phase.CONNECT,
                    synthetic=True,
                )
                rnd.recipients[r.address] = _failed(rnd.recipients[r.address], last, "lifetime")
            log.info(
                "bounced",
                queue_id=message.queue_id,
                message_id=message.message_id,
                recipients=[r.address for r in todo],
                rule="lifetime",
                reason="message lifetime expired while held",
            )
            self.on_event(
                "bounced",
                {"route": "", "rule": "lifetime", "recipients": [r.address for r in todo]},
            )
            return
        rnd.next_times.append(at)
        if not after_attempt:
            log.info(
                "held",
                queue_id=message.queue_id,
                destination=domain,
                until=at,
                recipients=len(todo),
            )

    def _apply(
        self,
        message: QueuedMessage,
        route: str,
        domain: str,
        todo: list[Recipient],
        outcome: Outcome,
        rnd: _Round,
        span: tuple[float, float],
        *,
        tried: frozenset[str],
        probe: bool,
    ) -> tuple[list[Recipient], tuple[str, ...]]:
        """Turn replies into recipient states and attempts; return what to try next, where."""
        tx = _Sent(message, route, domain, outcome, rnd, span, probe)
        groups: dict[Reply, list[Recipient]] = {}
        for r in todo:
            groups.setdefault(outcome.replies[r.address], []).append(r)
        reroute: list[Recipient] = []
        prefer: tuple[str, ...] = ()
        for reply, rcpts in groups.items():
            if reply.is_success:
                self._apply_delivered(tx, reply, rcpts)
                continue
            decision = self._apply_refusal(tx, reply, rcpts, tried)
            for r in rcpts:
                cur = rnd.recipients[r.address]
                if decision.action is Action.BOUNCE:
                    # decision.reply: the last real reply when this one was our own synthetic
                    rnd.recipients[r.address] = _failed(cur, decision.reply, decision.rule)
                elif decision.action is Action.REROUTE:
                    rnd.recipients[r.address] = _with_reply(cur, reply)
                    reroute.append(rnd.recipients[r.address])
                    prefer = decision.reroute_to
                else:
                    rnd.recipients[r.address] = _with_reply(cur, reply)
            if decision.action is Action.DEFER:
                backoff = self.settings.queue.backoff_start
                rnd.next_times.append(decision.retry_at or tx.finished + backoff)
        return reroute, prefer

    def _apply_delivered(self, tx: _Sent, reply: Reply, rcpts: list[Recipient]) -> None:
        rnd = tx.rnd
        addresses = tuple(r.address for r in rcpts)
        for r in rcpts:
            rnd.recipients[r.address] = _delivered(rnd.recipients[r.address], reply, tx.route)
            if not tx.outcome.peer_has_dsn:
                rnd.relayed_without_dsn.add(r.address)
        asked = _second_opinion_asked(rnd.attempts, addresses, tx.route)
        opinion = SecondOpinion.NONE
        if asked is not None:
            opinion = SecondOpinion.ACCEPTED
            self._second_opinion_accepted(asked, tx.domain, tx.finished, rnd)
        after = _last_failure(rnd.attempts, addresses)
        rnd.attempts.append(
            Attempt(
                tx.started,
                tx.route,
                addresses,
                reply,
                "delivered",
                "",
                tx.duration,
                second_opinion=opinion.value,
            )
        )
        self._log(
            "delivered",
            tx,
            addresses,
            reply,
            after=after,
            second_opinion=opinion,
        )

    def _apply_refusal(
        self, tx: _Sent, reply: Reply, rcpts: list[Recipient], tried: frozenset[str]
    ) -> Decision:
        rnd, route, domain = tx.rnd, tx.route, tx.domain
        addresses = tuple(r.address for r in rcpts)
        asked = _second_opinion_asked(rnd.attempts, addresses, route)
        # The other egress did not take it either: the first refusal was not about that
        # route, so it may carry mail to this destination again.
        if asked is not None and self.routes.lift_provisional(asked.route, domain):
            log.info(
                "route_resumed",
                route=asked.route,
                destination=domain,
                reason="the second opinion was not an acceptance",
            )
        mail_route = route in self._mail_routes
        view = RouteView(
            route=route,
            destination=domain,
            routes=self._mail_routes if mail_route else (route,),
            tried_now=tried,
            suspended=self.routes.suspended_routes(domain, tx.finished),
            egresses=self._mail_egresses if mail_route else (),
        )
        decision = decide(
            reply,
            [*tx.message.attempts, *rnd.attempts],
            view,
            tx.finished,
            self.policy,
            arrival_at=tx.message.arrival_at,
            rng=rnd.rng(),
        )
        self._apply_route_effects(decision)
        rnd.attempts.append(
            Attempt(
                tx.started,
                route,
                addresses,
                reply,
                decision.action.value,
                decision.rule,
                tx.duration,
                category=decision.category,
                second_opinion=decision.second_opinion.value,
            )
        )
        event = {
            Action.DEFER: "deferred",
            Action.REROUTE: "rerouted",
            Action.BOUNCE: "bounced",
        }[decision.action]
        self._log(event, tx, addresses, reply, decision=decision)
        return decision

    def _second_opinion_accepted(
        self, asked: Attempt, domain: str, now: float, rnd: _Round
    ) -> None:
        """Another egress took what `asked.route` refused: that refusal was about our
        egress, so the route stays off this destination as for an RBL block."""
        until = now + self.policy.second_opinion_suspend.draw(rnd.rng())
        self._suspend(Suspension(asked.route, domain, until, asked.reply.render(), asked.rule))

    def _suspend(self, suspension: Suspension) -> None:
        self.routes.suspend(suspension)
        log.warning(
            "route_suspended",
            route=suspension.route,
            destination=suspension.destination,
            until=suspension.until,
            reason=suspension.reason,
            rule=suspension.rule,
            provisional=suspension.provisional,
        )
        self.on_event("route_suspended", {"route": suspension.route})

    def _apply_route_effects(self, decision: Decision) -> None:
        if decision.suspend is not None:
            self._suspend(decision.suspend)
        if decision.throttle is not None:
            self.routes.throttle(decision.throttle)
            log.warning(
                "route_throttled",
                route=decision.throttle.route,
                destination=decision.throttle.destination,
                max_connections=decision.throttle.max_connections,
                until=decision.throttle.until,
                rule=decision.throttle.rule,
            )

    def _log(
        self,
        event: str,
        tx: _Sent,
        recipients: tuple[str, ...],
        reply: Reply,
        *,
        decision: Decision | None = None,
        after: Attempt | None = None,
        second_opinion: SecondOpinion = SecondOpinion.NONE,
    ) -> None:
        fields: dict[str, Any] = {
            "queue_id": tx.message.queue_id,
            "message_id": tx.message.message_id,
            "route": tx.route,
            "recipients": list(recipients),
            "code": reply.code,
            "enhanced": reply.enhanced,
            "text": reply.text,
            "remote_host": reply.remote_host,
            "phase": reply.phase.value,
            "duration": round(tx.duration, 4),
        }
        if decision is not None:
            fields["rule"] = decision.rule
            fields["category"] = decision.category
            fields["scope"] = decision.scope
            fields["evidence"] = decision.evidence
            fields["reason"] = decision.reason
            if decision.retry_at is not None:
                fields["retry_at"] = decision.retry_at
            if decision.reroute_to:
                fields["reroute_to"] = list(decision.reroute_to)
            if decision.second_opinion:
                fields["second_opinion"] = decision.second_opinion.value
        elif after is not None:
            # Delivered after a refusal in this round: what that refusal was, and where.
            fields["category"] = after.category
            fields["after_route"] = after.route
            fields["after_rule"] = after.rule
            if second_opinion is SecondOpinion.ACCEPTED:
                fields["second_opinion"] = second_opinion.value
                fields["egress_specific"] = True
                fields["reason"] = (
                    f"{tx.route} accepted what {after.route} refused: the reply was specific "
                    f"to the egress of {after.route}"
                )
        if tx.probe:
            fields["probe"] = True
        if tx.outcome.possible_duplicate:
            fields["possible_duplicate"] = True
        log.info(event, **fields)
        self.on_event(event, fields)


@dataclass(frozen=True, slots=True)
class _Sent:
    """One transaction that came back: what the apply steps share."""

    message: QueuedMessage
    route: str
    domain: str
    outcome: Outcome
    rnd: _Round
    span: tuple[float, float]
    probe: bool

    @property
    def started(self) -> float:
        return self.span[0]

    @property
    def finished(self) -> float:
        return self.span[1]

    @property
    def duration(self) -> float:
        return self.span[1] - self.span[0]


def _second_opinion_asked(
    attempts: Sequence[Attempt], addresses: Sequence[str], route: str
) -> Attempt | None:
    """The attempt of this round that asked another egress about these recipients, when
    this attempt (through `route`) is that other egress's answer."""
    wanted = set(addresses)
    for a in reversed(attempts):
        if wanted & set(a.recipients):
            if a.second_opinion == SecondOpinion.ASKED and a.route != route:
                return a
            return None
    return None


def _last_failure(attempts: Sequence[Attempt], addresses: Sequence[str]) -> Attempt | None:
    """The refusal these recipients had earlier in this round, if any."""
    wanted = set(addresses)
    for a in reversed(attempts):
        if wanted & set(a.recipients) and a.action != "delivered":
            return a
    return None


def _delivered(r: Recipient, reply: Reply, route: str) -> Recipient:
    return replace(r, state=RecipientState.DELIVERED, last_reply=reply, delivered_via=route)


def _failed(r: Recipient, reply: Reply, rule: str) -> Recipient:
    return replace(r, state=RecipientState.FAILED, last_reply=reply, failed_rule=rule)


def _with_reply(r: Recipient, reply: Reply) -> Recipient:
    return replace(r, last_reply=reply)
