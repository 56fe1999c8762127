"""load_policy(): every bad file gives a PolicyError naming the file, the rule and the key."""

from __future__ import annotations

import re

import pytest

from relayguard.policy import PolicyError, load_policy
from relayguard.policy.loader import DEFAULT_POLICY_FILE
from relayguard.policy.rules import RuleAction, SuspendScope, TreatAs

ROUTES = ["primary", "backup"]

GOOD = """
[[rule]]
id = "ok"
match = { code = "5xx", text = "blocked" }
action = "bounce"
"""


def write(tmp_path, text: str, name: str = "x.toml"):
    path = tmp_path / "policies" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy([path], ROUTES)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def rule(body: str, rule_id: str = "rbl-block") -> str:
    return GOOD + f'\n[[rule]]\nid = "{rule_id}"\n{body}\n'


def test_default_pack_loads_and_is_used_without_files():
    policy = load_policy([], ROUTES)
    assert policy.files == (str(DEFAULT_POLICY_FILE),)
    assert len(policy.rules) > 5
    assert len({r.id for r in policy.rules}) == len(policy.rules)
    # The default pack names no route, so it loads whatever the routes are called.
    assert load_policy([], ["only"]).rules == policy.rules


def test_load_policy_passes_queue_settings_through(tmp_path):
    policy = load_policy(
        [write(tmp_path, GOOD)], ROUTES, max_lifetime=60, backoff_start=1, backoff_max=2
    )
    assert (policy.max_lifetime, policy.backoff_start, policy.backoff_max) == (60, 1, 2)
    assert [r.id for r in policy.rules] == ["ok"]


def test_a_full_rule_loads(tmp_path):
    text = rule(
        """
        description = "egress IP listed"
        action = "reroute"
        reroute = ["backup"]
        suspend_for = "5m..10m"
        suspend_scope = "route"
        treat_as = "temporary"
        give_up_after = "48h"
        retry_after = "5m..10m"
        throttle = { max_connections = 3, for = "1h" }
        honor_retry_hint = false

        [rule.match]    # the long form of match = { ... }
        code = ["554", "5xx"]
        enhanced = "5.7.*"
        text = "blocked using"
        phase = ["rcpt", "after-data"]
        domain = ["*.outlook.com", "Hotmail.COM"]
        route = "primary"
        synthetic = false
        """
    )
    (r,) = [x for x in load_policy([write(tmp_path, text)], ROUTES).rules if x.id == "rbl-block"]
    assert r.action is RuleAction.REROUTE
    assert r.treat_as is TreatAs.TEMPORARY
    assert r.reroute == ("backup",)
    assert not r.reroute_next
    assert r.suspend_scope is SuspendScope.ROUTE
    assert (r.suspend_for.low, r.suspend_for.high) == (300, 600)
    assert r.give_up_after == 48 * 3600
    assert r.throttle is not None
    assert r.throttle.max_connections == 3
    assert not r.honor_retry_hint
    assert r.match.domains == ("*.outlook.com", "hotmail.com")
    assert r.source.endswith("x.toml rule[1]")


def test_files_load_in_order(tmp_path):
    a = write(tmp_path, GOOD, "a.toml")
    b = write(tmp_path, GOOD.replace('"ok"', '"ok2"'), "b.toml")
    assert [r.id for r in load_policy([b, a], ROUTES).rules] == ["ok2", "ok"]


