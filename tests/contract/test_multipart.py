"""Multipart uploads: how large files are streamed and blobs over 5 GiB are copied."""

from __future__ import annotations

import pytest
import trio

from ocifs.store import NoSuchUpload, NotFound, ObjectStore, PreconditionFailed, Rejected

from .conftest import Backend
from .expected import MIN_PART, md5_etag, multipart_etag, pattern, window

BIG = pattern(MIN_PART, seed=1)  # the smallest legal part that is not the last
TAIL = pattern(1000, seed=2)


async def _upload(s3: ObjectStore, key: str, upload_id: str, *parts: bytes) -> list[tuple[int, str]]:
    return [(n, await s3.upload_part(key, upload_id, n, body)) for n, body in enumerate(parts, 1)]


async def test_upload_complete_and_read_back(backend: Backend) -> None:
    s3, key = backend.store, backend.key("big")
    upload_id = await s3.create_multipart(key, {"mode": str(0o100600)})
    parts = await _upload(s3, key, upload_id, BIG, TAIL)
    assert [etag for _, etag in parts] == [md5_etag(BIG), md5_etag(TAIL)]
    etag = await s3.complete_multipart(key, upload_id, parts)
    assert etag == multipart_etag(BIG, TAIL) and etag.endswith('-2"')
    info = await s3.head(key)
    assert (info.size, info.etag, info.mode) == (len(BIG) + len(TAIL), etag, 0o100600)
    assert await s3.get(key) == (etag, BIG + TAIL)
    assert await s3.list_multipart(backend.key("")) == []
    assert s3.stats["bytes.out"] == len(BIG) + len(TAIL)


async def test_the_object_appears_only_at_completion(backend: Backend) -> None:
    """Until CompleteMultipartUpload the key shows what it held before, then the new content
    all at once (how a rewrite of a published file stays atomic)."""
    s3, key = backend.store, backend.key("atomic")
    old = await s3.put(key, b"old", {})
    upload_id = await s3.create_multipart(key, {})
    parts = await _upload(s3, key, upload_id, BIG, TAIL)
    assert await s3.get(key) == (old, b"old")
    assert [o.key for o in (await s3.list_page(key, delimiter=None)).objects] == [key]
    new = await s3.complete_multipart(key, upload_id, parts)
    assert await s3.get(key) == (new, BIG + TAIL)
    fresh = backend.key("fresh")
    upload_id = await s3.create_multipart(fresh, {})
    parts = await _upload(s3, fresh, upload_id, TAIL)
    with pytest.raises(NotFound):
        await s3.head(fresh)
    assert await s3.complete_multipart(fresh, upload_id, parts) == multipart_etag(TAIL)


async def test_upload_part_takes_every_body_type_and_a_function(backend: Backend) -> None:
    """store.BodySource: bytes, bytearray, memoryview, or a function returning one."""
    s3, key = backend.store, backend.key("bodies")
    upload_id = await s3.create_multipart(key, {})
    bodies = [TAIL, bytearray(TAIL), memoryview(TAIL), lambda: TAIL, lambda: memoryview(TAIL)]
    for number, body in enumerate(bodies, 1):
        assert await s3.upload_part(key, upload_id, number, body) == md5_etag(TAIL), number
    parts = await s3.list_parts(key, upload_id)
    assert [(p.number, p.size) for p in parts] == [(n, len(TAIL)) for n in range(1, 6)]
    await s3.complete_multipart(key, upload_id, [(5, parts[4].etag)])
    assert (await s3.get(key))[1] == TAIL


async def test_every_part_but_the_last_must_be_5_mib(backend: Backend) -> None:
    """EntityTooSmall: the rule that decides ocifs' smallest part size."""
    s3, key = backend.store, backend.key("small")
    upload_id = await s3.create_multipart(key, {})
    small = await _upload(s3, key, upload_id, BIG[:-1], TAIL)
    with pytest.raises(Rejected):
        await s3.complete_multipart(key, upload_id, small)
    with pytest.raises(NotFound):
        await s3.head(key)
    # The upload survives a refused completion: a part can be sent again and it completes.
    fixed = await _upload(s3, key, upload_id, BIG, TAIL)
    assert await s3.complete_multipart(key, upload_id, fixed) == multipart_etag(BIG, TAIL)


