"""decide(reply, history, route_state, now, policy) -> Decision.

Pure: no clock, no I/O, all randomness from the rng handed in. The order is

1. built-in fallback relay: a synthetic (network) failure while connecting goes
   to the next usable route at once, as Postfix's fallback relay does;
2. the reply is classified (classify.py: category, scope, evidence, retry hint),
   with the policy's [[classify]] overrides first;
3. the policy's rules, first match wins; a rule may match the text, the codes or
   the classification;
4. built-in RFC 5321 semantics: 5xx bounces (after a second opinion), anything
   else defers with a Postfix-like exponential backoff.

The second opinion: a bounce by a `confirm = true` rule or by the built-in 5xx is
first tried once through another mail route that leaves from another egress
(another smarthost, or the same one from another source address), if one exists
that this message has not tried. Bouncing a reply that was about our egress loses
mail; one extra attempt only delays an NDR. Meanwhile the first route is held
back from the destination provisionally, so that messages waiting for it do not
go out on it; the queue manager makes that a real suspension when the other
egress takes the mail, and lifts it when that one refuses too.

Whatever defers is bounded by the message lifetime and by the rule's own
give_up_after cap; past either, the recipient bounces with the last real reply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from relayguard.config import format_duration
from relayguard.model import (
    Action,
    Attempt,
    Decision,
    Reply,
    SecondOpinion,
    Suspension,
    Throttle,
    domain_of,
)
from relayguard.policy.categories import Scope
from relayguard.policy.classify import classify
from relayguard.policy.rules import (
    CONNECTION_PHASES,
    Policy,
    PolicyError,
    RouteView,
    Rule,
    SuspendScope,
    human_duration,
)

if TYPE_CHECKING:
    import random
    from collections.abc import Sequence

    from relayguard.policy.categories import Classification

__all__ = [
    "BUILTIN_4XX",
    "BUILTIN_5XX",
    "BUILTIN_FALLBACK",
    "BUILTIN_LIFETIME",
    "Policy",
    "PolicyError",
    "RouteView",
    "decide",
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
    found = classify(
        reply,
        destination=route_state.destination,
        route=route_state.route,
        overrides=policy.overrides,
    )
    ctx = _Context(reply, mine, route_state, now, policy, arrival_at, rng, found)
    decision = _decide(ctx)
    decision = replace(
        decision,
        category=found.category.value,
        scope=found.scope.value,
        evidence=f"{found.signal}: {found.evidence}",
    )
    return ctx.after_second_opinion(decision)


def _decide(ctx: _Context) -> Decision:
    reply, view = ctx.reply, ctx.view
    if reply.synthetic and reply.phase in CONNECTION_PHASES:
        targets = view.next_routes()
        if targets:
            return Decision(
                Action.REROUTE,
                BUILTIN_FALLBACK,
                reply,
                reroute_to=targets,
                reason=(
                    f"route {view.route} unreachable ({reply.phase.value}); trying {targets[0]}"
                ),
            )

    for rule in ctx.policy.rules:
        if rule.match.matches(reply, view.route, view.destination, ctx.classification):
            return ctx.apply(rule)

    if reply.code >= 500:
        return ctx.bounce(BUILTIN_5XX, "permanent failure (5xx reply)", confirm=True)
    deferrals = sum(1 for a in ctx.history if a.action == Action.DEFER.value)
    return ctx.defer(
        rule_id=BUILTIN_4XX,
        what="temporary failure",
        delay=ctx.hinted(ctx.policy.builtin_backoff(deferrals), honor=True),
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
    classification: Classification

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
        hint = self.classification.retry_in
        if not honor or hint is None:
            return delay
        return hint + self.rng.uniform(0.0, min(_HINT_JITTER_MAX, hint * _HINT_JITTER))

    # -- the second opinion -------------------------------------------------------------

    def asked(self) -> Attempt | None:
        """The attempt that asked another egress for a second opinion, if any."""
        return next(
            (a for a in reversed(self.history) if a.second_opinion == SecondOpinion.ASKED),
            None,
        )

    def second_opinion_routes(self) -> tuple[str, ...]:
        """Mail routes that leave from an egress this message has not tried, usable now."""
        view = self.view
        tried = {a.route for a in self.history} | set(view.tried_now) | {view.route}
        tried_egress = {view.egress(r) for r in tried}
        return tuple(
            r
            for r in view.usable(view.routes)
            if r not in tried and view.egress(r) not in tried_egress
        )

    def bounce(self, rule_id: str, what: str, *, confirm: bool) -> Decision:
        """Bounce, unless a second opinion is still to be had (confirm)."""
        asked = sum(1 for a in self.history if a.second_opinion == SecondOpinion.ASKED)
        if confirm and self.reply.code >= 500 and asked < self.policy.second_opinions:
            targets = self.second_opinion_routes()
            if targets:
                held = self.now + self.policy.second_opinion_suspend.draw(self.rng)
                return Decision(
                    Action.REROUTE,
                    rule_id,
                    self.reply,
                    reroute_to=targets,
                    suspend=Suspension(
                        self.view.route,
                        self.view.destination,
                        held,
                        self.reply.render(),
                        rule_id,
                        provisional=True,
                        category=self.classification.category.value,
                    ),
                    second_opinion=SecondOpinion.ASKED,
                    reason=(
                        f"{what}; asking {targets[0]} (another egress) for a second opinion "
                        "before bouncing"
                    ),
                )
        return Decision(Action.BOUNCE, rule_id, self.last_real_reply(), reason=what)

    def after_second_opinion(self, decision: Decision) -> Decision:
        """A bounce on the route that gave the second opinion names both refusals."""
        asked = self.asked()
        if (
            decision.action is not Action.BOUNCE
            or asked is None
            or asked.route == self.view.route
            or decision.second_opinion is not SecondOpinion.NONE
        ):
            return decision
        return replace(
            decision,
            second_opinion=SecondOpinion.REFUSED,
            reason=(
                f"{decision.reason}; refused through {asked.route} "
                f"({asked.reply.render()}) and, as a second opinion, through {self.view.route}"
            ),
        )

    # -- rules --------------------------------------------------------------------------

    def apply(self, rule: Rule) -> Decision:
        what = base = rule.description or f"matched rule {rule.id}"
        if rule.bounces:
            return self.bounce(rule.id, what, confirm=rule.confirm)

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

    def scope_of(self, given: SuspendScope | None) -> SuspendScope:
        """A rule's scope, or the default: what blocks or throttles our egress holds for
        the whole provider (every domain it hosts refuses the same address)."""
        if given is not None:
            return given
        if self.classification.scope is Scope.EGRESS:
            return SuspendScope.PROVIDER
        return SuspendScope.DESTINATION

    def _suspension(self, rule: Rule) -> Suspension | None:
        if rule.suspend_for is None:
            return None
        until = self.now + rule.suspend_for.draw(self.rng)
        key = self.view.key(self.scope_of(rule.suspend_scope))
        return Suspension(
            self.view.route,
            key,
            until,
            self.reply.render(),
            rule.id,
            category=self.classification.category.value,
        )

    def _throttle(self, rule: Rule) -> Throttle | None:
        if rule.throttle is None:
            return None
        until = self.now + rule.throttle.duration.draw(self.rng)
        return Throttle(
            self.view.route,
            self.view.key(self.scope_of(rule.throttle.scope)),
            rule.throttle.max_connections,
            until,
            rule.id,
        )
