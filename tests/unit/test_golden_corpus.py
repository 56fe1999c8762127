"""The default policy against its golden corpus of real upstream replies."""

from __future__ import annotations

import pytest

from relayguard.policy import load_policy
from relayguard.policy.corpus import corpus_for, load_corpus, run_case, run_corpus
from relayguard.policy.loader import DEFAULT_POLICY_FILE

CORPUS = load_corpus(corpus_for(DEFAULT_POLICY_FILE))
POLICY = load_policy([DEFAULT_POLICY_FILE], CORPUS.routes)


@pytest.mark.parametrize("case", CORPUS.cases, ids=lambda c: f"{c.index}-{c.expect['rule']}")
def test_golden_case(case):
    assert run_case(POLICY, case) == []


def test_corpus_covers_every_rule_of_the_default_pack():
    expected = {c.expect["rule"] for c in CORPUS.cases}
    # Each rule but the pure-synonym ones has at least one real reply in the corpus.
    untested = {r.id for r in POLICY.rules} - expected
    assert untested == set()


def test_run_corpus_reports_nothing_for_the_default_pack():
    assert run_corpus(corpus_for(DEFAULT_POLICY_FILE), [DEFAULT_POLICY_FILE]) == []


def test_run_corpus_reports_a_wrong_expectation(tmp_path):
    corpus = tmp_path / "x.corpus.toml"
    corpus.write_text(
        'routes = ["primary", "backup"]\n'
        "[[case]]\n"
        'reply = "552 5.2.2 Mailbox full"\n'
        'expect = { rule = "mailbox-full", action = "defer", retry = "5m" }\n',
        encoding="utf-8",
    )
    problems = run_corpus(corpus, [DEFAULT_POLICY_FILE])
    assert len(problems) == 1
    assert "case[0]" in problems[0]
    assert "action 'bounce', expected 'defer'" in problems[0]
    assert "retry in None" in problems[0]
