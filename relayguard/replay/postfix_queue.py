"""Postfix queue input: the queue files themselves, or `postcat -q` output.

A queue file is a sequence of records: one type byte, the length in 7-bit
groups (low first, high bit = more), then the data. Read here: C (size),
T (arrival time), S (sender), R/D/O/'/' (recipient, done, original, cancelled),
A (named attributes: notify_flags, dsn_orig_rcpt, dsn_ret, dsn_envid, which
apply to the next recipient), the DSN records < i o n, M (content starts),
N/L (text lines, L continued), p (pointer), X (extracted segment, where
`sendmail -t` recipients live), E (end). Other records are skipped.

`postcat -q` prints the same records by name ("recipient: a@b"), then the
content between "*** MESSAGE CONTENTS" and "*** HEADER EXTRACTED". Its
times are printed in the local time of the host that ran it; they are read
as UTC, which keeps the replay independent of this machine's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from relayguard.model import Envelope, Recipient
from relayguard.replay.messages import Input, InputError, InputMessage, crlf, headers_of

_NOTIFY_BITS = ((1, "NEVER"), (2, "SUCCESS"), (4, "DELAY"), (8, "FAILURE"))
_RET = {"1": "FULL", "2": "HDRS"}
_MAX_POINTER_JUMPS = 10_000
_SECTION = re.compile(
    r"^\*\*\* (ENVELOPE RECORDS|MESSAGE CONTENTS|HEADER EXTRACTED|"
    r"MESSAGE FILE END) (\S+) \*\*\*$"
)


@dataclass(slots=True)
class _Builder:
    """Collects the records of one message, whichever notation they came in."""

    source: str
    sender: str | None = None
    arrival: float | None = None
    ret: str | None = None
    envid: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    done: int = 0
    lines: list[bytes] = field(default_factory=list)
    _notify: tuple[str, ...] = ()
    _orcpt: str | None = None

    def attribute(self, name: str, value: str) -> None:
        if name in ("notify_flags", "dsn_notify_flags"):
            self._notify = _notify(value)
        elif name in ("dsn_orig_rcpt", "dsn_original_recipient"):
            self._orcpt = _xtext(value) if value else None
        elif name in ("dsn_ret", "dsn_return_flags"):
            self.ret = _RET.get(value.strip(), self.ret)
        elif name in ("dsn_envid", "dsn_envelope_id"):
            self.envid = _xtext(value) if value else None

    def recipient(self, address: str, *, done: bool) -> None:
        if done:
            self.done += 1
        else:
            self.recipients.append(Recipient(address, orcpt=self._orcpt, notify=self._notify))
        self._notify, self._orcpt = (), None

    def finish(self) -> InputMessage | str:
        if self.sender is None:
            return f"{self.source}: no sender record"
        if not self.recipients:
            why = "every recipient is done" if self.done else "no recipient records"
            return f"{self.source}: {why}"
        body = crlf(b"\n".join(self.lines))
        fields = headers_of(body)
        return InputMessage(
            envelope=Envelope(
                sender=self.sender,
                recipients=tuple(self.recipients),
                ret=self.ret,
                envid=self.envid,
                mail_options=() if body.isascii() else ("BODY=8BITMIME",),
            ),
            body=body,
            arrival=self.arrival,
            message_id=(fields.get("message-id") or [""])[0],
            source=self.source,
        )


def _notify(value: str) -> tuple[str, ...]:
    try:
        bits = int(value.strip())
    except ValueError:
        return ()
    return tuple(name for bit, name in _NOTIFY_BITS if bits & bit)


def _xtext(value: str) -> str:
    """RFC 3461 xtext, as the spool keeps ORCPT and ENVID."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


def read(p: Path, fmt: str) -> Input:
    if fmt == "postcat":
        return read_postcat(p)
    result = Input(str(p), "postfix")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        data = f.read_bytes()
        if not looks_like_queue_file(data[:64]):
            result.skipped.append(f"{f.name}: not a Postfix queue file")
            continue
        item = parse_queue_file(data, f.name)
        (result.skipped if isinstance(item, str) else result.messages).append(item)  # type: ignore[arg-type]
    return result


# --- binary queue files ----------------------------------------------------------------


