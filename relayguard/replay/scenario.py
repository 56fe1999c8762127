"""Scenario files: what each route's upstream answers, and when (TOML → plain values).

A scenario scripts the smarthosts over virtual time: `[[window]]` tables say
that from `from` to `until` (offsets from the start of the replay), a share
(`probability`) of the transactions through some routes / source addresses /
to some destination domains get a reply in a phase of the SMTP conversation.
Windows are tried in file order; the first whose roll succeeds answers.
Anything no window answers is accepted (`[upstream] accept`).

Without `--config`, the replay takes its routes (and `[queue]`, `[ndr]`) from
the scenario itself. Every error names the file and the key.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from relayguard.config import (
    ConfigError,
    Settings,
    format_duration,
    load_settings_text,
    parse_duration,
)
from relayguard.model import Phase
from relayguard.policy.rules import DurationRange

# Replies that are not an SMTP reply but something the network does.
NETWORK_KINDS = ("refused", "timeout", "drop")
PHASES = {
    "connect": Phase.CONNECT,
    "greeting": Phase.GREETING,
    "helo": Phase.HELO,
    "mail": Phase.MAIL,
    "rcpt": Phase.RCPT,
    "data": Phase.DATA,
    "after-data": Phase.AFTER_DATA,
}
ARRIVAL_MODES = ("input", "spread", "random", "burst")
DEFAULT_START = 1_700_000_000.0  # 2023-11-14T22:13:20Z, when the input has no times
TOP_KEYS = ("scenario", "arrivals", "upstream", "window", "route", "queue", "ndr", "server")
WINDOW_KEYS = (
    "name",
    "from",
    "until",
    "route",
    "source",
    "domain",
    "not_domain",
    "probability",
    "reply",
    "phase",
    "latency",
)


T = TypeVar("T")
D = TypeVar("D")


class ScenarioError(ValueError):
    """A scenario file problem, phrased for the operator: file, key, what was expected."""


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """A scripted answer: an SMTP reply (`code` + `text`) or a network event (`kind`)."""

    kind: str  # "reply" | "refused" | "timeout" | "drop"
    phase: Phase
    code: int = 0
    text: str = ""  # may hold {source}, {route}, {host}, {domain}

    def render(self) -> str:
        return f"{self.code} {self.text}" if self.kind == "reply" else self.kind


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    name: str
    start: float  # seconds from the start of the replay
    end: float
    reply: ReplySpec
    probability: float = 1.0
    routes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    not_domains: tuple[str, ...] = ()
    latency: DurationRange | None = None

    def applies(self, route: str, source: str | None, domain: str) -> bool:
        """Route, source and destination conditions (time is checked by the caller)."""
        return (
            (not self.routes or route in self.routes)
            and (not self.sources or source in self.sources)
            and (not self.domains or any(fnmatch.fnmatchcase(domain, p) for p in self.domains))
            and not any(fnmatch.fnmatchcase(domain, p) for p in self.not_domains)
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "from": self.start,
            "until": self.end,
            "routes": list(self.routes),
            "sources": list(self.sources),
            "domains": list(self.domains),
            "not_domains": list(self.not_domains),
            "probability": self.probability,
            "phase": self.reply.phase.value,
            "reply": self.reply.render(),
        }


@dataclass(frozen=True, slots=True)
class Arrivals:
    mode: str = "input"  # from the input's own times, first message at t=0
    over: float = 0.0  # spread / random: over how long
    at: float = 0.0  # burst: when


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: str
    duration: float
    windows: tuple[Window, ...]
    description: str = ""
    start: float | None = None  # POSIX time of t=0; None: the input's first arrival
    arrivals: Arrivals = field(default_factory=Arrivals)
    latency: DurationRange = field(default_factory=lambda: DurationRange(0.2, 0.8))
    accept: str = "250 2.0.0 Ok: queued"
    peer_dsn: bool = True
    config_tables: dict[str, Any] = field(default_factory=dict)  # route / queue / ndr / server

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "duration": self.duration,
            "arrivals": {
                "mode": self.arrivals.mode,
                "over": self.arrivals.over,
                "at": self.arrivals.at,
            },
            "windows": [w.to_dict() for w in self.windows],
        }

    def settings(self, hostname: str = "replay.relayguard.test") -> Settings:
        """Routes and queue settings from the scenario, through the config loader's checks."""
        if "route" not in self.config_tables:
            raise ScenarioError(
                f"{self.file}: route: expected [[route]] tables (or give --config FILE)"
            )
        tables = dict(self.config_tables)
        server = dict(tables.pop("server", {}))
        server.setdefault("hostname", hostname)
        text = _to_toml({"server": server, **tables})
        try:
            return load_settings_text(text, self.file)
        except ConfigError as exc:
            raise ScenarioError(str(exc)) from None

    def check_routes(self, route_names: tuple[str, ...]) -> None:
        for w in self.windows:
            for r in w.routes:
                if r not in route_names:
                    raise ScenarioError(
                        f"{self.file}: window[{w.index}].route: expected one of the routes "
                        f"{list(route_names)}, got {r!r}"
                    )


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{p}: expected UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(p))


