"""What an input reader gives the replay: messages with envelopes and arrival times.

Shared by the readers in inputs.py and postfix_queue.py, which import it, not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relayguard.model import Envelope


class InputError(ValueError):
    """The input cannot be read; names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class InputMessage:
    envelope: Envelope
    body: bytes  # CRLF line ends
    arrival: float | None  # POSIX time, None if the input does not say
    message_id: str = ""
    source: str = ""  # file name or queue id, for messages about it


@dataclass(slots=True)
class Input:
    path: str
    format: str
    messages: list[InputMessage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "source: why"


def crlf(data: bytes) -> bytes:
    """Line ends as the spool keeps them: CRLF, with a final one."""
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out if out.endswith(b"\r\n") else out + b"\r\n"


def headers_of(body: bytes) -> dict[str, list[str]]:
    """Header fields (lower-case names → values, unfolded), read only up to the blank line."""
    end = body.find(b"\r\n\r\n")
    if end < 0:
        end = body.find(b"\n\n")
    head = (body if end < 0 else body[:end]).decode("utf-8", "replace")
    fields: dict[str, list[str]] = {}
    values: list[str] | None = None
    for line in head.replace("\r", "").split("\n"):
        if line[:1] in (" ", "\t"):
            if values:
                values[-1] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            values = None
            continue
        values = fields.setdefault(key.lower(), [])
        values.append(value.strip())
    return fields