@pytest.mark.parametrize(
    ("body", "key", "detail"),
    [
        ('match = { text = "(unclosed" }\naction = "bounce"', "match.text", "bad regex"),
        ('action = "explode"', "action", "unknown action 'explode'"),
        ('action = "bounce"\nretry_afer = "5m"', "retry_afer", "unknown key"),
        ('action = "bounce"\nmatch = { cdoe = "5xx" }', "match.cdoe", "unknown key"),
        (
            'action = "reroute"\nreroute = ["nope"]',
            "reroute",
            "unknown route 'nope' (routes: primary, backup)",
        ),
        (
            'action = "defer"\nmatch = { route = ["primary", "nope"] }',
            "match.route",
            "unknown route 'nope'",
        ),
        (
            'action = "defer"\nretry_after = "5 parsecs"',
            "retry_after",
            "expected a duration or a range like '5m..10m', got '5 parsecs'",
        ),
        (
            'action = "defer"\nretry_after = "10m..5m"',
            "retry_after",
            "expected a duration or a range like '5m..10m', low end first, got '10m..5m'",
        ),
        (
            'action = "defer"\ngive_up_after = "-3h"',
            "give_up_after",
            "expected a duration like '90s', '5m', '1h30m', '2d', got '-3h'",
        ),
        (
            'action = "defer"\ngive_up_after = "30m1h"',
            "give_up_after",
            "largest unit first, each unit once, got '30m1h'",
        ),
        ('action = "suspend"\nsuspend_for = "0s"', "suspend_for", "more than zero"),
        ('action = "defer"\nbackoff = { start = "5m", factor = 2 }', "backoff.cap", "required"),
        ('action = "defer"\nbackoff = { start = "1h", cap = "5m" }', "backoff.cap", "not below"),
        (
            'action = "defer"\nbackoff = { start = "5m", cap = "1h", factor = 0 }',
            "backoff.factor",
            "from 1 to 100",
        ),
        (
            'action = "defer"\nbackoff = { start = "5m", cap = "1h", jitter = 1 }',
            "backoff.jitter",
            "unknown key",
        ),
        (
            'action = "defer"\nretry_after = "5m"\nbackoff = { start = "5m", cap = "1h" }',
            "backoff",
            "not both",
        ),
        ('action = "throttle"', "throttle", "required for action 'throttle'"),
        (
            'action = "throttle"\nthrottle = { max_connections = 0, for = "1h" }',
            "throttle.max_connections",
            "from 1",
        ),
        ('action = "throttle"\nthrottle = { max_connections = 2 }', "throttle.for", "required"),
        ('action = "suspend"', "suspend_for", "required for action 'suspend'"),
        ('action = "defer"\nsuspend_scope = "route"', "suspend_scope", "only used together"),
        (
            'action = "defer"\nsuspend_for = "5m"\nsuspend_scope = "planet"',
            "suspend_scope",
            "unknown suspend_scope",
        ),
        ('action = "reroute"', "reroute", "required for action 'reroute'"),
        ('action = "defer"\nreroute = "next"', "reroute", "only used with action 'reroute'"),
        ('action = "reroute"\nreroute = "elsewhere"', "reroute", 'expected "next"'),
        ('action = "bounce"\nretry_after = "5m"', "retry_after", "not used with action 'bounce'"),
        ('action = "bounce"\nsuspend_for = "5m"', "suspend_for", "not used with action"),
        ('action = "defer"\ntreat_as = "permanent"', "treat_as", "'permanent' means bounce"),
        ('action = "bounce"\ntreat_as = "temporary"', "treat_as", "contradicts"),
        ('treat_as = "sometimes"', "treat_as", "unknown treat_as"),
        ('description = "no action"', "action", "required key is missing"),
        ('action = "defer"\nmatch = { code = "6xx" }', "match.code", "reply code"),
        ('action = "defer"\nmatch = { code = [] }', "match.code", "non-empty list"),
        ('action = "defer"\nmatch = { enhanced = "5.7" }', "match.enhanced", "enhanced status"),
        ('action = "defer"\nmatch = { enhanced = "3.1.1" }', "match.enhanced", "class 2, 4 or 5"),
        ('action = "defer"\nmatch = { phase = "quit" }', "match.phase", "unknown phase"),
        ('action = "defer"\nmatch = { domain = "bad domain" }', "match.domain", "glob"),
        ('action = "defer"\nmatch = { synthetic = "yes" }', "match.synthetic", "true or false"),
        ('action = "defer"\nhonor_retry_hint = 1', "honor_retry_hint", "true or false"),
        ('action = "defer"\nmatch = "5xx"', "match", "expected a table"),
    ],
)
def test_bad_rule_names_file_rule_and_key(tmp_path, body, key, detail):
    message = load_error(tmp_path, rule(body))
    assert f"rule 'rbl-block' (rule[1]): {key}: " in message, message
    assert detail in message, message


def test_the_issue_example_message(tmp_path):
    path = write(tmp_path, rule('action = "reroute"\nreroute = ["nope"]'))
    with pytest.raises(PolicyError) as info:
        load_policy([path], ROUTES)
    assert str(info.value) == (
        f"{path}: rule 'rbl-block' (rule[1]): reroute: unknown route 'nope' "
        "(routes: primary, backup)"
    )


def test_missing_id(tmp_path):
    message = load_error(tmp_path, GOOD + '\n[[rule]]\naction = "bounce"\n')
    assert "rule[1]: id: required key is missing" in message


