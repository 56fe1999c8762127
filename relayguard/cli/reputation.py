"""relayguard reputation check: our egress addresses in the configured DNSBLs, now."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from relayguard.cli.common import config_path, load_config

if TYPE_CHECKING:
    from relayguard.cli.common import Commands

LISTED_STATUS = 1  # for monitoring scripts: a route is listed


def cmd_reputation_check(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415 - keep `relayguard --help` fast
    from relayguard.ops import control  # noqa: PLC0415
    from relayguard.ops.queue_tools import format_reputation  # noqa: PLC0415

    # Log lines (a failed check, a route without an address) go to standard error:
    # standard output is the table, or the JSON.
    rg_logging.configure(stream=sys.stderr)
    settings = load_config(config_path(args))
    if not settings.reputation.zones:
        print("relayguard: no [[reputation.zone]] in the config: nothing to check")
        return 2
    try:
        result = control.reputation_now(settings)
    except (control.ControlError, OSError) as exc:
        print(f"relayguard: {exc}")
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_reputation(result))
    listed = any(c["verdict"] == "listed" for c in result["checks"])
    return LISTED_STATUS if listed else 0


def register(sub: Commands) -> None:
    p = sub.add_parser("reputation", help="check our egress addresses in DNSBLs")
    psub = p.add_subparsers(dest="reputation_command", required=True)
    c = psub.add_parser(
        "check",
        help="look up every route's egress address in every [[reputation.zone]] now "
        "(exit 1 if one is listed)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_reputation_check)
