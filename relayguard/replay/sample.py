"""A synthetic mail stream for trying the replay: an mbox with a realistic domain mix.

Used by `bench/replay_speed.py`, the tests and `scenarios/sample.mbox`. The
output depends only on the arguments (seeded), so it can be regenerated.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

# Destination domains and their share of the traffic: the big mailbox providers,
# and smaller receivers that consult DNS blocklists themselves.
DOMAINS = (
    ("outlook.com", 25),
    ("hotmail.com", 10),
    ("gmail.com", 25),
    ("yahoo.com", 10),
    ("example.com", 12),
    ("example.net", 10),
    ("mail.example", 8),
)
SENDERS = ("news@shop.example.org", "billing@example.org", "alerts@example.org", "team@example.org")
DEFAULT_START = datetime(2024, 1, 15, 8, 0, tzinfo=UTC).timestamp()


def generate_mbox(
    count: int,
    *,
    seed: int = 1,
    span: float = 12 * 3600.0,
    start: float = DEFAULT_START,
    max_recipients: int = 3,
) -> bytes:
    """`count` messages whose Date headers spread over `span` seconds from `start`."""
    rng = random.Random(f"sample/{seed}")
    names = [d for d, _ in DOMAINS]
    weights = [w for _, w in DOMAINS]
    out: list[bytes] = []
    for i in range(count):
        at = start + span * i / max(1, count)
        sender = rng.choice(SENDERS)
        domain = rng.choices(names, weights)[0]  # one transaction per domain, mostly
        n = 1 if rng.random() < 0.8 else rng.randint(2, max_recipients)
        rcpts = [f"user{rng.randrange(100_000)}@{domain}" for _ in range(n)]
        date = format_datetime(datetime.fromtimestamp(at, UTC))
        stamp = datetime.fromtimestamp(at, UTC).strftime("%a %b %d %H:%M:%S %Y")
        out.append(
            f"From {sender} {stamp}\n"
            f"Return-Path: <{sender}>\n"
            f"From: Example Shop <{sender}>\n"
            f"To: {', '.join(rcpts)}\n"
            f"Subject: Your order {i + 1}\n"
            f"Date: {date}\n"
            f"Message-ID: <sample-{seed}-{i + 1}@example.org>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=us-ascii\n"
            "\n"
            f"Hello,\n\nthis is message {i + 1} of a sample stream.\n\n".encode()
        )
    return b"".join(out)
