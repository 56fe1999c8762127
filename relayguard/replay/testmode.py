"""`relayguard serve --test-mode`: the live relay, delivering to an in-process capture.

The front end, spool, queue manager and policy run as in production; only the
sender is replaced. `CaptureSender` records each transaction (and logs a
`test_mode_captured` event naming the route, host and source address it would
have used) and answers 250, or answers per a scenario file as the replay's
simulated upstream does, on the relay's own clock. No connection leaves the
process.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import structlog

from relayguard.clock import Clock, SystemClock
from relayguard.config import Settings
from relayguard.model import Outcome, Transaction
from relayguard.replay.inputs import headers_of
from relayguard.replay.scenario import Scenario, load_scenario
from relayguard.replay.upstream import Capture, SimulatedUpstream, accept_all_scenario

log = structlog.get_logger("relayguard.testmode")

KEEP = 1000  # captured transactions kept in memory (the latest)


class CaptureSender:
    """A `sender` for the queue manager that sends nothing anywhere."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        scenario: Scenario | None = None,
        seed: int = 1,
        capture_dir: Path | None = None,
        keep: int = KEEP,
    ) -> None:
        self.routes = {r.name: r for r in settings.routes}
        self.captured: deque[Capture] = deque(maxlen=keep)
        self.count = 0
        self.capture_dir = capture_dir
        if capture_dir is not None:
            capture_dir.mkdir(parents=True, exist_ok=True)
        self._upstream = SimulatedUpstream(
            scenario or accept_all_scenario(),
            settings.routes,
            clock,
            random.Random(f"test-mode/{seed}"),
            clock.now(),
            on_send=self._record,
        )

    async def send(self, route: str, tx: Transaction) -> Outcome:
        return await self._upstream.send(route, tx)

    async def close(self) -> None:
        return None

    def _record(self, cap: Capture) -> None:
        self.count += 1
        self.captured.append(cap)
        r = self.routes[cap.route]
        mid = (headers_of(cap.body).get("message-id") or [""])[0]
        log.info(
            "test_mode_captured",
            route=cap.route,
            host=r.host,
            port=r.port,
            source_address=r.source_address,
            sender=cap.sender,
            recipients=list(cap.recipients),
            size=cap.size,
            message_id=mid,
            replies={a: reply.render() for a, reply in cap.replies.items()},
        )
        if self.capture_dir is not None:
            head = (
                f"X-Relayguard-Test-Route: {cap.route} ({r.host}:{r.port}"
                f"{', from ' + r.source_address if r.source_address else ''})\r\n"
                f"X-Relayguard-Test-Envelope-From: <{cap.sender}>\r\n"
                f"X-Relayguard-Test-Envelope-To: "
                f"{', '.join(f'<{a}>' for a in cap.recipients)}\r\n"
            ).encode()
            name = f"{self.count:06d}-{cap.route}.eml"
            (self.capture_dir / name).write_bytes(head + cap.body)


def make_capture_sender(
    settings: Settings,
    *,
    scenario: str | None,
    seed: int,
    capture_dir: str | None,
    clock: Clock | None = None,
) -> CaptureSender:
    loaded = load_scenario(scenario) if scenario else None
    if loaded is not None:
        loaded.check_routes(tuple(r.name for r in settings.routes))
    return CaptureSender(
        settings,
        clock or SystemClock(),
        scenario=loaded,
        seed=seed,
        capture_dir=Path(capture_dir) if capture_dir else None,
    )
