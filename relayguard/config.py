"""TOML configuration → validated, typed settings.

Every error names the file, the key (as a dotted path, `route[1].port`) and what
was expected, because the operator reading it has the file open beside them.
Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, overload

from relayguard.client_logins import PasswordHash, parse_users
from relayguard.dns.providers import ProviderTableError, check_pattern
from relayguard.dns.reputation import DEFAULT_ERRORS, DEFAULT_LISTED, AnswerRange, Zone
from relayguard.durations import EXPECTED_RANGE, parse_duration_range

# Re-exported (the alias is what makes it explicit to mypy): the policy engine and
# the corpus take durations from here, as they did before durations.py.
from relayguard.durations import format_duration as format_duration  # noqa: PLC0414
from relayguard.durations import parse_duration as parse_duration  # noqa: PLC0414

T = TypeVar("T")
D = TypeVar("D")

DEFAULT_CONFIG_PATH = "/etc/relayguard/relayguard.toml"
TLS_MODES = ("none", "opportunistic", "required")
# What aiosmtplib can do with a password (its SMTP.AUTH_METHODS, less XOAUTH2, which
# takes an OAuth token rather than a password).
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


class Secret:
    """A smarthost password: read at load time, never shown.

    repr and str say only that there is one, so a route printed into a log line, a
    traceback or a report carries no password; `reveal()` is for the AUTH command.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator."""


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """'127.0.0.1:25', '[::1]:25', 'host' (with a default port)."""
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep:
            raise ValueError("host:port, with IPv6 addresses in brackets ([::1]:10025)")
        if rest and not rest.startswith(":"):
            raise ValueError("host:port, with IPv6 addresses in brackets ([::1]:10025)")
        port_s = rest[1:]
    elif v.count(":") == 1:
        host, _, port_s = v.partition(":")
    elif ":" in v:
        raise ValueError("host:port, with IPv6 addresses in brackets ([::1]:10025)")
    else:
        host, port_s = v, ""
    if not host:
        raise ValueError("host:port with a host")
    if not port_s:
        if default_port is None:
            raise ValueError("host:port with a port")
        return host, default_port
    if not (port_s.isascii() and port_s.isdigit()) or not 0 <= int(port_s) <= 65535:
        raise ValueError("a port number from 0 to 65535")
    return host, int(port_s)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[str, int] = ("127.0.0.1", 10025)
    hostname: str = "localhost"
    # The spool's directory (SQLite, the embedded default). With a PostgreSQL spool
    # (spool = "postgresql://..." in the file: `spool_dsn`), this is `run_dir`, where
    # the node keeps what is its own: the control socket and its lock.
    spool: Path = Path("./var/spool")
    spool_dsn: str | None = None
    # Several nodes on one PostgreSQL spool: each names itself (default: host name and
    # process id), and holds what it delivers by a lease it renews; a node that dies
    # loses its leases after `lease_time`, and another node delivers that mail.
    node_name: str = ""
    lease_time: float = 30.0
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_message_size: int = 36_700_160
    max_recipients: int = 1000
    max_connections: int = 500
    max_connections_per_client: int = 100
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    shutdown_grace: float = 30.0
    workers: int = 1  # front-end processes; 0: the main process accepts connections itself
    # A message with more Received: headers than this is refused (554 5.4.6), as
    # Postfix's hopcount_limit: a misconfigured loop ends instead of circling.
    max_hops: int = 50
    # STARTTLS on the listener (RFC 3207): offered when both files are set; the
    # certificate is read again on SIGHUP, so a renewed one needs no restart.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_tls: bool = False  # MAIL before STARTTLS: 530 5.7.0
    # A second listener speaking TLS from the first byte (RFC 8314 "implicit TLS", the
    # submissions port 465), with the same certificate.
    tls_listen: tuple[str, int] | None = None
    # Client AUTH (RFC 4954), offered only over TLS: login:scrypt-hash lines, written by
    # `relayguard passwd`, read at start and on SIGHUP. An authenticated client may
    # relay from outside allowed_networks.
    auth_users_file: Path | None = None
    client_logins: tuple[tuple[str, PasswordHash], ...] = ()
    # With AUTH, clients outside allowed_networks get a session (to log in), under a
    # cap of their own, so that they cannot fill the one allowed networks rely on.
    max_outside_connections: int = 100
    # Failed AUTH from one address: this many within the window answer 421 4.7.0 and
    # refuse its connections until the window has passed (Postfix's anvil does the same
    # with smtpd_client_auth_rate_limit).
    auth_failure_limit: int = 5
    auth_failure_window: float = 600.0


@dataclass(frozen=True, slots=True)
class RouteSettings:
    name: str
    host: str
    port: int = 25
    source_address: str | None = None
    tls: str = "opportunistic"
    tls_verify: bool = False
    tls_ca_file: Path | None = None
    max_connections: int = 20
    # Shared by every node on one PostgreSQL spool (None: each node has its own
    # max_connections); on a spool of its own, one node is all of them.
    max_connections_total: int | None = None
    helo_name: str | None = None
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    messages_per_connection: int = 100
    ndr_only: bool = False  # carries only NDRs and reports (back to the originating MTA)
    # The address receivers see when the route leaves through NAT: what the
    # reputation checks look up (else source_address).
    public_address: str | None = None
    # SMTP AUTH to the smarthost, only once TLS is up unless auth_over_plaintext.
    auth_username: str | None = None
    auth_password: Secret | None = None
    auth_password_source: str | None = None  # "password file /etc/..." or "credential x"
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    auth_over_plaintext: bool = False

    @property
    def egress_address(self) -> str | None:
        return self.public_address or self.source_address

    @property
    def node_connections(self) -> int:
        """This node's cap on the route: never above what every node may have."""
        total = self.max_connections_total
        return self.max_connections if total is None else min(self.max_connections, total)

    def describe_auth(self) -> str | None:
        """What `routes` shows: the user and where the password comes from, never it."""
        if self.auth_username is None:
            return None
        return f"{self.auth_username} ({self.auth_password_source})"


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_lifetime: float = 5 * 86400.0
    backoff_start: float = 300.0
    backoff_max: float = 4000.0  # Postfix's maximal_backoff_time
    delay_warning: float = 0.0  # off, like Postfix's default
    # Keep the copy of a message that bounced because of our egress (RBL listings, our
    # PTR or HELO refused) this long, for `queue resend`; 0: keep nothing, as Postfix.
    keep_bounced: float = 0.0
    keep_bounced_max_size: int = 1 << 30  # bytes of kept copies in all; oldest go first


