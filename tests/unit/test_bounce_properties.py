"""Properties of relayguard.ndr.bounce over generated messages, recipients and replies."""

from __future__ import annotations

import email
import email.parser
import email.policy
import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import (
    Attempt,
    Envelope,
    Phase,
    QueuedMessage,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.ndr.bounce import LIFETIME_RULE, ReportContext, build_ndr, should_report
from relayguard.ndr.facts import unitext_decode, unitext_encode, xtext_decode

T0 = 1_700_000_000.0
STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")

local_parts = st.text(string.ascii_letters + string.digits + "._+-=", min_size=1, max_size=12)
unicode_parts = st.text(
    st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF, categories=("Ll", "Lu", "Lo")),
    min_size=1,
    max_size=6,
)
domains = st.sampled_from(["example.com", "example.org", "mx.example.net", "exämple.de"])
addresses = st.builds(
    lambda local, extra, domain: f"{local}{extra}@{domain}",
    local_parts,
    st.one_of(st.just(""), unicode_parts),
    domains,
)
replies = st.one_of(
    st.none(),
    st.builds(
        Reply,
        code=st.integers(400, 599),
        enhanced=st.one_of(
            st.none(),
            st.builds(
                lambda c, s, d: f"{c}.{s}.{d}",
                st.sampled_from("45"),
                st.integers(0, 9),
                st.integers(0, 999),
            ),
        ),
        text=st.text(max_size=300),
        phase=st.sampled_from(list(Phase)),
        remote_host=st.sampled_from(["", "mx.example.com[192.0.2.1]", "mx.example.org"]),
        synthetic=st.booleans(),
    ),
)
notifies = st.sampled_from([(), ("FAILURE",), ("NEVER",), ("SUCCESS",), ("DELAY", "FAILURE")])
recipients = st.builds(
    lambda address, reply, notify, rule, orcpt: Recipient(
        address,
        RecipientState.FAILED,
        orcpt=f"rfc822;{address}" if orcpt and address.isascii() else None,
        notify=notify,
        last_reply=reply,
        failed_rule=rule,
    ),
    addresses,
    replies,
    notifies,
    st.sampled_from([None, "builtin:5xx", LIFETIME_RULE, "cap"]),
    st.booleans(),
)
header_lines = st.lists(
    st.builds(
        lambda name, value: name.encode() + b": " + value + b"\r\n",
        st.text(string.ascii_letters, min_size=1, max_size=10),
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=6,
)
bodies = st.builds(lambda hs, body: b"".join(hs) + b"\r\n" + body, header_lines, st.binary())


def raw_parts(raw: bytes, boundary: str) -> list[tuple[bytes, bytes]]:
    chunks = raw.split(b"\r\n--" + boundary.encode())
    assert chunks[-1] == b"--\r\n"
    return [chunk[2:].partition(b"\r\n\r\n")[::2] for chunk in chunks[1:-1]]


@settings(max_examples=150, deadline=None)
@given(
    rcpts=st.lists(recipients, min_size=1, max_size=4),
    body=bodies,
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    smtputf8=st.booleans(),
    age=st.floats(0, 10 * 86400),
)
def test_any_ndr_parses_and_keeps_the_original(
    rcpts: list[Recipient], body: bytes, ret: str | None, smtputf8: bool, age: float
) -> None:
    message = QueuedMessage(
        seq=1,
        queue_id="ABC123",
        envelope=Envelope(
            "alice@sender.example",
            tuple(rcpts),
            mail_options=("SMTPUTF8",) if smtputf8 else (),
            ret=ret,
        ),
        arrival_at=T0,
        next_attempt_at=T0,
        attempts=[
            Attempt(
                T0 + 1,
                "primary",
                tuple(r.address for r in rcpts),
                Reply(451, "4.0.0", "later", Phase.RCPT),
                "defer",
            )
        ],
    )
    ctx = ReportContext("relay.example.net", T0 + age, max_lifetime=5 * 86400)
    raw = build_ndr(message, body, rcpts, ctx)
    wanted = [r for r in rcpts if should_report(message, r, "bounce")]
    if not wanted:
        assert raw is None
        return
    assert raw is not None
    assert raw == build_ndr(message, body, rcpts, ctx)

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert not msg.defects
    assert msg.get_content_type() == "multipart/report"
    boundary = msg.get_boundary()
    assert boundary is not None
    parts = raw_parts(raw, boundary)
    assert len(parts) == 3
    assert len(list(msg.iter_parts())) == 3

    headers, original = parts[2]
    if ret == "FULL":
        assert original == body
    else:
        assert body.startswith(original)
        assert b"\r\n\r\n" not in original

    status_headers, status = parts[1]
    if b"message/delivery-status" in status_headers:
        assert status.isascii()
    blocks = status.decode("utf-8").strip("\r\n").split("\r\n\r\n")
    assert len(blocks) == 1 + len(wanted)
    for block, rcpt in zip(blocks[1:], wanted, strict=True):
        fields = email.parser.HeaderParser(policy=email.policy.default).parsestr(block + "\r\n")
        assert fields.get_all("Action") == ["failed"]
        assert STATUS.match(str(fields["Status"]))
        assert rcpt.address in str(fields["Final-Recipient"])

    delimiter = b"\r\n--" + boundary.encode()
    generated = delimiter.join(raw.split(delimiter)[:3]) + headers
    for line in generated.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\r" not in line
        assert b"\n" not in line


def xtext_encode(value: str) -> str:
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x21 <= byte <= 0x7E and ch not in "+=" else f"+{byte:02X}")
    return "".join(out)


@given(st.text())
def test_xtext_round_trip(value: str) -> None:
    assert xtext_decode(xtext_encode(value)) == value


@given(st.text(st.characters(exclude_categories=("Cs",))), st.booleans())
def test_unitext_round_trip(value: str, ascii_only: bool) -> None:
    encoded = unitext_encode(value, ascii_only=ascii_only)
    if ascii_only:
        assert encoded.isascii()
    assert unitext_decode(encoded) == value