@pytest.mark.parametrize("bad_id", ["builtin:5xx", "has space", "-dash-first"])
def test_bad_id(tmp_path, bad_id):
    message = load_error(tmp_path, rule('action = "bounce"', rule_id=bad_id))
    assert "(rule[1]): id: " in message


def test_duplicate_id_in_one_file(tmp_path):
    message = load_error(tmp_path, rule('action = "bounce"', rule_id="ok"))
    assert "rule 'ok' (rule[1]): id: duplicate id, first used in" in message
    assert "x.toml rule[0]" in message


def test_duplicate_id_across_files(tmp_path):
    a = write(tmp_path, GOOD, "a.toml")
    b = write(tmp_path, GOOD, "b.toml")
    with pytest.raises(PolicyError, match=r"b\.toml: rule 'ok' \(rule\[0\]\): id: duplicate id"):
        load_policy([a, b], ROUTES)


def test_not_toml(tmp_path):
    assert "not valid TOML" in load_error(tmp_path, "[[rule]\nid=")


def test_unknown_top_level_key(tmp_path):
    message = load_error(tmp_path, GOOD + "\n[settings]\nx = 1\n")
    assert "settings: unknown top-level key" in message


def test_rule_must_be_an_array_of_tables(tmp_path):
    assert "rule: expected an array of tables" in load_error(tmp_path, 'rule = "x"\n')


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match=re.escape(f"{path}: cannot read")):
        load_policy([path], ROUTES)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[rule]]\nid = "caf\xe9"\n')
    with pytest.raises(PolicyError, match="expected UTF-8"):
        load_policy([path], ROUTES)


def test_empty_file_is_only_the_builtins(tmp_path):
    assert load_policy([write(tmp_path, "# nothing\n")], ROUTES).rules == ()


# --- categories, scopes, signals and [[classify]] overrides -----------------------------


def test_rules_match_category_scope_and_signal(tmp_path):
    text = (
        '[[rule]]\nid = "x"\nmatch = { category = ["rbl_block", "throttle"], scope = "egress",'
        ' signal = "rbl.*" }\naction = "bounce"\n'
    )
    (r,) = load_policy([write(tmp_path, text)], ROUTES).rules
    assert [c.value for c in r.match.categories] == ["rbl_block", "throttle"]
    assert [s.value for s in r.match.scopes] == ["egress"]
    assert r.match.signals == ("rbl.*",)
    assert r.match.describe() == [
        "category is rbl_block or throttle",
        "scope is egress",
        "signal is rbl.*",
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'match = { category = "spam" }',
            "match.category: unknown category 'spam' (expected one of rbl_block, throttle",
        ),
        (
            'match = { scope = "planet" }',
            "match.scope: unknown scope 'planet' (expected one of egress, destination",
        ),
        ('action = "defer"\nconfirm = true', "confirm: only used with action 'bounce'"),
        ('action = "bounce"\nconfirm = "yes"', "confirm: expected true or false"),
    ],
)
def test_bad_category_keys_name_the_rule_and_key(tmp_path, body, expected):
    text = f'[[rule]]\nid = "x"\n{body}\n'
    if "action" not in body:
        text += 'action = "bounce"\n'
    assert expected in load_error(tmp_path, text)


def test_classify_overrides_load_in_order(tmp_path):
    text = (
        '[[classify]]\nid = "one"\nmatch = { text = "x" }\ncategory = "no_such_user"\n'
        '[[classify]]\nid = "two"\nmatch = { domain = "*.acme.example" }\n'
        'category = "throttle"\nscope = "recipient"\n'
    )
    policy = load_policy([write(tmp_path, text)], ROUTES)
    assert [(o.id, o.category.value, o.scope) for o in policy.overrides] == [
        ("one", "no_such_user", None),
        ("two", "throttle", "recipient"),
    ]
    assert policy.overrides[0].source.endswith("x.toml classify[0]")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'id = "o"\nmatch = { text = "x" }',
            "classify 'o' (classify[0]): category: required key is missing",
        ),
        (
            'id = "o"\ncategory = "policy"',
            "classify 'o' (classify[0]): match: required key is missing",
        ),
        (
            'id = "o"\ncategory = "policy"\nmatch = { category = "policy" }',
            "classify 'o' (classify[0]): match.category: unknown key",
        ),
        (
            'id = "o"\ncategory = "policy"\nmatch = { text = "x" }\naction = "bounce"',
            "classify 'o' (classify[0]): action: unknown key",
        ),
        ('category = "policy"\nmatch = { text = "x" }', "classify[0]: id: required key is missing"),
    ],
)
def test_bad_overrides_name_the_table_and_key(tmp_path, body, expected):
    assert expected in load_error(tmp_path, f"[[classify]]\n{body}\n")


