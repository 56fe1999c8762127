"""Golden corpora: real replies and what a policy file must decide for each.

A corpus is a TOML file beside its policy (`x.toml` → `x.corpus.toml`):

    routes = ["primary", "backup"]     # the routes the cases assume
    [[case]]
    reply = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using ..."
    phase = "rcpt"          # optional (default rcpt)
    route = "primary"       # optional (default: the first route)
    domain = "example.com"  # optional
    synthetic = false       # optional: a relayguard network-failure reply
    tried = ["backup"]      # optional: routes already tried in this round
    suspended = []          # optional: routes suspended for the domain
    age = "49h"             # optional: time since arrival (no earlier attempts)
    asked = "primary"       # optional: a second opinion was asked after a refusal there
    expect = { rule = "rbl-block", action = "reroute", reroute_to = ["backup"],
               suspend = "5m..10m", retry = "5m..10m", throttle = 2,
               category = "rbl_block", second_opinion = "asked" }

In `expect`, `retry` and `suspend` are ranges the drawn delay must fall in (or
false for "none"), `throttle` is the max_connections (or false), and
`suspend_destination` is the domain or "*". Each case runs with several rng
seeds, so the ranges are checked against more than one draw.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relayguard.config import parse_duration
from relayguard.model import Action, Attempt, Decision, Phase, Reply, SecondOpinion
from relayguard.policy.engine import decide
from relayguard.policy.loader import load_policy
from relayguard.policy.reply_line import reply_from_line
from relayguard.policy.rules import Policy, PolicyError, RouteView

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

CORPUS_NOW = 1_700_000_000.0
SEEDS = range(8)
_CASE_KEYS = (
    "reply",
    "phase",
    "route",
    "domain",
    "synthetic",
    "tried",
    "suspended",
    "age",
    "asked",
    "expect",
    "note",
)
_EXPECT_KEYS = (
    "rule",
    "action",
    "retry",
    "reroute_to",
    "suspend",
    "suspend_destination",
    "throttle",
    "reason",
    "category",
    "second_opinion",
)


@dataclass(frozen=True, slots=True)
class CorpusCase:
    index: int
    line: str
    reply: Reply
    view: RouteView
    age: float
    expect: dict[str, Any]
    history: tuple[Attempt, ...] = ()

    @property
    def label(self) -> str:
        return f"case[{self.index}] {self.line[:60]}"


@dataclass(frozen=True, slots=True)
class Corpus:
    path: Path
    routes: tuple[str, ...]
    cases: tuple[CorpusCase, ...]


def corpus_for(policy_file: Path) -> Path:
    """Where the golden corpus of a policy file lives."""
    return policy_file.with_name(policy_file.stem + ".corpus.toml")


def load_corpus(path: Path) -> Corpus:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read corpus: {exc}") from None
    unknown = sorted(set(data) - {"routes", "case"})
    if unknown:
        raise PolicyError(f"{path}: {unknown[0]}: unknown key (known: routes, case)")
    routes = data.get("routes", ["primary", "backup"])
    if not isinstance(routes, list) or not routes or not all(isinstance(r, str) for r in routes):
        raise PolicyError(f"{path}: routes: expected a list of route names")
    cases = tuple(
        _read_case(path, i, raw, tuple(routes)) for i, raw in enumerate(data.get("case", []))
    )
    return Corpus(path, tuple(routes), cases)


def _read_case(path: Path, index: int, raw: object, routes: tuple[str, ...]) -> CorpusCase:
    where = f"{path}: case[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a table")
    unknown = sorted(set(raw) - set(_CASE_KEYS))
    if unknown:
        raise PolicyError(f"{where}: {unknown[0]}: unknown key (known: {', '.join(_CASE_KEYS)})")
    expect = raw.get("expect")
    if not isinstance(expect, dict) or "rule" not in expect or "action" not in expect:
        raise PolicyError(f"{where}: expect: expected a table with at least rule and action")
    unknown = sorted(set(expect) - set(_EXPECT_KEYS))
    if unknown:
        raise PolicyError(f"{where}: expect.{unknown[0]}: unknown key")
    try:
        line = str(raw["reply"])
        reply = reply_from_line(
            line, Phase(str(raw.get("phase", "rcpt"))), synthetic=bool(raw.get("synthetic"))
        )
        route = str(raw.get("route", routes[0]))
        view = RouteView(
            route=route,
            destination=str(raw.get("domain", "example.com")).lower(),
            routes=routes,
            tried_now=frozenset({route, *map(str, raw.get("tried", []))}),
            suspended=frozenset(map(str, raw.get("suspended", []))),
        )
        age = parse_duration(raw.get("age", 0))
        history: tuple[Attempt, ...] = ()
        if "asked" in raw:
            # An earlier refusal through that route asked another egress (this one).
            history = (
                Attempt(
                    CORPUS_NOW - 1.0,
                    str(raw["asked"]),
                    (),
                    reply,
                    Action.REROUTE.value,
                    "earlier",
                    second_opinion=SecondOpinion.ASKED.value,
                ),
            )
    except (KeyError, ValueError, TypeError) as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return CorpusCase(index, line, reply, view, age, expect, history)


def _range(value: object) -> tuple[float, float]:
    text = str(value)
    low, sep, high = text.partition("..")
    return parse_duration(low), parse_duration(high if sep else low)


def _within(value: float, spec: object) -> bool:
    low, high = _range(spec)
    return low - 1e-6 <= value <= high + 1e-6


def check_decision(case: CorpusCase, decision: Decision, now: float) -> list[str]:
    """What differs between a decision and the case's expectations."""
    exp = case.expect
    problems: list[str] = []
    if decision.rule != exp["rule"]:
        problems.append(f"rule {decision.rule!r}, expected {exp['rule']!r}")
    if decision.action.value != exp["action"]:
        problems.append(f"action {decision.action.value!r}, expected {exp['action']!r}")
    if "retry" in exp:
        delay = None if decision.retry_at is None else decision.retry_at - now
        problems.extend(_check_delay("retry in", delay, exp["retry"]))
    if "suspend" in exp:
        sus = decision.suspend
        problems.extend(
            _check_delay("suspension for", None if sus is None else sus.until - now, exp["suspend"])
        )
    problems.extend(_check_effects(exp, decision))
    return problems


