"""How much provider-key lookups add to delivery: 10,000 distinct recipient domains,
cold cache, against a real DNS server (dnsmasq on 127.0.0.1, as in the tests).

The queue manager awaits the keys of a message's domains before its delivery round,
with up to `max_in_flight` rounds at once (2 x the routes' connections; 60 for the
bench's relay). Each simulated round here does exactly that await, so:

- lookups/s: distinct domains resolved per second, cold (each one a DNS query);
- added delay: how long a round waited for its keys (p50, p99), cold and then warm
  (the same domains again: from the cache).

Half the domains have their MX at Microsoft 365, a quarter at Google, the rest at
their own hosts; a tenth are NXDOMAIN. This measures our side (dnspython, the cache,
the coalescing), not a recursive resolver's cache misses on the Internet.

    python bench/mx_speed.py [--domains N] [--concurrency C]   # prints one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relayguard.dns.mx import ProviderKeys, make_resolver
from relayguard.dns.providers import ProviderTable

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def domain_records(n: int) -> tuple[list[str], list[str]]:
    """The domains asked for, and the dnsmasq configuration lines that answer them."""
    domains = [f"d{i}.bench.test" for i in range(n)]
    lines = ["local=/test/", "local-ttl=300", "cache-size=0"]
    for i, d in enumerate(domains):
        if i % 10 == 9:
            continue  # NXDOMAIN
        if i % 2 == 0:
            host = f"d{i}-bench-test.mail.protection.outlook.com"
        elif i % 4 == 1:
            host = "aspmx.l.google.com"
        else:
            host = f"mx.d{i}.bench.test"
        lines.append(f"mx-host={d},{host},10")
    return domains, lines


def start_dnsmasq(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={conf}",
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("dnsmasq did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def rounds(keys: ProviderKeys, domains: list[str], concurrency: int) -> list[float]:
    """Each round awaits its domain's key, `concurrency` rounds at a time."""
    delays: list[float] = []
    queue = iter(domains)

    async def worker() -> None:
        for domain in queue:
            started = time.perf_counter()
            await keys.keys([domain])
            delays.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return delays


async def measure(port: int, domains: list[str], concurrency: int) -> dict[str, object]:
    resolver = make_resolver([("127.0.0.1", port)], 2.0)
    keys = ProviderKeys(resolver, ProviderTable.build(), time.time, timeout=2.0)
    started = time.perf_counter()
    cold = await rounds(keys, domains, concurrency)
    cold_seconds = time.perf_counter() - started
    warm = await rounds(keys, domains, concurrency)
    microsoft = sum(1 for d in domains if keys.cached(d) == "provider:microsoft")
    return {
        "domains": len(domains),
        "concurrency": concurrency,
        "cold_lookups_per_s": round(len(domains) / cold_seconds),
        "cold_added_delay_p50_ms": round(percentile(cold, 0.5) * 1000, 2),
        "cold_added_delay_p99_ms": round(percentile(cold, 0.99) * 1000, 2),
        "warm_added_delay_p99_us": round(percentile(warm, 0.99) * 1e6, 1),
        "failures": keys.failures,
        "keyed_microsoft": microsoft,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--domains", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=60)
    args = p.parse_args()
    if not Path(DNSMASQ).is_file():
        print(json.dumps({"skipped": "dnsmasq is not installed (make system-deps)"}))
        return 0
    domains, lines = domain_records(args.domains)
    with tempfile.TemporaryDirectory(prefix="rg-bench-mx-") as tmp:
        conf = Path(tmp) / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        port = free_port()
        proc = start_dnsmasq(conf, port)
        try:
            result = asyncio.run(measure(port, domains, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
