"""What every command shares: where the config is, and subcommands that take --config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from relayguard.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("RELAYGUARD_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"relayguard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


CONFIG_HELP = f"config file (default $RELAYGUARD_CONFIG or {DEFAULT_CONFIG_PATH})"


class Commands:
    """Subcommands that all take --config, before or after the command name."""

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._sub = sub
        self._common = argparse.ArgumentParser(add_help=False)
        self._common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)

    def add_parser(self, name: str, *, help: str) -> argparse.ArgumentParser:  # noqa: A002
        return self._sub.add_parser(name, parents=[self._common], help=help)


def optional_settings(args: argparse.Namespace) -> Settings | None:
    """The config when one is named or installed; the policy tools also work without."""
    path = config_path(args)
    if args.config is None and not os.environ.get("RELAYGUARD_CONFIG") and not path.exists():
        return None
    return load_config(path)
