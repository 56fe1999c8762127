"""Runs `async def` tests on a fresh event loop each (no plugin needed)."""

from __future__ import annotations

import asyncio
import inspect

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(asyncio.wait_for(pyfuncitem.obj(**kwargs), timeout=90))
    return True


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's private PostgreSQL cluster (tests/pgserver.py), started once;
    skipped, with the reason printed, only where PostgreSQL cannot be installed."""
    import pgserver  # noqa: PLC0415 - tests/ is on the path; only PostgreSQL tests need it

    why = pgserver.unavailable()
    if why is not None:
        pytest.skip(why)
    return pgserver.shared_cluster()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import pgserver  # noqa: PLC0415

    pgserver.stop_shared_cluster()
