"""The rules model: what a loaded policy file becomes. Plain values, no I/O."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from relayguard.durations import format_duration, format_duration_range
from relayguard.model import Phase
from relayguard.policy.categories import Category, Classification, Scope

if TYPE_CHECKING:
    import random
    import re

    from relayguard.model import Reply

CONNECTION_PHASES = frozenset({Phase.CONNECT, Phase.GREETING, Phase.HELO, Phase.STARTTLS})


class PolicyError(ValueError):
    """A policy file problem: names the file, the rule and the key."""


class RuleAction(StrEnum):
    """What a rule does. `suspend` and `throttle` are a defer that also does that."""

    DEFER = "defer"
    REROUTE = "reroute"
    BOUNCE = "bounce"
    SUSPEND = "suspend"
    THROTTLE = "throttle"


class TreatAs(StrEnum):
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class SuspendScope(StrEnum):
    """Which destinations a suspension or throttle holds the route back from."""

    DESTINATION = "destination"  # the recipient's domain only
    # Every domain whose MX is at the same provider (dns/providers.py); the domain
    # alone when its provider is not known.
    PROVIDER = "provider"
    ROUTE = "route"  # every destination ('*')


# The one formatter shows round and drawn values alike ('5m', '7m32s'); the engine
# and the policy commands know it by this name.
human_duration = format_duration


@dataclass(frozen=True, slots=True)
class DurationRange:
    """A jittered duration: '5m..10m' draws uniformly in [5m, 10m]; '5m' is fixed."""

    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        # Always consume one draw, so a fixed range does not shift later draws.
        return rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return format_duration_range(self.low, self.high)


@dataclass(frozen=True, slots=True)
class Backoff:
    """start, start*factor, start*factor**2 ... capped at cap (n = earlier deferrals)."""

    start: float
    factor: float
    cap: float

    def delay(self, deferrals: int) -> float:
        value = self.start
        for _ in range(max(0, deferrals)):
            if value >= self.cap:
                break
            value *= self.factor
        return min(self.cap, value)

    def __str__(self) -> str:
        return (
            f"backoff from {format_duration(self.start)}, x{self.factor:g}, "
            f"capped at {format_duration(self.cap)}"
        )


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    max_connections: int
    duration: DurationRange
    scope: SuspendScope | None = None  # None: as for suspensions (see Rule.suspend_scope)


@dataclass(frozen=True, slots=True)
class Match:
    """Every condition given must hold; a list inside one condition means 'any of'."""

    codes: tuple[str, ...] = ()  # "554", "5xx", "45x"
    enhanced: tuple[str, ...] = ()  # "5.7.1", "5.7.*"
    enhanced_re: tuple[re.Pattern[str], ...] = ()
    text: str | None = None
    text_re: re.Pattern[str] | None = None
    phases: tuple[Phase, ...] = ()
    domains: tuple[str, ...] = ()  # exact or glob, lower-case
    routes: tuple[str, ...] = ()
    synthetic: bool | None = None
    categories: tuple[Category, ...] = ()
    scopes: tuple[Scope, ...] = ()
    signals: tuple[str, ...] = ()  # globs over the classification's signal id

    def matches(
        self,
        reply: Reply,
        route: str,
        destination: str,
        classification: Classification | None = None,
    ) -> bool:
        # Cheap checks first; the regex last. A rule on category or scope never
        # matches where no classification is at hand (a [[classify]] override).
        if self.categories and (
            classification is None or classification.category not in self.categories
        ):
            return False
        if self.scopes and (classification is None or classification.scope not in self.scopes):
            return False
        if self.signals and (
            classification is None
            or not any(fnmatch.fnmatchcase(classification.signal, p) for p in self.signals)
        ):
            return False
        return (
            (not self.codes or any(code_matches(p, reply.code) for p in self.codes))
            and (not self.phases or reply.phase in self.phases)
            and (not self.routes or route in self.routes)
            and (self.synthetic is None or reply.synthetic is self.synthetic)
            and (
                not self.domains
                or any(fnmatch.fnmatchcase(destination.lower(), p) for p in self.domains)
            )
            and (
                not self.enhanced_re
                or (
                    reply.enhanced is not None
                    and any(p.fullmatch(reply.enhanced) for p in self.enhanced_re)
                )
            )
            and (self.text_re is None or self.text_re.search(reply.text) is not None)
        )

    def describe(self) -> list[str]:
        lists: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("category is", self.categories),
            ("scope is", self.scopes),
            ("signal is", self.signals),
            ("code is", self.codes),
            ("enhanced code is", self.enhanced),
            ("phase is", tuple(p.value for p in self.phases)),
            ("domain is", self.domains),
            ("route is", self.routes),
        )
        out = [f"{what} {' or '.join(values)}" for what, values in lists if values]
        if self.text is not None:
            out.append(f"text matches /{self.text}/i")
        if self.synthetic is not None:
            out.append("reply is synthetic" if self.synthetic else "reply is not synthetic")
        return out or ["any reply"]


def code_matches(pattern: str, code: int) -> bool:
    """'554' exact, '5xx' class, '55x' subclass."""
    digits = str(code)
    if len(digits) != len(pattern):
        return False
    return all(p in ("x", d) for p, d in zip(pattern, digits, strict=True))


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    action: RuleAction
    match: Match = field(default_factory=Match)
    description: str = ""
    treat_as: TreatAs | None = None
    retry_after: DurationRange | None = None
    backoff: Backoff | None = None
    honor_retry_hint: bool = True
    suspend_for: DurationRange | None = None
    # None: the provider when the reply is about our egress (a block or a reputation
    # throttle holds for every domain that provider hosts), else the domain.
    suspend_scope: SuspendScope | None = None
    reroute: tuple[str, ...] = ()  # explicit route names, in order
    reroute_next: bool = False  # reroute = "next": the configured routes after this one
    give_up_after: float | None = None
    throttle: ThrottleSpec | None = None
    # Ask another egress before bouncing (the second opinion): see engine.py.
    confirm: bool = False
    source: str = ""  # "policies/x.toml rule[2]", for explanations

    @property
    def bounces(self) -> bool:
        return self.action is RuleAction.BOUNCE

    @property
    def reroutes(self) -> bool:
        return self.action is RuleAction.REROUTE


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded policy: the rules in order, then the built-in RFC 5321 behaviour."""

    max_lifetime: float = 5 * 86400.0
    backoff_start: float = 300.0
    backoff_max: float = 4000.0
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    overrides: tuple[ClassifyOverride, ...] = ()  # [[classify]] tables, in file order
    # Extra attempts through another egress before a 5xx bounces (0: never ask).
    second_opinions: int = 1
    # How long the first route stays off the destination once another egress took
    # the mail it refused (and, provisionally, while that second opinion is out).
    second_opinion_suspend: DurationRange = field(
        default_factory=lambda: DurationRange(300.0, 600.0)
    )

    def builtin_backoff(self, deferrals: int) -> float:
        """Postfix-like: backoff_start doubling per earlier deferral, capped at backoff_max."""
        return Backoff(self.backoff_start, 2.0, self.backoff_max).delay(deferrals)

    def rule(self, rule_id: str) -> Rule | None:
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None


