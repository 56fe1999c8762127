"""classify(reply) -> Classification: what a reply means, from what it says.

Pure and fast (no I/O, no clock). Signals in order: the text (signals.py, the
primary signal; provider reply ids come first there), the enhanced status code
(status_codes.py: provider codes, then RFC 3463), and only last the code class.
The code class never overrides the text: there are 5xx throttles and 4xx blocks.

Operators can override the reading for a destination with `[[classify]]`
tables in a policy file (see policy/loader.py); those come before everything.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from relayguard.model import Phase
from relayguard.policy.categories import DEFAULT_SCOPE, Category, Classification, Scope
from relayguard.policy.hints import retry_hint, retry_hint_lowered
from relayguard.policy.phrase_index import Choices, Hits, PhraseIndex, Selection, choices
from relayguard.policy.regex_prefixes import UnsupportedRegexError, regex_prefixes
from relayguard.policy.signals import BOILERPLATE, SIGNALS, TextSignal
from relayguard.policy.status_codes import WEAK_CODES, lookup

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from relayguard.model import Reply
    from relayguard.policy.rules import ClassifyOverride

__all__ = ["classify", "normalise"]

# An IPv4 address ("192.0.2.1", "[192.0.2.1]") or a redacted one ("x.xx.xx.xx",
# "a.b.c.d") that is not part of a longer dotted name or number; that is
#   \[?(?<![\w.])(?:\d{1,3}(?:\.\d{1,3}){3}|x{1,3}(?:\.x{1,3}){3}|a\.b\.c\.d)(?![\w.])\]?
# written to begin with the character an address (or its bracket) begins with, so that
# re skips in C to the places where one may start instead of trying every position:
# the lookbehinds, one character further on, see what the form above sees.
_IPV4 = re.compile(
    r"[\[\dxa](?:(?<=\[)(?:\d{1,3}(?:\.\d{1,3}){3}|x{1,3}(?:\.x{1,3}){3}|a\.b\.c\.d)"
    r"|(?<![\w.].)(?:(?<=\d)\d{0,2}(?:\.\d{1,3}){3}|(?<=x)x{0,2}(?:\.x{1,3}){3}|(?<=a)\.b\.c\.d))"
    r"(?![\w.])\]?"
)
# The same for digits only, for texts where no redacted address can be ("x." and
# "a.b.c.d" do not occur): "a" and "x" are then no place to start.
_IPV4_DIGITS = re.compile(
    r"[\[\d](?:(?<=\[)\d{1,3}(?:\.\d{1,3}){3}|(?<![\w.].)(?<=\d)\d{0,2}(?:\.\d{1,3}){3})"
    r"(?![\w.])\]?"
)
# Each address has a dot between a digit, x or a and a digit, x or b: a cheap test
# that most replies fail.
_IPV4_DOT = re.compile(r"\.(?<=[\dxa]\.)[\dxb]")
_IPV6 = re.compile(
    r"\[?(?<![\w:])(?:ipv6:)?(?:[0-9a-f]{1,4}:){2,7}:?[0-9a-f]{0,4}(?![\w:])\]?"
    r"|\[?(?<![\w:])[0-9a-f]{0,4}::[0-9a-f:]*(?![\w:])\]?"
)
_EMAIL = re.compile(r"<?[^\s<>@()\[\],;:\"]+@[a-z0-9][a-z0-9.-]*>?")
# An enhanced code inside the text, (?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.]), begun
# with its first digit for the same reason as _IPV4.
_INNER_ENHANCED = re.compile(r"([245](?<![\d.].)\.\d{1,3}\.\d{1,3})(?![\d.])")
# Every match begins with one of these characters (the first of a sentence's literal
# starts): a lookahead for them fails at once at most places, where otherwise each
# sentence would be tried there in turn.
_BOILERPLATE_FIRST = "".join(sorted({start[0] for p in BOILERPLATE for start in regex_prefixes(p)}))
_BOILERPLATE_ANY = "|".join(f"(?:{p})" for p in BOILERPLATE)
_BOILERPLATE = re.compile(f"(?=[{re.escape(_BOILERPLATE_FIRST)}])(?:{_BOILERPLATE_ANY})")


def _may_have_boilerplate(text: str) -> bool:
    """False for a text that has none of the BOILERPLATE: each of those sentences
    starts with these words (checked at import), most texts, spam replies among them,
    have none of them."""
    return "bulk" in text or "review" in text or "our users" in text or "amount of" in text


def _check_boilerplate_test() -> None:
    for source in BOILERPLATE:
        for prefix in regex_prefixes(source):
            if not _may_have_boilerplate(prefix):
                raise ValueError(
                    f"boilerplate {source!r} can start {prefix!r}, "
                    "which _may_have_boilerplate does not look for"
                )


_check_boilerplate_test()


def normalise(text: str) -> str:
    """The text the signals read: lower case, single spaces, addresses as words."""
    return _normalise_lowered(text.lower())


def _normalise_lowered(lowered: str) -> str:
    """normalise(text), given text.lower() (see retry_hint_lowered)."""
    # "BAD_RECIPIENT", "cuda_nsu": words joined by underscores read as words.
    t = lowered.replace("e-mail", "email").replace("_", " ")
    at = t.find("@")
    if at >= 0:
        # The address regex is tried at every place of the text it is given, and a match
        # is a run of the characters it allows that ends at an "@": it can only begin
        # after the last space before the first "@", and only end before the first space
        # after the last "@" (a space is none of those characters). The regex has no
        # lookbehind, so on that middle part alone it finds the same addresses.
        start = t.rfind(" ", 0, at) + 1
        end = t.find(" ", t.rfind("@"))
        end = len(t) if end < 0 else end
        t = t[:start] + _EMAIL.sub(" emailaddr ", t[start:end]) + t[end:]
    if _IPV4_DOT.search(t):
        redacted = "x." in t or "a.b.c.d" in t
        t = (_IPV4 if redacted else _IPV4_DIGITS).sub(" ipaddr ", t)
    if ":" in t and ("::" in t or t.count(":") >= 4):  # ":" first: half the replies have none
        # Only in the words that have a ":": every address has one, none has a space,
        # and at either end of a word the regex's lookarounds see a space or the end of
        # the text alike, so each word reads as it would in the whole text. The regex
        # tried at every place of a long text was most of the cost of such a reply.
        t = " ".join(_IPV6.sub(" ipaddr ", w) if ":" in w else w for w in t.split(" "))
    # str.split() splits on exactly the characters re's \s matches: single spaces, no
    # space at either end.
    t = " ".join(t.split())
    if _may_have_boilerplate(t):
        t = " ".join(_BOILERPLATE.sub(" ", t).split())
    return t


_LEADING_WORD = re.compile(r"\\b([a-z0-9]+)(.?)")
_LEADING_GROUP = re.compile(r"\\b\(\?:([^()]+)\)")
_LOOKBEHINDS = re.compile(r"^(?:\(\?<[!=][^)]*\))+")


def phrase_keys(source: str) -> frozenset[str]:
    """The index keys of a phrase: the first (up to) four letters of its leading literal
    word, or of each word of a leading group."""
    return frozenset(lit[:4] for lit in phrase_literals(source))


def phrase_literals(source: str) -> frozenset[str]:
    """The literal words a phrase starts with (its leading word, or each word of a
    leading group). Raises ValueError for a phrase that does not start with `\\b` and a
    literal, which the index could not find."""
    source = _LOOKBEHINDS.sub("", source, count=1)
    m = _LEADING_GROUP.match(source)
    literals: list[tuple[str, str]] = []
    if m is not None and source[m.end() : m.end() + 1] in ("?", "*"):
        raise ValueError(f"phrase {source!r}: an optional leading group hides its first word")
    if m is not None:
        for alt in m.group(1).split("|"):
            w = re.match(r"([a-z0-9]+)(.?)", alt)
            if w is None:
                raise ValueError(f"phrase {source!r}: group alternative {alt!r} is not a word")
            literals.append((w.group(1), w.group(2)))
    else:
        w = _LEADING_WORD.match(source)
        if w is None:
            raise ValueError(f"phrase {source!r} must start with \\b and a literal word")
        literals.append((w.group(1), w.group(2)))
    out = set()
    for word, after in literals:
        literal = word[:-1] if after in ("?", "*", "{") else word
        if len(literal) < 2:
            raise ValueError(f"phrase {source!r}: leading literal {literal!r} is too short")
        out.add(literal)
    return frozenset(out)


_META = frozenset(".^$*+?{}[]|()")
_ESCAPED_LITERAL = frozenset(".-/:()[]{}?*+|^$\\ '\"#=")


def _literal_run(source: str, i: int) -> tuple[str, bool]:
    """The literal text a regex source spells from `i` on, and whether it ran to the
    end of the source without meeting anything else."""
    out: list[str] = []
    while i < len(source):
        c = source[i]
        if c == "\\":
            nxt = source[i + 1 : i + 2]
            if nxt not in _ESCAPED_LITERAL or not nxt:
                return "".join(out), False
            out.append(nxt)
            i += 2
            continue
        if c in _META:
            if c in "?*{" and out:
                out.pop()  # the character before is optional
            return "".join(out), False
        out.append(c)
        i += 1
    return "".join(out), True


def phrase_prefixes(source: str) -> frozenset[str]:
    """The literal text each match of a phrase must start with, as long as the source
    spells it ("blocked using", "message ", "mail "): a cheap `in` test before the regex."""
    body = _LOOKBEHINDS.sub("", source, count=1)
    body = body.removeprefix("\\b")
    group = _LEADING_GROUP.match("\\b" + body)
    if group is None:
        run, _ = _literal_run(body, 0)
        return frozenset({run}) if len(run) >= 2 else phrase_literals(source)
    after = group.end() - 2  # the group's end within body
    tail, _ = _literal_run(body, after)
    out = set()
    for alt in group.group(1).split("|"):
        run, whole = _literal_run(alt, 0)
        out.add(run + tail if whole else run)
    return frozenset(p for p in out if len(p) >= 2) or phrase_literals(source)


def phrase_starts(source: str) -> frozenset[str]:
    """The literal texts a phrase's matches start with, for the index: worked out from
    the whole regex where regex_prefixes reads it, else the leading literal text only
    (phrase_prefixes). Raises ValueError where the two readings disagree."""
    leading = phrase_prefixes(source)
    try:
        starts = regex_prefixes(source)
    except UnsupportedRegexError:
        return leading
    # Two readings of the same source: each must extend, or be extended by, the other.
    for mine, theirs in ((starts, leading), (leading, starts)):
        for prefix in mine:
            if not any(prefix.startswith(p) or p.startswith(prefix) for p in theirs):
                raise ValueError(f"phrase {source!r}: prefix {prefix!r} fits none of {theirs}")
    return starts


def _compile(
    signals: Sequence[TextSignal],
) -> tuple[
    tuple[tuple[re.Pattern[str], ...], ...],
    list[tuple[re.Pattern[str], frozenset[str]]],
    tuple[TextSignal, ...],
]:
    """Each signal's phrases compiled; all of them, with their prefixes, in the order
    match_text tries them (specific signals before generic ones, each signal's phrases
    in their order); and the signal of each of those."""
    patterns: list[tuple[re.Pattern[str], ...]] = []
    ordered: list[tuple[bool, int, int, re.Pattern[str], frozenset[str]]] = []
    problems: list[str] = []
    for rank, signal in enumerate(signals):
        compiled: list[re.Pattern[str]] = []
        for order, source in enumerate(signal.phrases):
            try:
                pattern = re.compile(source)
                phrase_literals(source)
                prefixes = phrase_starts(source)
            except (ValueError, re.error) as exc:
                problems.append(f"{signal.id}: {exc}")
                continue
            compiled.append(pattern)
            ordered.append((signal.generic, rank, order, pattern, prefixes))
        patterns.append(tuple(compiled))
    if problems:
        raise ValueError("bad text signals: " + "; ".join(problems))
    ordered.sort(key=lambda phrase: phrase[:3])
    phrases = [(pattern, prefixes) for *_, pattern, prefixes in ordered]
    return tuple(patterns), phrases, tuple(signals[rank] for _, rank, *_ in ordered)


_PATTERNS, _SIGNAL_PHRASES, _SIGNAL_OF = _compile(SIGNALS)

# Whose problem a throttle or a policy refusal is, when the text says: a recipient
# receiving too fast, a rule about this message, our address, or the receiver's own
# limits. A cue is there when one of its words is, as a whole word (`\b...\b`).
_RECIPIENT_WORDS = (
    "to this (?:recipient|user|address)",
    "the recipient",
    "recipient (?:has|thread|is|address rejected: access denied)",
    "the user",
    "this user",
    "user is",
    "mailbox (?:is|delivery)",
    "messages? to emailaddr",
    "is receiving",
    "receiving (?:mail|messages|email)",
    "they can receive",
    "recent messages",
    "by (?:the )?recipients?",
    "target address",
    "emailaddr (?:is|has) (?:receiving|temporar|over)",
    "recipient temporarily",
    "user emailaddr",
    "recipient(?:'s)? preferences?",
)
_MESSAGE_WORDS = (
    "same message-id",
    "per message",
    "separate transaction",
    "recipients per",
    "too many recipients",
    "message (?:not accepted|rejected) for policy",
)
_EGRESS_WORDS = (
    "your ip",
    "ip address",
    "sending ip",
    "ip not",
    "ip name",
    "from your",
    "connections? from",
    "your (?:server|host|network|system)",
    "client host",
    "helo",
    "ehlo",
    "authentication not allowed",
    "identities failed",
)
# A throttle that quotes our address is about it; a policy reply often quotes it only
# as information ("[192.0.2.1 13] Messages missing a valid From: header...").
_OUR_ADDRESS_WORDS = ("ipaddr",)
_DESTINATION_WORDS = (
    "organi[sz]ation",
    "resource forest",
    "queue quota",
    "server busy",
    "system (?:is )?busy",
)
SCOPE_CUES = (
    _RECIPIENT_WORDS,
    _MESSAGE_WORDS,
    _EGRESS_WORDS,
    _OUR_ADDRESS_WORDS,
    _DESTINATION_WORDS,
)


def cue_phrase(words: str) -> str:
    """The regex for a cue's words: the whole words."""
    return rf"\b(?:{words})\b"


