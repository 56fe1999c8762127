"""relayguard policy check | classify | explain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.cli.common import Commands, optional_settings

if TYPE_CHECKING:
    from relayguard.config import Settings
    from relayguard.policy import Policy


def cmd_policy_check(args: argparse.Namespace) -> int:
    from relayguard.policy.commands import check_files, corpus_report  # noqa: PLC0415

    settings = optional_settings(args)
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

    settings = optional_settings(args)
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
    from relayguard.dns.providers import ProviderTable  # noqa: PLC0415
    from relayguard.policy.commands import CLASSIFY_ROUTES, explain  # noqa: PLC0415

    settings = optional_settings(args)
    routes = [r.name for r in settings.routes] if settings else list(CLASSIFY_ROUTES)
    policy = _cli_policy(args, routes)
    if policy is None:
        return 2
    table = ProviderTable.build(dict(settings.dns.providers) if settings else None)
    print(
        explain(
            policy,
            code=args.code,
            text=args.text,
            domain=args.domain,
            route=args.route or routes[0],
            phase=args.phase,
            routes=routes,
            mx=args.mx,
            providers=table,
        )
    )
    return 0


def register(sub: Commands) -> None:
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
        "--mx",
        action="append",
        default=[],
        metavar="HOST",
        help="the domain's MX host (repeatable, most preferred first): shows the provider "
        "key the relay would use, as it learns it from DNS",
    )
    e.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policy file (repeatable); default: the config's, or the packaged default",
    )
    e.set_defaults(func=cmd_policy_explain)
