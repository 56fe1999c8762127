"""Operator tools behind `relayguard policy check | explain | classify`.

Pure functions returning text or plain data; the CLI prints it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.dns.providers import ProviderTable, describe_key, provider_key
from relayguard.model import Action, Phase, SecondOpinion
from relayguard.policy.categories import CATEGORY_MEANING, Category
from relayguard.policy.classify import classify
from relayguard.policy.corpus import corpus_for, run_corpus
from relayguard.policy.engine import decide
from relayguard.policy.loader import DEFAULT_POLICY_FILE, load_rules, read_policy_file
from relayguard.policy.reply_corpus import check_corpus, confusion_table, load_reply_corpus
from relayguard.policy.reply_line import reply_from_line
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


def corpus_report(files: Sequence[Path], route_names: Sequence[str] | None) -> tuple[str, int]:
    """The reply corpus classified with these files' [[classify]] overrides: the
    confusion table, then each line classified otherwise than labelled; and how many
    such lines there are."""
    paths = tuple(Path(f) for f in files) or (DEFAULT_POLICY_FILE,)
    overrides = load_rules(paths, route_names).overrides
    confusion, failures = check_corpus(load_reply_corpus(), overrides)
    return "\n".join([confusion_table(confusion), *failures]), len(failures)


# The routes `policy classify` decides with: a fresh message, two mail routes that
# leave from different egresses, the first one tried.
CLASSIFY_ROUTES = ("primary", "backup")


def classify_line(policy: Policy, line: str, *, domain: str = "example.com") -> dict[str, object]:
    """One reply in log form → what it is and what the default decision would be on the
    first attempt of a fresh message with two mail routes."""
    reply = reply_from_line(line)
    found = classify(reply, destination=domain, overrides=policy.overrides)
    view = RouteView(
        route=CLASSIFY_ROUTES[0],
        destination=domain,
        routes=CLASSIFY_ROUTES,
        tried_now=frozenset({CLASSIFY_ROUTES[0]}),
    )
    if reply.is_success:
        action, rule = "delivered", ""
    else:
        decision = decide(reply, (), view, 0.0, policy, arrival_at=0.0, rng=random.Random(0))
        action, rule = decision.action.value, decision.rule
    return {
        "reply": line,
        "category": found.category.value,
        "scope": found.scope.value,
        "rule": rule,
        "evidence": f"{found.signal}: {found.evidence}",
        "action": action,
        "retry_in": found.retry_in,
    }


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
    mx: Sequence[str] = (),
    providers: ProviderTable | None = None,
) -> str:
    """A multi-line account of which rule matches a reply and what it decides.

    The reply is decided as a first attempt (empty history, arrival at `now`),
    with the given rng seed; `text` may start with the enhanced code. `mx`: the
    domain's MX hosts, most preferred first, for its provider key (looked up in
    `providers`, the shipped table by default).
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
    table = providers or ProviderTable.build()
    provider = table.provider_of((i, host) for i, host in enumerate(mx))
    view = RouteView(
        route=via,
        destination=domain.lower(),
        routes=all_routes,
        tried_now=frozenset({via, *tried}),
        suspended=frozenset(suspended),
        provider=provider_key(provider) if provider else None,
    )
    decision = decide(reply, (), view, now, policy, arrival_at=now, rng=random.Random(seed))

    lines = [
        f"reply:     {reply.render()}",
        f"           phase {smtp_phase.value}, route {via}, domain {view.destination}"
        + (", synthetic (network failure)" if synthetic else ""),
        f"provider:  {_provider_line(provider, mx)}",
        f"category:  {decision.category} ({CATEGORY_MEANING[Category(decision.category)]})",
        f"scope:     {decision.scope}",
        f"evidence:  {decision.evidence}",
    ]
    rule = policy.rule(decision.rule)
    if rule is not None:
        lines.extend(_explain_rule(rule))
    else:
        lines.append(f"rule:      {decision.rule} (built-in)")
        lines.append(f"           {_BUILTIN_TEXT.get(decision.rule, '')}")
    lines.extend(_explain_decision(decision, now))
    return "\n".join(lines)


def _provider_line(provider: str | None, mx: Sequence[str]) -> str:
    if provider is not None:
        return f"{provider} (MX {', '.join(mx)}): key {provider_key(provider)}"
    if mx:
        return f"none known for MX {', '.join(mx)}: the domain is its own key"
    return (
        "not given (the relay finds it from the domain's MX; --mx HOST shows it): "
        "the domain is its own key here"
    )


_BUILTIN_TEXT = {
    "builtin:fallback-relay": (
        "a network failure while connecting goes to the next usable route at once"
    ),
    "builtin:5xx": (
        "no rule matched; RFC 5321: a 5xx reply is permanent "
        "(after a second opinion from another egress, if one is left)"
    ),
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


_AUTO_SCOPE = "the provider when about our egress, else the destination"


def _rule_settings(rule: Rule) -> list[str]:
    reroute = "reroute = next" if rule.reroute_next else ""
    if rule.reroute:
        reroute = f"reroute = {', '.join(rule.reroute)}"
    throttle = rule.throttle
    settings = (
        f"action = {rule.action.value}",
        f"treat_as = {rule.treat_as.value}" if rule.treat_as is not None else "",
        reroute,
        f"retry_after = {rule.retry_after}" if rule.retry_after is not None else "",
        str(rule.backoff) if rule.backoff is not None else "",
        (
            f"suspend_for = {rule.suspend_for} "
            f"({rule.suspend_scope.value if rule.suspend_scope else _AUTO_SCOPE})"
            if rule.suspend_for is not None
            else ""
        ),
        (
            f"throttle to {throttle.max_connections} connections for {throttle.duration}"
            if throttle is not None
            else ""
        ),
        (
            f"give_up_after = {human_duration(rule.give_up_after)}"
            if rule.give_up_after is not None
            else ""
        ),
        "confirm = true (a second opinion from another egress first)" if rule.confirm else "",
        "retry hints ignored" if not rule.bounces and not rule.honor_retry_hint else "",
    )
    return [s for s in settings if s]


def _explain_decision(decision: Decision, now: float) -> list[str]:
    lines = [f"decision:  {decision.action.value}"]
    if decision.action is Action.REROUTE:
        lines.append(f"reroute:   now, via {' then '.join(decision.reroute_to)}")
    if decision.retry_at is not None:
        lines.append(
            f"retry:     at {decision.retry_at:.0f} (in {human_duration(decision.retry_at - now)})"
        )
    if decision.second_opinion is SecondOpinion.ASKED and decision.reroute_to:
        lines.append(
            f"second opinion: {decision.reroute_to[0]} (another egress) is asked before "
            "bouncing; accepted there, this route is suspended for the destination, "
            "refused there too, the recipient bounces with both replies"
        )
    if decision.action is Action.BOUNCE:
        lines.append(f"bounce:    NDR with {decision.reply.render()}")
    if decision.suspend is not None:
        s = decision.suspend
        lines.append(
            f"suspend:   route {s.route} for {describe_key(s.destination)} until {s.until:.0f} "
            f"(for {human_duration(s.until - now)})"
            + (", provisionally, while the second opinion is out" if s.provisional else "")
        )
    if decision.throttle is not None:
        t = decision.throttle
        lines.append(
            f"throttle:  route {t.route} for {describe_key(t.destination)} to "
            f"{t.max_connections} "
            f"connections until {t.until:.0f} (for {human_duration(t.until - now)})"
        )
    lines.append(f"reason:    {decision.reason}")
    return lines
