"""Operator subcommands beyond serve/check-config: queue tools, route state, the demo sink.

`relayguard queue …` and `relayguard routes …` talk to the running relay over
its control socket (`<spool>/control.sock`); when no relay runs they work on
the spool directly (relayguard/control.py). Both find the spool through the
config file: `--config FILE`, else $RELAYGUARD_CONFIG, else the default path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayguard.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    load_settings,
    parse_duration,
    parse_hostport,
)
from relayguard.policy.categories import Category

if TYPE_CHECKING:
    from relayguard.cli.common import Commands


def cmd_sink(args: argparse.Namespace) -> int:
    from relayguard.smtp.sink import run_sink  # noqa: PLC0415 - only this command needs it

    host, port = parse_hostport(args.listen)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_sink(host, port, Path(args.maildir) if args.maildir else None))
    return 0


# ---------------------------------------------------------------- plumbing


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _fail(message: str) -> int:
    sys.stderr.write(f"relayguard: {message}\n")
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    path = Path(
        getattr(args, "config", None) or os.environ.get("RELAYGUARD_CONFIG") or DEFAULT_CONFIG_PATH
    )
    return load_settings(path)


def _call(args: argparse.Namespace, op: str, **fields: object) -> dict[str, Any] | int:
    """The result of one control request, or an exit status after printing the error."""
    from relayguard.ops import control  # noqa: PLC0415 - keep `relayguard --help` fast

    try:
        return control.run(_settings(args), control.request_for(op, **fields))
    except (ConfigError, control.ControlError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


def _json(data: object) -> None:
    _out(json.dumps(data, indent=2, sort_keys=True))


# ---------------------------------------------------------------- queue


def cmd_queue_list(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_kept, format_list  # noqa: PLC0415

    if args.kept and (args.state or args.domain or args.route):
        return _fail(
            "queue list: --kept lists the kept copies; --state, --domain and "
            "--route are for queued messages"
        )
    result = _call(
        args, "list", state=args.state, domain=args.domain, route=args.route, kept=args.kept
    )
    if isinstance(result, int):
        return result
    if args.json:
        _json(result["messages"])
    else:
        show = format_kept if args.kept else format_list
        _out(show(result["messages"], result["now"]))
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_show  # noqa: PLC0415

    result = _call(args, "show", id=args.id)
    if isinstance(result, int):
        return result
    if args.json:
        _json(result["message"])
    else:
        _out(format_show(result["message"], result["now"]))
    return 0


def cmd_queue_shape(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_shape  # noqa: PLC0415

    result = _call(args, "shape", state=args.state, by=args.by)
    if isinstance(result, int):
        return result
    if args.json:
        _json(result["shape"])
    else:
        _out(format_shape(result["shape"]))
    return 0


def cmd_queue_action(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_action  # noqa: PLC0415

    if not args.ids and not args.domain and not args.all:
        return _fail(f"queue {args.action}: name queue IDs, or --domain D, or --all")
    if args.ids and (args.domain or args.all):
        return _fail(f"queue {args.action}: queue IDs, --domain and --all do not mix")
    result = _call(args, args.action, ids=args.ids, domain=args.domain, all=args.all)
    if isinstance(result, int):
        return result
    if args.json:
        _json(result)
    else:
        _out(format_action(result))
    return 1 if result["missing"] or result["skipped"] else 0


def cmd_queue_resend(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_resend  # noqa: PLC0415

    result = _call(
        args,
        "resend",
        category=args.category,
        since=args.since,
        route=args.route,
        dry_run=args.dry_run,
    )
    if isinstance(result, int):
        return result
    if args.json:
        _json(result)
    else:
        _out(format_resend(result))
    return 1 if result["skipped"] else 0


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected {exc}, got {text!r}") from None


# ---------------------------------------------------------------- routes


def cmd_routes(args: argparse.Namespace) -> int:
    from relayguard.ops.queue_tools import format_routes  # noqa: PLC0415

    result = _call(args, "routes")
    if isinstance(result, int):
        return result
    if args.json:
        _json(result)
    else:
        _out(format_routes(result))
    return 0


def cmd_routes_resume(args: argparse.Namespace) -> int:
    result = _call(args, "resume", route=args.name, domain=args.domain)
    if isinstance(result, int):
        return result
    where = f" for {args.domain}" if args.domain else ""
    if result["lifted"]:
        _out(f"{args.name}: lifted {result['lifted']} suspension(s){where}")
    else:
        _out(f"{args.name}: no suspension{where} to lift")
    return 0


ACTION_HELP = {
    "retry": "make messages due now, ignoring their backoff",
    "hold": "keep messages from delivery until released",
    "release": "release held messages (due now)",
    "delete": "delete messages without a report",
    "bounce": "fail messages now and send the sender an NDR",
}


def register(sub: Commands) -> None:
    from relayguard.cli.common import Commands  # noqa: PLC0415 - loaded on use

    p = sub.add_parser("sink", help="a demo upstream that accepts and files everything")
    p.add_argument("--listen", default="127.0.0.1:2526")
    p.add_argument("--maildir", default=None)
    p.set_defaults(func=cmd_sink)

    q = sub.add_parser(
        "queue", help="list, show, retry, hold, release, delete, bounce, shape, resend"
    )
    qsub = Commands(q.add_subparsers(dest="queue_command", required=True))
    c = qsub.add_parser("list", help="queued messages, with their recipients' last replies")
    c.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    c.add_argument(
        "--state",
        choices=["deferred", "held", "active"],
        help="active: due now or being delivered; deferred: waiting for a retry",
    )
    c.add_argument("--domain", help="with a pending recipient in this domain")
    c.add_argument("--route", help="with a pending recipient last tried through this route")
    c.add_argument(
        "--kept",
        action="store_true",
        help="not the queue: the copies of bounced messages kept for `queue resend`",
    )
    c.set_defaults(func=cmd_queue_list)

    c = qsub.add_parser("show", help="a message: envelope, headers, every attempt")
    c.add_argument("id", help="queue ID")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_queue_show)

    for action, text in ACTION_HELP.items():
        c = qsub.add_parser(action, help=text)
        c.add_argument("ids", nargs="*", metavar="ID", help="queue IDs")
        c.add_argument("--domain", help="every message with a pending recipient in this domain")
        c.add_argument("--all", action="store_true", help="every queued message")
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=cmd_queue_action, action=action)

    c = qsub.add_parser(
        "resend",
        help="queue again, as new messages, the kept recipients that bounced because of "
        "our egress ([queue] keep_bounced)",
    )
    c.add_argument(
        "--category",
        choices=[str(category) for category in Category],
        help="only the recipients refused with this kind of reply (e.g. rbl_block)",
    )
    c.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only the recipients that bounced within this long (e.g. 24h)",
    )
    c.add_argument("--route", help="send them through this route only")
    c.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_queue_resend)

    c = qsub.add_parser("shape", help="messages by destination domain and age (like qshape)")
    c.add_argument("--state", choices=["deferred", "held", "active"])
    c.add_argument(
        "--by",
        choices=["domain", "provider"],
        default="domain",
        help="rows by recipient domain, or by provider key (from MX) where one is known",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_queue_shape)

    r = sub.add_parser("routes", help="each route's suspensions, connections, recent outcomes")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_routes)
    rsub = Commands(r.add_subparsers(dest="routes_command"))
    c = rsub.add_parser("resume", help="lift a route's suspension early")
    c.add_argument("name", help="route name")
    c.add_argument(
        "--domain",
        help="only the suspension for this destination: a domain, or a provider key "
        "as `routes` shows it (provider:microsoft)",
    )
    c.set_defaults(func=cmd_routes_resume)
