"""`relayguard replay` (registered by relayguard.cli), and the options of `serve --test-mode`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayguard.cli.common import Commands
    from relayguard.clock import VirtualClock
    from relayguard.config import Settings
    from relayguard.replay.testmode import CaptureSender

EXAMPLE = """\
example:
  relayguard replay --scenario scenarios/rbl-incident.toml --input scenarios/sample.mbox \\
      --compare policies/plain-mta.toml --report /tmp/rbl
"""


def register(sub: Commands) -> None:
    p = sub.add_parser(
        "replay", help="replay a queue against scripted upstreams on a virtual clock"
    )
    p.description = (
        "Replay messages through the relay's queue manager and policy, against "
        "upstreams scripted by a scenario file, on a virtual clock. Routes and "
        "[queue] settings come from --config when it is given (only then), "
        "else from the scenario file."
    )
    p.epilog = EXAMPLE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--scenario", required=True, metavar="FILE", help="scenario file (TOML)")
    p.add_argument(
        "--input",
        required=True,
        metavar="PATH",
        help="relayguard spool directory, .eml directory, mbox, Maildir, Postfix "
        "queue files or `postcat -q` output",
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["spool", "eml", "mbox", "maildir", "postfix", "postcat"],
        help="input format (default: detected)",
    )
    p.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="policy files (default: the config's, else the packaged default)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="also replay under these policy files and show both side by side",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--report", metavar="DIR", default=None, help="write DIR/result.json and DIR/report.html"
    )
    p.add_argument("--json", action="store_true", help="print the result JSON, not the table")
    p.add_argument(
        "--progress",
        action="store_true",
        help="show a progress bar on stderr even when it is not a terminal",
    )
    p.add_argument(
        "--log-level",
        default="error",
        choices=["debug", "info", "warning", "error", "critical"],
        help="relay log events to show on stderr (default error)",
    )
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from relayguard import logging as rg_logging  # noqa: PLC0415 - keep CLI start fast
    from relayguard.config import ConfigError  # noqa: PLC0415
    from relayguard.policy import PolicyError  # noqa: PLC0415
    from relayguard.replay import report_html, runner, terminal  # noqa: PLC0415
    from relayguard.replay.inputs import InputError  # noqa: PLC0415
    from relayguard.replay.scenario import ScenarioError  # noqa: PLC0415

    try:
        prepared = runner.prepare(
            args.scenario,
            args.input,
            config=getattr(args, "config", None),
            policy_files=args.policy,
            compare=args.compare,
            input_format=args.format,
        )
    except (ScenarioError, ConfigError, PolicyError, InputError) as exc:
        sys.stderr.write(f"relayguard: {exc}\n")
        return 2
    for why in prepared.input.skipped[:10]:
        sys.stderr.write(f"relayguard: skipped {why}\n")
    if len(prepared.input.skipped) > 10:
        sys.stderr.write(f"relayguard: ... and {len(prepared.input.skipped) - 10} more skipped\n")
    if not prepared.input.messages:
        sys.stderr.write(f"relayguard: {args.input}: no messages to replay\n")
        return 2

    bar = terminal.ProgressBar(sys.stderr)
    show = args.progress or sys.stderr.isatty()

    def stamp_logs(clock: VirtualClock) -> None:
        rg_logging.configure(clock=clock, stream=sys.stderr, level=args.log_level)

    try:
        doc = runner.execute(
            prepared, seed=args.seed, progress=bar.for_run if show else None, on_clock=stamp_logs
        )
    finally:
        bar.end()
    text = runner.to_json(doc)
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(text, encoding="utf-8")
        (out / "report.html").write_text(report_html.render(doc), encoding="utf-8")
    sys.stdout.write(text if args.json else terminal.summary(doc))
    if args.report and not args.json:
        sys.stdout.write(
            f"\nwrote {Path(args.report) / 'result.json'} and {Path(args.report) / 'report.html'}\n"
        )
    return 0


# --- serve --test-mode ---------------------------------------------------------------


def add_test_mode_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `relayguard serve` for test mode (relayguard.cli adds them)."""
    p.add_argument(
        "--test-mode",
        action="store_true",
        help="accept and schedule as usual, but deliver to an in-process capture "
        "instead of the network (logs what would have been sent where)",
    )
    p.add_argument(
        "--scenario",
        metavar="FILE",
        default=None,
        help="with --test-mode: answer per this scenario instead of 250 to all",
    )
    p.add_argument("--seed", type=int, default=1, help="with --test-mode --scenario: random seed")
    p.add_argument(
        "--capture-dir",
        metavar="DIR",
        default=None,
        help="with --test-mode: also write each captured message to DIR",
    )


def capture_sender_for(args: argparse.Namespace, settings: Settings) -> CaptureSender | None:
    """The capture sender for `serve --test-mode`, or None when not in test mode."""
    if not getattr(args, "test_mode", False):
        if getattr(args, "scenario", None) or getattr(args, "capture_dir", None):
            sys.stderr.write("relayguard: --scenario and --capture-dir need --test-mode\n")
            raise SystemExit(2)
        return None
    from relayguard.replay.testmode import make_capture_sender  # noqa: PLC0415

    return make_capture_sender(
        settings, scenario=args.scenario, seed=args.seed, capture_dir=args.capture_dir
    )
