"""classify(): the text decides before the codes; the index never changes an answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.model import Phase, Reply
from relayguard.policy import hints, load_policy
from relayguard.policy.categories import Category, Scope
from relayguard.policy.classify import (
    classify,
    match_text,
    match_text_unindexed,
    normalise,
    phrase_keys,
)
from relayguard.policy.hints import HINT_MAX, HINT_MIN, retry_hint
from relayguard.policy.reply_corpus import load_reply_corpus
from relayguard.policy.reply_line import reply_from_line
from relayguard.policy.signals import SIGNALS

CORPUS_TEXTS = [normalise(reply_from_line(r.line).text) for r in load_reply_corpus()]
WORDS = sorted({w for t in CORPUS_TEXTS for w in t.split()})


def line(text: str, phase: Phase | None = None):
    return classify(reply_from_line(text, phase))


def test_every_phrase_is_indexable():
    for signal in SIGNALS:
        for phrase in signal.phrases:
            assert phrase_keys(phrase), (signal.id, phrase)


@pytest.mark.parametrize("code", [421, 451, 550, 554])
def test_index_gives_the_same_answer_as_trying_every_phrase_on_the_corpus(code):
    for text in CORPUS_TEXTS:
        assert match_text(text, code) == match_text_unindexed(text, code), text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=25), st.sampled_from([450, 550]))
def test_index_gives_the_same_answer_on_shuffled_corpus_words(words, code):
    text = " ".join(words)
    assert match_text(text, code) == match_text_unindexed(text, code)


@settings(max_examples=200, deadline=None)
@given(st.integers(200, 599), st.text(max_size=300), st.sampled_from(list(Phase)))
def test_classify_never_raises_and_always_has_a_category(code, text, phase):
    found = classify(Reply.parse(code, text, phase))
    assert isinstance(found.category, Category)
    assert isinstance(found.scope, Scope)
    assert found.signal
    assert found.evidence


def test_normalise_makes_addresses_words_and_drops_gmail_boilerplate():
    text = normalise(
        "Client host [192.0.2.1] 2001:db8::1 x.xx.xx.xx <Bob@Example.COM> e-mail. "
        "To reduce the amount of spam sent to Gmail, this message has been blocked."
    )
    assert text == (
        "client host ipaddr ipaddr ipaddr emailaddr email. , this message has been blocked."
    )


@pytest.mark.parametrize(
    ("reply", "category"),
    [
        # the code class does not decide
        ("550 5.1.1 Client host [192.0.2.1] blocked using zen.spamhaus.org", Category.RBL_BLOCK),
        ("421 4.7.1 Client host [192.0.2.1] blocked using bl.spamcop.net", Category.RBL_BLOCK),
        ("550 5.1.1 <u@example.com>: mailbox quota exceeded", Category.MAILBOX_FULL),
        (
            "550 5.7.1 <u@example.com>: Recipient address rejected: User unknown",
            Category.NO_SUCH_USER,
        ),
        ("552 5.1.1 mailbox not found", Category.NO_SUCH_USER),
        ("550 5.4.5 Daily user sending quota exceeded", Category.THROTTLE),
        # a greylist that says "blocked using grey..."
        ("450 4.7.1 Client host blocked using grey.example.net", Category.TEMPORARY_OTHER),
        # a listed sender domain is about the content, not our address
        (
            "554 5.7.1 Sender address [a@b.example] blocked using dbl.spamhaus.org",
            Category.SPAM_CONTENT,
        ),
        (
            "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation",
            Category.THROTTLE,
        ),
        ("550 5.7.1 Recipient address rejected: Greylisted", Category.TEMPORARY_OTHER),
        # the enhanced code decides only when the text says nothing specific
        ("550 5.7.606 Access denied", Category.RBL_BLOCK),
        ("552 5.2.2 Sorry", Category.MAILBOX_FULL),
        ("451 4.7.1 Try again later", Category.TEMPORARY_OTHER),
        # last of all, the class
        ("554 Transaction failed", Category.PERMANENT_OTHER),
        ("421 nope", Category.TEMPORARY_OTHER),
    ],
)
def test_readings(reply, category):
    assert line(reply).category is category


def test_phase_decides_whose_problem_a_bare_refusal_is():
    assert line("554 No SMTP service here", Phase.GREETING).category is Category.RBL_BLOCK
    found = line("501 5.0.0 Invalid domain name", Phase.HELO)
    assert (found.category, found.scope) == (Category.POLICY, Scope.EGRESS)
    sender = line("553 5.1.0 example.org does not exist", Phase.MAIL)
    assert (sender.category, sender.signal) == (Category.POLICY, "no-such-user+sender")
    assert line("550 5.1.7 No such domain example.org").category is Category.POLICY


def test_scope_follows_the_words():
    assert (
        line("450 4.2.1 The user you are trying to contact is receiving mail at a rate").scope
        is Scope.RECIPIENT
    )
    assert line("421 Too many concurrent connections from your IP").scope is Scope.EGRESS
    assert line("452 4.5.3 Too many recipients").scope is Scope.MESSAGE


def test_evidence_names_the_signal_and_the_words():
    found = line("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked")
    assert found.signal == "rbl.client-blocked"
    assert found.evidence == 'text "client host ipaddr blocked"'
    found = line("550 5.7.641 Access denied")
    assert found.signal == "code:5.7.641"
    assert "banned sending IP" in found.evidence


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Greylisted for 5 minutes", 300),
        ("greylisted, please try again in 299 seconds", 299),
        ("please retry for 60 seconds", 60),
        ("try again in an hour", 3600),
        ("come back in half an hour", 1800),
        ("retry after 2 hours", 7200),
        ("please wait 5 mins", 300),
        ("blocked for an hour", 3600),
        ("try again in 2 seconds", HINT_MIN),
        ("try again in 30 days", HINT_MAX),
    ],
)
def test_retry_hints(text, seconds):
    assert retry_hint(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["Try again later", "limit of 500 messages in 24 hours", "100 messages per 5 minutes", ""],
)
def test_no_hint_where_the_text_measures_a_rate_or_names_no_time(text):
    assert retry_hint(text) is None


def test_classification_carries_the_hint():
    assert line("451 4.7.1 Greylisted, please try again in 5 minutes").retry_in == 300


def test_an_operator_override_comes_first(tmp_path):
    path = tmp_path / "local.toml"
    path.write_text(
        """