async def test_completion_checks_part_order_and_etags(backend: Backend) -> None:
    s3, key = backend.store, backend.key("order")
    upload_id = await s3.create_multipart(key, {})
    big2 = pattern(MIN_PART, seed=3)
    parts = await _upload(s3, key, upload_id, BIG, big2, TAIL)
    (n1, e1), (n2, e2), (n3, e3) = parts
    refused = {
        "descending": [(n2, e2), (n1, e1), (n3, e3)],  # every part big enough: only order is wrong
        "wrong etag": [(n1, e1), (n2, e2), (n3, md5_etag(b"something else"))],
        "missing part": [(n1, e1), (n2, e2), (4, e3)],
        "no parts": [],
    }
    for why, listed in refused.items():
        with pytest.raises(Rejected):
            await s3.complete_multipart(key, upload_id, listed)
            pytest.fail(why)
    assert await s3.complete_multipart(key, upload_id, parts) == multipart_etag(BIG, big2, TAIL)


async def test_a_part_sent_again_replaces_the_earlier_one(backend: Backend) -> None:
    s3, key = backend.store, backend.key("again")
    upload_id = await s3.create_multipart(key, {})
    stale = await s3.upload_part(key, upload_id, 1, b"stale")
    fresh = await s3.upload_part(key, upload_id, 1, TAIL)
    assert [(p.number, p.size, p.etag) for p in await s3.list_parts(key, upload_id)] == [(1, len(TAIL), fresh)]
    with pytest.raises(Rejected):
        await s3.complete_multipart(key, upload_id, [(1, stale)])
    await s3.complete_multipart(key, upload_id, [(1, fresh)])
    assert (await s3.get(key))[1] == TAIL


async def test_part_numbers_run_from_1_to_10000(backend: Backend) -> None:
    s3, key = backend.store, backend.key("numbers")
    upload_id = await s3.create_multipart(key, {})
    for number in (0, 10_001):
        with pytest.raises(Rejected):
            await s3.upload_part(key, upload_id, number, b"x")
    await s3.upload_part(key, upload_id, 10_000, b"x")
    assert [p.number for p in await s3.list_parts(key, upload_id)] == [10_000]


async def test_an_unknown_upload_id_is_no_such_upload_and_abort_ignores_it(backend: Backend) -> None:
    s3, key = backend.store, backend.key("k")
    real = await s3.create_multipart(key, {})
    for upload_id, named in [("not-an-upload", key), (real, backend.key("another key"))]:
        with pytest.raises(NoSuchUpload):
            await s3.upload_part(named, upload_id, 1, b"x")
        with pytest.raises(NoSuchUpload):
            await s3.complete_multipart(named, upload_id, [(1, md5_etag(b"x"))])
        with pytest.raises(NoSuchUpload):
            await s3.list_parts(named, upload_id)
        await s3.abort_multipart(named, upload_id)
    assert [u.upload_id for u in await s3.list_multipart(key)] == [real]  # untouched by those


async def test_abort_ends_the_upload(backend: Backend) -> None:
    s3, key = backend.store, backend.key("aborted")
    upload_id = await s3.create_multipart(key, {})
    parts = await _upload(s3, key, upload_id, TAIL)
    await s3.abort_multipart(key, upload_id)
    assert await s3.list_multipart(key) == []
    with pytest.raises(NoSuchUpload):
        await s3.upload_part(key, upload_id, 2, b"x")
    with pytest.raises(NoSuchUpload):
        await s3.complete_multipart(key, upload_id, parts)
    with pytest.raises(NotFound):
        await s3.head(key)
    await s3.abort_multipart(key, upload_id)  # twice is fine


async def test_a_completed_upload_id_is_gone(backend: Backend) -> None:
    s3, key = backend.store, backend.key("done")
    upload_id = await s3.create_multipart(key, {})
    parts = await _upload(s3, key, upload_id, TAIL)
    await s3.complete_multipart(key, upload_id, parts)
    with pytest.raises(NoSuchUpload):
        await s3.complete_multipart(key, upload_id, parts)
    with pytest.raises(NoSuchUpload):
        await s3.list_parts(key, upload_id)


async def test_uploads_of_one_key_coexist_and_are_listed(backend: Backend) -> None:
    s3, key = backend.store, backend.key("twice")
    with window() as w:
        first = await s3.create_multipart(key, {})
        second = await s3.create_multipart(key, {})
    assert first != second
    uploads = await s3.list_multipart(key)
    assert sorted((u.key, u.upload_id) for u in uploads) == sorted([(key, first), (key, second)])
    assert all(w.holds(u.initiated) for u in uploads)
    await s3.complete_multipart(key, second, await _upload(s3, key, second, b"second"))
    assert [u.upload_id for u in await s3.list_multipart(key)] == [first]
    assert (await s3.get(key))[1] == b"second"
    await s3.abort_multipart(key, first)
    assert await s3.list_multipart(backend.key("")) == []


