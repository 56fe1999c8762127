"""sd_notify without a dependency: READY, STOPPING, RELOADING and the watchdog.

The protocol is one datagram to $NOTIFY_SOCKET; when it is unset (not under
systemd, or in tests) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("relayguard.ops.systemd")


def notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", state=state, error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def run_watchdog(healthy: object) -> None:
    """Ping the watchdog while `healthy()` says the relay can do its job."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if callable(healthy) and healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
