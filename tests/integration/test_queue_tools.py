"""`relayguard queue …` and `relayguard routes …` against a running relay (and without one).

The CLI is `relayguard.cli.main`, run in a thread: it talks to the in-process
relay over the control socket in the spool directory, like an operator's shell.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog
from support import (
    UpstreamHandler,
    config_head,
    make_message,
    run_cli,
    running_relay,
    send,
    until,
    upstream,
)

from relayguard.clock import VirtualClock, seeded_queue_ids
from relayguard.config import load_settings
from relayguard.model import (
    Attempt,
    Envelope,
    MessageState,
    Phase,
    Recipient,
    RecipientState,
    Reply,
)
from relayguard.ops.control import ControlError, Controller, StoppedQueue
from relayguard.queue.spool import Keep, MessageQuery, NewMessage
from relayguard.queue.spool.memory import MemorySpool


@pytest.fixture(autouse=True)
def _quiet_logs():
    # The relay logs to stdout; keep it out of the CLI output that capsys reads.
    with structlog.testing.capture_logs():
        yield


def write_config(tmp_path: Path, *ports: int) -> Path:
    names = ["primary", "backup"]
    routes = "".join(
        f'\n[[route]]\nname = "{names[i]}"\nhost = "127.0.0.1"\nport = {port}\n'
        for i, port in enumerate(ports)
    )
    path = tmp_path / "relayguard.toml"
    path.write_text(config_head(tmp_path) + routes)
    return path


async def queued(relay) -> dict[str, object]:
    return {m.message_id: m for m in await relay.spool.messages()}


async def settled(relay, count: int) -> dict:
    """Wait until `count` messages are queued, each tried at least once, none in flight."""
    async with asyncio.timeout(15):
        while True:
            msgs = await queued(relay)
            if (
                len(msgs) == count
                and all(m.attempts for m in msgs.values())
                and not relay.manager.delivering
            ):
                return msgs
            await asyncio.sleep(0.02)


def greylist(domain: str) -> UpstreamHandler:
    return UpstreamHandler(
        on_rcpt=lambda peer, rcpt: (
            "450 4.2.0 Greylisted, come back later" if rcpt.endswith("@" + domain) else None
        )
    )


async def test_list_show_retry_hold_release_delete(tmp_path: Path, capsys) -> None:
    handler = greylist("grey.example")
    async with upstream(handler) as up:
        config = write_config(tmp_path, up.port)
        async with running_relay(load_settings(config)) as relay:
            for i in (1, 2, 3):
                await send(relay.address, "s@example.org", [f"r{i}@grey.example"], make_message(i))
            await send(relay.address, "s@example.org", ["ok@other.example"], make_message(4))
            msgs = await settled(relay, 3)
            ids = {n: msgs[f"<msg-{n}@test.example>"].queue_id for n in (1, 2, 3)}

            code, out, _ = await run_cli(capsys, config, "queue", "list")
            assert code == 0
            for qid in ids.values():
                assert qid in out
            assert "deferred" in out
            assert "r1@grey.example (queued) 450 4.2.0 Greylisted" in out
            assert "[rule greylisted, route primary]" in out
            assert "-- 3 message(s)" in out

            code, out, _ = await run_cli(
                capsys,
                config,
                "queue",
                "list",
                "--json",
                "--domain",
                "GREY.example",
                "--route",
                "primary",
            )
            listed = json.loads(out)
            assert sorted(m["queue_id"] for m in listed) == sorted(ids.values())
            assert {m["state"] for m in listed} == {"deferred"}
            _, out, _ = await run_cli(capsys, config, "queue", "list", "--state", "held")
            assert out.strip() == "Queue is empty"
            _, out, _ = await run_cli(
                capsys, config, "queue", "list", "--json", "--route", "backup"
            )
            assert json.loads(out) == []

            code, out, _ = await run_cli(capsys, config, "queue", "show", ids[1].lower())
            assert code == 0
            assert f"Queue ID:    {ids[1]}" in out
            assert "Sender:      <s@example.org>" in out
            assert "Subject: test 1" in out
            assert "Message-ID: <msg-1@test.example>" in out
            assert "Attempts: 1" in out
            assert "route primary" in out
            assert "450 4.2.0 Greylisted, come back later -> defer by rule greylisted" in out
            assert "next attempt" in out
            _, out, _ = await run_cli(capsys, config, "queue", "show", ids[1], "--json")
            shown = json.loads(out)
            assert shown["history"][0]["rule"] == "greylisted"
            assert shown["envelope"]["recipients"][0]["address"] == "r1@grey.example"
            code, _, err = await run_cli(capsys, config, "queue", "show", "NOSUCHID")
            assert code == 2
            assert "NOSUCHID: not in the queue" in err

            # The greylisting ends; retry one message now, ignoring its backoff.
            handler.on_rcpt = lambda peer, rcpt: None
            code, out, _ = await run_cli(capsys, config, "queue", "retry", ids[1])
            assert (code, out.strip()) == (0, f"retry: 1 message(s): {ids[1]}")
            await up.wait_for(2)
            await until(lambda: not relay.manager.delivering)
            assert set(await queued(relay)) == {"<msg-2@test.example>", "<msg-3@test.example>"}

            # Hold: out of the scheduler, not retried, until released.
            code, out, _ = await run_cli(capsys, config, "queue", "hold", ids[2])
            assert code == 0
            seq2 = (await queued(relay))["<msg-2@test.example>"].seq
            assert seq2 not in relay.manager.due
            assert (await queued(relay))["<msg-2@test.example>"].state is MessageState.HELD
            code, out, _ = await run_cli(capsys, config, "queue", "retry", ids[2])
            assert code == 1
            assert "held: release it instead" in out
            _, out, _ = await run_cli(capsys, config, "queue", "list", "--state", "held", "--json")
            assert [m["queue_id"] for m in json.loads(out)] == [ids[2]]
            await asyncio.sleep(0.3)
            assert len(up.received) == 2
            code, out, _ = await run_cli(capsys, config, "queue", "release", ids[2])
            assert code == 0
            await up.wait_for(3)

            # Delete: gone, never delivered, no report.
            code, out, _ = await run_cli(capsys, config, "queue", "delete", ids[3], "NOSUCHID")
            assert code == 1
            assert f"delete: 1 message(s): {ids[3]}" in out
            assert "not in the queue: NOSUCHID" in out
            await until(lambda: not relay.manager.delivering)
            assert await queued(relay) == {}
            await asyncio.sleep(0.3)
    assert sorted(r.message_id for r in up.received) == [
        "<msg-1@test.example>",
        "<msg-2@test.example>",
        "<msg-4@test.example>",
    ]


async def test_shape_bounce_and_retry_all(tmp_path: Path, capsys) -> None:
    handler = greylist("grey.example")
    async with upstream(handler) as up:
        config = write_config(tmp_path, up.port)
        async with running_relay(load_settings(config)) as relay:
            await send(
                relay.address,
                "s@example.org",
                ["a@grey.example", "b@grey.example"],
                make_message(1),
            )
            await send(relay.address, "s@example.org", ["c@grey.example"], make_message(2))
            await send(
                relay.address,
                "s@example.org",
                ["d@grey.example", "ok@fine.example"],
                make_message(3),
            )
            msgs = await settled(relay, 3)

            code, out, _ = await run_cli(capsys, config, "queue", "shape")
            assert code == 0
            lines = out.splitlines()
            assert lines[0].split() == [
                "T",
                "5",
                "10",
                "20",
                "40",
                "80",
                "160",
                "320",
                "640",
                "1280",
                "1280+",
            ]
            assert lines[1].split() == [
                "TOTAL",
                "3",
                "3",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
            ]
            assert lines[2].split()[:3] == ["grey.example", "3", "3"]
            assert len(lines) == 3  # fine.example was delivered: nothing pending there
            _, out, _ = await run_cli(capsys, config, "queue", "shape", "--json", "--state", "held")
            assert json.loads(out)["rows"] == []

            # Bounce: the sender gets an NDR naming the operator, the message leaves.
            bounced = msgs["<msg-1@test.example>"].queue_id
            code, out, _ = await run_cli(capsys, config, "queue", "bounce", bounced)
            assert (code, out.strip()) == (0, f"bounce: 1 message(s): {bounced}")
            [ndr] = [r for r in await up.wait_for(2) if not r.mail_from]
            assert ndr.rcpt_tos == ["s@example.org"]
            text = ndr.content.decode()
            assert "message bounced by the operator" in text
            assert "Status: 5.0.0" in text
            assert "a@grey.example" in text
            assert "b@grey.example" in text
            await until(lambda: not relay.manager.delivering)
            assert set(await queued(relay)) == {"<msg-2@test.example>", "<msg-3@test.example>"}

            # Everything else, now.
            handler.on_rcpt = lambda peer, rcpt: None
            code, out, _ = await run_cli(
                capsys, config, "queue", "retry", "--domain", "grey.example"
            )
            assert code == 0
            assert out.startswith("retry: 2 message(s)")
            await up.wait_for(4)
            await until(lambda: not relay.manager.delivering)
            assert await queued(relay) == {}
            code, out, _ = await run_cli(capsys, config, "queue", "retry", "--all")
            assert (code, out.strip()) == (0, "retry: 0 message(s)")
            code, _, err = await run_cli(capsys, config, "queue", "hold")
            assert code == 2
            assert "name queue IDs, or --domain D, or --all" in err


async def test_routes_and_resume(tmp_path: Path, capsys) -> None:
    blocked = UpstreamHandler(
        on_rcpt=lambda peer, rcpt: (
            "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"
        )
    )
    async with upstream(blocked) as primary, upstream() as backup:
        config = write_config(tmp_path, primary.port, backup.port)
        async with running_relay(load_settings(config)) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(1))
            await backup.wait_for(1)
            await until(lambda: not relay.manager.delivering)

            code, out, _ = await run_cli(capsys, config, "routes")
            assert code == 0
            primary_block, backup_block = out.split("\nbackup ")
            assert primary_block.startswith(f"primary  127.0.0.1:{primary.port}  connections 0/20")
            assert "suspended for example.com until" in primary_block
            assert "blocked using zen.spamhaus.org [rule rbl-block]" in primary_block
            assert "rerouted 554 5.7.1" in primary_block
            assert "not suspended" in backup_block
            assert "delivered 250 2.0.0" in backup_block
            _, out, _ = await run_cli(capsys, config, "routes", "--json")
            data = json.loads(out)
            [suspension] = data["routes"][0]["suspensions"]
            assert suspension["destination"] == "example.com"
            assert suspension["rule"] == "rbl-block"
            assert suspension["until"] > data["now"] + 250
            assert data["routes"][1]["counts"] == {"delivered": 1}

            code, out, _ = await run_cli(
                capsys, config, "routes", "resume", "primary", "--domain", "other.example"
            )
            assert (code, out.strip()) == (0, "primary: no suspension for other.example to lift")
            code, out, _ = await run_cli(
                capsys, config, "routes", "resume", "primary", "--domain", "example.com"
            )
            assert (code, out.strip()) == (0, "primary: lifted 1 suspension(s) for example.com")
            assert relay.manager.routes.suspensions == {}
            _, out, _ = await run_cli(capsys, config, "routes")
            assert "suspended" not in out.split("\nbackup ")[0].replace("not suspended", "")
            code, _, err = await run_cli(capsys, config, "routes", "resume", "nosuch")
            assert code == 2
            assert "no route 'nosuch'" in err


async def test_operator_and_delivery_round_do_not_race(tmp_path: Path, capsys) -> None:
    """Hold and bounce while a delivery round is under way: the round finishes, the
    hold sticks, and the bounce waits for the round instead of racing it."""
    tries: list[float] = []

    def on_data(peer: str, content: bytes) -> str | None:
        head = content.split(b"\r\n\r\n")[0]
        if b"\r\nMessage-ID: <msg-1@" not in head:
            return None  # the NDR
        tries.append(asyncio.get_running_loop().time())
        return "451 4.3.0 Try later"

    handler = UpstreamHandler(on_data=on_data, data_delay=1.0)
    async with upstream(handler) as up:
        config = write_config(tmp_path, up.port)
        async with running_relay(load_settings(config)) as relay:
            await send(relay.address, "s@example.org", ["r@example.com"], make_message(1))
            await until(lambda: bool(relay.manager.delivering))
            [msg] = (await queued(relay)).values()
            code, _, _ = await run_cli(capsys, config, "queue", "hold", msg.queue_id)
            assert code == 0
            assert relay.manager.delivering  # the round was not cut short
            await until(lambda: not relay.manager.delivering)
            [after] = (await queued(relay)).values()
            assert after.state is MessageState.HELD  # the round's record kept the hold
            assert [a.action for a in after.attempts] == ["defer"]

            await run_cli(capsys, config, "queue", "release", msg.queue_id)
            await until(lambda: bool(relay.manager.delivering))
            code, out, _ = await run_cli(capsys, config, "queue", "bounce", msg.queue_id)
            assert code == 0, out
            # The bounce waited for the second round to be recorded, then failed it.
            ndrs = [r for r in await up.wait_for(1, timeout=10) if not r.mail_from]
            assert len(ndrs) == 1
            await until(lambda: not relay.manager.delivering)
            assert await queued(relay) == {}
            assert len(tries) == 2  # two rounds, both deferred by the upstream
            await asyncio.sleep(0.3)
            assert [r for r in up.received if r.mail_from] == []


async def test_without_a_running_relay(tmp_path: Path, capsys) -> None:
    async with upstream(greylist("grey.example")) as up:
        config = write_config(tmp_path, up.port)
        async with running_relay(load_settings(config)) as relay:
            await send(relay.address, "s@example.org", ["r@grey.example"], make_message(1))
            await send(relay.address, "s@example.org", ["r@grey.example"], make_message(2))
            msgs = await settled(relay, 2)
            sock = Path(load_settings(config).server.spool) / "control.sock"
            assert sock.exists()
            # A relay that runs but cannot be reached: the CLI must not touch the spool.
            sock.rename(sock.with_name("moved.sock"))
            code, _, err = await run_cli(capsys, config, "queue", "list")
            assert code == 2
            assert "is running" in err
            assert "does not answer" in err
            sock.with_name("moved.sock").rename(sock)
        assert not sock.exists()
        ids = [msgs[f"<msg-{n}@test.example>"].queue_id for n in (1, 2)]

        # Stopped: the tools work on the spool itself.
        code, out, _ = await run_cli(capsys, config, "queue", "list")
        assert code == 0
        assert ids[0] in out
        assert ids[1] in out
        code, out, _ = await run_cli(capsys, config, "queue", "hold", ids[0])
        assert code == 0
        code, out, _ = await run_cli(capsys, config, "queue", "bounce", ids[1])
        assert code == 0
        code, out, _ = await run_cli(capsys, config, "routes")
        assert "relayguard is not running" in out
        code, _, err = await run_cli(capsys, config, "routes", "resume", "primary")
        assert code == 2
        assert "not running" in err

        # Started again: the held message waits, the NDR queued offline goes out.
        async with running_relay(load_settings(config)) as relay:
            [ndr] = await up.wait_for(1)
            assert ndr.mail_from == ""
            assert "message bounced by the operator" in ndr.content.decode()
            await until(lambda: not relay.manager.delivering)
            _, out, _ = await run_cli(capsys, config, "queue", "list", "--json")
            [held] = json.loads(out)
            assert (held["queue_id"], held["state"]) == (ids[0], "held")


async def test_the_controller_on_another_backend(tmp_path: Path) -> None:
    """The controller knows the spool by its protocol only: every operation, on the
    in-memory backend, with the stopped relay's queue view (as the CLI's direct mode has)."""
    settings = load_settings(write_config(tmp_path, 2525))
    clock = VirtualClock(10_000.0)
    spool = MemorySpool(seeded_queue_ids(1))
    controller = Controller(
        settings, spool, StoppedQueue(settings, spool, clock), clock, running=False
    )

    def message(n: int, *rcpts: str, at: float) -> NewMessage:
        env = Envelope("s@example.org", tuple(Recipient(a) for a in rcpts))
        body = f"Subject: test {n}\r\nMessage-ID: <m{n}@x>\r\n\r\nhi\r\n".encode()
        return NewMessage(env, body, at, message_id=f"<m{n}@x>")

    old, grey, mixed = await spool.accept_many(
        [
            message(1, "a@old.example", at=10_000.0 - 3600),
            message(2, "b@grey.example", at=10_000.0 - 60),
            message(3, "c@grey.example", "d@other.example", at=10_000.0),
        ]
    )
    later, _ = await spool.load(grey.seq)
    later.next_attempt_at = 10_600.0  # deferred: waiting for a retry
    await spool.update(later, [])

    def ids(result: dict) -> list[str]:
        return [m["queue_id"] for m in result["messages"]]

    assert ids(await controller.handle({"op": "list"})) == [
        old.queue_id,
        grey.queue_id,
        mixed.queue_id,
    ]
    assert ids(await controller.handle({"op": "list", "state": "deferred"})) == [grey.queue_id]
    assert ids(await controller.handle({"op": "list", "state": "active"})) == [
        old.queue_id,
        mixed.queue_id,
    ]
    assert ids(await controller.handle({"op": "list", "domain": "GREY.example"})) == [
        grey.queue_id,
        mixed.queue_id,
    ]
    shown = await controller.handle({"op": "show", "id": grey.queue_id.lower()})
    assert ["Subject", "test 2"] in shown["message"]["headers"]
    shape = (await controller.handle({"op": "shape"}))["shape"]
    assert shape["rows"] == [
        ["grey.example", 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ["old.example", 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        ["other.example", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]

    result = await controller.handle({"op": "hold", "ids": [grey.queue_id, "NOSUCH"]})
    assert (result["done"], result["missing"]) == ([grey.queue_id], ["NOSUCH"])
    assert ids(await controller.handle({"op": "list", "state": "held"})) == [grey.queue_id]
    assert (await controller.handle({"op": "shape", "state": "held"}))["shape"]["rows"] == [
        ["grey.example", 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    ]
    result = await controller.handle({"op": "retry", "ids": [grey.queue_id]})
    assert result["skipped"] == [{"queue_id": grey.queue_id, "why": "held: release it instead"}]
    assert (await controller.handle({"op": "release", "ids": [grey.queue_id]}))["done"] == [
        grey.queue_id
    ]
    assert (await spool.load(grey.seq))[0].next_attempt_at == clock.now()
    assert (await controller.handle({"op": "retry", "domain": "old.example"}))["done"] == [
        old.queue_id
    ]

    assert (await controller.handle({"op": "delete", "ids": [old.queue_id]}))["done"] == [
        old.queue_id
    ]
    assert (await controller.handle({"op": "bounce", "ids": [mixed.queue_id]}))["done"] == [
        mixed.queue_id
    ]
    left = await spool.messages()
    assert [m.queue_id for m in left[:1]] == [grey.queue_id]
    [report] = left[1:]  # the operator's bounce made one NDR, to the sender
    assert report.envelope.sender == ""
    assert [r.address for r in report.envelope.recipients] == ["s@example.org"]
    assert (await spool.queue_stats(clock.now())).as_dict() == {
        "active": 2.0,
        "deferred": 0.0,
        "held": 0.0,
        "oldest_arrival": grey.arrival_at,
        "kept": 0.0,
        "kept_size": 0.0,
    }
    with pytest.raises(ControlError, match="state must be one of"):
        await controller.handle({"op": "list", "state": "frozen"})

    # A kept copy (what bounced because of our egress), resent on this backend too.
    rbl = Reply(554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked", Phase.RCPT)
    bounced = await spool.accept(message(4, "r@example.com", at=clock.now()))
    bounced.envelope = bounced.envelope.with_recipients(
        (Recipient("r@example.com", RecipientState.FAILED, last_reply=rbl, failed_rule="x"),)
    )
    bounced.state = MessageState.DONE
    refusal = Attempt(
        clock.now(),
        "primary",
        ("r@example.com",),
        rbl,
        "bounce",
        "x",
        1.0,
        "rbl_block",
        scope="egress",
    )
    keep = Keep(clock.now(), clock.now() + 3600.0, 10**6)
    await spool.finish_with_reports(bounced, [refusal], [], keep)
    [listed] = (await controller.handle({"op": "list", "kept": True}))["messages"]
    assert (listed["queue_id"], listed["state"]) == (bounced.queue_id, "kept")
    for bad, why in (
        ({"route": "nosuch"}, r"no route 'nosuch' \(routes: primary\)"),
        ({"category": "spam"}, "category must be one of rbl_block, throttle"),
        ({"since": "1h"}, "since must be a number of seconds"),
    ):
        with pytest.raises(ControlError, match=why):
            await controller.handle({"op": "resend", **bad})
    queued_before = await spool.messages()
    dry = await controller.handle({"op": "resend", "dry_run": True})
    assert (dry["messages"], dry["recipients"]) == (1, 1)
    assert await spool.messages() == queued_before
    done = await controller.handle({"op": "resend", "route": "primary", "since": 60.0})
    assert (done["messages"], done["recipients"]) == (1, 1)
    [again] = await spool.messages(
        MessageQuery(queue_ids=frozenset({done["resent"][0]["queue_id"]}))
    )
    assert again.envelope.pinned_routes == ("primary",)
    assert [r.address for r in again.pending] == ["r@example.com"]
    assert (await controller.handle({"op": "resend"}))["messages"] == 0
