"""A demo upstream for `make run`: accepts everything, files it in a Maildir, says so.

Not a relay and not for production: it lets a newcomer see a message arrive
at "the smarthost" without setting one up.
"""

from __future__ import annotations

import asyncio
import mailbox
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class SinkHandler:
    def __init__(self, maildir: Path | None) -> None:
        if maildir is not None:
            maildir.parent.mkdir(parents=True, exist_ok=True)
        self.box = mailbox.Maildir(maildir, create=True) if maildir else None
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.count += 1
        content: bytes = envelope.original_content or b""
        key = self.box.add(content) if self.box is not None else "-"
        print(
            f"sink: #{self.count} from=<{envelope.mail_from}> to={envelope.rcpt_tos} "
            f"size={len(content)} stored={key}",
            file=sys.stderr,
            flush=True,
        )
        return "250 2.0.0 Ok: stored"


async def run_sink(host: str, port: int, maildir: Path | None) -> None:
    handler = SinkHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler, hostname="sink.example.test", decode_data=False, enable_SMTPUTF8=True
        ),
        host,
        port,
    )
    print(f"sink: listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()