def _cue_phrases(
    cues: Sequence[Sequence[str]], first: int
) -> tuple[list[tuple[re.Pattern[str], frozenset[str]]], list[Selection]]:
    """The cues' phrases for the index (numbered after `first` others), and which of
    them each cue is."""
    phrases: list[tuple[re.Pattern[str], frozenset[str]]] = []
    selections: list[Selection] = []
    for cue in cues:
        start = first + len(phrases)
        for words in cue:
            source = cue_phrase(words)
            phrases.append((re.compile(source), regex_prefixes(source)))
        selections.append(Selection(start, first + len(phrases)))
    return phrases, selections


_CUE_PHRASES, _CUE_SELECTIONS = _cue_phrases(SCOPE_CUES, len(_SIGNAL_PHRASES))
_RECIPIENT_CUE, _MESSAGE_CUE, _EGRESS_CUE, _OUR_ADDRESS, _DESTINATION_CUE = _CUE_SELECTIONS
# One index for the signals and the cues: a reply's text is scanned once for both.
_INDEX = PhraseIndex(_SIGNAL_PHRASES + _CUE_PHRASES)


def _applies(sig: TextSignal, code: int, enhanced: str | None) -> bool:
    if sig.codes and str(code)[:1] not in sig.codes:
        return False
    return not sig.enhanced or (enhanced is not None and enhanced.startswith(sig.enhanced))


