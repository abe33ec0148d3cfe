"""Part bodies read from a staging file, and keys that need percent-encoding: what the native
data plane (ocifs/dataplane.py) does on its own instead of botocore, held to the same answers."""

from __future__ import annotations

import pytest

from ocifs.content import Content

from .conftest import Backend
from .expected import MIN_PART, md5_etag, multipart_etag, pattern

# Every character class a key can hold that a URL path must encode (MinIO refuses a few
# others, e.g. a backslash; the fake's extras cover those).
ODD = "odd dir/ünï cödé +%20=&;,!'()~@$[] #?.bin"


async def test_a_part_staged_in_a_file_is_sent_from_it(backend: Backend, tmp_path) -> None:
    s3, key = backend.store, backend.key("staged")
    c = Content(tmp_path, 1 << 20)
    big, tail = pattern(MIN_PART, seed=3), pattern(12_345, seed=4)
    assert c.write_nowait(0, big) and c.write_nowait(MIN_PART, tail)
    upload_id = await s3.create_multipart(key, {})
    parts = [(1, await s3.upload_part(key, upload_id, 1, c.staged(0, MIN_PART))),
             (2, await s3.upload_part(key, upload_id, 2, c.staged(MIN_PART, MIN_PART + len(tail))))]
    c.close()  # the data plane keeps no descriptor of it
    assert [e for _, e in parts] == [md5_etag(big), md5_etag(tail)]
    assert await s3.complete_multipart(key, upload_id, parts) == multipart_etag(big, tail)
    assert await s3.get_range(key, MIN_PART - 10, MIN_PART + 10) == (big + tail)[MIN_PART - 10 : MIN_PART + 10]
    assert s3.stats["bytes.out"] == MIN_PART + len(tail)


async def test_a_staged_part_shorter_than_its_range_is_never_sent(backend: Backend, tmp_path) -> None:
    """What was acknowledged to the writer is what is sent, or nothing: a staging file that
    lost bytes fails the part instead of sending fewer."""
    s3, key = backend.store, backend.key("short")
    c = Content(tmp_path, 1 << 20)
    assert c.write_nowait(0, pattern(1000))
    upload_id = await s3.create_multipart(key, {})
    with pytest.raises(Exception):  # noqa: B017 - the fake raises the reader's error, S3 BadResponse
        await s3.upload_part(key, upload_id, 1, c.staged(0, 2000))
    c.close()
    assert await s3.list_parts(key, upload_id) == []
    await s3.abort_multipart(key, upload_id)


async def test_keys_that_need_encoding_take_parts_and_ranged_reads(backend: Backend) -> None:
    s3, key = backend.store, backend.key(ODD)
    body = pattern(MIN_PART + 5, seed=9)
    upload_id = await s3.create_multipart(key, {})
    parts = [(1, await s3.upload_part(key, upload_id, 1, body[:MIN_PART])),
             (2, await s3.upload_part(key, upload_id, 2, memoryview(body)[MIN_PART:]))]
    await s3.complete_multipart(key, upload_id, parts)
    assert [o.key for o in (await s3.list_page(backend.key("odd dir/"), delimiter=None)).objects] == [key]
    assert await s3.get_range(key, 3, MIN_PART + 2) == body[3 : MIN_PART + 2]
    info = await s3.head(key)
    assert await s3.get_range(key, 0, 4, info.etag) == body[:4]
