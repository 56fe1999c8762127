"""relayguard serve | check-config | policy … | queue … | routes | replay …"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from relayguard.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("RELAYGUARD_CONFIG") or DEFAULT_CONFIG_PATH)


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"relayguard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415 - keep CLI start fast
    from relayguard.relay import serve  # noqa: PLC0415

    path = _config_path(args)
    settings = _load(path)
    rg_logging.configure(level=args.log_level)
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: PLC0415 - optional speed-up

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(settings, path))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else _config_path(args)
    settings = _load(path)
    from relayguard.policy import PolicyError  # noqa: PLC0415
    from relayguard.relay import policy_for  # noqa: PLC0415

    try:
        policy_for(settings)
    except PolicyError as exc:
        print(f"relayguard: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: ok ({len(settings.routes)} route(s): "
          f"{', '.join(r.name for r in settings.routes)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayguard", description=__doc__)
    parser.add_argument("--config", help=f"config file (default ${{RELAYGUARD_CONFIG}} or "
                                         f"{DEFAULT_CONFIG_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the relay")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("file", nargs="?")
    p.set_defaults(func=cmd_check_config)

    from relayguard import cli_extra  # noqa: PLC0415 - the operator tools register themselves

    cli_extra.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