[[classify]]
id = "acme-unknown"
match = { domain = "*.acme.example", enhanced = "5.7.1", text = 'not authorized' }
category = "no_such_user"
""",
        encoding="utf-8",
    )
    policy = load_policy([path], ["primary", "backup"])
    reply = reply_from_line("550 5.7.1 Delivery not authorized")
    found = classify(reply, destination="mx.acme.example", overrides=policy.overrides)
    assert (found.category, found.scope) == (Category.NO_SUCH_USER, Scope.RECIPIENT)
    assert found.signal == "override:acme-unknown"
    elsewhere = classify(reply, destination="other.example", overrides=policy.overrides)
    assert elsewhere.category is Category.POLICY


@pytest.mark.parametrize(
    ("logged", "code", "enhanced", "phase"),
    [
        ("smtp; 550 5.1.1 <a@b>: User unknown", 550, "5.1.1", Phase.RCPT),
        (
            "host mx.example.com[192.0.2.1] said: 452 4.2.2 full (in reply to RCPT TO command)",
            452,
            "4.2.2",
            Phase.RCPT,
        ),
        ("550 5.7.1 nope (in reply to end of DATA command)", 550, "5.7.1", Phase.AFTER_DATA),
        ("553 sorry (in reply to MAIL FROM command)", 553, None, Phase.MAIL),
        ("220-laposte 421 4.2.1 Service refuse", 421, "4.2.1", Phase.RCPT),
    ],
)
def test_log_forms(logged, code, enhanced, phase):
    reply = reply_from_line(logged)
    assert (reply.code, reply.enhanced, reply.phase) == (code, enhanced, phase)


def test_joined_multi_line_replies_lose_their_prefixes():
    reply = reply_from_line("550-5.7.1 first line 550-5.7.1 second 550 5.7.1 last")
    assert (reply.enhanced, reply.text) == ("5.7.1", "first line second last")


def _case_blind_hint(text: str) -> float | None:
    """retry_hint as it reads any text: the case-blind patterns on the text itself."""
    read, (hint, bare, rate_before) = text, hints._CASE_BLIND
    if not hints._mentions_time(text.lower()):
        return None
    m = hint.search(read) or next(
        (b for b in bare.finditer(read) if not rate_before.search(read, 0, b.start())), None
    )
    if m is None:
        return None
    raw = m.group("n").lower()
    amount = hints._WORD_NUMBERS[raw] if raw in hints._WORD_NUMBERS else float(raw)
    seconds = amount * hints._UNIT_SECONDS[m.group("unit")[0].casefold()]
    return min(HINT_MAX, max(HINT_MIN, seconds))


_HINT_WORDS = [
    "Try",
    "again",
    "IN",
    "5",
    " ",
    "  ",
    "Minutes",
    "s",
    "H",
    "for",
    "60",
    "Sec",
    "an",
    "Hour",
    "Retry",
    "after",
    "messages",
    "per",
    ".",
    "Greylisted",
    "DAYS",
    "wait",
    "ing",
    "half",
    "\u017f",
    "\u212a",
    "\u0130",
]


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from(_HINT_WORDS),
        max_size=14,
    )
)
def test_ascii_hints_read_as_the_case_blind_patterns_read_them(words):
    text = "".join(words)
    assert retry_hint(text) == _case_blind_hint(text)


def test_a_long_s_after_a_number_is_read_as_seconds_not_an_error() -> None:
    # Once a KeyError: the case-blind unit pattern matched a long s (U+017F), and
    # lower() kept it as it was.
    assert retry_hint("try again in 60\u017f. minutes") == max(HINT_MIN, 60.0)
    reading = classify(Reply(451, "4.7.1", "Greylisted, try again in 60\u017f", Phase.RCPT))
    assert reading.category is Category.TEMPORARY_OTHER  # greylisting