# The signals whose phrases a reply's codes may rule out (see _applies); the others
# apply to every reply.
_CONDITIONAL = tuple(number for number, sig in enumerate(_SIGNAL_OF) if sig.codes or sig.enhanced)
_ENHANCED_PREFIXES = tuple(sorted({sig.enhanced for sig in _SIGNAL_OF if sig.enhanced}))


def _ruled_out(code: int, enhanced: str | None) -> frozenset[int]:
    return frozenset(
        number for number in _CONDITIONAL if not _applies(_SIGNAL_OF[number], code, enhanced)
    )


# For an enhanced code that no signal asks for (nearly every reply), the code class
# alone decides: worked out once for each class.
_BY_CLASS = {
    klass: Selection(0, len(_SIGNAL_OF), _ruled_out(int(klass + "00"), None))
    for klass in "0123456789"
}


def _selected(code: int, enhanced: str | None) -> Selection:
    """The signal phrases that apply to a reply with these codes."""
    if enhanced is None or not enhanced.startswith(_ENHANCED_PREFIXES):
        selection = _BY_CLASS.get(str(code)[:1])
        if selection is not None:
            return selection
    return Selection(0, len(_SIGNAL_OF), _ruled_out(code, enhanced))


def match_text(text: str, code: int, enhanced: str | None = None) -> tuple[TextSignal, str] | None:
    """The best-ranked text signal whose phrase occurs in the normalised text, and the
    words it matched (its first phrase that matches, leftmost); specific signals first,
    then generic ones."""
    return _match_text(text, _INDEX.hits(text), code, enhanced)


