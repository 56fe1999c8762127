"""relayguard serve | worker | check-config."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.cli.common import config_path, load_config
from relayguard.config import ConfigError

if TYPE_CHECKING:
    from relayguard.cli.common import Commands


def cmd_serve(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415 - keep CLI start fast
    from relayguard.cli.replay import capture_sender_for  # noqa: PLC0415
    from relayguard.relay import serve  # noqa: PLC0415

    path = config_path(args)
    settings = load_config(path)
    rg_logging.configure(level=args.log_level)
    sender = capture_sender_for(args, settings)  # None unless --test-mode
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: PLC0415 - optional speed-up

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(settings, path, sender=sender))
    except ConfigError as exc:  # found at start: a spool server that does not answer
        print(f"relayguard: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415
    from relayguard.smtp.workers import run_worker  # noqa: PLC0415

    settings = load_config(config_path(args))
    rg_logging.configure(level=args.log_level)
    asyncio.run(
        run_worker(
            settings,
            [int(p) for p in args.ports.split(",")],
            args.notify_fd,
            args.workers,
            args.index,
            args.parent,
            config_path=config_path(args),
        )
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else config_path(args)
    settings = load_config(path)
    from relayguard.policy import PolicyError  # noqa: PLC0415
    from relayguard.relay import policy_for  # noqa: PLC0415

    try:
        policy_for(settings)
    except PolicyError as exc:
        print(f"relayguard: {exc}", file=sys.stderr)
        return 2
    print(
        f"{path}: ok ({len(settings.routes)} route(s): "
        f"{', '.join(r.name for r in settings.routes)})"
    )
    return 0


def register(sub: Commands) -> None:
    p = sub.add_parser("serve", help="run the relay")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from relayguard.cli.replay import add_test_mode_arguments  # noqa: PLC0415 - loaded on use

    add_test_mode_arguments(p)  # --test-mode [--scenario FILE] [--seed N] [--capture-dir DIR]
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)  # started by `serve` when workers > 1
    # The ports the main process bound, one per listener (listen, then tls_listen).
    p.add_argument("--ports", required=True)
    p.add_argument("--notify-fd", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("file", nargs="?")
    p.set_defaults(func=cmd_check_config)
