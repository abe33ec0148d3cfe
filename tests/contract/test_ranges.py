"""Ranged GETs: the read path asks for exactly [start, end) of a version it knows."""

from __future__ import annotations

import pytest

from ocifs.store import BadResponse, Rejected

from .conftest import Backend
from .expected import pattern


async def test_get_range_returns_exactly_start_to_end(backend: Backend) -> None:
    s3, key, body = backend.store, backend.key("r"), pattern(100_000)
    await s3.put(key, body, {})
    for start, end in [(0, 1), (0, 100_000), (99_999, 100_000), (12_345, 67_890), (65_536, 65_537)]:
        assert await s3.get_range(key, start, end) == body[start:end], (start, end)
    assert s3.stats["bytes.in"] == 1 + 100_000 + 1 + (67_890 - 12_345) + 1


async def test_a_range_starting_at_or_beyond_the_end_is_rejected(backend: Backend) -> None:
    """416 InvalidRange: a reader past EOF of a version that shrank learns it at once."""
    s3, key = backend.store, backend.key("r")
    await s3.put(key, b"hello", {})
    for start in (5, 7):
        with pytest.raises(Rejected):
            await s3.get_range(key, start, start + 3)
    assert s3.stats["errors.GetObject"] == 2  # a refusal is counted, and not retried


async def test_an_empty_range_is_rejected(backend: Backend) -> None:
    """``bytes=3-2``: MinIO answers 416 InvalidRange. (AWS ignores a range it cannot parse and
    sends the whole object, which S3.get_range would refuse as BadResponse.)"""
    s3, key = backend.store, backend.key("r")
    await s3.put(key, b"hello", {})
    with pytest.raises(Rejected):
        await s3.get_range(key, 3, 3)


async def test_a_range_ending_beyond_the_end_is_a_bad_response(backend: Backend) -> None:
    """S3 clamps the end (``bytes 2-4/5``); get_range promised exactly end - start bytes."""
    s3, key = backend.store, backend.key("r")
    await s3.put(key, b"hello", {})
    with pytest.raises(BadResponse):
        await s3.get_range(key, 2, 100)
    assert await s3.get_range(key, 2, 5) == b"llo"
