"""structlog setup: JSON lines on stdout, one event per decision.

Event names are stable (`accepted`, `delivered`, `deferred`, `rerouted`,
`bounced`, ...) because operators grep and alert on them.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import structlog

from relayguard.clock import Clock, SystemClock


def _timestamper(clock: Clock) -> structlog.typing.Processor:
    """ISO 8601 UTC with milliseconds, from the injected clock.

    Formatting a datetime per event showed in profiles; the date-and-time part
    only changes once a second, so it is kept and the milliseconds appended.
    """
    cached: list[object] = [None, ""]

    def add_time(
        _logger: object, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        now = clock.now()
        second = int(now)
        if cached[0] != second:
            cached[0] = second
            cached[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        event["ts"] = f"{cached[1]}.{int((now - second) * 1000):03d}Z"
        return event

    return add_time


# The level `configure` last set: front-end worker processes are started with it.
current_level = "info"


def configure(
    *, clock: Clock | None = None, stream: TextIO | None = None, level: str = "info"
) -> None:
    global current_level  # noqa: PLW0603 - one process-wide logging setup
    current_level = level
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamper(clock or SystemClock()),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs every command at INFO through stdlib logging; that is our
    # job (structured), and formatting its lines would cost CPU per message.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("mail.log").addHandler(logging.StreamHandler(sys.stderr))
