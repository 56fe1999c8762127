"""report.html: the replay's result as one self-contained page (inline CSS and SVG).

It reads without the terminal: what was replayed, through what, the outcome per
policy side by side, and the plots (queue depth by state, deliveries per route,
time to delivery). Charts of the same kind share their y scale across policies,
so the columns compare at a glance.
"""

from __future__ import annotations

from html import escape
from typing import Any

from relayguard.replay import svg
from relayguard.replay.stats import TTD_LABELS
from relayguard.replay.terminal import human

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1240px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; }
h3 { font-size: 15px; margin: 14px 0 4px; }
.meta { color: #555; } .cols { display: grid; gap: 18px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
td.sec { font-weight: 600; background: #fafafa; }
svg { max-width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg .unit { fill: #666; }
svg .small { font-size: 9px; } svg .axis { stroke: #444; } svg .grid { stroke: #e6e6e6; }
code { background: #f4f4f4; padding: 0 3px; }
"""


FOOTER = (
    '<p class="meta">Made by <code>relayguard replay</code>: the relay\'s own queue manager, '
    "scheduler, policy engine and bounce builder on a virtual clock, against simulated "
    "upstreams. The same input, scenario, policies and seed give the same result.</p>"
)


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr>"]
    for r in rows:
        if len(r) == 1:
            out.append(f'<tr><td class="sec" colspan="{len(head)}">{escape(r[0])}</td></tr>')
            continue
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _pct(n: int, total: int) -> str:
    return f"{n} ({n / total:.1%})" if total else str(n)


def _summary(runs: list[dict[str, Any]]) -> str:
    rows: list[list[str]] = [["messages"]]
    for key, title in (
        ("arrived", "arrived"),
        ("delivered", "delivered"),
        ("bounced", "bounced"),
        ("partly_delivered", "partly delivered"),
        ("still_queued", "still queued"),
        ("not_arrived", "not arrived by the end"),
    ):
        rows.append(
            [
                title,
                *(
                    _pct(r["messages"][key], r["messages"]["arrived"])
                    if key != "arrived"
                    else str(r["messages"][key])
                    for r in runs
                ),
            ]
        )
    rows.append(["recipients"])
    rows.extend(
        [key, *(str(r["recipients"][key]) for r in runs)]
        for key in ("delivered", "failed", "queued")
    )
    rows.append(["attempts per message"])
    rows.extend(
        [
            key,
            *(
                f"{r['attempts_per_message'][key]:g}"
                if r["attempts_per_message"][key] is not None
                else "-"
                for r in runs
            ),
        ]
        for key in ("mean", "p50", "p95", "max")
    )
    rows.append(["time to delivery (delivered messages)"])
    rows.extend(
        [key, *(human(r["time_to_delivery"][key]) for r in runs)] for key in ("p50", "p95", "max")
    )
    rows.append(["other"])
    rows.append(["SMTP transactions", *(str(r["transactions"]) for r in runs)])
    rows.append(
        [
            "NDRs built / delivered",
            *(f"{sum(r['reports']['built'].values())} / {r['reports']['delivered']}" for r in runs),
        ]
    )
    rows.append(["replay ended at", *(human(r["ended_at"]) for r in runs)])
    return _table(["", *(r["label"] for r in runs)], rows)


def _routes_rules(run: dict[str, Any]) -> str:
    route_rows = []
    for name, rs in run["routes"].items():
        a = rs["actions"]
        route_rows.append(
            [
                name,
                str(rs["attempts"]),
                str(rs["recipients_delivered"]),
                str(a.get("defer", 0)),
                str(a.get("reroute", 0)),
                str(a.get("bounce", 0)),
                human(rs["mean_attempt_seconds"]),
            ]
        )
    out = [
        "<h3>Per route</h3>",
        _table(
            [
                "route",
                "attempts",
                "rcpts delivered",
                "deferred",
                "rerouted",
                "bounced",
                "mean time",
            ],
            route_rows,
        ),
    ]
    out.append("<h3>Per rule (decisions on non-2xx replies)</h3>")
    out.append(
        _table(
            ["rule", "action", "decisions"],
            [[x["rule"], x["action"], str(x["decisions"])] for x in run["rules"]],
        )
    )
    if run["failures_by_rule"]:
        out.append("<h3>Failed recipients by rule</h3>")
        out.append(
            _table(
                ["rule", "recipients"], [[k, str(v)] for k, v in run["failures_by_rule"].items()]
            )
        )
    if run["top_replies"]:
        out.append("<h3>Most frequent non-2xx replies</h3>")
        out.append(
            _table(
                ["reply", "count"],
                [[x["reply"][:110], str(x["count"])] for x in run["top_replies"]],
            )
        )
    return "".join(out)


def _charts(
    run: dict[str, Any], duration: float, scales: dict[str, float], route_colors: dict[str, str]
) -> str:
    tl = run["timeline"]
    queue = tl["queue"]
    xs = [q["t"] for q in queue]
    depth = svg.line_chart(
        "Queue depth by state",
        "messages",
        xs,
        [
            svg.Series("waiting (not yet tried)", svg.PALETTE[0], [q["waiting"] for q in queue]),
            svg.Series("deferred (tried, queued)", svg.PALETTE[1], [q["deferred"] for q in queue]),
            svg.Series("in flight", svg.PALETTE[2], [q["in_flight"] for q in queue]),
        ],
        duration,
        y_max=scales["queue"],
    )
    per_route = svg.stacked_bars(
        "Deliveries per route",
        f"recipients per {human(tl['bin_seconds'])}",
        [
            svg.Series(f"via {name}", route_colors[name], values)
            for name, values in tl["delivered_per_route"].items()
        ],
        duration,
        y_max=scales["deliveries"],
        overlay=svg.Series("bounced", svg.RED, tl["bounced"]),
    )
    hist = run["time_to_delivery"]["histogram"]
    ttd = svg.histogram(
        "Time to delivery",
        list(TTD_LABELS),
        [hist[k] for k in TTD_LABELS],
        svg.PALETTE[3],
        y_max=scales["ttd"],
    )
    return (
        f"<h3>Queue depth by state over time</h3>{depth}"
        f"<h3>Deliveries per route over time (bounces in red)</h3>{per_route}"
        f"<h3>Time to delivery (messages)</h3>{ttd}"
    )


def _scales(runs: list[dict[str, Any]]) -> dict[str, float]:
    def most(values: list[float]) -> float:
        return max(values, default=0.0)

    return {
        "queue": most(
            [
                max(q["waiting"], q["deferred"], q["in_flight"])
                for r in runs
                for q in r["timeline"]["queue"]
            ]
        ),
        "deliveries": most(
            [
                max(
                    sum(v[i] for v in r["timeline"]["delivered_per_route"].values())
                    if r["timeline"]["delivered_per_route"]
                    else 0,
                    r["timeline"]["bounced"][i],
                )
                for r in runs
                for i in range(len(r["timeline"]["bounced"]))
            ]
        ),
        "ttd": most([float(v) for r in runs for v in r["time_to_delivery"]["histogram"].values()]),
    }


def _windows(doc: dict[str, Any]) -> str:
    sc = doc["scenario"]
    rows = []
    for w in sc["windows"]:
        where = (
            " ".join(
                filter(
                    None,
                    [
                        "route " + ",".join(w["routes"]) if w["routes"] else "",
                        "from " + ",".join(w["sources"]) if w["sources"] else "",
                        "to " + ",".join(w["domains"]) if w["domains"] else "",
                    ],
                )
            )
            or "every route"
        )
        share = f"{w['probability']:.0%} " if w["probability"] < 1 else ""
        tip = f"{w['name']}: {where}, {share}{w['reply']} ({w['phase']})"
        color = (
            svg.RED
            if w["reply"][:1] == "5"
            else (svg.PALETTE[1] if w["reply"][:1] == "4" else svg.PALETTE[6])
        )
        rows.append((w["name"], w["from"], w["until"], color, tip))
    if not rows:
        return "<p>No windows: every transaction is accepted.</p>"
    chart = svg.timeline("Scenario windows", rows, sc["duration"])
    table = _table(
        ["window", "from", "until", "where", "share", "phase", "reply"],
        [
            [
                w["name"],
                human(w["from"]),
                human(w["until"]),
                " ".join(
                    filter(
                        None,
                        [",".join(w["routes"]), ",".join(w["sources"]), ",".join(w["domains"])],
                    )
                )
                or "all",
                f"{w['probability']:.1%}",
                w["phase"],
                w["reply"][:90],
            ]
            for w in sc["windows"]
        ],
    )
    return chart + table


def _meta(doc: dict[str, Any], runs: list[dict[str, Any]], routes: str) -> str:
    sc, inp = doc["scenario"], doc["input"]
    skipped = f", {inp['skipped']} skipped" if inp["skipped"] else ""
    policies = "; ".join(
        f"<b>{escape(r['label'])}</b> = {escape(', '.join(r['policy_files']) or 'built-ins only')}"
        for r in runs
    )
    return (
        f'<p class="meta">Input <code>{escape(inp["path"])}</code> ({escape(inp["format"])}: '
        f"{inp['messages']} messages, {inp['recipients']} recipients{skipped}); "
        f"scenario <code>{escape(sc['file'])}</code> over {human(sc['duration'])} of virtual "
        f"time; seed {doc['seed']}.<br>Routes: {escape(routes)}.<br>Policies: {policies}</p>"
    )


def render(doc: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = doc["runs"]
    sc = doc["scenario"]
    duration = float(sc["duration"])
    names = sorted({n for r in runs for n in r["timeline"]["delivered_per_route"]})
    route_colors = {n: svg.PALETTE[(i * 2) % len(svg.PALETTE)] for i, n in enumerate(names)}
    scales = _scales(runs)
    cols = f"grid-template-columns: repeat({len(runs)}, minmax(0, 1fr));"
    title = f"relayguard replay: {sc['name']}"
    routes = "; ".join(
        f"{r['name']} = {r['host']}"
        + (f" from {r['source_address']}" if r["source_address"] else "")
        + f" ({r['max_connections']} connections)"
        for r in doc["routes"]
    )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">{escape(sc["description"])}</p>',
        _meta(doc, runs, routes),
        "<h2>Outcome</h2>",
        _summary(runs),
        "<h2>What the upstreams were scripted to answer</h2>",
        _windows(doc),
        "<h2>Over time</h2>",
        f'<div class="cols" style="{cols}">',
        *(
            f"<div><h3>{escape(r['label'])}</h3>{_charts(r, duration, scales, route_colors)}</div>"
            for r in runs
        ),
        "</div>",
        "<h2>Routes and rules</h2>",
        f'<div class="cols" style="{cols}">',
        *(f"<div><h3>{escape(r['label'])}</h3>{_routes_rules(r)}</div>" for r in runs),
        "</div>",
        FOOTER,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
