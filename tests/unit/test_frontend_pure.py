"""The front end's pure helpers: enhanced codes, DATA unstuffing and checks, connection caps."""

from __future__ import annotations

import pytest

from relayguard.smtp.frontend import (
    ConnectionLimits,
    DataError,
    unstuff_and_check,
    with_enhanced_code,
)

# -- with_enhanced_code -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"250 OK", b"250 2.0.0 OK"),
        (b"250 Ok: queued as ABC", b"250 2.0.0 Ok: queued as ABC"),
        (b"250-SIZE 1000", b"250-2.0.0 SIZE 1000"),
        (b"500 Error: bad syntax", b"500 5.5.2 Error: bad syntax"),
        (b"501 Syntax: NOOP [ignored]", b"501 5.5.4 Syntax: NOOP [ignored]"),
        (b"503 Error: send HELO first", b"503 5.5.1 Error: send HELO first"),
        (b"550 Requested action not taken", b"550 5.0.0 Requested action not taken"),
        (b"552 Error: Too much mail data", b"552 5.3.4 Error: Too much mail data"),
        (b"554 Transaction failed", b"554 5.0.0 Transaction failed"),
        (b"221 Bye", b"221 2.0.0 Bye"),
        (b"421 Too busy", b"421 4.3.0 Too busy"),
        (b"452   lots of space", b"452 4.3.1 lots of space"),
        (
            b"555 MAIL FROM parameters not recognized",
            b"555 5.5.4 MAIL FROM parameters not recognized",
        ),
    ],
)
def test_adds_enhanced_codes(reply, expected):
    assert with_enhanced_code(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        b"220 relay.example ESMTP relayguard",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"334 VXNlcm5hbWU6",
        b"250 2.1.0 Ok",
        b"250-2.0.0 first line",
        b"550 5.7.1 <a@b>: Relay access denied",
        b"452 4.5.3 Error: too many recipients",
        b"421 4.4.2 relay Error: timeout exceeded",
        b"554 5.7.1",
        b"235 Authentication successful",  # no default for this code: unchanged
        b"458 unknown code",
    ],
)
def test_leaves_replies_alone(reply):
    assert with_enhanced_code(reply) == reply


def test_wrong_looking_code_is_not_taken_for_an_enhanced_one():
    # '5.7' is not a complete enhanced code, and 5.7.1000 is out of range
    assert with_enhanced_code(b"550 5.7 blocked") == b"550 5.0.0 5.7 blocked"
    assert with_enhanced_code(b"550 5.7.1000 x") == b"550 5.0.0 5.7.1000 x"


def test_bare_reply_code_gets_a_well_formed_enhanced_code():
    # RFC 5321 allows a reply with no text ("250"); the code must still be separated.
    assert with_enhanced_code(b"250") in (b"250 2.0.0", b"250 2.0.0 ")


# -- unstuff_and_check ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "content"),
    [
        (b"", b""),
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"..leading dot\r\n", b".leading dot\r\n"),
        (b".x\r\n", b"x\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n.b\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        # a stuffed lone dot: after unstuffing the content holds CRLF . CRLF, as sent
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"..\r\n..\r\n", b".\r\n.\r\n"),
        (b"a.b\r\nc.\r\n", b"a.b\r\nc.\r\n"),  # dots not at a line start stay
        ("caf\u00e9 \u2603\r\n".encode(), "caf\u00e9 \u2603\r\n".encode()),
        (
            bytes(range(1, 10)) + bytes(range(14, 256)) + b"\r\n",
            bytes(range(1, 10)) + bytes(range(14, 256)) + b"\r\n",
        ),
        (b"\t\x0b\x0c\r\n", b"\t\x0b\x0c\r\n"),
    ],
)
def test_unstuff(raw, content):
    assert unstuff_and_check(raw) == content


BARE = "550 5.6.0 Message content rejected: bare CR or LF in message"
NUL = "550 5.6.0 Message content rejected: NUL character in message"


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (b"line\rmore\r\n", BARE),
        (b"line\nmore\r\n", BARE),
        (b"a\r\n\r", BARE),
        (b"a\n", BARE),
        (b"\n\r", BARE),
        (b"a\r\r\n", BARE),
        (b"a\r\n\n", BARE),
        # SMTP smuggling: an end of data that only some MTAs see as one
        (b"a\n.\r\nMAIL FROM:<x@y>\r\n", BARE),
        (b"a\r\n.\nMAIL FROM:<x@y>\r\n", BARE),
        (b"a\r.\rMAIL FROM:<x@y>\r\n", BARE),
        (b"a\n.\nb\r\n", BARE),
        (b"nul\x00here\r\n", NUL),
        (b"\x00", NUL),
        (b"\x00\n", NUL),
    ],
)
def test_refused(raw, reply):
    with pytest.raises(DataError) as info:
        unstuff_and_check(raw)
    assert info.value.reply == reply
    assert str(info.value) == reply


# -- ConnectionLimits --------------------------------------------------------------


def test_per_client_cap():
    limits = ConnectionLimits(total=10, per_client=2)
    assert limits.admit("192.0.2.1") is None
    assert limits.admit("192.0.2.1") is None
    refusal = limits.admit("192.0.2.1")
    assert refusal == "Too many connections from 192.0.2.1, try again later"
    assert limits.admit("192.0.2.2") is None
    assert limits.active == 3
    assert limits.by_client == {"192.0.2.1": 2, "192.0.2.2": 1}
    limits.release("192.0.2.1")
    assert limits.by_client == {"192.0.2.1": 1, "192.0.2.2": 1}
    assert limits.admit("192.0.2.1") is None


def test_total_cap():
    limits = ConnectionLimits(total=3, per_client=5)
    for client in ("a", "b", "c"):
        assert limits.admit(client) is None
    assert limits.admit("d") == "Too many connections, try again later"
    assert limits.admit("a") == "Too many connections, try again later"
    assert limits.active == 3
    assert "d" not in limits.by_client  # a refusal is not counted
    limits.release("b")
    assert limits.active == 2
    assert limits.by_client == {"a": 1, "c": 1}
    assert limits.admit("d") is None
    assert limits.active == 3


def test_release_all_returns_to_empty():
    limits = ConnectionLimits(total=100, per_client=100)
    clients = ["::1", "127.0.0.1", "::1", "10.0.0.1", "::1"]
    for c in clients:
        assert limits.admit(c) is None
    assert limits.by_client == {"::1": 3, "127.0.0.1": 1, "10.0.0.1": 1}
    for c in reversed(clients):
        limits.release(c)
    assert limits.active == 0
    assert limits.by_client == {}
