"""The replay on the terminal: a summary table (one column per policy) and a progress bar."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import IO, Any

from relayguard.durations import format_span
from relayguard.replay.driver import Progress
from relayguard.replay.stats import Stats


def human(seconds: float | None) -> str:
    """0s, 0.4s, 12s, 7m32s, 3h5m, 2d2h; "-" for none."""
    return "-" if seconds is None else format_span(seconds)


def _pct(n: int, total: int) -> str:
    return f"{n} ({n / total:.1%})" if total else str(n)


def summary(doc: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = doc["runs"]
    sc, inp = doc["scenario"], doc["input"]
    head = (
        f"relayguard replay: scenario {sc['name']} ({human(sc['duration'])}) on "
        f"{inp['path']} ({inp['format']}, {inp['messages']} messages, "
        f"{inp['recipients']} recipients), seed {doc['seed']}"
    )
    lines = [head, *_notes(doc)]
    rows: list[tuple[str, list[str]]] = []

    def row(title: str, cell: Callable[[dict[str, Any]], str]) -> None:
        rows.append((title, [cell(r) for r in runs]))

    def section(title: str) -> None:
        rows.append((title, [""] * len(runs)))

    section("messages")
    for key, title in (
        ("delivered", "delivered"),
        ("bounced", "bounced"),
        ("partly_delivered", "partly delivered"),
        ("still_queued", "still queued"),
        ("not_arrived", "not arrived by the end"),
    ):
        row(f"  {title}", functools.partial(_message_cell, key))
    row(
        "recipients delivered/failed/queued",
        lambda r: "/".join(str(r["recipients"][k]) for k in ("delivered", "failed", "queued")),
    )
    row(
        "attempts per message mean/p95/max",
        lambda r: _dist(r["attempts_per_message"], seconds=False),
    )
    row("time to delivery p50/p95/max", lambda r: _dist(r["time_to_delivery"], seconds=True))
    row("transactions", lambda r: str(r["transactions"]))
    row(
        "NDRs built (delivered)",
        lambda r: f"{sum(r['reports']['built'].values())} ({r['reports']['delivered']})",
    )
    row("replay ended at", lambda r: human(r["ended_at"]))
    section("per route: attempts/recipients delivered/deferred/rerouted/bounced")
    for name in sorted({n for r in runs for n in r["routes"]}):
        row(f"  {name}", functools.partial(_route_cell, name))
    section("per rule: decisions")
    keys = sorted(
        {(x["rule"], x["action"]) for r in runs for x in r["rules"]},
        key=lambda k: (-sum(_rule(r, k) for r in runs), k),
    )
    for rule, action in keys:
        row(f"  {rule} ({action})", functools.partial(_rule_cell, (rule, action)))
    section("failures by rule (recipients)")
    for rule in sorted({k for r in runs for k in r["failures_by_rule"]}):
        row(f"  {rule}", functools.partial(_failure_cell, rule))

    width = max(len(t) for t, c in rows if any(c)) + 2
    cols = [max(len(run["label"]), *(len(c[i]) for _, c in rows)) + 2 for i, run in enumerate(runs)]
    lines.append("")
    lines.append(
        " " * width + "".join(r["label"].rjust(w) for r, w in zip(runs, cols, strict=True))
    )
    for title, cells in rows:
        if not any(cells):
            lines.append(title)  # a section heading
            continue
        lines.append(
            title.ljust(width) + "".join(c.rjust(w) for c, w in zip(cells, cols, strict=True))
        )
    return "\n".join(lines) + "\n"


def _notes(doc: dict[str, Any]) -> list[str]:
    inp, notes = doc["input"], []
    if inp["skipped"]:
        notes.append(f"  {inp['skipped']} input message(s) skipped")
    untimed = doc["runs"][0].get("input_without_time", 0)
    if untimed and doc["scenario"]["arrivals"]["mode"] == "input":
        notes.append(
            f"  {untimed} message(s) had no arrival time: each arrives with the one "
            'before it (or give [arrivals] mode = "spread")'
        )
    return notes


def _message_cell(key: str, run: dict[str, Any]) -> str:
    return _pct(run["messages"][key], run["messages"]["arrived"])


def _route_cell(name: str, run: dict[str, Any]) -> str:
    return _route(run["routes"].get(name))


def _rule_cell(key: tuple[str, str], run: dict[str, Any]) -> str:
    return str(_rule(run, key) or "-")


def _failure_cell(rule: str, run: dict[str, Any]) -> str:
    return str(run["failures_by_rule"].get(rule, "-"))


def _dist(d: dict[str, Any], *, seconds: bool) -> str:
    if not d["count"]:
        return "-"
    if seconds:
        return "/".join(human(d[k]) for k in ("p50", "p95", "max"))
    return f"{d['mean']:.2f}/{d['p95']:g}/{d['max']:g}"


def _route(rs: dict[str, Any] | None) -> str:
    if rs is None:
        return "-"
    a = rs["actions"]
    return (
        f"{rs['attempts']}/{rs['recipients_delivered']}/{a.get('defer', 0)}/"
        f"{a.get('reroute', 0)}/{a.get('bounce', 0)}"
    )


def _rule(run: dict[str, Any], key: tuple[str, str]) -> int:
    return sum(x["decisions"] for x in run["rules"] if (x["rule"], x["action"]) == key)


class ProgressBar:
    """`[#####.....] 45% t=21h36m: 12034 arrived, 11900 done, 120 queued` on stderr."""

    def __init__(self, stream: IO[str], width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.active = False

    def for_run(self, label: str) -> Progress:
        self.end()

        def show(fraction: float, stats: Stats) -> None:
            done = int(self.width * min(1.0, fraction))
            finished = sum(stats.outcomes.values())
            self.stream.write(
                f"\r{label}: [{'#' * done}{'.' * (self.width - done)}] {fraction:4.0%} "
                f"t={human(fraction * stats.duration)}: "
                f"{stats.arrived(stats.t0 + fraction * stats.duration)} arrived, "
                f"{finished} done, {stats.waiting + stats.deferred} queued   "
            )
            self.stream.flush()
            self.active = True

        return show

    def end(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()
            self.active = False
