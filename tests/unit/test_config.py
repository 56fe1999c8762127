"""Configuration: a full file parses to the right values; every mistake is named precisely."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from relayguard import durations
from relayguard.config import (
    ConfigError,
    NamedValueError,
    QueueSettings,
    ServerSettings,
    Table,
    format_duration,
    load_settings,
    load_settings_text,
    parse_duration,
    parse_hostport,
)

REPO = Path(__file__).resolve().parents[2]
FILE = "/etc/relayguard/test.toml"

FULL = """
[server]
listen = "0.0.0.0:2525"
hostname = "relay.example.test"
spool = "/var/spool/relayguard"
allowed_networks = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]
max_message_size = 1048576
max_recipients = 50
max_connections = 40
max_connections_per_client = 4
idle_timeout = "2m"
data_timeout = 90
shutdown_grace = "1.5s"
workers = 4

[[route]]
name = "primary"
host = "smtp1.example.net"
port = 587
source_address = "192.0.2.10"
tls = "required"
tls_verify = true
tls_ca_file = "/etc/ssl/ca.pem"
max_connections = 7
helo_name = "out.example.test"
connect_timeout = "10s"
command_timeout = "4m"
messages_per_connection = 25

[[route]]
name = "backup-2"
host = "smtp2.example.net"
tls = "none"
source_address = "2001:db8:0:0::1"

[[route]]
name = "third_route.x"
host = "10.1.2.3"
port = 2526
tls = "opportunistic"
ndr_only = true

[queue]
max_lifetime = "3d"
backoff_start = "1m"
backoff_max = "1h"
delay_warning = "4h"
keep_bounced = "72h"
keep_bounced_max_size = "512MiB"

[policy]
files = ["policies/a.toml", "/etc/relayguard/b.toml"]

[ndr]
route = "backup-2"
record_file = "./var/bounces.jsonl"

