"""MAIL FROM and RCPT TO parameters: SIZE, BODY, SMTPUTF8 and DSN (RFC 3461).

Pure parsing, so the front end stays about sessions. Values keep their case:
ENVID and ORCPT are opaque to us: kept as received (xtext), passed upstream
verbatim, decoded only when a report shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


class ParamError(ValueError):
    """A parameter problem, carrying the SMTP reply to give."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _valid_xtext(value: str) -> bool:
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            if not re.fullmatch(r"[0-9A-F]{2}", value[i + 1 : i + 3]):
                return False
            i += 3
            continue
        if not 33 <= ord(ch) <= 126 or ch == "=":
            return False
        i += 1
    return True


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: str | None = None  # 7BIT | 8BITMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL | HDRS
    envid: str | None = None  # xtext, as received

    @property
    def upstream(self) -> tuple[str, ...]:
        """The non-DSN parameters worth passing upstream when the peer has them."""
        out = []
        if self.body:
            out.append(f"BODY={self.body}")
        if self.smtputf8:
            out.append("SMTPUTF8")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: tuple[str, ...] = ()
    orcpt: str | None = None  # "rfc822;addr", xtext as received (decoded only for reports)


def _split(params: str) -> list[tuple[str, str | None]]:
    out = []
    for item in params.split():
        key, eq, value = item.partition("=")
        out.append((key.upper(), value if eq else None))
    return out


def parse_mail_params(  # noqa: C901, PLR0912 - one branch per RFC parameter reads best
    params: str, *, max_size: int | None
) -> MailParams:
    size = body = ret = envid = None
    smtputf8 = False
    seen: set[str] = set()
    for key, value in _split(params):
        if key in seen:
            raise ParamError(f"501 5.5.4 Duplicate MAIL parameter {key}")
        seen.add(key)
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()):
                raise ParamError("501 5.5.4 Bad SIZE parameter")
            size = int(value)
            if max_size and size > max_size:
                raise ParamError("552 5.3.4 Message size exceeds fixed limit")
        elif key == "BODY":
            body = (value or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise ParamError("501 5.5.4 Bad BODY parameter: 7BIT or 8BITMIME expected")
        elif key == "SMTPUTF8":
            if value is not None:
                raise ParamError("501 5.5.4 SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "RET":
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                raise ParamError("501 5.5.4 Bad RET parameter: FULL or HDRS expected")
        elif key == "ENVID":
            if not value or len(value) > 100 or not _valid_xtext(value):
                raise ParamError("501 5.5.4 Bad ENVID parameter")
            envid = value
        else:
            raise ParamError(f"555 5.5.4 Unsupported MAIL parameter {key}")
    return MailParams(size, body, smtputf8, ret, envid)


def parse_rcpt_params(params: str) -> RcptParams:
    notify: tuple[str, ...] = ()
    orcpt = None
    seen: set[str] = set()
    for key, value in _split(params):
        if key in seen:
            raise ParamError(f"501 5.5.4 Duplicate RCPT parameter {key}")
        seen.add(key)
        if key == "NOTIFY":
            items = tuple(v.upper() for v in (value or "").split(","))
            if (
                not items
                or not set(items) <= NOTIFY_VALUES
                or ("NEVER" in items and len(items) > 1)
            ):
                raise ParamError(
                    "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY"
                )
            notify = items
        elif key == "ORCPT":
            addr_type, sep, addr = (value or "").partition(";")
            if not sep or not addr or not _valid_xtext(addr) or not _ATOM.fullmatch(addr_type):
                raise ParamError("501 5.5.4 Bad ORCPT parameter")
            orcpt = f"{addr_type};{addr}"
        else:
            raise ParamError(f"555 5.5.4 Unsupported RCPT parameter {key}")
    return RcptParams(notify, orcpt)
