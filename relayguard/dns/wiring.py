"""The DNS pieces as the configuration sets them up: the edge between config.py and
dns/ (which config.py imports for its value types, so dns/ itself never imports it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import dns.resolver
import structlog

from relayguard.dns.mx import ProviderKeys, make_resolver
from relayguard.dns.providers import ProviderTable
from relayguard.dns.reputation import OnChange, ReputationMonitor, egresses_of

if TYPE_CHECKING:
    from relayguard.clock import Clock
    from relayguard.config import DnsSettings, Settings

log = structlog.get_logger("relayguard.dns")


def provider_keys_for(settings: DnsSettings, now: Callable[[], float]) -> ProviderKeys | None:
    """The configured lookups, or None when they are off or DNS cannot be configured
    (then every domain is its own key, and the log says why)."""
    if not settings.provider_keys:
        return None
    try:
        resolver = make_resolver(settings.nameservers, settings.timeout)
    except dns.resolver.NoResolverConfiguration as exc:
        log.warning(
            "provider_keys_off",
            error=str(exc),
            reason="no nameservers in [dns] and none in the system's configuration: "
            "every recipient domain is its own key",
        )
        return None
    table = ProviderTable.build(dict(settings.providers))
    return ProviderKeys(
        resolver, table, now, cache_size=settings.cache_size, timeout=settings.timeout
    )


def monitor_for(
    settings: Settings, clock: Clock, on_change: OnChange | None = None
) -> ReputationMonitor | None:
    """The configured checks, or None when no zone is configured. Routes without an
    address to check are named in the log once."""
    rep = settings.reputation
    if not rep.zones:
        return None
    egresses, unchecked = egresses_of((r.name, r.egress_address) for r in settings.routes)
    if unchecked:
        log.warning(
            "reputation_unchecked",
            routes=unchecked,
            reason="no public_address or source_address: the address receivers see is not known",
        )
    resolver = make_resolver(settings.dns.nameservers, settings.dns.timeout)
    monitor = ReputationMonitor(egresses, rep.zones, resolver, clock, rep.interval)
    if on_change is not None:
        monitor.on_change = on_change
    return monitor
