"""Turns failed recipients into NDR messages queued in the spool (the I/O-free glue
between the queue manager and the pure builders in `bounce`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import structlog

from relayguard.config import Settings
from relayguard.model import Envelope, QueuedMessage, Recipient
from relayguard.ndr import bounce
from relayguard.queue.manager import ReportBuilder
from relayguard.queue.spool import NewMessage

log = structlog.get_logger("relayguard.ndr.bounce")


def make_report_builder(settings: Settings) -> ReportBuilder:
    pinned = (settings.ndr.route,) if settings.ndr.route else ()
    record_file = settings.ndr.record_file

    def build(
        message: QueuedMessage, body: bytes, recipients: Sequence[Recipient], kind: str, now: float
    ) -> list[NewMessage]:
        ctx = bounce.ReportContext(
            reporting_mta=settings.server.hostname,
            now=now,
            max_lifetime=settings.queue.max_lifetime,
        )
        record = bounce.bounce_record(message, recipients, kind, ctx, None)
        log.info("report_record", **record)
        if record_file is not None:
            _append_record(record_file, record)
        if kind == "bounce":
            report = bounce.build_ndr(message, body, recipients, ctx)
        elif kind == "delay":
            report = bounce.build_delay_warning(
                message,
                body,
                recipients,
                ctx,
                will_retry_until=message.arrival_at + settings.queue.max_lifetime,
            )
        else:
            report = bounce.build_relayed_report(message, body, recipients, ctx)
        if report is None:
            log.info(
                "report_suppressed",
                queue_id=message.queue_id,
                kind=kind,
                reason="null sender or NOTIFY",
            )
            return []
        sender, rcpt = bounce.report_envelope(message)
        env = Envelope(
            sender=sender,
            recipients=(Recipient(rcpt),),
            pinned_routes=pinned,
            mail_options=bounce.report_mail_options(message, report),
        )
        return [NewMessage(envelope=env, body=report, arrival_at=now)]

    return build


def _append_record(path: Path, record: dict[str, object]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
