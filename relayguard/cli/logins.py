"""relayguard passwd LOGIN: add a client login to the users file, or change its password."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.cli.common import config_path
from relayguard.client_logins import hash_password, parse_users, set_user, valid_login

if TYPE_CHECKING:
    from relayguard.cli.common import Commands


def _users_file(args: argparse.Namespace) -> Path:
    """--file, or the config's `[server] auth_users_file`. The config is read as TOML
    only, not checked: checking it reads the users file, which may not exist yet."""
    if args.file:
        return Path(args.file)
    path = config_path(args)
    try:
        server = tomllib.loads(path.read_text(encoding="utf-8")).get("server", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(
            f"relayguard: {path}: cannot read the config ({exc}); give --file"
        ) from None
    name = server.get("auth_users_file") if isinstance(server, dict) else None
    if not isinstance(name, str) or not name:
        raise SystemExit(f"relayguard: {path}: server.auth_users_file is not set; give --file")
    return Path(name)


def _read_password() -> str:
    if not sys.stdin.isatty():
        # Scripts pipe it in: `printf '%s\n' "$pw" | relayguard passwd alice`.
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise SystemExit("relayguard: the two passwords differ; nothing changed")
    if not password:
        raise SystemExit("relayguard: an empty password; nothing changed")
    return password


def _write_private(path: Path, text: str) -> None:
    """Replace `path` whole (a crash leaves the old file or the new one), readable by
    its owner only, as the relay requires of it."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def cmd_passwd(args: argparse.Namespace) -> int:
    login: str = args.login
    if not valid_login(login):
        raise SystemExit(f"relayguard: {login!r}: a login has no spaces and no ':'")
    path = _users_file(args)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise SystemExit(f"relayguard: {path}: {exc.strerror or exc}") from None
    try:
        existed = login in parse_users(text)
    except ValueError as exc:
        raise SystemExit(f"relayguard: {path}: {exc}; fix it first") from None
    _write_private(path, set_user(text, login, hash_password(_read_password())))
    print(
        f"relayguard: {'changed the password of' if existed else 'added'} {login} in {path}; "
        "reload the relay (systemctl reload relayguard) to use it"
    )
    return 0


def register(sub: Commands) -> None:
    p = sub.add_parser("passwd", help="add a client login (AUTH) or change its password")
    p.add_argument("login")
    p.add_argument("--file", help="the users file (default: the config's auth_users_file)")
    p.set_defaults(func=cmd_passwd)
