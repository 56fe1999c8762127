"""Operator subcommands beyond serve/check-config; each registers itself here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayguard.cli import Commands

from relayguard.config import parse_hostport


def cmd_sink(args: argparse.Namespace) -> int:
    from relayguard.sink import run_sink  # noqa: PLC0415 - only this command needs it

    host, port = parse_hostport(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sink(host, port, Path(args.maildir) if args.maildir else None))
    return 0


def register(sub: Commands) -> None:
    p = sub.add_parser("sink", help="a demo upstream that accepts and files everything")
    p.add_argument("--listen", default="127.0.0.1:2526")
    p.add_argument("--maildir", default=None)
    p.set_defaults(func=cmd_sink)
