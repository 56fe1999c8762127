"""The reply corpus (policies/corpus/*.toml): real replies with what kind each is.

Loaded by the tests (every line must classify as labelled) and by `relayguard
policy check`, which prints the confusion table. The format is documented in
policies/corpus/README.md.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relayguard.model import Phase
from relayguard.policy.categories import Category, Classification, Scope
from relayguard.policy.classify import classify
from relayguard.policy.reply_line import reply_from_line
from relayguard.policy.rules import PolicyError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from relayguard.policy.rules import ClassifyOverride


CORPUS_DIR = Path(__file__).resolve().parent.parent / "policies" / "corpus"
_KEYS = frozenset({"line", "category", "scope", "retry_in", "source", "note", "phase"})


@dataclass(frozen=True, slots=True)
class CorpusReply:
    line: str
    category: Category
    scope: Scope | None
    retry_in: float | None
    source: str
    note: str
    phase: Phase | None
    where: str  # "file.toml reply[12]"

    def classify(self, overrides: Iterable[ClassifyOverride] = ()) -> Classification:
        return classify(reply_from_line(self.line, self.phase), overrides=overrides)


def corpus_files(directory: Path = CORPUS_DIR) -> list[Path]:
    return sorted(directory.glob("*.toml"))


def load_reply_corpus(files: Sequence[Path] | None = None) -> list[CorpusReply]:
    """Every reply of the corpus files (all of policies/corpus/ if None), checked."""
    out: list[CorpusReply] = []
    for path in corpus_files() if files is None else files:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"{path}: cannot read the reply corpus: {exc}") from None
        default_source = data.get("source", "")
        for i, raw in enumerate(data.get("reply", [])):
            out.append(_read(path, i, raw, str(default_source)))
    return out


def _read(path: Path, index: int, raw: object, default_source: str) -> CorpusReply:
    where = f"{path.name} reply[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: reply[{index}]: expected a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise PolicyError(f"{path}: reply[{index}]: {unknown[0]}: unknown key")
    try:
        line = str(raw["line"])
        reply_from_line(line)
        category = Category(str(raw["category"]))
        scope = Scope(str(raw["scope"])) if "scope" in raw else None
        phase = Phase(str(raw["phase"])) if "phase" in raw else None
        retry = raw.get("retry_in")
        retry_in = float(retry) if isinstance(retry, int | float) else None
    except (KeyError, ValueError) as exc:
        raise PolicyError(f"{path}: reply[{index}]: {exc}") from None
    source = str(raw.get("source", default_source))
    if not source:
        raise PolicyError(f"{path}: reply[{index}]: source: every line needs its source")
    return CorpusReply(
        line, category, scope, retry_in, source, str(raw.get("note", "")), phase, where
    )


def problems(reply: CorpusReply, found: Classification) -> list[str]:
    """What differs between a classification and the corpus label."""
    out: list[str] = []
    if found.category is not reply.category:
        out.append(f"category {found.category.value}, expected {reply.category.value}")
    if reply.scope is not None and found.scope is not reply.scope:
        out.append(f"scope {found.scope.value}, expected {reply.scope.value}")
    if reply.retry_in is not None and found.retry_in != reply.retry_in:
        out.append(f"retry hint {found.retry_in}, expected {reply.retry_in}")
    return out


def check_corpus(
    replies: Sequence[CorpusReply], overrides: Sequence[ClassifyOverride] = ()
) -> tuple[Counter[tuple[Category, Category]], list[str]]:
    """The confusion counts (label, classified) and every problem, labelled."""
    confusion: Counter[tuple[Category, Category]] = Counter()
    failures: list[str] = []
    for reply in replies:
        found = reply.classify(overrides)
        confusion[reply.category, found.category] += 1
        wrong = problems(reply, found)
        if wrong:
            failures.append(
                f"{reply.where}: {reply.line[:80]!r}: {'; '.join(wrong)} "
                f"(by {found.signal}: {found.evidence})"
            )
    return confusion, failures


_SHORT = {
    Category.RBL_BLOCK: "rbl",
    Category.THROTTLE: "thr",
    Category.SPAM_CONTENT: "spam",
    Category.POLICY: "pol",
    Category.NO_SUCH_USER: "user",
    Category.MAILBOX_FULL: "full",
    Category.MESSAGE_TOO_BIG: "big",
    Category.TEMPORARY_OTHER: "tmp",
    Category.PERMANENT_OTHER: "perm",
}


def confusion_table(confusion: Counter[tuple[Category, Category]]) -> str:
    """Rows: the corpus label; columns: what relayguard classified it as."""
    cats = list(Category)
    width = max(len(c.value) for c in cats)
    head = " " * width + "".join(f"{_SHORT[c]:>6}" for c in cats) + "   right"
    lines = ["reply corpus: label (rows) by classification (columns)", head]
    right = total = 0
    for expected in cats:
        row = [confusion.get((expected, got), 0) for got in cats]
        n = sum(row)
        ok = confusion.get((expected, expected), 0)
        right += ok
        total += n
        share = f"{ok / n:7.1%}" if n else "      -"
        cells = "".join(f"{v:6d}" if v else f"{'.':>6}" for v in row)
        lines.append(f"{expected.value:<{width}}{cells} {share} of {n}")
    share = f"{right / total:.1%}" if total else "-"
    lines.append(f"{right} of {total} replies classified as labelled ({share})")
    return "\n".join(lines)
