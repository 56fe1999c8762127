"""How fast `relayguard replay` is: N generated messages through a scenario (default:
100,000 through the 48-hour rbl-incident), timed in parts; --profile shows where the
time goes (cProfile, top functions by own time).

    .venv/bin/python bench/replay_speed.py                    # 100k, rbl-incident, default
    .venv/bin/python bench/replay_speed.py --messages 20000 --compare --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relayguard import logging as rg_logging  # noqa: E402
from relayguard.replay import runner  # noqa: E402
from relayguard.replay.sample import generate_mbox  # noqa: E402


class Timer:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def __call__(self, label: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.rows.append((label, time.perf_counter() - wall, time.process_time() - cpu))
        print(
            f"  {label:<34} {self.rows[-1][1]:7.2f} s wall {self.rows[-1][2]:7.2f} s cpu",
            flush=True,
        )
        return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "rbl-incident.toml"))
    ap.add_argument("--span", default=24.0, type=float, help="arrivals over this many hours")
    ap.add_argument("--compare", action="store_true", help="also run policies/plain-mta.toml")
    ap.add_argument("--profile", action="store_true", help="cProfile the replay")
    ap.add_argument("--keep", default=None, help="write the generated mbox here")
    args = ap.parse_args()

    rg_logging.configure(level="error", stream=sys.stderr)  # as `relayguard replay` does
    t = Timer()
    print(f"replay speed: {args.messages} messages, {Path(args.scenario).name}")
    with tempfile.TemporaryDirectory() as tmp:
        mbox = Path(args.keep) if args.keep else Path(tmp) / "input.mbox"
        data = t("generate mbox", generate_mbox, args.messages, span=args.span * 3600)
        mbox.write_bytes(data)
        compare = [ROOT / "policies" / "plain-mta.toml"] if args.compare else []
        prepared = t(
            "read input + load scenario, policy",
            runner.prepare,
            args.scenario,
            mbox,
            compare=compare,
        )
        prof = cProfile.Profile() if args.profile else None
        if prof is not None:
            prof.enable()
        doc = t(
            "replay (virtual " + str(int(prepared.scenario.duration // 3600)) + " h)",
            runner.execute,
            prepared,
            seed=1,
        )
        if prof is not None:
            prof.disable()
    total = sum(w for label, w, _ in t.rows if label != "generate mbox")
    print(f"  {'total (read + replay)':<34} {total:7.2f} s wall")
    for run in doc["runs"]:
        m = run["messages"]
        print(
            f"  {run['label']}: {m['delivered']} delivered, {m['bounced']} bounced, "
            f"{m['still_queued']} queued, {run['transactions']} transactions, "
            f"virtual end {run['ended_at'] / 3600:.1f} h"
        )
    if prof is not None:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
        stats.print_stats(25)
        print(out.getvalue())
        _by_area(stats)
    return 0


AREAS = (
    ("asyncio event loop and tasks", ("asyncio/",)),
    ("queue manager", ("queue_manager.py",)),
    ("policy engine", ("relayguard/policy/",)),
    ("scheduler", ("scheduler.py",)),
    ("bounce / reports (NDR building)", ("bounce.py", "dsn", "reports.py", "textwrap", "email/")),
    ("structlog (dropped log calls)", ("structlog",)),
    (
        "replay: driver, clock, spool, upstream, stats",
        ("relayguard/replay/", "clock.py", "spool/memory.py"),
    ),
    ("dataclasses.replace & model", ("dataclasses.py", "model.py")),
    ("random", ("random.py",)),
)


def _by_area(stats: pstats.Stats) -> None:
    """Own time summed per area of the code: where the replay spends its time."""
    totals: dict[str, float] = {}
    grand = 0.0
    for (file, _line, _name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        grand += tt
        area = next((a for a, keys in AREAS if any(k in file for k in keys)), "other")
        totals[area] = totals.get(area, 0.0) + tt
    print("own time by area (profiled):")
    for area, tt in sorted(totals.items(), key=lambda x: -x[1]):
        print(f"  {area:<48} {tt:6.2f} s  {tt / grand:5.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
