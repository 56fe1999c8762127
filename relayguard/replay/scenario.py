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
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relayguard.config import ConfigError, Settings, Table, load_settings_text, read_text_file
from relayguard.durations import (
    EXPECTED,
    EXPECTED_RANGE,
    format_duration,
    parse_duration,
    parse_duration_range,
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
CONFIG_TABLES = ("route", "queue", "ndr", "server")  # handed to the config loader as they are


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
    # [mx]: recipient domain (glob) -> its MX hosts, in file order, the first match
    # answering: the replay's stand-in for DNS, so provider keys work as live.
    mx: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def mx_of(self, domain: str) -> tuple[str, ...]:
        d = domain.lower()
        return next((hosts for glob, hosts in self.mx if fnmatch.fnmatchcase(d, glob)), ())

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
    text = read_text_file(p, ScenarioError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    return parse_scenario(data, str(p))


def _range(v: object) -> DurationRange:
    """'200ms..1.5s' (drawn uniformly) or one duration; zero allowed."""
    return DurationRange(*parse_duration_range(v))


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


def _reply(t: Table) -> ReplySpec:
    raw = t.require(
        "reply",
        _text,
        "a reply like '451 4.7.500 Server busy' or one of " + ", ".join(NETWORK_KINDS),
    )
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


def _window(t: Table, index: int, total: float) -> Window:
    # Offsets from the start of the replay: zero is allowed, a window may open at once.
    start = t.get("from", parse_duration, 0.0, EXPECTED)
    end = t.get("until", parse_duration, total, EXPECTED)
    if end <= start:
        raise t.fail("until", "a time after 'from'")
    latency = t.get("latency", _range, None, EXPECTED_RANGE)
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
    t.finish()
    return w


def parse_scenario(data: dict[str, Any], file: str) -> Scenario:
    top = Table(file, "", data, ScenarioError)
    s = top.section("scenario")
    total = s.require("duration", parse_duration, "a duration like '48h'")
    if total <= 0:
        raise s.fail("duration", "a duration more than zero")
    name = s.get("name", _text, Path(file).stem, "a name")
    description = s.get("description", _text, "", "a sentence")
    start = s.get("start", _start, None, "a date-time like 2024-01-15T08:00:00Z")
    s.finish()

    a = top.section("arrivals")
    mode = a.get("mode", str, "input", "one of " + ", ".join(ARRIVAL_MODES))
    if mode not in ARRIVAL_MODES:
        raise a.fail("mode", "one of " + ", ".join(ARRIVAL_MODES))
    arrivals = Arrivals(
        mode,
        a.get("over", parse_duration, 0.0, EXPECTED),
        a.get("at", parse_duration, 0.0, EXPECTED),
    )
    a.finish()

    u = top.section("upstream")
    latency = u.get("latency", _range, DurationRange(0.2, 0.8), EXPECTED_RANGE)
    accept = u.get("accept", _text, "250 2.0.0 Ok: queued", "a 2xx reply")
    if not accept[:1] == "2":
        raise u.fail("accept", "a 2xx reply")
    peer_dsn = u.get("dsn", _bool, True, "true or false")
    u.finish()

    m = top.section("mx")
    mx = tuple(
        (glob.lower(), m.require(glob, _strings, "an MX host name or a list of them"))
        for glob in m.table
    )
    m.finish()

    window_tables = top.tables("window", "an array of tables [[window]]")
    windows = tuple(_window(t, i, total) for i, t in enumerate(window_tables))
    # Read even when absent, so that an unknown key's message lists them as known.
    config_raw = {k: top.raw(k) for k in CONFIG_TABLES}
    top.finish()
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
        config_tables={k: v for k, v in config_raw.items() if v is not None},
        mx=mx,
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
