"""Single objects: PUT, HEAD, GET, DELETE, CopyObject, ETags, metadata, times, counters."""

from __future__ import annotations

import math

import pytest

from ocifs.store import NotFound, Rejected

from .conftest import Backend
from .expected import MIN_PART, md5_etag, multipart_etag, pattern, window


async def test_put_returns_the_quoted_md5_and_head_agrees(backend: Backend) -> None:
    s3, key = backend.store, backend.key("a")
    etag = await s3.put(key, b"hello", {})
    assert etag == '"5d41402abc4b2a76b9719d911017c592"'
    assert (await s3.head(key)).etag == etag


async def test_etags_equal_for_equal_content_and_differ_otherwise(backend: Backend) -> None:
    s3 = backend.store
    first = await s3.put(backend.key("one"), b"same", {})
    second = await s3.put(backend.key("two"), b"same", {})
    other = await s3.put(backend.key("one"), b"other", {})
    assert first == second
    assert other != first
    assert (await s3.head(backend.key("one"))).etag == other  # the overwrite is what HEAD sees


async def test_every_body_type_of_the_protocol_is_stored(backend: Backend) -> None:
    """ObjectStore.put takes bytes, bytearray or memoryview (store.Body)."""
    s3 = backend.store
    for name, body in [("b", b"abc"), ("ba", bytearray(b"abc")), ("mv", memoryview(b"xabcx")[1:4])]:
        assert await s3.put(backend.key(name), body, {}) == md5_etag(b"abc"), name
        assert await s3.get(backend.key(name)) == (md5_etag(b"abc"), b"abc")


async def test_empty_object(backend: Backend) -> None:
    s3, key = backend.store, backend.key("empty")
    assert await s3.put(key, b"", {}) == '"d41d8cd98f00b204e9800998ecf8427e"'
    info = await s3.head(key)
    assert info.size == 0
    assert await s3.get(key) == (info.etag, b"")


async def test_head_reads_metadata_and_parses_mode_and_mtime(backend: Backend) -> None:
    s3, key = backend.store, backend.key("m")
    await s3.put(key, b"12345", {"mode": str(0o100644), "mtime": "1700000000.250000", "other": "x"})
    info = await s3.head(key)
    assert (info.key, info.size, info.mode, info.mtime, info.meta_known) == (key, 5, 0o100644, 1700000000.25, True)


async def test_metadata_names_are_case_insensitive(backend: Backend) -> None:
    """They travel as HTTP headers: HEAD gives them back lower-cased."""
    s3, key = backend.store, backend.key("case")
    await s3.put(key, b"", {"Mode": "420", "MTIME": "3.5"})
    info = await s3.head(key)
    assert (info.mode, info.mtime) == (420, 3.5)


async def test_without_mtime_metadata_mtime_is_last_modified_in_whole_seconds(backend: Backend) -> None:
    s3, key = backend.store, backend.key("t")
    with window() as w:
        await s3.put(key, b"x", {})
    head = await s3.head(key)
    listed = (await s3.list_page(key, delimiter=None)).objects[0]
    assert head.mode is None
    assert head.mtime == math.floor(head.mtime) and w.holds(head.mtime)  # HTTP date: seconds
    assert listed.mtime == round(listed.mtime, 3) and w.holds(listed.mtime)  # ISO 8601: millis
    assert head.mtime == math.floor(listed.mtime)


async def test_get_returns_body_and_etag_and_counts_bytes(backend: Backend) -> None:
    s3, key, body = backend.store, backend.key("g"), pattern(70_000)
    etag = await s3.put(key, body, {})
    assert await s3.get(key) == (etag, body)
    assert s3.stats["bytes.out"] == len(body)
    assert s3.stats["bytes.in"] == len(body)
    assert (s3.stats["requests.PutObject"], s3.stats["requests.GetObject"]) == (1, 1)


async def test_a_missing_key_is_not_found_and_not_counted_as_an_error(backend: Backend) -> None:
    s3, key = backend.store, backend.key("missing")
    with pytest.raises(NotFound):
        await s3.head(key)
    with pytest.raises(NotFound):
        await s3.get(key)
    with pytest.raises(NotFound):
        await s3.get_range(key, 0, 1)
    with pytest.raises(NotFound):
        await s3.copy(key, backend.key("dst"), {})
    assert s3.stats["requests.HeadObject"] == 1 and s3.stats["requests.GetObject"] == 2
    assert not [name for name in s3.stats if name.startswith("errors.")]  # answers, not failures


async def test_delete_removes_and_a_missing_key_is_fine(backend: Backend) -> None:
    s3, key = backend.store, backend.key("d")
    await s3.put(key, b"x", {})
    await s3.delete(key)
    with pytest.raises(NotFound):
        await s3.head(key)
    await s3.delete(key)  # again: S3 answers 204 either way
    await s3.delete(backend.key("never-existed"))


async def test_copy_replaces_metadata_and_keeps_the_content(backend: Backend) -> None:
    s3, src, dst = backend.store, backend.key("src"), backend.key("dst")
    await s3.put(src, b"content", {"mode": "1", "mtime": "7"})
    etag = await s3.copy(src, dst, {"mode": "2"})
    assert etag == md5_etag(b"content")
    assert await s3.get(dst) == (etag, b"content")
    info = await s3.head(dst)
    assert (info.mode, info.etag) == (2, etag)
    assert info.mtime != 7.0  # REPLACE: the source's x-amz-meta-mtime is not carried over
    assert ((await s3.head(src)).mode, (await s3.head(src)).mtime) == (1, 7.0)  # untouched


async def test_copy_onto_itself_with_new_metadata(backend: Backend) -> None:
    """MetadataDirective REPLACE makes a self-copy legal: how chmod reaches S3."""
    s3, key = backend.store, backend.key("self")
    before = await s3.put(key, b"data", {"mode": "1"})
    etag = await s3.copy(key, key, {"mode": "2", "mtime": "5.0"})
    info = await s3.head(key)
    assert (etag, info.etag, info.mode, info.mtime) == (before, before, 2, 5.0)
    assert await s3.get(key) == (before, b"data")


async def test_copy_of_a_multipart_object_gets_a_plain_md5_etag(backend: Backend) -> None:
    """The copy is rewritten as one part (MinIO, and AWS for a single CopyObject): a fix-up
    self-copy after a multipart upload changes the ETag the file is cached under."""
    s3, key = backend.store, backend.key("mp")
    parts = [pattern(MIN_PART), b"tail"]
    upload_id = await s3.create_multipart(key, {})
    etags = [await s3.upload_part(key, upload_id, n, p) for n, p in enumerate(parts, 1)]
    assert await s3.complete_multipart(key, upload_id, list(enumerate(etags, 1))) == multipart_etag(*parts)
    copied = await s3.copy(key, key, {"mode": "3"})
    assert copied == md5_etag(b"".join(parts))
    assert (await s3.head(key)).etag == copied


async def test_non_ascii_metadata_is_rejected(backend: Backend) -> None:
    """S3 metadata travels in HTTP headers: ASCII only. Refused, not worth a retry."""
    s3, key = backend.store, backend.key("meta")
    with pytest.raises(Rejected):
        await s3.put(key, b"x", {"name": "\u00e9t\u00e9"})
    with pytest.raises(NotFound):
        await s3.head(key)
