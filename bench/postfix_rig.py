"""A private Postfix instance relaying everything to one smarthost (the sink).

Its own config_directory, queue_directory and data_directory in a temporary
directory; started with `postfix -c DIR start`, stopped with `postfix -c DIR
stop`, and the directory removed afterwards, even when something failed.
Nothing of the system's Postfix (/etc/postfix, /var/spool/postfix) is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Self

from harness import BenchError, children_of, find_tool, run_checked, wait_for_banner

# Services a relay needs, nothing local. chroot "n" everywhere: the instance
# lives in a temporary directory with nothing copied into it.
MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet n       -       n       -       -       smtpd
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

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery in the benchmark
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
readme_directory = no
maillog_file = {maillog}
maillog_file_prefixes = {base}
default_process_limit = {process_limit}
default_destination_concurrency_limit = {concurrency}
smtp_destination_concurrency_limit = {concurrency}
"""


class PostfixInstance:
    """`with PostfixInstance(sink_port) as pf:` — pf.port takes mail, pf.processes() for RSS."""

    def __init__(
        self,
        sink_port: int,
        port: int,
        *,
        base_dir: str | None = None,
        concurrency: int = 20,
        process_limit: int = 100,
    ) -> None:
        self.postfix = find_tool("postfix")
        self.postconf = find_tool("postconf")
        self.sink_port = sink_port
        self.port = port
        self.base_dir = base_dir
        self.concurrency = concurrency
        self.process_limit = process_limit
        self.dir: Path | None = None
        self.started = False

    @property
    def etc(self) -> Path:
        assert self.dir is not None
        return self.dir / "etc"

    @property
    def queue(self) -> Path:
        assert self.dir is not None
        return self.dir / "queue"

    def settings(self) -> dict[str, object]:
        return {
            "default_destination_concurrency_limit": self.concurrency,
            "default_process_limit": self.process_limit,
            "maillog_file": "DIR/maillog",
            "fsync": "Postfix default (one per message)",
        }

    def __enter__(self) -> Self:
        try:
            self._setup()
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rg-bench-postfix-", dir=self.base_dir))
        # Postfix's daemons drop root: they must be able to reach their directories.
        os.chmod(self.dir, 0o755)  # noqa: PTH101
        self.etc.mkdir()
        (self.dir / "data").mkdir()
        self.queue.mkdir()
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (self.etc / "main.cf").write_text(
            MAIN_CF.format(
                queue=self.queue,
                data=self.dir / "data",
                sink_port=self.sink_port,
                maillog=self.dir / "maillog",
                base=self.dir,
                process_limit=self.process_limit,
                concurrency=self.concurrency,
            )
        )
        # Postfix waits (and retries) while a config file looks freshly written;
        # these are complete, so date them back.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.etc / name, (past, past))
        # post-install (run by `postfix start`) creates the queue subdirectories
        # with their owners; data_directory belongs to mail_owner.
        shutil.chown(self.dir / "data", "postfix", "postfix")
        run_checked(
            [self.postconf, "-c", str(self.etc), "mail_version"],
            30,
            "postconf cannot read the benchmark's main.cf",
        )

    def _start(self) -> None:
        run_checked(
            [self.postfix, "-c", str(self.etc), "start"],
            60,
            f"starting Postfix (config in {self.etc})",
        )
        self.started = True
        wait_for_banner(
            "127.0.0.1",
            self.port,
            30,
            alive=lambda: self.master_pid() is not None,
            what=f"Postfix smtpd (log: {self.dir}/maillog)",
        )

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def processes(self) -> list[int]:
        """The master and every process it started (smtpd, cleanup, qmgr, smtp, ...)."""
        master = self.master_pid()
        if master is None:
            return []
        return [master, *children_of(master)]

    def log_tail(self, n: int = 20) -> str:
        try:
            assert self.dir is not None
            return "\n".join((self.dir / "maillog").read_text(errors="replace").splitlines()[-n:])
        except (OSError, AssertionError):
            return ""

    def log_problems(self) -> list[str]:
        """warning/fatal/panic lines of the instance's log."""
        try:
            assert self.dir is not None
            lines = (self.dir / "maillog").read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return []
        return [
            ln
            for ln in lines
            if any(k in ln for k in (" warning: ", " fatal: ", " panic: ", " error: "))
        ][:20]

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.started:
                master = self.master_pid()
                with contextlib.suppress(BenchError):
                    run_checked([self.postfix, "-c", str(self.etc), "stop"], 60, "stopping Postfix")
                # `postfix stop` waits for the master; if it is still there, end its
                # process group (the master leads it) by id.
                if master is not None:
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline and self.master_pid() is not None:
                        time.sleep(0.1)
                    if self.master_pid() is not None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(master, signal.SIGKILL)
                self.started = False
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
