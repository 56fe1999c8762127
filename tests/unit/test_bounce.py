"""RFC 3464 reports built by relayguard.ndr.bounce, read back with the standard email package."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from typing import Any

import pytest

from relayguard.model import (
    Attempt,
    Envelope,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.ndr.bounce import (
    LIFETIME_RULE,
    ReportContext,
    bounce_record,
    build_delay_warning,
    build_ndr,
    build_relayed_report,
    report_envelope,
    report_mail_options,
    should_report,
)

T0 = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
DAY = 86400.0
CTX = ReportContext(reporting_mta="relay.example.net", now=T0 + DAY)

BODY = (
    b"Received: from client.example ([192.0.2.9])\r\n"
    b"\tby relay.example.net; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice <alice@sender.example>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <orig-1@sender.example>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the numbers are attached.\r\n"
)
HEADERS = BODY[: BODY.index(b"\r\n\r\n") + 2]

USER_UNKNOWN = Reply(
    550,
    "5.1.1",
    "<bob@example.com>: Recipient address rejected: User unknown",
    Phase.RCPT,
    "mx.example.com[192.0.2.1]",
)
MAILBOX_FULL = Reply(552, "5.2.2", "Mailbox full", Phase.RCPT, "mx.example.org[192.0.2.2]")
RBL_BLOCK = Reply(
    554,
    "5.7.1",
    "Service unavailable; Client host [198.51.100.7] blocked using zen.example",
    Phase.RCPT,
    "mx.example.com[192.0.2.1]",
)
THROTTLED = Reply(
    451, "4.7.500", "Server busy. Please try again later", Phase.RCPT, "mx.example.net"
)


def failed(address: str, reply: Reply | None, **kw: Any) -> Recipient:
    return Recipient(address, RecipientState.FAILED, last_reply=reply, **kw)


def queued(address: str, reply: Reply | None = None, **kw: Any) -> Recipient:
    return Recipient(address, RecipientState.QUEUED, last_reply=reply, **kw)


def make_message(
    *recipients: Recipient,
    sender: str = "alice@sender.example",
    ret: str | None = None,
    envid: str | None = None,
    mail_options: tuple[str, ...] = (),
    attempts: list[Attempt] | None = None,
) -> QueuedMessage:
    if attempts is None:
        attempts = [
            Attempt(T0 + 60, "primary", tuple(r.address for r in recipients), THROTTLED, "defer"),
            Attempt(T0 + 660, "primary", tuple(r.address for r in recipients), THROTTLED, "defer"),
            Attempt(
                T0 + 700, "backup", tuple(r.address for r in recipients), USER_UNKNOWN, "bounce"
            ),
        ]
    return QueuedMessage(
        seq=1,
        queue_id="ABC123",
        envelope=Envelope(
            sender=sender,
            recipients=tuple(recipients),
            mail_options=mail_options,
            ret=ret,
            envid=envid,
        ),
        arrival_at=T0,
        next_attempt_at=T0 + 900,
        message_id="<orig-1@sender.example>",
        attempts=attempts,
    )


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(headers, content) of each MIME part, straight from the bytes."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    chunks = raw.split(b"\r\n--" + boundary.encode())
    assert chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        headers, _, content = chunk[2:].partition(b"\r\n\r\n")
        parts.append((headers, content))
    return parts


def status_blocks(raw: bytes) -> list[Message]:
    """The field blocks of part 2, for both the plain and the global (UTF-8) report type."""
    _, content = raw_parts(raw)[1]
    blocks = content.decode("utf-8").strip("\r\n").split("\r\n\r\n")
    return [HeaderParser(policy=email.policy.default).parsestr(b + "\r\n") for b in blocks]


def notification(raw: bytes) -> str:
    part = next(parse(raw).iter_parts())
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text


# ---------------------------------------------------------------- structure


def test_ndr_is_a_multipart_report_with_three_parts() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, failed_rule="builtin:5xx")
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.net>"
    assert msg["To"] == "alice@sender.example"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"] == "Wed, 15 Nov 2023 22:13:20 +0000"
    assert msg["Message-ID"].endswith("@relay.example.net>")
    assert msg["In-Reply-To"] == "<orig-1@sender.example>"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_delivery_status_fields_single_recipient() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    part = list(parse(raw).iter_parts())[1]
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    assert len(blocks) == 2
    per_message, rcpt = blocks
    assert isinstance(per_message, Message)
    assert isinstance(rcpt, Message)
    assert per_message["Reporting-MTA"] == "dns; relay.example.net"
    assert per_message["X-Relayguard-Queue-ID"] == "ABC123"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert per_message["Original-Envelope-Id"] is None
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.com"
    assert rcpt["Original-Recipient"] is None
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.example.com"
    assert rcpt["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown"
    )
    assert rcpt["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:25:00 +0000"
    assert rcpt["Will-Retry-Until"] is None


def test_one_ndr_covers_every_failed_recipient_in_order() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    carol = failed("carol@example.org", MAILBOX_FULL)
    raw = build_ndr(make_message(bob, carol), BODY, [bob, carol], CTX)
    assert raw is not None
    blocks = status_blocks(raw)
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.com",
        "rfc822; carol@example.org",
    ]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.2.2"]
    assert blocks[2]["Remote-MTA"] == "dns; mx.example.org"


def test_envid_is_xtext_decoded() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    raw = build_ndr(make_message(bob, envid="QQ+2B314159"), BODY, [bob], CTX)
    assert raw is not None
    assert status_blocks(raw)[0]["Original-Envelope-Id"] == "QQ+314159"


def test_orcpt_gives_original_recipient_decoded_from_xtext() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, orcpt="rfc822;Bob+2Btag@Example.COM")
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    assert status_blocks(raw)[1]["Original-Recipient"] == "rfc822; Bob+tag@Example.COM"


# ---------------------------------------------------------------- the returned original


def test_ret_full_returns_the_original_byte_exact() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    raw = build_ndr(make_message(bob, ret="FULL"), BODY, [bob], CTX)
    assert raw is not None
    part = list(parse(raw).iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload()
    assert isinstance(inner, list)
    assert isinstance(inner[0], Message)
    assert inner[0]["Subject"] == "quarterly numbers"
    headers, content = raw_parts(raw)[2]
    assert content == BODY
    assert b"Content-Description: Undelivered Message" in headers


@pytest.mark.parametrize("ret", ["HDRS", None])
def test_hdrs_or_no_ret_returns_headers_only(ret: str | None) -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    raw = build_ndr(make_message(bob, ret=ret), BODY, [bob], CTX)
    assert raw is not None
    part = list(parse(raw).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    _, content = raw_parts(raw)[2]
    assert content == HEADERS
    assert b"the numbers are attached" not in raw


def test_eight_bit_original_survives() -> None:
    body = (
        b"From: =?utf-8?q?J=C3=B6rg?= <joerg@sender.example>\r\nSubject: x\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Gr\xfc\xdfe, caf\xe9 \xff\x00\x80\r\nline two\r\n"
    )
    bob = failed("bob@example.com", USER_UNKNOWN)
    raw = build_ndr(
        make_message(bob, ret="FULL", mail_options=("BODY=8BITMIME",)), body, [bob], CTX
    )
    assert raw is not None
    headers, content = raw_parts(raw)[2]
    assert content == body
    assert b"Content-Transfer-Encoding: 8bit" in headers
    assert parse(raw)["Content-Transfer-Encoding"] == "8bit"
    assert report_mail_options(make_message(bob), raw) == ("BODY=8BITMIME",)


def test_body_without_final_crlf_and_without_header_end() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    odd = b"Subject: no body and no final newline"
    for ret, expected in (("FULL", odd), ("HDRS", odd)):
        raw = build_ndr(make_message(bob, ret=ret), odd, [bob], CTX)
        assert raw is not None
        assert raw_parts(raw)[2][1] == expected


def test_large_original_is_returned_as_headers_when_over_the_limit() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    ctx = ReportContext("relay.example.net", T0 + DAY, return_size_limit=100)
    raw = build_ndr(make_message(bob, ret="FULL"), BODY, [bob], ctx)
    assert raw is not None
    assert list(parse(raw).iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert raw_parts(raw)[2][1] == HEADERS
    assert "too large" in notification(raw)


def test_boundary_avoids_content_that_contains_it() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    first = build_ndr(make_message(bob, ret="FULL"), BODY, [bob], CTX)
    assert first is not None
    boundary = parse(first).get_boundary()
    assert boundary is not None
    hostile = BODY + b"--" + boundary.encode() + b"--\r\n"
    raw = build_ndr(make_message(bob, ret="FULL"), hostile, [bob], CTX)
    assert raw is not None
    assert parse(raw).get_boundary() != boundary
    assert raw_parts(raw)[2][1] == hostile
    assert len(list(parse(raw).iter_parts())) == 3


# ---------------------------------------------------------------- SMTPUTF8 (RFC 6533)


def test_smtputf8_uses_global_types_and_utf8_addresses() -> None:
    jose = failed("josé@exämple.com", USER_UNKNOWN, orcpt="utf-8;jos\\x{E9}@ex\\x{E4}mple.com")
    plain = failed("bob@example.com", USER_UNKNOWN)
    message = make_message(
        jose, plain, sender="アリス@sender.example", ret="HDRS", mail_options=("SMTPUTF8",)
    )
    body = "From: アリス@sender.example\r\nSubject: ok\r\n\r\nこんにちは\r\n".encode()
    raw = build_ndr(message, body, [jose, plain], CTX)
    assert raw is not None
    msg = parse(raw)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/global-delivery-status", "message/global-headers"]
    blocks = status_blocks(raw)
    assert blocks[0]["X-Relayguard-Sender"] == "utf-8; アリス@sender.example"
    assert blocks[1]["Final-Recipient"] == "utf-8; josé@exämple.com"
    assert blocks[1]["Original-Recipient"] == "utf-8; josé@exämple.com"
    assert blocks[2]["Final-Recipient"] == "rfc822; bob@example.com"
    assert raw_parts(raw)[2][1] == body[: body.index(b"\r\n\r\n") + 2]
    assert "To: <アリス@sender.example>".encode() in raw
    assert "josé@exämple.com" in notification(raw)
    assert report_mail_options(message, raw) == ("BODY=8BITMIME", "SMTPUTF8")
    assert report_envelope(message) == ("", "アリス@sender.example")


def test_non_ascii_address_without_smtputf8_option_still_goes_global() -> None:
    jose = failed("josé@example.com", USER_UNKNOWN)
    raw = build_ndr(make_message(jose, ret="FULL"), BODY, [jose], CTX)
    assert raw is not None
    types = [p.get_content_type() for p in parse(raw).iter_parts()]
    assert types == ["text/plain", "message/global-delivery-status", "message/global"]
    assert status_blocks(raw)[1]["Final-Recipient"] == "utf-8; josé@example.com"
    assert raw_parts(raw)[2][1] == BODY


def test_utf8_orcpt_in_a_plain_report_stays_seven_bit() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, orcpt="utf-8;b\\x{F6}b@example.com")
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    assert list(parse(raw).iter_parts())[1].get_content_type() == "message/global-delivery-status"
    ascii_bob = failed("bob@example.com", USER_UNKNOWN, orcpt="utf-8;bob+2B1@example.com")
    raw = build_ndr(make_message(ascii_bob), BODY, [ascii_bob], CTX)
    assert raw is not None
    assert list(parse(raw).iter_parts())[1].get_content_type() == "message/delivery-status"
    assert raw_parts(raw)[1][1].isascii()
    assert status_blocks(raw)[1]["Original-Recipient"] == "utf-8; bob\\x{2B}1@example.com"


def test_non_ascii_reply_text_is_masked_in_a_plain_report() -> None:
    reply = Reply(550, "5.1.1", "Empfänger unbekannt", Phase.RCPT, "mx.example.de")
    bob = failed("bob@example.com", reply)
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    assert raw_parts(raw)[1][1].isascii()
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 Empf?nger unbekannt"
    assert "Empfänger unbekannt" in notification(raw)


# ---------------------------------------------------------------- who gets a report


def test_null_sender_never_gets_a_report() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    message = make_message(bob, sender="")
    assert build_ndr(message, BODY, [bob], CTX) is None
    assert build_delay_warning(message, BODY, [bob], CTX, will_retry_until=T0 + 5 * DAY) is None
    success = failed("bob@example.com", None, notify=("SUCCESS",))
    assert build_relayed_report(make_message(success, sender=""), BODY, [success], CTX) is None


def test_notify_never_means_no_report() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, notify=("NEVER",))
    message = make_message(bob)
    assert build_ndr(message, BODY, [bob], CTX) is None
    assert build_delay_warning(message, BODY, [bob], CTX, will_retry_until=T0) is None
    assert build_relayed_report(message, BODY, [bob], CTX) is None


def test_notify_without_failure_drops_that_recipient_from_the_ndr() -> None:
    silent = failed("silent@example.com", USER_UNKNOWN, notify=("SUCCESS", "DELAY"))
    loud = failed("loud@example.com", USER_UNKNOWN, notify=("FAILURE",))
    default = failed("default@example.com", USER_UNKNOWN)
    message = make_message(silent, loud, default)
    assert build_ndr(message, BODY, [silent], CTX) is None
    raw = build_ndr(message, BODY, [silent, loud, default], CTX)
    assert raw is not None
    finals = [b["Final-Recipient"] for b in status_blocks(raw)[1:]]
    assert finals == ["rfc822; loud@example.com", "rfc822; default@example.com"]
    assert "silent@example.com" not in notification(raw)


@pytest.mark.parametrize(
    ("notify", "kind", "expected"),
    [
        ((), "bounce", True),
        ((), "delay", True),
        ((), "relayed", False),
        (("FAILURE",), "bounce", True),
        (("FAILURE",), "delay", False),
        (("DELAY",), "delay", True),
        (("DELAY",), "bounce", False),
        (("SUCCESS",), "relayed", True),
        (("SUCCESS", "FAILURE"), "bounce", True),
        (("NEVER",), "bounce", False),
        (("never",), "bounce", False),
    ],
)
def test_should_report_follows_notify(notify: tuple[str, ...], kind: str, expected: bool) -> None:
    rcpt = queued("bob@example.com", notify=notify)
    assert should_report(make_message(rcpt), rcpt, kind) is expected


def test_should_report_rejects_unknown_kinds_and_second_delay_warnings() -> None:
    rcpt = queued("bob@example.com")
    with pytest.raises(ValueError, match="nonsense"):
        should_report(make_message(rcpt), rcpt, "nonsense")
    warned = queued("bob@example.com", delay_warned=True)
    assert not should_report(make_message(warned), warned, "delay")


# ---------------------------------------------------------------- delay and relay reports


def test_delay_warning() -> None:
    carol = queued("carol@example.org", RBL_BLOCK)
    message = make_message(carol, ret="FULL")
    until = T0 + 5 * DAY
    raw = build_delay_warning(message, BODY, [carol], CTX, will_retry_until=until)
    assert raw is not None
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    rcpt = status_blocks(raw)[1]
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.7.1"  # policy keeps retrying the RBL 5xx: a delay is class 4
    assert rcpt["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 554 5.7.1 Service unavailable")
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    text = notification(raw)
    assert "THIS IS A WARNING ONLY" in text
    assert "policy or reputation reasons" in " ".join(text.split())
    assert "Sun, 19 Nov 2023 22:13:20 +0000" in text
    assert "1 day" in text


def test_delay_warning_respects_notify() -> None:
    only_failure = queued("carol@example.org", THROTTLED, notify=("FAILURE",))
    message = make_message(only_failure)
    assert build_delay_warning(message, BODY, [only_failure], CTX, will_retry_until=T0) is None


def test_relayed_report_for_notify_success() -> None:
    ok = Reply(
        250, "2.0.0", "Ok: queued as 4Xyz", Phase.AFTER_DATA, "smarthost.example[203.0.113.5]"
    )
    bob = Recipient(
        "bob@example.com",
        RecipientState.DELIVERED,
        notify=("SUCCESS", "FAILURE"),
        last_reply=ok,
        delivered_via="primary",
    )
    quiet = Recipient("quiet@example.com", RecipientState.DELIVERED, last_reply=ok)
    message = make_message(bob, quiet)
    raw = build_relayed_report(message, BODY, [bob, quiet], CTX)
    assert raw is not None
    msg = parse(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    blocks = status_blocks(raw)
    assert len(blocks) == 2
    assert blocks[1]["Action"] == "relayed"
    assert blocks[1]["Status"] == "2.0.0"
    assert blocks[1]["Remote-MTA"] == "dns; smarthost.example"
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert build_relayed_report(message, BODY, [quiet], CTX) is None


# ---------------------------------------------------------------- status decisions


def test_lifetime_expiry_keeps_the_last_transient_status() -> None:
    carol = failed("carol@example.org", THROTTLED, failed_rule=LIFETIME_RULE)
    ctx = ReportContext("relay.example.net", T0 + 5 * DAY)
    raw = build_ndr(make_message(carol), BODY, [carol], ctx)
    assert raw is not None
    rcpt = status_blocks(raw)[1]
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.7.500"
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.7.500 Server busy. Please try again later"
    text = " ".join(notification(raw).split())
    assert "for the whole time it could stay in our queue (5 days)" in text
    assert "builtin:lifetime" in text


def test_lifetime_expiry_without_an_enhanced_code_or_a_reply_is_4_4_7() -> None:
    bare = Reply(421, None, "Too many connections", Phase.GREETING, "mx.example.com")
    ctx = ReportContext("relay.example.net", T0 + 5 * DAY, max_lifetime=5 * DAY)
    a = failed("a@example.com", bare)
    b = failed("b@example.com", None)
    raw = build_ndr(make_message(a, b, attempts=[]), BODY, [a, b], ctx, reason_rule="route-down")
    assert raw is not None
    blocks = status_blocks(raw)
    assert [blk["Status"] for blk in blocks[1:]] == ["4.4.7", "4.4.7"]
    assert blocks[2]["Diagnostic-Code"] == "X-Relayguard; delivery time expired"
    assert blocks[2]["Last-Attempt-Date"] is None
    assert "No delivery attempt was made." in notification(raw)


def test_a_5xx_is_not_an_expiry_even_when_the_message_is_old() -> None:
    ctx = ReportContext("relay.example.net", T0 + 9 * DAY, max_lifetime=5 * DAY)
    bob = failed("bob@example.com", RBL_BLOCK, failed_rule="rbl-spamhaus")
    raw = build_ndr(make_message(bob), BODY, [bob], ctx)
    assert raw is not None
    assert status_blocks(raw)[1]["Status"] == "5.7.1"
    assert "whole time" not in notification(raw)


def test_a_4xx_made_permanent_by_policy_is_reported_as_5xx() -> None:
    carol = failed("carol@example.org", THROTTLED, failed_rule="cap-attempts")
    raw = build_ndr(make_message(carol), BODY, [carol], CTX)
    assert raw is not None
    rcpt = status_blocks(raw)[1]
    assert rcpt["Status"] == "5.7.500"
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.7.500 Server busy. Please try again later"
    no_enhanced = failed("d@example.org", Reply(450, None, "busy", Phase.RCPT, "mx"))
    raw = build_ndr(make_message(no_enhanced), BODY, [no_enhanced], CTX, reason_rule="treat-5xx")
    assert raw is not None
    assert status_blocks(raw)[1]["Status"] == "5.0.0"


def test_synthetic_network_failure_has_no_remote_mta() -> None:
    reply = Reply(
        421,
        "4.4.1",
        "connect to mx.example.com[192.0.2.1]:25: Connection refused",
        Phase.CONNECT,
        "mx.example.com[192.0.2.1]",
        synthetic=True,
    )
    bob = failed("bob@example.com", reply, failed_rule=LIFETIME_RULE)
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    rcpt = status_blocks(raw)[1]
    assert rcpt["Remote-MTA"] is None
    assert rcpt["Status"] == "4.4.1"
    assert rcpt["Diagnostic-Code"] == (
        "X-Relayguard; connect to mx.example.com[192.0.2.1]:25: Connection refused"
    )
    assert "<bob@example.com>: connect to mx.example.com[192.0.2.1]:25" in notification(raw)


def test_long_diagnostic_is_folded_and_unfolds_to_the_reply() -> None:
    long_text = "Message rejected: " + " ".join(f"word{i}" for i in range(60))
    reply = Reply(550, "5.7.350", long_text, Phase.AFTER_DATA, "mx.example.com")
    bob = failed("bob@example.com", reply)
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert status_blocks(raw)[1]["Diagnostic-Code"] == f"smtp; 550 5.7.350 {long_text}"


def test_control_characters_in_replies_cannot_inject_fields() -> None:
    reply = Reply(550, "5.1.1", "nope\r\nAction: delivered\r\n\r\nX: y", Phase.RCPT, "mx\r\nX: 1")
    bob = failed("bob@example.com", reply)
    raw = build_ndr(make_message(bob), BODY, [bob], CTX)
    assert raw is not None
    blocks = status_blocks(raw)
    assert len(blocks) == 2
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1]["X"] is None


# ---------------------------------------------------------------- the words for people


def test_notification_explains_what_happened_and_what_to_do() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, failed_rule="builtin:5xx")
    carol = failed("carol@example.org", MAILBOX_FULL)
    dave = failed("dave@example.com", RBL_BLOCK)
    message = make_message(bob, carol, dave)
    raw = build_ndr(message, BODY, [bob, carol, dave], CTX, reason_rule="policy:default")
    assert raw is not None
    text = " ".join(notification(raw).split())
    assert "This is the mail system at host relay.example.net." in text
    assert (
        "<bob@example.com>: host mx.example.com[192.0.2.1] said: 550 5.1.1 <bob@example.com>: "
        "Recipient address rejected: User unknown (in reply to RCPT TO command)"
    ) in text
    assert "Tried 3 times, through: primary (2 times), backup (1 time)." in text
    assert "Received: Tue, 14 Nov 2023 22:13:20 +0000, 1 day ago (queue ID ABC123)" in text
    assert "Message-ID: <orig-1@sender.example>" in text
    assert "Decided by policy rule: builtin:5xx" in text
    assert "Decided by policy rule: policy:default" in text  # carol and dave: the reason rule
    assert "Check it for typing errors" in text
    assert "mailbox is full. Try again later" in text
    assert "policy or reputation reasons" in text
    assert "<postmaster@example.com>" in text
    assert "<postmaster@relay.example.net>" in text


# ---------------------------------------------------------------- record, envelope, purity


def test_bounce_record_is_json_and_tells_the_same_story() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN, orcpt="rfc822;bob+2Bx@example.com")
    message = make_message(bob, envid="ENV+2B1")
    record = bounce_record(message, [bob], "bounce", CTX, "builtin:5xx")
    assert json.loads(json.dumps(record)) == record
    assert record["kind"] == "bounce"
    assert record["queue_id"] == "ABC123"
    assert record["message_id"] == "<orig-1@sender.example>"
    assert record["sender"] == "alice@sender.example"
    assert record["envid"] == "ENV+1"
    assert record["rule"] == "builtin:5xx"
    assert record["attempts"] == 3
    assert record["routes"] == [
        {"route": "primary", "attempts": 2},
        {"route": "backup", "attempts": 1},
    ]
    assert record["arrival"] == "2023-11-14T22:13:20Z"
    assert record["now"] == "2023-11-15T22:13:20Z"
    recipients = record["recipients"]
    assert isinstance(recipients, list)
    [rcpt] = recipients
    assert rcpt == {
        "address": "bob@example.com",
        "orcpt": "bob+x@example.com",
        "action": "failed",
        "status": "5.1.1",
        "expired": False,
        "reply": "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
        "remote_host": "mx.example.com[192.0.2.1]",
        "rule": "builtin:5xx",
        "category": None,
        "second_opinion": None,
        "attempts": 3,
        "routes": [{"route": "primary", "attempts": 2}, {"route": "backup", "attempts": 1}],
        "last_attempt": "2023-11-14T22:25:00Z",
    }
    delay = bounce_record(message, [bob], "delay", CTX, None, will_retry_until=T0 + 5 * DAY)
    assert delay["will_retry_until"] == "2023-11-19T22:13:20Z"
    with pytest.raises(ValueError, match="bogus"):
        bounce_record(message, [bob], "bogus", CTX, None)


def test_reports_are_deterministic_and_distinct_per_kind() -> None:
    bob = failed("bob@example.com", USER_UNKNOWN)
    message = make_message(bob)
    first = build_ndr(message, BODY, [bob], CTX)
    assert first == build_ndr(message, BODY, [bob], CTX)
    delay = build_delay_warning(message, BODY, [bob], CTX, will_retry_until=T0 + 5 * DAY)
    assert first is not None
    assert delay is not None
    assert parse(first)["Message-ID"] != parse(delay)["Message-ID"]
    later = build_ndr(message, BODY, [bob], ReportContext("relay.example.net", T0 + 2 * DAY))
    assert later is not None
    assert parse(first)["Message-ID"] != parse(later)["Message-ID"]


def test_report_envelope_is_from_the_null_sender_to_the_original_sender() -> None:
    assert report_envelope(make_message(queued("bob@example.com"))) == ("", "alice@sender.example")
    assert report_mail_options(make_message(queued("b@example.com")), b"ascii") == ()


def test_an_unbreakable_reply_never_makes_a_line_too_long() -> None:
    reply = Reply(550, "5.7.1", "x" * 3000 + " é" * 5, Phase.RCPT, "mx.example.com")
    bob = failed("bob@example.com", reply)
    raw = build_ndr(make_message(bob, mail_options=("SMTPUTF8",)), BODY, [bob], CTX)
    assert raw is not None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert len(list(parse(raw).iter_parts())) == 3
