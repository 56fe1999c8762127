"""`make bench`: relayguard beside Postfix 3.7 on this machine, in one run.

1. the sink limit: smtp-source straight into smtp-sink;
2. a private Postfix instance relaying to smtp-sink;
3. relayguard with one route to smtp-sink;
with the same workload for 2 and 3 (smtp-source, N messages of SIZE bytes over
S parallel sessions; once with one message per connection, smtp-source's
default, and once with `-d`, many messages per session), each repeated,
interleaved so that drift on the machine hits both alike. Then scale figures
for relayguard alone (scheduler, restart with 1M queued, memory per message).

Prints a table and writes bench/results/bench-DATE.json (see PERFORMANCE.md for
how to read it). `--quick` is the few-seconds version the test suite runs.
Exit status: 0 done, 1 failed (the reason is printed), 77 skipped (a tool is
missing; the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from harness import PROCS, BenchError, MemorySampler, Missing, Sink, find_tool, free_port
from postfix_rig import PostfixInstance
from relayguard_rig import RelayguardInstance, check_available

HERE = Path(__file__).resolve().parent
SKIP_EXIT = 77

VARIANTS = {
    # name: (smtp-source flags, description)
    "per_connection": ((), "1 message per connection"),
    "per_session": (("-d",), "many messages per session (-d)"),
}
HEADLINE_VARIANT = "per_connection"  # PERFORMANCE.md's workload: one message per connection

GOALS = {
    "ingest_ratio": 1.0,  # durable ingest ≥ 1.0x Postfix
    "end_to_end_ratio": 1.0,  # end to end ≥ 1.0x Postfix
    "restart_seconds_1m": 30.0,  # restart with 1M queued ≤ 30 s
    "bytes_per_queued_message": 1024.0,  # ≤ 1 KB per queued message
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- one measured run -------------------------------------------------------------------


def smtp_source_argv(args: argparse.Namespace, variant: str, port: int) -> list[str]:
    return [
        find_tool("smtp-source"),
        "-s",
        str(args.sessions),
        "-m",
        str(args.messages),
        "-l",
        str(args.size),
        "-M",
        "source.bench.test",
        "-f",
        "source@example.org",
        "-t",
        "sink@example.com",
        *VARIANTS[variant][0],
        f"127.0.0.1:{port}",
    ]


def run_smtp_source(argv: list[str], timeout: float) -> float:
    """Run smtp-source to completion; its wall time."""
    t0 = time.monotonic()
    p = PROCS.start(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p)
        raise BenchError(
            f"smtp-source did not finish within {timeout:.0f}s: {' '.join(argv)}"
        ) from None
    wall = time.monotonic() - t0
    PROCS.stop(p)
    if p.returncode != 0:
        raise BenchError(
            f"smtp-source exited {p.returncode}: "
            f"{out.decode(errors='replace').strip()[-600:]} ({' '.join(argv)})"
        )
    return wall


@contextlib.contextmanager
def latency_sampler(port: int, args: argparse.Namespace) -> Iterator[dict[str, object]]:
    """The sampler runs for the body of the `with`; its result fills the yielded dict."""
    argv = [
        sys.executable,
        str(HERE / "latency.py"),
        "--port",
        str(port),
        "--size",
        str(args.size),
        "--sessions",
        str(args.sample_sessions),
        "--interval",
        str(args.sample_interval),
        "--max-seconds",
        str(args.timeout),
    ]
    p = PROCS.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result: dict[str, object] = {}
    try:
        yield result
    finally:
        try:
            out, err = p.communicate(input=b"", timeout=90)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
            raise BenchError("the latency sampler did not stop within 90s") from None
        PROCS.stop(p)
        try:
            result.update(json.loads(out))
        except ValueError:
            raise BenchError(
                f"the latency sampler failed ({p.returncode}): "
                f"{err.decode(errors='replace')[-800:]}"
            ) from None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure_sink_limit(args: argparse.Namespace, variant: str) -> dict[str, object]:
    with Sink() as sink:
        base = sink.count
        wall = run_smtp_source(smtp_source_argv(args, variant, sink.port), args.timeout)
        sink.wait_for(base + args.messages, 30)
    return {"wall_seconds": round(wall, 3), "rate": round(args.messages / wall, 1)}


def make_instance(
    system: str,
    sink_port: int,
    args: argparse.Namespace,
    *,
    profile: str | None = None,
    profile_out: Path | None = None,
) -> PostfixInstance | RelayguardInstance:
    port = free_port()
    dsn = args.pg.create_database("bench") if system == "relayguard-pg" else None
    if system == "postfix":
        return PostfixInstance(sink_port, port, base_dir=args.workdir, concurrency=args.concurrency)
    return RelayguardInstance(
        sink_port,
        port,
        base_dir=args.workdir,
        concurrency=args.concurrency,
        profile=profile,
        profile_out=profile_out,
        workers=args.workers,
        spool_dsn=dsn,
    )


def settled_log_counts(inst: RelayguardInstance, timeout: float = 10.0) -> dict[str, int]:
    """The relay's event counts once the last delivery is logged: the sink counts a
    message when it answers the dot, and the relay logs `delivered` only after it
    has read that 250 and committed, so read at once, the count can be one short.
    A message really lost still shows after the timeout."""
    deadline = time.monotonic() + timeout
    counts = inst.log_counts()
    while counts.get("delivered", 0) < counts.get("accepted", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = inst.log_counts()
    return counts


def measure_relay(
    args: argparse.Namespace,
    system: str,
    variant: str,
    *,
    profile: str | None = None,
    profile_out: Path | None = None,
) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    with (
        Sink() as sink,
        make_instance(system, sink.port, args, profile=profile, profile_out=profile_out) as inst,
    ):
        base = sink.count
        alive: Callable[[], bool] = (
            inst.alive
            if isinstance(inst, RelayguardInstance)
            else lambda: inst.master_pid() is not None
        )
        with MemorySampler(inst.processes, interval=args.mem_interval) as mem:
            with latency_sampler(inst.port, args) as sampled:
                t0 = time.monotonic()
                wall = run_smtp_source(smtp_source_argv(args, variant, inst.port), args.timeout)
                t_ingest = t0 + wall
            sent = int(sampled.get("sent", 0))  # type: ignore[call-overload]
            target = base + args.messages + sent
            try:
                t_done = sink.wait_for(target, args.timeout, alive=alive)
            except BenchError as exc:
                said = inst.log_problems()[:5]
                if not said and isinstance(inst, PostfixInstance):
                    said = inst.log_tail(10).splitlines()
                raise BenchError(f"{system}: {exc}; its log says: {said}") from None
        lat = [float(x) for x in sampled.get("latencies_ms", [])]  # type: ignore[attr-defined]
        run: dict[str, object] = {
            "ingest_rate": round(args.messages / (t_ingest - t0), 1),
            "end_to_end_rate": round(args.messages / (t_done - t0), 1),
            "ingest_seconds": round(t_ingest - t0, 3),
            "end_to_end_seconds": round(t_done - t0, 3),
            "latency_p50_ms": _r(percentile(lat, 0.50)),
            "latency_p99_ms": _r(percentile(lat, 0.99)),
            "latency_max_ms": _r(max(lat) if lat else None),
            "latency_samples": len(lat),
            "sampler_errors": sampled.get("errors", []),
            "peak_rss_kb": mem.peak_rss_kb,
            "peak_pss_kb": mem.peak_pss_kb,
            "peak_processes": mem.peak_processes,
            "memory_samples": mem.samples,
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        }
        if isinstance(inst, RelayguardInstance):
            counts = settled_log_counts(inst)
            run["log_events"] = {
                k: v
                for k, v in counts.items()
                if k
                in (
                    "accepted",
                    "delivered",
                    "deferred",
                    "bounced",
                    "accept_failed",
                    "delivery_error",
                    "session_error",
                    "spool_full",
                )
            }
            run["log_problems"] = inst.log_problems(5)
        else:
            run["log_problems"] = inst.log_problems()[:5]
    if isinstance(inst, RelayguardInstance):
        run["vm_hwm_kb"] = inst.hwm_kb
    return run


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


# -- summaries ----------------------------------------------------------------------------


def median_of(runs: list[dict[str, object]], key: str) -> float | None:
    vals = [float(r[key]) for r in runs if r.get(key) is not None]  # type: ignore[arg-type]
    return round(statistics.median(vals), 2) if vals else None


SUMMARY_KEYS = (
    "ingest_rate",
    "end_to_end_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "peak_rss_kb",
    "peak_pss_kb",
)


def summarise(results: dict[str, object]) -> None:
    relay = results["relay"]
    assert isinstance(relay, dict)
    summary: dict[str, object] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for variant in VARIANTS:
        summary[variant] = {}
        for system in ("postfix", "relayguard"):
            runs = relay[variant][system]
            summary[variant][system] = {k: median_of(runs, k) for k in SUMMARY_KEYS}  # type: ignore[index]
        pf, rg = summary[variant]["postfix"], summary[variant]["relayguard"]  # type: ignore[index]
        ratios[variant] = {
            k: (round(rg[k] / pf[k], 3) if rg[k] is not None and pf[k] else None)
            for k in SUMMARY_KEYS
        }
    pg: dict[str, object] = {}
    for variant in VARIANTS:
        runs = relay[variant].get("relayguard-pg", [])  # type: ignore[index]
        if runs:
            ours = {k: median_of(runs, k) for k in SUMMARY_KEYS}
            lite = summary[variant]["relayguard"]  # type: ignore[index]
            pg[variant] = {
                "summary": ours,
                "ratio_to_sqlite": {
                    k: (round(ours[k] / lite[k], 3) if ours[k] is not None and lite[k] else None)  # type: ignore[operator]
                    for k in SUMMARY_KEYS
                },
            }
    if pg:
        results["postgres_summary"] = pg
    results["summary"] = summary
    results["ratios"] = ratios
    results["ratio_basis"] = (
        f"relayguard/Postfix of the medians, workload "
        f"'{HEADLINE_VARIANT}' ({VARIANTS[HEADLINE_VARIANT][1]})"
    )
    results["ingest_ratio"] = ratios[HEADLINE_VARIANT]["ingest_rate"]
    results["end_to_end_ratio"] = ratios[HEADLINE_VARIANT]["end_to_end_rate"]
    sl = results["sink_limit"]
    assert isinstance(sl, dict)
    results["sink_limit_summary"] = {v: median_of(sl[v], "rate") for v in VARIANTS}


def goals(results: dict[str, object]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    ratios = results["ratios"]
    assert isinstance(ratios, dict)
    for key, label in (
        ("ingest_rate", "durable ingest ≥ 1.0x Postfix"),
        ("end_to_end_rate", "end-to-end ≥ 1.0x Postfix"),
    ):
        for variant in VARIANTS:
            v = ratios[variant][key]
            out.append(
                {
                    "goal": label,
                    "workload": variant,
                    "value": v,
                    "target": 1.0,
                    "met": None if v is None else v >= 1.0,
                    "how_far": "not measured" if v is None else f"{v:.2f}x ({(v - 1) * 100:+.0f}%)",
                }
            )
    scale = results.get("scale")
    if isinstance(scale, dict):
        restart = scale.get("restart", {})
        secs = restart.get("total_seconds")
        n = int(restart.get("messages", 0) or 0)
        if secs is not None and n:
            est = secs * 1_000_000 / n
            how = "measured" if n >= 1_000_000 else f"from {n:,}, scaled linearly"
            out.append(
                {
                    "goal": "restart with 1M queued ≤ 30 s",
                    "value": round(est, 2),
                    "target": 30.0,
                    "met": est <= 30.0,
                    "how_far": f"{est:.1f} s ({how}; {est / 30.0:.0%} of the budget)",
                }
            )
        b = restart.get("rss_delta_bytes_per_message")
        if b is not None:
            traced = restart.get("traced_bytes_per_message", "?")
            peak = restart.get("peak_rss_delta_bytes_per_message", "?")
            out.append(
                {
                    "goal": "≤ 1 KB of memory per queued message",
                    "value": b,
                    "target": 1024,
                    "met": b <= 1024,
                    "how_far": f"{b:.0f} B RSS per message ({b / 1024:.0%} of 1 KB; Python "
                    f"objects alone {traced} B, peak during load {peak} B)",
                }
            )
    cl = results.get("classify")
    if isinstance(cl, dict):
        for key, what in (
            ("warm_per_s", "replies repeating, as during an incident"),
            ("cold_per_s", "every reply new"),
        ):
            v = float(cl[key])
            out.append(
                {
                    "goal": f"classify ≥ 50,000 replies/s ({what})",
                    "value": v,
                    "target": 50_000,
                    "met": v >= 50_000,
                    "how_far": f"{v:,.0f}/s ({v / 50_000:.2f}x the target)",
                }
            )
    return out


def print_table(results: dict[str, object], args: argparse.Namespace) -> None:
    summary = results["summary"]
    ratios = results["ratios"]
    assert isinstance(summary, dict)
    assert isinstance(ratios, dict)
    rows = (
        ("durable ingest, msg/s", "ingest_rate", 0),
        ("end to end, msg/s", "end_to_end_rate", 0),
        ("250 latency p50, ms", "latency_p50_ms", 1),
        ("250 latency p99, ms", "latency_p99_ms", 1),
        ("peak RSS, MB (Postfix: all procs)", "peak_rss_kb", 1),
        ("peak PSS, MB (shared pages split)", "peak_pss_kb", 1),
    )
    print()
    print(
        f"relayguard vs Postfix {results['postfix_version']}: {args.messages:,} messages x "
        f"{args.size} B, {args.sessions} sessions, {args.repeat} run(s), medians"
    )
    for variant, (_flags, desc) in VARIANTS.items():
        print(f"\n  {desc:<36}{'Postfix':>12}{'relayguard':>12}{'ratio':>8}")
        for label, key, nd in rows:
            pf = summary[variant]["postfix"][key]
            rg = summary[variant]["relayguard"][key]
            if key.endswith("_kb"):
                pf = None if pf is None else pf / 1024
                rg = None if rg is None else rg / 1024
            ratio = ratios[variant][key]
            print(f"  {label:<36}{_fmt(pf, nd):>12}{_fmt(rg, nd):>12}{_fmt(ratio, 2):>8}")
    pg = results.get("postgres_summary")
    if isinstance(pg, dict):
        print("\n  PostgreSQL spool, one node, beside SQLite (ratio PG/SQLite; target >= 0.8):")
        for variant, (_flags, desc) in VARIANTS.items():
            if variant not in pg:
                continue
            ours, ratio = pg[variant]["summary"], pg[variant]["ratio_to_sqlite"]
            lite = summary[variant]["relayguard"]
            print(
                f"  {desc:<36} ingest {_fmt(ours['ingest_rate'], 0)} vs "
                f"{_fmt(lite['ingest_rate'], 0)} msg/s ({_fmt(ratio['ingest_rate'], 2)}), "
                f"end to end {_fmt(ours['end_to_end_rate'], 0)} vs "
                f"{_fmt(lite['end_to_end_rate'], 0)} msg/s ({_fmt(ratio['end_to_end_rate'], 2)})"
            )
        takeover = results.get("pg_takeover")
        if isinstance(takeover, dict) and "first_takeover_s" in takeover:
            print(
                f"  kill -9 of one of two nodes: first lease taken over after "
                f"{takeover['first_takeover_s']} s, all {takeover['acked']} acknowledged "
                f"messages arrived after {takeover['all_acked_arrived_s']} s "
                f"(lease_time {takeover['lease_time_s']} s)"
            )
        elif isinstance(takeover, dict):
            print(f"  kill -9 takeover: failed ({takeover.get('failed')})")
    elif isinstance(results.get("postgres"), dict):
        print(f"\n  PostgreSQL spool: skipped ({results['postgres'].get('skipped')})")  # type: ignore[union-attr]
    sl = results["sink_limit_summary"]
    assert isinstance(sl, dict)
    print(
        "\n  sink limit (smtp-source → smtp-sink): "
        + ", ".join(f"{_fmt(sl[v], 0)} msg/s {VARIANTS[v][1]}" for v in VARIANTS)
    )
    scale = results.get("scale")
    if isinstance(scale, dict):
        s = scale["scheduler"]
        r = scale["restart"]
        print(
            f"\n  scale (relayguard alone, {s['n']:,} deferred): DueQueue enqueue "
            f"{s['enqueue_per_s']:,}/s, dequeue {s['dequeue_drain_per_s']:,}/s "
            f"(at depth: {s['enqueue_at_depth_per_s']:,}/s in, "
            f"{s['dequeue_at_depth_per_s']:,}/s out), "
            f"{s['bytes_per_entry']} B/entry"
        )
        print(
            f"  restart with {r['messages']:,} queued: {r['total_seconds']} s (open "
            f"{r['open_seconds']} s, index {r['index_seconds']} s, schedule "
            f"{r['schedule_seconds']} s); {r['rss_delta_bytes_per_message']} B RSS per message"
        )
    cl = results.get("classify")
    if isinstance(cl, dict):
        print(
            f"\n  classify (one process, {cl['distinct_replies']} distinct corpus replies): "
            f"{cl['cold_per_s']:,}/s cold ({cl['cold_us_per_reply']} µs each), "
            f"{cl['warm_per_s']:,}/s repeated, {cl['incident_stream_per_s']:,}/s with half "
            "the texts new"
        )
    mx = results.get("mx")
    if isinstance(mx, dict) and "skipped" in mx:
        print(f"\n  mx: skipped ({mx['skipped']})")
    elif isinstance(mx, dict):
        print(
            f"\n  provider keys ({mx['domains']:,} distinct domains, cold cache, "
            f"{mx['concurrency']} rounds at once): {mx['cold_lookups_per_s']:,} lookups/s; "
            f"added delay per round p50 {mx['cold_added_delay_p50_ms']} ms, "
            f"p99 {mx['cold_added_delay_p99_ms']} ms cold, "
            f"p99 {mx['warm_added_delay_p99_us']} µs cached"
        )
    print("\n  goals:")
    for g in results["goals"]:  # type: ignore[attr-defined]
        mark = {True: "met ", False: "MISS", None: "n/a "}[g["met"]]
        wl = f" [{g['workload']}]" if "workload" in g else ""
        print(f"   {mark} {g['goal']}{wl}: {g['how_far']}")
    print()


def _fmt(x: float | None, nd: int) -> str:
    if x is None:
        return "—"
    return f"{x:,.{nd}f}"


# -- scale ------------------------------------------------------------------------------


def scale_figures(args: argparse.Namespace) -> dict[str, object]:
    import scale_figures as sf  # noqa: PLC0415

    log(f"scale: DueQueue with {args.scale_n:,} deferred messages")
    sched = sf.scheduler_figures(args.scale_n)
    d = Path(tempfile.mkdtemp(prefix="rg-bench-scale-", dir=args.workdir))
    try:
        log(f"scale: building a spool with {args.scale_n:,} messages")
        built = sf.build_spool(d, args.scale_n, body_bytes=args.scale_body)
        plan = sf.index_query_plan(d)
        log(f"scale: restart with {args.scale_n:,} queued (timed, then traced)")
        timeout = max(120.0, args.scale_n / 5000)
        timed = sf.run_restart(d, trace=False, timeout=timeout)
        traced = sf.run_restart(d, trace=True, timeout=timeout * 3)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    restart = dict(timed)
    for k in ("traced_bytes_per_message", "traced_peak_bytes_per_message"):
        restart[k] = traced.get(k)
    restart["traced_run_total_seconds"] = traced.get("total_seconds")
    restart["page_cache"] = "warm (spool just written)"
    return {"scheduler": sched, "spool": built, "index_query_plan": plan, "restart": restart}


def _figures_of(script: str, *args: str, timeout: float) -> dict[str, object]:
    """Run a figure script of bench/ in a process of its own; its one JSON object."""
    res = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if res.returncode != 0:
        raise BenchError(f"{script} failed: {res.stderr[-2000:]}")
    return dict(json.loads(res.stdout))


def classify_figures(args: argparse.Namespace) -> dict[str, object]:
    """Reply classification speed (bench/classify_speed.py)."""
    seconds = "1" if args.quick else "5"
    log(f"classify: the reply corpus, {seconds} s per figure")
    return _figures_of("classify_speed.py", "--seconds", seconds, timeout=120)


def mx_figures(args: argparse.Namespace) -> dict[str, object]:
    """Provider-key lookups for 10,000 distinct domains, cold cache (bench/mx_speed.py)."""
    domains = "2000" if args.quick else "10000"
    log(f"mx: provider keys for {domains} distinct domains, cold cache, real dnsmasq")
    return _figures_of("mx_speed.py", "--domains", domains, timeout=300)


# -- profile ------------------------------------------------------------------------------


def profile_run(args: argparse.Namespace, out_dir: Path, stamp: str) -> dict[str, object]:
    kind = args.profile
    suffix = "pstats" if kind == "cprofile" else "txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile-{stamp}.{suffix}"
    log(f"profile: one relayguard run under {kind} (not counted in the figures)")
    run = measure_relay(args, "relayguard", HEADLINE_VARIANT, profile=kind, profile_out=path)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not path.exists():
        raise BenchError(f"the profiler wrote no {path}")
    import profile_summary  # noqa: PLC0415

    top = profile_summary.summarise(path, kind)
    (out_dir / f"profile-{stamp}-top.txt").write_text(top["text"])  # type: ignore[arg-type]
    print(top["text"])
    return {"file": str(path), "tool": kind, "run": run, "top": top["top"]}


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: 300 messages, 1 run, 20k-row scale test",
    )
    p.add_argument("--output", default=str(HERE / "results"), help="directory for the JSON")
    p.add_argument("--messages", type=int, help="messages per run (default 20000; quick 300)")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=5120, help="smtp-source -l (payload bytes)")
    p.add_argument("--repeat", type=int, help="runs per system and workload (default 3; quick 1)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=20,
        help="outbound connections (Postfix destination concurrency, route max)",
    )
    p.add_argument(
        "--workers", type=int, help="relayguard server.workers (default: the config's default)"
    )
    p.add_argument(
        "--scale-n",
        type=int,
        help="queued messages for the scale figures (default 1000000; quick 20000)",
    )
    p.add_argument("--scale-body", type=int, default=256, help="body bytes of the scale rows")
    p.add_argument("--sample-sessions", type=int, default=1)
    p.add_argument(
        "--sample-interval",
        type=float,
        help="pause between sampled messages, s (default 0.1; quick 0.05)",
    )
    p.add_argument("--mem-interval", type=float, default=0.5)
    p.add_argument("--timeout", type=float, help="seconds for any one phase of a run")
    p.add_argument(
        "--workdir",
        default=None,
        help="where temporary instances and spools go (default: the system temp "
        "dir; must be a real disk, not tmpfs, for fsync to mean anything)",
    )
    p.add_argument(
        "--only",
        choices=["sink", "postfix", "relayguard", "postgres", "scale", "classify", "mx"],
        action="append",
        help="run only these parts (repeatable); default all",
    )
    p.add_argument(
        "--profile",
        choices=["cprofile", "py-spy"],
        help="also run relayguard once under a profiler and summarise hot spots",
    )
    args = p.parse_args(argv)
    if args.messages is None:
        args.messages = 300 if args.quick else 20_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.scale_n is None:
        args.scale_n = 20_000 if args.quick else 1_000_000
    if args.sample_interval is None:
        args.sample_interval = 0.05 if args.quick else 0.1
    if args.timeout is None:
        args.timeout = max(60.0, args.messages / 20)
    return args


def preflight(args: argparse.Namespace) -> dict[str, str]:
    """Tools and facts; raises Missing with the reason when something is not there."""
    tools = {name: find_tool(name) for name in ("smtp-source", "smtp-sink", "postfix", "postconf")}
    check_available()
    try:
        version = subprocess.run(
            [tools["postconf"], "-dh", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        version = "?"
    if os.geteuid() != 0:
        raise Missing("the Postfix instance needs root (postfix start drops to mail_owner)")
    import pwd  # noqa: PLC0415

    try:
        pwd.getpwnam("postfix")
    except KeyError:
        raise Missing("no `postfix` user (install Debian's postfix package)") from None
    fs = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        where = args.workdir or tempfile.gettempdir()
        fs = subprocess.run(
            ["findmnt", "-no", "FSTYPE", "-T", where],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    return {"postfix_version": version or "?", "workdir_fstype": fs, **tools}


def relayguard_revision() -> dict[str, object]:
    """Which relayguard was measured: the commit and any uncommitted changes to it."""
    root = HERE.parent
    out: dict[str, object] = {}
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out["commit"] = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or "?"
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "relayguard"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        out["uncommitted"] = [ln[3:] for ln in status.splitlines() if ln.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(
        args.only or ["sink", "postfix", "relayguard", "postgres", "scale", "classify", "mx"]
    )
    out_dir = Path(args.output)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d-%H%M%S")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        facts = preflight(args)
    except Missing as exc:
        print(f"bench: skipped: {exc}", flush=True)
        return SKIP_EXIT
    except BenchError as exc:
        print(f"bench: cannot run: {exc}", flush=True)
        return 1
    if facts["workdir_fstype"] in ("tmpfs", "ramfs"):
        log(
            f"warning: the work directory is on {facts['workdir_fstype']}: fsync costs nothing "
            "there, so the comparison is not what production sees (use --workdir)"
        )

    results: dict[str, object] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "workdir_fstype": facts["workdir_fstype"],
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "postfix_version": facts["postfix_version"],
        "relayguard_revision": relayguard_revision(),
        "workload": {
            "messages": args.messages,
            "size": args.size,
            "sessions": args.sessions,
            "repeat": args.repeat,
            "concurrency": args.concurrency,
            "relayguard_workers": args.workers or "config default",
            "variants": {
                k: {"smtp_source_flags": list(v[0]), "description": v[1]}
                for k, v in VARIANTS.items()
            },
            "latency_sampler": {
                "sessions": args.sample_sessions,
                "interval_s": args.sample_interval,
                "measures": "final dot sent → 250 received",
            },
        },
        "method": {
            "ingest_rate": "messages / smtp-source wall time (until the last 250)",
            "end_to_end_rate": "messages / time until smtp-sink counted them all "
            "(plus the sampler's)",
            "peak_rss_kb": "max over samples of summed VmRSS (Postfix: master + children)",
            "peak_pss_kb": "same with Pss from smaps_rollup (shared pages split)",
            "runs": "fresh sink and fresh instance per run; systems interleaved per repetition",
        },
        "systems": {
            "postfix": PostfixInstance(0, 0, concurrency=args.concurrency).settings(),
            "relayguard": RelayguardInstance(
                0, 0, concurrency=args.concurrency, workers=args.workers
            ).settings(),
        },
        "sink_limit": {v: [] for v in VARIANTS},
        "relay": {v: {"postfix": [], "relayguard": []} for v in VARIANTS},
    }
    systems = ["postfix", "relayguard"]
    args.pg = None
    if "postgres" in only:
        sys.path.insert(0, str(HERE.parent / "tests"))
        import pgserver  # noqa: PLC0415 - tests/pgserver.py: the tests' private cluster

        why = pgserver.unavailable()
        if why is None:
            log("postgres: starting a private cluster (initdb, pg_ctl) for the PG spool")
            args.pg = pgserver.shared_cluster()
            systems.append("relayguard-pg")
            for variant in VARIANTS:
                results["relay"][variant]["relayguard-pg"] = []  # type: ignore[index]
        else:
            results["postgres"] = {"skipped": why}
            log(f"postgres: skipped: {why}")
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for variant in VARIANTS:
                if "sink" in only:
                    log(f"run {rep + 1}/{args.repeat} {variant}: sink limit")
                    r = measure_sink_limit(args, variant)
                    results["sink_limit"][variant].append(r)  # type: ignore[index]
                    log(f"  {r['rate']} msg/s")
                for system in systems:
                    if system not in only and system != "relayguard-pg":
                        continue
                    log(f"run {rep + 1}/{args.repeat} {variant}: {system}")
                    r = measure_relay(args, system, variant)
                    results["relay"][variant][system].append(r)  # type: ignore[index]
                    log(
                        f"  ingest {r['ingest_rate']} msg/s, end to end {r['end_to_end_rate']} "
                        f"msg/s, p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, "
                        f"peak RSS {int(r['peak_rss_kb']) // 1024} MB"
                    )  # type: ignore[call-overload]
        if args.pg is not None:
            from pg_takeover import takeover_figures  # noqa: PLC0415 - needs the cluster

            log("postgres: two nodes, kill -9 one mid-delivery, time the lease takeover")
            results["pg_takeover"] = takeover_figures(args.pg)
            log(f"  {results['pg_takeover']}")
        if "scale" in only:
            results["scale"] = scale_figures(args)
        if "classify" in only:
            results["classify"] = classify_figures(args)
        if "mx" in only:
            results["mx"] = mx_figures(args)
        if args.profile:
            results["profile"] = profile_run(args, out_dir, stamp)
    except BenchError as exc:
        print(f"bench: failed: {exc}", flush=True)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bench: interrupted ({exc or 'SIGINT'}); cleaning up", flush=True)
        return 130
    except Exception:
        print("bench: unexpected error:\n" + traceback.format_exc(), flush=True)
        return 1
    finally:
        PROCS.close()
        if args.pg is not None:
            pgserver.stop_shared_cluster()

    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    summarise(results)
    results["goals"] = goals(results)
    print_table(results, args)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
