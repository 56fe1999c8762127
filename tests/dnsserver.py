"""A real DNS server for the tests: dnsmasq (Debian's dnsmasq-base, installed by
`make system-deps`) on 127.0.0.1 and a free port, answering only from the records
given (`--local` zones: a name not given is NXDOMAIN, nothing is forwarded).

Also a nameserver that never answers, for lookup timeouts.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def need_dnsmasq() -> None:
    if not Path(DNSMASQ).is_file():
        pytest.skip("dnsmasq is not installed (make system-deps installs dnsmasq-base)")


@dataclass
class Records:
    """What the server knows. Names are answered with a TTL of `ttl` seconds."""

    zones: Sequence[str] = ("test",)  # answered locally: unknown names are NXDOMAIN
    mx: Mapping[str, Sequence[tuple[int, str]]] = field(default_factory=dict)
    a: Mapping[str, str] = field(default_factory=dict)
    txt: Mapping[str, str] = field(default_factory=dict)
    ttl: int = 300

    def arguments(self) -> list[str]:
        args = [f"--local=/{z}/" for z in self.zones]
        args += [f"--local-ttl={self.ttl}"]
        for domain, hosts in self.mx.items():
            args += [f"--mx-host={domain},{host},{pref}" for pref, host in hosts]
        args += [f"--host-record={name},{ip}" for name, ip in self.a.items()]
        # dnsmasq splits TXT data at commas into strings; the resolver joins them again.
        args += [f"--txt-record={name},{text}" for name, text in self.txt.items()]
        return args


def _free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the DNS server")


class DnsServer:
    """dnsmasq with `records`; `replace(records)` restarts it on the same port (how a
    listing appears or disappears)."""

    def __init__(self, records: Records, log_dir: Path) -> None:
        self.records = records
        self.log_dir = log_dir
        self.port = _free_udp_tcp_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._starts += 1
        log = self.log_dir / f"dnsmasq-{self.port}-{self._starts}.log"
        cmd = [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            "--log-queries",
            "--log-facility=-",
            *self.records.arguments(),
        ]
        with log.open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {log.read_text(errors='replace')}")
            if "started" in log.read_text(errors="replace"):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
                ):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"dnsmasq did not start: {log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None

    def replace(self, records: Records) -> None:
        self.stop()
        self.records = records
        self.start()

    def queries(self) -> list[str]:
        """The names asked, in order, from dnsmasq's query log (every start)."""
        return [
            line.split("query[", 1)[1].split()[1]
            for log in sorted(self.log_dir.glob(f"dnsmasq-{self.port}-*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if "query[" in line
        ]


@contextlib.contextmanager
def dns_server(records: Records, log_dir: Path) -> Iterator[DnsServer]:
    need_dnsmasq()
    server = DnsServer(records, log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def silent_nameserver() -> Iterator[str]:
    """A UDP socket that takes queries and never answers: every lookup times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"
