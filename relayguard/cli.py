"""relayguard serve | check-config | policy … | queue … | routes | replay …"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from relayguard.policy import Policy


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
    from relayguard.replay.cli import capture_sender_for  # noqa: PLC0415

    path = _config_path(args)
    settings = _load(path)
    rg_logging.configure(level=args.log_level)
    sender = capture_sender_for(args, settings)  # None unless --test-mode
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: PLC0415 - optional speed-up

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(settings, path, sender=sender))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415
    from relayguard.workers import run_worker  # noqa: PLC0415

    settings = _load(_config_path(args))
    rg_logging.configure(level=args.log_level)
    asyncio.run(
        run_worker(
            settings, args.host, args.port, args.notify_fd, args.workers, args.index, args.parent
        )
    )
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
    print(
        f"{path}: ok ({len(settings.routes)} route(s): "
        f"{', '.join(r.name for r in settings.routes)})"
    )
    return 0


CONFIG_HELP = f"config file (default $RELAYGUARD_CONFIG or {DEFAULT_CONFIG_PATH})"


class Commands:
    """Subcommands that all take --config, before or after the command name."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._sub = sub
        self._common = argparse.ArgumentParser(add_help=False)
        self._common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)

    def add_parser(self, name: str, *, help: str) -> argparse.ArgumentParser:  # noqa: A002
        return self._sub.add_parser(name, parents=[self._common], help=help)


def _optional_settings(args: argparse.Namespace) -> Settings | None:
    """The config when one is named or installed; the policy tools also work without."""
    path = _config_path(args)
    if args.config is None and not os.environ.get("RELAYGUARD_CONFIG") and not path.exists():
        return None
    return _load(path)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from relayguard.policy.commands import check_files, corpus_report  # noqa: PLC0415

    settings = _optional_settings(args)
    routes = [r.name for r in settings.routes] if settings else None
    files = [Path(f) for f in args.files]
    errors = check_files(files, routes)
    for error in errors:
        print(f"relayguard: {error}", file=sys.stderr)
    if errors:
        return 2
    print(f"ok: {', '.join(args.files) or 'the default policy'}")
    table, wrong = corpus_report(files, routes)
    print(table)
    return 1 if wrong else 0


def _policy_files(args: argparse.Namespace, settings: Settings | None) -> list[Path]:
    if args.policy:
        return [Path(f) for f in args.policy]
    return list(settings.policy.files) if settings else []


def _cli_policy(args: argparse.Namespace, routes: list[str]) -> Policy | None:
    """The policy the command asks for, or None after printing why it cannot be read."""
    from relayguard.policy import PolicyError, load_policy  # noqa: PLC0415

    settings = _optional_settings(args)
    try:
        return load_policy(_policy_files(args, settings), routes)
    except PolicyError as exc:
        print(f"relayguard: {exc}", file=sys.stderr)
        return None


def cmd_policy_classify(args: argparse.Namespace) -> int:
    """One reply per input line (log form) → category, scope, evidence, decision."""
    from relayguard.policy.commands import CLASSIFY_ROUTES, classify_line  # noqa: PLC0415

    policy = _cli_policy(args, list(CLASSIFY_ROUTES))
    if policy is None:
        return 2
    try:
        text = (
            sys.stdin.read()
            if args.file in (None, "-")
            else Path(args.file).read_text(encoding="utf-8")
        )
    except OSError as exc:
        print(f"relayguard: {args.file}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    status = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            row = classify_line(policy, line)
        except ValueError as exc:
            print(f"relayguard: line {number}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            retry = f" retry_in={row['retry_in']:.0f}s" if row["retry_in"] else ""
            print(
                f"{row['category']:<16} {row['scope']:<11} {row['action']:<8} "
                f"{row['rule']:<24} {line}\n    {row['evidence']}{retry}"
            )
    return status


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from relayguard.policy.commands import CLASSIFY_ROUTES, explain  # noqa: PLC0415

    settings = _optional_settings(args)
    routes = [r.name for r in settings.routes] if settings else list(CLASSIFY_ROUTES)
    policy = _cli_policy(args, routes)
    if policy is None:
        return 2
    print(
        explain(
            policy,
            code=args.code,
            text=args.text,
            domain=args.domain,
            route=args.route or routes[0],
            phase=args.phase,
            routes=routes,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayguard", description=__doc__)
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    sub = Commands(parser.add_subparsers(dest="command", required=True))

    p = sub.add_parser("serve", help="run the relay")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from relayguard.replay.cli import add_test_mode_arguments  # noqa: PLC0415

    add_test_mode_arguments(p)  # --test-mode [--scenario FILE] [--seed N] [--capture-dir DIR]
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help=argparse.SUPPRESS)  # started by `serve` when workers > 1
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--notify-fd", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("file", nargs="?")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("policy", help="check policy files, explain a decision")
    psub = Commands(p.add_subparsers(dest="policy_command", required=True))
    c = psub.add_parser(
        "check", help="validate policy files; print the reply corpus's confusion table"
    )
    c.add_argument("files", nargs="*", help="policy files (default: the packaged default)")
    c.set_defaults(func=cmd_policy_check)
    k = psub.add_parser(
        "classify", help="what each reply (one per line, log form) is and what it would do"
    )
    k.add_argument("file", nargs="?", help="a file of replies, or - for standard input")
    k.add_argument("--json", action="store_true", help="one JSON object per input line")
    k.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policy file (repeatable); default: the config's, or the packaged default",
    )
    k.set_defaults(func=cmd_policy_classify)
    e = psub.add_parser("explain", help="which rule matches a reply, and what it decides")
    e.add_argument("--code", type=int, required=True)
    e.add_argument("--text", default="")
    e.add_argument("--domain", default="example.com")
    e.add_argument("--route", default=None)
    e.add_argument("--phase", default="rcpt")
    e.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policy file (repeatable); default: the config's, or the packaged default",
    )
    e.set_defaults(func=cmd_policy_explain)

    # Operator tools (queue, routes, sink) and the replay register themselves.
    from relayguard import cli_extra  # noqa: PLC0415
    from relayguard.replay import cli as replay_cli  # noqa: PLC0415

    cli_extra.register(sub)
    replay_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
