"""decide(reply, history, route_state, now, policy) -> Decision.

Pure: no clock, no I/O, all randomness from the rng handed in. The order is

1. built-in fallback relay: a synthetic (network) failure while connecting goes
   to the next usable route at once, as Postfix's fallback relay does;
2. the policy's rules, first match wins;
3. built-in RFC 5321 semantics: 5xx bounces, anything else defers with a
   Postfix-like exponential backoff.

Whatever defers is bounded by the message lifetime and by the rule's own
give_up_after cap; past either, the recipient bounces with the last real reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from relayguard.config import format_duration
from relayguard.model import (
    Action,
    Attempt,
    Decision,
    Reply,
    Suspension,
    Throttle,
    domain_of,
)
from relayguard.policy.hints import retry_hint
from relayguard.policy.loader import load_policy
from relayguard.policy.rules import (
    CONNECTION_PHASES,
    Policy,
    PolicyError,
    RouteView,
    Rule,
    Scope,
    human_duration,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

__all__ = [
    "BUILTIN_4XX",
    "BUILTIN_5XX",
    "BUILTIN_FALLBACK",
    "BUILTIN_LIFETIME",
    "Policy",
    "PolicyError",
    "RouteView",
    "decide",
    "load_policy",
]

BUILTIN_5XX = "builtin:5xx"
BUILTIN_4XX = "builtin:4xx"
BUILTIN_FALLBACK = "builtin:fallback-relay"
BUILTIN_LIFETIME = "builtin:lifetime"

# Jitter added to a server's own "try again in N" so that a crowd of messages
# greylisted together does not come back in the same second.
_HINT_JITTER = 0.1
_HINT_JITTER_MAX = 60.0


def decide(
    reply: Reply,
    history: Sequence[Attempt],
    route_state: RouteView,
    now: float,
    policy: Policy,
    *,
    arrival_at: float,
    rng: random.Random,
) -> Decision:
    """What to do with a recipient after a non-success reply. Never raises."""
    mine = _for_destination(history, route_state.destination)
    ctx = _Context(reply, mine, route_state, now, policy, arrival_at, rng)

    if reply.synthetic and reply.phase in CONNECTION_PHASES:
        targets = route_state.next_routes()
        if targets:
            return Decision(
                Action.REROUTE,
                BUILTIN_FALLBACK,
                reply,
                reroute_to=targets,
                reason=(
                    f"route {route_state.route} unreachable ({reply.phase.value}); "
                    f"trying {targets[0]}"
                ),
            )

    for rule in policy.rules:
        if rule.match.matches(reply, route_state.route, route_state.destination):
            return ctx.apply(rule)

    if reply.code >= 500:
        return Decision(
            Action.BOUNCE,
            BUILTIN_5XX,
            ctx.last_real_reply(),
            reason="permanent failure (5xx reply)",
        )
    deferrals = sum(1 for a in mine if a.action == Action.DEFER.value)
    return ctx.defer(
        rule_id=BUILTIN_4XX,
        what="temporary failure",
        delay=ctx.hinted(policy.builtin_backoff(deferrals), honor=True),
        deadline=ctx.expiry,
        cap_reason="",
    )


def _for_destination(history: Sequence[Attempt], destination: str) -> tuple[Attempt, ...]:
    """The attempts that concern this destination: a message's history holds every
    recipient's, and another domain's deferrals must not speed up this backoff."""
    return tuple(
        a
        for a in history
        if not a.recipients or any(domain_of(r) == destination for r in a.recipients)
    )


@dataclass(frozen=True, slots=True)
class _Context:
    reply: Reply
    history: tuple[Attempt, ...]
    view: RouteView
    now: float
    policy: Policy
    arrival_at: float
    rng: random.Random

    @property
    def expiry(self) -> float:
        return self.arrival_at + self.policy.max_lifetime

    def last_real_reply(self) -> Reply:
        """The reply to report in an NDR: this one, unless it is synthetic and the
        upstream said something real earlier (that is the more useful reason)."""
        if not self.reply.synthetic:
            return self.reply
        for attempt in reversed(self.history):
            if not attempt.reply.synthetic and attempt.reply.code >= 400:
                return attempt.reply
        return self.reply

    def hinted(self, delay: float, *, honor: bool) -> float:
        """The server's own "try again in N" replaces the schedule when honoured."""
        if not honor:
            return delay
        hint = retry_hint(self.reply.text)
        if hint is None:
            return delay
        return hint + self.rng.uniform(0.0, min(_HINT_JITTER_MAX, hint * _HINT_JITTER))

    def apply(self, rule: Rule) -> Decision:
        what = base = rule.description or f"matched rule {rule.id}"
        if rule.bounces:
            return Decision(Action.BOUNCE, rule.id, self.last_real_reply(), reason=what)

        # Draw in a fixed order so that the same seed gives the same decision.
        suspension = self._suspension(rule)
        throttle = self._throttle(rule)

        if rule.reroutes:
            candidates = self.view.next_routes() if rule.reroute_next else rule.reroute
            targets = self.view.usable(candidates)
            if targets:
                return Decision(
                    Action.REROUTE,
                    rule.id,
                    self.reply,
                    reroute_to=targets,
                    suspend=suspension,
                    throttle=throttle,
                    reason=f"{what}; rerouting via {targets[0]}",
                )
            what = f"{what}; no other route left"

        if rule.retry_after is not None:
            delay = rule.retry_after.draw(self.rng)
        elif rule.backoff is not None:
            mine = sum(
                1 for a in self.history if a.action == Action.DEFER.value and a.rule == rule.id
            )
            delay = rule.backoff.delay(mine)
        else:
            deferrals = sum(1 for a in self.history if a.action == Action.DEFER.value)
            delay = self.policy.builtin_backoff(deferrals)
        delay = self.hinted(delay, honor=rule.honor_retry_hint)

        deadline = self.expiry
        cap_reason = ""
        if rule.give_up_after is not None:
            started = min(
                (a.at for a in self.history if a.rule == rule.id), default=self.arrival_at
            )
            cap = started + rule.give_up_after
            if cap < deadline:
                deadline = cap
                cap_reason = f"gave up after {format_duration(rule.give_up_after)}: {base}"
        return self.defer(
            rule_id=rule.id,
            what=what,
            delay=delay,
            deadline=deadline,
            cap_reason=cap_reason,
            suspension=suspension,
            throttle=throttle,
        )

    def defer(
        self,
        *,
        rule_id: str,
        what: str,
        delay: float,
        deadline: float,
        cap_reason: str,
        suspension: Suspension | None = None,
        throttle: Throttle | None = None,
    ) -> Decision:
        """Defer by delay, but never past the deadline; at the deadline, bounce."""
        if self.now >= deadline:
            if cap_reason:
                return Decision(
                    Action.BOUNCE,
                    rule_id,
                    self.last_real_reply(),
                    suspend=suspension,
                    throttle=throttle,
                    reason=cap_reason,
                )
            return Decision(
                Action.BOUNCE,
                BUILTIN_LIFETIME,
                self.last_real_reply(),
                suspend=suspension,
                throttle=throttle,
                reason="message lifetime expired",
            )
        retry_at = min(self.now + delay, deadline)
        return Decision(
            Action.DEFER,
            rule_id,
            self.reply,
            retry_at=retry_at,
            suspend=suspension,
            throttle=throttle,
            reason=f"{what}; retrying in {human_duration(retry_at - self.now)}",
        )

    def _suspension(self, rule: Rule) -> Suspension | None:
        if rule.suspend_for is None:
            return None
        until = self.now + rule.suspend_for.draw(self.rng)
        destination = "*" if rule.suspend_scope is Scope.ROUTE else self.view.destination
        return Suspension(self.view.route, destination, until, self.reply.render(), rule.id)

    def _throttle(self, rule: Rule) -> Throttle | None:
        if rule.throttle is None:
            return None
        until = self.now + rule.throttle.duration.draw(self.rng)
        return Throttle(
            self.view.route,
            self.view.destination,
            rule.throttle.max_connections,
            until,
            rule.id,
        )
