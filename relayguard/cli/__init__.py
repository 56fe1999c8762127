"""relayguard serve | check-config | policy … | queue … | routes | reputation … | replay … | passwd

One module per command family; each registers its own subcommands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from relayguard.cli import logins, policy, queue, replay, reputation, serve
from relayguard.cli.common import CONFIG_HELP, Commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayguard", description=__doc__)
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    sub = Commands(parser.add_subparsers(dest="command", required=True))
    for family in (serve, policy, queue, reputation, replay, logins):
        family.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