def _check_effects(exp: dict[str, Any], decision: Decision) -> list[str]:
    problems: list[str] = []
    if "reroute_to" in exp and list(decision.reroute_to) != list(exp["reroute_to"]):
        problems.append(f"reroute_to {list(decision.reroute_to)}, expected {exp['reroute_to']}")
    if "suspend_destination" in exp:
        dest = decision.suspend.destination if decision.suspend else None
        if dest != exp["suspend_destination"]:
            problems.append(f"suspension for {dest!r}, expected {exp['suspend_destination']!r}")
    if "throttle" in exp:
        thr = decision.throttle.max_connections if decision.throttle else False
        if thr != exp["throttle"]:
            problems.append(f"throttle {thr}, expected {exp['throttle']}")
    for key in ("category", "second_opinion"):
        got = getattr(decision, key)
        if key in exp and str(got) != exp[key]:
            problems.append(f"{key} {str(got)!r}, expected {exp[key]!r}")
    if "reason" in exp and str(exp["reason"]).lower() not in decision.reason.lower():
        problems.append(f"reason {decision.reason!r}, expected to contain {exp['reason']!r}")
    return problems


def _check_delay(what: str, delay: float | None, spec: object) -> list[str]:
    """spec False: no delay at all; otherwise a range the delay must fall in."""
    if spec is False:
        return [] if delay is None else [f"{what} {delay:.0f}s, expected none"]
    if delay is None or not _within(delay, spec):
        got = "None" if delay is None else f"{delay:.0f}s"
        return [f"{what} {got}, expected {spec}"]
    return []


def run_case(policy: Policy, case: CorpusCase, seeds: Iterable[int] = SEEDS) -> list[str]:
    """Decide the case with each seed; the problems found, labelled."""
    out: list[str] = []
    for seed in seeds:
        decision = decide(
            case.reply,
            case.history,
            case.view,
            CORPUS_NOW,
            policy,
            arrival_at=CORPUS_NOW - case.age,
            rng=random.Random(seed),
        )
        problems = check_decision(case, decision, CORPUS_NOW)
        if problems:
            out.append(f"{case.label} (seed {seed}): {'; '.join(problems)}")
            break
    return out


def run_corpus(corpus_path: Path, policy_files: Sequence[Path]) -> list[str]:
    """Check every case of a corpus against the policy files; the failures."""
    corpus = load_corpus(corpus_path)
    policy = load_policy(policy_files, corpus.routes)
    out: list[str] = []
    for case in corpus.cases:
        out.extend(f"{corpus_path}: {p}" for p in run_case(policy, case))
    return out
