"""How fast relayguard reads replies: `classify()` over the reply corpus, one process.

- cold: every reply read for the first time (the reading cache emptied before
  each pass over the ~800 distinct corpus lines): the classifier's own cost;
- warm: the same replies again, as the relay sees them while an incident lasts
  (every message to a blocked destination gets the same text naming our egress
  address), where readings come from the cache;
- incident stream: the corpus with the recipient and our address varied per
  message (so that half the texts are new), as a mixed steady state.

    python bench/classify_speed.py [--seconds S]   # prints one JSON object
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relayguard.model import Reply
from relayguard.policy import classify as classifier
from relayguard.policy.reply_corpus import load_reply_corpus
from relayguard.policy.reply_line import reply_from_line


def rate(replies: list[Reply], seconds: float, *, cold: bool) -> float:
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if cold:
            classifier._read.cache_clear()  # noqa: SLF001 - the cold figure empties the cache
        for reply in replies:
            classifier.classify(reply)
        n += len(replies)
    return n / (time.perf_counter() - started)


def incident_stream(replies: list[Reply], size: int) -> list[Reply]:
    rng = random.Random(1)
    out = []
    for i in range(size):
        r = rng.choice(replies)
        if i % 2:  # a different recipient each time: a text never seen before
            r = Reply(r.code, r.enhanced, f"{r.text} <user{i}@example.com>", r.phase)
        out.append(r)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    replies = [reply_from_line(r.line, r.phase) for r in load_reply_corpus()]
    cold = rate(replies, args.seconds, cold=True)
    warm = rate(replies, args.seconds, cold=False)
    classifier._read.cache_clear()  # noqa: SLF001
    stream = rate(incident_stream(replies, 20_000), args.seconds, cold=False)
    print(
        json.dumps(
            {
                "distinct_replies": len(replies),
                "cold_per_s": round(cold),
                "warm_per_s": round(warm),
                "incident_stream_per_s": round(stream),
                "cold_us_per_reply": round(1e6 / cold, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
