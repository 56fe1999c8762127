"""What `relayguard queue …` and `relayguard routes` show: pure data and formatting.

The control server asks the spool with `query_for` and turns the messages into
plain JSON-able dicts with `summarize` and `detail` (qshape's table with
`shape_of`); the CLI prints them with the `format_*` functions (or as JSON).
No I/O and no clock here: `now` is always handed in, so the server's clock (a
virtual one in tests) decides what "deferred" and "12m ago" mean.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from relayguard.dns.providers import describe_key
from relayguard.durations import format_span
from relayguard.model import Attempt, MessageState, QueuedMessage, RecipientState, domain_of
from relayguard.queue.kept import ResendChoice, bounced_at, egress_failures
from relayguard.queue.spool import KeptMessage, MessageQuery, ShapeEntry

# Display states, as an operator thinks of them (Postfix's words): held by an
# operator; active = due now (or being delivered); deferred = waiting for a retry.
STATES = ("active", "deferred", "held")

# qshape's age buckets, in minutes: a column counts messages younger than its
# label and at least as old as the label before it; the last has the rest.
SHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)

Json = dict[str, Any]


# ---------------------------------------------------------------- data


def display_state(message: QueuedMessage, now: float) -> str:
    if message.state is MessageState.HELD:
        return "held"
    return "active" if message.next_attempt_at <= now else "deferred"


def query_for(state: str | None, domain: str | None, now: float) -> MessageQuery | None:
    """The spool query for a display state (one of STATES) at `now` and a destination
    domain; None for every message."""
    if state is None and domain is None:
        return None
    by_state: dict[str | None, MessageQuery] = {
        None: MessageQuery(),
        "held": MessageQuery(states=frozenset({MessageState.HELD})),
        "active": MessageQuery(states=frozenset({MessageState.ACTIVE}), due_by=now),
        "deferred": MessageQuery(states=frozenset({MessageState.ACTIVE}), due_after=now),
    }
    if state not in by_state:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    return replace(by_state[state], domain=domain)


def _last_attempt(attempts: Sequence[Attempt], address: str) -> Attempt | None:
    for attempt in reversed(attempts):
        if not attempt.recipients or address in attempt.recipients:
            return attempt
    return None


def summarize(message: QueuedMessage, now: float) -> Json:
    """One message as `queue list` shows it (and `--json` prints it)."""
    recipients = []
    for r in message.envelope.recipients:
        last = _last_attempt(message.attempts, r.address)
        recipients.append(
            {
                "address": r.address,
                "state": r.state.value,
                "last_reply": r.last_reply.render() if r.last_reply else None,
                "route": last.route if last else r.delivered_via,
                "rule": r.failed_rule or (last.rule if last else None) or None,
            }
        )
    return {
        "queue_id": message.queue_id,
        "state": display_state(message, now),
        "size": message.size,
        "arrival_at": message.arrival_at,
        "age": max(0.0, now - message.arrival_at),
        "next_attempt_at": message.next_attempt_at,
        "sender": message.envelope.sender,
        "message_id": message.message_id,
        "attempts": len(message.attempts),
        "recipients": recipients,
    }


def summarize_kept(kept: KeptMessage, now: float) -> Json:
    """A kept copy as `queue list --kept` shows it: the message as it finished, when it
    was kept and until when, and which recipients `queue resend` would queue again."""
    out = summarize(kept.message, now)
    failures = egress_failures(kept.message)
    out.update(state="kept", kept_at=kept.kept_at, until=kept.until)
    for r in out["recipients"]:
        refusal = failures.get(r["address"])
        r["category"] = refusal.category if refusal is not None else None
        r["resent"] = r["address"] in kept.resent
        r["resendable"] = refusal is not None and not r["resent"]
    return out


def resend_result(
    choices: Sequence[ResendChoice],
    queued: Sequence[QueuedMessage | None],
    now: float,
    *,
    dry_run: bool,
    route: str | None,
) -> Json:
    """What `queue resend` did (or, dry, would do): per kept copy, the new queue id and
    the recipients with the refusal each bounced on."""
    resent: list[Json] = []
    skipped: list[Json] = []
    for choice, message in zip(choices, queued, strict=True):
        kept = choice.kept.message
        if message is None and not dry_run:
            skipped.append({"kept_id": kept.queue_id, "why": "resent or dropped meanwhile"})
            continue
        recipients = [
            {
                "address": r.address,
                "category": a.category,
                "reply": a.reply.render(),
                "route": a.route,
                "bounced_at": bounced_at(a),
            }
            for r, a in choice.refusals
        ]
        resent.append(
            {
                "kept_id": kept.queue_id,
                "queue_id": message.queue_id if message is not None else None,
                "sender": kept.envelope.sender,
                "message_id": kept.message_id,
                "recipients": recipients,
            }
        )
    return {
        "now": now,
        "dry_run": dry_run,
        "route": route,
        "messages": len(resent),
        "recipients": sum(len(m["recipients"]) for m in resent),
        "resent": resent,
        "skipped": skipped,
    }


def header_fields(body: bytes) -> list[tuple[str, str]]:
    """The message's header fields, unfolded, as they are (encoded words stay encoded)."""
    end = body.find(b"\r\n\r\n")
    head = body if end < 0 else body[: end + 2]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return [(name, " ".join(str(value).split())) for name, value in parsed.items()]


