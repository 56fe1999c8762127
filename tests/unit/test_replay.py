"""relayguard replay: the scripted upstream, determinism, the shipped scenarios, --compare,
and the report files. Small inputs, so the whole file runs in a few seconds."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from relayguard import logging as rg_logging
from relayguard.cli import main
from relayguard.clock import VirtualClock
from relayguard.config import RouteSettings
from relayguard.model import Phase, Transaction
from relayguard.replay import runner
from relayguard.replay.driver import replay
from relayguard.replay.inputs import read_input
from relayguard.replay.sample import generate_mbox
from relayguard.replay.scenario import (
    ScenarioError,
    describe_window,
    load_scenario,
    parse_scenario,
)
from relayguard.replay.upstream import SimulatedUpstream

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
PLAIN = ROOT / "policies" / "plain-mta.toml"


@pytest.fixture(autouse=True)
def quiet_logs():
    rg_logging.configure(level="error")


@pytest.fixture(scope="module")
def mbox(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "sample.mbox"
    path.write_bytes(generate_mbox(160, span=36 * 3600))
    return path


def _scenario(windows: str, extra: str = "") -> object:
    return parse_scenario(
        tomllib.loads(
            '[scenario]\nduration = "1h"\n[upstream]\nlatency = "2s"\n' + extra + windows
        ),
        "t.toml",
    )


ROUTES = (
    RouteSettings("A", "a.example.net", source_address="192.0.2.10", max_connections=2),
    RouteSettings("B", "b.example.net", source_address="198.51.100.7"),
)


def _send(upstream: SimulatedUpstream, clock: VirtualClock, route: str, rcpts: list[str]):
    """What the upstream answers now; the clock moves on by the answer's latency."""
    tx = Transaction("s@example.org", [(a, ()) for a in rcpts], b"Subject: x\r\n\r\nx\r\n")
    outcome, latency = upstream.answer(route, tx, clock.now())
    clock.advance(latency)
    return outcome


async def test_upstream_answers_per_window_phase_and_source():
    scenario = _scenario("""
[[window]]
route = "B"
reply = "refused"
[[window]]
source = "192.0.2.10"
domain = "listed.example"
phase = "greeting"
reply = "554 5.7.1 Service unavailable; Client host [{source}] blocked using zen.spamhaus.org"
[[window]]
domain = "*.example"
not_domain = "listed.example"
phase = "rcpt"
reply = "550 5.1.1 User unknown"
[[window]]
from = "30m"
phase = "after-data"
probability = 0.5
reply = "451 4.7.500 Server busy. Please try again later"
""")
    clock = VirtualClock(1000.0)
    up = SimulatedUpstream(scenario, ROUTES, clock, random.Random(1), t0=1000.0)

    refused = _send(up, clock, "B", ["x@gmail.com", "y@gmail.com"])
    [reply] = set(refused.replies.values())
    assert reply.synthetic
    assert reply.phase is Phase.CONNECT
    assert reply.code == 421
    assert reply.text == "connect to b.example.net[b.example.net]:25: Connection refused"

    listed = _send(up, clock, "A", ["x@listed.example"])
    assert listed.replies["x@listed.example"].render() == (
        "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org"
    )
    assert listed.replies["x@listed.example"].phase is Phase.GREETING

    start = clock.now()
    mixed = _send(up, clock, "A", ["u@other.example", "ok@gmail.com"])
    assert clock.now() - start == 2.0  # the latency passes on the virtual clock
    assert mixed.replies["u@other.example"].render() == "550 5.1.1 User unknown"
    assert mixed.replies["u@other.example"].phase is Phase.RCPT
    assert mixed.replies["ok@gmail.com"].render() == "250 2.0.0 Ok: queued"

    clock.set(1000.0 + 1800)
    codes = [
        (_send(up, clock, "A", ["ok@gmail.com"])).replies["ok@gmail.com"].code for _ in range(40)
    ]
    assert 8 < codes.count(451) < 32
    assert set(codes) == {250, 451}


