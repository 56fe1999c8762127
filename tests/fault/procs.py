"""relayguard as a real child process, for the fault tests.

`RelayProcess` starts `python -m relayguard --config FILE serve`, reads its JSON
log lines in a thread and lets async code await a given event (`listening`,
`stopping`, ...) with a bound. `SmtpClients` runs many concurrent aiosmtplib
clients and records, per Message-ID, what was sent and what got a 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from support import free_port

REPO = Path(__file__).resolve().parents[2]


def write_config(
    tmp: Path, *, listen_port: int, upstream_port: int, extra: str = "", route_extra: str = ""
) -> Path:
    """A config file for a relay on 127.0.0.1:listen_port with one route to the upstream."""
    text = textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{listen_port}"
        hostname = "relay.test"
        spool = "{tmp / "spool"}"
        {extra}
        [dns]
        provider_keys = false

        [[route]]
        name = "primary"
        host = "127.0.0.1"
        port = {upstream_port}
        tls = "none"
        {route_extra}
    """)
    path = tmp / "relayguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def pick_port() -> int:
    """A free port for relayguard's listener (bind port 0, read it, close)."""
    return free_port()


def spool_count(spool: Path) -> int:
    """Messages still in the spool (read-only; safe beside a running relay, WAL mode)."""
    conn = sqlite3.connect(f"file:{spool / 'queue.db'}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


class RelayProcess:
    """One run of `relayguard serve` as a child process."""

    def __init__(self, config: Path, name: str = "relay") -> None:
        self.config = config
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = config.parent / f"{name}.stderr"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._reader: threading.Thread | None = None
        self._eof = False

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relayguard", "--config", str(self.config), "serve"],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=self.config.parent,
                env=env,
            )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                event = json.loads(text)
                if isinstance(event, dict):
                    self.events.append(event)
            self._notify()
        with contextlib.suppress(subprocess.TimeoutExpired):  # so failures can show the status
            self.proc.wait(timeout=5)
        self._eof = True
        self._notify()

    def _notify(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is None or changed is None:
            return
        with contextlib.suppress(RuntimeError):  # the test's loop is already closed
            loop.call_soon_threadsafe(changed.set)

    def kill(self) -> None:
        """SIGKILL, synchronously (no await between the decision and the signal)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(proc.wait)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} (pid {proc.pid}) did not exit within {timeout}s\n{self.tail()}"
            ) from None

    def cleanup(self) -> None:
        """For finally blocks: make sure the child is gone and its pipe drained."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(OSError):  # kept beside the config, for post-mortems
            self.stderr_path.with_suffix(".log").write_text("\n".join(self.raw) + "\n", "utf-8")

    # -- the log ----------------------------------------------------------------

    def find(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def tail(self, lines: int = 25) -> str:
        err = ""
        with contextlib.suppress(OSError):
            err = "\n".join(self.stderr_path.read_text("utf-8", "replace").splitlines()[-lines:])
        return (
            f"--- {self.name} stdout (last {lines} lines) ---\n"
            + "\n".join(self.raw[-lines:])
            + f"\n--- {self.name} stderr ---\n{err}"
        )

    async def wait_event(
        self, name: str, timeout: float, where: Callable[[dict[str, Any]], bool] = lambda _e: True
    ) -> dict[str, Any]:
        """The first log event `name` matching `where`; fails clearly after `timeout`."""
        assert self._changed is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    for e in self.events:
                        if e.get("event") == name and where(e):
                            return e
                    if self._eof:
                        raise AssertionError(
                            f"{self.name} exited (rc={self.proc and self.proc.poll()})"
                            f" before logging {name!r}\n{self.tail()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {name!r} log event within {timeout}s\n{self.tail()}"
            ) from None

    async def start_listening(self, port: int, timeout: float = 15.0) -> tuple[str, int]:
        self.start()
        event = await self.wait_event("listening", timeout)
        address = (str(event["address"][0]), int(event["address"][1]))
        assert address == ("127.0.0.1", port), f"listening on {address}, configured port {port}"
        return address


# -- clients ---------------------------------------------------------------------


def message(mid: str, *, body_size: int = 0) -> bytes:
    filler = "".join(f"line {i:05d} of filler text for {mid}\r\n" for i in range(body_size // 40))
    return (
        f"From: <sender@example.org>\r\nTo: <rcpt@example.com>\r\nSubject: {mid}\r\n"
        f"Message-ID: <{mid}@fault.test>\r\n\r\nHello {mid}.\r\n{filler}"
    ).encode()


def message_id(mid: str) -> str:
    return f"<{mid}@fault.test>"


@dataclass
class SmtpClients:
    """`count` concurrent clients, each sending `per_client` messages over one connection.

    `sent`: Message-IDs whose whole content went out after DATA (they may arrive).
    `acked`: those that got a 250 reply (they must arrive).
    A client stops at its first error (the relay is gone, or says 421).
    """

    address: tuple[str, int]
    count: int = 20
    per_client: int = 5
    body_size: int = 0
    prefix: str = "m"
    on_ack: Callable[[str], None] = lambda _mid: None
    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(c) for c in range(self.count)))

    async def _client(self, c: int) -> None:
        host, port = self.address
        smtp = aiosmtplib.SMTP(
            hostname=host, port=port, start_tls=False, timeout=20, local_hostname="client.test"
        )
        try:
            await smtp.connect()
            for i in range(self.per_client):
                mid = f"{self.prefix}-c{c:02d}-n{i}"
                await smtp.mail("sender@example.org")
                await smtp.rcpt("rcpt@example.com")
                # aiosmtplib writes the whole content in one go after the 354.
                self.sent.add(message_id(mid))
                resp = await smtp.data(message(mid, body_size=self.body_size))
                if resp.code == 250:
                    self.acked.add(message_id(mid))
                    self.ack_times.append(time.monotonic())
                    self.acked_event.set()
                    self.on_ack(mid)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.errors.append(f"client {c}: {exc!r}")
        finally:
            smtp.close()


@dataclass
class PartialData:
    """A raw client that stops in the middle of DATA (no final dot)."""

    mid: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def begin(self, address: tuple[str, int], tail: bytes) -> None:
        """EHLO, MAIL, RCPT, DATA, then part of the content ending with `tail`."""
        self.reader, self.writer = await asyncio.open_connection(*address)
        await self._expect(b"220")
        for command, code in (
            (b"EHLO partial.test", b"250"),
            (b"MAIL FROM:<sender@example.org>", b"250"),
            (b"RCPT TO:<rcpt@example.com>", b"250"),
            (b"DATA", b"354"),
        ):
            self.writer.write(command + b"\r\n")
            await self.writer.drain()
            await self._expect(code)
        content = message(self.mid, body_size=2000)
        self.writer.write(content[: len(content) // 2])
        await self.writer.drain()
        self.writer.write(content[len(content) // 2 :] + tail)
        await self.writer.drain()

    async def _expect(self, code: bytes) -> None:
        assert self.reader is not None
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line.startswith(code), (
                f"partial client {self.mid}: expected {code!r}, got {line!r}"
            )
            if line[3:4] != b"-":
                return

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
