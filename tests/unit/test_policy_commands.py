"""Operator tools: check_files and explain."""

from __future__ import annotations

import json

import pytest

from relayguard.cli import main
from relayguard.policy import load_policy
from relayguard.policy.commands import check_files, explain
from relayguard.policy.loader import DEFAULT_POLICY_FILE

ROUTES = ["primary", "backup"]

ROUTED = """
[[rule]]
id = "to-backup"
description = "send Microsoft throttling through the backup route"
match = { code = "4xx", enhanced = "4.7.*", domain = ["*.outlook.com", "outlook.com"] }
action = "reroute"
reroute = ["backup"]
suspend_for = "5m..10m"
suspend_scope = "route"
retry_after = "5m"
throttle = { max_connections = 2, for = "30m" }
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- check_files -------------------------------------------------------------------


def test_check_files_passes_the_default_pack_and_its_corpus():
    assert check_files([], ROUTES) == []
    assert check_files([DEFAULT_POLICY_FILE], None) == []


def test_check_files_reports_each_bad_file(tmp_path):
    bad_action = write(tmp_path, "a.toml", '[[rule]]\nid = "x"\naction = "explode"\n')
    bad_regex = write(
        tmp_path, "b.toml", '[[rule]]\nid = "y"\nmatch = { text = "(" }\naction = "bounce"\n'
    )
    errors = check_files([bad_action, bad_regex], ROUTES)
    assert len(errors) == 2
    assert errors[0].startswith(f"{bad_action}: rule 'x' (rule[0]): action: unknown action")
    assert errors[1].startswith(f"{bad_regex}: rule 'y' (rule[0]): match.text: bad regex")


def test_check_files_checks_route_names_only_when_given(tmp_path):
    path = write(tmp_path, "routed.toml", ROUTED)
    assert check_files([path], None) == []
    assert check_files([path], ROUTES) == []
    errors = check_files([path], ["primary", "secondary"])
    expected = (
        f"{path}: rule 'to-backup' (rule[0]): reroute: unknown route 'backup' "
        "(routes: primary, secondary)"
    )
    assert errors == [expected]


def test_check_files_finds_duplicate_ids_across_files(tmp_path):
    a = write(tmp_path, "a.toml", ROUTED)
    b = write(tmp_path, "b.toml", ROUTED)
    (error,) = check_files([a, b], ROUTES)
    assert error.startswith(f"{b}: rule 'to-backup' (rule[0]): id: duplicate id")


def test_check_files_runs_a_corpus_beside_the_file(tmp_path):
    path = write(tmp_path, "mine.toml", ROUTED)
    write(
        tmp_path,
        "mine.corpus.toml",
        'routes = ["primary", "backup"]\n'
        "[[case]]\n"
        'reply = "451 4.7.500 Server busy"\n'
        'domain = "outlook.com"\n'
        'expect = { rule = "to-backup", action = "reroute", reroute_to = ["backup"] }\n'
        "[[case]]\n"
        'reply = "451 4.7.500 Server busy"\n'
        'expect = { rule = "to-backup", action = "reroute" }\n',
    )
    (error,) = check_files([path], None)
    assert "mine.corpus.toml: case[1]" in error
    assert "rule 'builtin:4xx', expected 'to-backup'" in error


def test_check_files_reports_a_broken_corpus(tmp_path):
    path = write(tmp_path, "mine.toml", ROUTED)
    write(tmp_path, "mine.corpus.toml", '[[case]]\nreply = "451 x"\n')
    (error,) = check_files([path], None)
    assert "case[0]: expect" in error


def test_check_files_reports_an_unreadable_file(tmp_path):
    (error,) = check_files([tmp_path / "missing.toml"], ROUTES)
    assert "cannot read" in error


# --- explain ------------------------------------------------------------------------


def test_explain_a_rule_match():
    policy = load_policy([], ROUTES)
    text = explain(
        policy,
        code=554,
        text="5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        domain="Example.COM",
        routes=ROUTES,
        now=1000.0,
    )
    assert "reply:     554 5.7.1 Service unavailable" in text
    assert "route primary, domain example.com" in text
    assert "category:  rbl_block (the receiving system blocks the address" in text
    assert "scope:     egress" in text
    assert 'evidence:  rbl.host-listed: text "client host ipaddr blocked using"' in text
    assert "rule:      rbl-block (" in text
    assert "default.toml rule[" in text
    assert "the receiver blocks our egress address" in text
    assert "matches: category is rbl_block" in text
    assert "reroute = next" in text
    assert "give_up_after = 2d" in text
    assert "decision:  reroute" in text
    assert "reroute:   now, via backup" in text
    assert "suspend:   route primary for example.com until" in text
    assert "reason:    the receiver blocks our egress address; rerouting via backup" in text


def test_explain_shows_the_second_opinion():
    policy = load_policy([], ROUTES)
    text = explain(
        policy,
        code=550,
        text="5.7.350 Remote server returned message detected as spam",
        routes=ROUTES,
        now=1000.0,
    )
    assert "category:  spam_content" in text
    assert "confirm = true (a second opinion from another egress first)" in text
    assert "decision:  reroute" in text
    assert "second opinion: backup (another egress) is asked before bouncing" in text
    assert "provisionally, while the second opinion is out" in text
    # the last route: nobody left to ask, so it bounces
    text = explain(
        policy,
        code=550,
        text="5.7.350 Remote server returned message detected as spam",
        routes=ROUTES,
        route="backup",
        tried=["primary"],
        now=1000.0,
    )
    assert "decision:  bounce" in text
    assert "second opinion:" not in text


def test_explain_a_deferral_with_throttle(tmp_path):
    policy = load_policy([write(tmp_path, "p.toml", ROUTED)], ROUTES)
    text = explain(
        policy,
        code=451,
        text="4.7.500 Server busy",
        domain="outlook.com",
        route="backup",
        routes=ROUTES,
        now=0.0,
        seed=3,
    )
    assert "rule:      to-backup" in text
    assert "and: domain is *.outlook.com or outlook.com" in text
    assert "decision:  defer" in text
    assert "retry:     at 300 (in 5m)" in text
    assert "suspend:   route backup for every destination" in text
    assert "throttle:  route backup for outlook.com to 2 connections until 1800 (for 30m)" in text
    assert "no other route left" in text


def test_explain_builtins(tmp_path):
    policy = load_policy([write(tmp_path, "empty.toml", "# no rules\n")], ROUTES)
    text = explain(
        policy, code=554, text="5.9.9 odd", routes=ROUTES, route="backup", tried=["primary"]
    )
    assert "rule:      builtin:5xx (built-in)" in text
    assert "after a second opinion from another egress" in text
    assert "bounce:    NDR with 554 5.9.9 odd" in text
    text = explain(
        policy,
        code=421,
        text="4.4.1 Connection refused",
        phase="connect",
        synthetic=True,
        routes=ROUTES,
    )
    assert "builtin:fallback-relay" in text
    assert "synthetic" in text
    assert "reroute:   now, via backup" in text


def test_explain_is_reproducible_per_seed():
    policy = load_policy([], ROUTES)
    kw = {"code": 451, "text": "4.7.500 Server busy. Please try again later", "routes": ROUTES}
    assert explain(policy, seed=1, **kw) == explain(policy, seed=1, **kw)


def test_explain_rejects_an_unknown_phase():
    policy = load_policy([], ROUTES)
    with pytest.raises(ValueError, match="unknown phase 'quit'"):
        explain(policy, code=550, text="x", phase="quit", routes=ROUTES)


# --- classify ---------------------------------------------------------------------------


def test_cli_classify_prints_one_json_object_per_line_in_order(tmp_path, capsys):
    replies = tmp_path / "replies.txt"
    replies.write_text(
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked\n"
        "\n"
        "550-5.1.1 The email account that you tried to reach does not exist. 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser\n"
        "451 4.7.1 Greylisted, please try again in 5 minutes\n"
        "no code here\n",
        encoding="utf-8",
    )
    assert main(["policy", "classify", "--json", str(replies)]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.splitlines()]
    assert [(r["category"], r["scope"], r["action"], r["rule"]) for r in rows] == [
        ("rbl_block", "egress", "reroute", "rbl-block"),
        ("no_such_user", "recipient", "bounce", "user-unknown"),
        ("temporary_other", "destination", "defer", "greylisted"),
    ]
    assert [r["retry_in"] for r in rows] == [None, None, 300.0]
    assert set(rows[0]) == {"reply", "category", "scope", "rule", "evidence", "action", "retry_in"}
    assert rows[0]["evidence"].startswith("rbl.client-blocked: ")
    assert "line 5: expected a reply line starting with a 3-digit code" in err


def test_cli_policy_check_prints_the_confusion_table(capsys):
    assert main(["policy", "check"]) == 0
    out = capsys.readouterr().out
    assert "reply corpus: label (rows) by classification (columns)" in out
    assert "(100.0%)" in out


def test_explain_names_the_key_a_suspension_uses():
    policy = load_policy([], ROUTES)
    blocked = "5.7.1 Service unavailable; Client host [192.0.2.1] blocked"
    text = explain(
        policy,
        code=554,
        text=blocked,
        domain="contoso.example",
        routes=ROUTES,
        mx=["contoso-example.mail.protection.outlook.com"],
    )
    assert "provider:  microsoft (MX contoso-example.mail.protection.outlook.com)" in text
    assert (
        "suspend:   route primary for provider:microsoft (every domain whose MX is at "
        "microsoft)" in text
    )
    alone = explain(policy, code=554, text=blocked, domain="contoso.example", routes=ROUTES)
    assert "provider:  not given" in alone
    assert "suspend:   route primary for contoso.example until" in alone
    own = explain(
        policy, code=554, text=blocked, domain="own.example", routes=ROUTES, mx=["mx.own.example"]
    )
    assert "none known for MX mx.own.example: the domain is its own key" in own


def test_explain_cli_takes_mx(capsys):
    status = main(
        [
            "policy",
            "explain",
            "--code",
            "451",
            "--text",
            "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation",
            "--domain",
            "example.org",
            "--mx",
            "aspmx.l.google.com",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert (
        "throttle:  route primary for provider:google (every domain whose MX is at google)" in out
    )
