"""What the replay replays: messages read from a spool, .eml files, an mbox, a Maildir
or a Postfix queue (see `postfix_queue`), as envelopes, bodies and arrival times.

Formats without an envelope (.eml, mbox, Maildir) take it from the headers:
the recipients from X-Envelope-To / Envelope-To / X-Original-To / Delivered-To
when present (what a delivery agent recorded), else To, Cc and Bcc; the sender
from Return-Path, else Sender, else From. The arrival time is the Date header,
else what the format records (the mbox From_ line, the Maildir file name).
Bodies are stored with CRLF line ends, as the front end would store them.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import getaddresses, mktime_tz, parsedate_tz
from pathlib import Path

from relayguard.model import Envelope, MessageState, Recipient, RecipientState
from relayguard.replay.messages import Input, InputError, InputMessage, crlf, headers_of

FORMATS = ("spool", "eml", "mbox", "maildir", "postfix", "postcat")
_ENVELOPE_TO = ("x-envelope-to", "envelope-to", "x-original-to", "delivered-to")
_MBOXRD_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)

__all__ = ["Input", "InputError", "InputMessage", "crlf", "headers_of", "read_input"]


def read_input(path: str | Path, fmt: str | None = None) -> Input:
    """Read every message of `path`, in a stable order (file names, queue order)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    fmt = fmt or detect_format(p)
    readers = {"spool": _read_spool, "eml": _read_eml, "mbox": _read_mbox, "maildir": _read_maildir}
    if fmt in ("postfix", "postcat"):
        from relayguard.replay import postfix_queue  # noqa: PLC0415 - only for this format

        return postfix_queue.read(p, fmt)
    if fmt not in readers:
        raise InputError(
            f"{p}: unknown input format {fmt!r} (expected one of {', '.join(FORMATS)})"
        )
    return readers[fmt](p)


def detect_format(p: Path) -> str:
    from relayguard.replay import postfix_queue  # noqa: PLC0415 - imports this module

    if p.is_dir():
        checks = [
            ("spool", (p / "queue.db").exists),
            ("maildir", lambda: (p / "cur").is_dir() and (p / "new").is_dir()),
            ("eml", lambda: any(p.glob("*.eml"))),
            ("postfix", lambda: postfix_queue.looks_like_queue_dir(p)),
        ]
        why = (
            "a relayguard spool has queue.db, a Maildir cur/ and new/, "
            "an .eml directory *.eml files"
        )
    else:
        with p.open("rb") as f:
            head = f.read(4096)
        checks = [
            ("mbox", lambda: head.startswith(b"From ")),
            ("postcat", lambda: b"*** ENVELOPE RECORDS " in head),
            ("postfix", lambda: postfix_queue.looks_like_queue_file(head)),
            ("eml", lambda: p.suffix == ".eml" or re.match(rb"[!-9;-~]+:", head) is not None),
        ]
        why = "not an mbox, postcat -q output, a Postfix queue file or a message"
    for fmt, check in checks:
        if check():
            return fmt
    raise InputError(f"{p}: cannot tell the input format ({why}); give --format")


# --- RFC 5322 helpers ------------------------------------------------------------


def header_date(fields: dict[str, list[str]]) -> float | None:
    for value in fields.get("date", []):
        parsed = parsedate_tz(value)
        if parsed is not None:
            try:
                return float(mktime_tz(parsed))
            except (OverflowError, ValueError):
                continue
    return None


_ATOMS = r"[^<>\s\",;:()@]+"
_SIMPLE_ADDRESS = re.compile(rf"^\s*(?:[^<>\",;:()@]*<)?\s*({_ATOMS}@{_ATOMS})\s*>?\s*$")


def _addresses(values: list[str]) -> list[str]:
    """The addresses of address-list header values (fast path for the plain forms)."""
    out: list[str] = []
    for value in values:
        found: list[str] = []
        for part in value.split(","):
            m = _SIMPLE_ADDRESS.match(part)
            if m is None:
                found = [a for _, a in getaddresses([value])]  # quotes, comments, groups
                break
            found.append(m.group(1))
        for addr in (a.strip() for a in found):
            if addr and "@" in addr and addr not in out:
                out.append(addr)
    return out


def message_from_bytes(
    data: bytes,
    source: str,
    *,
    sender: str | None = None,
    recipients: list[str] | None = None,
    arrival: float | Callable[[], float | None] | None = None,
    fields: dict[str, list[str]] | None = None,
) -> InputMessage | str:
    """An InputMessage from a whole RFC 5322 message, or why it cannot be one.

    `arrival` (a time, or a function giving one) is used when there is no Date header."""
    body = crlf(data)
    if fields is None:
        fields = headers_of(body)
    if recipients is None:
        recipients = []
        for name in _ENVELOPE_TO:
            recipients = _addresses(fields.get(name, []))
            if recipients:
                break
        if not recipients:
            recipients = _addresses(
                fields.get("to", []) + fields.get("cc", []) + fields.get("bcc", [])
            )
    if not recipients:
        return f"{source}: no recipients (no To/Cc/Bcc or envelope headers)"
    if sender is None:
        sender = _envelope_sender(fields)
    date = header_date(fields)
    if date is None and callable(arrival):
        date = arrival()
    mid = (fields.get("message-id") or [""])[0]
    return InputMessage(
        envelope=Envelope(
            sender=sender,
            recipients=tuple(Recipient(a) for a in recipients),
            mail_options=_mail_options(body, sender, recipients),
        ),
        body=body,
        arrival=date if (date is not None or callable(arrival)) else arrival,
        message_id=mid,
        source=source,
    )


