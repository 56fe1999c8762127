"""An ordered list of phrases searched together: the first of them (in list order) that
occurs in a text, and its leftmost match.

Each phrase is a regex whose every match starts at a word start with one of a few
literal prefixes (classify.phrase_starts works them out). An Aho-Corasick automaton
(pyahocorasick) of all the prefixes finds every word start where one occurs, in one
pass in C however many phrases there are. Each prefix carries a bit mask of the
phrases that may start with it, so before any phrase regex runs it is known which
phrases can match at all and where: they are then tried in order, each only where it
can start, and the first that matches wins. A prefix found is only a place worth
trying; the phrase's own regex always decides, so the answer is the regex's.
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import ahocorasick

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Choices", "Hits", "PhraseIndex", "Selection", "choices"]

# Where each phrase may match, one int per (phrase, word start where one of its prefixes
# occurs): number << _SHIFT | start, in ascending order, that is by phrase number, then
# from the left. One sort of plain ints in C costs a fraction of building a dict of
# lists in Python, and hits() was the largest part of a cold reading.
Hits: TypeAlias = list[int]
_SHIFT = 40  # starts are below 2**40: no str is that long
_PLACE = (1 << _SHIFT) - 1


class Selection(NamedTuple):
    """The phrases a search may use: those numbered from start to before stop, but not
    the excluded ones."""

    start: int
    stop: int
    excluded: frozenset[int] = frozenset()


class Choices(NamedTuple):
    """Selections tried in order (see PhraseIndex.first_matching), and the lowest phrase
    number in any of them, worked out once: where their hits begin."""

    selections: tuple[Selection, ...]
    lowest: int


def choices(*selections: Selection) -> Choices:
    return Choices(selections, min((s.start for s in selections), default=0))


_WORD_CHAR = re.compile(r"\w")
_NON_WORD = re.compile(r"\W")
# bytes.translate table: each ASCII non-word character to a space.
_ASCII_SPACED = bytes(32 if _NON_WORD.match(chr(i)) else i for i in range(256))


def spaced(text: str) -> str:
    """The text after a space, each non-word character made a space (one for one, so
    positions stay): a word start is then a space followed by a word character, which
    an exact-string automaton can look for."""
    if text.isascii():
        # Far faster than str.translate or re.sub, and replies are nearly always ASCII.
        return " " + text.encode("ascii").translate(_ASCII_SPACED).decode("ascii")
    return " " + _NON_WORD.sub(" ", text)


class PhraseIndex:
    """The phrases (pattern, literal prefixes), in order, numbered from 0."""

    __slots__ = ("_automaton", "_patterns")

    def __init__(self, phrases: Sequence[tuple[re.Pattern[str], Iterable[str]]]) -> None:
        # The key of a prefix is how it reads in a spaced() text at a word start; two
        # prefixes may read alike ("access denied." and "access denied "): the key
        # then stands for both, and each phrase's regex tells them apart.
        keys: dict[str, set[int]] = {}
        for number, (pattern, prefixes) in enumerate(phrases):
            for prefix in prefixes:
                if not _WORD_CHAR.match(prefix):
                    raise ValueError(f"{pattern.pattern!r}: prefix {prefix!r} is not a word")
                keys.setdefault(spaced(prefix), set()).add(number)
        if not keys:
            raise ValueError("a phrase index needs phrases")  # an empty automaton cannot search
        self._patterns = tuple(pattern for pattern, _ in phrases)
        self._automaton = ahocorasick.Automaton()
        for key, numbers in keys.items():
            # The automaton reports where a key ends; the word starts len(key) - 1
            # characters before that in the text (one before in the spaced text). Each
            # key carries number << _SHIFT minus that, so that adding the end gives
            # the hit.
            bases = tuple((number << _SHIFT) - (len(key) - 1) for number in sorted(numbers))
            self._automaton.add_word(key, bases)
        self._automaton.make_automaton()

    def hits(self, text: str) -> Hits:
        """Where in the text a phrase may match: each phrase that may, and the word
        starts where it may."""
        # Keys are reported in the order they end, and a shorter key ending later may
        # start earlier: the sort puts each phrase's starts in order too.
        found = [base + end for end, bases in self._automaton.iter(spaced(text)) for base in bases]
        found.sort()
        return found

    def first(
        self, text: str, hits: Hits, selection: Selection
    ) -> tuple[int, re.Match[str]] | None:
        """The first selected phrase that matches the text (its number and leftmost
        match)."""
        start, stop, excluded = selection
        patterns = self._patterns
        stop_hit = stop << _SHIFT
        # By phrase number, each from the left: the first match is the leftmost.
        for i in range(bisect.bisect_left(hits, start << _SHIFT), len(hits)):
            hit = hits[i]
            if hit >= stop_hit:
                break
            number = hit >> _SHIFT
            if number in excluded:
                continue
            m = patterns[number].match(text, hit & _PLACE)
            if m is not None:
                return number, m
        return None

    def matches_any(self, text: str, hits: Hits, selection: Selection) -> bool:
        """Whether a selected phrase matches the text."""
        return self.first(text, hits, selection) is not None

    def first_matching(self, text: str, hits: Hits, choices: Choices) -> int:
        """The position of the first of the choices' selections in which a phrase matches
        the text, len(selections) if none does: matches_any of each in turn, but in one
        pass over the hits (one bisect, not one per selection; a text has few hits there,
        and most have none)."""
        selections, lowest = choices
        found = len(selections)
        patterns = self._patterns
        for i in range(bisect.bisect_left(hits, lowest << _SHIFT), len(hits)):
            hit = hits[i]
            number = hit >> _SHIFT
            # Only a selection before the one found so far can change the answer, and only
            # the first of them that has this phrase: the same regex at the same place
            # would match or fail for a later one alike.
            for k in range(found):
                start, stop, excluded = selections[k]
                if start <= number < stop and number not in excluded:
                    if patterns[number].match(text, hit & _PLACE) is not None:
                        if k == 0:
                            return 0
                        found = k
                    break
        return found
