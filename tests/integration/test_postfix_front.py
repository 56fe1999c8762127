"""A real Postfix in front of relayguard, as deploy/postfix/main.cf.snippet sets it up.

A private Postfix instance (its own config, queue and data directories, a free
port, no local delivery, a fast queue run) relays everything to relayguard as
its relayhost; relayguard delivers to a scripted sink. 200 messages must all
arrive; while relayguard is down Postfix keeps (defers) the mail, and once it is
back on the same port a `postqueue -f` brings the rest through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiosmtplib
import pytest
import structlog
from support import free_port, relay_settings, running_relay, upstream

POSTFIX = Path("/usr/sbin/postfix")
POSTQUEUE = Path("/usr/sbin/postqueue")
MESSAGES = 200
LATE = 5  # sent while relayguard is down

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

MASTER_CF = """\
{smtpd} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def _skip_reason() -> str | None:
    if not POSTFIX.exists() or not POSTQUEUE.exists():
        return "Postfix is not installed (`make system-deps` installs it)"
    if os.geteuid() != 0:
        return "a private Postfix instance (postfix -c DIR start) needs root"
    return None


class PrivatePostfix:
    def __init__(self, root: Path, smtpd_port: int, relayhost_port: int) -> None:
        self.root = root
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.data = root / "data"
        self.port = smtpd_port
        for d in (self.conf, self.queue, self.data):
            d.mkdir()
        shutil.chown(self.data, "postfix")  # master.lock, postlogd, caches
        (self.conf / "main.cf").write_text(
            textwrap.dedent(f"""\
            compatibility_level = 3.6
            queue_directory = {self.queue}
            data_directory = {self.data}
            maillog_file = {self.data}/maillog
            maillog_file_prefixes = {root}
            syslog_name = postfix-relayguard-test
            inet_interfaces = 127.0.0.1
            inet_protocols = ipv4
            myhostname = postfix.test
            mydestination =
            local_transport = error:no local delivery here
            alias_maps =
            alias_database =
            local_recipient_maps =
            mynetworks = 127.0.0.0/8
            smtpd_relay_restrictions = permit_mynetworks, reject
            # As in deploy/postfix/main.cf.snippet:
            relayhost = [127.0.0.1]:{relayhost_port}
            smtp_connect_timeout = 10s
            # A fast queue run, so the test sees retries in seconds:
            queue_run_delay = 1s
            minimal_backoff_time = 1s
            maximal_backoff_time = 2s
        """)
        )
        (self.conf / "master.cf").write_text(MASTER_CF.format(smtpd=f"127.0.0.1:{smtpd_port}"))

    def command(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=30, check=False
        )

    def start(self) -> None:
        done = self.command(POSTFIX, "-c", self.conf, "start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr}\n{self.log()}")

    def stop(self) -> None:
        pid_file = self.queue / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        self.command(POSTFIX, "-c", self.conf, "stop")
        deadline = time.monotonic() + 10
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                self.command(POSTFIX, "-c", self.conf, "abort")

    def queue_entries(self) -> list[dict]:
        done = self.command(POSTQUEUE, "-c", self.conf, "-j")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        self.command(POSTQUEUE, "-c", self.conf, "-f")

    def log(self) -> str:
        path = self.data / "maillog"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no maillog)"


@contextlib.contextmanager
def private_postfix(relayhost_port: int) -> Iterator[PrivatePostfix]:
    # Not under pytest's tmp_path: its parents are mode 0700, and Postfix's daemons
    # run as the postfix user.
    root = Path(tempfile.mkdtemp(prefix="relayguard-postfix-"))
    root.chmod(0o755)
    pf = PrivatePostfix(root, free_port(), relayhost_port)
    try:
        pf.start()
        yield pf
    finally:
        try:
            pf.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def message(n: int, to: str) -> bytes:
    return (
        f"From: <sender@example.org>\r\nTo: <{to}>\r\nSubject: through postfix {n}\r\n"
        f"Message-ID: <pf-{n}@relayguard.test>\r\n\r\nMessage {n}.\r\n"
    ).encode()


async def inject(port: int, numbers: range, connections: int = 4) -> None:
    """SMTP into Postfix's smtpd, several sessions in parallel."""

    async def session(part: list[int]) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            for n in part:
                to = f"rcpt{n}@example.com"
                await smtp.sendmail("sender@example.org", [to], message(n, to))

    items = list(numbers)
    await asyncio.gather(*(session(items[i::connections]) for i in range(connections)))


async def until(predicate, timeout: float, what: str, pf: PrivatePostfix) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}\n--- Postfix log ---\n{pf.log()}")
        await asyncio.sleep(0.1)


async def test_postfix_relays_through_relayguard(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    relay_port = free_port()
    async with upstream() as sink:
        settings = relay_settings(
            tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": sink.port}]
        )
        # A fixed port: relayguard comes back where Postfix's relayhost points.
        settings = replace(
            settings, server=replace(settings.server, listen=("127.0.0.1", relay_port))
        )
        with structlog.testing.capture_logs(), private_postfix(relay_port) as pf:

            def arrived() -> set[str]:
                return {r.message_id for r in sink.received}

            async def all_arrived(count: int) -> bool:
                return len(arrived()) >= count

            async with running_relay(settings) as relay:
                assert relay.address == ("127.0.0.1", relay_port)
                await inject(pf.port, range(MESSAGES))
                await until(lambda: all_arrived(MESSAGES), 40, "200 messages at the sink", pf)
                assert arrived() == {f"<pf-{n}@relayguard.test>" for n in range(MESSAGES)}
                # Each came through Postfix, then relayguard.
                assert all(b"by postfix.test" in r.content for r in sink.received)

            # relayguard is down: Postfix keeps the mail, deferred with the reason.
            await inject(pf.port, range(MESSAGES, MESSAGES + LATE), connections=1)
            seen_deferred: set[str] = set()

            async def all_deferred() -> bool:
                for entry in await asyncio.to_thread(pf.queue_entries):
                    for rcpt in entry["recipients"]:
                        if "refused" in rcpt.get("delay_reason", ""):
                            seen_deferred.add(rcpt["address"])
                return len(seen_deferred) == LATE

            await until(all_deferred, 20, "Postfix to defer the late messages", pf)
            assert len(sink.received) == MESSAGES

            # Back on the same port: a flush brings the rest through.
            async with running_relay(settings):
                await asyncio.to_thread(pf.flush)
                await until(
                    lambda: all_arrived(MESSAGES + LATE),
                    20,
                    "the deferred messages at the sink",
                    pf,
                )

                async def postfix_empty() -> bool:
                    return not await asyncio.to_thread(pf.queue_entries)

                await until(postfix_empty, 10, "Postfix's queue to empty", pf)
    assert arrived() == {f"<pf-{n}@relayguard.test>" for n in range(MESSAGES + LATE)}
    assert len(sink.received) == MESSAGES + LATE  # and none twice
