"""One message's delivery round, sans I/O: what to send where, and what the replies mean.

In the style of dnspython's `_Resolution`: the driver asks `next_step(now)` and
gets *send this transaction on this route* (`Send`), *nothing to start now*
(`Blocked`: waiting for a connection or for transactions in flight) or *the round
is over* (`Done`: the message as it now stands, and the reports wanted); it hands
every transaction's outcome back with `record(...)`. The live queue manager
(queue/manager.py) and the replay (replay/driver.py) are two such drivers.

The round owns the choices: the route is chosen when the route table grants a
connection (so a route suspended while the message waited is never used),
reroutes and the second opinion, holds while every route is suspended, and the
message lifetime. The policy decides each reply (policy/engine.py); the route
table (queue/scheduler.py) is shared by all rounds and is the one owner of
suspensions, throttles, probes and connection caps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from relayguard.model import (
    Action,
    Attempt,
    Decision,
    MessageState,
    Outcome,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
    SecondOpinion,
    Suspension,
    Transaction,
)
from relayguard.policy import Policy, RouteView, decide
from relayguard.policy.categories import Category
from relayguard.queue.scheduler import Grant, RouteTable, destination_keys

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# Seconds a message waits while another probes a route that just came back.
PROBE_WAIT = 30.0
LIFETIME_RULE = "lifetime"

Event = tuple[str, dict[str, Any]]  # a log event name and its fields


@dataclass(frozen=True, slots=True)
class Routes:
    """The configured routes as a round needs them (from the settings, once)."""

    names: tuple[str, ...]  # every route, in order
    ndr_only: frozenset[str] = frozenset()
    egress: dict[str, str] = field(default_factory=dict)  # route → "host|source address"

    @property
    def mail(self) -> tuple[str, ...]:
        return tuple(r for r in self.names if r not in self.ndr_only)

    def view(
        self,
        route: str,
        destination: str,
        tried: frozenset[str],
        suspended: frozenset[str],
        provider: str | None = None,
    ) -> RouteView:
        mail = self.mail
        if route not in mail:  # an ndr_only route deciding a report: only itself
            return RouteView(route, destination, (route,), tried, suspended, provider=provider)
        return RouteView(
            route,
            destination,
            mail,
            tried,
            suspended,
            egresses=tuple(self.egress.get(r, r) for r in mail),
            provider=provider,
        )


# -- steps ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this transaction through this route (a connection is already granted)."""

    domain: str
    route: str
    transaction: Transaction
    recipients: tuple[str, ...]
    probe: bool


@dataclass(frozen=True, slots=True)
class Blocked:
    """Nothing to start now. `for_connection`: a destination waits for a connection
    of its route (wake on any released connection); else only sends are in flight."""

    for_connection: bool


@dataclass(frozen=True, slots=True)
class Done:
    """The round is over: the message as it stands, and who needs which report."""

    message: QueuedMessage
    attempts: tuple[Attempt, ...]  # this round's, already in message.attempts
    failed: tuple[Recipient, ...]  # newly failed: an NDR
    delayed: tuple[Recipient, ...]  # past [queue] delay_warning: a delay report
    relayed: tuple[Recipient, ...]  # NOTIFY=SUCCESS through a peer without DSN
    # Destination keys (domains, providers) the message waits on: held while every
    # route was suspended, or deferred after a block; lifting such a suspension
    # early makes it due at once.
    waiting: tuple[str, ...] = ()


Step = Send | Blocked | Done


@dataclass(slots=True)
class _Destination:
    domain: str
    todo: list[Recipient]
    provider: str | None = None  # its provider key, when its MX is at a known provider
    tried: set[str] = field(default_factory=set)
    prefer: tuple[str, ...] = ()
    in_flight: Send | None = None
    waiting: bool = False  # its route is at its connection cap


