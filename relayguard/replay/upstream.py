"""The simulated upstream: a `sender` for the queue manager that answers per the scenario.

It stands where `relayguard.smtp.delivery.Delivery` stands and speaks the same
language: an `Outcome` with a `Reply` per recipient, synthetic network replies
(`network_reply`, phase connect) for refused and timed-out connections, a
greeting rejection as a greeting-phase reply, RCPT and after-data replies as
the peer would send them. `answer` gives an outcome and its latency at once, for
the replay's heap of events; `send` waits the latency on the clock, for test mode.
Connection caps are the route table's, as in the server.

All randomness comes from one `random.Random` seeded by the caller; the replay
is single-threaded, so the draws happen in the same order on every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relayguard.clock import Clock
from relayguard.config import RouteSettings
from relayguard.model import Outcome, Phase, Reply, Transaction, domain_of, network_reply
from relayguard.policy.rules import DurationRange
from relayguard.replay.scenario import ReplySpec, Scenario, Window

_SESSION_PHASES = (Phase.CONNECT, Phase.GREETING, Phase.HELO, Phase.MAIL)
_DATA_PHASES = (Phase.DATA, Phase.AFTER_DATA)
_REFUSED_LATENCY = 0.005
_DROP_TEXT = (
    "lost connection with {peer} while sending end of data -- message may be sent more than once"
)


@dataclass(slots=True)
class _Route:
    settings: RouteSettings
    peer: str
    accept: Reply
    # windows per phase, in file order, for this route (route and source already matched)
    windows: dict[Phase, tuple[Window, ...]]
    # ... and of those, the ones for a destination domain (filled as domains show up)
    matching: dict[tuple[Phase, str], tuple[Window, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class Capture:
    """One transaction as it would have gone out (test mode and the replay's log)."""

    at: float
    route: str
    host: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    body: bytes
    replies: dict[str, Reply]


@dataclass
class SimulatedUpstream:
    scenario: Scenario
    routes: Sequence[RouteSettings]
    clock: Clock
    rng: random.Random
    t0: float  # POSIX time of the scenario's t=0
    on_send: Callable[[Capture], None] | None = None
    sends: int = 0
    _routes: dict[str, _Route] = field(init=False)
    _reply_cache: dict[tuple[int, str, str], Reply] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._routes = {}
        for r in self.routes:
            mine = [
                w
                for w in self.scenario.windows
                if (not w.routes or r.name in w.routes)
                and (not w.sources or r.source_address in w.sources)
            ]
            by_phase = {p: tuple(w for w in mine if w.reply.phase is p) for p in Phase}
            accept = Reply.parse(
                int(self.scenario.accept[:3]), self.scenario.accept[4:], Phase.AFTER_DATA, r.host
            )
            self._routes[r.name] = _Route(
                r,
                f"{r.host}[{r.host}]:{r.port}",
                accept,
                by_phase,
            )

    async def send(self, route: str, tx: Transaction) -> Outcome:
        """The outcome, after its latency on the clock (test mode: the relay's own clock)."""
        start = self.clock.now()
        outcome, latency = self.answer(route, tx, start)
        if latency > 0:
            await self.clock.sleep_until(start + latency)
        return outcome

    async def close(self) -> None:
        return None

    # -- one transaction -------------------------------------------------------

    def _draw(self, r: _Route, phase: Phase, domain: str, t: float) -> Window | None:
        key = (phase, domain)
        windows = r.matching.get(key)
        if windows is None:
            windows = r.matching[key] = tuple(
                w
                for w in r.windows[phase]
                if w.applies(r.settings.name, r.settings.source_address, domain)
            )
        for w in windows:
            if w.start <= t < w.end and (w.probability >= 1.0 or self.rng.random() < w.probability):
                return w
        return None

    def _reply(self, r: _Route, w: Window, domain: str) -> Reply:
        key = (w.index, r.settings.name, domain)
        cached = self._reply_cache.get(key)
        if cached is not None:
            return cached
        reply = _make_reply(w.reply, r, domain)
        self._reply_cache[key] = reply
        return reply

    def _latency(self, w: Window | None, r: _Route) -> float:
        if w is not None and w.latency is not None:
            return w.latency.draw(self.rng)
        if w is not None and w.reply.kind == "refused":
            return _REFUSED_LATENCY
        if w is not None and w.reply.kind == "timeout":
            return r.settings.connect_timeout
        return self.scenario.latency.draw(self.rng)

    def _first(self, r: _Route, phases: tuple[Phase, ...], domain: str, t: float) -> Window | None:
        for phase in phases:
            w = self._draw(r, phase, domain, t)
            if w is not None:
                return w
        return None

    def _replies(
        self, r: _Route, addresses: list[str], t: float
    ) -> tuple[dict[str, Reply], Window | None]:
        """Every recipient's reply, and the window that ended the session, if one did."""
        domain = domain_of(addresses[0]) if addresses else ""
        decisive = self._first(r, _SESSION_PHASES, domain, t)
        if decisive is not None:  # refused, timed out, or rejected before RCPT: all alike
            return dict.fromkeys(addresses, self._reply(r, decisive, domain)), decisive
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        for address in addresses:
            d = domain_of(address)
            w = self._draw(r, Phase.RCPT, d, t)
            if w is None:
                accepted.append(address)
            else:
                replies[address] = self._reply(r, w, d)
        final = r.accept
        if accepted:
            decisive = self._first(r, _DATA_PHASES, domain, t)
            if decisive is not None:
                final = self._reply(r, decisive, domain)
        for address in accepted:
            replies[address] = final
        return replies, decisive

    def answer(self, route: str, tx: Transaction, start: float) -> tuple[Outcome, float]:
        """What the upstream of `route` answers a transaction begun at `start`, and how
        long that takes."""
        r = self._routes[route]
        self.sends += 1
        addresses = [a for a, _ in tx.recipients]
        replies, decisive = self._replies(r, addresses, start - self.t0)
        latency = self._latency(decisive, r)
        if self.on_send is not None:
            self.on_send(
                Capture(
                    start,
                    r.settings.name,
                    r.settings.host,
                    tx.sender,
                    tuple(addresses),
                    len(tx.body),
                    tx.body,
                    replies,
                )
            )
        outcome = Outcome(
            replies,
            r.settings.host,
            peer_has_dsn=self.scenario.peer_dsn,
            possible_duplicate=decisive is not None and decisive.reply.kind == "drop",
        )
        return outcome, latency


def _make_reply(spec: ReplySpec, r: _Route, domain: str) -> Reply:
    host = r.settings.host
    if spec.kind == "refused":
        return network_reply(
            "4.4.1", f"connect to {r.peer}: Connection refused", Phase.CONNECT, host
        )
    if spec.kind == "timeout":
        return network_reply(
            "4.4.1", f"connect to {r.peer}: Connection timed out", Phase.CONNECT, host
        )
    if spec.kind == "drop":
        return network_reply("4.4.2", _DROP_TEXT.format(peer=r.peer), Phase.AFTER_DATA, host)
    text = (
        spec.text.replace("{source}", r.settings.source_address or "192.0.2.1")
        .replace("{route}", r.settings.name)
        .replace("{host}", host)
        .replace("{domain}", domain)
    )
    return Reply.parse(spec.code, text, spec.phase, host)


def accept_all_scenario(name: str = "test-mode") -> Scenario:
    """The scenario of `serve --test-mode` without --scenario: every transaction gets 250."""
    return Scenario(
        name=name,
        file="<test-mode>",
        duration=float("inf"),
        windows=(),
        latency=DurationRange(0.0, 0.0),
    )
