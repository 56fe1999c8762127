"""The phrase index and the prefixes it is built from: a prefix is only a place to
try, so the index must find exactly what trying every phrase everywhere finds."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.policy import classify as classifier
from relayguard.policy.classify import SCOPE_CUES, cue_phrase, normalise, refine_scope
from relayguard.policy.phrase_index import PhraseIndex, Selection, choices, spaced
from relayguard.policy.regex_prefixes import UnsupportedRegexError, regex_prefixes
from relayguard.policy.reply_corpus import load_reply_corpus
from relayguard.policy.reply_line import reply_from_line
from relayguard.policy.signals import BOILERPLATE, SIGNALS

CORPUS_TEXTS = [normalise(reply_from_line(r.line).text) for r in load_reply_corpus()]
PHRASES = [source for signal in SIGNALS for source in signal.phrases]


@pytest.mark.parametrize(
    ("source", "prefixes"),
    [
        (
            r"\bmessage (?:is |was )?too (?:big|large)",
            {
                f"message {verb}too {size}"
                for verb in ("", "is ", "was ")
                for size in ("big", "large")
            },
        ),
        (r"\borgani[sz]ation\b", {"organisation", "organization"}),
        (r"(?<!not )\bblocked\b", {"blocked"}),
        (r"\bspam(?:hau)?s?\b", {"spam"}),
        (r"rate ?limit", {"rate limit", "ratelimit"}),
        (r"x{2,}y", {"x"}),
    ],
)
def test_prefixes_of_common_forms(source, prefixes):
    assert regex_prefixes(source) == prefixes


@pytest.mark.parametrize(
    "source", [r"\w+ blocked", r".*spam", r"(?i)spam", r"\d{3} busy", "[a-z]x"]
)
def test_a_regex_without_a_literal_start_is_refused(source):
    with pytest.raises(UnsupportedRegexError):
        regex_prefixes(source)


def _necessary(source: str, text: str) -> None:
    """Every match of the regex in the text starts with one of its prefixes."""
    try:
        prefixes = tuple(regex_prefixes(source))
    except UnsupportedRegexError:
        return
    # A lookahead of the regex matches, empty, at every place the regex matches.
    for m in re.finditer(f"(?=(?:{source}))", text):
        assert text.startswith(prefixes, m.start()), (source, text, m.start(), prefixes)


def test_every_signal_match_on_the_corpus_starts_with_a_prefix():
    for source in PHRASES:
        pattern = re.compile(source)
        for text in CORPUS_TEXTS:
            if pattern.search(text):  # most phrases match few texts: check those closely
                _necessary(source, text)


@settings(max_examples=400, deadline=None)
@given(
    st.recursive(
        st.sampled_from(["a", "b", " ", r"\.", "x", r"\b", r"\w", "[ab]", "[^a]", "."]),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(inner, inner).map(lambda p: f"(?:{p[0]}|{p[1]})"),
            st.tuples(inner, st.sampled_from(["?", "*", "+", "{2}", "{1,3}", "??"])).map(
                lambda p: f"(?:{p[0]}){p[1]}"
            ),
            inner.map(lambda p: f"(?:{p})(?<!a)(?<=[ab] )"),
        ),
        max_leaves=8,
    ),
    st.text(alphabet="ab .x", max_size=14),
)
def test_prefixes_are_necessary_for_generated_regexes(source, text):
    _necessary(source, text)


def _first_by_trying_everything(
    phrases: list[re.Pattern[str]], text: str, selection: Selection
) -> tuple[int, tuple[int, int]] | None:
    for number in range(selection.start, selection.stop):
        if number in selection.excluded:
            continue
        m = phrases[number].search(text)
        if m is not None:
            return number, m.span()
    return None


CUE_SOURCES = [cue_phrase(words) for cue in SCOPE_CUES for words in cue]
CUE_PATTERNS = [re.compile(source) for source in CUE_SOURCES]
CUE_INDEX = PhraseIndex([(p, regex_prefixes(p.pattern)) for p in CUE_PATTERNS])


@pytest.mark.parametrize(
    "selection",
    [
        Selection(0, len(CUE_PATTERNS)),
        Selection(3, 20),
        Selection(0, len(CUE_PATTERNS), frozenset({0, 1, 2, 5, 8})),
    ],
)
def test_index_finds_what_trying_every_phrase_finds(selection):
    for text in [*CORPUS_TEXTS, "the user is the recipient", "ehlo helo"]:
        found = CUE_INDEX.first(text, CUE_INDEX.hits(text), selection)
        got = None if found is None else (found[0], found[1].span())
        assert got == _first_by_trying_everything(CUE_PATTERNS, text, selection), text


WORDS = sorted({w for t in CORPUS_TEXTS for w in t.split()})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=20))
def test_index_finds_the_leftmost_cue_in_shuffled_corpus_words(words):
    text = " ".join(words)
    selection = Selection(0, len(CUE_PATTERNS))
    found = CUE_INDEX.first(text, CUE_INDEX.hits(text), selection)
    got = None if found is None else (found[0], found[1].span())
    assert got == _first_by_trying_everything(CUE_PATTERNS, text, selection)


def test_scope_cues_read_the_same_through_the_index():
    throttle, policy = classifier.Category.THROTTLE, classifier.Category.POLICY
    assert refine_scope(
        throttle, classifier.Scope.DESTINATION, "too many messages to this user"
    ) == (classifier.Scope.RECIPIENT)
    assert refine_scope(
        throttle, classifier.Scope.DESTINATION, "too many connections from ipaddr"
    ) == (classifier.Scope.EGRESS)
    assert refine_scope(policy, classifier.Scope.MESSAGE, "rejected: your helo name") == (
        classifier.Scope.EGRESS
    )
    assert refine_scope(throttle, classifier.Scope.DESTINATION, "server busy") == (
        classifier.Scope.DESTINATION
    )


def test_spaced_keeps_positions():
    for text in ("a.b-c d", "naïve—text", "x_y"):
        out = spaced(text)
        assert len(out) == len(text) + 1
        assert all(
            (o == " ") == (not (c.isalnum() or c == "_"))
            for o, c in zip(out[1:], text, strict=True)
        )


# The address forms normalise makes words, written the plain way: the classifier's
# faster forms must replace exactly what these do.
_PLAIN_IPV4 = re.compile(
    r"\[?(?<![\w.])(?:\d{1,3}(?:\.\d{1,3}){3}|x{1,3}(?:\.x{1,3}){3}|a\.b\.c\.d)(?![\w.])\]?"
)
_PLAIN_INNER = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123456789.....xxabcd[] _-:w", max_size=28))
def test_address_and_inner_code_forms_match_the_plain_forms(text):
    assert classifier._IPV4.sub(" ipaddr ", text) == _PLAIN_IPV4.sub(" ipaddr ", text)
    if "x." not in text and "a.b.c.d" not in text:
        assert classifier._IPV4_DIGITS.sub("ip", text) == _PLAIN_IPV4.sub("ip", text)
    if _PLAIN_IPV4.search(text):
        assert classifier._IPV4_DOT.search(text)  # the guard never skips an address
    plain, fast = _PLAIN_INNER.search(text), classifier._INNER_ENHANCED.search(text)
    assert (plain and plain.span(1)) == (fast and fast.span(1))


def _plain_normalise(text):
    """normalise as written before its faster forms: each address regex over the whole
    text."""
    t = text.lower().replace("e-mail", "email").replace("_", " ")
    if "@" in t:
        t = classifier._EMAIL.sub(" emailaddr ", t)
    t = _PLAIN_IPV4.sub(" ipaddr ", t)
    if "::" in t or t.count(":") >= 4:
        t = classifier._IPV6.sub(" ipaddr ", t)
    t = " ".join(t.split())
    return " ".join(re.sub("|".join(f"(?:{p})" for p in BOILERPLATE), " ", t).split())


_NORMALISE_PIECES = [
    "a",
    "F",
    "1",
    "0",
    ".",
    ":",
    "::",
    "@",
    " ",
    "<",
    ">",
    "[",
    "]",
    "ipv6:",
    "_",
    "\t",
    "x.",
    "bulk mail sender",
    "e-mail",
    "\u00e9",
    ",",
    "(",
    '"',
    "2001:db8::25",
]


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.sampled_from(_NORMALISE_PIECES),
        max_size=24,
    )
)
def test_normalise_reads_as_the_plain_whole_text_forms(pieces):
    text = "".join(pieces)
    assert normalise(text) == _plain_normalise(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=20),
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.sets(st.integers(0, 40))), max_size=5
    ),
)
def test_first_matching_is_the_first_selection_that_matches_any(words, bounds):
    text = " ".join(words)
    hits = CUE_INDEX.hits(text)
    selections = [Selection(a, b, frozenset(excluded)) for a, b, excluded in bounds]
    expected = next(
        (k for k, s in enumerate(selections) if CUE_INDEX.matches_any(text, hits, s)),
        len(selections),
    )
    assert CUE_INDEX.first_matching(text, hits, choices(*selections)) == expected
