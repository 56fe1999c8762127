"""Egress reputation: ask DNSBLs about our own addresses before receivers tell us.

Each route's egress address (`public_address` where it leaves through NAT, else
`source_address`) is looked up in every `[[reputation.zone]]` the way receivers
do (RFC 5782: the address reversed, under the zone; an A answer in 127.0.0.0/8
means listed, NXDOMAIN means not listed; the TXT record says why). A listing
changes what relayguard does only when the zone's answer is one that means
*listed*: Spamhaus answers from 127.255.255.0/24 when it refuses the query
(.252 a typo in the zone name, .254 a query through a public or open resolver,
.255 too many queries), and those "should NOT be interpreted as any sort of
reputation" ("Spamhaus DNSBL return codes: technical update",
https://www.spamhaus.org/news/article/788/, and
https://www.spamhaus.com/resource-center/help-for-spamhaus-projects-legacy-blocklist-users):
a failed check, logged, never a listing.

The pure part (answer ranges, query names, reading answers, what a new result
changes) is separate from the lookups and the periodic loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

if TYPE_CHECKING:
    from relayguard.clock import Clock

log = structlog.get_logger("relayguard.reputation")

# What a few well-known refusal answers mean, for the log (Spamhaus's return codes).
KNOWN_ERRORS = {
    "127.255.255.252": "the zone name is mistyped (Spamhaus: typing error in DNSBL name)",
    "127.255.255.254": (
        "the query came through a public or open resolver, which the zone refuses "
        "(Spamhaus: use your own resolver or a Data Query Service key)"
    ),
    "127.255.255.255": "too many queries from this resolver (Spamhaus: excessive queries)",
    "127.0.0.1": "the zone answers 127.0.0.1, which DNSBLs use for refused or test queries",
}


@dataclass(frozen=True, slots=True)
class AnswerRange:
    """IPv4 answers from `low` to `high`: '127.0.0.2', '127.0.0.2-127.0.0.11',
    '127.0.0.0/24'."""

    low: int
    high: int
    text: str

    @classmethod
    def parse(cls, text: str) -> AnswerRange:
        t = text.strip()
        if "/" in t:
            net = ipaddress.IPv4Network(t, strict=False)
            return cls(int(net.network_address), int(net.broadcast_address), t)
        low, sep, high = t.partition("-")
        lo = int(ipaddress.IPv4Address(low.strip()))
        hi = int(ipaddress.IPv4Address(high.strip())) if sep else lo
        if hi < lo:
            raise ValueError("a range from low to high")
        return cls(lo, hi, t)

    def __contains__(self, address: object) -> bool:
        try:
            value = int(ipaddress.IPv4Address(str(address)))
        except ValueError:
            return False
        return self.low <= value <= self.high


def _ranges(*texts: str) -> tuple[AnswerRange, ...]:
    return tuple(AnswerRange.parse(t) for t in texts)


# RFC 5782 section 2.3: listed entries answer with an address in 127.0.0.0/8; the
# refusals above take precedence.
DEFAULT_LISTED = _ranges("127.0.0.0/8")
DEFAULT_ERRORS = _ranges("127.0.0.1", "127.255.255.0/24")


@dataclass(frozen=True, slots=True)
class Zone:
    """One DNSBL to check, and how to read its answers."""

    zone: str
    listed: tuple[AnswerRange, ...] = DEFAULT_LISTED
    errors: tuple[AnswerRange, ...] = DEFAULT_ERRORS
    avoid: bool = True  # avoid = "all": mail avoids a listed route while another is clean


class Verdict(StrEnum):
    CLEAN = "clean"
    LISTED = "listed"
    FAILED = "failed"  # no usable answer: nothing changes


@dataclass(frozen=True, slots=True)
class ZoneCheck:
    """One check of one route's egress address in one zone."""

    route: str
    address: str
    zone: str
    verdict: Verdict
    at: float
    answers: tuple[str, ...] = ()
    reason: str = ""  # the TXT record of a listing, or why the check failed
    avoid: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "route": self.route,
            "address": self.address,
            "zone": self.zone,
            "verdict": self.verdict.value,
            "at": self.at,
            "answers": list(self.answers),
            "reason": self.reason,
            "avoid": self.avoid,
        }