def _envelope_sender(fields: dict[str, list[str]]) -> str:
    for value in fields.get("return-path", []):
        if value.replace(" ", "") == "<>":
            return ""
        found = _addresses([value])
        if found:
            return found[0]
    for name in ("sender", "from"):
        found = _addresses(fields.get(name, []))
        if found:
            return found[0]
    return ""


def _mail_options(body: bytes, sender: str, recipients: list[str]) -> tuple[str, ...]:
    options: list[str] = []
    if not body.isascii():
        options.append("BODY=8BITMIME")
    if not (sender.isascii() and all(r.isascii() for r in recipients)):
        options.append("SMTPUTF8")
    return tuple(options)


def _add(result: Input, item: InputMessage | str) -> None:
    if isinstance(item, str):
        result.skipped.append(item)
    else:
        result.messages.append(item)


# --- the formats ---------------------------------------------------------------


def _read_eml(p: Path) -> Input:
    result = Input(str(p), "eml")
    files = sorted(p.glob("*.eml")) if p.is_dir() else [p]
    for f in files:
        _add(result, message_from_bytes(f.read_bytes(), f.name))
    return result


def _read_mbox(p: Path) -> Input:
    """mboxo/mboxrd: messages start at 'From ' lines; '>From ' quoting is undone."""
    result = Input(str(p), "mbox")
    data = p.read_bytes()
    starts = _from_lines(data)
    for n, start in enumerate(starts):
        begin = start + (1 if data[start : start + 1] == b"\n" else 0)
        end = starts[n + 1] if n + 1 < len(starts) else len(data)
        chunk = data[begin:end]
        from_line, _, message = chunk.partition(b"\n")
        if b"\n>" in message:
            message = _MBOXRD_FROM.sub(rb"\1", message)
        if end == len(data) and message.endswith(b"\n\n"):
            message = message[:-1]  # the blank line that ends the last message
        line = from_line.decode("utf-8", "replace")
        fields = headers_of(message)
        _add(
            result,
            message_from_bytes(
                message,
                f"message {n + 1}",
                fields=fields,
                sender=None if fields.get("return-path") else _from_line_sender(line),
                arrival=functools.partial(_from_line_time, line),
            ),
        )
    return result


def _from_lines(data: bytes) -> list[int]:
    """Where each message starts: the offsets of 'From ' at the start of the file or
    of the newline before a 'From ' line."""
    starts = [0] if data.startswith(b"From ") else []
    pos = data.find(b"\nFrom ")
    while pos >= 0:
        starts.append(pos)
        pos = data.find(b"\nFrom ", pos + 6)
    return starts


def _from_line_sender(line: str) -> str | None:
    """'From alice@example.org Mon Jan 15 08:00:00 2024' → alice@example.org."""
    parts = line.split(None, 2)
    sender = parts[1] if len(parts) > 1 else None
    return "" if sender == "MAILER-DAEMON" else sender


def _from_line_time(line: str) -> float | None:
    """The From_ line's asctime date, read as UTC."""
    parts = line.rstrip("\r").split(None, 2)
    if len(parts) < 3:
        return None
    try:
        when = datetime.strptime(  # noqa: DTZ007 - asctime has no zone: read as UTC
            " ".join(parts[2].split()[:5]), "%a %b %d %H:%M:%S %Y"
        )
    except ValueError:
        return None
    return when.replace(tzinfo=UTC).timestamp()


def _read_maildir(p: Path) -> Input:
    result = Input(str(p), "maildir")
    files = sorted(
        (f for sub in ("new", "cur") for f in (p / sub).iterdir() if f.is_file()),
        key=lambda f: (f.name, f.parent.name),
    )
    for f in files:
        stamp = f.name.split(".", 1)[0]
        arrival = float(stamp) if stamp.isdigit() else None
        _add(
            result, message_from_bytes(f.read_bytes(), f"{f.parent.name}/{f.name}", arrival=arrival)
        )
    return result


def _read_spool(p: Path) -> Input:
    """A relayguard spool (read-only): the queued recipients of every active message."""
    from relayguard.queue.spool import MessageQuery  # noqa: PLC0415 - only for this format
    from relayguard.queue.spool.sqlite import DB_NAME, select_messages  # noqa: PLC0415

    result = Input(str(p), "spool")
    try:
        conn = sqlite3.connect(f"file:{p / DB_NAME}?mode=ro", uri=True, timeout=30)
        try:
            queued = frozenset({MessageState.ACTIVE, MessageState.HELD})
            messages = select_messages(conn, MessageQuery(states=queued))
            bodies = {
                seq: bytes(body)
                for seq, body in conn.execute(
                    "SELECT seq, body FROM messages WHERE state != ?", (MessageState.DONE.value,)
                )
            }
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise InputError(f"{p / DB_NAME}: cannot read the spool: {exc}") from None
    for m in messages:
        if m.state is MessageState.HELD:
            result.skipped.append(f"{m.queue_id}: held by an operator")
            continue
        pending = tuple(
            Recipient(r.address, orcpt=r.orcpt, notify=r.notify)
            for r in m.envelope.recipients
            if r.state is RecipientState.QUEUED
        )
        if not pending:
            result.skipped.append(f"{m.queue_id}: no queued recipients")
            continue
        result.messages.append(
            InputMessage(
                envelope=m.envelope.with_recipients(pending),
                body=bodies[m.seq],
                arrival=m.arrival_at,
                message_id=m.message_id,
                source=m.queue_id,
            )
        )
    return result