[metrics]
listen = "[::1]:9725"
"""

ROUTE = '[[route]]\nname = "r"\nhost = "h"\n'


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings_text(text, FILE)
    message = str(info.value)
    assert message.startswith(f"{FILE}: "), message
    return message


# -- the good path -------------------------------------------------------------


def test_full_config_parses_to_the_right_values():
    s = load_settings_text(FULL, FILE)
    assert s.source == Path(FILE)
    srv = s.server
    assert srv.listen == ("0.0.0.0", 2525)
    assert srv.hostname == "relay.example.test"
    assert srv.spool == Path("/var/spool/relayguard")
    assert srv.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert srv.max_message_size == 1048576
    assert srv.max_recipients == 50
    assert srv.max_connections == 40
    assert srv.max_connections_per_client == 4
    assert srv.idle_timeout == 120.0
    assert srv.data_timeout == 90.0
    assert srv.shutdown_grace == 1.5
    assert srv.workers == 4

    assert [r.name for r in s.routes] == ["primary", "backup-2", "third_route.x"]
    p = s.route("primary")
    assert (p.host, p.port, p.source_address, p.tls, p.tls_verify) == (
        "smtp1.example.net",
        587,
        "192.0.2.10",
        "required",
        True,
    )
    assert p.tls_ca_file == Path("/etc/ssl/ca.pem")
    assert p.max_connections == 7
    assert p.helo_name == "out.example.test"
    assert p.connect_timeout == 10.0
    assert p.command_timeout == 240.0
    assert p.messages_per_connection == 25

    b = s.route("backup-2")
    assert (b.host, b.port, b.tls, b.tls_verify, b.tls_ca_file) == (
        "smtp2.example.net",
        25,
        "none",
        False,
        None,
    )
    assert b.source_address == "2001:db8::1"  # normalised
    assert b.helo_name is None
    assert b.max_connections == 20
    assert (b.max_connections_total, b.node_connections) == (None, 20)
    # A cap every node shares is this node's too: it never has more on its own.
    assert replace(b, max_connections_total=6).node_connections == 6
    assert replace(b, max_connections_total=60).node_connections == 20
    t = s.route("third_route.x")
    assert (t.host, t.port, t.tls, t.ndr_only) == ("10.1.2.3", 2526, "opportunistic", True)
    assert not p.ndr_only
    # The [ndr] route leads back to the origin MTA: reports only, unless it says otherwise.
    assert b.ndr_only
    with pytest.raises(KeyError):
        s.route("nope")

    assert s.queue == QueueSettings(
        max_lifetime=3 * 86400.0,
        backoff_start=60.0,
        backoff_max=3600.0,
        delay_warning=4 * 3600.0,
        keep_bounced=72 * 3600.0,
        keep_bounced_max_size=512 << 20,
    )
    assert s.policy.files == (Path("policies/a.toml"), Path("/etc/relayguard/b.toml"))
    assert s.ndr.route == "backup-2"
    assert s.ndr.record_file == Path("./var/bounces.jsonl")
    assert s.metrics.listen == ("::1", 9725)


def test_minimal_config_takes_defaults():
    s = load_settings_text(ROUTE)
    assert s.source is None
    assert s.server == ServerSettings()
    assert s.queue == QueueSettings()
    assert s.policy.files == ()
    assert s.ndr.route is None
    assert s.ndr.record_file is None
    assert s.metrics.listen is None
    assert len(s.routes) == 1
    assert (s.routes[0].port, s.routes[0].tls) == (25, "opportunistic")


def test_ipv6_listen_in_brackets():
    s = load_settings_text('[server]\nlisten = "[::1]:10025"\n' + ROUTE)
    assert s.server.listen == ("::1", 10025)


def test_example_config_in_deploy_loads():
    path = REPO / "deploy" / "relayguard.example.toml"
    s = load_settings(path)
    assert s.source == path
    assert [r.name for r in s.routes] == ["primary", "backup"]
    assert s.server.listen == ("127.0.0.1", 10025)
    assert s.route("primary").port == 2526
    assert s.route("backup").max_connections == 10
    assert s.queue.max_lifetime == 5 * 86400
    assert s.queue.backoff_max == 4000


def test_load_settings_reads_a_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(ROUTE, encoding="utf-8")
    assert load_settings(str(path)).routes[0].name == "r"


def test_load_settings_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "relayguard.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "cannot read" in message


def test_load_settings_not_utf8(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'[server]\nhostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="expected UTF-8"):
        load_settings(path)


# -- errors --------------------------------------------------------------------


def test_not_toml():
    message = error("[server\nlisten = ")
    assert "not valid TOML" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nlisen = "127.0.0.1:25"\n' + ROUTE, "server.lisen"),
        (ROUTE + "prot = 25\n", "route[0].prot"),
        (ROUTE + '[[route]]\nname = "b"\nhost = "h"\ntsl = "none"\n', "route[1].tsl"),
        ('[queue]\nmax_lifetim = "5d"\n' + ROUTE, "queue.max_lifetim"),
        ('[policy]\nfile = ["a.toml"]\n' + ROUTE, "policy.file"),
        ('[ndr]\nroutes = "r"\n' + ROUTE, "ndr.routes"),
        ("[metrics]\nport = 9\n" + ROUTE, "metrics.port"),
        ("servr = 1\n" + ROUTE, "servr"),
        ('[servers]\nlisten = "a:1"\n' + ROUTE, "servers"),
    ],
)
def test_unknown_key_in_each_section(text, key):
    message = error(text)
    assert f"{FILE}: {key}: unknown key" in message
    assert "known keys here:" in message


def test_unknown_key_lists_the_known_ones():
    message = error(ROUTE + "prot = 25\n")
    assert "port" in message
    assert "host" in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("server = 5\n" + ROUTE, "server", "expected a table"),
        ('queue = "x"\n' + ROUTE, "queue", "expected a table"),
        ("[server]\nlisten = 10025\n" + ROUTE, "server.listen", "host:port"),
        ("[server]\nhostname = 3\n" + ROUTE, "server.hostname", "a host name"),
        ('[server]\nhostname = "  "\n' + ROUTE, "server.hostname", "a host name"),
        ('[server]\nmax_recipients = "10"\n' + ROUTE, "server.max_recipients", "a number"),
        ("[server]\nmax_connections = true\n" + ROUTE, "server.max_connections", "a number"),
        ("[server]\nmax_message_size = 1.5e6\n" + ROUTE, "server.max_message_size", "bytes"),
        (
            '[server]\nallowed_networks = "10.0.0.0/8"\n' + ROUTE,
            "server.allowed_networks",
            "a list of networks",
        ),
        ("[server]\nidle_timeout = true\n" + ROUTE, "server.idle_timeout", "a duration"),
        (ROUTE + 'port = "25"\n', "route[0].port", "a port from 1 to 65535"),
        (ROUTE + 'tls_verify = "yes"\n', "route[0].tls_verify", "true or false"),
        (ROUTE + "tls_ca_file = 1\n", "route[0].tls_ca_file", "a file path"),
        (ROUTE + '[[route]]\nname = "b"\nhost = 4\n', "route[1].host", "host name or address"),
        (ROUTE + "helo_name = 7\n", "route[0].helo_name", "a host name"),
        (ROUTE + "max_connections = 0\n", "route[0].max_connections", "a number from 1"),
        (
            ROUTE + 'max_connections_total = "all"\n',
            "route[0].max_connections_total",
            "across every node",
        ),
        (
            ROUTE + "messages_per_connection = -1\n",
            "route[0].messages_per_connection",
            "a number from 1",
        ),
        ('[policy]\nfiles = "a.toml"\n' + ROUTE, "policy.files", "a list of policy file paths"),
        ("[policy]\nfiles = [1]\n" + ROUTE, "policy.files", "a list of policy file paths"),
        ("[ndr]\nrecord_file = false\n" + ROUTE, "ndr.record_file", "a file path"),
        ('[ndr]\nroute = "a b"\n' + ROUTE, "ndr.route", "a route name"),
        ('[metrics]\nlisten = "localhost"\n' + ROUTE, "metrics.listen", "host:port with a port"),
        ("[queue]\nbackoff_start = [1]\n" + ROUTE, "queue.backoff_start", "a duration"),
    ],
)
def test_wrong_types(text, key, expected):
    message = error(text)
    assert f"{FILE}: {key}: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (ROUTE + "port = 0\n", "route[0].port", "a port from 1 to 65535, got 0"),
        (ROUTE + "port = 65536\n", "route[0].port", "a port from 1 to 65535, got 65536"),
        (
            ROUTE + '[[route]]\nname = "b"\nhost = "h"\nport = 70000\n',
            "route[1].port",
            "a port from 1 to 65535, got 70000",
        ),
        (
            '[server]\nlisten = "127.0.0.1:65536"\n' + ROUTE,
            "server.listen",
            "a port number from 0 to 65535",
        ),
        (
            '[server]\nlisten = "127.0.0.1:x"\n' + ROUTE,
            "server.listen",
            "a port number from 0 to 65535",
        ),
        (
            "[server]\nmax_message_size = 1023\n" + ROUTE,
            "server.max_message_size",
            "a size in bytes from 1024, got 1023",
        ),
        (
            "[server]\nmax_recipients = 100001\n" + ROUTE,
            "server.max_recipients",
            "a number from 1 to 100000",
        ),
        (
            "[server]\nmax_connections_per_client = 0\n" + ROUTE,
            "server.max_connections_per_client",
            "a number from 1",
        ),
    ],
)
def test_out_of_range(text, key, expected):
    message = error(text)
    assert f"{FILE}: {key}: expected {expected}" in message


def test_workers_range():
    for bad in (-1, 65):
        message = error(f"[server]\nworkers = {bad}\n" + ROUTE)
        assert f"{FILE}: server.workers: expected " in message
        assert f"from 0 to 64, got {bad}" in message
    assert load_settings_text("[server]\nworkers = 64\n" + ROUTE).server.workers == 64
    # the default: one front-end process, the main one delivers
    assert load_settings_text(ROUTE).server.workers == 1
    assert load_settings_text("[server]\nworkers = 0\n" + ROUTE).server.workers == 0


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "idle_timeout", '"5 parsecs"'),
        ("server", "data_timeout", '"-5m"'),
        ("server", "shutdown_grace", "-1"),
        ("queue", "max_lifetime", '"5 days"'),
        ("queue", "backoff_max", '"1H"'),
        ("queue", "delay_warning", '""'),
        ("queue", "keep_bounced", '"72 hours"'),
        ("queue", "keep_bounced", "-1"),
        ("queue", "keep_bounced", '"1h 30m junk"'),
    ],
)
def test_bad_durations(section, key, value):
    message = error(f"[{section}]\n{key} = {value}\n" + ROUTE)
    assert f"{FILE}: {section}.{key}: expected a duration" in message
    assert value.strip('"') in message  # the value given is quoted back


def test_keeping_bounced_copies_is_off_unless_asked_for():
    q = load_settings_text(ROUTE).queue
    assert (q.keep_bounced, q.keep_bounced_max_size) == (0.0, 1 << 30)  # Postfix keeps none
    q = load_settings_text('[queue]\nkeep_bounced = "0"\n' + ROUTE).queue
    assert q.keep_bounced == 0.0


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1073741824", 1 << 30),
        ('"1GiB"', 1 << 30),
        ('"1.5GiB"', 3 << 29),
        ('"512 MiB"', 512 << 20),
        ('"64KiB"', 64 << 10),
        ('"2TiB"', 2 << 40),
        ('"4096"', 4096),
        ('"100B"', 100),
    ],
)
def test_keep_bounced_max_size(value, size):
    text = f"[queue]\nkeep_bounced_max_size = {value}\n" + ROUTE
    assert load_settings_text(text).queue.keep_bounced_max_size == size


@pytest.mark.parametrize(
    "bad", ['"1G"', '"1GB"', '"1 gib"', '"lots"', '""', "0", "-5", "1.5", "true", '"-1MiB"']
)
def test_bad_keep_bounced_max_size(bad):
    message = error(f"[queue]\nkeep_bounced_max_size = {bad}\n" + ROUTE)
    assert (
        f"{FILE}: queue.keep_bounced_max_size: expected a size like '1GiB', '512MiB' or a "
        "number of bytes, more than zero, got " in message
    )


def test_bad_route_duration():
    message = error(ROUTE + 'connect_timeout = "5 parsecs"\n')
    assert f"{FILE}: route[0].connect_timeout: expected a duration like" in message
    assert "'5 parsecs'" in message


def test_nan_is_not_a_duration():
    # TOML allows `nan`; a NaN timeout makes every comparison false.
    message = error("[server]\nidle_timeout = nan\n" + ROUTE)
    assert f"{FILE}: server.idle_timeout: expected a duration" in message


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-net", "", "10.0.0.1/8/2"])
def test_bad_networks(bad):
    message = error(f'[server]\nallowed_networks = ["127.0.0.0/8", "{bad}"]\n' + ROUTE)
    assert f"{FILE}: server.allowed_networks: expected a list of networks" in message
    assert repr(bad) in message


def test_non_strict_network_is_accepted():
    s = load_settings_text('[server]\nallowed_networks = ["10.1.2.3/8"]\n' + ROUTE)
    assert s.server.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize("bad", ["1.2.3", "host.example", "192.0.2.300", "::g", ""])
def test_bad_source_address(bad):
    message = error(ROUTE + f'source_address = "{bad}"\n')
    assert f"{FILE}: route[0].source_address: expected an IP address" in message


@pytest.mark.parametrize("bad", ['"strict"', '"Required"', '""', "true", "1"])
def test_tls_mode_must_be_one_of_three(bad):
    message = error(ROUTE + f"tls = {bad}\n")
    assert f"{FILE}: route[0].tls: expected one of none, opportunistic, required" in message


@pytest.mark.parametrize("mode", ["none", "opportunistic", "required"])
def test_tls_modes_accepted(mode):
    assert load_settings_text(ROUTE + f'tls = "{mode}"\n').routes[0].tls == mode


def test_duplicate_route_names():
    text = ROUTE + '[[route]]\nname = "x"\nhost = "h"\n' + '[[route]]\nname = "r"\nhost = "h2"\n'
    message = error(text)
    assert f"{FILE}: route[2].name: expected a unique name" in message
    assert "'r'" in message


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[server]\nhostname = "x"\n',
        "route = []\n",
        '[route]\nname = "r"\nhost = "h"\n',  # a table, not an array of tables
        "route = 3\n",
    ],
)
def test_no_routes(text):
    message = error(text)
    assert f"{FILE}: route: expected at least one [[route]] table" in message


def test_some_route_must_carry_ordinary_mail():
    message = error(ROUTE + "ndr_only = true\n")
    assert f"{FILE}: route: expected at least one route without ndr_only = true" in message
    message = error(ROUTE + 'ndr_only = "yes"\n')
    assert f"{FILE}: route[0].ndr_only: expected true or false" in message


def test_the_ndr_route_carries_only_reports_unless_it_says_otherwise():
    two = ROUTE + '[[route]]\nname = "back"\nhost = "mta.example"\n'
    s = load_settings_text('[ndr]\nroute = "back"\n' + two, FILE)
    assert (s.route("r").ndr_only, s.route("back").ndr_only) == (False, True)
    s = load_settings_text('[ndr]\nroute = "back"\n' + two + "ndr_only = false\n", FILE)
    assert s.route("back").ndr_only is False
    message = error('[ndr]\nroute = "r"\n' + ROUTE)
    assert "expected at least one route without ndr_only = true" in message
    assert "route 'r' is the [ndr] route: set ndr_only = false on it" in message


def test_second_opinion_and_hop_settings():
    s = load_settings_text(
        "[server]\nmax_hops = 30\n[policy]\nsecond_opinions = 0\n"
        'second_opinion_suspend = "10m..20m"\n' + ROUTE,
        FILE,
    )
    assert s.server.max_hops == 30
    assert s.policy.second_opinions == 0
    assert s.policy.second_opinion_suspend == (600.0, 1200.0)
    assert load_settings_text(ROUTE, FILE).server.max_hops == 50
    message = error('[policy]\nsecond_opinion_suspend = "10m..5m"\n' + ROUTE)
    assert f"{FILE}: policy.second_opinion_suspend: expected a duration or a range" in message
    message = error("[policy]\nsecond_opinions = 9\n" + ROUTE)
    assert f"{FILE}: policy.second_opinions: expected a number from 0 to 5" in message


def test_route_entry_must_be_a_table():
    message = error("route = [1]\n")
    assert f"{FILE}: route[0]: expected a table" in message


def test_ndr_route_must_name_a_route():
    message = error('[ndr]\nroute = "missing"\n' + ROUTE)
    assert f"{FILE}: ndr.route: expected one of the routes ['r']" in message
    assert "'missing'" in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[[route]]\nhost = "h"\n', "route[0].name", "a route name"),
        ('[[route]]\nname = "r"\n', "route[0].host", "the smarthost's host name or address"),
        (ROUTE + '[[route]]\nname = "s"\n', "route[1].host", "host name"),
        (ROUTE + '[[route]]\nport = 25\nhost = "h"\n', "route[1].name", "a route name"),
    ],
)
def test_missing_required_route_keys(text, key, expected):
    message = error(text)
    assert f"{FILE}: {key}: required key is missing" in message
    assert expected in message


@pytest.mark.parametrize("bad", ['"a b"', '"x/y"', '""', "5"])
def test_bad_route_names(bad):
    message = error(f'[[route]]\nname = {bad}\nhost = "h"\n')
    assert f"{FILE}: route[0].name: expected a route name" in message


@pytest.mark.parametrize("bad", ['"::1:10025"', '"[::1:10025"', '":25"', '"host"', '"[]:25"'])
def test_bad_listen(bad):
    message = error(f"[server]\nlisten = {bad}\n" + ROUTE)
    assert f"{FILE}: server.listen: expected " in message
    assert "host" in message or "port" in message


def test_default_file_name_in_messages():
    with pytest.raises(ConfigError) as info:
        load_settings_text("x = 1\n" + ROUTE)
    assert str(info.value).startswith("<config>: x: unknown key")


# -- durations: the grammar itself is tested in test_durations.py -------------------


def test_compound_durations_and_ranges_in_config():
    s = load_settings_text(
        '[server]\nidle_timeout = "1h30m"\ndata_timeout = "2m30s"\n'
        '[queue]\nmax_lifetime = "2d12h"\nbackoff_start = "250ms"\n'
        '[policy]\nsecond_opinion_suspend = "1m30s..2h"\n' + ROUTE,
        FILE,
    )
    assert (s.server.idle_timeout, s.server.data_timeout) == (5400.0, 150.0)
    assert (s.queue.max_lifetime, s.queue.backoff_start) == (216000.0, 0.25)
    assert s.policy.second_opinion_suspend == (90.0, 7200.0)


@pytest.mark.parametrize("value", ['"30m1h"', '"5m5m"', '"1h30"', '"1h 30 parsecs"'])
def test_compound_duration_mistakes_in_config(value):
    message = error(f"[server]\nidle_timeout = {value}\n" + ROUTE)
    assert f"{FILE}: server.idle_timeout: expected a duration like '90s', '5m', '1h30m'" in message
    assert f"got {value.replace(chr(34), chr(39))}" in message


def test_duration_range_must_be_more_than_zero():
    message = error('[policy]\nsecond_opinion_suspend = "0s"\n' + ROUTE)
    assert message == (
        f"{FILE}: policy.second_opinion_suspend: expected a duration or a range like "
        "'5m..10m', more than zero, got '0s'"
    )


def test_config_reexports_the_one_duration_grammar():
    # The engine and the corpus import these from config: the same functions.
    assert parse_duration is durations.parse_duration
    assert format_duration is durations.format_duration


# -- the table reader (shared by config, policy and scenario files) -------------------


def test_table_remembers_keys_read_and_rejects_the_rest():
    t = Table("f.toml", "server", {"listen": "a:1", "lisen": "b:2"})
    assert t.get("listen", str, "x", "host:port") == "a:1"
    assert t.get("hostname", str, "dflt", "a host name") == "dflt"
    with pytest.raises(ConfigError) as info:
        t.finish()
    assert str(info.value) == (
        "f.toml: server.lisen: unknown key (known keys here: hostname, listen)"
    )


def test_table_finish_with_declared_keys():
    t = Table("f.toml: rule 'x' (rule[0])", "match", {"code": 5, "category": "x"}, ValueError)
    with pytest.raises(ValueError, match=r"^f.toml: rule 'x' \(rule\[0\]\): match.category: "):
        t.finish(("code", "text"))


def test_table_error_wording():
    def phrase(v: object) -> int:
        raise ValueError("a number from 1")

    def bare(v: object) -> int:
        raise TypeError

    def named(v: object) -> int:
        raise NamedValueError(f"unknown thing {v!r}")

    t = Table("f.toml", "route[1]", {"a": 0, "b": "x", "c": "y"})
    with pytest.raises(ConfigError) as info:
        t.get("a", phrase, 1, "a count")
    assert str(info.value) == "f.toml: route[1].a: expected a number from 1, got 0"
    with pytest.raises(ConfigError) as info:
        t.get("b", bare, 1, "a count")
    assert str(info.value) == "f.toml: route[1].b: expected a count, got 'x'"
    with pytest.raises(ConfigError) as info:
        t.get("c", named)
    assert str(info.value) == "f.toml: route[1].c: unknown thing 'y'"
    with pytest.raises(ConfigError) as info:
        t.require("d", int, "a count")
    assert str(info.value) == "f.toml: route[1].d: required key is missing (a count)"


def test_table_typed_getter_without_default_gives_none():
    t = Table("f.toml", "", {})
    assert t.get("missing", str) is None
    assert t.section("server").path == "server"
    assert t.tables("route", "[[route]] tables") == []
    t.finish()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("", 3, "f.toml: expected a table"),
        ("route[0]", [1], "f.toml: route[0]: expected a table"),
    ],
)
def test_table_must_be_a_table(path, value, message):
    with pytest.raises(ConfigError) as info:
        Table("f.toml", path, value)
    assert str(info.value) == message


def test_table_array_of_tables():
    t = Table("f.toml", "", {"route": [{"name": "a"}, 5], "window": {"x": 1}})
    with pytest.raises(ConfigError, match=r"^f.toml: route\[1\]: expected a table$"):
        t.tables("route", "an array of tables [[route]]")
    with pytest.raises(ConfigError, match=r"^f.toml: window: expected an array of tables"):
        t.tables("window", "an array of tables [[window]]")


# -- host:port ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("127.0.0.1:25", None, ("127.0.0.1", 25)),
        (" host.example:2525 ", None, ("host.example", 2525)),
        ("[::1]:10025", None, ("::1", 10025)),
        ("[2001:db8::5]:0", None, ("2001:db8::5", 0)),
        ("host", 25, ("host", 25)),
        ("host:", 25, ("host", 25)),
        ("[::1]", 587, ("::1", 587)),
        ("h:65535", None, ("h", 65535)),
    ],
)
def test_parse_hostport_good(value, default, expected):
    assert parse_hostport(value, default) == expected


@pytest.mark.parametrize(
    ("value", "default", "message"),
    [
        ("::1:25", None, "IPv6 addresses in brackets"),
        ("[::1:25", None, "IPv6 addresses in brackets"),
        ("host", None, "with a port"),
        ("[::1]", None, "with a port"),
        (":25", None, "with a host"),
        ("h:65536", None, "0 to 65535"),
        ("h:-1", None, "0 to 65535"),
        ("h:2x", 25, "0 to 65535"),
        ("h: 25", None, "0 to 65535"),
    ],
)
def test_parse_hostport_bad(value, default, message):
    with pytest.raises(ValueError, match=message):
        parse_hostport(value, default)


def test_parse_hostport_rejects_junk_after_bracket():
    # '[::1]x25' is neither '[::1]' nor '[::1]:25'; the junk must not be dropped silently.
    with pytest.raises(ValueError):
        parse_hostport("[::1]x25", 25)


# -- [dns] -----------------------------------------------------------------------


def test_dns_settings():
    s = load_settings_text(
        '[dns]\nnameservers = ["192.0.2.53", "127.0.0.1:5353", "::1", "[::1]:5354"]\n'
        'timeout = "1500ms"\ncache_size = 500\n'
        '[dns.providers]\nacme = ["*.MX.acme-hosting.example.", "smtp-in.acme.example"]\n'
        "google = []\n" + ROUTE
    )
    assert s.dns.nameservers == (
        ("192.0.2.53", 53),
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("::1", 5354),
    )
    assert s.dns.timeout == 1.5
    assert s.dns.cache_size == 500
    assert s.dns.provider_keys
    assert dict(s.dns.providers) == {
        "acme": ("*.mx.acme-hosting.example", "smtp-in.acme.example"),
        "google": (),
    }
    assert load_settings_text(ROUTE).dns.nameservers == ()  # the system's
    assert not load_settings_text("[dns]\nprovider_keys = false\n" + ROUTE).dns.provider_keys


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[dns]\nnameservers = ["ns.example"]\n', "dns.nameservers", "not 'ns.example'"),
        ('[dns]\nnameservers = "192.0.2.53"\n', "dns.nameservers", "a list of addresses"),
        ("[dns]\ntimeout = 0\n", "dns.timeout", "more than zero"),
        ("[dns]\ncache_size = 0\n", "dns.cache_size", "from 1"),
        ('[dns.providers]\nacme = ["*.example"]\n', "dns.providers.acme", "suffixes"),
        ('[dns.providers]\nacme = "mx.acme.example"\n', "dns.providers.acme", "a list"),
        ('[dns.providers]\n"a b" = []\n', "dns.providers.a b", "a provider name"),
        ("[dns]\nresolvers = []\n", "dns.resolvers", "unknown key"),
    ],
)
def test_bad_dns_settings_name_the_key(text, key, expected):
    message = error(text + ROUTE)
    assert f"{FILE}: {key}: " in message
    assert expected in message


# -- [reputation] and public_address -------------------------------------------------


def test_reputation_settings():
    s = load_settings_text(
        '[reputation]\ninterval = "90s"\n'
        '[[reputation.zone]]\nzone = "ZEN.spamhaus.org."\nlisted = ["127.0.0.2-127.0.0.11"]\n'
        'errors = ["127.255.255.0/24"]\navoid = "none"\n'
        '[[reputation.zone]]\nzone = "bl.spamcop.net"\n'
        '[[route]]\nname = "r"\nhost = "h"\nsource_address = "10.0.0.5"\n'
        'public_address = "203.0.113.5"\n'
    )
    rep = s.reputation
    assert rep.interval == 90.0
    zen, spamcop = rep.zones
    assert zen.zone == "zen.spamhaus.org"
    assert "127.0.0.11" in zen.listed[0]
    assert "127.0.0.12" not in zen.listed[0]
    assert not zen.avoid
    assert spamcop.avoid  # "all" by default
    assert s.routes[0].egress_address == "203.0.113.5"  # NAT: what receivers see
    plain = load_settings_text('[[route]]\nname = "r"\nhost = "h"\nsource_address = "10.0.0.5"\n')
    assert plain.routes[0].egress_address == "10.0.0.5"
    assert plain.reputation.zones == ()


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[[reputation.zone]]\nzone = "localhost"\n', "reputation.zone[0].zone", "a DNSBL zone"),
        ("[[reputation.zone]]\nlisted = []\n", "reputation.zone[0].zone", "required key"),
        (
            '[[reputation.zone]]\nzone = "bl.example"\nlisted = ["127.0.0"]\n',
            "reputation.zone[0].listed",
            "IPv4 answers",
        ),
        (
            '[[reputation.zone]]\nzone = "bl.example"\nerrors = []\n',
            "reputation.zone[0].errors",
            "a list of answers",
        ),
        (
            '[[reputation.zone]]\nzone = "bl.example"\navoid = "some"\n',
            "reputation.zone[0].avoid",
            "'all'",
        ),
        (
            '[[reputation.zone]]\nzone = "bl.example"\n[[reputation.zone]]\nzone = "BL.example"\n',
            "reputation.zone[1].zone",
            "given twice",
        ),
        ("[reputation]\ninterval = 0\n", "reputation.interval", "more than zero"),
        ('[reputation]\nzones = "x"\n', "reputation.zones", "unknown key"),
    ],
)
def test_bad_reputation_settings_name_the_key(text, key, expected):
    message = error(text + ROUTE)
    assert f"{FILE}: {key}: " in message
    assert expected in message


def test_public_address_must_be_an_address():
    message = error('[[route]]\nname = "r"\nhost = "h"\npublic_address = "nat.example"\n')
    assert "route[0].public_address: expected an IP address" in message