def query_name(address: str, zone: str) -> str:
    """RFC 5782 section 2.1 (IPv4: octets reversed) and 2.4 (IPv6: nibbles reversed)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        labels = reversed(str(ip).split("."))
    else:
        labels = reversed(ip.exploded.replace(":", ""))
    return ".".join([*labels, zone.rstrip(".")])


def read_answers(zone: Zone, answers: Sequence[str]) -> tuple[Verdict, str]:
    """What the A answers to a query say: none is not listed; a refusal answer is a
    failed check whatever else came with it; else listed, or an answer the zone's
    configuration does not know (a failed check too: never act on a guess)."""
    if not answers:
        return Verdict.CLEAN, ""
    refused = [a for a in answers if any(a in r for r in zone.errors)]
    if refused:
        why = KNOWN_ERRORS.get(refused[0], "an answer configured as an error for this zone")
        return Verdict.FAILED, f"{zone.zone} refused the query ({refused[0]}: {why})"
    if all(any(a in r for r in zone.listed) for a in answers):
        return Verdict.LISTED, ""
    return Verdict.FAILED, (
        f"{zone.zone} answered {', '.join(answers)}, which is neither a listing nor an "
        "error in its configuration"
    )


def change(previous: ZoneCheck | None, new: ZoneCheck) -> str | None:
    """'listed' or 'delisted' when this result changes the route's standing in the
    zone; None otherwise. A failed check changes nothing; the first clean result is
    not a change."""
    if new.verdict is Verdict.LISTED and (previous is None or previous.verdict is Verdict.CLEAN):
        return "listed"
    if new.verdict is Verdict.CLEAN and previous is not None and previous.verdict is Verdict.LISTED:
        return "delisted"
    return None


async def check_zone(
    resolver: dns.asyncresolver.Resolver, route: str, address: str, zone: Zone, now: float
) -> ZoneCheck:
    name = query_name(address, zone.zone)

    def result(verdict: Verdict, answers: Sequence[str] = (), reason: str = "") -> ZoneCheck:
        return ZoneCheck(
            route, address, zone.zone, verdict, now, tuple(answers), reason, zone.avoid
        )

    try:
        answer = await resolver.resolve(name, "A", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return result(Verdict.CLEAN)
    except (dns.exception.DNSException, OSError) as exc:
        return result(Verdict.FAILED, reason=f"no answer from DNS ({type(exc).__name__})")
    answers = sorted(str(rd) for rd in answer.rrset or ())
    verdict, why = read_answers(zone, answers)
    if verdict is not Verdict.LISTED:
        return result(verdict, answers, why)
    return result(verdict, answers, await _listing_text(resolver, name))


async def _listing_text(resolver: dns.asyncresolver.Resolver, name: str) -> str:
    """The TXT record of a listing (why, and where to ask for removal); '' if none."""
    try:
        answer = await resolver.resolve(name, "TXT", search=False, raise_on_no_answer=False)
    except (dns.exception.DNSException, OSError):
        return ""
    # A TXT record is one or more strings, meant to be read joined (RFC 7208 3.3).
    return " ".join(b"".join(rd.strings).decode("utf-8", "replace") for rd in answer.rrset or ())


@dataclass(frozen=True, slots=True)
class Egress:
    """A route and the address receivers see it connect from."""

    route: str
    address: str


OnChange = Callable[[str, ZoneCheck], None]  # ("listed" | "delisted", the check)


@dataclass
class ReputationMonitor:
    """Checks every egress in every zone at start and every `interval` (jittered by
    up to a fifth either way, so many relays do not query in step)."""

    egresses: Sequence[Egress]
    zones: Sequence[Zone]
    resolver: dns.asyncresolver.Resolver
    clock: Clock
    interval: float = 300.0
    on_change: OnChange = lambda _change, _check: None
    rng: random.Random = field(default_factory=random.Random)
    # The last result that said listed or clean, per (route, zone): what a failed
    # check leaves standing. And the last result of any kind, for `reputation check`.
    standing: dict[tuple[str, str], ZoneCheck] = field(default_factory=dict)
    last: dict[tuple[str, str], ZoneCheck] = field(default_factory=dict)

    def listed(self, route: str) -> list[ZoneCheck]:
        return [
            c
            for (r, _), c in sorted(self.standing.items())
            if r == route and c.verdict is Verdict.LISTED
        ]

    async def check_now(self) -> list[ZoneCheck]:
        """Check everything once, concurrently; apply what changed; every result."""
        now = self.clock.now()
        checks = await asyncio.gather(
            *(
                check_zone(self.resolver, e.route, e.address, z, now)
                for e in self.egresses
                for z in self.zones
            )
        )
        for check in checks:
            self.record(check)
        return list(checks)

    def record(self, check: ZoneCheck) -> None:
        key = (check.route, check.zone)
        self.last[key] = check
        if check.verdict is Verdict.FAILED:
            log.warning(
                "reputation_check_failed",
                route=check.route,
                address=check.address,
                zone=check.zone,
                answers=list(check.answers),
                reason=check.reason,
                kept=(self.standing[key].verdict.value if key in self.standing else "unknown"),
            )
            return
        what = change(self.standing.get(key), check)
        self.standing[key] = check
        if what is not None:
            self.on_change(what, check)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_now()
            except Exception as exc:  # a bug in a check must not stop the next ones
                log.exception("reputation_check_error", error=repr(exc))
            wait = self.interval * self.rng.uniform(0.8, 1.2)
            with contextlib.suppress(asyncio.CancelledError):
                await self.clock.sleep_until(self.clock.now() + wait, stop)


def egresses_of(routes: Iterable[tuple[str, str | None]]) -> tuple[list[Egress], list[str]]:
    """(route, address or None) -> the egresses to check, and the routes that have no
    address to check (neither public_address nor source_address)."""
    egresses: list[Egress] = []
    unchecked: list[str] = []
    for route, address in routes:
        if address:
            egresses.append(Egress(route, address))
        else:
            unchecked.append(route)
    return egresses, unchecked