def _match_text(
    text: str, hits: Hits, code: int, enhanced: str | None
) -> tuple[TextSignal, str] | None:
    found = _INDEX.first(text, hits, _selected(code, enhanced))
    if found is None:
        return None
    bit, m = found
    return _SIGNAL_OF[bit], m.group(0)


def match_text_unindexed(
    text: str, code: int, enhanced: str | None = None
) -> tuple[TextSignal, str] | None:
    """match_text without the index: every phrase of every signal, searched in order.
    For tests of the index."""
    for generic in (False, True):
        for rank, sig in enumerate(SIGNALS):
            if sig.generic is not generic or not _applies(sig, code, enhanced):
                continue
            for pattern in _PATTERNS[rank]:
                m = pattern.search(text)
                if m is not None:
                    return sig, m.group(0)
    return None


def classify(
    reply: Reply,
    *,
    destination: str = "",
    route: str = "",
    overrides: Iterable[ClassifyOverride] = (),
) -> Classification:
    """What a reply means. Never raises; every reply gets a category."""
    for override in overrides:
        if override.match.matches(reply, route, destination):
            return Classification(
                override.category,
                override.scope or DEFAULT_SCOPE[override.category],
                f"override:{override.id}",
                f"operator's [[classify]] {override.id} ({override.source})",
                retry_hint(reply.text),
            )
    return _read(reply)