class _Table:
    def __init__(self, file: str, path: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ScenarioError(f"{file}: {path}: expected a table")
        self.file, self.path, self.table = file, path, table

    def fail(self, key: str, expected: str) -> ScenarioError:
        got = f", got {self.table[key]!r}" if key in self.table else ""
        return ScenarioError(f"{self.file}: {self.path}{key}: expected {expected}{got}")

    def get(self, key: str, convert: Callable[[Any], T], default: D, expected: str) -> T | D:
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (ValueError, TypeError):
            raise self.fail(key, expected) from None

    def finish(self, known: tuple[str, ...]) -> None:
        unknown = sorted(set(self.table) - set(known))
        if unknown:
            raise ScenarioError(
                f"{self.file}: {self.path}{unknown[0]}: unknown key "
                f"(known keys: {', '.join(known)})"
            )


_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def duration(v: object) -> float:
    """'90s', '5m', '4h', '2d', '1h30m' or seconds; zero allowed (a window may start at 0)."""
    if isinstance(v, str) and re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+", v.strip()):
        return sum(parse_duration(n + u) for n, u in _PART.findall(v.strip()))
    return parse_duration(v)


def duration_range(v: object) -> DurationRange:
    """'200ms..1.5s' (drawn uniformly) or one duration."""
    if isinstance(v, str) and ".." in v:
        low_s, _, high_s = v.partition("..")
        low, high = duration(low_s), duration(high_s)
        if low > high:
            raise ValueError
        return DurationRange(low, high)
    value = duration(v)
    return DurationRange(value, value)


def _strings(v: object) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ValueError
    return tuple(str(i) for i in items)


def _probability(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise ValueError
    return float(v)


def _text(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v.strip()


def _start(v: object) -> float:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise ValueError


def _reply(t: _Table) -> ReplySpec:
    raw = t.get(
        "reply",
        _text,
        None,
        "a reply like '451 4.7.500 Server busy' or one of " + ", ".join(NETWORK_KINDS),
    )
    if raw is None:
        raise ScenarioError(f"{t.file}: {t.path}reply: required key is missing")
    phase_name = t.get("phase", str, None, "one of " + ", ".join(PHASES))
    if phase_name is not None and phase_name not in PHASES:
        raise t.fail("phase", "one of " + ", ".join(PHASES))
    if raw in NETWORK_KINDS:
        default = Phase.AFTER_DATA if raw == "drop" else Phase.CONNECT
        phase = PHASES[phase_name] if phase_name else default
        if raw == "drop" and phase is not Phase.AFTER_DATA:
            raise t.fail("phase", "'after-data' (or nothing) for reply 'drop'")
        if raw != "drop" and phase is not Phase.CONNECT:
            raise t.fail("phase", f"'connect' (or nothing) for reply {raw!r}")
        return ReplySpec(raw, phase)
    code_s, _, text = raw.partition(" ")
    if not (code_s.isdigit() and len(code_s) == 3 and code_s[0] in "2345"):
        raise t.fail(
            "reply", "a reply starting with a 3-digit code, or one of " + ", ".join(NETWORK_KINDS)
        )
    phase = PHASES[phase_name] if phase_name else Phase.RCPT
    if phase is Phase.CONNECT:
        phase = Phase.GREETING  # a server that answers at all answers in the greeting
    return ReplySpec("reply", phase, int(code_s), text.strip())


def _window(file: str, index: int, table: object, total: float) -> Window:
    t = _Table(file, f"window[{index}].", table)
    start = t.get("from", duration, 0.0, "a duration from the start like '6h'")
    end = t.get("until", duration, total, "a duration from the start like '30h'")
    if end <= start:
        raise t.fail("until", "a time after 'from'")
    latency = t.get("latency", duration_range, None, "a duration or range like '50ms..2s'")
    w = Window(
        index=index,
        name=t.get("name", _text, f"window[{index}]", "a short name"),
        start=start,
        end=end,
        reply=_reply(t),
        probability=t.get("probability", _probability, 1.0, "a number from 0 to 1"),
        routes=t.get("route", _strings, (), "a route name or a list of them"),
        sources=t.get("source", _strings, (), "a source address or a list of them"),
        domains=tuple(d.lower() for d in t.get("domain", _strings, (), "a domain glob or list")),
        not_domains=tuple(
            d.lower() for d in t.get("not_domain", _strings, (), "a domain glob or list")
        ),
        latency=latency,
    )
    t.finish(WINDOW_KEYS)
    return w


def parse_scenario(data: dict[str, Any], file: str) -> Scenario:
    top = _Table(file, "", data)
    top.finish(TOP_KEYS)
    s = _Table(file, "scenario.", data.get("scenario", {}))
    total = s.get("duration", duration, None, "a duration like '48h'")
    if total is None or total <= 0:
        raise ScenarioError(
            f"{file}: scenario.duration: required key is missing or zero (a duration like '48h')"
        )
    name = s.get("name", _text, Path(file).stem, "a name")
    description = s.get("description", _text, "", "a sentence")
    start = s.get("start", _start, None, "a date-time like 2024-01-15T08:00:00Z")
    s.finish(("name", "description", "duration", "start"))

    a = _Table(file, "arrivals.", data.get("arrivals", {}))
    mode = a.get("mode", str, "input", "one of " + ", ".join(ARRIVAL_MODES))
    if mode not in ARRIVAL_MODES:
        raise a.fail("mode", "one of " + ", ".join(ARRIVAL_MODES))
    arrivals = Arrivals(
        mode,
        a.get("over", duration, 0.0, "a duration like '6h'"),
        a.get("at", duration, 0.0, "a duration like '1h'"),
    )
    a.finish(("mode", "over", "at"))

    u = _Table(file, "upstream.", data.get("upstream", {}))
    latency = u.get(
        "latency",
        duration_range,
        DurationRange(0.2, 0.8),
        "a duration or range like '200ms..800ms'",
    )
    accept = u.get("accept", _text, "250 2.0.0 Ok: queued", "a 2xx reply")
    if not accept[:1] == "2":
        raise u.fail("accept", "a 2xx reply")
    peer_dsn = u.get("dsn", _bool, True, "true or false")
    u.finish(("latency", "accept", "dsn"))

    raw_windows = data.get("window", [])
    if not isinstance(raw_windows, list):
        raise ScenarioError(f"{file}: window: expected an array of tables [[window]]")
    windows = tuple(_window(file, i, w, total) for i, w in enumerate(raw_windows))
    config_tables: dict[str, Any] = {
        k: data[k] for k in ("route", "queue", "ndr", "server") if k in data
    }
    return Scenario(
        name=name,
        file=file,
        duration=total,
        windows=windows,
        description=description,
        start=start,
        arrivals=arrivals,
        latency=latency,
        accept=accept,
        peer_dsn=peer_dsn,
        config_tables=config_tables,
    )


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError
    return v


def _to_toml(tables: dict[str, Any]) -> str:
    """Just enough TOML for the config loader: tables and arrays of tables of scalars."""
    lines: list[str] = []
    for name, value in tables.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                lines.append(f"{name} = {_toml_value(item)}")
                continue
            lines.append(f"[[{name}]]" if isinstance(value, list) else f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float) and (not isinstance(v, float) or math.isfinite(v)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def describe_window(w: Window) -> str:
    """One line for the terminal and the report: when, where, what."""
    where = []
    if w.routes:
        where.append("route " + ",".join(w.routes))
    if w.sources:
        where.append("from " + ",".join(w.sources))
    if w.domains:
        where.append("to " + ",".join(w.domains))
    if w.not_domains:
        where.append("not to " + ",".join(w.not_domains))
    share = f"{w.probability:.0%} " if w.probability < 1 else ""
    return (
        f"{format_duration(w.start)}-{format_duration(w.end)} "
        f"{' '.join(where) or 'every route'}: {share}{w.reply.render()} "
        f"({w.reply.phase.value})"
    )
