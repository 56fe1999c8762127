"""Client AUTH on the listener: the users file, its password hashes, and the lockout
of a client address that keeps failing.

Pure: no sockets, no clock of its own (times are passed in), so the front end
(smtp/frontend.py), the config check (config.py) and the `passwd` command share one
definition of each. Beside config.py, not under smtp/, because config reads it.

Hashes are scrypt (RFC 7914, the stdlib's `hashlib.scrypt`), written in the PHC
string format (https://github.com/P-H-C/phc-string-format/blob/master/phc-sf-spec.md)
that passlib and others use for scrypt: `$scrypt$ln=14,r=8,p=1$<salt>$<key>`, salt
and key in base64 without padding. The cost travels with each hash, so raising the
default later leaves the hashes already written valid.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# 2**14 rounds of 8-block scrypt, 16 MB: the "interactive login" cost of RFC 7914
# section 2 and of Python's docs; about 50 ms on a 2-core machine, run off the loop.
DEFAULT_LN = 14
_R, _P = 8, 1
_KEY_LEN = 32
_SALT_LEN = 16
_MIN_KEY_LEN = 16  # below 128 bits a stolen hash is guessable offline
# What a users file may ask for: enough for any sane hash, not enough for a typo in
# ln to make every AUTH take a minute and gigabytes.
_LN_RANGE = range(1, 21)
_R_RANGE = range(1, 33)
_P_RANGE = range(1, 17)

_HASH = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d+),r=(?P<r>\d+),p=(?P<p>\d+)\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<key>[A-Za-z0-9+/]+)"
)
# A login is what the client sends in AUTH PLAIN/LOGIN: no ':' (the file's separator),
# nothing blank or unprintable.
_LOGIN = re.compile(r"[^\s:]{1,256}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def __str__(self) -> str:
        return f"$scrypt$ln={self.ln},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def _derive(password: bytes, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * r * (n + p) + (1 << 20)
    )


def hash_password(password: str, *, ln: int = DEFAULT_LN, salt: bytes | None = None) -> str:
    """A new hash of `password` for the users file, with a fresh random salt."""
    salt = os.urandom(_SALT_LEN) if salt is None else salt
    key = _derive(password.encode("utf-8"), salt, ln, _R, _P, _KEY_LEN)
    return str(PasswordHash(ln, _R, _P, salt, key))


def parse_hash(text: str) -> PasswordHash:
    """A hash as written in the users file; ValueError says what is wrong with it."""
    m = _HASH.fullmatch(text)
    if m is None:
        raise ValueError("expected a scrypt hash like $scrypt$ln=14,r=8,p=1$salt$key")
    ln, r, p = int(m["ln"]), int(m["r"]), int(m["p"])
    if ln not in _LN_RANGE or r not in _R_RANGE or p not in _P_RANGE:
        raise ValueError(
            f"expected scrypt costs ln 1-20, r 1-32, p 1-16; this hash has ln={ln},r={r},p={p}"
        )
    try:
        salt, key = _unb64(m["salt"]), _unb64(m["key"])
    except binascii.Error:
        raise ValueError("expected base64 salt and key in the scrypt hash") from None
    if len(key) < _MIN_KEY_LEN:
        raise ValueError(f"expected a scrypt key of at least {_MIN_KEY_LEN} bytes")
    return PasswordHash(ln, r, p, salt, key)


def check_password(stored: PasswordHash, password: bytes) -> bool:
    """`password` as the client sent it (AUTH carries bytes, UTF-8 by RFC 4954)."""
    key = _derive(password, stored.salt, stored.ln, stored.r, stored.p, len(stored.key))
    return hmac.compare_digest(key, stored.key)


def valid_login(login: str) -> bool:
    return _LOGIN.fullmatch(login) is not None


def parse_users(text: str) -> dict[str, PasswordHash]:
    """`login:hash` lines ('#' comments and blank lines ignored), as `passwd` writes
    them. ValueError names the line."""
    users: dict[str, PasswordHash] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        login, sep, hashed = line.partition(":")
        if not sep or not valid_login(login):
            raise ValueError(f"line {number}: expected login:hash, with a login of no spaces")
        if login in users:
            raise ValueError(f"line {number}: {login!r} is listed twice")
        try:
            users[login] = parse_hash(hashed)
        except ValueError as exc:
            raise ValueError(f"line {number} ({login}): {exc}") from None
    return users


def set_user(text: str, login: str, hashed: str) -> str:
    """The users file `text` with `login`'s hash replaced or added at the end; every
    other line (comments included) as it was."""
    lines = text.splitlines()
    entry = f"{login}:{hashed}"
    for i, raw in enumerate(lines):
        if raw.strip().partition(":")[0] == login and not raw.lstrip().startswith("#"):
            lines[i] = entry
            break
    else:
        lines.append(entry)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ClientLogins:
    """Who may log in. `check` costs the same whether or not the login exists (an
    unknown login is checked against a decoy with the costs of a real hash), so the
    time of a refusal does not tell which logins are real."""

    users: Mapping[str, PasswordHash]

    def check(self, login: str, password: bytes) -> bool:
        stored = self.users.get(login)
        if stored is None:
            model = next(iter(self.users.values()), None)
            ln, r, p = (model.ln, model.r, model.p) if model else (DEFAULT_LN, _R, _P)
            check_password(PasswordHash(ln, r, p, b"\0" * _SALT_LEN, b"\0" * _KEY_LEN), password)
            return False
        return check_password(stored, password)


# How many client addresses the lockout remembers at most: past that the oldest is
# forgotten, so a spray from a whole network cannot grow the table without end.
MAX_TRACKED_CLIENTS = 100_000


@dataclass(slots=True)
class AuthFailures:
    """Failed AUTH per client address in a sliding window, as Postfix's anvil counts
    smtpd_client_auth_rate_limit: `limit` failures within `window` seconds lock the
    address out until the oldest of them is older than the window."""

    limit: int
    window: float
    _times: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._times.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._times[client]
            return None
        return times

    def failed(self, client: str, now: float) -> int:
        """Count a failure; return how many the address has in the window now."""
        times = self._recent(client, now)
        if times is None:
            if len(self._times) >= MAX_TRACKED_CLIENTS:
                del self._times[next(iter(self._times))]
            times = self._times[client] = deque()
        times.append(now)
        return len(times)

    def locked_out(self, client: str, now: float) -> bool:
        times = self._recent(client, now)
        return times is not None and len(times) >= self.limit

    def locked_until(self, client: str, now: float) -> float | None:
        times = self._recent(client, now)
        if times is None or len(times) < self.limit:
            return None
        return times[-self.limit] + self.window