def _records(data: bytes, source: str) -> list[tuple[str, bytes]]:
    """Every record in file order, pointer records followed."""
    out: list[tuple[str, bytes]] = []
    pos, jumps = 0, 0
    while pos < len(data):
        rtype = chr(data[pos])
        pos += 1
        length, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 35:
                raise InputError(f"{source}: truncated or corrupt record length")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > len(data):
            raise InputError(f"{source}: truncated record {rtype!r}")
        value = data[pos : pos + length]
        pos += length
        if rtype == "p":
            target = int(value.strip() or b"0")
            if target > 0:
                jumps += 1
                if jumps > _MAX_POINTER_JUMPS or target >= len(data):
                    raise InputError(f"{source}: bad pointer record")
                pos = target
            continue
        out.append((rtype, value))
        if rtype == "E":
            break
    return out


def looks_like_queue_file(head: bytes) -> bool:
    """Starts with a size (C, cleanup) or time (T, maildrop) record of sane length."""
    return (
        len(head) >= 3
        and head[0:1] in (b"C", b"T")
        and head[1] < 0x80
        and (head[2:3].isspace() or head[2:3].isdigit())
    )


def looks_like_queue_dir(p: Path) -> bool:
    for f in sorted(p.rglob("*")):
        if f.is_file():
            with f.open("rb") as fh:
                return looks_like_queue_file(fh.read(64))
    return False


_DSN_RECORDS = {"<": "dsn_ret", "i": "dsn_envid", "o": "dsn_orig_rcpt", "n": "notify_flags"}


def parse_queue_file(data: bytes, source: str) -> InputMessage | str:
    b = _Builder(source)
    in_content = False
    continued = False
    for rtype, value in _records(data, source):
        if in_content and rtype in "NL":
            if continued:
                b.lines[-1] += value  # an L record continues on the next record
            else:
                b.lines.append(value)
            continued = rtype == "L"
        elif rtype in "MX":
            in_content = rtype == "M"  # the content segment runs from M to X
        else:
            _envelope_record(b, rtype, value.decode("utf-8", "replace"))
    return b.finish()


def _envelope_record(b: _Builder, rtype: str, text: str) -> None:
    if rtype == "T":
        b.arrival = float(text.split(maxsplit=1)[0]) if text.split() else None
    elif rtype == "S":
        b.sender = text
    elif rtype in "RD/":
        b.recipient(text, done=rtype != "R")
    elif rtype == "A":
        name, _, val = text.partition("=")
        b.attribute(name, val)
    elif rtype in _DSN_RECORDS:
        b.attribute(_DSN_RECORDS[rtype], text)


# --- postcat -q output ---------------------------------------------------------------


def read_postcat(p: Path) -> Input:
    result = Input(str(p), "postcat")
    current: _Builder | None = None
    section = ""
    for raw in p.read_bytes().split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        m = _SECTION.match(line)
        if m is not None:
            section, qid = m.group(1), m.group(2).rsplit("/", 1)[-1]
            if section == "ENVELOPE RECORDS":
                current = _Builder(qid)
            elif section == "MESSAGE FILE END" and current is not None:
                item = current.finish()
                (result.skipped if isinstance(item, str) else result.messages).append(item)  # type: ignore[arg-type]
                current = None
            continue
        if current is None:
            continue
        if section == "MESSAGE CONTENTS":
            current.lines.append(raw.rstrip(b"\r"))
            continue
        _postcat_field(current, line)
    if current is not None:
        raise InputError(f"{p}: {current.source}: the dump ends before '*** MESSAGE FILE END'")
    return result


def _postcat_field(b: _Builder, line: str) -> None:
    name, sep, value = line.partition(": ")
    if not sep:
        name, value = line.rstrip(":"), ""
    value = value.strip()
    if name == "message_arrival_time":
        b.arrival = _postcat_time(value)
    elif name == "sender":
        b.sender = value
    elif name in ("recipient", "done_recipient", "canceled_recipient"):
        b.recipient(value, done=name != "recipient")
    elif name == "named_attribute":
        key, _, val = value.partition("=")
        b.attribute(key, val)
    elif name.startswith("dsn_"):
        b.attribute(name, value)


def _postcat_time(value: str) -> float | None:
    if re.fullmatch(r"\d+(\.\d+)?( \d+)?", value):
        return float(value.split(maxsplit=1)[0])
    try:
        return datetime.strptime(value, "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