class DeliveryRound:
    """One delivery round of one message. Pure: time comes in, steps and events go out."""

    def __init__(
        self,
        message: QueuedMessage,
        body: bytes,
        policy: Policy,
        routes: Routes,
        table: RouteTable,
        *,
        delay_warning: float = 0.0,
        backoff_start: float = 300.0,
        providers: Mapping[str, str] | None = None,
    ) -> None:
        """`providers`: the provider key of each domain that has one (dns/mx.py), looked
        up before the round; a domain not in it is its own key."""
        self.message = message
        self.body = body
        self.policy = policy
        self.routes = routes
        self.table = table
        self.delay_warning = delay_warning
        self.backoff_start = backoff_start
        self.recipients = {r.address: r for r in message.envelope.recipients}
        self.before = {r.address: r.state for r in message.envelope.recipients}
        self.attempts: list[Attempt] = []
        self.next_times: list[float] = []
        self.relayed_without_dsn: set[str] = set()
        self.events: list[Event] = []
        self.waiting: set[str] = set()
        self._seed = f"{message.queue_id}/{len(message.attempts)}"
        self._rng: random.Random | None = None
        pinned = message.envelope.pinned_routes
        # Ordinary mail never takes an ndr_only route; a report pinned to a route takes only it.
        self.barred = routes.ndr_only if not pinned else frozenset(routes.names) - set(pinned)
        by_domain: dict[str, list[Recipient]] = {}
        for r in message.pending:
            by_domain.setdefault(r.domain, []).append(r)
        keys = providers or {}
        self.destinations = [
            _Destination(d, rs, keys.get(d.lower()), prefer=pinned) for d, rs in by_domain.items()
        ]
        self._done: Done | None = None

    def rng(self) -> random.Random:
        """Seeded on first use (most rounds end in a delivery and draw nothing); the same
        round of the same message always draws the same jitter."""
        if self._rng is None:
            self._rng = random.Random(self._seed)
        return self._rng

    def drain_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    # -- the driver's side ------------------------------------------------------------

    def next_step(self, now: float) -> Step:
        """What to do next. A Send holds a granted connection until `record`."""
        if self._done is not None:
            return self._done
        waiting = False
        for dest in self.destinations:
            if dest.in_flight is not None or not dest.todo:
                continue
            grant = self.table.grant(
                dest.domain,
                now,
                exclude=dest.tried | self.barred,
                prefer=dest.prefer,
                provider=dest.provider,
            )
            if isinstance(grant, Grant):
                dest.waiting = False
                send = Send(
                    dest.domain,
                    grant.route,
                    self._transaction(dest.todo),
                    tuple(r.address for r in dest.todo),
                    grant.probe,
                )
                dest.in_flight = send
                return send
            if grant is None:
                self._hold(dest, now)
            else:
                dest.waiting = waiting = True
        if any(d.in_flight is not None for d in self.destinations) or waiting:
            return Blocked(for_connection=waiting)
        self._done = self._finish(now)
        return self._done

    def record(self, send: Send, outcome: Outcome, started: float, finished: float) -> None:
        """A transaction's outcome: release its connection, decide every reply."""
        dest = next(d for d in self.destinations if d.in_flight is send)
        dest.in_flight = None
        success = any(rp.is_success for rp in outcome.replies.values())
        self.table.release(
            send.route, send.domain, probe=send.probe, success=success, provider=dest.provider
        )
        dest.tried.add(send.route)
        dest.todo, dest.prefer = self._apply(dest, send, outcome, (started, finished))

    def unsend(self, send: Send) -> None:
        """A granted send that will not go out (shutdown): its connection back, and no
        attempt spent; the recipients stay as they were."""
        dest = next(d for d in self.destinations if d.in_flight is send)
        dest.in_flight = None
        self.table.release(
            send.route, send.domain, probe=send.probe, success=False, provider=dest.provider
        )

    def stop(self, now: float) -> None:
        """Stopping: destinations not yet sent stay queued, due at the next start; no
        attempt is spent. Sends in flight are recorded (or cut) by the driver."""
        for dest in self.destinations:
            if dest.in_flight is None and dest.todo:
                dest.todo = []
                self.next_times.append(now)

    # -- holding -----------------------------------------------------------------------

    def _hold(self, dest: _Destination, now: float) -> None:
        """No route may take this destination now: wait, spending no attempt; past the
        message lifetime, bounce."""
        todo, dest.todo = dest.todo, []
        if now - self.message.arrival_at >= self.policy.max_lifetime:
            for r in todo:
                last = self.recipients[r.address].last_reply or Reply(
                    421,
                    "4.4.7",
                    "message expired while every route was suspended",
                    Phase.CONNECT,
                    synthetic=True,
                )
                self.recipients[r.address] = failed(self.recipients[r.address], last, LIFETIME_RULE)
            self._event(
                "bounced",
                {
                    "route": "",
                    "rule": LIFETIME_RULE,
                    "recipients": [r.address for r in todo],
                    "reason": "message lifetime expired while held",
                },
            )
            return
        self.waiting.update(destination_keys(dest.domain, dest.provider))
        wait = self.table.wait_until(dest.domain, now, provider=dest.provider)
        self.next_times.append(wait if wait is not None else now + PROBE_WAIT)
        if not dest.tried:
            self._event(
                "held",
                {"destination": dest.domain, "until": self.next_times[-1], "recipients": len(todo)},
            )

    # -- replies -----------------------------------------------------------------------

    def _apply(
        self, dest: _Destination, send: Send, outcome: Outcome, span: tuple[float, float]
    ) -> tuple[list[Recipient], tuple[str, ...]]:
        """Turn replies into recipient states and attempts; return what to try next, where."""
        groups: dict[Reply, list[Recipient]] = {}
        for r in dest.todo:
            groups.setdefault(outcome.replies[r.address], []).append(r)
        reroute: list[Recipient] = []
        prefer: tuple[str, ...] = ()
        for reply, rcpts in groups.items():
            if reply.is_success:
                self._delivered(dest, send, outcome, reply, rcpts, span)
                continue
            decision = self._refused(dest, send, outcome, reply, rcpts, span)
            for r in rcpts:
                cur = self.recipients[r.address]
                if decision.action is Action.BOUNCE:
                    # decision.reply: the last real reply when this one was our own synthetic
                    self.recipients[r.address] = failed(cur, decision.reply, decision.rule)
                elif decision.action is Action.REROUTE:
                    self.recipients[r.address] = replace(cur, last_reply=reply)
                    reroute.append(self.recipients[r.address])
                    prefer = decision.reroute_to
                else:
                    self.recipients[r.address] = replace(cur, last_reply=reply)
            if decision.action is Action.DEFER:
                self.next_times.append(decision.retry_at or span[1] + self.backoff_start)
                if decision.category == Category.RBL_BLOCK:
                    self.waiting.update(destination_keys(dest.domain, dest.provider))
        return reroute, prefer

    def _delivered(
        self,
        dest: _Destination,
        send: Send,
        outcome: Outcome,
        reply: Reply,
        rcpts: list[Recipient],
        span: tuple[float, float],
    ) -> None:
        addresses = tuple(r.address for r in rcpts)
        for r in rcpts:
            self.recipients[r.address] = replace(
                self.recipients[r.address],
                state=RecipientState.DELIVERED,
                last_reply=reply,
                delivered_via=send.route,
            )
            if not outcome.peer_has_dsn:
                self.relayed_without_dsn.add(r.address)
        asked = _asked(self.attempts, addresses, send.route)
        opinion = SecondOpinion.NONE
        if asked is not None:
            # Another egress took what asked.route refused: that refusal was about our
            # egress, so the route stays off the destination as for an RBL block, and
            # off every domain of its provider, which judges our address alike.
            opinion = SecondOpinion.ACCEPTED
            until = span[1] + self.policy.second_opinion_suspend.draw(self.rng())
            self._suspend(
                Suspension(
                    asked.route,
                    dest.provider or send.domain,
                    until,
                    asked.reply.render(),
                    asked.rule,
                    category=asked.category,
                )
            )
        after = _last_failure(self.attempts, addresses)
        self.attempts.append(
            Attempt(
                span[0],
                send.route,
                addresses,
                reply,
                "delivered",
                "",
                span[1] - span[0],
                second_opinion=opinion.value,
            )
        )
        fields = self._fields(send, outcome, addresses, reply, span)
        if after is not None:
            # Delivered after a refusal in this round: what that refusal was, and where.
            fields.update(category=after.category, after_route=after.route, after_rule=after.rule)
            if opinion is SecondOpinion.ACCEPTED:
                fields.update(
                    second_opinion=opinion.value,
                    egress_specific=True,
                    reason=(
                        f"{send.route} accepted what {after.route} refused: the reply was "
                        f"specific to the egress of {after.route}"
                    ),
                )
        self._event("delivered", fields)

    def _refused(
        self,
        dest: _Destination,
        send: Send,
        outcome: Outcome,
        reply: Reply,
        rcpts: list[Recipient],
        span: tuple[float, float],
    ) -> Decision:
        addresses = tuple(r.address for r in rcpts)
        asked = _asked(self.attempts, addresses, send.route)
        # The other egress did not take it either: the first refusal was not about that
        # route, so it may carry mail to this destination again.
        if asked is not None and self.table.lift_provisional(asked.route, dest.domain):
            self._event(
                "route_resumed",
                {
                    "route": asked.route,
                    "destination": dest.domain,
                    "reason": "the second opinion was not an acceptance",
                },
            )
        view = self.routes.view(
            send.route,
            dest.domain,
            frozenset(dest.tried),
            self.table.suspended_routes(dest.domain, span[1], provider=dest.provider),
            dest.provider,
        )
        decision = decide(
            reply,
            [*self.message.attempts, *self.attempts],
            view,
            span[1],
            self.policy,
            arrival_at=self.message.arrival_at,
            rng=self.rng(),
        )
        if decision.suspend is not None:
            self._suspend(decision.suspend)
        if decision.throttle is not None:
            self.table.throttle(decision.throttle)
            self._event("route_throttled", decision.throttle.to_dict())
        self.attempts.append(
            Attempt(
                span[0],
                send.route,
                addresses,
                reply,
                decision.action.value,
                decision.rule,
                span[1] - span[0],
                category=decision.category,
                second_opinion=decision.second_opinion.value,
                scope=decision.scope,
            )
        )
        fields = self._fields(send, outcome, addresses, reply, span)
        fields.update(
            rule=decision.rule,
            category=decision.category,
            scope=decision.scope,
            evidence=decision.evidence,
            reason=decision.reason,
        )
        if decision.retry_at is not None:
            fields["retry_at"] = decision.retry_at
        if decision.reroute_to:
            fields["reroute_to"] = list(decision.reroute_to)
        if decision.second_opinion:
            fields["second_opinion"] = decision.second_opinion.value
        event = {Action.DEFER: "deferred", Action.REROUTE: "rerouted", Action.BOUNCE: "bounced"}
        self._event(event[decision.action], fields)
        return decision

    def _suspend(self, suspension: Suspension) -> None:
        self.table.suspend(suspension)
        self._event("route_suspended", suspension.to_dict())

    # -- the end of the round ------------------------------------------------------------

    def _finish(self, now: float) -> Done:
        message = self.message
        recipients = tuple(self.recipients[r.address] for r in message.envelope.recipients)
        failed_now = tuple(
            r
            for r in recipients
            if r.state is RecipientState.FAILED and self.before[r.address] is RecipientState.QUEUED
        )
        relayed = tuple(
            r for r in recipients if r.address in self.relayed_without_dsn and "SUCCESS" in r.notify
        )
        pending = [r for r in recipients if r.state is RecipientState.QUEUED]
        delayed: tuple[Recipient, ...] = ()
        if self.delay_warning and now - message.arrival_at >= self.delay_warning:
            delayed = tuple(r for r in pending if not r.delay_warned)
            warned = {r.address for r in delayed}
            recipients = tuple(
                replace(r, delay_warned=True) if r.address in warned else r for r in recipients
            )
        message.envelope = message.envelope.with_recipients(recipients)
        message.attempts.extend(self.attempts)
        if pending:
            message.next_attempt_at = min(self.next_times) if self.next_times else now
        else:
            message.state = MessageState.DONE
        waiting = tuple(sorted(self.waiting)) if pending else ()
        return Done(message, tuple(self.attempts), failed_now, delayed, relayed, waiting)

    # -- helpers -------------------------------------------------------------------------

    def _transaction(self, todo: Sequence[Recipient]) -> Transaction:
        return Transaction.of(self.message.envelope, todo, self.body)

    def _fields(
        self,
        send: Send,
        outcome: Outcome,
        addresses: tuple[str, ...],
        reply: Reply,
        span: tuple[float, float],
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "route": send.route,
            "recipients": list(addresses),
            "code": reply.code,
            "enhanced": reply.enhanced,
            "text": reply.text,
            "remote_host": reply.remote_host,
            "phase": reply.phase.value,
            "duration": round(span[1] - span[0], 4),
        }
        if send.probe:
            fields["probe"] = True
        if outcome.possible_duplicate:
            fields["possible_duplicate"] = True
        return fields

    def _event(self, name: str, fields: dict[str, Any]) -> None:
        self.events.append(
            (
                name,
                {
                    "queue_id": self.message.queue_id,
                    "message_id": self.message.message_id,
                    **fields,
                },
            )
        )


# -- pure helpers shared with the operator tools ---------------------------------------


def failed(r: Recipient, reply: Reply, rule: str) -> Recipient:
    return replace(r, state=RecipientState.FAILED, last_reply=reply, failed_rule=rule)


def fail_pending(message: QueuedMessage, reply: Reply, rule: str) -> tuple[Recipient, ...]:
    """An operator's bounce: every pending recipient fails now with `reply`; the message
    is done. Returns the recipients failed (for the NDR)."""
    pending = {r.address for r in message.pending}
    message.envelope = message.envelope.with_recipients(
        tuple(
            failed(r, reply, rule) if r.address in pending else r
            for r in message.envelope.recipients
        )
    )
    message.state = MessageState.DONE
    return tuple(r for r in message.envelope.recipients if r.address in pending)


def _asked(attempts: Sequence[Attempt], addresses: Sequence[str], route: str) -> Attempt | None:
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
