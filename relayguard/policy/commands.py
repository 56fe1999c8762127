"""Operator tools behind `relayguard policy check` and `relayguard policy explain`.

Pure functions returning text; the CLI prints it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.model import Action, Phase
from relayguard.policy.corpus import corpus_for, reply_from_line, run_corpus
from relayguard.policy.engine import decide
from relayguard.policy.loader import DEFAULT_POLICY_FILE, load_rules, read_policy_file
from relayguard.policy.rules import PolicyError, RouteView, Rule, human_duration

if TYPE_CHECKING:
    from collections.abc import Sequence

    from relayguard.model import Decision
    from relayguard.policy.rules import Policy


def check_files(files: Sequence[Path], route_names: Sequence[str] | None) -> list[str]:
    """Every problem found in the policy files (the packaged default if none).

    Each file is checked on its own (so one bad file does not hide another's
    problems), then together (ids must be unique across files); a file with a
    golden corpus beside it (`x.toml` → `x.corpus.toml`) must pass it.
    Route names are not checked when route_names is None.
    """
    paths = tuple(Path(f) for f in files) or (DEFAULT_POLICY_FILE,)
    errors: list[str] = []
    for path in paths:
        try:
            read_policy_file(path, route_names)
        except PolicyError as exc:
            errors.append(str(exc))
    if errors:
        return errors
    try:
        load_rules(paths, route_names)
    except PolicyError as exc:
        return [str(exc)]
    for path in paths:
        corpus = corpus_for(path)
        if corpus.is_file():
            try:
                errors.extend(run_corpus(corpus, [path]))
            except PolicyError as exc:
                errors.append(str(exc))
    return errors


def explain(
    policy: Policy,
    *,
    code: int,
    text: str,
    domain: str = "example.com",
    route: str | None = None,
    phase: str = "rcpt",
    routes: Sequence[str],
    now: float = 0.0,
    seed: int = 0,
    synthetic: bool = False,
    tried: Sequence[str] = (),
    suspended: Sequence[str] = (),
) -> str:
    """A multi-line account of which rule matches a reply and what it decides.

    The reply is decided as a first attempt (empty history, arrival at `now`),
    with the given rng seed; `text` may start with the enhanced code.
    """
    try:
        smtp_phase = Phase(phase.lower())
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise ValueError(f"unknown phase {phase!r} (expected one of {known})") from None
    all_routes = tuple(routes)
    via = route if route is not None else (all_routes[0] if all_routes else "default")
    if via not in all_routes:
        all_routes = (*all_routes, via)
    reply = reply_from_line(f"{code} {text}", smtp_phase, synthetic=synthetic)
    view = RouteView(
        route=via,
        destination=domain.lower(),
        routes=all_routes,
        tried_now=frozenset({via, *tried}),
        suspended=frozenset(suspended),
    )
    decision = decide(reply, (), view, now, policy, arrival_at=now, rng=random.Random(seed))

    lines = [
        f"reply:     {reply.render()}",
        f"           phase {smtp_phase.value}, route {via}, domain {view.destination}"
        + (", synthetic (network failure)" if synthetic else ""),
    ]
    rule = policy.rule(decision.rule)
    if rule is not None:
        lines.extend(_explain_rule(rule))
    else:
        lines.append(f"rule:      {decision.rule} (built-in)")
        lines.append(f"           {_BUILTIN_TEXT.get(decision.rule, '')}")
    lines.extend(_explain_decision(decision, now))
    return "\n".join(lines)


_BUILTIN_TEXT = {
    "builtin:fallback-relay": (
        "a network failure while connecting goes to the next usable route at once"
    ),
    "builtin:5xx": "no rule matched; RFC 5321: a 5xx reply is permanent",
    "builtin:4xx": (
        "no rule matched; RFC 5321: a 4xx reply is temporary "
        "(backoff doubling per deferral, capped)"
    ),
    "builtin:lifetime": "the message lifetime has passed",
}


def _explain_rule(rule: Rule) -> list[str]:
    lines = [f"rule:      {rule.id} ({rule.source})"]
    if rule.description:
        lines.append(f"           {rule.description}")
    conditions = rule.match.describe()
    lines.append(f"  matches: {conditions[0]}")
    lines.extend(f"      and: {c}" for c in conditions[1:])
    lines.append(f"  rule:    {'; '.join(_rule_settings(rule))}")
    return lines


def _rule_settings(rule: Rule) -> list[str]:
    settings = [f"action = {rule.action.value}"]
    if rule.treat_as is not None:
        settings.append(f"treat_as = {rule.treat_as.value}")
    if rule.reroute_next:
        settings.append("reroute = next")
    elif rule.reroute:
        settings.append(f"reroute = {', '.join(rule.reroute)}")
    if rule.retry_after is not None:
        settings.append(f"retry_after = {rule.retry_after}")
    if rule.backoff is not None:
        settings.append(str(rule.backoff))
    if rule.suspend_for is not None:
        settings.append(f"suspend_for = {rule.suspend_for} ({rule.suspend_scope.value})")
    if rule.throttle is not None:
        settings.append(
            f"throttle to {rule.throttle.max_connections} connections for {rule.throttle.duration}"
        )
    if rule.give_up_after is not None:
        settings.append(f"give_up_after = {human_duration(rule.give_up_after)}")
    if not rule.bounces and not rule.honor_retry_hint:
        settings.append("retry hints ignored")
    return settings


def _explain_decision(decision: Decision, now: float) -> list[str]:
    lines = [f"decision:  {decision.action.value}"]
    if decision.action is Action.REROUTE:
        lines.append(f"reroute:   now, via {' then '.join(decision.reroute_to)}")
    if decision.retry_at is not None:
        lines.append(
            f"retry:     at {decision.retry_at:.0f} (in {human_duration(decision.retry_at - now)})"
        )
    if decision.action is Action.BOUNCE:
        lines.append(f"bounce:    NDR with {decision.reply.render()}")
    if decision.suspend is not None:
        s = decision.suspend
        where = "every destination" if s.destination == "*" else s.destination
        lines.append(
            f"suspend:   route {s.route} for {where} until {s.until:.0f} "
            f"(for {human_duration(s.until - now)})"
        )
    if decision.throttle is not None:
        t = decision.throttle
        lines.append(
            f"throttle:  route {t.route} for {t.destination} to {t.max_connections} "
            f"connections until {t.until:.0f} (for {human_duration(t.until - now)})"
        )
    lines.append(f"reason:    {decision.reason}")
    return lines
