"""The S3 client's asyncio loop: an error nobody awaited is one log line when it is a closed
connection (aiohttp's body writer, found by scripts/soak.py), a traceback otherwise."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp

from ocifs.s3 import AsyncioThread


def unretrieved(t: AsyncioThread, exc: BaseException) -> None:
    """A task that fails with ``exc`` and is dropped without anyone awaiting it."""

    async def fail() -> None:
        raise exc

    async def drop() -> None:
        task = asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del task
        gc.collect()  # asyncio reports an unretrieved error when the task is collected

    t.run_blocking(drop(), timeout=10)


def test_a_connection_closed_under_a_request_body_is_one_line(caplog):
    t = AsyncioThread()
    try:
        with caplog.at_level(logging.DEBUG):
            unretrieved(t, aiohttp.ClientConnectionResetError("Cannot write to closing transport"))
    finally:
        t.close()
    lines = [r for r in caplog.records if "Cannot write to closing transport" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.INFO, caplog.text
    assert "Traceback" not in caplog.text


def test_any_other_unretrieved_error_keeps_its_traceback(caplog):
    t = AsyncioThread()
    try:
        with caplog.at_level(logging.DEBUG):
            unretrieved(t, ZeroDivisionError("a bug"))
    finally:
        t.close()
    bugs = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], ZeroDivisionError)]
    assert bugs and bugs[0].levelno == logging.ERROR, caplog.text
