"""A spool on a real filesystem that fills up: the sender is told 452 4.3.1, nothing
that was answered 250 is lost, and mail is taken again once there is room."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from support import free_port, make_message, relay_settings, running_relay, send

from relayguard.queue.spool.sqlite import SqliteSpool


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where`, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the disk-full test runs on a real filesystem)")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    """A file that takes every free byte of the filesystem."""
    filler = directory / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_a_full_disk_answers_452_loses_nothing_and_recovers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", "8m") as fs:
        # Nothing listens on the route: mail stays queued, so what the spool holds is
        # what was acknowledged.
        settings = relay_settings(
            fs, [{"name": "primary", "host": "127.0.0.1", "port": free_port()}]
        )
        body = "x" * 70 + "\r\n"
        async with running_relay(settings) as relay:
            acknowledged = []
            for n in range(3):
                _, reply = await send(
                    relay.address, "s@example.org", ["r@example.com"], make_message(n)
                )
                acknowledged.append(f"<msg-{n}@test.example>")
                assert "Ok" in reply or reply.startswith("2"), reply
            filler = _fill(fs)
            refusals = []
            for n in range(10, 14):
                big = make_message(n, body=body * 3000)  # ~220 KB: no room for it
                try:
                    await send(relay.address, "s@example.org", ["r@example.com"], big)
                except aiosmtplib.SMTPResponseException as exc:
                    refusals.append(f"{exc.code} {exc.message}")
                else:
                    acknowledged.append(f"<msg-{n}@test.example>")
            assert refusals, "the full filesystem never refused a message"
            assert all(r.startswith("452 4.3.1") for r in refusals), refusals

            filler.unlink()
            _, reply = await send(
                relay.address, "s@example.org", ["r@example.com"], make_message(99)
            )
            acknowledged.append("<msg-99@test.example>")
            assert "Ok" in reply or reply.startswith("2"), reply

        # What was answered 250 is there for a relay started afresh on the same spool.
        spool = SqliteSpool(fs / "spool")
        try:
            kept = {m.message_id for m in await spool.messages()}
        finally:
            await spool.close()
    assert set(acknowledged) <= kept, (acknowledged, kept)
    assert len(kept) == len(acknowledged)
