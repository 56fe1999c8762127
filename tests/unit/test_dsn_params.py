"""MAIL FROM / RCPT TO parameters and xtext (RFC 3461)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import Envelope, Recipient, Transaction
from relayguard.ndr.facts import parse_orcpt, xtext_decode
from relayguard.smtp.esmtp import (
    MailParams,
    ParamError,
    RcptParams,
    _valid_xtext,
    parse_mail_params,
    parse_rcpt_params,
)


def xtext_encode(value: str) -> str:
    """RFC 3461 section 4 encoder, written from the RFC, to check the decoder against."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in b"+=" else f"+{b:02X}" for b in value.encode()
    )


# -- MAIL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", MailParams()),
        ("   ", MailParams()),
        ("SIZE=1000", MailParams(size=1000)),
        ("size=0", MailParams(size=0)),
        ("SIZE=36700160", MailParams(size=36700160)),
        ("BODY=7BIT", MailParams(body="7BIT")),
        ("body=8bitmime", MailParams(body="8BITMIME")),
        ("SMTPUTF8", MailParams(smtputf8=True)),
        ("smtputf8", MailParams(smtputf8=True)),
        ("RET=FULL", MailParams(ret="FULL")),
        ("ret=hdrs", MailParams(ret="HDRS")),
        ("ENVID=QQ314159", MailParams(envid="QQ314159")),
        ("ENVID=Mixed+2BCase+3D", MailParams(envid="Mixed+2BCase+3D")),  # kept as received
        ("ENVID=" + "x" * 100, MailParams(envid="x" * 100)),
        (
            "SIZE=12 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc",
            MailParams(size=12, body="8BITMIME", smtputf8=True, ret="HDRS", envid="abc"),
        ),
        ("  SIZE=5    RET=FULL  ", MailParams(size=5, ret="FULL")),
    ],
)
def test_mail_params_good(params, expected):
    assert parse_mail_params(params, max_size=36700160) == expected


def mail_error(params: str, max_size: int | None = 1000) -> str:
    with pytest.raises(ParamError) as info:
        parse_mail_params(params, max_size=max_size)
    assert str(info.value) == info.value.reply
    return info.value.reply


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("SIZE", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=abc", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=-1", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=1.5", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=1001", "552 5.3.4 Message size exceeds fixed limit"),
        ("BODY", "501 5.5.4 Bad BODY parameter: 7BIT or 8BITMIME expected"),
        ("BODY=BINARYMIME", "501 5.5.4 Bad BODY parameter: 7BIT or 8BITMIME expected"),
        ("SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("SMTPUTF8=", "501 5.5.4 SMTPUTF8 takes no value"),
        ("RET", "501 5.5.4 Bad RET parameter: FULL or HDRS expected"),
        ("RET=BODY", "501 5.5.4 Bad RET parameter: FULL or HDRS expected"),
        ("ENVID", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=" + "x" * 101, "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=a+2", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=a+2b", "501 5.5.4 Bad ENVID parameter"),  # hex must be upper case
        ("ENVID=a+ZZ", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=a=b", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=caf\u00e9", "501 5.5.4 Bad ENVID parameter"),
        ("SIZE=1 size=2", "501 5.5.4 Duplicate MAIL parameter SIZE"),
        ("RET=FULL RET=FULL", "501 5.5.4 Duplicate MAIL parameter RET"),
        ("SMTPUTF8 SMTPUTF8", "501 5.5.4 Duplicate MAIL parameter SMTPUTF8"),
        ("AUTH=<>", "555 5.5.4 Unsupported MAIL parameter AUTH"),
        ("SIZE=1 xyz=1", "555 5.5.4 Unsupported MAIL parameter XYZ"),
        ("REQUIRETLS", "555 5.5.4 Unsupported MAIL parameter REQUIRETLS"),
    ],
)
def test_mail_params_errors(params, reply):
    assert mail_error(params) == reply


def test_size_limit_only_when_set():
    assert parse_mail_params("SIZE=10000", max_size=None).size == 10000
    assert parse_mail_params("SIZE=10000", max_size=0).size == 10000
    assert parse_mail_params("SIZE=1000", max_size=1000).size == 1000
    assert mail_error("SIZE=1001", max_size=1000).startswith("552 5.3.4 ")


def test_size_with_odd_unicode_digit_is_a_param_error():
    # '²'.isdigit() is True but int('²') raises: the session must get a 501, not a crash.
    assert mail_error("SIZE=\u00b2") == "501 5.5.4 Bad SIZE parameter"


def test_size_must_be_ascii_digits():
    # '١٢' (Arabic-Indic digits) is not an RFC 1870 size-value
    assert mail_error("SIZE=\u0661\u0662") == "501 5.5.4 Bad SIZE parameter"


def test_upstream_mail_params():
    assert MailParams().upstream == ()
    assert MailParams(size=5, ret="FULL", envid="x").upstream == ()
    assert MailParams(body="8BITMIME", smtputf8=True).upstream == ("BODY=8BITMIME", "SMTPUTF8")
    assert parse_mail_params("smtputf8 body=7bit", max_size=None).upstream == (
        "BODY=7BIT",
        "SMTPUTF8",
    )


