"""Policy TOML files → validated rules. Every error names the file, the rule and the key.

A policy file is a list of `[[rule]]` tables, and optionally `[[classify]]`
tables that override what a reply is taken to mean (see
relayguard/policies/default.toml, which documents every key). Unknown keys are
errors: a typo must not silently turn a rule into a catch-all.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.config import Table, read_text_file
from relayguard.policy import values as v
from relayguard.policy.categories import Category, Scope
from relayguard.policy.rules import (
    Backoff,
    ClassifyOverride,
    DurationRange,
    Match,
    Policy,
    PolicyError,
    Rule,
    RuleAction,
    SuspendScope,
    ThrottleSpec,
    TreatAs,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "policies" / "default.toml"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")

RULE_KEYS = (
    "id",
    "description",
    "match",
    "action",
    "treat_as",
    "retry_after",
    "backoff",
    "honor_retry_hint",
    "suspend_for",
    "suspend_scope",
    "reroute",
    "give_up_after",
    "throttle",
    "confirm",
)
MATCH_KEYS = (
    "code",
    "enhanced",
    "text",
    "phase",
    "domain",
    "route",
    "synthetic",
    "category",
    "scope",
    "signal",
)
CLASSIFY_KEYS = ("id", "description", "match", "category", "scope")
# An override is about what a reply means, not what the classifier made of it.
CLASSIFY_MATCH_KEYS = ("code", "enhanced", "text", "phase", "domain", "route")


def _table(where: str, path: str, table: object) -> Table:
    """One table of a rule: `where` names the file and the rule, `path` the key."""
    return Table(where, path, table, PolicyError)


# --- one rule ------------------------------------------------------------------


def _read_match(
    where: str, table: object, routes: v.RouteNames, known: Sequence[str] = MATCH_KEYS
) -> Match:
    t = _table(where, "match", table)
    enhanced = t.get("enhanced", v.list_of(v.enhanced_code)) or ()
    text_re = t.get("text", v.regex)
    match = Match(
        codes=t.get("code", v.list_of(v.reply_code)) or (),
        enhanced=enhanced,
        enhanced_re=tuple(re.compile(fnmatch.translate(p)) for p in enhanced),
        text=text_re.pattern if text_re is not None else None,
        text_re=text_re,
        phases=t.get("phase", v.list_of(v.phase)) or (),
        domains=t.get("domain", v.list_of(v.domain)) or (),
        routes=t.get("route", v.list_of(routes.check)) or (),
        synthetic=t.get("synthetic", v.boolean),
        categories=t.get("category", v.list_of(v.enum_of(Category, "category"))) or (),
        scopes=t.get("scope", v.list_of(v.enum_of(Scope, "scope"))) or (),
        signals=t.get("signal", v.list_of(v.string)) or (),
    )
    t.finish(known)
    return match


def _read_backoff(where: str, table: object) -> Backoff:
    t = _table(where, "backoff", table)
    start = t.get("start", v.duration)
    if start is None:
        raise t.error("start", "required key is missing (a duration like '5m')")
    factor = t.get("factor", v.factor)
    cap = t.get("cap", v.duration)
    if cap is None:
        raise t.error("cap", "required key is missing (a duration like '1h')")
    if cap < start:
        raise t.error("cap", "expected a cap not below start")
    t.finish(("start", "factor", "cap"))
    return Backoff(start, factor if factor is not None else 2.0, cap)


def _read_throttle(where: str, table: object) -> ThrottleSpec:
    t = _table(where, "throttle", table)
    max_conn = t.get("max_connections", v.connections)
    if max_conn is None:
        raise t.error("max_connections", "required key is missing (a number from 1)")
    duration = t.get("for", v.duration_range)
    if duration is None:
        raise t.error("for", "required key is missing (a duration like '30m')")
    scope = t.get("scope", v.enum_of(SuspendScope, "scope"))
    t.finish(("max_connections", "for", "scope"))
    return ThrottleSpec(max_conn, duration, scope)


def _read_rule(file: str, index: int, table: object, routes: v.RouteNames) -> Rule:
    where = f"{file}: rule[{index}]"
    if isinstance(table, dict) and isinstance(table.get("id"), str):
        where = f"{file}: rule {table['id']!r} (rule[{index}])"
    t = _table(where, "", table)
    rule_id = t.get("id", v.string)
    if rule_id is None:
        raise t.error("id", "required key is missing (a unique rule name)")
    if not _ID.fullmatch(rule_id) or rule_id.startswith("builtin:"):
        raise t.error("id", "expected letters, digits, '.', '_', ':' or '-' (not 'builtin:')")
    treat_as = t.get("treat_as", v.enum_of(TreatAs, "treat_as"))
    action = _read_action(t, treat_as)

    match_table = t.get("match", v.any_value)
    backoff_table = t.get("backoff", v.any_value)
    throttle_table = t.get("throttle", v.any_value)
    reroute = t.get("reroute", v.reroute(routes))
    rule = Rule(
        id=rule_id,
        action=action,
        match=_read_match(where, match_table, routes) if match_table is not None else Match(),
        description=t.get("description", v.string) or "",
        treat_as=treat_as,
        retry_after=t.get("retry_after", v.duration_range),
        backoff=_read_backoff(where, backoff_table) if backoff_table is not None else None,
        honor_retry_hint=t.get("honor_retry_hint", v.boolean) is not False,
        suspend_for=t.get("suspend_for", v.duration_range),
        suspend_scope=t.get("suspend_scope", v.enum_of(SuspendScope, "suspend_scope")),
        reroute=reroute if reroute is not None and reroute != ("next",) else (),
        reroute_next=reroute == ("next",),
        give_up_after=t.get("give_up_after", v.duration),
        throttle=_read_throttle(where, throttle_table) if throttle_table is not None else None,
        confirm=t.get("confirm", v.boolean) is True,
        source=f"{file} rule[{index}]",
    )
    t.finish(RULE_KEYS)
    _check_consistency(t, rule)
    if t.has("confirm") and rule.action is not RuleAction.BOUNCE:
        raise t.error("confirm", "only used with action 'bounce' (ask another egress first)")
    return rule


def _read_action(t: Table, treat_as: TreatAs | None) -> RuleAction:
    action = t.get("action", v.enum_of(RuleAction, "action"))
    if action is None:
        if treat_as is None:
            raise t.error("action", "required key is missing (or give treat_as)")
        return RuleAction.BOUNCE if treat_as is TreatAs.PERMANENT else RuleAction.DEFER
    if treat_as is TreatAs.PERMANENT and action is not RuleAction.BOUNCE:
        raise t.error("treat_as", f"'permanent' means bounce, but action is {action.value!r}")
    if treat_as is TreatAs.TEMPORARY and action is RuleAction.BOUNCE:
        raise t.error("treat_as", "'temporary' contradicts action 'bounce'")
    return action


_NOT_FOR_BOUNCE = (
    "retry_after",
    "backoff",
    "honor_retry_hint",
    "suspend_for",
    "suspend_scope",
    "reroute",
    "give_up_after",
    "throttle",
)


def _check_consistency(t: Table, rule: Rule) -> None:
    """Keys that mean nothing for the chosen action are errors: they would mislead."""
    action = rule.action
    if action is RuleAction.BOUNCE:
        for key in _NOT_FOR_BOUNCE:
            if t.has(key):
                raise t.error(key, "not used with action 'bounce'")
    if t.has("retry_after") and t.has("backoff"):
        raise t.error("backoff", "give either retry_after or backoff, not both")
    if action is RuleAction.REROUTE and not t.has("reroute"):
        raise t.error("reroute", "required for action 'reroute' (\"next\" or a list of routes)")
    if t.has("reroute") and action is not RuleAction.REROUTE:
        raise t.error("reroute", f"only used with action 'reroute', not {action.value!r}")
    if action is RuleAction.SUSPEND and rule.suspend_for is None:
        raise t.error("suspend_for", "required for action 'suspend' (a duration like '5m..10m')")
    if t.has("suspend_scope") and rule.suspend_for is None:
        raise t.error("suspend_scope", "only used together with suspend_for")
    if action is RuleAction.THROTTLE and rule.throttle is None:
        raise t.error("throttle", "required for action 'throttle' ({ max_connections, for })")


# --- files -----------------------------------------------------------------------


def _read_override(file: str, index: int, table: object, routes: v.RouteNames) -> ClassifyOverride:
    where = f"{file}: classify[{index}]"
    if isinstance(table, dict) and isinstance(table.get("id"), str):
        where = f"{file}: classify {table['id']!r} (classify[{index}])"
    t = _table(where, "", table)
    override_id = t.get("id", v.string)
    if override_id is None:
        raise t.error("id", "required key is missing (a unique name)")
    category = t.get("category", v.enum_of(Category, "category"))
    if category is None:
        known = ", ".join(c.value for c in Category)
        raise t.error("category", f"required key is missing (one of {known})")
    match_table = t.get("match", v.any_value)
    if match_table is None:
        raise t.error("match", "required key is missing (which replies this reading is for)")
    t.get("description", v.string)
    override = ClassifyOverride(
        id=override_id,
        match=_read_match(where, match_table, routes, CLASSIFY_MATCH_KEYS),
        category=category,
        scope=t.get("scope", v.enum_of(Scope, "scope")),
        source=f"{file} classify[{index}]",
    )
    t.finish(CLASSIFY_KEYS)
    return override


@dataclass(frozen=True, slots=True)
class PolicyFile:
    rules: tuple[Rule, ...]
    overrides: tuple[ClassifyOverride, ...] = ()


def read_policy_file(path: Path, route_names: Sequence[str] | None) -> PolicyFile:
    """Read and check one policy file (route names are not checked if None)."""
    return parse_policy_text(read_text_file(path, PolicyError), str(path), route_names)


def parse_policy_text(text: str, file: str, route_names: Sequence[str] | None) -> PolicyFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{file}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"rule", "classify"})
    if unknown:
        raise PolicyError(
            f"{file}: {unknown[0]}: unknown top-level key "
            "(expected [[rule]] or [[classify]] tables)"
        )
    routes = v.RouteNames(route_names)
    tables = {}
    for key in ("rule", "classify"):
        raw = data.get(key, [])
        if not isinstance(raw, list):
            raise PolicyError(f"{file}: {key}: expected an array of tables [[{key}]]")
        tables[key] = raw
    return PolicyFile(
        tuple(_read_rule(file, i, r, routes) for i, r in enumerate(tables["rule"])),
        tuple(_read_override(file, i, r, routes) for i, r in enumerate(tables["classify"])),
    )


def load_rules(files: Sequence[Path], route_names: Sequence[str] | None) -> PolicyFile:
    """All rules and overrides of the files, in order, with ids unique across the files."""
    rules: list[Rule] = []
    overrides: list[ClassifyOverride] = []
    seen: dict[str, str] = {}
    for path in files:
        read = read_policy_file(path, route_names)
        named: list[tuple[str, str, str]] = [("rule", r.id, r.source) for r in read.rules]
        named += [("classify", o.id, o.source) for o in read.overrides]
        for kind, item_id, source in named:
            first = seen.get(item_id)
            if first is not None:
                index = source.rpartition(" ")[2]
                raise PolicyError(
                    f"{path}: {kind} {item_id!r} ({index}): id: duplicate id, first used in {first}"
                )
            seen[item_id] = source
        rules.extend(read.rules)
        overrides.extend(read.overrides)
    return PolicyFile(tuple(rules), tuple(overrides))


def load_policy(
    files: Sequence[Path],
    route_names: Sequence[str],
    *,
    max_lifetime: float = 5 * 86400.0,
    backoff_start: float = 300.0,
    backoff_max: float = 4000.0,
    second_opinions: int = 1,
    second_opinion_suspend: DurationRange | None = None,
) -> Policy:
    """Load policy files (the packaged default.toml if none) for these routes."""
    paths = tuple(Path(f) for f in files) or (DEFAULT_POLICY_FILE,)
    read = load_rules(paths, route_names)
    return Policy(
        max_lifetime=max_lifetime,
        backoff_start=backoff_start,
        backoff_max=backoff_max,
        rules=read.rules,
        files=tuple(str(p) for p in paths),
        overrides=read.overrides,
        second_opinions=second_opinions,
        second_opinion_suspend=second_opinion_suspend or DurationRange(300.0, 600.0),
    )
