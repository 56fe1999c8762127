"""The provider table, the key cache and the negative TTL: pure parts of dns/."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from relayguard.dns.mx import (
    MAX_NEGATIVE_TTL,
    MIN_TTL,
    NEGATIVE_TTL,
    KeyCache,
    negative_ttl,
)
from relayguard.dns.providers import (
    SHIPPED_PROVIDERS,
    ProviderTable,
    ProviderTableError,
    check_pattern,
    describe_key,
    provider_key,
)

SHIPPED = ProviderTable.build()


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        # MX hosts as the providers publish them.
        ("contoso-com.mail.protection.outlook.com", "microsoft"),
        ("contoso-com.l-v1.mx.microsoft", "microsoft"),
        ("hotmail-com.olc.protection.outlook.com.", "outlook"),
        ("ASPMX.L.GOOGLE.COM", "google"),
        ("alt1.aspmx.l.google.com", "google"),
        ("smtp.google.com", "google"),
        ("aspmx2.googlemail.com", "google"),
        ("mta5.am0.yahoodns.net", "yahoo"),
        ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
        ("mx01.mail.icloud.com", "apple"),
        ("mx0a-00123401.pphosted.com", "proofpoint"),
        ("mx1-us1.ppe-hosted.com", "proofpoint"),
        ("us-smtp-inbound-1.mimecast.com", "mimecast"),
        ("mx1.contoso.iphmx.com", "cisco"),
        ("d123456a.ess.barracudanetworks.com", "barracuda"),
        ("mx00.emig.gmx.net", "gmx-webde"),
        ("mx-ha03.web.de", "gmx-webde"),
        ("in1-smtp.messagingengine.com", "fastmail"),
        ("mx.zoho.eu", "zoho"),
        ("mx1.qq.com", "tencent"),
        ("163mx01.mxmail.netease.com", "netease"),
    ],
)
def test_shipped_table_knows_the_big_receivers(host: str, provider: str) -> None:
    assert SHIPPED.provider_of_host(host) == provider


@pytest.mark.parametrize(
    "host",
    [
        "mail.protection.outlook.com.evil.example",  # the suffix must end the name
        "xmail.protection.outlook.com",  # ...and start at a label boundary
        "google.com",  # "*.google.com" is below it, not the name itself
        "mx.example.net",
        "",
    ],
)
def test_hosts_not_at_a_known_provider(host: str) -> None:
    assert SHIPPED.provider_of_host(host) is None


def test_the_most_preferred_mx_decides() -> None:
    # A filter in front of Microsoft 365 receives the mail, and refuses our address.
    mx = [(20, "contoso-com.mail.protection.outlook.com"), (10, "mx0a-1.pphosted.com")]
    assert SHIPPED.provider_of(mx) == "proofpoint"
    # Among equally preferred hosts, one at a known provider is enough.
    assert SHIPPED.provider_of([(10, "mx.own.example"), (10, "mx1.qq.com")]) == "tencent"
    # A known provider only as a backup does not make the domain its customer.
    assert SHIPPED.provider_of([(10, "mx.own.example"), (20, "aspmx.l.google.com")]) is None
    assert SHIPPED.provider_of([]) is None


def test_overrides_replace_add_and_remove() -> None:
    table = ProviderTable.build(
        {
            "acme": ["*.mx.acme-hosting.example", "smtp-in.acme.example"],
            "google": [],  # the operator does not want Google grouped
            "microsoft": ["*.mail.protection.outlook.com"],  # replaced: no .mx.microsoft
        }
    )
    assert table.provider_of_host("in3.mx.acme-hosting.example") == "acme"
    assert table.provider_of_host("smtp-in.acme.example") == "acme"
    assert table.provider_of_host("aspmx.l.google.com") is None
    assert table.provider_of_host("c-com.mail.protection.outlook.com") == "microsoft"
    assert table.provider_of_host("c-com.l-v1.mx.microsoft") is None
    assert table.provider_of_host("mx1.qq.com") == "tencent"  # the rest is shipped


def test_the_longest_suffix_wins() -> None:
    table = ProviderTable.build(
        {"outer": ["*.hosting.example"], "inner": ["*.eu.hosting.example"]}, shipped=False
    )
    assert table.provider_of_host("mx.eu.hosting.example") == "inner"
    assert table.provider_of_host("mx.us.hosting.example") == "outer"


@pytest.mark.parametrize("pattern", ["*.com", "com", "*", "*.*.example.net", "a..example", ""])
def test_unusable_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ProviderTableError):
        check_pattern(pattern)


def test_every_shipped_pattern_is_usable() -> None:
    for patterns in SHIPPED_PROVIDERS.values():
        for p in patterns:
            assert check_pattern(p) == p


def test_keys_in_the_operators_words() -> None:
    assert provider_key("microsoft") == "provider:microsoft"
    assert describe_key("provider:microsoft") == (
        "provider:microsoft (every domain whose MX is at microsoft)"
    )
    assert describe_key("*") == "every destination"
    assert describe_key("contoso.example") == "contoso.example"


def test_key_cache_expires_by_ttl_and_drops_the_least_recently_used() -> None:
    cache = KeyCache(2)
    cache.put("a.example", "provider:google", until=100.0)
    cache.put("b.example", None, until=50.0)  # known: its own key
    assert cache.get("b.example", 10.0) == (True, None)
    assert cache.get("a.example", 10.0) == (True, "provider:google")  # a is now recent
    cache.put("c.example", "provider:yahoo", until=100.0)  # b goes
    assert cache.get("b.example", 10.0) == (False, None)
    assert len(cache) == 2
    assert cache.get("a.example", 100.0) == (False, None)  # expired at its time
    assert len(cache) == 1


def _negative(soa_ttl: int, minimum: int) -> dns.message.Message:
    msg = dns.message.make_response(dns.message.make_query("nx.example.", "MX"))
    msg.authority.append(
        dns.rrset.from_text(
            "example.", soa_ttl, "IN", "SOA", f"ns.example. host.example. 1 2 3 4 {minimum}"
        )
    )
    return msg


def test_negative_answers_live_for_the_soa_minimum_clamped() -> None:
    assert negative_ttl(_negative(900, 600)) == 600.0  # RFC 2308: min(TTL, MINIMUM)
    assert negative_ttl(_negative(300, 86400)) == 300.0
    assert negative_ttl(_negative(5, 0)) == MIN_TTL
    assert negative_ttl(_negative(86400, 86400)) == MAX_NEGATIVE_TTL
    assert negative_ttl(None) == NEGATIVE_TTL
