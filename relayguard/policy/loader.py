# Copyright (c) 2026 the relayguard authors. MIT License.
"""Policy TOML files → validated rules. Every error names the file, the rule and the key.

A policy file is a list of `[[rule]]` tables (see relayguard/policies/default.toml,
which documents every key). Unknown keys are errors: a typo must not silently
turn a rule into a catch-all.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from relayguard.config import parse_duration
from relayguard.model import Phase
from relayguard.policy.rules import (
    Backoff,
    DurationRange,
    Match,
    Policy,
    PolicyError,
    Rule,
    RuleAction,
    Scope,
    ThrottleSpec,
    TreatAs,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "policies" / "default.toml"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_CODE = re.compile(r"[1-5x][0-9x][0-9x]")
_ENHANCED_PART = re.compile(r"[0-9*?\[\]!-]+")
_DOMAIN = re.compile(r"[a-z0-9*?.\[\]!_-]+")

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
)
MATCH_KEYS = ("code", "enhanced", "text", "phase", "domain", "route", "synthetic")


class _Table:
    """One TOML table of a rule, remembering which keys were read."""

    def __init__(self, where: str, prefix: str, table: object) -> None:
        self.where = where  # "file: rule 'id' (rule[2])"
        self.prefix = prefix  # "" or "match." / "backoff."
        if not isinstance(table, dict):
            raise PolicyError(f"{where}: {prefix.rstrip('.') or 'rule'}: expected a table")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> PolicyError:
        return PolicyError(f"{self.where}: {self.prefix}{key}: {message}")

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, convert: Callable[[object], T]) -> T | None:
        self.used.add(key)
        if key not in self.table:
            return None
        try:
            return convert(self.table[key])
        except (ValueError, TypeError, re.error) as exc:
            raise self.error(key, f"{exc} (got {self.table[key]!r})") from None

    def finish(self, known: Sequence[str]) -> None:
        unknown = sorted(set(self.table) - set(known))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known keys: {', '.join(known)})")


# --- value converters: raise ValueError with what was expected -----------------


def _string(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("expected a non-empty string")
    return v


def _any(v: object) -> object:
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError("expected true or false")
    return v


def _list_of(convert: Callable[[object], T]) -> Callable[[object], tuple[T, ...]]:
    """A single value or a non-empty list of values."""

    def conv(v: object) -> tuple[T, ...]:
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("expected a value or a non-empty list")
        return tuple(convert(i) for i in items)

    return conv


def _duration(v: object) -> float:
    try:
        value = parse_duration(v)
    except ValueError as exc:
        raise ValueError(f"bad duration: expected {exc}") from None
    if value <= 0:
        raise ValueError("bad duration: expected more than zero")
    return value


def _range(v: object) -> DurationRange:
    """'5m..10m', '5m' or a number of seconds."""
    if isinstance(v, str) and ".." in v:
        low_s, _, high_s = v.partition("..")
        try:
            low, high = parse_duration(low_s), parse_duration(high_s)
        except ValueError as exc:
            raise ValueError(f"bad duration range: expected like '5m..10m', {exc}") from None
        if high <= 0 or low > high:
            raise ValueError("bad duration range: expected low..high with low <= high, high > 0")
        return DurationRange(low, high)
    value = _duration(v)
    return DurationRange(value, value)


def _code(v: object) -> str:
    s = str(v).lower() if isinstance(v, int | str) and not isinstance(v, bool) else ""
    if not _CODE.fullmatch(s):
        raise ValueError("expected a reply code like 554, '5xx' or '45x'")
    return s


def _enhanced(v: object) -> str:
    s = _string(v).strip()
    parts = s.split(".")
    if len(parts) != 3 or not all(_ENHANCED_PART.fullmatch(p) for p in parts):
        raise ValueError("expected an enhanced status code like '5.7.1' or '5.7.*'")
    if parts[0][0] not in "245*?[":
        raise ValueError("expected an enhanced status code of class 2, 4 or 5")
    return s


def _regex(v: object) -> re.Pattern[str]:
    s = _string(v)
    try:
        return re.compile(s, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regex: {exc}") from None


def _phase(v: object) -> Phase:
    try:
        return Phase(_string(v).lower())
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise ValueError(f"unknown phase (expected one of {known})") from None


def _domain(v: object) -> str:
    s = _string(v).strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(s):
        raise ValueError("expected a domain or glob like 'example.com' or '*.outlook.com'")
    return s


def _enum(kind: type[E], what: str) -> Callable[[object], E]:
    def conv(v: object) -> E:
        try:
            return kind(_string(v).lower())
        except ValueError:
            known = ", ".join(k.value for k in kind)
            raise ValueError(f"unknown {what} {v!r} (expected one of {known})") from None

    return conv


class _RouteNames:
    def __init__(self, names: Sequence[str] | None) -> None:
        self.names = tuple(names) if names is not None else None

    def check(self, v: object) -> str:
        s = _string(v)
        if self.names is not None and s not in self.names:
            raise ValueError(f"unknown route {s!r} (routes: {', '.join(self.names)})")
        return s


# --- one rule ------------------------------------------------------------------


def _read_match(where: str, table: object, routes: _RouteNames) -> Match:
    t = _Table(where, "match.", table)
    enhanced = t.get("enhanced", _list_of(_enhanced)) or ()
    text_re = t.get("text", _regex)
    match = Match(
        codes=t.get("code", _list_of(_code)) or (),
        enhanced=enhanced,
        enhanced_re=tuple(re.compile(fnmatch.translate(p)) for p in enhanced),
        text=text_re.pattern if text_re is not None else None,
        text_re=text_re,
        phases=t.get("phase", _list_of(_phase)) or (),
        domains=t.get("domain", _list_of(_domain)) or (),
        routes=t.get("route", _list_of(routes.check)) or (),
        synthetic=t.get("synthetic", _bool),
    )
    t.finish(MATCH_KEYS)
    return match


def _read_backoff(where: str, table: object) -> Backoff:
    t = _Table(where, "backoff.", table)
    start = t.get("start", _duration)
    if start is None:
        raise t.error("start", "required key is missing (a duration like '5m')")
    factor = t.get("factor", _factor)
    cap = t.get("cap", _duration)
    if cap is None:
        raise t.error("cap", "required key is missing (a duration like '1h')")
    if cap < start:
        raise t.error("cap", "expected a cap not below start")
    t.finish(("start", "factor", "cap"))
    return Backoff(start, factor if factor is not None else 2.0, cap)


def _factor(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 100:
        raise ValueError("expected a number from 1 to 100")
    return float(v)


def _read_throttle(where: str, table: object) -> ThrottleSpec:
    t = _Table(where, "throttle.", table)
    max_conn = t.get("max_connections", _connections)
    if max_conn is None:
        raise t.error("max_connections", "required key is missing (a number from 1)")
    duration = t.get("for", _range)
    if duration is None:
        raise t.error("for", "required key is missing (a duration like '30m')")
    t.finish(("max_connections", "for"))
    return ThrottleSpec(max_conn, duration)


def _connections(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000:
        raise ValueError("expected a number from 1 to 10000")
    return v


def _reroute(routes: _RouteNames) -> Callable[[object], tuple[str, ...]]:
    def conv(v: object) -> tuple[str, ...]:
        if v == "next":
            return ("next",)
        if not isinstance(v, list):
            raise TypeError('expected "next" or a list of route names')
        return _list_of(routes.check)(v)

    return conv


def _read_rule(file: str, index: int, table: object, routes: _RouteNames) -> Rule:  # noqa: C901, PLR0912
    where = f"{file}: rule[{index}]"
    if isinstance(table, dict) and isinstance(table.get("id"), str):
        where = f"{file}: rule {table['id']!r} (rule[{index}])"
    t = _Table(where, "", table)
    rule_id = t.get("id", _string)
    if rule_id is None:
        raise t.error("id", "required key is missing (a unique rule name)")
    if not _ID.fullmatch(rule_id) or rule_id.startswith("builtin:"):
        raise t.error("id", "expected letters, digits, '.', '_', ':' or '-' (not 'builtin:')")

    treat_as = t.get("treat_as", _enum(TreatAs, "treat_as"))
    action = t.get("action", _enum(RuleAction, "action"))
    if action is None:
        if treat_as is None:
            raise t.error("action", "required key is missing (or give treat_as)")
        action = RuleAction.BOUNCE if treat_as is TreatAs.PERMANENT else RuleAction.DEFER
    if treat_as is TreatAs.PERMANENT and action is not RuleAction.BOUNCE:
        raise t.error("treat_as", f"'permanent' means bounce, but action is {action.value!r}")
    if treat_as is TreatAs.TEMPORARY and action is RuleAction.BOUNCE:
        raise t.error("treat_as", "'temporary' contradicts action 'bounce'")

    match_table = t.get("match", _any)
    match = _read_match(where, match_table, routes) if match_table is not None else Match()
    backoff_table = t.get("backoff", _any)
    throttle_table = t.get("throttle", _any)

    rule = Rule(
        id=rule_id,
        action=action,
        match=match,
        description=t.get("description", _string) or "",
        treat_as=treat_as,
        retry_after=t.get("retry_after", _range),
        backoff=_read_backoff(where, backoff_table) if backoff_table is not None else None,
        honor_retry_hint=t.get("honor_retry_hint", _bool) is not False,
        suspend_for=t.get("suspend_for", _range),
        suspend_scope=t.get("suspend_scope", _enum(Scope, "suspend_scope")) or Scope.DESTINATION,
        give_up_after=t.get("give_up_after", _duration),
        throttle=_read_throttle(where, throttle_table) if throttle_table is not None else None,
        source=f"{file} rule[{index}]",
    )
    reroute = t.get("reroute", _reroute(routes))
    t.finish(RULE_KEYS)

    # Keys that mean nothing for the chosen action are errors: they would mislead.
    if action is RuleAction.BOUNCE:
        for key in (
            "retry_after", "backoff", "honor_retry_hint", "suspend_for", "suspend_scope",
            "reroute", "give_up_after", "throttle",
        ):
            if t.has(key):
                raise t.error(key, "not used with action 'bounce'")
    if t.has("retry_after") and t.has("backoff"):
        raise t.error("backoff", "give either retry_after or backoff, not both")
    if action is RuleAction.REROUTE and reroute is None:
        raise t.error("reroute", "required for action 'reroute' (\"next\" or a list of routes)")
    if reroute is not None and action is not RuleAction.REROUTE:
        raise t.error("reroute", f"only used with action 'reroute', not {action.value!r}")
    if action is RuleAction.SUSPEND and rule.suspend_for is None:
        raise t.error("suspend_for", "required for action 'suspend' (a duration like '5m..10m')")
    if t.has("suspend_scope") and rule.suspend_for is None:
        raise t.error("suspend_scope", "only used together with suspend_for")
    if action is RuleAction.THROTTLE and rule.throttle is None:
        raise t.error("throttle", "required for action 'throttle' ({ max_connections, for })")

    if reroute is not None:
        if reroute == ("next",):
            return replace(rule, reroute_next=True)
        return replace(rule, reroute=reroute)
    return rule


# --- files -----------------------------------------------------------------------


def read_policy_file(path: Path, route_names: Sequence[str] | None) -> tuple[Rule, ...]:
    """Read and check one policy file (route names are not checked if None)."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{file}: expected UTF-8 text") from None
    return parse_policy_text(text, file, route_names)


