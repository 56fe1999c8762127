"""The users file, its scrypt hashes and the failed-login lockout (client_logins.py)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayguard.client_logins import (
    MAX_TRACKED_CLIENTS,
    AuthFailures,
    ClientLogins,
    check_password,
    hash_password,
    parse_hash,
    parse_users,
    set_user,
)

logins = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":#"),
    min_size=1,
    max_size=20,
)


def test_a_hash_is_scrypt_in_the_phc_format_with_its_costs() -> None:
    salt = bytes(range(16))
    text = hash_password("pw", ln=4, salt=salt)
    # The same derivation any scrypt implementation does (RFC 7914), written out.
    key = hashlib.scrypt(b"pw", salt=salt, n=16, r=8, p=1, dklen=32)
    assert text.startswith("$scrypt$ln=4,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$")
    assert parse_hash(text).key == key
    assert not any("=" in part for part in text.rsplit("$", 2)[1:])  # PHC base64: no padding


def test_a_password_checks_against_its_own_hash_only() -> None:
    stored = parse_hash(hash_password("right", ln=4))
    assert check_password(stored, b"right")
    assert not check_password(stored, b"wrong")
    assert not check_password(stored, b"right ")
    # A fresh salt each time: the same password never hashes to the same text twice.
    assert hash_password("right", ln=4) != hash_password("right", ln=4)


def test_a_utf8_password_is_checked_as_the_client_sends_it() -> None:
    stored = parse_hash(hash_password("pässwörd", ln=4))
    assert check_password(stored, "pässwörd".encode())
    assert not check_password(stored, "pässwörd".encode("latin-1"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plain", "expected a scrypt hash"),
        ("$2b$12$abcdefghijklmnopqrstuv", "expected a scrypt hash"),
        ("$scrypt$ln=30,r=8,p=1$AAAA$" + "A" * 43, "ln 1-20"),
        ("$scrypt$ln=14,r=0,p=1$AAAA$" + "A" * 43, "r 1-32"),
        ("$scrypt$ln=14,r=8,p=1$AAAA$AAAA", "at least 16 bytes"),
        ("$scrypt$ln=14,r=8,p=1$A$" + "A" * 43, "base64"),
    ],
)
def test_bad_hashes_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hash(text)


def test_the_users_file_keeps_comments_and_names_bad_lines() -> None:
    h = hash_password("x", ln=4)
    users = parse_users(f"# relay logins\n\nalice:{h}\n  bob:{h}  \n")
    assert sorted(users) == ["alice", "bob"]
    with pytest.raises(ValueError, match="line 3: expected login:hash"):
        parse_users(f"alice:{h}\n\nno separator\n")
    with pytest.raises(ValueError, match=r"line 2 \(bob\): expected a scrypt hash"):
        parse_users(f"alice:{h}\nbob:secret\n")


@given(st.dictionaries(logins, st.just(0), min_size=1, max_size=5), logins)
def test_set_user_replaces_one_login_and_keeps_the_rest(names: dict[str, int], new: str) -> None:
    h1, h2 = hash_password("a", ln=1), hash_password("b", ln=1)
    text = "# comment\n" + "".join(f"{n}:{h1}\n" for n in names)
    after = set_user(text, new, h2)
    users = parse_users(after)
    assert set(users) == set(names) | {new}
    assert str(users[new]) == h2
    assert all(str(users[n]) == h1 for n in names if n != new)
    assert after.startswith("# comment\n")


def test_an_unknown_login_costs_a_check_and_is_refused() -> None:
    logins_ = ClientLogins(parse_users(f"alice:{hash_password('pw', ln=4)}\n"))
    assert logins_.check("alice", b"pw")
    assert not logins_.check("alice", b"nope")
    assert not logins_.check("mallory", b"pw")
    assert not ClientLogins({}).check("alice", b"")


def test_failures_lock_an_address_out_for_the_window_then_let_it_go() -> None:
    failures = AuthFailures(limit=3, window=600)
    assert [failures.failed("192.0.2.1", t) for t in (0, 10, 20)] == [1, 2, 3]
    assert failures.locked_out("192.0.2.1", 30)
    assert not failures.locked_out("192.0.2.2", 30)  # per address
    assert failures.locked_until("192.0.2.1", 30) == 600
    assert failures.locked_out("192.0.2.1", 599.9)
    assert not failures.locked_out("192.0.2.1", 600)  # the first failure left the window
    assert failures.locked_until("192.0.2.1", 600) is None


def test_failures_spread_wider_than_the_window_never_lock_out() -> None:
    failures = AuthFailures(limit=3, window=60)
    counts = [failures.failed("192.0.2.1", t) for t in range(0, 600, 31)]
    assert max(counts) == 2
    assert not failures.locked_out("192.0.2.1", 600)


def test_the_lockout_table_is_bounded() -> None:
    failures = AuthFailures(limit=1, window=600)
    addresses = [
        f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(MAX_TRACKED_CLIENTS + 10)
    ]
    for address in addresses:
        failures.failed(address, 1.0)
    assert not failures.locked_out(addresses[0], 2.0)  # the oldest were forgotten
    assert failures.locked_out(addresses[-1], 2.0)  # the newest are still locked out
    assert sum(failures.locked_out(a, 2.0) for a in addresses[:20]) == 10
