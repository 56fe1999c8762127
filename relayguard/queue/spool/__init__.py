"""The durable queue: an interface and its backends.

The front end calls `accept` and answers 250 only when it returns; the queue
manager reads the index at start, loads messages when they are due and
records what happened to them. Every backend must make `accept` durable
(fsynced) before returning, and may group concurrent commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relayguard.model import Attempt, Envelope, MessageState, QueuedMessage


class SpoolError(Exception):
    """The spool could not do what was asked; the message is not lost."""


class SpoolFullError(SpoolError):
    """No space left: the front end answers 452 4.3.1."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the scheduler needs of a queued message: small, so 1M fit in memory."""

    seq: int
    next_attempt_at: float
    state: MessageState


@dataclass(frozen=True, slots=True)
class NewMessage:
    envelope: Envelope
    body: bytes
    arrival_at: float
    message_id: str = ""
    queue_id: str = ""  # chosen by the front end for its Received header; made here if empty


class Spool(Protocol):
    async def accept(self, message: NewMessage) -> QueuedMessage:
        """Commit durably; return only when the message is on disk."""
        ...

    async def accept_many(self, messages: Sequence[NewMessage]) -> list[QueuedMessage]: ...

    async def load(self, seq: int) -> tuple[QueuedMessage, bytes] | None:
        """The message and its body, or None if it is gone (deleted by an operator)."""
        ...

    async def update(self, message: QueuedMessage, new_attempts: Sequence[Attempt]) -> None:
        """Store recipient states, state and next attempt; append the new attempts.
        A message in state DONE is removed."""
        ...

    async def finish_with_reports(
        self, message: QueuedMessage, new_attempts: Sequence[Attempt], reports: Sequence[NewMessage]
    ) -> list[QueuedMessage]:
        """`update` and queue generated reports (NDRs) in one transaction, so a crash
        never loses the failure nor sends its report twice."""
        ...

    async def index(self, after_seq: int = 0) -> list[IndexEntry]:
        """Every message not DONE with seq > after_seq, for loading the scheduler."""
        ...

    async def close(self) -> None: ...
