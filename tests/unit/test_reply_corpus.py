"""The reply corpus (policies/corpus/): real replies, each classified as labelled.

These lines are facts from public sources; the rules that read them are ours. A
failure here names the line, what relayguard made of it and which signal decided.
"""

from __future__ import annotations

import collections

import pytest

from relayguard.model import Action
from relayguard.policy import load_policy
from relayguard.policy.categories import Category
from relayguard.policy.commands import classify_line, corpus_report
from relayguard.policy.reply_corpus import check_corpus, load_reply_corpus, problems

CORPUS = load_reply_corpus()
DEFAULT = load_policy([], ["primary", "backup"])


def test_the_corpus_is_large_and_covers_every_category():
    assert len(CORPUS) >= 500
    assert len({r.line.strip().lower() for r in CORPUS}) == len(CORPUS), "duplicate lines"
    counts = collections.Counter(r.category for r in CORPUS)
    assert {c: n for c, n in counts.items() if n < 25} == {}
    assert set(counts) == set(Category)


def test_every_line_names_its_source():
    for r in CORPUS:
        assert r.source.startswith(("http://", "https://")) or "@" in r.source, r.where


@pytest.mark.parametrize("reply", CORPUS, ids=lambda r: r.where)
def test_line_classifies_as_labelled(reply):
    found = reply.classify()
    assert problems(reply, found) == [], f"{reply.line!r} → {found.signal}: {found.evidence}"


def test_traps_have_lines_of_their_own():
    traps = [r for r in CORPUS if r.note.startswith("trap")]
    assert len(traps) >= 60

    # The kinds the issue names: each is in the corpus and classified by its meaning.
    def has(category, predicate):
        return any(r.category is category and predicate(r.line.lower()) for r in CORPUS)

    assert has(Category.TEMPORARY_OTHER, lambda t: "grey" in t and "blocked" in t)
    assert has(Category.NO_SUCH_USER, lambda t: " 5.7.1 " in t)
    assert has(Category.NO_SUCH_USER, lambda t: t.startswith("552"))
    assert has(Category.RBL_BLOCK, lambda t: " 5.1." in t[:10] or " 5.2." in t[:10])
    assert has(Category.MAILBOX_FULL, lambda t: " 5.1.1 " in t)


def test_confusion_table_of_the_corpus():
    confusion, failures = check_corpus(CORPUS)
    assert failures == []
    assert sum(confusion.values()) == len(CORPUS)
    table, wrong = corpus_report([], None)
    assert wrong == 0
    assert table.splitlines()[0].startswith("reply corpus: label (rows)")
    assert f"{len(CORPUS)} of {len(CORPUS)} replies classified as labelled (100.0%)" in table


# What the first attempt of a fresh message does with each real reply, two routes up:
# losing mail to a transient block is the expensive mistake.
NEVER_BOUNCED_FIRST = {Category.RBL_BLOCK, Category.THROTTLE, Category.TEMPORARY_OTHER}


def test_no_transient_kind_is_bounced_on_the_first_try():
    bounced = [
        r.line
        for r in CORPUS
        if r.category in NEVER_BOUNCED_FIRST
        and classify_line(DEFAULT, r.line)["action"] == Action.BOUNCE.value
    ]
    assert bounced == []


def test_rbl_blocks_reroute_and_addressing_failures_bounce():
    for r in CORPUS:
        row = classify_line(DEFAULT, r.line)
        if r.category is Category.RBL_BLOCK:
            assert row["action"] == "reroute", r.line
        permanent = r.line.startswith("5")
        if r.category in (Category.NO_SUCH_USER, Category.MESSAGE_TOO_BIG) and permanent:
            assert row["action"] == "bounce", r.line
        if not permanent:
            assert row["action"] in ("defer", "reroute"), r.line
