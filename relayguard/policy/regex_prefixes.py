"""The literal texts every match of a regex starts with, worked out from its source.

`\\bmessage (?:is |was )?too (?:big|large)` can only match where the text says
"message is too big", "message is too large", "message was too big", ... or "message
too large": the phrase index tries a phrase only where one of these occurs, so it
rarely runs a regex that then fails.

Each prefix is a necessary condition, never a sufficient one. Whatever only narrows
where a regex matches (`\\b`, lookarounds, anchors) is skipped; whatever could match
many texts (`\\w`, `.`, a character range, a repeat) ends the prefix there; the number
and length of the prefixes are bounded by cutting them short, which keeps them
necessary. Only the syntax the signals use is read (literal characters, groups,
alternation, quantifiers, small character sets, lookarounds and anchors); anything
else raises UnsupportedRegexError, so that the caller falls back to a coarser prefix instead of
guessing at what an unfamiliar construct means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["UnsupportedRegexError", "regex_prefixes"]

MAX_PREFIXES = 48  # per regex; beyond that the remaining parts are not expanded
MAX_LENGTH = 40  # longer prefixes say little more and only grow the scanner
_MAX_SET = 4  # a character set of more characters is not expanded


class UnsupportedRegexError(ValueError):
    """The regex uses syntax this module does not read."""


@dataclass(frozen=True, slots=True)
class _Starts:
    """What a part of a regex matches: exactly one of `whole`, or a text that starts
    with one of `partial`."""

    whole: frozenset[str]
    partial: frozenset[str]

    def size(self) -> int:
        return len(self.whole) + len(self.partial)


_EMPTY = _Starts(frozenset({""}), frozenset())  # zero-width: matches only ""
_ANY = _Starts(frozenset(), frozenset({""}))  # no idea
_ZERO_WIDTH_ESCAPES = frozenset("bBAZ")
_CLASS_ESCAPES = frozenset("dwsDWS")
_REPEAT = re.compile(r"\{(\d*)(,?)(\d*)\}")


def regex_prefixes(source: str) -> frozenset[str]:
    """The literal texts every match of the regex starts with (one of them each).
    Raises Unsupported for syntax it does not read, or a regex that may match
    without a literal start."""
    starts, end = _alternation(source, 0)
    if end != len(source):
        raise UnsupportedRegexError(f"{source!r}: unbalanced ')' at {end}")
    out = _minimal(starts.whole | starts.partial)
    if "" in out:
        raise UnsupportedRegexError(f"{source!r}: a match may start with anything")
    return out


def _minimal(prefixes: frozenset[str]) -> frozenset[str]:
    """Without the prefixes that start with another one: they add no condition."""
    kept: list[str] = []
    for prefix in sorted(prefixes):  # a prefix sorts before the texts it starts
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return frozenset(kept)


def _concat(left: _Starts, right: _Starts) -> _Starts:
    if left == _EMPTY:
        return _cut(right)
    whole = frozenset(a + b for a in left.whole for b in right.whole)
    partial = left.partial | {a + b for a in left.whole for b in right.partial}
    joined = _Starts(whole, partial)
    if joined.size() > MAX_PREFIXES:
        # Stop expanding: what the left part matches is still a prefix of the whole.
        return _Starts(frozenset(), left.whole | left.partial)
    return _cut(joined)


def _cut(starts: _Starts) -> _Starts:
    if all(len(s) <= MAX_LENGTH for s in starts.whole | starts.partial):
        return starts
    long_ = {s for s in starts.whole if len(s) > MAX_LENGTH}
    return _Starts(
        starts.whole - long_,
        frozenset(s[:MAX_LENGTH] for s in starts.partial | long_),
    )


def _union(parts: list[_Starts]) -> _Starts:
    whole = frozenset().union(*(p.whole for p in parts))
    partial = frozenset().union(*(p.partial for p in parts))
    return _Starts(whole, partial)


def _alternation(source: str, i: int) -> tuple[_Starts, int]:
    branches: list[_Starts] = []
    while True:
        branch, i = _sequence(source, i)
        branches.append(branch)
        if i < len(source) and source[i] == "|":
            i += 1
            continue
        return _union(branches), i


def _sequence(source: str, i: int) -> tuple[_Starts, int]:
    acc = _EMPTY
    while i < len(source) and source[i] not in "|)":
        atom, i = _atom(source, i)
        atom, i = _quantified(atom, source, i)
        acc = _concat(acc, atom)
    return acc, i


def _atom(source: str, i: int) -> tuple[_Starts, int]:
    c = source[i]
    if c == "(":
        return _group(source, i)
    if c == "[":
        return _char_set(source, i)
    if c == "\\":
        return _escape(source, i)
    if c == ".":
        return _ANY, i + 1
    if c in "^$":
        return _EMPTY, i + 1
    if c in "?*+{":
        raise UnsupportedRegexError(f"{source!r}: {c!r} at {i} repeats nothing")
    return _Starts(frozenset({c}), frozenset()), i + 1


_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")


def _group(source: str, i: int) -> tuple[_Starts, int]:
    lookaround = next((p for p in _LOOKAROUNDS if source.startswith(p, i)), None)
    if lookaround is not None:
        start = i + len(lookaround)
    elif source.startswith("(?:", i):
        start = i + 3
    elif source.startswith("(?", i):
        raise UnsupportedRegexError(f"{source!r}: group {source[i : i + 4]!r} at {i}")
    else:
        start = i + 1  # a capturing group matches what its contents match
    inner, end = _alternation(source, start)
    if end >= len(source):
        raise UnsupportedRegexError(f"{source!r}: group at {i} is not closed")
    return (_EMPTY if lookaround is not None else inner), end + 1


def _escape(source: str, i: int) -> tuple[_Starts, int]:
    if i + 1 >= len(source):
        raise UnsupportedRegexError(f"{source!r}: ends with a backslash")
    c = source[i + 1]
    if c in _ZERO_WIDTH_ESCAPES:
        return _EMPTY, i + 2
    if c in _CLASS_ESCAPES:
        return _ANY, i + 2
    if c.isascii() and c.isalnum():
        raise UnsupportedRegexError(f"{source!r}: escape \\{c} at {i}")
    return _Starts(frozenset({c}), frozenset()), i + 2  # an escaped punctuation mark


def _char_set(source: str, i: int) -> tuple[_Starts, int]:
    """`[sz]`, `[- ]`: each character; a negated set, a range, a class escape or a
    larger set could be too many."""
    j = i + 1
    negated = source.startswith("^", j)
    j += negated
    chars: set[str] = set()
    many = negated
    first = True
    while j < len(source) and (source[j] != "]" or first):
        c = source[j]
        if c == "\\" and j + 1 < len(source):
            e = source[j + 1]
            if e in _CLASS_ESCAPES:
                many = True
            elif e.isascii() and e.isalnum():
                raise UnsupportedRegexError(f"{source!r}: escape \\{e} in a set at {j}")
            else:
                chars.add(e)
            j += 2
        elif c == "[" or source.startswith(("--", "&&", "~~", "||"), j):
            raise UnsupportedRegexError(f"{source!r}: {source[j : j + 2]!r} in a set at {j}")
        elif c == "-" and not first and source[j + 1 : j + 2] not in ("]", ""):
            many = True  # a range
            j += 1
        else:
            chars.add(c)
            j += 1
        first = False
    if j >= len(source):
        raise UnsupportedRegexError(f"{source!r}: set at {i} is not closed")
    if many or len(chars) > _MAX_SET or not chars:
        return _ANY, j + 1
    return _Starts(frozenset(chars), frozenset()), j + 1


def _quantified(atom: _Starts, source: str, i: int) -> tuple[_Starts, int]:
    """The atom under the quantifier that follows it, if any (greedy, lazy or
    possessive alike: they change which match is found, not what a match starts with)."""
    if i >= len(source) or source[i] not in "?*+{":
        return atom, i
    c = source[i]
    if c == "{":
        m = _REPEAT.match(source, i)
        if m is None or not (m.group(1) or m.group(3)):
            raise UnsupportedRegexError(f"{source!r}: {{ at {i} is not a repeat")
        least = int(m.group(1) or 0)
        most = least if not m.group(2) else int(m.group(3) or -1)
        end = m.end()
    else:
        least, most = {"?": (0, 1), "*": (0, -1), "+": (1, -1)}[c]
        end = i + 1
    if end < len(source) and source[end] in "?+":
        end += 1
    if least == most == 1:
        return atom, end
    if least >= 1:
        # The first repetition is there; what follows it is not known.
        return _Starts(frozenset(), atom.whole | atom.partial), end
    if most == 0:
        return _EMPTY, end
    if most == 1:
        return _union([atom, _EMPTY]), end
    return _ANY, end
