"""Latency sampler: times end-of-DATA → 250 on a few SMTP sessions of its own.

smtp-source reports no latency, so this runs beside it as a separate process
(so that the benchmark driver's threads cannot stall it on the GIL). Each
session sends a message like smtp-source's (`-l SIZE`), waits `--interval`,
and repeats, until its stdin is closed (or SIGTERM); then it prints one JSON
object: {"sent": n, "errors": [...], "latencies_ms": [...]}.

    python bench/latency.py --port 10025 --size 5120 < /dev/null   # runs until EOF on stdin
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time

TIMEOUT = 60.0


class SmtpError(Exception):
    pass


class Session:
    def __init__(self, host: str, port: int, helo: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect(b"220", "greeting")
        self.command(f"EHLO {helo}", b"250")

    def reply(self) -> bytes:
        """One (possibly multi-line) reply: all its lines."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise SmtpError("connection closed by server")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def expect(self, code: bytes, what: str) -> bytes:
        r = self.reply()
        if not r.startswith(code):
            raise SmtpError(f"{what}: {r[:200]!r}")
        return r

    def command(self, line: str, code: bytes) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.expect(code, line.split(" ", 1)[0])

    def send(self, sender: str, rcpt: str, body: bytes) -> float:
        """One transaction; seconds from the final dot to the 250."""
        self.command(f"MAIL FROM:<{sender}>", b"250")
        self.command(f"RCPT TO:<{rcpt}>", b"250")
        self.command("DATA", b"354")
        self.sock.sendall(body)
        t0 = time.perf_counter()
        self.sock.sendall(b".\r\n")
        self.expect(b"250", "end of data")
        return time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        except (OSError, SmtpError):
            pass
        self.sock.close()


def make_body(size: int, helo: str, sender: str, rcpt: str) -> bytes:
    """Headers plus `size` bytes of payload in 78-character lines, CRLF, ready for DATA."""
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: latency sample\r\n"
        f"Message-ID: <{{n}}.sample@{helo}>\r\n\r\n"
    )
    line = b"x" * 78 + b"\r\n"
    payload = (line * (size // len(line) + 1))[:size]
    if not payload.endswith(b"\r\n"):
        payload = payload[:-2] + b"\r\n"
    return head.encode() + payload


def worker(args: argparse.Namespace, idx: int, stop: threading.Event, out: dict[str, list]) -> None:
    helo = "sampler.bench.test"
    template = make_body(args.size, helo, args.sender, args.rcpt)
    session: Session | None = None
    n = 0
    while not stop.is_set():
        try:
            if session is None:
                session = Session(args.host, args.port, helo)
            body = template.replace(b"{n}", f"{idx}.{n}.{time.time_ns()}".encode())
            out["latencies_ms"].append(session.send(args.sender, args.rcpt, body) * 1000.0)
            n += 1
        except (OSError, SmtpError) as exc:
            out["errors"].append(f"session {idx}: {exc}")
            if session is not None:
                session.sock.close()
                session = None
            if len(out["errors"]) > 50:
                return
            stop.wait(0.5)
            continue
        stop.wait(args.interval)
    if session is not None:
        session.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=5120)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.05, help="pause between messages (s)")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="stop anyway after this")
    p.add_argument("--sender", default="sampler@example.org")
    p.add_argument("--rcpt", default="sampled@example.com")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out: dict[str, list] = {"latencies_ms": [], "errors": []}

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the driver closed our stdin
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    workers = [
        threading.Thread(target=worker, args=(args, i, stop, out), daemon=True)
        for i in range(args.sessions)
    ]
    for w in workers:
        w.start()
    print("ready", file=sys.stderr, flush=True)
    stop.wait(args.max_seconds)
    stop.set()
    for w in workers:
        w.join(timeout=TIMEOUT + 5)
    json.dump(
        {
            "sent": len(out["latencies_ms"]),
            "errors": out["errors"][:20],
            "latencies_ms": [round(x, 3) for x in out["latencies_ms"]],
        },
        sys.stdout,
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