def test_scenario_errors_name_the_file_and_key():
    with pytest.raises(ScenarioError, match=r"t.toml: window\[0\].probability: expected a number"):
        _scenario('[[window]]\nprobability = 2\nreply = "451 busy"\n')
    with pytest.raises(ScenarioError, match=r"window\[0\].phase: expected 'connect'"):
        _scenario('[[window]]\nphase = "rcpt"\nreply = "refused"\n')
    with pytest.raises(ScenarioError, match=r"window\[0\].colour: unknown key"):
        _scenario('[[window]]\ncolour = "red"\nreply = "451 busy"\n')
    with pytest.raises(ScenarioError, match=r"route\[0\].port: expected a port"):
        _scenario("", '[[route]]\nname = "A"\nhost = "a"\nport = 99999\n').settings()
    scenario = _scenario('[[window]]\nroute = "C"\nreply = "451 busy"\n')
    with pytest.raises(ScenarioError, match=r"window\[0\].route: expected one of the routes"):
        scenario.check_routes(("A", "B"))


def test_scenario_durations_use_the_one_grammar():
    scenario = _scenario(
        '[[window]]\nfrom = "1h30m"\nuntil = "2d12h"\nlatency = "250ms..1m30s"\n'
        'reply = "451 busy"\n',
        '[arrivals]\nmode = "spread"\nover = "5m30s"\n',
    )
    (w,) = scenario.windows
    assert (w.start, w.end) == (5400.0, 216000.0)
    assert (w.latency.low, w.latency.high) == (0.25, 90.0)
    assert scenario.arrivals.over == 330.0
    assert describe_window(w) == "1h30m-2d12h every route: 451 busy (rcpt)"


@pytest.mark.parametrize(
    ("windows", "extra", "message"),
    [
        (
            '[[window]]\nfrom = "6 hours"\nreply = "451 busy"\n',
            "",
            (
                "t.toml: window[0].from: expected a duration like '90s', '5m', '1h30m', '2d', "
                "got '6 hours'"
            ),
        ),
        (
            '[[window]]\nlatency = "2s..1s"\nreply = "451 busy"\n',
            "",
            (
                "t.toml: window[0].latency: expected a duration or a range like '5m..10m', "
                "low end first, got '2s..1s'"
            ),
        ),
        (
            '[[window]]\nphase = "rcpt"\n',
            "",
            (
                "t.toml: window[0].reply: required key is missing (a reply like "
                "'451 4.7.500 Server busy' or one of refused, timeout, drop)"
            ),
        ),
        (
            "",
            '[arrivals]\nmode = "spread"\nspan = "1h"\n',
            "t.toml: arrivals.span: unknown key (known keys here: at, mode, over)",
        ),
    ],
)
def test_scenario_exact_messages(windows, extra, message):
    with pytest.raises(ScenarioError) as info:
        _scenario(windows, extra)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("window = [3]\n", "t.toml: window[0]: expected a table"),
        ('window = "x"\n', "t.toml: window: expected an array of tables [[window]]"),
        ("arrivals = 5\n", "t.toml: arrivals: expected a table"),
        (
            "[colours]\nx = 1\n",
            (
                "t.toml: colours: unknown key (known keys here: arrivals, mx, ndr, queue, "
                "route, scenario, server, upstream, window)"
            ),
        ),
    ],
)
def test_scenario_top_level_messages(top, message):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(tomllib.loads(top + '[scenario]\nduration = "1h"\n'), "t.toml")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[scenario]\nname = "x"\n', "t.toml: scenario.duration: required key is missing"),
        ('[scenario]\nduration = "0s"\n', "t.toml: scenario.duration: expected a duration more"),
    ],
)
def test_scenario_duration_is_required_and_more_than_zero(text, message):
    with pytest.raises(ScenarioError, match=re.escape(message)):
        parse_scenario(tomllib.loads(text), "t.toml")


