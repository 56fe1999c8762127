"""Reading DNSBL answers, query names and standing changes: the pure part of
dns/reputation.py; and how the route table avoids a listed route."""

from __future__ import annotations

import pytest

from relayguard.dns.reputation import (
    DEFAULT_ERRORS,
    AnswerRange,
    Verdict,
    Zone,
    ZoneCheck,
    change,
    egresses_of,
    query_name,
    read_answers,
)
from relayguard.model import Suspension
from relayguard.queue.scheduler import RouteTable

ZEN = Zone("zen.spamhaus.org", listed=(AnswerRange.parse("127.0.0.2-127.0.0.11"),))


def test_query_names_follow_rfc_5782() -> None:
    # RFC 5782 section 2.1 and the IPv6 example of section 2.4.
    assert query_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    assert query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com.") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )


def test_answer_ranges() -> None:
    one = AnswerRange.parse("127.0.0.2")
    span = AnswerRange.parse("127.0.0.2 - 127.0.0.11")
    net = AnswerRange.parse("127.0.0.0/24")
    assert "127.0.0.2" in one
    assert "127.0.0.3" not in one
    assert "127.0.0.11" in span
    assert "127.0.0.12" not in span
    assert "127.0.0.255" in net
    assert "127.0.1.0" not in net
    assert "not an address" not in net
    for bad in ("127.0.0.11-127.0.0.2", "127.0.0", "::1", ""):
        with pytest.raises(ValueError, match=r".+"):
            AnswerRange.parse(bad)


@pytest.mark.parametrize(
    ("answers", "verdict", "why"),
    [
        ((), Verdict.CLEAN, ""),
        (("127.0.0.2",), Verdict.LISTED, ""),  # SBL
        (("127.0.0.4", "127.0.0.10"), Verdict.LISTED, ""),  # XBL and PBL together
        # Spamhaus refusing the query is never a listing, whatever else is answered.
        (("127.255.255.254",), Verdict.FAILED, "public or open resolver"),
        (("127.255.255.255",), Verdict.FAILED, "too many queries"),
        (("127.255.255.252",), Verdict.FAILED, "mistyped"),
        (("127.0.0.2", "127.255.255.254"), Verdict.FAILED, "refused the query"),
        # An answer the zone's configuration does not know: not acted on.
        (("127.0.0.200",), Verdict.FAILED, "neither a listing nor an error"),
    ],
)
def test_reading_answers(answers: tuple[str, ...], verdict: Verdict, why: str) -> None:
    got, reason = read_answers(ZEN, answers)
    assert got is verdict
    assert why in reason


def test_default_answers_take_any_127_listing_but_the_refusals() -> None:
    default = Zone("bl.example")
    assert default.errors == DEFAULT_ERRORS
    assert read_answers(default, ["127.0.0.2"])[0] is Verdict.LISTED
    assert read_answers(default, ["127.1.2.3"])[0] is Verdict.LISTED
    assert read_answers(default, ["127.0.0.1"])[0] is Verdict.FAILED
    assert read_answers(default, ["127.255.255.254"])[0] is Verdict.FAILED
    assert read_answers(default, ["10.0.0.2"])[0] is Verdict.FAILED


def check(verdict: Verdict) -> ZoneCheck:
    return ZoneCheck("A", "192.0.2.10", "bl.example", verdict, 0.0)


def test_what_changes_a_routes_standing() -> None:
    listed, clean, failed = check(Verdict.LISTED), check(Verdict.CLEAN), check(Verdict.FAILED)
    assert change(None, listed) == "listed"
    assert change(clean, listed) == "listed"
    assert change(listed, listed) is None
    assert change(listed, clean) == "delisted"
    assert change(None, clean) is None  # the first clean result is not news
    assert change(clean, clean) is None
    assert change(listed, failed) is None  # a failed check leaves the listing standing
    assert change(None, failed) is None


def test_routes_without_an_address_are_named() -> None:
    egresses, unchecked = egresses_of([("A", "192.0.2.10"), ("B", None)])
    assert [(e.route, e.address) for e in egresses] == [("A", "192.0.2.10")]
    assert unchecked == ["B"]


def test_mail_avoids_a_listed_route_while_another_may_take_it() -> None:
    t = RouteTable(routes=("A", "B", "C"))
    t.avoided["A"] = frozenset({"bl.example"})
    assert t.choose("d.example", 0.0) == "B"
    assert t.choose("d.example", 0.0, prefer=("A",)) == "B"  # a preference does not override
    t.suspend(Suspension("B", "d.example", 100.0, "421", "r"))
    assert t.choose("d.example", 0.0) == "C"
    t.avoided["C"] = frozenset({"bl.example"})
    # Every usable route listed: the listed one rather than holding the mail.
    assert t.choose("d.example", 0.0) == "A"
    assert t.choose("d.example", 0.0, exclude=("A",)) == "C"
    # A clean route at its connection cap is waited for, not spilled from.
    t.max_connections["B"] = 1
    del t.suspensions[("B", "d.example")]
    assert not isinstance(t.grant("d.example", 0.0), str)
    assert t.grant("e.example", 0.0) == "B"


def test_a_delisting_lifts_only_the_blocklist_suspensions() -> None:
    t = RouteTable(routes=("A", "B"))
    t.suspend(Suspension("A", "provider:microsoft", 100.0, "554", "rbl", category="rbl_block"))
    t.suspend(Suspension("A", "d.example", 100.0, "421", "busy", category="throttle"))
    t.suspend(Suspension("B", "e.example", 100.0, "554", "rbl", category="rbl_block"))
    assert t.resume("A", category="rbl_block") == ["provider:microsoft"]
    assert set(t.suspensions) == {("A", "d.example"), ("B", "e.example")}