@dataclass(frozen=True, slots=True)
class PolicySettings:
    files: tuple[Path, ...] = ()
    second_opinions: int = 1  # extra attempts through another egress before a 5xx bounces
    second_opinion_suspend: tuple[float, float] = (300.0, 600.0)  # seconds, low..high


@dataclass(frozen=True, slots=True)
class NdrSettings:
    route: str | None = None
    record_file: Path | None = None


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """How relayguard asks DNS (MX for provider keys; DNSBLs for reputation checks)."""

    # Look up each recipient domain's MX to key egress suspensions by provider.
    provider_keys: bool = True
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system's (/etc/resolv.conf)
    timeout: float = 2.0  # the longest a lookup may hold a delivery round up
    cache_size: int = 100_000  # domains whose key is remembered (least recently used out)
    # [dns.providers]: provider -> MX host patterns, replacing or adding to the shipped
    # table (dns/providers.py); an empty list removes a shipped provider.
    providers: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class ReputationSettings:
    """DNSBLs to check our egress addresses in ([[reputation.zone]]), and how often."""

    zones: tuple[Zone, ...] = ()
    interval: float = 300.0  # jittered by up to a fifth either way


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    routes: tuple[RouteSettings, ...]
    queue: QueueSettings = field(default_factory=QueueSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    ndr: NdrSettings = field(default_factory=NdrSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    reputation: ReputationSettings = field(default_factory=ReputationSettings)
    source: Path | None = None

    def route(self, name: str) -> RouteSettings:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


class NamedValueError(ValueError):
    """A converter's message that names the bad value itself ("unknown route 'x'
    (routes: a, b)"): the table reader shows it as it is."""


class Table:
    """One TOML table read key by key: config, policy and scenario files alike.

    It remembers the keys read, so that finish() rejects every other key. Errors
    read `where: dotted.key: expected ..., got ...`. A converter says what it
    expected by the message of the ValueError or TypeError it raises ("a duration
    like '5m'"); one that raises without a message leaves it to the getter's
    `expected`; a NamedValueError is shown as it is.
    """

    def __init__(
        self, where: str, path: str, table: object, error: type[ValueError] = ConfigError
    ) -> None:
        self.where = where  # the file, or "file: rule 'id' (rule[2])"
        self.path = path  # this table's dotted key: "", "route[1]", "match"
        self.error_type = error
        if not isinstance(table, dict):
            raise error(f"{where}: {path + ': ' if path else ''}expected a table")
        self.table: dict[str, Any] = table
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ValueError:
        return self.error_type(f"{self.where}: {self.key(name)}: {message}")

    def fail(self, name: str, expected: str) -> ValueError:
        got = f", got {self.table[name]!r}" if name in self.table else ""
        return self.error(name, f"expected {expected}{got}")

    def has(self, name: str) -> bool:
        return name in self.table

    @overload
    def get(self, name: str, convert: Callable[[Any], T]) -> T | None: ...

    @overload
    def get(
        self, name: str, convert: Callable[[Any], T], default: D, expected: str = ""
    ) -> T | D: ...

    def get(
        self, name: str, convert: Callable[[Any], T], default: object = None, expected: str = ""
    ) -> object:
        self.read.add(name)
        if name not in self.table:
            return default
        return self._convert(name, convert, expected)

    def require(self, name: str, convert: Callable[[Any], T], expected: str) -> T:
        self.read.add(name)
        if name not in self.table:
            raise self.error(name, f"required key is missing ({expected})")
        return self._convert(name, convert, expected)

    def _convert(self, name: str, convert: Callable[[Any], T], expected: str) -> T:
        try:
            return convert(self.table[name])
        except NamedValueError as exc:
            raise self.error(name, str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise self.fail(name, str(exc) or expected or "another value") from None

    def raw(self, name: str, default: object = None) -> object:
        """A value read as it is: a table or array handed on whole."""
        self.read.add(name)
        return self.table.get(name, default)

    def section(self, name: str) -> Table:
        """The sub-table [name]; empty when the file has none."""
        return Table(self.where, self.key(name), self.raw(name, {}), self.error_type)

    def tables(self, name: str, expected: str) -> list[Table]:
        """The array of tables [[name]]; empty when the file has none."""
        items = self.raw(name, [])
        if not isinstance(items, list):
            raise self.error(name, f"expected {expected}")
        return [
            Table(self.where, f"{self.key(name)}[{i}]", item, self.error_type)
            for i, item in enumerate(items)
        ]

    def finish(self, known: Iterable[str] | None = None) -> None:
        """Reject the keys not read (or not in `known`): a typo must not fall back
        to a default, nor turn a rule into a catch-all."""
        names = list(known) if known is not None else sorted(self.read)
        unknown = sorted(set(self.table) - set(names))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known keys here: {', '.join(names)})")


def _str(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError
    return v


def _int_range(lo: int, hi: int) -> Callable[[object], int]:
    def conv(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError
        return v

    return conv


def _hostport(default_port: int | None) -> Callable[[object], tuple[str, int]]:
    def conv(v: object) -> tuple[str, int]:
        return parse_hostport(_str(v), default_port)

    return conv


def _networks(v: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(v, list):
        raise TypeError
    out = []
    for item in v:
        try:
            out.append(ipaddress.ip_network(_str(item), strict=False))
        except ValueError:
            raise ValueError(f"a list of networks like '127.0.0.0/8', not {item!r}") from None
    return tuple(out)


def _ip(v: object) -> str:
    try:
        return str(ipaddress.ip_address(_str(v)))
    except ValueError:
        # ipaddress's own message names the value but not what was expected.
        raise ValueError from None


def _tls_mode(v: object) -> str:
    if v not in TLS_MODES:
        raise ValueError
    return str(v)


def _path(v: object) -> Path:
    return Path(_str(v))


def _paths(v: object) -> tuple[Path, ...]:
    if not isinstance(v, list):
        raise TypeError
    return tuple(Path(_str(x)) for x in v)


def _duration_range(v: object) -> tuple[float, float]:
    low, high = parse_duration_range(v)
    if high <= 0:
        raise ValueError(EXPECTED_RANGE + ", more than zero")
    return low, high


EXPECTED_SIZE = "a size like '1GiB', '512MiB' or a number of bytes, more than zero"
_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def _size(v: object) -> int:
    """Bytes, from a whole number or '1GiB', '1.5GiB', '512MiB', '64KiB'. Only binary
    units: '1G' or '1GB' could mean 10**9 as well as 2**30, so they are refused."""
    if isinstance(v, bool):
        raise TypeError(EXPECTED_SIZE)
    if isinstance(v, int):
        size = v
    elif isinstance(v, str) and (m := _SIZE.fullmatch(v)) and m.group(2) in _SIZE_UNITS:
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(EXPECTED_SIZE)
    if size <= 0:
        raise ValueError(EXPECTED_SIZE)
    return size


def _route_name(v: object) -> str:
    s = _str(v)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", s):
        raise ValueError
    return s


def _nameserver(v: object) -> tuple[str, int]:
    try:
        text = _str(v).strip()
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(text)), 53  # a bare address, IPv6 too
        host, port = parse_hostport(text, 53)
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(
            f"nameserver addresses, 'ip' or 'ip:port' ('[::1]:5353' for IPv6), not {v!r}"
        ) from None


def _nameservers(v: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(v, list):
        raise TypeError
    return tuple(_nameserver(x) for x in v)


def _mx_patterns(v: object) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError
    try:
        return tuple(check_pattern(_str(x)) for x in v)
    except (ProviderTableError, ValueError):
        raise ValueError(
            "a list of MX host names ('mx.example.net') or suffixes ('*.example.net')"
        ) from None


def _read_dns(t: Table) -> DnsSettings:
    d = DnsSettings()
    out = DnsSettings(
        provider_keys=t.get("provider_keys", _bool, d.provider_keys, "true or false"),
        nameservers=t.get("nameservers", _nameservers, d.nameservers, "a list of addresses"),
        timeout=t.get("timeout", _positive_duration, d.timeout, "a duration like '2s'"),
        cache_size=t.get(
            "cache_size", _int_range(1, 10_000_000), d.cache_size, "a number of domains from 1"
        ),
    )
    p = t.section("providers")
    providers = []
    for name in sorted(p.table):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise p.error(name, "expected a provider name of letters, digits, '.', '_' or '-'")
        providers.append((name, p.require(name, _mx_patterns, "a list of MX host patterns")))
    p.finish()
    t.finish()
    return replace(out, providers=tuple(providers))


def _answer_ranges(v: object) -> tuple[AnswerRange, ...]:
    if not isinstance(v, list) or not v:
        raise TypeError
    try:
        return tuple(AnswerRange.parse(_str(x)) for x in v)
    except ValueError:
        raise ValueError(
            "a list of IPv4 answers: '127.0.0.2', '127.0.0.2-127.0.0.11' or '127.0.0.0/24'"
        ) from None


def _zone_name(v: object) -> str:
    name = _str(v).strip().rstrip(".").lower()
    if not re.fullmatch(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9-]+", name):
        raise ValueError
    return name


def _avoid(v: object) -> bool:
    if v not in ("all", "none"):
        raise ValueError
    return v == "all"


def _read_reputation(t: Table) -> ReputationSettings:
    d = ReputationSettings()
    interval = t.get("interval", _positive_duration, d.interval, "a duration like '5m'")
    zones: list[Zone] = []
    for z in t.tables("zone", "[[reputation.zone]] tables"):
        zone = Zone(
            zone=z.require("zone", _zone_name, "a DNSBL zone name like 'zen.spamhaus.org'"),
            listed=z.get("listed", _answer_ranges, DEFAULT_LISTED, "a list of answers"),
            errors=z.get("errors", _answer_ranges, DEFAULT_ERRORS, "a list of answers"),
            avoid=z.get("avoid", _avoid, True, "'all' (avoid a listed route) or 'none'"),
        )
        z.finish()
        if zone.zone in {x.zone for x in zones}:
            raise z.error("zone", f"expected each zone once, {zone.zone!r} is given twice")
        zones.append(zone)
    t.finish()
    return ReputationSettings(tuple(zones), interval)


def _positive_duration(v: object) -> float:
    value = parse_duration(v)
    if value <= 0:
        raise ValueError("a duration more than zero, like '2s'")
    return value


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
EXPECTED_SPOOL = "a directory path, or a PostgreSQL URL like 'postgresql://relay@db/relayguard'"


def is_postgres_dsn(value: str) -> bool:
    return value.startswith(POSTGRES_SCHEMES)


def _spool_dsn(v: object) -> str | None:
    """A PostgreSQL URL, checked for its form here (whether the server answers is
    checked at start); None for a directory path."""
    text = _str(v).strip()
    if not is_postgres_dsn(text):
        return None
    try:
        from psycopg import conninfo  # noqa: PLC0415 - optional: relayguard[postgres]
    except ImportError:
        raise NamedValueError(
            "a PostgreSQL spool needs psycopg: pip install 'relayguard[postgres]'"
        ) from None
    try:
        conninfo.conninfo_to_dict(text)
    except Exception as exc:  # psycopg.ProgrammingError: its text names the fault
        raise NamedValueError(f"expected {EXPECTED_SPOOL}: {exc}") from None
    return text


def _node_name(v: object) -> str:
    name = _str(v).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}", name):
        raise ValueError
    return name


def _read_server(s: Table) -> ServerSettings:
    d = ServerSettings()
    dsn = s.get("spool", _spool_dsn, None, EXPECTED_SPOOL)
    if dsn is None:
        if s.has("run_dir"):
            raise s.error("run_dir", "expected only with a PostgreSQL spool (spool is a path)")
        spool = s.get("spool", _path, d.spool, EXPECTED_SPOOL)
    else:
        spool = s.get("run_dir", _path, Path("./var/run"), "a directory path")
    out = ServerSettings(
        listen=s.get("listen", _hostport(None), d.listen, "host:port, e.g. '127.0.0.1:10025'"),
        hostname=s.get("hostname", _str, d.hostname, "a host name"),
        spool=spool,
        spool_dsn=dsn,
        node_name=s.get("node_name", _node_name, d.node_name, "a node name like 'relay-1'"),
        lease_time=s.get("lease_time", _positive_duration, d.lease_time, "a duration like '30s'"),
        allowed_networks=s.get(
            "allowed_networks", _networks, d.allowed_networks, "a list of networks"
        ),
        max_message_size=s.get(
            "max_message_size",
            _int_range(1024, 2**40),
            d.max_message_size,
            "a size in bytes from 1024",
        ),
        max_recipients=s.get(
            "max_recipients", _int_range(1, 100_000), d.max_recipients, "a number from 1 to 100000"
        ),
        max_connections=s.get(
            "max_connections", _int_range(1, 100_000), d.max_connections, "a number from 1"
        ),
        max_connections_per_client=s.get(
            "max_connections_per_client",
            _int_range(1, 100_000),
            d.max_connections_per_client,
            "a number from 1",
        ),
        idle_timeout=s.get("idle_timeout", parse_duration, d.idle_timeout, "a duration"),
        data_timeout=s.get("data_timeout", parse_duration, d.data_timeout, "a duration"),
        shutdown_grace=s.get("shutdown_grace", parse_duration, d.shutdown_grace, "a duration"),
        workers=s.get("workers", _int_range(0, 64), d.workers, "a process count from 0 to 64"),
        max_hops=s.get("max_hops", _int_range(1, 1000), d.max_hops, "a number from 1 to 1000"),
        tls_cert_file=s.get("tls_cert_file", _path, None, "a PEM certificate file path"),
        tls_key_file=s.get("tls_key_file", _path, None, "a PEM private key file path"),
        require_tls=s.get("require_tls", _bool, d.require_tls, "true or false"),
        tls_listen=s.get("tls_listen", _hostport(None), None, "host:port, e.g. '0.0.0.0:465'"),
        auth_users_file=s.get("auth_users_file", _path, None, "a users file path"),
        max_outside_connections=s.get(
            "max_outside_connections",
            _int_range(1, 100_000),
            d.max_outside_connections,
            "a number from 1",
        ),
        auth_failure_limit=s.get(
            "auth_failure_limit", _int_range(1, 1000), d.auth_failure_limit, "a number from 1"
        ),
        auth_failure_window=s.get(
            "auth_failure_window", _positive_duration, d.auth_failure_window, "a duration"
        ),
    )
    s.finish()
    _check_listener_tls(s, out)
    return _read_client_logins(s, out)


def _read_client_logins(s: Table, server: ServerSettings) -> ServerSettings:
    """The users file, read and checked now (at start and on every reload): a typo in
    a hash is found by the operator, not by a client that cannot log in."""
    path = server.auth_users_file
    if path is None:
        return server
    what = "a users file of login:hash lines"
    text = _read_private_file(s, "auth_users_file", path, what)
    try:
        users = parse_users(text)
    except ValueError as exc:
        raise s.error("auth_users_file", f"expected {what}, {path} {exc}") from None
    if not users:
        raise s.error("auth_users_file", f"expected {what}, {path} lists none")
    return replace(server, client_logins=tuple(users.items()))


def _check_listener_tls(s: Table, server: ServerSettings) -> None:
    """Both files or neither, and a pair that loads: a broken certificate is found
    when the config is read, not at a client's STARTTLS."""
    cert, key = server.tls_cert_file, server.tls_key_file
    if (cert is None) != (key is None):
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise s.error(missing, "expected both tls_cert_file and tls_key_file, or neither")
    if cert is None or key is None:
        for needs_tls in ("require_tls", "tls_listen", "auth_users_file"):
            if getattr(server, needs_tls):
                raise s.error(
                    needs_tls,
                    "expected tls_cert_file and tls_key_file too"
                    + (": AUTH is offered only over TLS" if needs_tls == "auth_users_file" else ""),
                )
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise s.error(
            "tls_cert_file", f"expected a certificate and key that load ({cert}, {key}): {exc}"
        ) from None


def _read_route(s: Table) -> RouteSettings:
    name = s.require("name", _route_name, "a route name of letters, digits, '.', '_' or '-'")
    d = RouteSettings(name=name, host="")
    out = RouteSettings(
        name=name,
        host=s.require("host", _str, "the smarthost's host name or address"),
        port=s.get("port", _int_range(1, 65535), d.port, "a port from 1 to 65535"),
        source_address=s.get("source_address", _ip, d.source_address, "an IP address"),
        tls=s.get("tls", _tls_mode, d.tls, "one of none, opportunistic, required"),
        tls_verify=s.get("tls_verify", _bool, d.tls_verify, "true or false"),
        tls_ca_file=s.get("tls_ca_file", _path, d.tls_ca_file, "a file path"),
        max_connections=s.get(
            "max_connections", _int_range(1, 10_000), d.max_connections, "a number from 1"
        ),
        max_connections_total=s.get(
            "max_connections_total",
            _int_range(1, 100_000),
            d.max_connections_total,
            "a number from 1 (connections on this route across every node)",
        ),
        helo_name=s.get("helo_name", _str, d.helo_name, "a host name"),
        connect_timeout=s.get("connect_timeout", parse_duration, d.connect_timeout, "a duration"),
        command_timeout=s.get("command_timeout", parse_duration, d.command_timeout, "a duration"),
        messages_per_connection=s.get(
            "messages_per_connection",
            _int_range(1, 1_000_000),
            d.messages_per_connection,
            "a number from 1",
        ),
        ndr_only=s.get("ndr_only", _bool, d.ndr_only, "true or false"),
        public_address=s.get("public_address", _ip, d.public_address, "an IP address"),
    )
    out = _read_route_auth(s, out)
    s.finish()
    return out


def _auth_mechanisms(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise TypeError
    names = tuple(_str(x).upper() for x in v)
    if any(n not in AUTH_MECHANISMS for n in names):
        raise ValueError
    return names


def _credential_name(v: object) -> str:
    name = _str(v)
    if "/" in name or name in (".", ".."):
        raise ValueError
    return name


def _read_private_file(s: Table, key: str, path: Path, what: str) -> str:
    """The text of `path`, which only its owner may read: a password (or hash) file
    that others can read is already leaked, so it is refused."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise s.error(key, f"expected {what}, {path} is not a regular file")
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
            raise s.error(
                key,
                f"expected {what} that only its owner can read, {path} has mode "
                f"{stat.S_IMODE(st.st_mode):04o} (chmod 600 {path})",
            )
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise s.error(key, f"expected {what}, cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise s.error(key, f"expected {what} in UTF-8, {path} is not") from None


def _read_secret_file(s: Table, key: str, path: Path, what: str) -> Secret:
    """The password on the first line of `path`."""
    lines = _read_private_file(s, key, path, what).splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise s.error(key, f"expected {what}, {path} is empty (the password on its first line)")
    return Secret(password)


def _read_route_auth(s: Table, route: RouteSettings) -> RouteSettings:
    """The route's AUTH keys. The password is read now, at load and on every reload, so
    a missing or unreadable file is a config error the operator sees at once, not a
    deferral hours later."""
    username = s.get("auth_username", _str, None, "the user name the smarthost knows us by")
    file = s.get("auth_password_file", _path, None, "a file path")
    credential = s.get(
        "auth_password_credential", _credential_name, None, "a systemd credential name"
    )
    mechanisms = s.get(
        "auth_mechanisms",
        _auth_mechanisms,
        route.auth_mechanisms,
        f"a non-empty list of {', '.join(AUTH_MECHANISMS)}",
    )
    plaintext = s.get("auth_over_plaintext", _bool, route.auth_over_plaintext, "true or false")
    if username is None:
        for key in ("auth_password_file", "auth_password_credential"):
            if s.has(key):
                raise s.error(key, "expected auth_username too: a password needs a user name")
        return replace(route, auth_mechanisms=mechanisms, auth_over_plaintext=plaintext)
    if (file is None) == (credential is None):
        raise s.error(
            "auth_username",
            "expected exactly one of auth_password_file and auth_password_credential",
        )
    if file is not None:
        secret = _read_secret_file(s, "auth_password_file", file, "a file with the password")
        source = f"password file {file}"
    else:
        assert credential is not None
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise s.error(
                "auth_password_credential",
                f"expected a systemd credential {credential!r}, but $CREDENTIALS_DIRECTORY "
                f"is not set (LoadCredential={credential}:/path in the unit)",
            )
        secret = _read_secret_file(
            s,
            "auth_password_credential",
            Path(directory) / credential,
            f"the systemd credential {credential!r}",
        )
        source = f"credential {credential}"
    return replace(
        route,
        auth_username=username,
        auth_password=secret,
        auth_password_source=source,
        auth_mechanisms=mechanisms,
        auth_over_plaintext=plaintext,
    )


def load_settings_text(text: str, file: str = "<config>") -> Settings:
    """Parse config text. Relative paths (spool, policy files) are relative to the
    working directory, as `make run` and the systemd unit both set it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    top = Table(file, "", data)
    server = _read_server(top.section("server"))

    route_tables = top.tables("route", "at least one [[route]] table")
    if not route_tables:
        raise top.error("route", "expected at least one [[route]] table")
    routes = tuple(_read_route(t) for t in route_tables)
    names = [r.name for r in routes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(
                f"{file}: route[{i}].name: expected a unique name, {name!r} is used twice"
            )

    q = top.section("queue")
    dq = QueueSettings()
    queue = QueueSettings(
        max_lifetime=q.get("max_lifetime", parse_duration, dq.max_lifetime, "a duration"),
        backoff_start=q.get("backoff_start", parse_duration, dq.backoff_start, "a duration"),
        backoff_max=q.get("backoff_max", parse_duration, dq.backoff_max, "a duration"),
        delay_warning=q.get("delay_warning", parse_duration, dq.delay_warning, "a duration"),
        keep_bounced=q.get("keep_bounced", parse_duration, dq.keep_bounced, "a duration"),
        keep_bounced_max_size=q.get(
            "keep_bounced_max_size", _size, dq.keep_bounced_max_size, EXPECTED_SIZE
        ),
    )
    q.finish()

    p = top.section("policy")
    dp = PolicySettings()
    policy = PolicySettings(
        files=p.get("files", _paths, dp.files, "a list of policy file paths"),
        second_opinions=p.get(
            "second_opinions", _int_range(0, 5), dp.second_opinions, "a number from 0 to 5"
        ),
        second_opinion_suspend=p.get(
            "second_opinion_suspend", _duration_range, dp.second_opinion_suspend, EXPECTED_RANGE
        ),
    )
    p.finish()

    nd = top.section("ndr")
    ndr = NdrSettings(
        route=nd.get("route", _route_name, None, "a route name"),
        record_file=nd.get("record_file", _path, None, "a file path"),
    )
    nd.finish()
    if ndr.route is not None and ndr.route not in names:
        raise ConfigError(
            f"{file}: ndr.route: expected one of the routes {names}, got {ndr.route!r}"
        )
    explicit = tuple(t.has("ndr_only") for t in route_tables)
    routes = _ndr_route_carries_reports_only(file, routes, explicit, ndr.route)

    m = top.section("metrics")
    metrics = MetricsSettings(listen=m.get("listen", _hostport(None), None, "host:port"))
    m.finish()
    dns = _read_dns(top.section("dns"))
    reputation = _read_reputation(top.section("reputation"))
    top.finish()

    return Settings(
        server=server,
        routes=routes,
        queue=queue,
        policy=policy,
        ndr=ndr,
        metrics=metrics,
        dns=dns,
        reputation=reputation,
        source=Path(file) if file != "<config>" else None,
    )


def _ndr_route_carries_reports_only(
    file: str,
    routes: tuple[RouteSettings, ...],
    explicit: tuple[bool, ...],
    ndr_route: str | None,
) -> tuple[RouteSettings, ...]:
    """The route named by [ndr] route leads back to the origin MTA: it carries only
    reports unless its own ndr_only says otherwise (`explicit`), so that no fallback
    or second opinion ever sends mail back where it came from."""
    out = []
    for route, said in zip(routes, explicit, strict=True):
        if route.name == ndr_route and not said:
            route = replace(route, ndr_only=True)  # noqa: PLW2901
        out.append(route)
    if all(r.ndr_only for r in out):
        hint = (
            f" (route {ndr_route!r} is the [ndr] route: set ndr_only = false on it to let "
            "it carry mail too)"
            if ndr_route
            else ""
        )
        raise ConfigError(
            f"{file}: route: expected at least one route without ndr_only = true{hint}"
        )
    return tuple(out)


def read_text_file(path: Path, error: type[ValueError]) -> str:
    """A config or policy file's text; problems come back as `error`, naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: expected UTF-8 text") from None


def load_settings(path: str | Path) -> Settings:
    p = Path(path)
    return load_settings_text(read_text_file(p, ConfigError), str(p))