@dataclass(frozen=True, slots=True)
class RouteView:
    """What the policy may know of the routes when it decides."""

    route: str  # the route the reply came through
    destination: str  # recipient domain, lower-case
    routes: tuple[str, ...]  # every configured route, in order
    tried_now: frozenset[str] = frozenset()  # routes already tried in this delivery round
    suspended: frozenset[str] = frozenset()  # routes suspended for this destination
    # Where each route leaves from ("host|source address"), in the order of `routes`;
    # a second opinion must come from another egress. Empty: every route is its own.
    egresses: tuple[str, ...] = ()
    # The destination's provider key ("provider:microsoft") when its MX is at a known
    # provider; None: the domain is its own key.
    provider: str | None = None

    def key(self, scope: SuspendScope) -> str:
        """The destination key a suspension or throttle of this scope is stored under."""
        if scope is SuspendScope.ROUTE:
            return "*"
        if scope is SuspendScope.PROVIDER and self.provider:
            return self.provider
        return self.destination

    def egress(self, route: str) -> str:
        if self.egresses and route in self.routes:
            return self.egresses[self.routes.index(route)]
        return route

    def next_routes(self) -> tuple[str, ...]:
        """The configured routes after this one (wrapping round), usable right now."""
        routes = self.routes
        start = routes.index(self.route) + 1 if self.route in routes else 0
        ordered = routes[start:] + routes[:start]
        return self.usable(ordered)

    def usable(self, candidates: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for r in candidates:
            if (
                r in self.routes
                and r != self.route
                and r not in self.tried_now
                and r not in self.suspended
                and r not in out
            ):
                out.append(r)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class ClassifyOverride:
    """An operator's reading of some replies: `[[classify]]` in a policy file."""

    id: str
    match: Match
    category: Category
    scope: Scope | None = None
    source: str = ""
