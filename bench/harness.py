"""Process plumbing for the benchmark: free ports, owned processes, the sink, RSS sampling.

Every process the benchmark starts is registered here, in its own session
(process group), and is ended by its id in `Processes.close()`, which run.py
calls in a `finally` and at exit. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what and where."""


class Missing(BenchError):  # noqa: N818 - reads better at the raise site: raise Missing(...)
    """A tool the benchmark needs is not installed."""


SBIN_DIRS = (
    "/usr/sbin",
    "/usr/lib/postfix",
    "/usr/lib/postfix/sbin",
    "/usr/libexec/postfix",
    "/usr/local/sbin",
    "/sbin",
)


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    raise Missing(
        f"{name} not found on PATH nor in {', '.join(SBIN_DIRS)} "
        "(Debian: apt-get install postfix; `make bench` installs it)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_banner(
    host: str,
    port: int,
    timeout: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    what: str = "server",
) -> None:
    """Until a TCP connect gets a 220 greeting; QUIT politely."""
    deadline = time.monotonic() + timeout
    last: Exception | str = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited before it listened on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(5)
                banner = s.recv(4096)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(4096)
                    return
                last = f"greeting {banner[:80]!r}"
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise BenchError(f"{what} did not greet on {host}:{port} within {timeout:.0f}s ({last})")


@dataclass
class Processes:
    """Every child the benchmark started, each in its own process group."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        try:
            p: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
                list(argv), start_new_session=True, **kwargs
            )
        except OSError as exc:
            raise BenchError(f"cannot start {argv[0]}: {exc}") from None
        self.children.append(p)
        return p

    def stop(
        self, p: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10.0
    ) -> int | None:
        """Signal the child's own process group (its pid), then SIGKILL after `timeout`."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
        else:
            # The leader is gone; anything it left in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            self.children.remove(p)
        return p.returncode

    def close(self) -> None:
        for p in list(reversed(self.children)):
            self.stop(p, timeout=5)


PROCS = Processes()


# -- smtp-sink ------------------------------------------------------------------

_MESG = re.compile(rb"mesg=(\d+)")


class Sink:
    """`smtp-sink -c` on a free port; counts messages from its running counter.

    The counter must be read continuously: smtp-sink blocks when its stdout
    pipe is full, which would stall the whole benchmark.
    """

    def __init__(self, port: int | None = None, *, backlog: int = 1000) -> None:
        self.exe = find_tool("smtp-sink")
        self.port = port or free_port()
        self.backlog = backlog
        self.count = 0
        self._reached: list[tuple[int, float]] = []  # (count, first time seen), increasing
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._tail = b""

    def __enter__(self) -> Self:
        user = "nobody" if os.geteuid() == 0 else ""
        argv = [
            self.exe,
            "-c",
            *(["-u", user] if user else []),
            "-m",
            "1000",
            f"127.0.0.1:{self.port}",
            str(self.backlog),
        ]
        self._proc = PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._thread = threading.Thread(target=self._read, name="sink-counter", daemon=True)
        self._thread.start()
        proc = self._proc
        wait_for_banner(
            "127.0.0.1",
            self.port,
            10,
            alive=lambda: proc.poll() is None,
            what=f"smtp-sink ({' '.join(argv)}; output {self._tail[-200:]!r})",
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            PROCS.stop(self._proc, timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            self._tail = (self._tail + chunk)[-400:]
            found = _MESG.findall(self._tail[-(len(chunk) + 40) :])
            if found:
                n = max(int(x) for x in found)
                with self._cond:
                    if n > self.count:
                        self.count = n
                        self._reached.append((n, now))
                        self._cond.notify_all()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_for(
        self,
        target: int,
        timeout: float,
        *,
        stalled_after: float = 60.0,
        alive: Callable[[], bool] = lambda: True,
    ) -> float:
        """Monotonic time at which the count first reached `target`.

        Fails after `timeout`, or when the count has not moved for
        `stalled_after` seconds, or when `alive()` turns false (the relay died).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            last_count, last_move = self.count, time.monotonic()
            while self.count < target:
                now = time.monotonic()
                if self.count != last_count:
                    last_count, last_move = self.count, now
                if (
                    now >= deadline
                    or now - last_move > stalled_after
                    or not self.alive()
                    or not alive()
                ):
                    why = (
                        "timed out"
                        if now >= deadline
                        else "stalled"
                        if now - last_move > stalled_after
                        else "sink exited"
                        if not self.alive()
                        else "relay exited"
                    )
                    raise BenchError(
                        f"smtp-sink on port {self.port} has {self.count} of {target} "
                        f"messages: {why}"
                    )
                self._cond.wait(timeout=0.5)
            for n, t in self._reached:
                if n >= target:
                    return t
        raise AssertionError("unreachable")


# -- memory -----------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def vm_hwm_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def children_of(parent: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            out.append(int(entry.name))
    return out


class MemorySampler:
    """Samples the summed RSS (and PSS) of a set of processes until stopped; keeps the peak."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.25) -> None:
        self._pids = pids
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _sample(self) -> None:
        pids = self._pids()
        self.peak_rss_kb = max(self.peak_rss_kb, sum(rss_kb(p) for p in pids))
        self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in pids))
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def run_checked(argv: Sequence[str], timeout: float, what: str, **kwargs: object) -> str:
    """Run a short command; its output, or a BenchError that quotes it."""
    try:
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,  # type: ignore[call-overload]
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: `{' '.join(argv)}` took more than {timeout:.0f}s") from None
    except OSError as exc:
        raise BenchError(f"{what}: cannot run {argv[0]}: {exc}") from None
    if res.returncode != 0:
        raise BenchError(
            f"{what}: `{' '.join(argv)}` exited {res.returncode}: "
            f"{(res.stderr or res.stdout).strip()[-800:]}"
        )
    return str(res.stdout)