# -- RCPT ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", RcptParams()),
        ("NOTIFY=NEVER", RcptParams(notify=("NEVER",))),
        ("notify=success,failure", RcptParams(notify=("SUCCESS", "FAILURE"))),
        ("NOTIFY=DELAY,FAILURE,SUCCESS", RcptParams(notify=("DELAY", "FAILURE", "SUCCESS"))),
        ("ORCPT=rfc822;user@example.com", RcptParams(orcpt="rfc822;user@example.com")),
        # kept exactly as received: case, type and xtext escapes (decoded only for reports)
        ("ORCPT=RFC822;Mixed.Case@Example.COM", RcptParams(orcpt="RFC822;Mixed.Case@Example.COM")),
        ("ORCPT=rfc822;a+2Bb@example.com", RcptParams(orcpt="rfc822;a+2Bb@example.com")),
        ("ORCPT=utf-8;caf+C3+A9@x", RcptParams(orcpt="utf-8;caf+C3+A9@x")),
        (
            "NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@x.example",
            RcptParams(notify=("FAILURE", "DELAY"), orcpt="rfc822;r@x.example"),
        ),
    ],
)
def test_rcpt_params_good(params, expected):
    assert parse_rcpt_params(params) == expected


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("NOTIFY", "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=", "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=SOMETIMES", "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY"),
        (
            "NOTIFY=NEVER,SUCCESS",
            "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY",
        ),
        ("NOTIFY=SUCCESS,", "501 5.5.4 Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE, DELAY"),
        ("ORCPT", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc822", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc822;", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc822;a+2", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc822;a=b", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc822;caf\u00e9@x", "501 5.5.4 Bad ORCPT parameter"),
        ("ORCPT=rfc\u00e9;a@x", "501 5.5.4 Bad ORCPT parameter"),
        ("NOTIFY=NEVER notify=NEVER", "501 5.5.4 Duplicate RCPT parameter NOTIFY"),
        ("ORCPT=rfc822;a@x ORCPT=rfc822;b@x", "501 5.5.4 Duplicate RCPT parameter ORCPT"),
        ("SIZE=10", "555 5.5.4 Unsupported RCPT parameter SIZE"),
        ("xfoo", "555 5.5.4 Unsupported RCPT parameter XFOO"),
    ],
)
def test_rcpt_params_errors(params, reply):
    with pytest.raises(ParamError) as info:
        parse_rcpt_params(params)
    assert info.value.reply == reply


def test_orcpt_needs_an_address_type():
    # RFC 3461 §4.2: addr-type is an atom, so it cannot be empty.
    with pytest.raises(ParamError) as info:
        parse_rcpt_params("ORCPT=;user@example.com")
    assert info.value.reply == "501 5.5.4 Bad ORCPT parameter"


def test_param_error_is_a_value_error():
    assert issubclass(ParamError, ValueError)


# -- xtext and ORCPT decoding ---------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "encoded"),
    [
        ("", ""),
        ("user@example.com", "user@example.com"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("a b", "a+20b"),
        ("tab\there", "tab+09here"),
        ("caf\u00e9", "caf+C3+A9"),
        ("\u2603", "+E2+98+83"),
        ("~!", "~!"),
        ("\x7f", "+7F"),
    ],
)
def test_xtext_table(plain, encoded):
    assert xtext_encode(plain) == encoded
    assert xtext_decode(encoded) == plain


def test_xtext_decode_leaves_non_escapes():
    assert xtext_decode("a+2") == "a+2"
    assert xtext_decode("a+") == "a+"
    assert xtext_decode("a+ZZ") == "a+ZZ"
    assert xtext_decode("+2B41") == "+41"  # one pass only


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_xtext_round_trip(value):
    encoded = xtext_encode(value)
    assert _valid_xtext(encoded)
    assert encoded.isascii()
    assert xtext_decode(encoded) == value


@pytest.mark.parametrize(
    ("orcpt", "decoded"),
    [
        (None, None),
        ("", None),
        ("rfc822;user@example.com", ("rfc822", "user@example.com")),
        ("RFC822;a+2Bb@example.com", ("rfc822", "a+b@example.com")),
        ("rfc822;a+3Db+20c@x", ("rfc822", "a=b c@x")),
        ("utf-8;caf\\x{E9}@x", ("utf-8", "caf\u00e9@x")),
        ("bare@example.com", ("rfc822", "bare@example.com")),
        ("x-local;Some+2BThing", ("x-local", "Some+Thing")),
    ],
)
def test_parse_orcpt(orcpt, decoded):
    assert parse_orcpt(orcpt) == decoded


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), unique=True, max_size=3),
)
def test_orcpt_and_notify_survive_the_relay(address, notify):
    received = f"rfc822;{xtext_encode(address)}"
    parsed = parse_rcpt_params(
        " ".join(
            filter(
                None,
                [
                    "NOTIFY=" + ",".join(notify) if notify else "",
                    f"ORCPT={received}",
                ],
            )
        )
    )
    assert parsed.orcpt == received
    assert parsed.notify == tuple(notify)
    # upstream gets it verbatim; a report shows it decoded
    upstream = rcpt_upstream_params(parsed.notify, parsed.orcpt)
    assert upstream[-1] == f"ORCPT={received}"
    assert parse_rcpt_params(" ".join(upstream)) == parsed
    assert parse_orcpt(parsed.orcpt) == ("rfc822", address)


def rcpt_upstream_params(notify: tuple[str, ...], orcpt: str | None) -> tuple[str, ...]:
    env = Envelope("s@x", (Recipient("a@x", notify=notify, orcpt=orcpt),))
    [(_, params)] = Transaction.of(env, env.recipients, b"").recipients
    return tuple(params)


def test_rcpt_upstream_params():
    assert rcpt_upstream_params((), None) == ()
    assert rcpt_upstream_params(("NEVER",), None) == ("NOTIFY=NEVER",)
    assert rcpt_upstream_params(("SUCCESS", "FAILURE"), "rfc822;a+2Bb@x") == (
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;a+2Bb@x",
    )