def detail(message: QueuedMessage, body: bytes, now: float) -> Json:
    """Everything `queue show` prints: envelope, headers, every attempt."""
    env = message.envelope
    out = summarize(message, now)
    out["envelope"] = env.to_dict()
    out["headers"] = [[name, value] for name, value in header_fields(body)]
    out["history"] = [
        {
            "at": a.at,
            "route": a.route,
            "recipients": list(a.recipients),
            "reply": a.reply.render(),
            "synthetic": a.reply.synthetic,
            "action": a.action,
            "rule": a.rule,
            "duration": a.duration,
        }
        for a in message.attempts
    ]
    return out


def pending_domains(summary: Mapping[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for r in summary["recipients"]:
        if r["state"] == RecipientState.QUEUED.value:
            seen.setdefault(domain_of(r["address"]), None)
    return list(seen)


def matches(
    summary: Mapping[str, Any],
    *,
    state: str | None = None,
    domain: str | None = None,
    route: str | None = None,
) -> bool:
    """`queue list` filters: display state; a pending recipient in `domain`; a pending
    recipient last tried through `route`."""
    if state is not None and summary["state"] != state:
        return False
    pending = [r for r in summary["recipients"] if r["state"] == RecipientState.QUEUED.value]
    if domain is not None and domain.lower() not in {domain_of(r["address"]) for r in pending}:
        return False
    return route is None or any(r["route"] == route for r in pending)


def shape(summaries: Iterable[Mapping[str, Any]], buckets: Sequence[int] = SHAPE_BUCKETS) -> Json:
    """Messages by destination domain and age, like Postfix's qshape. A message with
    pending recipients in two domains counts once in each."""
    return _tabulate(((s["age"], pending_domains(s)) for s in summaries), buckets)


def shape_of(
    entries: Iterable[ShapeEntry], now: float, buckets: Sequence[int] = SHAPE_BUCKETS
) -> Json:
    """`shape`, from what the spool's `shape` returns (no attempts read)."""
    return _tabulate(((max(0.0, now - e.arrival_at), e.domains) for e in entries), buckets)


def _tabulate(messages: Iterable[tuple[float, Iterable[str]]], buckets: Sequence[int]) -> Json:
    """(age in seconds, pending domains) of each message -> qshape's table."""
    width = len(buckets) + 1
    rows: dict[str, list[int]] = {}
    for age, domains in messages:
        minutes = age / 60.0
        column = next((i for i, b in enumerate(buckets) if minutes < b), len(buckets))
        for domain in domains:
            row = rows.setdefault(domain or "(none)", [0] * width)
            row[column] += 1
    total = [sum(col) for col in zip(*rows.values(), strict=True)] if rows else [0] * width
    ordered = sorted(rows.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    return {
        "buckets": [str(b) for b in buckets] + [f"{buckets[-1]}+"],
        "total": [sum(total), *total],
        "rows": [[domain, sum(counts), *counts] for domain, counts in ordered],
    }


# ---------------------------------------------------------------- time words


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_when(ts: float, now: float) -> str:
    if ts <= now:
        return "now"
    return f"in {format_span(ts - now)}"


# ---------------------------------------------------------------- tables


def _recipient_line(r: Mapping[str, Any]) -> str:
    line = f"{r['address']} ({r['state']})"
    if r["state"] == RecipientState.DELIVERED.value:
        return line + (f" via {r['route']}" if r["route"] else "")
    if r["last_reply"]:
        line += f" {r['last_reply']}"
        why = [f"rule {r['rule']}"] if r["rule"] else []
        why += [f"route {r['route']}"] if r["route"] else []
        if why:
            line += f" [{', '.join(why)}]"
    return line


def format_list(summaries: Sequence[Mapping[str, Any]], now: float) -> str:
    """Like mailq: one line per message, then its recipients and their last replies."""
    if not summaries:
        return "Queue is empty"
    w = max(len("Queue ID"), *(len(s["queue_id"]) for s in summaries))
    lines = [f"{'Queue ID':<{w}} {'State':<8} {'Size':>8}  {'Age':<7} {'Next try':<10} Sender"]
    for s in summaries:
        nxt = "-" if s["state"] == "held" else format_when(s["next_attempt_at"], now)
        lines.append(
            f"{s['queue_id']:<{w}} {s['state']:<8} {s['size']:>8}  "
            f"{format_span(s['age']):<7} {nxt:<10} <{s['sender']}>"
        )
        if s.get("node"):  # a shared spool: the node delivering it, by lease
            left = s["lease_until"] - now
            lines.append(
                f"    being delivered by node {s['node']}, lease ends in {format_span(left)}"
                if left > 0
                else f"    node {s['node']}'s lease ran out: the next claim takes it over"
            )
        lines += [f"    {_recipient_line(r)}" for r in s["recipients"]]
    size = sum(int(s["size"]) for s in summaries)
    lines.append(f"-- {len(summaries)} message(s), {size} bytes")
    return "\n".join(lines)


def format_kept(summaries: Sequence[Mapping[str, Any]], now: float) -> str:
    """`queue list --kept`: one line per kept copy, then its recipients, the ones that
    bounced because of our egress marked with what `queue resend` would do."""
    if not summaries:
        return "No kept copies"
    w = max(len("Queue ID"), *(len(s["queue_id"]) for s in summaries))
    lines = [f"{'Queue ID':<{w}} {'Kept':<7} {'Kept for':<10} {'Size':>8}  Sender"]
    for s in summaries:
        lines.append(
            f"{s['queue_id']:<{w}} {format_span(max(0.0, now - s['kept_at'])):<7} "
            f"{format_when(s['until'], now):<10} {s['size']:>8}  <{s['sender']}>"
        )
        for r in s["recipients"]:
            mark = ""
            if r["category"]:
                mark = f" -- {r['category']}: " + ("resent" if r["resent"] else "can be resent")
            lines.append(f"    {_recipient_line(r)}{mark}")
    size = sum(int(s["size"]) for s in summaries)
    lines.append(f"-- {len(summaries)} kept copy(ies), {size} bytes")
    return "\n".join(lines)


def format_resend(result: Mapping[str, Any]) -> str:
    """What `queue resend` did, or with --dry-run would do."""
    now = float(result["now"])
    counts = f"{result['messages']} message(s), {result['recipients']} recipient(s)"
    via = f" through route {result['route']}" if result["route"] else ""
    if result["dry_run"]:
        lines = [f"resend: would queue {counts}{via} (dry run: nothing changed)"]
    else:
        lines = [f"resend: queued {counts}{via}"]
    if not result["resent"] and not result["skipped"]:
        lines[0] += "; no kept copy has a recipient left to resend that matches"
    for m in result["resent"]:
        new = f" as {m['queue_id']}" if m["queue_id"] else ""
        lines.append(f"  {m['kept_id']}{new} <{m['sender']}>")
        lines.extend(
            f"    {r['address']}: {r['reply']} [{r['category']}, route {r['route']}, "
            f"bounced {format_span(max(0.0, now - r['bounced_at']))} ago]"
            for r in m["recipients"]
        )
    lines += [f"  skipped {s['kept_id']}: {s['why']}" for s in result["skipped"]]
    return "\n".join(lines)


def format_show(d: Mapping[str, Any], now: float) -> str:
    env = d["envelope"]
    if d["state"] == "held":
        state = "held (not tried until released)"
    else:
        nxt = d["next_attempt_at"]
        state = f"{d['state']}, next attempt {format_time(nxt)} ({format_when(nxt, now)})"
    client = env.get("client_address") or "-"
    if env.get("client_helo"):
        client += f" (helo {env['client_helo']})"
    lines = [
        f"Queue ID:    {d['queue_id']}",
        f"State:       {state}",
        f"Arrived:     {format_time(d['arrival_at'])} ({format_span(d['age'])} ago) from {client}",
        f"Size:        {d['size']} bytes",
        f"Message-ID:  {d['message_id'] or '-'}",
        f"Sender:      <{env['sender']}>",
    ]
    extra = [f"{k}={env[k]}" for k in ("ret", "envid") if env.get(k)]
    extra += list(env.get("mail_options") or [])
    if env.get("pinned_routes"):
        extra.append(f"routes={','.join(env['pinned_routes'])}")
    if extra:
        lines.append(f"Options:     {' '.join(extra)}")
    lines.append("Recipients:")
    lines += [f"  {_recipient_line(r)}" for r in d["recipients"]]
    lines.append("Headers:")
    lines += [f"  {name}: {value}" for name, value in d["headers"]]
    lines.append(f"Attempts: {len(d['history'])}")
    for a in d["history"]:
        decided = a["action"] + (f" by rule {a['rule']}" if a["rule"] else "")
        lines.append(
            f"  {format_time(a['at'])} route {a['route']} "
            f"({a['duration']:.2f}s) {', '.join(a['recipients'])}"
        )
        lines.append(f"      {a['reply']}{' (synthetic)' if a['synthetic'] else ''} -> {decided}")
    return "\n".join(lines)


def format_shape(table: Mapping[str, Any]) -> str:
    headers = ["", "T", *table["buckets"]]
    body = [["TOTAL", *table["total"]], *table["rows"]]
    widths = [max(len(str(row[i])) for row in [headers, *body]) for i in range(len(headers))]
    return "\n".join(
        " ".join(str(cell).rjust(w) for cell, w in zip(row, widths, strict=True))
        for row in [headers, *body]
    )


def connections_total(route: Mapping[str, Any]) -> str:
    """The part of a route's line about a cap its nodes share."""
    total = route.get("max_connections_total")
    if total is None:
        return ""
    in_use = route.get("connections_total")
    return f", {'?' if in_use is None else in_use}/{total} across the nodes"


def format_routes(data: Mapping[str, Any]) -> str:
    now = float(data["now"])
    lines: list[str] = []
    if not data["running"]:
        lines.append(
            "relayguard is not running: route state (suspensions, connections) lives "
            "in the server; these are the configured routes."
        )
    for r in data["routes"]:
        lines.append(
            f"{r['name']}  {r['host']}:{r['port']}  "
            f"connections {r['connections']}/{r['max_connections']}" + connections_total(r)
        )
        if r.get("auth"):
            lines.append(f"  auth: {r['auth']}")
        lines.extend(
            f"  suspended for {describe_key(s['destination'])} until {format_time(s['until'])} "
            f"({format_when(s['until'], now)}): {s['reason']} [rule {s['rule']}]"
            for s in r["suspensions"]
        )
        lines.extend(
            f"  throttled for {describe_key(t['destination'])} to {t['max_connections']} "
            f"connection(s) until {format_time(t['until'])} [rule {t['rule']}]"
            for t in r["throttles"]
        )
        lines.extend(
            f"  listed in {c['zone']} ({c['address']} -> {', '.join(c['answers'])})"
            + (f": {c['reason']}" if c["reason"] else "")
            + (" [avoided while another route is clean]" if c["avoid"] else " [not avoided]")
            + (f" [seen by {c['node']}]" if c.get("node") else "")
            for c in r.get("listed", ())
        )
        if r["probing"]:
            lines.append(f"  probing (one message at a time): {', '.join(r['probing'])}")
        if not r["suspensions"] and not r["throttles"] and data["running"]:
            lines.append("  not suspended")
        if r["counts"]:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
            lines.append(f"  since start: {counts}")
        for e in r["recent"]:
            rule = f" [rule {e['rule']}]" if e.get("rule") else ""
            lines.append(f"  {format_time(e['at'])} {e['event']} {e['reply']}{rule}")
    return "\n".join(lines)


def format_reputation(data: Mapping[str, Any]) -> str:
    """`reputation check`: one line per route and zone."""
    rows = [["Route", "Address", "Zone", "Result", "Answer", "Reason"]]
    rows += [
        [
            c["route"],
            c["address"],
            c["zone"],
            c["verdict"],
            ", ".join(c["answers"]) or "-",
            c["reason"] or "-",
        ]
        for c in data["checks"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        " ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + " " + row[-1]
        for row in rows
    ]
    lines += [
        f"{route}: not checked (no public_address or source_address)" for route in data["unchecked"]
    ]
    return "\n".join(lines)


def format_action(result: Mapping[str, Any]) -> str:
    """What `queue retry|hold|release|delete|bounce` did, one line per kind of outcome."""
    done = result["done"]
    lines = [f"{result['op']}: {len(done)} message(s)" + (f": {' '.join(done)}" if done else "")]
    lines += [f"  skipped {s['queue_id']}: {s['why']}" for s in result["skipped"]]
    lines += [f"  not in the queue: {qid}" for qid in result["missing"]]
    return "\n".join(lines)