def parse_policy_text(text: str, file: str, route_names: Sequence[str] | None) -> tuple[Rule, ...]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{file}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"rule"})
    if unknown:
        raise PolicyError(f"{file}: {unknown[0]}: unknown top-level key (expected [[rule]] tables)")
    raw = data.get("rule", [])
    if not isinstance(raw, list):
        raise PolicyError(f"{file}: rule: expected an array of tables [[rule]]")
    routes = _RouteNames(route_names)
    return tuple(_read_rule(file, i, r, routes) for i, r in enumerate(raw))


def load_rules(files: Sequence[Path], route_names: Sequence[str] | None) -> tuple[Rule, ...]:
    """All rules of the files, in order, with ids unique across the files."""
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for path in files:
        for rule in read_policy_file(path, route_names):
            first = seen.get(rule.id)
            if first is not None:
                index = rule.source.rpartition(" ")[2]
                raise PolicyError(
                    f"{path}: rule {rule.id!r} ({index}): id: duplicate id, "
                    f"first used in {first.source}"
                )
            seen[rule.id] = rule
            rules.append(rule)
    return tuple(rules)


def load_policy(
    files: Sequence[Path],
    route_names: Sequence[str],
    *,
    max_lifetime: float = 5 * 86400.0,
    backoff_start: float = 300.0,
    backoff_max: float = 4000.0,
) -> Policy:
    """Load policy files (the packaged default.toml if none) for these routes."""
    paths = tuple(Path(f) for f in files) or (DEFAULT_POLICY_FILE,)
    rules = load_rules(paths, route_names)
    return Policy(
        max_lifetime=max_lifetime,
        backoff_start=backoff_start,
        backoff_max=backoff_max,
        rules=rules,
        files=tuple(str(p) for p in paths),
    )