def _run(mbox: Path, scenario: str, *, seed: int = 1, compare: bool = False) -> dict:
    return runner.run_files(
        SCENARIOS / scenario, mbox, seed=seed, compare=[PLAIN] if compare else ()
    )


def test_same_seed_same_bytes_and_another_seed_differs(mbox):
    one = runner.to_json(_run(mbox, "rbl-incident.toml", seed=7))
    assert one == runner.to_json(_run(mbox, "rbl-incident.toml", seed=7))
    assert one != runner.to_json(_run(mbox, "rbl-incident.toml", seed=8))
    assert "queue_id" not in one


def test_same_bytes_across_processes(mbox, tmp_path):
    """Hash randomisation must not leak in: another interpreter gives the same bytes."""
    code = (
        "import sys; from relayguard import logging as l; l.configure(level='error');"
        "from relayguard.replay import runner;"
        "sys.stdout.write(runner.to_json(runner.run_files(sys.argv[1], sys.argv[2], seed=3)))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, str(SCENARIOS / "throttling.toml"), str(mbox)],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": str(h)},
            cwd=ROOT,
        ).stdout
        for h in (1, 2)
    }
    assert len(outs) == 1
    assert json.loads(outs.pop())["runs"][0]["messages"]["arrived"] == 160


@pytest.mark.parametrize("name", ["rbl-incident.toml", "throttling.toml", "smarthost-outage.toml"])
def test_each_shipped_scenario_replays(mbox, name):
    doc = _run(mbox, name)
    [run] = doc["runs"]
    m = run["messages"]
    assert m["arrived"] == 160
    assert m["delivered"] + m["bounced"] + m["partly_delivered"] + m["still_queued"] == 160
    assert m["delivered"] > 120
    assert run["transactions"] >= 160
    assert len(run["timeline"]["queue"]) == 289
    assert load_scenario(SCENARIOS / name).duration == doc["scenario"]["duration"]


def test_plain_mta_bounces_what_the_default_policy_delivers_through_route_b(mbox):
    prepared = runner.prepare(SCENARIOS / "rbl-incident.toml", mbox, compare=[PLAIN])
    messages = read_input(mbox).messages
    finals = []
    for spec in prepared.runs:
        kept: dict = {}
        replay(
            prepared.settings,
            spec.policy,
            prepared.scenario,
            messages,
            seed=1,
            on_stats=lambda s, kept=kept: kept.update(s.final),
        )
        finals.append(kept)
    default, plain = finals
    via_b = [
        i for i, (outcome, routes) in default.items() if outcome == "delivered" and routes == ("B",)
    ]
    assert len(via_b) > 40
    bounced = [i for i in via_b if plain[i][0] == "bounced"]
    assert len(bounced) >= 0.8 * len(via_b)
    # the receivers that refuse at RCPT while A is listed: every one of those bounces
    rcpt_listed = [
        i
        for i in via_b
        if messages[i].envelope.recipients[0].domain
        in ("example.com", "example.net", "mail.example")
        and messages[i].arrival - messages[0].arrival < 24 * 3600
    ]
    assert rcpt_listed
    assert all(plain[i][0] == "bounced" for i in rcpt_listed)
    delivered = sum(1 for o, _ in default.values() if o == "delivered")
    assert delivered > 0.95 * len(messages)


