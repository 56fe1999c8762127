"""Replies as upstream servers send them, and the dict round trips the spool relies on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import (
    Action,
    Attempt,
    Decision,
    Envelope,
    Phase,
    Recipient,
    RecipientState,
    Reply,
    Suspension,
    Throttle,
    domain_of,
    network_reply,
    split_enhanced,
)

GMAIL_RATE = (
    "4.7.28 [192.0.2.1      15] Our system has detected an unusual rate of\n"
    "4.7.28 unsolicited mail originating from your IP address. To protect our\n"
    "4.7.28 users from spam, mail sent from your IP address has been temporarily\n"
    "4.7.28 rate limited. For more information, go to\n"
    "4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
    "4.7.28 review our Bulk Email Senders Guidelines. abc123si.77 - gsmtp"
)


def test_gmail_multiline_reply():
    r = Reply.parse(421, GMAIL_RATE, Phase.AFTER_DATA, "gmail-smtp-in.l.google.com")
    assert r.code == 421
    assert r.enhanced == "4.7.28"
    assert "4.7.28" not in r.text
    assert r.text.startswith("[192.0.2.1      15] Our system has detected an unusual rate of ")
    assert "temporarily rate limited." in r.text
    assert "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review" in r.text
    assert r.text.endswith("abc123si.77 - gsmtp")
    assert "\n" not in r.text
    assert r.remote_host == "gmail-smtp-in.l.google.com"
    assert r.phase is Phase.AFTER_DATA
    assert not r.synthetic
    assert r.status() == "4.7.28"
    assert r.is_transient
    assert not r.is_permanent
    assert not r.is_success
    assert r.render() == f"421 4.7.28 {r.text}"


def test_gmail_user_unknown_with_crlf_and_blank_lines():
    msg = (
        "5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
        "5.1.1 double-checking the recipient's email address for typos or\r\n"
        "\r\n"
        "5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser x1 - gsmtp"
    )
    r = Reply.parse(550, msg, Phase.RCPT)
    assert r.enhanced == "5.1.1"
    assert r.text == (
        "The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or "
        "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser x1 - gsmtp"
    )
    assert r.is_permanent
    assert r.render() == "550 5.1.1 " + r.text


def test_enhanced_code_only_on_first_line():
    r = Reply.parse(554, "5.7.1 Service unavailable;\nClient host blocked using zen", Phase.RCPT)
    assert r.enhanced == "5.7.1"
    assert r.text == "Service unavailable; Client host blocked using zen"


@pytest.mark.parametrize(
    ("code", "message", "status", "text"),
    [
        (
            421,
            "Service not available, closing channel",
            "4.0.0",
            "Service not available, closing channel",
        ),
        (550, "Mailbox unavailable\nGo away", "5.0.0", "Mailbox unavailable Go away"),
        (250, "Ok", "2.0.0", "Ok"),
        (451, "", "4.0.0", ""),
        (550, "5.7.1: not a code", "5.0.0", "5.7.1: not a code"),
        (550, "5.7 blocked", "5.0.0", "5.7 blocked"),
        (550, "5.7.1000 odd", "5.0.0", "5.7.1000 odd"),
        (550, "6.1.1 no such class", "5.0.0", "6.1.1 no such class"),
    ],
)
def test_replies_without_enhanced_codes(code, message, status, text):
    r = Reply.parse(code, message, Phase.MAIL)
    assert r.enhanced is None
    assert r.status() == status
    assert r.text == text
    assert r.render() == (f"{code} {text}" if text else str(code))


def test_render_forms():
    assert Reply(550, "5.7.1", "blocked", Phase.RCPT).render() == "550 5.7.1 blocked"
    assert Reply(550, "5.7.1", "", Phase.RCPT).render() == "550 5.7.1"
    assert Reply(421, None, "", Phase.CONNECT).render() == "421"
    assert Reply.parse(550, "5.7.1", Phase.RCPT).render() == "550 5.7.1"
    assert Reply.parse(550, "  5.7.1   spaced   ", Phase.RCPT).render() == "550 5.7.1 spaced"


@pytest.mark.parametrize(
    ("code", "success", "transient", "permanent"),
    [
        (250, True, False, False),
        (354, True, False, False),
        (421, False, True, False),
        (499, False, True, False),
        (500, False, False, True),
        (554, False, False, True),
    ],
)
def test_reply_classes(code, success, transient, permanent):
    r = Reply(code, None, "", Phase.DATA)
    assert (r.is_success, r.is_transient, r.is_permanent) == (success, transient, permanent)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.7.1 blocked", ("5.7.1", "blocked")),
        ("  2.0.0   Ok  ", ("2.0.0", "Ok")),
        ("4.7.28", ("4.7.28", "")),
        ("4.7.0\tgreylisted", ("4.7.0", "greylisted")),
        ("5.123.456 x", ("5.123.456", "x")),
        ("3.0.0 no", (None, "3.0.0 no")),
        ("blocked 5.7.1", (None, "blocked 5.7.1")),
        ("5.7.1, blocked", (None, "5.7.1, blocked")),
        ("", (None, "")),
    ],
)
def test_split_enhanced(text, expected):
    assert split_enhanced(text) == expected


def test_network_reply_is_synthetic_421():
    r = network_reply("4.4.1", "connection refused", Phase.CONNECT, "10.0.0.1")
    assert (r.code, r.enhanced, r.text, r.synthetic, r.remote_host) == (
        421,
        "4.4.1",
        "connection refused",
        True,
        "10.0.0.1",
    )


def test_domain_of():
    assert domain_of("User@Example.COM") == "example.com"
    assert domain_of("postmaster") == ""
    assert domain_of('"a@b"@c.example') == "c.example"
    assert domain_of("") == ""


# -- round trips -------------------------------------------------------------------

REPLY = Reply(452, "4.2.2", "mailbox full", Phase.RCPT, "mx.example", synthetic=False)
SYNTH = network_reply("4.4.2", "timeout", Phase.DATA, "mx2.example")


def through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


@pytest.mark.parametrize(
    "recipient",
    [
        Recipient("a@example.com"),
        Recipient(
            "b@example.com",
            RecipientState.FAILED,
            orcpt="rfc822;b+2B@example.com",
            notify=("FAILURE", "DELAY"),
            last_reply=REPLY,
            failed_rule="mailbox-full",
            delay_warned=True,
        ),
        Recipient(
            "c@example.com",
            RecipientState.DELIVERED,
            notify=("NEVER",),
            last_reply=Reply(250, None, "", Phase.AFTER_DATA),
            delivered_via="backup",
        ),
        Recipient("\u00fcser@ex\u00e4mple.de", last_reply=SYNTH),
    ],
)
def test_recipient_round_trip(recipient):
    assert Recipient.from_dict(recipient.to_dict()) == recipient
    assert Recipient.from_dict(through_json(recipient.to_dict())) == recipient


def test_recipient_from_minimal_dict():
    r = Recipient.from_dict({"address": "x@y"})
    assert r == Recipient("x@y")
    assert r.domain == "y"


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope("", ()),
        Envelope(
            sender="sender@example.org",
            recipients=(
                Recipient("a@one.example"),
                Recipient("b@two.example", RecipientState.DELIVERED, last_reply=REPLY),
            ),
            mail_options=("BODY=8BITMIME", "SMTPUTF8"),
            ret="FULL",
            envid="QQ+2B314",
            client_address="::1",
            client_helo="client.example",
            pinned_routes=("ndr", "primary"),
        ),
    ],
)
def test_envelope_round_trip(envelope):
    assert Envelope.from_dict(envelope.to_dict()) == envelope
    assert Envelope.from_dict(through_json(envelope.to_dict())) == envelope


def test_envelope_pending_and_with_recipients():
    env = Envelope(
        "s@x",
        (
            Recipient("a@x"),
            Recipient("b@x", RecipientState.DELIVERED),
            Recipient("c@x", RecipientState.FAILED),
            Recipient("d@x"),
        ),
    )
    assert [r.address for r in env.pending()] == ["a@x", "d@x"]
    changed = env.with_recipients((Recipient("z@x"),))
    assert changed.sender == "s@x"
    assert [r.address for r in changed.recipients] == ["z@x"]
    assert len(env.recipients) == 4  # frozen original untouched


@pytest.mark.parametrize(
    "attempt",
    [
        Attempt(1_700_000_000.123456, "primary", ("a@x", "b@x"), REPLY, "defer", "greylist", 0.75),
        Attempt(0.1 + 0.2, "backup", (), SYNTH, "reroute"),
        Attempt(
            1e-9,
            "r",
            ("c@y",),
            Reply(250, "2.0.0", "ok", Phase.AFTER_DATA),
            "delivered",
            duration=1 / 3,
        ),
    ],
)
def test_attempt_round_trip(attempt):
    assert Attempt.from_dict(attempt.to_dict()) == attempt
    assert Attempt.from_dict(through_json(attempt.to_dict())) == attempt


reply_st = st.builds(
    Reply,
    code=st.integers(200, 599),
    enhanced=st.none() | st.from_regex(r"\A[245]\.\d{1,3}\.\d{1,3}\Z"),
    text=st.text(max_size=30),
    phase=st.sampled_from(list(Phase)),
    remote_host=st.text(max_size=10),
    synthetic=st.booleans(),
)
recipient_st = st.builds(
    Recipient,
    address=st.text(min_size=1, max_size=20),
    state=st.sampled_from(list(RecipientState)),
    orcpt=st.none() | st.text(max_size=20),
    notify=st.lists(st.sampled_from(["NEVER", "SUCCESS", "FAILURE", "DELAY"]), max_size=3).map(
        tuple
    ),
    last_reply=st.none() | reply_st,
    delivered_via=st.none() | st.text(max_size=8),
    failed_rule=st.none() | st.text(max_size=8),
    delay_warned=st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=20),
    st.lists(recipient_st, max_size=4).map(tuple),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),
    st.none() | st.sampled_from(["FULL", "HDRS"]),
    st.none() | st.text(max_size=10),
    st.lists(st.text(max_size=8), max_size=2).map(tuple),
)
def test_envelope_round_trip_property(sender, recipients, options, ret, envid, pinned):
    env = Envelope(sender, recipients, options, ret, envid, "127.0.0.1", "helo", pinned)
    assert Envelope.from_dict(through_json(env.to_dict())) == env


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0, 4e9, allow_nan=False),
    st.text(max_size=10),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),
    reply_st,
    st.sampled_from(["delivered", *[a.value for a in Action]]),
    st.text(max_size=10),
    st.floats(0, 1e4, allow_nan=False),
)
def test_attempt_round_trip_property(at, route, rcpts, reply, action, rule, duration):
    a = Attempt(at, route, rcpts, reply, action, rule, duration)
    assert Attempt.from_dict(through_json(a.to_dict())) == a


def test_decision_to_dict_names_everything():
    s = Suspension("primary", "*", 100.0, "421 4.7.0 busy", "busy")
    t = Throttle("primary", "gmail.com", 2, 200.0, "slow-down")
    d = Decision(
        Action.DEFER,
        "busy",
        REPLY,
        retry_at=50.0,
        reroute_to=("backup",),
        suspend=s,
        throttle=t,
        reason="busy",
    )
    out = through_json(d.to_dict())
    assert out["action"] == "defer"
    assert out["rule"] == "busy"
    assert out["retry_at"] == 50.0
    assert out["reroute_to"] == ["backup"]
    assert out["suspend"] == {
        "route": "primary",
        "destination": "*",
        "until": 100.0,
        "reason": "421 4.7.0 busy",
        "rule": "busy",
        "provisional": False,
        "category": "",
    }
    assert out["throttle"] == {
        "route": "primary",
        "destination": "gmail.com",
        "max_connections": 2,
        "until": 200.0,
        "rule": "slow-down",
    }
    assert Decision(Action.BOUNCE, "x", REPLY).to_dict()["suspend"] is None
