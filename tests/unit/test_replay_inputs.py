"""Every input format the replay reads: .eml directory, mbox, Maildir, a relayguard spool,
Postfix queue files and `postcat -q` output (real ones, made by Postfix 3.7)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from relayguard.model import Envelope, MessageState, Recipient, RecipientState
from relayguard.queue.spool import NewMessage
from relayguard.queue.spool.sqlite import SqliteSpool
from relayguard.replay.inputs import InputError, detect_format, read_input
from relayguard.replay.postfix_queue import parse_queue_file

JAN15 = datetime(2024, 1, 15, 8, 0, tzinfo=UTC).timestamp()

# `sendmail -f alice@example.org -N failure,delay bob@example.com carol@example.net`
# into a Postfix 3.7 whose transports all defer: deferred/0/008F220C2C2.
POSTFIX_QUEUE_FILE = base64.b64decode("""
Q18gICAgICAgICAgICAzMjMgICAgICAgICAgICAgMzc0ICAgICAgICAgICAgICAgMiAgICAgICAg
ICAgICAgMjQgICAgICAgICAgICAgMzIzICAgICAgICAgICAgICAgMFQRMTc5NTYxNDEyMCA5ODAy
NTRBFmNyZWF0ZV90aW1lPTE3OTU2MTQxMjBBFXJld3JpdGVfY29udGV4dD1sb2NhbEYEcm9vdFMR
YWxpY2VAZXhhbXBsZS5vcmdBD25vdGlmeV9mbGFncz0xMkEkZHNuX29yaWdfcmNwdD1yZmM4MjI7
Ym9iQGV4YW1wbGUuY29tTw9ib2JAZXhhbXBsZS5jb21SD2JvYkBleGFtcGxlLmNvbUEPbm90aWZ5
X2ZsYWdzPTEyQSZkc25fb3JpZ19yY3B0PXJmYzgyMjtjYXJvbEBleGFtcGxlLm5ldE8RY2Fyb2xA
ZXhhbXBsZS5uZXRSEWNhcm9sQGV4YW1wbGUubmV0TQBOLVJlY2VpdmVkOiBieSBwZi50ZXN0IChQ
b3N0Zml4LCBmcm9tIHVzZXJpZCAwKU42CWlkIDAwOEYyMjBDMkMyOyBXZWQsIDI1IE5vdiAyMDI2
IDEzOjQyOjAwICswMDAwIChVVEMpTh9Gcm9tOiBBbGljZSA8YWxpY2VAZXhhbXBsZS5vcmc+TiZU
bzogYm9iQGV4YW1wbGUuY29tLCBjYXJvbEBleGFtcGxlLm5ldE4bU3ViamVjdDogcXVldWUgZmls
ZSBmaXh0dXJlTiVEYXRlOiBNb24sIDE1IEphbiAyMDI0IDA4OjAwOjAwICswMDAwTh5NZXNzYWdl
LUlEOiA8cGYtMUBleGFtcGxlLm9yZz5OAE4gSGVsbG8gZnJvbSBhIFBvc3RmaXggcXVldWUgZmls
ZS5OCS5kb3QgbGluZVgARQA=
""")

# `postcat -q 008F220C2C2 0E3BD20C46C` (the second sent with `sendmail -t`, so its
# recipient is in the extracted segment), shortened: the second body had a long line.
POSTCAT = """\
*** ENVELOPE RECORDS deferred/0/008F220C2C2 ***
message_size:             323             374               2              24             323               0
message_arrival_time: Wed Nov 25 13:42:00 2026
create_time: Wed Nov 25 13:42:00 2026
named_attribute: rewrite_context=local
sender_fullname: root
sender: alice@example.org
named_attribute: notify_flags=12
named_attribute: dsn_orig_rcpt=rfc822;bob@example.com
original_recipient: bob@example.com
recipient: bob@example.com
named_attribute: notify_flags=12
named_attribute: dsn_orig_rcpt=rfc822;carol@example.net
original_recipient: carol@example.net
done_recipient: carol@example.net
*** MESSAGE CONTENTS deferred/0/008F220C2C2 ***
Received: by pf.test (Postfix, from userid 0)
\tid 008F220C2C2; Wed, 25 Nov 2026 13:42:00 +0000 (UTC)
From: Alice <alice@example.org>
To: bob@example.com, carol@example.net
Subject: queue file fixture
Date: Mon, 15 Jan 2024 08:00:00 +0000
Message-ID: <pf-1@example.org>