def test_override_and_rule_ids_are_unique_across_files(tmp_path):
    a = write(tmp_path, '[[rule]]\nid = "same"\naction = "bounce"\n', "a.toml")
    b = write(
        tmp_path,
        '[[classify]]\nid = "same"\nmatch = { text = "x" }\ncategory = "policy"\n',
        "b.toml",
    )
    with pytest.raises(
        PolicyError, match=r"b.toml: classify 'same' \(classify\[0\]\): id: duplicate id"
    ):
        load_policy([a, b], ROUTES)


# --- durations and the table reader shared with config and scenario files --------------


def test_compound_durations_in_rules(tmp_path):
    text = rule(
        'action = "suspend"\nsuspend_for = "1h30m..2h"\ngive_up_after = "2d12h"\n'
        'backoff = { start = "1m30s", cap = "1h30m" }'
    )
    (r,) = [x for x in load_policy([write(tmp_path, text)], ROUTES).rules if x.id == "rbl-block"]
    assert (r.suspend_for.low, r.suspend_for.high) == (5400, 7200)
    assert r.give_up_after == 216000
    assert (r.backoff.start, r.backoff.cap) == (90, 5400)
    assert str(r.suspend_for) == "1h30m..2h"
    assert str(r.backoff) == "backoff from 1m30s, x2, capped at 1h30m"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'action = "defer"\nretry_afer = "5m"',
            "retry_afer: unknown key (known keys here: id, description, match, action,",
        ),
        (
            'action = "bounce"\nmatch = { text = "(unclosed" }',
            "match.text: bad regex '(unclosed': missing ), unterminated subpattern at position 0",
        ),
        ('action = "defer"\nmatch = "5xx"', "match: expected a table"),
        (
            'action = "defer"\nmatch = { code = "6xx" }',
            "match.code: expected a reply code like 554, '5xx' or '45x', got '6xx'",
        ),
        (
            'action = "suspend"\nsuspend_for = "0s"',
            "suspend_for: expected a duration or a range like '5m..10m', more than zero, got '0s'",
        ),
        (
            'action = "defer"\nbackoff = { start = "5m" }',
            "backoff.cap: required key is missing (a duration like '1h')",
        ),
    ],
)
def test_exact_messages(tmp_path, body, message):
    path = write(tmp_path, rule(body))
    with pytest.raises(PolicyError) as info:
        load_policy([path], ROUTES)
    assert str(info.value).startswith(f"{path}: rule 'rbl-block' (rule[1]): {message}")


def test_a_rule_that_is_not_a_table(tmp_path):
    message = load_error(tmp_path, "rule = [1]\n")
    assert message.endswith(": rule[0]: expected a table"), message


def test_suspend_and_throttle_scopes(tmp_path):
    text = rule(
        """
        action = "throttle"
        suspend_for = "5m"
        suspend_scope = "provider"
        throttle = { max_connections = 1, for = "10m", scope = "Destination" }
        match = { category = "throttle" }
        """
    )
    (r,) = [x for x in load_policy([write(tmp_path, text)], ROUTES).rules if x.id == "rbl-block"]
    assert r.suspend_scope is SuspendScope.PROVIDER
    assert r.throttle is not None
    assert r.throttle.scope is SuspendScope.DESTINATION
    # Unset: decided per reply (the provider when it is about our egress).
    plain = rule(
        'action = "suspend"\nsuspend_for = "5m"\nthrottle = { max_connections = 1, for = "1m" }'
    )
    (r,) = [x for x in load_policy([write(tmp_path, plain)], ROUTES).rules if x.id == "rbl-block"]
    assert r.suspend_scope is None
    assert r.throttle is not None
    assert r.throttle.scope is None


def test_a_bad_throttle_scope_names_the_key(tmp_path):
    message = load_error(
        tmp_path,
        rule('action = "throttle"\nthrottle = { max_connections = 1, for = "1m", scope = "isp" }'),
    )
    assert "throttle.scope" in message
    assert "unknown scope 'isp' (expected one of destination, provider, route)" in message
