"""Provider keys from MX records: dnspython's asyncio resolver behind a bounded cache.

The queue manager asks for the keys of a message's domains before its delivery
round (after the 250, so never on the ingest path). A lookup that fails or takes
longer than `[dns] timeout` gives the domain itself as the key: it never delays
mail beyond that, never defers it and never loses it. Answers are cached by their
TTL, "no such domain" and "no MX" by the zone's negative TTL (RFC 2308), and
failures briefly, so that a resolver that is down costs one timeout per domain
per minute, not one per message. Concurrent lookups of one domain share a query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver
import structlog

from relayguard.dns.providers import ProviderTable, provider_key

log = structlog.get_logger("relayguard.dns")

# TTLs are clamped: a 0-second TTL must not make every message look up again, and a
# week-long one must not keep a domain on a provider it has left.
MIN_TTL = 60.0
MAX_TTL = 86400.0
NEGATIVE_TTL = 300.0  # when the negative answer carries no SOA
MAX_NEGATIVE_TTL = 3600.0
FAILURE_TTL = 60.0  # a timeout or SERVFAIL: the domain is its own key for a minute


def make_resolver(
    nameservers: Sequence[tuple[str, int]], timeout: float
) -> dns.asyncresolver.Resolver:
    """The configured nameservers ("ip" or "ip:port"), or the system's (/etc/resolv.conf).
    Without a usable system configuration, dnspython's NoResolverConfiguration reaches
    the caller, which turns provider keys off and says so."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, port=p) for h, p in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None  # answers are cached here, as keys, by their TTL
    return resolver


def _clamp(ttl: float, low: float, high: float) -> float:
    return max(low, min(high, ttl))


def negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 section 5: a negative answer lives for min(SOA TTL, SOA MINIMUM)."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                minimum = float(rrset[0].minimum)
                return _clamp(min(float(rrset.ttl), minimum), MIN_TTL, MAX_NEGATIVE_TTL)
    return NEGATIVE_TTL


@dataclass(frozen=True, slots=True)
class MxAnswer:
    """What DNS said of a domain's mail hosts. `hosts` empty: no mail host known
    (no such domain, or no MX and no address); `failed`: no answer (timeout,
    SERVFAIL), said in `error`."""

    hosts: tuple[tuple[int, str], ...]
    ttl: float
    failed: bool = False
    error: str = ""


async def lookup_mx(resolver: dns.asyncresolver.Resolver, domain: str) -> MxAnswer:
    """A domain's MX hosts; a domain without MX records is its own mail host (the
    implicit MX of RFC 5321 section 5.1), so its name is matched against the table."""
    try:
        answer = await resolver.resolve(domain, "MX", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as exc:
        # The responses by name, as dnspython keeps them (its accessor is untyped).
        responses: dict[object, dns.message.Message] = exc.kwargs.get("responses") or {}
        return MxAnswer((), negative_ttl(next(iter(responses.values()), None)))
    except (dns.exception.DNSException, OSError) as exc:
        return MxAnswer((), FAILURE_TTL, failed=True, error=type(exc).__name__)
    if answer.rrset is None:
        return MxAnswer(((0, domain),), negative_ttl(answer.response))
    hosts = tuple(
        (int(rd.preference), rd.exchange.to_text(omit_final_dot=True)) for rd in answer.rrset
    )
    # "MX 0 ." (RFC 7505): the domain takes no mail; it is its own key.
    hosts = tuple((pref, host) for pref, host in hosts if host not in ("", "."))
    return MxAnswer(hosts, _clamp(float(answer.rrset.ttl), MIN_TTL, MAX_TTL))


class KeyCache:
    """Domain -> provider key (None: the domain is its own key) until a time; least
    recently used first out beyond `size`. Pure: `now` comes in."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, domain: str, now: float) -> tuple[bool, str | None]:
        """(known, key): known is False when the domain is absent or expired."""
        entry = self._entries.get(domain)
        if entry is None:
            return False, None
        if entry[1] <= now:
            del self._entries[domain]
            return False, None
        self._entries.move_to_end(domain)
        return True, entry[0]

    def put(self, domain: str, key: str | None, until: float) -> None:
        self._entries[domain] = (key, until)
        self._entries.move_to_end(domain)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class ProviderKeys:
    """The provider key of each recipient domain, as the queue manager needs it."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        table: ProviderTable,
        now: Callable[[], float],
        *,
        cache_size: int = 100_000,
        timeout: float = 2.0,
    ) -> None:
        self.resolver = resolver
        self.table = table
        self.now = now
        self.timeout = timeout
        self.cache = KeyCache(cache_size)
        self._pending: dict[str, asyncio.Task[str | None]] = {}
        self.lookups = 0
        self.failures = 0

    def cached(self, domain: str) -> str | None:
        """The key known now, without asking DNS (None: unknown or the domain's own)."""
        return self.cache.get(domain.lower(), self.now())[1]

    async def keys(self, domains: Iterable[str]) -> dict[str, str]:
        """domain -> provider key for those of `domains` at a known provider. Waits at
        most `timeout` (plus scheduling) for lookups not in the cache."""
        wanted = {d.lower() for d in domains if d}
        out: dict[str, str] = {}
        missing: list[str] = []
        now = self.now()
        for domain in wanted:
            known, key = self.cache.get(domain, now)
            if not known:
                missing.append(domain)
            elif key is not None:
                out[domain] = key
        if missing:
            found = await asyncio.gather(*(self._lookup(d) for d in missing))
            out.update({d: k for d, k in zip(missing, found, strict=True) if k is not None})
        return out

    def _lookup(self, domain: str) -> asyncio.Task[str | None]:
        task = self._pending.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._resolve(domain))
            self._pending[domain] = task
            task.add_done_callback(lambda _t: self._pending.pop(domain, None))
        return task

    async def _resolve(self, domain: str) -> str | None:
        self.lookups += 1
        answer = MxAnswer((), FAILURE_TTL, failed=True, error="timeout")
        # dnspython's lifetime bounds the query; this bounds everything else too.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout + 0.5):
                answer = await lookup_mx(self.resolver, domain)
        provider = self.table.provider_of(answer.hosts)
        key = provider_key(provider) if provider is not None else None
        if answer.failed:
            self.failures += 1
            log.info(
                "mx_lookup_failed",
                domain=domain,
                error=answer.error,
                reason="the domain is its own key for now; its mail is not held up",
            )
        self.cache.put(domain, key, self.now() + answer.ttl)
        return key
