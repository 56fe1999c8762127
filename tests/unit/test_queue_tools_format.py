"""The queue tools' pure half: summaries, filters, qshape buckets and the printed tables."""

from __future__ import annotations

import json

from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.ops.queue_tools import (
    detail,
    format_action,
    format_list,
    format_routes,
    format_shape,
    format_show,
    format_span,
    format_when,
    header_fields,
    matches,
    shape,
    summarize,
)

NOW = 1_700_000_000.0
BUSY = Reply(451, "4.7.500", "Server busy. Please try again later", Phase.RCPT, "mx.example.com")
OK = Reply(250, "2.0.0", "Ok: queued", Phase.AFTER_DATA, "mx.example.net")
BODY = (
    b"Received: from x by y;\r\n\tWed, 1 Jan 2025 00:00:00 +0000\r\n"
    b"From: <me@example.org>\r\nSubject: hello\r\n  there\r\nMessage-ID: <m1@example.org>\r\n"
    b"\r\nBody: not a header\r\n"
)


def message(
    seq: int = 1,
    *,
    age: float = 600.0,
    next_in: float = 300.0,
    state: MessageState = MessageState.ACTIVE,
    recipients: tuple[Recipient, ...] | None = None,
    attempts: list[Attempt] | None = None,
) -> QueuedMessage:
    rcpts = (
        recipients
        if recipients is not None
        else (
            Recipient("a@example.com", last_reply=BUSY),
            Recipient(
                "b@example.net", RecipientState.DELIVERED, last_reply=OK, delivered_via="primary"
            ),
        )
    )
    return QueuedMessage(
        seq=seq,
        queue_id=f"Q{seq:04d}",
        envelope=Envelope(
            "me@example.org", rcpts, client_address="192.0.2.1", client_helo="mta.example.org"
        ),
        arrival_at=NOW - age,
        next_attempt_at=NOW + next_in,
        state=state,
        size=1234,
        message_id="<m1@example.org>",
        attempts=attempts
        if attempts is not None
        else [
            Attempt(NOW - 590, "primary", ("a@example.com",), BUSY, "defer", "rate-limited", 0.2),
            Attempt(NOW - 590, "primary", ("b@example.net",), OK, "delivered", "", 0.2),
        ],
    )


def test_display_states() -> None:
    assert summarize(message(next_in=300), NOW)["state"] == "deferred"
    assert summarize(message(next_in=0), NOW)["state"] == "active"
    assert summarize(message(next_in=-5), NOW)["state"] == "active"
    assert summarize(message(state=MessageState.HELD, next_in=-5), NOW)["state"] == "held"


def test_summary_names_the_last_reply_rule_and_route_of_each_recipient() -> None:
    s = summarize(message(), NOW)
    assert s["queue_id"] == "Q0001"
    assert s["age"] == 600
    assert s["attempts"] == 2
    assert s["recipients"] == [
        {
            "address": "a@example.com",
            "state": "queued",
            "last_reply": "451 4.7.500 Server busy. Please try again later",
            "route": "primary",
            "rule": "rate-limited",
        },
        {
            "address": "b@example.net",
            "state": "delivered",
            "last_reply": "250 2.0.0 Ok: queued",
            "route": "primary",
            "rule": None,
        },
    ]
    assert json.loads(json.dumps(s)) == s


def test_filters_look_at_pending_recipients() -> None:
    s = summarize(message(), NOW)
    assert matches(s)
    assert matches(s, state="deferred", domain="EXAMPLE.com", route="primary")
    assert not matches(s, state="held")
    assert not matches(s, domain="example.net")  # delivered there: nothing pending
    assert not matches(s, route="backup")
    never_tried = summarize(message(attempts=[]), NOW)
    assert not matches(never_tried, route="primary")


