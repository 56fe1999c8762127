"""A reply in log form → Reply: `550 5.7.1 text`, as Postfix logs it.

Lenient about what people paste: a `Diagnostic-Code: smtp;` or `smtp;` prefix,
Postfix's `host mx.example.com[192.0.2.1] said:` and `(in reply to RCPT TO
command)`, and multi-line replies joined by spaces with their `NNN-` prefixes
(`550-5.7.1 first line 550-5.7.1 second 550 5.7.1 last`).
"""

from __future__ import annotations

import re

from relayguard.model import Phase, Reply

_PREFIX = re.compile(
    r"^\s*(?:diagnostic-code:\s*)?(?:smtp\s*;\s*)?"
    r"(?:.{0,200}?\b(?:said|says|responded|replied|answered)\s*:\s*)?",
    re.IGNORECASE,
)
_CODE = re.compile(r"([2-5][0-9]{2})(?:[ -]|$)")
_LATER_REFUSAL = re.compile(r"(?:^|\s)([45][0-9]{2})[ -]")
_IN_REPLY_TO = re.compile(r"\s*\(in reply to [^)]*\)\s*$", re.IGNORECASE)
_PHASES = {
    "mail from": Phase.MAIL,
    "rcpt to": Phase.RCPT,
    "end of data": Phase.AFTER_DATA,
    "data": Phase.DATA,
    "helo": Phase.HELO,
    "ehlo": Phase.HELO,
    "starttls": Phase.STARTTLS,
    "auth": Phase.AUTH,
}


def reply_from_line(line: str, phase: Phase | None = None, *, synthetic: bool = False) -> Reply:
    """'421-4.7.28 [192.0.2.1] Our system...' → Reply(421, '4.7.28', ...).

    The phase comes from a Postfix "(in reply to X command)" suffix when the caller
    gives none, else it is RCPT. Raises ValueError without a 3-digit reply code."""
    text = line.strip()
    m = _PREFIX.match(text)
    rest = text[m.end() :] if m else text
    code_m = _CODE.match(rest)
    if code_m is None:
        code_m = _CODE.match(text)
        rest = text
    if code_m is None:
        raise ValueError(f"expected a reply line starting with a 3-digit code, got {line!r}")
    code = code_m.group(1)
    body = rest[code_m.end() :]
    if code[0] in "23":
        # A banner continued into a refusal ("220-laposte 421 4.2.1 Service refuse"):
        # the last line's code is the reply, as clients read it.
        later = _LATER_REFUSAL.search(body)
        if later is not None:
            code, body = later.group(1), body[later.end() :]
    suffix = _IN_REPLY_TO.search(body)
    if suffix is not None:
        command = suffix.group(0).lower()
        if phase is None:
            phase = next((p for k, p in _PHASES.items() if k in command), None)
        body = body[: suffix.start()]
    # Joined continuation lines: " 550-..." always, " 550 " only before an enhanced code.
    lines = re.split(rf"\s+{code}(?:-|\s+(?=[245]\.\d{{1,3}}\.\d{{1,3}}\b))", body)
    return Reply.parse(int(code), "\n".join(lines), phase or Phase.RCPT, synthetic=synthetic)