Hello from a Postfix queue file.
.dot line
*** HEADER EXTRACTED deferred/0/008F220C2C2 ***
*** MESSAGE FILE END deferred/0/008F220C2C2 ***
*** ENVELOPE RECORDS deferred/0/0E3BD20C46C ***
message_size:            2758             188               1               0            2758               0
message_arrival_time: Wed Nov 25 13:42:17 2026
create_time: Wed Nov 25 13:42:18 2026
named_attribute: rewrite_context=local
sender_fullname: root
sender: dan@example.org
*** MESSAGE CONTENTS deferred/0/0E3BD20C46C ***
Received: by pf.test (Postfix, from userid 0)
\tid 0E3BD20C46C; Wed, 25 Nov 2026 13:42:18 +0000 (UTC)
From: Dan <dan@example.org>
To: erin@example.com
Subject: extracted
Message-ID: <pf-2@example.org>

end
*** HEADER EXTRACTED deferred/0/0E3BD20C46C ***
named_attribute: dsn_orig_rcpt=rfc822;erin@example.com
original_recipient: erin@example.com
recipient: erin@example.com
*** MESSAGE FILE END deferred/0/0E3BD20C46C ***
"""


def eml(
    n: int,
    *,
    to: str = "bob@example.com",
    date: str = "Mon, 15 Jan 2024 08:00:00 +0000",
    extra: str = "",
) -> bytes:
    return (
        f"Return-Path: <alice@example.org>\nFrom: Alice <alice@example.org>\nTo: {to}\n"
        f"Subject: {n}\nDate: {date}\nMessage-ID: <{n}@example.org>\n{extra}\n"
        f"body {n}\n"
    ).encode()


def test_eml_directory(tmp_path):
    (tmp_path / "b.eml").write_bytes(eml(2, to='"Bob, B." <bob@example.com>, carol@example.net'))
    (tmp_path / "a.eml").write_bytes(eml(1, extra="X-Original-To: dave@example.com\n"))
    (tmp_path / "c.eml").write_bytes(b"Subject: nobody\n\nno recipients\n")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    inp = read_input(tmp_path)
    assert inp.format == "eml"
    first, second = inp.messages
    assert [r.address for r in first.envelope.recipients] == ["dave@example.com"]
    assert [r.address for r in second.envelope.recipients] == [
        "bob@example.com",
        "carol@example.net",
    ]
    assert first.envelope.sender == "alice@example.org"
    assert first.arrival == JAN15
    assert first.message_id == "<1@example.org>"
    assert first.body.endswith(b"\r\nbody 1\r\n")
    assert b"\n" not in first.body.replace(b"\r\n", b"")
    assert inp.skipped == ["c.eml: no recipients (no To/Cc/Bcc or envelope headers)"]


def test_mbox_with_from_lines_and_quoting(tmp_path):
    box = tmp_path / "mail.mbox"
    box.write_bytes(
        b"From bounce@example.org Mon Jan 15 09:30:00 2024\n"
        b"From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: no date\n\n"
        b">From the start\n>>From quoted\n\n"
        b"From MAILER-DAEMON Mon Jan 15 10:00:00 2024\n" + eml(2) + b"\n"
    )
    inp = read_input(box)
    assert inp.format == "mbox"
    one, two = inp.messages
    assert one.envelope.sender == "bounce@example.org"  # the From_ line is the envelope
    assert one.arrival == JAN15 + 5400  # no Date: the From_ line's time
    assert one.body.endswith(b"\r\n\r\nFrom the start\r\n>From quoted\r\n")
    assert two.envelope.sender == "alice@example.org"  # Return-Path wins
    assert two.arrival == JAN15
    assert two.body.endswith(b"body 2\r\n")


def test_maildir(tmp_path):
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "cur" / "1705309200.M1P1.host:2,S").write_bytes(
        b"Delivered-To: bob@example.com\nTo: list@example.com\nSubject: x\n\nhi\n"
    )
    (tmp_path / "new" / "1705305600.M2P2.host").write_bytes(eml(2))
    inp = read_input(tmp_path)
    assert inp.format == "maildir"
    assert [m.source for m in inp.messages] == [
        "new/1705305600.M2P2.host",
        "cur/1705309200.M1P1.host:2,S",
    ]
    assert inp.messages[1].arrival == 1705309200.0  # no Date: the file name's time
    assert [r.address for r in inp.messages[1].envelope.recipients] == ["bob@example.com"]


async def test_relayguard_spool(tmp_path):
    spool = SqliteSpool(tmp_path / "spool")
    env = Envelope(
        sender="alice@example.org",
        recipients=(
            Recipient("bob@example.com", notify=("FAILURE",), orcpt="rfc822;bob@example.com"),
            Recipient("carol@example.net"),
        ),
        ret="HDRS",
    )
    try:
        a = await spool.accept(NewMessage(env, b"Subject: a\r\n\r\nx\r\n", 1000.0, "<a@x>"))
        b = await spool.accept(NewMessage(env, b"Subject: b\r\n\r\ny\r\n", 2000.0, "<b@x>"))
        msg, _ = await spool.load(a.seq)
        msg.envelope = env.with_recipients(
            (Recipient("bob@example.com", RecipientState.DELIVERED), env.recipients[1])
        )
        await spool.update(msg, [])
        held, _ = await spool.load(b.seq)
        held.state = MessageState.HELD
        await spool.update(held, [])
        await spool.accept(NewMessage(env, b"Subject: c\r\n\r\nz\r\n", 3000.0, "<c@x>"))
    finally:
        await spool.close()
    inp = read_input(tmp_path / "spool")
    assert inp.format == "spool"
    first, third = inp.messages
    assert [r.address for r in first.envelope.recipients] == ["carol@example.net"]
    assert first.arrival == 1000.0
    assert first.envelope.ret == "HDRS"
    assert third.envelope.recipients[0].notify == ("FAILURE",)
    assert third.body == b"Subject: c\r\n\r\nz\r\n"
    assert inp.skipped == [f"{b.queue_id}: held by an operator"]


def test_postfix_queue_file(tmp_path):
    (tmp_path / "deferred" / "0").mkdir(parents=True)
    (tmp_path / "deferred" / "0" / "008F220C2C2").write_bytes(POSTFIX_QUEUE_FILE)
    assert detect_format(tmp_path) == "postfix"
    [m] = read_input(tmp_path).messages
    assert m.envelope.sender == "alice@example.org"
    assert [(r.address, r.notify, r.orcpt) for r in m.envelope.recipients] == [
        ("bob@example.com", ("DELAY", "FAILURE"), "rfc822;bob@example.com"),
        ("carol@example.net", ("DELAY", "FAILURE"), "rfc822;carol@example.net"),
    ]
    assert m.arrival == 1795614120.0  # the T record, not the Date header
    assert m.message_id == "<pf-1@example.org>"
    assert m.body.startswith(b"Received: by pf.test (Postfix, from userid 0)\r\n\tid 008F")
    assert m.body.endswith(b"\r\nHello from a Postfix queue file.\r\n.dot line\r\n")


def _record(rtype: bytes, data: bytes) -> bytes:
    out, n = bytearray(rtype), len(data)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def test_postfix_long_lines_extracted_recipients_done_and_pointers():
    long = b"x" * 2500
    records = [
        _record(b"C", b"%15d" % 100),
        _record(b"T", b"1705305600 1234"),
        _record(b"S", b"dan@example.org"),
        _record(b"D", b"gone@example.com"),
        _record(b"M", b""),
        _record(b"N", b"Subject: long"),
        _record(b"N", b""),
        _record(b"L", long[:2048]),
        _record(b"N", long[2048:]),
    ]
    head = b"".join(records)
    # a pointer to a later stretch of records (as cleanup writes when headers change)
    tail = (
        _record(b"N", b"end")
        + _record(b"X", b"")
        + _record(b"R", b"erin@example.com")
        + _record(b"E", b"")
    )
    pad = _record(b"w", b"padding that the pointer skips")
    target = len(head) + len(_record(b"p", b"%15d" % 0)) + len(pad)
    data = head + _record(b"p", b"%15d" % target) + pad + tail
    m = parse_queue_file(data, "Q1")
    assert not isinstance(m, str)
    assert [r.address for r in m.envelope.recipients] == ["erin@example.com"]
    assert m.body == b"Subject: long\r\n\r\n" + long + b"\r\nend\r\n"
    assert m.arrival == 1705305600.0
    with pytest.raises(InputError):
        parse_queue_file(data[:40], "Q2")


def test_postcat_dump(tmp_path):
    dump = tmp_path / "queue.txt"
    dump.write_text(POSTCAT)
    inp = read_input(dump)
    assert inp.format == "postcat"
    one, two = inp.messages
    assert [r.address for r in one.envelope.recipients] == ["bob@example.com"]  # carol is done
    assert one.envelope.recipients[0].notify == ("DELAY", "FAILURE")
    assert one.arrival == datetime(2026, 11, 25, 13, 42, tzinfo=UTC).timestamp()
    assert one.body.endswith(b"Hello from a Postfix queue file.\r\n.dot line\r\n")
    assert one.source == "008F220C2C2"
    assert [r.address for r in two.envelope.recipients] == ["erin@example.com"]
    assert two.envelope.recipients[0].orcpt == "rfc822;erin@example.com"
    assert two.message_id == "<pf-2@example.org>"