async def test_list_parts_reports_number_size_etag_and_time(backend: Backend) -> None:
    s3, key = backend.store, backend.key("parts")
    upload_id = await s3.create_multipart(key, {})
    assert await s3.list_parts(key, upload_id) == []
    with window() as w:
        async with trio.open_nursery() as nursery:  # parts arrive in any order
            for n, body in [(3, b"three"), (1, BIG), (2, TAIL)]:
                nursery.start_soon(s3.upload_part, key, upload_id, n, body)
    parts = await s3.list_parts(key, upload_id)
    assert [(p.number, p.size, p.etag) for p in parts] == [
        (1, len(BIG), md5_etag(BIG)),
        (2, len(TAIL), md5_etag(TAIL)),
        (3, 5, md5_etag(b"three")),
    ]
    assert all(w.holds(p.last_modified) for p in parts)


async def test_upload_part_copy_copies_a_byte_range(backend: Backend) -> None:
    """How blobs over 5 GiB are copied: the part ETag is the MD5 of the copied bytes."""
    s3, src, dst = backend.store, backend.key("src"), backend.key("dst")
    body = BIG + TAIL
    src_etag = await s3.put(src, body, {})
    upload_id = await s3.create_multipart(dst, {"mode": "1"})
    first = await s3.upload_part_copy(src, dst, upload_id, 1, 0, MIN_PART, src_etag)
    second = await s3.upload_part_copy(src, dst, upload_id, 2, MIN_PART, len(body))
    assert (first, second) == (md5_etag(BIG), md5_etag(TAIL))
    etag = await s3.complete_multipart(dst, upload_id, [(1, first), (2, second)])
    assert etag == multipart_etag(BIG, TAIL)
    assert await s3.get(dst) == (etag, body)


async def test_upload_part_copy_refuses_a_changed_source_and_a_range_past_its_end(backend: Backend) -> None:
    s3, src, dst = backend.store, backend.key("src"), backend.key("dst")
    old = await s3.put(src, b"0123456789", {})
    await s3.put(src, b"abcdefghij", {})
    upload_id = await s3.create_multipart(dst, {})
    with pytest.raises(PreconditionFailed):
        await s3.upload_part_copy(src, dst, upload_id, 1, 0, 5, old)
    for start, end in [(5, 11), (10, 12)]:  # unlike GET, the end is not clamped
        with pytest.raises(Rejected):
            await s3.upload_part_copy(src, dst, upload_id, 1, start, end)
    with pytest.raises(NotFound):
        await s3.upload_part_copy(backend.key("no such source"), dst, upload_id, 1, 0, 5)
    with pytest.raises(NoSuchUpload):
        await s3.upload_part_copy(src, dst, "not-an-upload", 1, 0, 5)
    assert await s3.list_parts(dst, upload_id) == []


async def test_list_multipart_finds_uploads_by_exact_key_or_everywhere(backend: Backend) -> None:
    """The portable part of ListMultipartUploads. A prefix that is not a whole key finds
    nothing on MinIO (test_minio_lists_uploads_only_by_exact_key); AWS and the fake match it
    as a prefix."""
    s3 = backend.store
    keys = [backend.key("dir/a"), backend.key("dir/b")]
    ids = {key: await s3.create_multipart(key, {}) for key in keys}
    for key in keys:
        assert [(u.key, u.upload_id) for u in await s3.list_multipart(key)] == [(key, ids[key])]
    everything = await s3.list_multipart(backend.key(""))
    assert sorted((u.key, u.upload_id) for u in everything) == sorted(ids.items())


@pytest.mark.parametrize("backend", ["minio"], indirect=True)
async def test_minio_lists_uploads_only_by_exact_key(backend: Backend) -> None:
    """minio/minio#20989 ("working as intended"): ListMultipartUploads with a prefix that is not
    an object key answers nothing. So ``ocifs fsck`` on MinIO sees incomplete uploads only when
    the mount has no prefix (it lists ``cfg.prefix``). If this fails, MinIO changed."""
    s3 = backend.store
    await s3.create_multipart(backend.key("dir/a"), {})
    assert await s3.list_multipart(backend.key("dir/")) == []