def test_shape_buckets_like_qshape() -> None:
    summaries = [
        summarize(message(1, age=60), NOW),  # < 5 minutes
        summarize(message(2, age=7 * 60), NOW),  # 5-10
        summarize(message(3, age=2000 * 60), NOW),  # 1280+
        summarize(
            message(
                4,
                age=30 * 60,
                recipients=(
                    Recipient("x@example.org"),
                    Recipient("y@example.org"),
                    Recipient("z@example.com"),
                ),
            ),
            NOW,
        ),  # 20-40, once per domain
    ]
    table = shape(summaries)
    assert table["buckets"] == ["5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    assert table["total"] == [5, 1, 1, 0, 2, 0, 0, 0, 0, 0, 1]
    assert table["rows"] == [
        ["example.com", 4, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        ["example.org", 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    ]
    text = format_shape(table).splitlines()
    assert text[0].split() == ["T", *table["buckets"]]
    assert text[1].split() == ["TOTAL", "5", "1", "1", "0", "2", "0", "0", "0", "0", "0", "1"]
    assert text[2].split()[0] == "example.com"
    assert len({len(line) for line in text}) == 1  # columns line up
    assert shape([])["total"] == [0] * 11


def test_time_words() -> None:
    assert format_span(0) == "0s"
    assert format_span(59.9) == "59s"
    assert format_span(60) == "1m"
    assert format_span(250) == "4m10s"
    assert format_span(2 * 3600 + 5 * 60 + 7) == "2h5m"
    assert format_span(3 * 86400 + 4 * 3600) == "3d4h"
    assert format_when(NOW - 1, NOW) == "now"
    assert format_when(NOW + 90, NOW) == "in 1m30s"


def test_list_table() -> None:
    held = message(2, state=MessageState.HELD)
    text = format_list([summarize(message(), NOW), summarize(held, NOW)], NOW)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["Queue", "ID", "State"]
    assert lines[1].split() == ["Q0001", "deferred", "1234", "10m", "in", "5m", "<me@example.org>"]
    assert lines[2] == (
        "    a@example.com (queued) 451 4.7.500 Server busy. Please try again "
        "later [rule rate-limited, route primary]"
    )
    assert lines[3] == "    b@example.net (delivered) via primary"
    assert lines[4].split() == ["Q0002", "held", "1234", "10m", "-", "<me@example.org>"]
    assert lines[-1] == "-- 2 message(s), 2468 bytes"
    assert format_list([], NOW) == "Queue is empty"


def test_header_fields_unfold_and_stop_at_the_body() -> None:
    assert header_fields(BODY) == [
        ("Received", "from x by y; Wed, 1 Jan 2025 00:00:00 +0000"),
        ("From", "<me@example.org>"),
        ("Subject", "hello there"),
        ("Message-ID", "<m1@example.org>"),
    ]


def test_show() -> None:
    d = detail(message(), BODY, NOW)
    assert json.loads(json.dumps(d)) == d
    text = format_show(d, NOW)
    assert "Queue ID:    Q0001" in text
    assert "State:       deferred, next attempt 2023-11-14 22:18:20Z (in 5m)" in text
    assert "from 192.0.2.1 (helo mta.example.org)" in text
    assert "Sender:      <me@example.org>" in text
    assert "  Subject: hello there" in text
    assert "Attempts: 2" in text
    assert "route primary (0.20s) a@example.com" in text
    assert (
        "      451 4.7.500 Server busy. Please try again later -> defer by rule rate-limited"
        in text
    )
    assert "      250 2.0.0 Ok: queued -> delivered" in text
    held = format_show(detail(message(state=MessageState.HELD), BODY, NOW), NOW)
    assert "State:       held (not tried until released)" in held


def test_routes_and_actions() -> None:
    data = {
        "now": NOW,
        "running": True,
        "routes": [
            {
                "name": "primary",
                "host": "smtp-a.example.net",
                "port": 25,
                "max_connections": 20,
                "connections": 3,
                "suspensions": [
                    {
                        "route": "primary",
                        "destination": "example.com",
                        "until": NOW + 420,
                        "reason": "554 5.7.1 blocked using zen",
                        "rule": "ip-blocklisted",
                    }
                ],
                "throttles": [
                    {
                        "destination": "example.net",
                        "max_connections": 2,
                        "until": NOW + 1800,
                        "rule": "rate-limited",
                    }
                ],
                "probing": ["example.org"],
                "counts": {"rerouted": 1, "delivered": 5},
                "recent": [
                    {
                        "at": NOW - 5,
                        "event": "rerouted",
                        "reply": "554 5.7.1 blocked using zen",
                        "rule": "ip-blocklisted",
                    }
                ],
            },
            {
                "name": "backup",
                "host": "smtp-b.example.net",
                "port": 587,
                "max_connections": 10,
                "connections": 0,
                "suspensions": [],
                "throttles": [],
                "probing": [],
                "counts": {},
                "recent": [],
            },
        ],
    }
    assert format_routes(data).splitlines() == [
        "primary  smtp-a.example.net:25  connections 3/20",
        (
            "  suspended for example.com until 2023-11-14 22:20:20Z (in 7m): "
            "554 5.7.1 blocked using zen [rule ip-blocklisted]"
        ),
        (
            "  throttled for example.net to 2 connection(s) until 2023-11-14 22:43:20Z "
            "[rule rate-limited]"
        ),
        "  probing (one message at a time): example.org",
        "  since start: delivered 5, rerouted 1",
        "  2023-11-14 22:13:15Z rerouted 554 5.7.1 blocked using zen [rule ip-blocklisted]",
        "backup  smtp-b.example.net:587  connections 0/10",
        "  not suspended",
    ]
    stopped = format_routes({**data, "running": False, "routes": data["routes"][1:]})
    assert stopped.startswith("relayguard is not running")
    assert "not suspended" not in stopped
    result = {
        "op": "hold",
        "done": ["Q1", "Q2"],
        "skipped": [{"queue_id": "Q3", "why": "already held"}],
        "missing": ["NOPE"],
    }
    assert format_action(result).splitlines() == [
        "hold: 2 message(s): Q1 Q2",
        "  skipped Q3: already held",
        "  not in the queue: NOPE",
    ]
    assert format_action({"op": "retry", "done": [], "skipped": [], "missing": []}) == (
        "retry: 0 message(s)"
    )
