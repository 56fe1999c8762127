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
    def add_time(
        _logger: object, _name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event["ts"] = datetime.fromtimestamp(clock.now(), UTC).isoformat(timespec="milliseconds")
        return event

    return add_time


def configure(
    *, clock: Clock | None = None, stream: TextIO | None = None, level: str = "info"
) -> None:
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