def test_cli_compare_writes_json_and_html_report(mbox, tmp_path, capsys):
    out = tmp_path / "report"
    args = [
        "replay",
        "--scenario",
        str(SCENARIOS / "rbl-incident.toml"),
        "--input",
        str(mbox),
        "--compare",
        str(PLAIN),
        "--report",
        str(out),
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "default" in table
    assert "plain-mta" in table
    assert "rbl-block (reroute)" in table
    doc = json.loads((out / "result.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["default", "plain-mta"]
    assert doc["runs"][1]["policy_files"] == ["policies/plain-mta.toml"]
    default, plain = doc["runs"]
    assert plain["messages"]["bounced"] > 5 * default["messages"]["bounced"]
    assert (
        plain["failures_by_rule"]["plain-5xx"] > default["routes"]["B"]["recipients_delivered"] / 2
    )
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 1 + 3 * 2  # the scenario timeline, then 3 plots per policy
    for title in ("Queue depth by state", "Deliveries per route", "Time to delivery"):
        assert html.count(title) >= 2
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    first = (out / "result.json").read_bytes()
    assert main(args) == 0
    assert (out / "result.json").read_bytes() == first  # no wall-clock time in the JSON


def test_cli_reports_bad_files_without_a_traceback(mbox, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nduration = "1h"\n[[window]]\nreply = "hello"\n')
    assert main(["replay", "--scenario", str(bad), "--input", str(mbox)]) == 2
    assert "bad.toml: window[0].reply: expected a reply" in capsys.readouterr().err
    assert (
        main(
            [
                "replay",
                "--scenario",
                str(SCENARIOS / "throttling.toml"),
                "--input",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_scenario_mx_gives_the_replay_provider_keys():
    scenario = parse_scenario(
        tomllib.loads(
            '[scenario]\nduration = "1h"\n'
            '[mx]\n"*.contoso.example" = "contoso.mail.protection.outlook.com"\n'
            '"fabrikam.example" = ["mx1.fabrikam.example", "mx2.fabrikam.example"]\n'
        ),
        "t.toml",
    )
    assert scenario.mx_of("EU.contoso.example") == ("contoso.mail.protection.outlook.com",)
    assert scenario.mx_of("fabrikam.example") == ("mx1.fabrikam.example", "mx2.fabrikam.example")
    assert scenario.mx_of("other.example") == ()
    with pytest.raises(ScenarioError, match=r"t\.toml: mx\.x\.example: expected an MX host"):
        parse_scenario(
            tomllib.loads('[scenario]\nduration = "1h"\n[mx]\n"x.example" = 5\n'), "t.toml"
        )


PROVIDER_SCENARIO = """
[scenario]
duration = "2h"
[arrivals]
mode = "spread"
over = "1h"
[[route]]
name = "A"
host = "a.example.net"
source_address = "192.0.2.10"
[[route]]
name = "B"
host = "b.example.net"
source_address = "198.51.100.7"
[[window]]
source = "192.0.2.10"
domain = ["contoso.example", "fabrikam.example"]
phase = "rcpt"
reply = "554 5.7.1 Service unavailable; Client host [{source}] blocked"
"""

PROVIDER_MX = """
[mx]
"contoso.example" = "contoso-example.mail.protection.outlook.com"
"fabrikam.example" = "fabrikam-example.mail.protection.outlook.com"
"""


def test_the_replay_keys_blocks_by_provider_from_its_mx_table(tmp_path):
    mbox = tmp_path / "in.mbox"
    mbox.write_text(
        "".join(
            f"From s@origin.example Thu Jan  1 00:00:00 2026\nFrom: s@origin.example\n"
            f"To: u{i}@{('contoso', 'fabrikam')[i % 2]}.example\nMessage-ID: <m{i}@x>\n"
            f"Subject: {i}\n\nhi\n\n"
            for i in range(40)
        )
    )

    def attempts_on_a(text: str) -> int:
        path = tmp_path / "s.toml"
        path.write_text(text)
        [run] = runner.run_files(path, mbox)["runs"]
        assert run["messages"]["delivered"] == 40
        return int(run["routes"]["A"]["attempts"])

    alone = attempts_on_a(PROVIDER_SCENARIO)
    grouped = attempts_on_a(PROVIDER_SCENARIO + PROVIDER_MX)
    # Each domain rediscovers the block on its own; grouped, one refusal holds A back
    # from both Microsoft-hosted domains.
    assert grouped < alone
    assert grouped * 2 <= alone + 2
