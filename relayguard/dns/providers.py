"""Which provider receives a domain's mail, from the names of its MX hosts. Pure.

A third-party blocklist listing our address, or a provider's own block or rate
limit, applies at every domain whose MX is that provider: Microsoft answers for
all of its hosted tenants alike. So relayguard keys suspensions and throttles of
egress problems by provider ("provider:microsoft"), and a domain whose provider
is not known is its own key.

The shipped table follows KumoMTA's shaping rules, which group MX hosts into
provider edge-server groups by suffix (KumoCorp/kumomta@3ebc1e85
assets/policy-extras/shaping.toml and assets/community/shaping.toml), and the
providers' own MX documentation for the rest (named beside each entry). An
operator's `[dns.providers]` entries replace a shipped provider's patterns or add
providers; an empty list removes one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PROVIDER_PREFIX = "provider:"

# provider -> MX host patterns: "*.suffix" (any host below it) or an exact host name.
SHIPPED_PROVIDERS: Mapping[str, tuple[str, ...]] = {
    # Microsoft 365 / Exchange Online Protection tenants (<tenant>.mail.protection.
    # outlook.com, and the DANE-enabled <tenant>.<x>.mx.microsoft), KumoMTA
    # "office365" and "office365-dane"; learn.microsoft.com, "Set up your domain".
    "microsoft": ("*.mail.protection.outlook.com", "*.mx.microsoft"),
    # Outlook.com / Hotmail consumer mailboxes: another edge group (KumoMTA "outlook").
    "outlook": ("*.olc.protection.outlook.com",),
    # Gmail and Google Workspace (aspmx.l.google.com, smtp.google.com,
    # gmail-smtp-in.l.google.com, alt1.aspmx.l.google.com, aspmx2.googlemail.com).
    "google": ("*.google.com", "*.googlemail.com"),
    # Yahoo and AOL (mta5.am0.yahoodns.net, mx-aol.mail.gm0.yahoodns.net).
    "yahoo": ("*.yahoodns.net",),
    "apple": ("*.icloud.com",),  # iCloud (mx01.mail.icloud.com)
    "mimecast": ("*.mimecast.com", "*.mimecast.co.za", "*.mimecast-offshore.com"),
    "orange": ("*.orange.fr",),
    "gmx-webde": ("*.gmx.net", "*.web.de"),  # United Internet (KumoMTA "gmx.net_web.de")
    "barracuda": ("*.barracudanetworks.com",),  # Barracuda Email Security Service
    "netvigator": ("*.netvigator.com",),
    "kpn": ("*.kpnmail.nl",),
    "tencent": ("*.qq.com",),  # QQ mail and Tencent Exmail (mx1.qq.com, mxbiz1.qq.com)
    "netease": ("*.netease.com",),  # 163.com, 126.com (163mx01.mxmail.netease.com)
    # Proofpoint: enterprise (mx0a-001234.pphosted.com) and Essentials
    # (mx1-us1.ppe-hosted.com), per Proofpoint's MX set-up guides.
    "proofpoint": ("*.pphosted.com", "*.ppe-hosted.com"),
    # Cisco Secure Email Cloud Gateway (IronPort), MX "mx1.<customer>.iphmx.com".
    "cisco": ("*.iphmx.com",),
    "zoho": ("*.zoho.com", "*.zoho.eu", "*.zoho.in", "*.zoho.com.au"),  # mx.zoho.com
    "fastmail": ("*.messagingengine.com",),  # in1-smtp.messagingengine.com
    "godaddy": ("*.secureserver.net",),  # mailstore1.secureserver.net
    "yandex": ("*.yandex.net", "*.yandex.ru"),  # mx.yandex.net
    "mailru": ("*.mail.ru",),  # mxs.mail.ru
    "comcast": ("*.comcast.net",),  # mx1a1.comcast.net
}


class ProviderTableError(ValueError):
    """A provider pattern that cannot be used (named by the caller's config reader)."""


def normalise_host(name: str) -> str:
    """DNS names compare without case and without the root's trailing dot."""
    return name.strip().rstrip(".").lower()


def check_pattern(pattern: str) -> str:
    """A usable pattern, normalised; ProviderTableError says what is expected."""
    p = normalise_host(pattern)
    body = p.removeprefix("*.")
    labels = body.split(".")
    # A suffix of one label would take a whole TLD.
    if not body or "*" in body or any(not label for label in labels) or len(labels) < 2:
        raise ProviderTableError(
            "an MX host name ('mx.example.net') or a suffix of two labels or more ('*.example.net')"
        )
    return p


@dataclass(frozen=True, slots=True)
class ProviderTable:
    """MX host patterns by provider, looked up by the longest matching suffix."""

    exact: Mapping[str, str]  # host -> provider
    suffixes: Mapping[str, str]  # ".suffix" -> provider

    @classmethod
    def build(
        cls, overrides: Mapping[str, Sequence[str]] | None = None, *, shipped: bool = True
    ) -> ProviderTable:
        table: dict[str, tuple[str, ...]] = dict(SHIPPED_PROVIDERS) if shipped else {}
        table.update({name: tuple(patterns) for name, patterns in (overrides or {}).items()})
        exact: dict[str, str] = {}
        suffixes: dict[str, str] = {}
        for provider, patterns in table.items():
            for raw in patterns:
                p = check_pattern(raw)
                if p.startswith("*."):
                    suffixes[p[1:]] = provider
                else:
                    exact[p] = provider
        return cls(exact, suffixes)

    def provider_of_host(self, host: str) -> str | None:
        """The provider whose pattern matches this MX host, the most specific first."""
        h = normalise_host(host)
        if h in self.exact:
            return self.exact[h]
        # Every suffix of the name at a label boundary, longest first.
        dot = h.find(".")
        while dot != -1:
            provider = self.suffixes.get(h[dot:])
            if provider is not None:
                return provider
            dot = h.find(".", dot + 1)
        return None

    def provider_of(self, mx: Iterable[tuple[int, str]]) -> str | None:
        """The provider of a domain from its MX records (preference, host): that of the
        most preferred hosts. A domain whose primary MX is a filtering service
        (Proofpoint, Mimecast) in front of Microsoft 365 is the filter's: the filter
        is what receives the mail, and what refuses our address."""
        records = sorted((pref, normalise_host(host)) for pref, host in mx)
        if not records:
            return None
        best = records[0][0]
        for pref, host in records:
            if pref != best:
                break
            provider = self.provider_of_host(host)
            if provider is not None:
                return provider
        return None


def provider_key(provider: str) -> str:
    """The destination key of a provider, as suspensions and `routes` show it."""
    return PROVIDER_PREFIX + provider


def describe_key(key: str) -> str:
    """A destination key in the operator's words, for `explain` and `routes`."""
    if key == "*":
        return "every destination"
    if key.startswith(PROVIDER_PREFIX):
        return f"{key} (every domain whose MX is at {key.removeprefix(PROVIDER_PREFIX)})"
    return key
