"""Conditional requests: how ocifs publishes index.json without losing a concurrent write, and
reads or copies a version that cannot change under it."""

from __future__ import annotations

import pytest

from ocifs.store import NotFound, PreconditionFailed

from .conftest import Backend
from .expected import md5_etag


async def test_put_if_none_match_creates_only_a_missing_key(backend: Backend) -> None:
    s3, key = backend.store, backend.key("new")
    etag = await s3.put(key, b"first", {}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await s3.put(key, b"second", {}, if_none_match=True)
    assert await s3.get(key) == (etag, b"first")


async def test_put_if_match_replaces_only_the_version_named(backend: Backend) -> None:
    s3, key = backend.store, backend.key("idx")
    v1 = await s3.put(key, b"v1", {})
    v2 = await s3.put(key, b"v2", {}, if_match=v1)
    assert v2 == md5_etag(b"v2")
    with pytest.raises(PreconditionFailed):
        await s3.put(key, b"lost update", {}, if_match=v1)  # v1 is gone
    assert await s3.get(key) == (v2, b"v2")
    assert s3.stats["errors.PutObject"] == 0  # a lost race is an answer


async def test_put_if_match_on_a_missing_key_is_not_found(backend: Backend) -> None:
    """MinIO answers 404 NoSuchKey, not 412. (AWS's reference names only 412, for a mismatch;
    other S3 stores answer 412 here, e.g. Apache Ozone: a caller must treat both as a lost
    race.)"""
    s3, key = backend.store, backend.key("absent")
    with pytest.raises(NotFound):
        await s3.put(key, b"x", {}, if_match=md5_etag(b"x"))
    with pytest.raises(NotFound):
        await s3.head(key)


async def test_get_range_with_an_etag_reads_only_that_version(backend: Backend) -> None:
    s3, key = backend.store, backend.key("blob")
    old = await s3.put(key, b"old content", {})
    assert await s3.get_range(key, 0, 3, old) == b"old"
    new = await s3.put(key, b"new content", {})
    with pytest.raises(PreconditionFailed):
        await s3.get_range(key, 0, 3, old)
    assert await s3.get_range(key, 0, 3, new) == b"new"
    assert await s3.get_range(key, 0, 3, "") == b"new"  # an empty etag means no condition


async def test_copy_with_a_source_etag_copies_only_that_version(backend: Backend) -> None:
    s3, src, dst = backend.store, backend.key("src"), backend.key("dst")
    old = await s3.put(src, b"old", {})
    await s3.put(src, b"new", {})
    with pytest.raises(PreconditionFailed):
        await s3.copy(src, dst, {}, src_etag=old)
    with pytest.raises(NotFound):
        await s3.head(dst)
    assert await s3.copy(src, dst, {}, src_etag=md5_etag(b"new")) == md5_etag(b"new")
    assert (await s3.get(dst))[1] == b"new"
