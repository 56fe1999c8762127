"""relayguard as the benchmark runs it: `python -m relayguard --config FILE serve`.

Config, spool and log in a temporary directory; one route to the sink; a free
port. Ready when the `listening` event is in its log and it greets; stopped
with SIGTERM (its graceful shutdown), SIGKILL after a timeout; the directory
removed afterwards. Optionally under cProfile or py-spy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from harness import PROCS, BenchError, children_of, find_tool, vm_hwm_kb, wait_for_banner

CONFIG = """\
# written by bench/run.py
[server]
listen = "127.0.0.1:{port}"
hostname = "relayguard.bench.test"
{spool}
allowed_networks = ["127.0.0.0/8"]
shutdown_grace = "10s"
{workers}
[[route]]
name = "sink"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
max_connections = {concurrency}
"""


class RelayguardInstance:
    def __init__(
        self,
        sink_port: int,
        port: int,
        *,
        base_dir: str | None = None,
        concurrency: int = 20,
        profile: str | None = None,
        profile_out: Path | None = None,
        workers: int | None = None,
        spool_dsn: str | None = None,
    ) -> None:
        self.sink_port = sink_port
        self.spool_dsn = spool_dsn  # a PostgreSQL spool (one node) instead of SQLite
        self.workers = workers
        self.port = port
        self.base_dir = base_dir
        self.concurrency = concurrency
        self.profile = profile
        self.profile_out = profile_out
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the relayguard Python process (py-spy's child if profiled)
        self.hwm_kb = 0

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "relayguard.log"

    def settings(self) -> dict[str, object]:
        return {
            "route.max_connections": self.concurrency,
            "tls": "none",
            "log": "JSON lines to a file",
            "server.workers": self.workers if self.workers is not None else "default",
        }

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _argv(self, config: Path) -> list[str]:
        serve = ["-m", "relayguard", "--config", str(config), "serve"]
        if self.profile == "cprofile":
            assert self.profile_out is not None
            return [sys.executable, "-m", "cProfile", "-o", str(self.profile_out), *serve]
        if self.profile == "py-spy":
            assert self.profile_out is not None
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if not Path(pyspy).exists():
                raise BenchError(
                    "--profile py-spy: py-spy is not installed (pip install py-spy into the venv)"
                )
            return [
                pyspy,
                "record",
                "--format",
                "raw",
                "--rate",
                "200",
                "--subprocesses",
                "--threads",
                "-o",
                str(self.profile_out),
                "--",
                sys.executable,
                *serve,
            ]
        return [sys.executable, *serve]

    def _start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rg-bench-relayguard-", dir=self.base_dir))
        config = self.dir / "relayguard.toml"
        config.write_text(
            CONFIG.format(
                port=self.port,
                spool=(
                    f'spool = "{self.dir / "spool"}"'
                    if self.spool_dsn is None
                    else f'spool = "{self.spool_dsn}"\nrun_dir = "{self.dir / "run"}"'
                ),
                sink_port=self.sink_port,
                concurrency=self.concurrency,
                workers="" if self.workers is None else f"workers = {self.workers}\n",
            )
        )
        with self.log_path.open("wb") as out, (self.dir / "stderr.log").open("wb") as err:
            self.proc = PROCS.start(
                self._argv(config), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir
            )
        deadline = time.monotonic() + 60
        while True:
            ev = self._listening_event()
            if ev is not None:
                self.pid = int(ev.get("pid") or self.proc.pid)
                break
            if self.proc.poll() is not None:
                raise BenchError(
                    f"relayguard exited ({self.proc.returncode}) before listening: "
                    f"{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"relayguard did not log `listening` within 60s: {self.stderr_tail()}"
                )
            time.sleep(0.05)
        proc = self.proc
        wait_for_banner(
            "127.0.0.1", self.port, 30, alive=lambda: proc.poll() is None, what="relayguard"
        )

    def _listening_event(self) -> dict[str, object] | None:
        try:
            with self.log_path.open("rb") as f:
                for line in f:
                    if b'"listening"' in line:
                        try:
                            ev = json.loads(line)
                        except ValueError:
                            continue
                        if ev.get("event") == "listening":
                            return dict(ev)
        except OSError:
            return None
        return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[int]:
        """The relayguard process and its front-end workers (server.workers)."""
        if self.pid is None or not self.alive():
            return []
        return [self.pid, *children_of(self.pid)]

    def stderr_tail(self) -> str:
        try:
            assert self.dir is not None
            return (self.dir / "stderr.log").read_text(errors="replace")[-1500:].strip()
        except (OSError, AssertionError):
            return ""

    def log_counts(self) -> dict[str, int]:
        """How many of each event (and of each level above info) the log holds."""
        counts: dict[str, int] = {}
        try:
            with self.log_path.open("rb") as f:
                for line in f:
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        counts["<not json>"] = counts.get("<not json>", 0) + 1
                        continue
                    key = str(ev.get("event"))
                    counts[key] = counts.get(key, 0) + 1
        except OSError:
            pass
        return counts

    def log_problems(self, limit: int = 10) -> list[str]:
        out: list[str] = []
        try:
            with self.log_path.open("rb") as f:
                for line in f:
                    if b'"level": "error"' in line or b'"level": "warning"' in line:
                        out.append(line.decode(errors="replace")[:400])
                        if len(out) >= limit:
                            break
        except OSError:
            pass
        if self.stderr_tail():
            out.append("stderr: " + self.stderr_tail()[-400:])
        return out

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.proc is not None:
                if self.pid is not None:
                    self.hwm_kb = vm_hwm_kb(self.pid)
                if self.proc.poll() is None:
                    # SIGTERM to relayguard itself: graceful stop (and cProfile writes its
                    # file); with py-spy, py-spy then writes its own when its child exits.
                    target = self.pid if self.pid is not None else self.proc.pid
                    try:
                        os.kill(target, signal.SIGTERM)
                        self.proc.wait(timeout=60)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
                PROCS.stop(self.proc, timeout=10)
                self.proc = None
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None


def check_available() -> None:
    """relayguard importable by this interpreter (the venv's)."""
    try:
        import relayguard.relay  # noqa: F401, PLC0415
    except ImportError as exc:
        raise BenchError(
            f"cannot import relayguard with {sys.executable}: {exc} "
            "(run through `make bench`, which uses the project's venv)"
        ) from None
    find_tool("smtp-sink")