# The same reply comes back for every message while an incident lasts (an RBL text
# names our egress address, not the message): its reading is kept. Pure, so safe.
@functools.lru_cache(maxsize=4096)
def _read(reply: Reply) -> Classification:
    c = _read_reply(reply)
    if reply.phase is not Phase.AUTH:
        return c
    # Whatever the words, a refusal of our AUTH (RFC 4954 section 6: 530, 534, 535,
    # 538, 454) is about the account the route logs in with: the smarthost refuses us
    # as a client, for every destination, and no recipient is at fault. Reading it as
    # policy.smtp-auth sends it to the route-refuses-us rule (suspend, next route).
    return Classification(
        Category.POLICY,
        Scope.EGRESS,
        "policy.smtp-auth",
        f"{c.evidence}, in reply to AUTH: the smarthost refuses our login",
        c.retry_in,
    )


def _read_reply(reply: Reply) -> Classification:
    lowered = reply.text.lower()
    hint = retry_hint_lowered(reply.text, lowered)
    enhanced = reply.enhanced
    if enhanced is None:
        inner = _INNER_ENHANCED.search(reply.text)
        if inner is not None and inner.group(1)[0] == str(reply.code)[0]:
            enhanced = inner.group(1)
    text = _normalise_lowered(lowered)
    hits = _INDEX.hits(text)  # for the signals and the scope cues alike
    found = _match_text(text, hits, reply.code, enhanced)
    code_entry = lookup(enhanced) if enhanced is not None else None
    strong_code = code_entry is not None and enhanced is not None and not _weak(enhanced)
    if found is not None and found[0].generic and found[0].category is Category.TEMPORARY_OTHER:
        # "Try again later" on a 4xx says more than the code's subject (4.7.1, 4.2.1).
        strong_code = strong_code and reply.code >= 500
    if found is not None and not (found[0].generic and strong_code):
        sig, words = found
        scope = _refine_scope(sig.category, sig.scope, text, hits)
        return _about_sender(
            Classification(sig.category, scope, sig.id, f'text "{words}"', hint),
            reply.phase,
            enhanced,
        )
    if code_entry is not None and enhanced is not None and (strong_code or found is None):
        category, scope, meaning = code_entry
        scope = _refine_scope(category, scope, text, hits)
        return _about_sender(
            Classification(
                category, scope, f"code:{enhanced}", f"enhanced code {enhanced}: {meaning}", hint
            ),
            reply.phase,
            enhanced,
        )
    return _by_phase_or_class(reply, hint)


