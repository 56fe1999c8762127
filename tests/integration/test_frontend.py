"""The front end over real sockets: what a sending MTA is told, and what reaches the spool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

from support import (
    free_port,
    make_message,
    raw_session,
    relay_settings,
    running_relay,
    send,
    strip_received,
    upstream,
)

from relayguard.queue.spool.sqlite import SqliteSpool

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<s@example.org>\r\n"
RCPT = b"RCPT TO:<r@example.com>\r\n"


def _settings(tmp_path: Path, extra: str = "", port: int | None = None):
    return relay_settings(
        tmp_path, [{"name": "primary", "host": "127.0.0.1", "port": port or free_port()}], extra
    )


async def test_message_arrives_byte_exact_with_received_header(tmp_path: Path) -> None:
    async with upstream() as up, running_relay(_settings(tmp_path, port=up.port)) as relay:
        body = "Line one\r\n.leading dot survives\r\n..two dots\r\n\r\n8bit: caf\u00e9\r\n"
        original = make_message(1, body=body)
        refused, reply = await send(
            relay.address, "s@example.org", ["a@example.com", "b@example.com"], original
        )
        assert refused == {}
        assert "queued as" in reply
        [got] = await up.wait_for(1)
        assert got.mail_from == "s@example.org"
        assert sorted(got.rcpt_tos) == ["a@example.com", "b@example.com"]
        assert got.content.startswith(b"Received: from ")
        assert b"by relay.test (relayguard" in got.content
        # Everything after our Received header is what the client sent, byte for byte.
        assert strip_received(got.content) == original


async def test_enhanced_codes_on_every_reply(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        replies = await raw_session(
            relay.address, [EHLO, b"FOO bar\r\n", MAIL, RCPT, b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n"]
        )
    assert replies[0].startswith("220 relay.test ESMTP")
    assert "250-ENHANCEDSTATUSCODES" in replies[1]
    assert "250-DSN" in replies[1]
    assert replies[2].startswith("500 5.5.2")
    assert replies[3].startswith("250 2.1.0")
    assert replies[4].startswith("250 2.1.5")
    assert replies[5].startswith("250 2.0.0")
    assert replies[6].startswith("250 2.0.0")
    assert replies[7].startswith("221 2.0.0")


async def test_address_validation(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        replies = await raw_session(
            relay.address,
            [
                EHLO,
                MAIL,
                b"RCPT TO:<@hop1,@hop2:user@example.com>\r\n",
                b"RCPT TO:<>\r\n",
                b"RCPT TO:<a\x00b@example.com>\r\n",
                b"RCPT TO:<a\rb@example.com>\r\n",
                b"RCPT TO:<no-domain>\r\n",
                b"RCPT TO:<ok@example.com> FOO=BAR\r\n",
                b"RCPT TO:<ok@example.com> NOTIFY=SOMETIMES\r\n",
                RCPT,
            ],
        )
    assert [r[:9] for r in replies[3:]] == [
        "501 5.1.3",
        "501 5.1.3",
        "501 5.1.3",
        "501 5.1.3",
        "501 5.1.3",
        "555 5.5.4",
        "501 5.5.4",
        "250 2.1.5",
    ]


async def test_a_client_outside_allowed_networks_is_refused_at_connect(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'allowed_networks = ["192.0.2.0/24"]')
    async with running_relay(settings) as relay:
        reader, writer = await asyncio.open_connection(*relay.address)
        greeting = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)  # b"": the relay closed
        writer.close()
        assert await relay.spool.index() == []
    assert greeting.startswith(b"554 5.7.1 ")
    assert b"127.0.0.1 may not relay here" in greeting
    assert rest == b""


async def test_too_many_recipients(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path, "max_recipients = 2")) as relay:
        replies = await raw_session(
            relay.address,
            [EHLO, MAIL, RCPT, b"RCPT TO:<r2@example.com>\r\n", b"RCPT TO:<r3@example.com>\r\n"],
        )
    assert replies[3].startswith("250")
    assert replies[4].startswith("250")
    assert replies[5].startswith("452 4.5.3")


async def test_oversize_message_refused(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path, "max_message_size = 2048")) as relay:
        big = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"
        replies = await raw_session(
            relay.address,
            [
                EHLO,
                b"MAIL FROM:<s@example.org> SIZE=4096\r\n",
                MAIL,
                RCPT,
                b"DATA\r\n",
                big * 40 + b".\r\n",
                b"QUIT\r\n",
            ],
        )
        spool = relay.spool
        assert await spool.index() == []
    assert "250-SIZE 2048" in replies[1]
    assert replies[2].startswith("552 5.3.4")
    assert replies[5].startswith("354")
    assert replies[6].startswith("552 5.3.4")


async def test_bare_lf_cr_and_nul_refused(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        for bad in (
            b"Subject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<evil@x>\r\n",
            b"Subject: x\r\n\r\nbare\rcr\r\n",
            b"Subject: x\r\n\r\nnul\x00\r\n",
        ):
            replies = await raw_session(
                relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", bad + b".\r\n"]
            )
            assert replies[5].startswith("550 5.6.0"), replies
        assert await relay.spool.index() == []


async def test_empty_body_and_dot_lines(tmp_path: Path) -> None:
    async with upstream() as up, running_relay(_settings(tmp_path, port=up.port)) as relay:
        replies = await raw_session(relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", b".\r\n"])
        assert replies[5].startswith("250 2.0.0 Ok: queued as")
        replies = await raw_session(
            relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", b"a.\r\n..\r\nb.\r\n.\r\n"]
        )
        assert replies[5].startswith("250 2.0.0")
        got = await up.wait_for(2)
    assert sorted(strip_received(g.content) for g in got) == [b"", b"a.\r\n.\r\nb.\r\n"]


async def test_internal_error_answers_451_and_keeps_session(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:

        async def broken(_message: object) -> object:
            raise RuntimeError("simulated bug")

        relay.handler.spool = type("Broken", (), {"accept": staticmethod(broken)})()
        replies = await raw_session(
            relay.address,
            [EHLO, MAIL, RCPT, b"DATA\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n", b"NOOP\r\n"],
        )
    assert replies[5].startswith("451 4.3.0")
    assert replies[6].startswith("250")


async def test_disk_full_answers_452(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        full = SqliteSpool(tmp_path / "tiny", max_page_count=12)
        relay.handler.spool = full
        big = b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 200 + b".\r\n"
        replies = await raw_session(relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", big])
        await full.close()
    assert replies[5].startswith("452 4.3.1"), replies


async def test_connection_caps(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "max_connections_per_client = 2")
    async with running_relay(settings) as relay:
        host, port = relay.address
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        for r, _ in held:
            assert (await r.readline()).startswith(b"220")
        r3, w3 = await asyncio.open_connection(host, port)
        line = await asyncio.wait_for(r3.readline(), 5)
        assert line.startswith(b"421 4.7.0")
        for _, w in [*held, (r3, w3)]:
            w.close()


async def test_idle_timeout_says_421(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path, 'idle_timeout = "0.3s"')) as relay:
        r, w = await asyncio.open_connection(*relay.address)
        assert (await r.readline()).startswith(b"220")
        line = await asyncio.wait_for(r.readline(), 5)
        w.close()
    assert line.startswith(b"421 4.4.2")


async def test_shutdown_refuses_new_mail_with_421(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        r, w = await asyncio.open_connection(*relay.address)
        await r.readline()
        relay.handler.accepting = False
        for cmd in (EHLO, MAIL, RCPT, b"DATA\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n"):
            w.write(cmd)
            while True:
                line = await r.readline()
                if line[3:4] != b"-":
                    break
        w.close()
    assert line.startswith(b"421 4.3.2")


async def test_client_vanishing_after_the_dot_does_not_cancel_the_commit(tmp_path: Path) -> None:
    async with upstream() as up, running_relay(_settings(tmp_path, port=up.port)) as relay:
        spool = relay.spool
        # Hold the spool's writer so that the commit is pending when the client goes.
        writer_free = threading.Event()
        spool._jobs.put((lambda _conn: writer_free.wait(10), concurrent.futures.Future()))
        async with asyncio.timeout(5):
            while spool._jobs.qsize():  # until the writer has taken the blocking job
                await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection(*relay.address)
        await r.readline()
        w.write(EHLO + MAIL + RCPT + b"DATA\r\n" + make_message(42) + b".\r\n")
        await w.drain()
        async with asyncio.timeout(5):
            while spool._jobs.qsize() == 0:  # our message's commit is queued
                await asyncio.sleep(0.01)
        w.transport.abort()
        await asyncio.sleep(0.1)  # the session is torn down while the commit waits
        writer_free.set()
        [got] = await up.wait_for(1)
    assert strip_received(got.content) == make_message(42)


async def test_data_timeout_says_421(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path, 'data_timeout = "0.3s"')) as relay:
        replies = await raw_session(
            relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", b"Subject: slow\r\n\r\nand then nothing"]
        )
        assert await relay.spool.index() == []
    assert replies[4].startswith("354")
    assert replies[5].startswith("421 4.4.2")


async def test_large_message_read_in_pieces_arrives_byte_exact(tmp_path: Path) -> None:
    # Over the 1 MiB read size with no ".\r\n" in it: the LimitOverrunError path.
    body = "".join(f"line {i:07d} " + "x" * 60 + "\r\n" for i in range(40_000))
    async with upstream() as up, running_relay(_settings(tmp_path, port=up.port)) as relay:
        original = make_message(7, body=body)
        assert len(original) > 2 * 1024 * 1024
        await send(relay.address, "s@example.org", ["r@example.com"], original)
        [got] = await up.wait_for(1)
    assert strip_received(got.content) == original


async def test_a_message_with_too_many_hops_is_refused_at_the_end_of_data(tmp_path: Path) -> None:
    async with (
        upstream() as up,
        running_relay(_settings(tmp_path, "max_hops = 5", port=up.port)) as relay,
    ):
        hops = "".join(
            f"Received: from hop{i}.example by hop{i + 1}.example; x\r\n" for i in range(5)
        )
        looped = (hops + "Subject: loop\r\n\r\nround and round\r\n").encode()
        replies = await raw_session(
            relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", looped + b".\r\n", b"QUIT\r\n"]
        )
        assert replies[5].startswith("554 5.4.6 Too many hops: 5 Received: headers (limit 5)")
        # One fewer goes through (ours makes it the limit).
        ok = (hops.split("\r\n", 1)[1] + "Subject: fine\r\n\r\nonce\r\n").encode()
        replies = await raw_session(
            relay.address, [EHLO, MAIL, RCPT, b"DATA\r\n", ok + b".\r\n", b"QUIT\r\n"]
        )
        assert replies[5].startswith("250 2.0.0 Ok: queued as")
        [got] = await up.wait_for(1)
        assert b"Subject: fine" in got.content
        assert len(up.received) == 1


async def test_dsn_parameters_get_the_longer_lines_rfc_3461_allows(tmp_path: Path) -> None:
    async with running_relay(_settings(tmp_path)) as relay:
        orcpt = "rfc822;" + "a" * 400 + "@example.com"
        envid = "e" * 90
        replies = await raw_session(
            relay.address,
            [
                EHLO,
                f"MAIL FROM:<s@example.org> RET=HDRS ENVID={envid}\r\n".encode(),
                f"RCPT TO:<r@example.com> NOTIFY=FAILURE ORCPT={orcpt}\r\n".encode(),
                f"RCPT TO:<r2@example.com> ORCPT={orcpt + 'x' * 600}\r\n".encode(),
            ],
        )
    assert replies[2].startswith("250 ")
    assert replies[3].startswith("250 ")
    assert replies[4].startswith("500 ")  # past 512 + 500: still refused
