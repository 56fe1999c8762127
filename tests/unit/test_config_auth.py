"""Smarthost AUTH keys: the password is read at load time from a private file or a
systemd credential, never shown, and every mistake names file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayguard.config import ConfigError, Settings, load_settings_text

FILE = "/etc/relayguard/test.toml"
PASSWORD = "hunter2-but-longer"


def _load(route_keys: str) -> Settings:
    text = f"""
[server]
listen = "127.0.0.1:0"

[[route]]
name = "m365"
host = "smtp.office365.com"
port = 587
tls = "required"
{route_keys}
"""
    return load_settings_text(text, FILE)


def _password_file(tmp_path: Path, mode: int = 0o600, text: str = PASSWORD + "\n") -> Path:
    p = tmp_path / "m365.pw"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    p = _password_file(tmp_path)
    settings = _load(f'auth_username = "relay@example.net"\nauth_password_file = "{p}"')
    [route] = settings.routes
    assert route.auth_password.reveal() == PASSWORD
    assert route.auth_mechanisms == ("PLAIN", "LOGIN")
    assert not route.auth_over_plaintext
    assert route.describe_auth() == f"relay@example.net (password file {p})"
    for shown in (repr(settings), str(route), repr(route.auth_password), f"{route}"):
        assert PASSWORD not in shown


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_password_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    p = _password_file(tmp_path, mode)
    with pytest.raises(ConfigError) as info:
        _load(f'auth_username = "u"\nauth_password_file = "{p}"')
    message = str(info.value)
    assert message.startswith(f"{FILE}: route[0].auth_password_file: expected a file with")
    assert f"has mode {mode:04o} (chmod 600 {p})" in message
    assert PASSWORD not in message


def test_missing_or_empty_password_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pw"
    with pytest.raises(ConfigError, match=r"route\[0\].auth_password_file: .*cannot read"):
        _load(f'auth_username = "u"\nauth_password_file = "{missing}"')
    empty = _password_file(tmp_path, text="\n")
    with pytest.raises(ConfigError, match=r"route\[0\].auth_password_file: .* is empty"):
        _load(f'auth_username = "u"\nauth_password_file = "{empty}"')


def test_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m365").write_text(PASSWORD)
    (tmp_path / "m365").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = _load('auth_username = "u"\nauth_password_credential = "m365"')
    [route] = settings.routes
    assert route.auth_password.reveal() == PASSWORD
    assert route.describe_auth() == "u (credential m365)"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match=r"auth_password_credential: .*CREDENTIALS_DIRECTORY"):
        _load('auth_username = "u"\nauth_password_credential = "m365"')


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ('auth_username = "u"', "route[0].auth_username: expected exactly one of"),
        (
            'auth_password_credential = "x"',
            "route[0].auth_password_credential: expected auth_username too",
        ),
        (
            'auth_mechanisms = ["PLAIN", "XOAUTH2"]',
            "route[0].auth_mechanisms: expected a non-empty list of PLAIN, LOGIN, CRAM-MD5",
        ),
        ('auth_over_plaintext = "yes"', "route[0].auth_over_plaintext: expected true or false"),
        ('auth_password_credential = "../etc"', "route[0].auth_password_credential: expected"),
    ],
)
def test_auth_key_mistakes(keys: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(keys)
    assert str(info.value).startswith(f"{FILE}: {error}")


def test_mechanisms_are_case_insensitive() -> None:
    settings = _load('auth_mechanisms = ["cram-md5", "login"]')
    [route] = settings.routes
    assert route.auth_mechanisms == ("CRAM-MD5", "LOGIN")
    assert route.describe_auth() is None