def refine_scope(category: Category, scope: Scope, text: str) -> Scope:
    """The scope a throttle or policy reply's own words give it (see the cues above):
    the recipient's, else for a throttle our address's, the message's or the
    receiver's, for a policy refusal the message's or our address's, checked in that
    order; the signal's own scope stands when no cue applies."""
    return _refine_scope(category, scope, text, _INDEX.hits(text))


# The cues a category's scope may come from, in the order they are checked: the first
# that occurs gives the scope.
_CUES: dict[Category, tuple[Choices, tuple[Scope, ...]]] = {
    Category.TEMPORARY_OTHER: (choices(_RECIPIENT_CUE), (Scope.RECIPIENT,)),
    Category.THROTTLE: (
        choices(_RECIPIENT_CUE, _EGRESS_CUE, _OUR_ADDRESS, _MESSAGE_CUE, _DESTINATION_CUE),
        (Scope.RECIPIENT, Scope.EGRESS, Scope.EGRESS, Scope.MESSAGE, Scope.DESTINATION),
    ),
    Category.POLICY: (
        choices(_RECIPIENT_CUE, _MESSAGE_CUE, _EGRESS_CUE),
        (Scope.RECIPIENT, Scope.MESSAGE, Scope.EGRESS),
    ),
}


def _refine_scope(category: Category, scope: Scope, text: str, hits: Hits) -> Scope:
    cues = _CUES.get(category)
    if cues is None:
        return scope
    options, scopes = cues
    # One pass over the hits for all the cues: this runs for nearly every reply, and
    # one matches_any per cue was a bisect and a Python loop each.
    found = _INDEX.first_matching(text, hits, options)
    return scopes[found] if found < len(scopes) else scope


def _weak(enhanced: str) -> bool:
    return enhanced.partition(".")[2] in WEAK_CODES


_SENDER_CODES = frozenset({"1.7", "1.8"})


def _about_sender(c: Classification, phase: Phase, enhanced: str | None) -> Classification:
    """An address problem in reply to MAIL FROM, or with a sender status code (X.1.7,
    X.1.8), is about our sender address, not the recipient (RFC 3463 3.2); a refusal of
    HELO/EHLO is about our HELO."""
    if phase is Phase.HELO and c.category in (Category.PERMANENT_OTHER, Category.NO_SUCH_USER):
        return Classification(
            Category.POLICY,
            Scope.EGRESS,
            f"{c.signal}+helo",
            f"{c.evidence}, in reply to HELO/EHLO: about our HELO",
            c.retry_in,
        )
    if c.category is not Category.NO_SUCH_USER:
        return c
    sender_code = enhanced is not None and enhanced.partition(".")[2] in _SENDER_CODES
    if phase is not Phase.MAIL and not sender_code:
        return c
    why = "in reply to MAIL FROM" if phase is Phase.MAIL else f"status {enhanced}"
    return Classification(
        Category.POLICY,
        Scope.MESSAGE,
        f"{c.signal}+sender",
        f"{c.evidence}, about the sender address ({why})",
        c.retry_in,
    )


def _by_phase_or_class(reply: Reply, hint: float | None) -> Classification:
    """Nothing in the text or the code: a refusal before MAIL FROM is about us (our
    address at the greeting, our HELO); otherwise the code class says only permanent
    or temporary."""
    klass = str(reply.code)[:1]
    if klass == "5" and reply.phase in (Phase.CONNECT, Phase.GREETING):
        return Classification(
            Category.RBL_BLOCK,
            Scope.EGRESS,
            "phase:greeting",
            f"code {reply.code} at the greeting: the receiver refuses the connecting address",
            hint,
        )
    if klass == "5" and reply.phase is Phase.HELO:
        return Classification(
            Category.POLICY,
            Scope.EGRESS,
            "phase:helo",
            f"code {reply.code} in reply to HELO/EHLO: the receiver refuses our HELO",
            hint,
        )
    if klass == "4":
        return Classification(
            Category.TEMPORARY_OTHER,
            Scope.DESTINATION,
            "class:4xx",
            f"code {reply.code}: temporary (RFC 5321), nothing more specific in the reply",
            hint,
        )
    return Classification(
        Category.PERMANENT_OTHER,
        Scope.MESSAGE,
        f"class:{klass}xx",
        f"code {reply.code}: permanent (RFC 5321), nothing more specific in the reply",
        hint,
    )
