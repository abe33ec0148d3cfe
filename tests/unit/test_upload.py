"""The streaming upload of one file's content, against the in-memory S3 (tests/fakes3.py)."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes3 import FakeS3
from ocifs import store, upload
from ocifs.content import Content, Version
from ocifs.session import WriteSession
from ocifs.tasks import TaskGroup
from ocifs.upload import MIN_PART, PartLayout, Upload, plan_prefix

MiB = 1024 * 1024
PART = 5 * MiB
CHUNK = 1 * MiB  # small chunks: the tests see exactly which base bytes were fetched


def data(n: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 7 + seed) % 251 for i in range(251))
    return (pattern * (n // 251 + 1))[:n]


def ops(s3: FakeS3, op: str) -> list[int | None]:
    """Part numbers (or None) of every request of kind ``op``."""
    return [c.part for c in s3.calls if c.op == op]


class Rig:
    """One write session on key ``k`` of a FakeS3, as files.py drives it."""

    def __init__(self, s3: FakeS3, session: WriteSession) -> None:
        self.s3 = s3
        self.session = session
        self.content = session.content
        self.upload = session.upload

    async def write(self, off: int, body: bytes) -> None:
        if not self.session.write_nowait(off, body):
            await self.session.write(off, body)
        if self.upload.ready():
            await self.upload.pump("k", {})

    async def commit(self) -> bytes:
        etag = await self.upload.finish("k", {})
        self.content.rebase(Version("k", etag, self.content.size))
        self.upload.rebased()
        return self.s3.objects["k"].data


def rig(test, base: bytes | None = None, part: int = PART):
    """Run ``test(rig)`` in trio with a fresh FakeS3 (holding ``base`` at ``k`` if given)."""

    async def main(tmp):
        s3 = FakeS3()
        s3.limiter = trio.CapacityLimiter(8)
        version = None
        if base is not None:
            obj = s3.seed("k", base)
            version = Version("k", obj.etag, len(base))
        async with trio.open_nursery() as nursery:
            group = await TaskGroup.open(nursery, "test")
            content = Content(tmp, CHUNK, version)

            async def fetch(idx: int) -> bytes:
                assert version is not None
                return await s3.get_range("k", idx * CHUNK, min((idx + 1) * CHUNK, version.size), version.etag)

            up = Upload(s3, content, fetch, part, 4, group.start_soon)
            session = WriteSession("node", (1, 1), (1, 1), content, up, group, dirty=base is None)
            try:
                await test(Rig(s3, session))
            finally:
                await session.close()

    return main


def test_sequential_writer_streams_parts_before_commit(tmp_path):
    body = data(3 * PART + 100)

    async def go(r: Rig):
        for off in range(0, len(body), MiB):
            await r.write(off, body[off : off + MiB])
        await r.upload.wait_idle()
        assert sorted(ops(r.s3, "UploadPart")) == [1, 2, 3]  # sent while written
        assert await r.commit() == body
        assert sorted(ops(r.s3, "UploadPart")) == [1, 2, 3, 4]  # only the tail at close

    trio.run(rig(go), tmp_path)


def test_small_file_is_one_put(tmp_path):
    async def go(r: Rig):
        await r.write(0, b"hello")
        assert await r.commit() == b"hello"
        assert [c.op for c in r.s3.calls] == ["PutObject"]

    trio.run(rig(go), tmp_path)


def test_a_file_of_exactly_one_part_is_one_put(tmp_path):
    """The first part waits for a byte past it: one request at close, not three in a row."""
    body = data(PART)

    async def go(r: Rig):
        for off in range(0, len(body), MiB):
            await r.write(off, body[off : off + MiB])
        await r.upload.wait_idle()
        assert r.s3.calls == []
        assert await r.commit() == body
        assert [c.op for c in r.s3.calls] == ["PutObject"]

    trio.run(rig(go), tmp_path)


def test_a_file_cut_back_to_one_part_completes_the_part_it_streamed(tmp_path):
    """The part went out when the writer went past it; after a truncate to its end, close
    completes it instead of aborting it and PUTting the same bytes a second time."""
    body = data(PART + 10)

    async def go(r: Rig):
        await r.write(0, body)
        await r.upload.wait_idle()
        await r.session.truncate(PART)
        assert await r.commit() == body[:PART]
        assert [c.op for c in r.s3.calls] == ["CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"]

    trio.run(rig(go), tmp_path)


def test_a_one_part_file_truncated_after_its_part_went_out_is_one_put(tmp_path):
    body = data(PART + 10)

    async def go(r: Rig):
        await r.write(0, body)
        await r.upload.wait_idle()
        await r.session.truncate(PART - 10)
        assert await r.commit() == body[: PART - 10]
        assert [c.op for c in r.s3.calls][-2:] == ["AbortMultipartUpload", "PutObject"]

    trio.run(rig(go), tmp_path)


def test_rewriting_a_sent_part_sends_it_again(tmp_path):
    body = bytearray(data(2 * PART + 10))

    async def go(r: Rig):
        await r.write(0, bytes(body))
        await r.upload.wait_idle()
        await r.write(10, b"XYZ")
        body[10:13] = b"XYZ"
        assert await r.commit() == bytes(body)
        assert ops(r.s3, "UploadPart").count(1) == 2

    trio.run(rig(go), tmp_path)


def test_truncate_after_streaming_publishes_the_short_file(tmp_path):
    body = data(3 * PART)

    async def go(r: Rig):
        await r.write(0, body)
        await r.upload.wait_idle()
        await r.session.truncate(PART + 5)
        assert await r.commit() == body[: PART + 5]

    trio.run(rig(go), tmp_path)


def test_truncate_while_parts_wait_for_s3_publishes_the_short_file(tmp_path):
    """Parts waiting for a request slot read staging only once they get one: after the
    truncate. The short read must not fail the commit (the part is stale anyway)."""
    body = data(3 * PART)

    async def go(r: Rig):
        r.s3.freeze("UploadPart")
        await r.write(0, body)
        await trio.testing.wait_all_tasks_blocked()
        await r.session.truncate(PART + 5)
        r.s3.thaw()
        assert await r.commit() == body[: PART + 5]

    trio.run(rig(go), tmp_path)


def test_failed_part_is_reported_at_commit_and_nothing_is_published(tmp_path):
    body = data(2 * PART + 1)

    async def go(r: Rig):
        r.s3.fail("UploadPart", times=None)  # what the real client raises once retries are spent
        await r.write(0, body)
        with pytest.raises(store.Unavailable):
            await r.upload.finish("k", {})
        assert "k" not in r.s3.objects
        assert r.s3.uploads == {}  # aborted
        r.s3.reset_faults()  # the content is kept: the next commit starts again from it
        assert await r.commit() == body

    trio.run(rig(go), tmp_path)


def test_streaming_hash_is_the_content_digest(tmp_path):
    body = data(PART + 123)

    async def go(r: Rig):
        for off in range(0, len(body), 32768):
            await r.write(off, body[off : off + 32768])
        assert r.content.sha256 == hashlib.sha256(body).hexdigest()
        assert await r.content.digest("sha512", r.upload.fetch) == hashlib.sha512(body).hexdigest()

    trio.run(rig(go), tmp_path)


# --- a base object: appends and truncates copy the prefix server-side -------------------------
def test_append_to_a_big_object_copies_its_prefix_and_downloads_nothing(tmp_path):
    base = data(12 * MiB, seed=1)
    tail = data(3 * MiB, seed=2)

    async def go(r: Rig):
        assert r.session.state.value == "clean"
        await r.write(len(base), tail)  # zot's chunked upload: reopen, write at EOF
        assert await r.commit() == base + tail
        assert ops(r.s3, "GetObject") == []
        assert ops(r.s3, "UploadPartCopy")  # the 12 MiB prefix, server-side

    trio.run(rig(go, base=base), tmp_path)


def test_truncate_of_a_big_object_copies_what_is_kept(tmp_path):
    base = data(20 * MiB, seed=3)

    async def go(r: Rig):
        await r.session.truncate(11 * MiB + 7)
        assert await r.commit() == base[: 11 * MiB + 7]
        assert ops(r.s3, "GetObject") == []

    trio.run(rig(go, base=base), tmp_path)


def test_a_write_inside_a_big_object_fetches_only_the_chunk_it_touches(tmp_path):
    base = bytearray(data(30 * MiB, seed=4))

    async def go(r: Rig):
        await r.write(17 * MiB + 5, b"patch")
        base[17 * MiB + 5 : 17 * MiB + 10] = b"patch"
        assert await r.commit() == bytes(base)
        # the chunk the write landed in, then (at commit) the rest of its part
        assert len(ops(r.s3, "GetObject")) <= PART // CHUNK + 1
        assert ops(r.s3, "UploadPartCopy")

    trio.run(rig(go, base=base), tmp_path)


def test_reads_of_a_session_mix_base_and_local_bytes(tmp_path):
    base = data(9 * MiB, seed=5)

    async def go(r: Rig):
        await r.write(len(base), b"tail")
        await r.write(MiB + 3, b"mid")
        want = bytearray(base + b"tail")
        want[MiB + 3 : MiB + 6] = b"mid"
        assert await r.content.read(0, 20 * MiB, r.upload.fetch) == bytes(want)
        assert await r.content.read(MiB, 10, r.upload.fetch) == bytes(want[MiB : MiB + 10])

    trio.run(rig(go, base=base), tmp_path)


def test_part_size_grows_so_any_size_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "TIER_PARTS", 2)  # parts of 5, 5, 10, 10, 20 MiB ...
    body = data(47 * MiB, seed=6)

    async def go(r: Rig):
        for off in range(0, len(body), MiB):
            await r.write(off, body[off : off + MiB])
        assert r.upload.layout.range(4) == (30 * MiB, 50 * MiB)
        assert await r.commit() == body
        assert sorted(ops(r.s3, "UploadPart")) == [1, 2, 3, 4, 5]  # 5+5+10+10+20 MiB, each once

    trio.run(rig(go), tmp_path)


# --- layout and planning ------------------------------------------------------------------------
def test_part_layout_is_contiguous_and_doubles_every_tier():
    lay = PartLayout(origin=0, first=1, part_size=8 * MiB)
    assert lay.range(0) == (0, 8 * MiB)
    assert lay.range(999)[1] == lay.range(1000)[0]
    assert lay.range(1000)[1] - lay.range(1000)[0] == 16 * MiB
    assert lay.limit >= 5 * 1024**4  # S3's largest object streams in 10,000 parts
    for i in (0, 1, 999, 1000, 1001, 5000, 9999):
        s, e = lay.range(i)
        assert lay.index_at(s) == i and lay.index_at(e - 1) == i


@settings(max_examples=300, deadline=None)
@given(
    origin_chunks=st.integers(min_value=5, max_value=300),
    modified=st.sets(st.integers(min_value=0, max_value=299)),
    more_follows=st.booleans(),
)
def test_plan_prefix_covers_the_prefix_with_legal_parts(origin_chunks, modified, more_follows):
    chunk = MiB
    # an upload copies a prefix only when it is at least one part long (Upload._reset)
    origin = max(MIN_PART, origin_chunks * chunk - (chunk // 3 if origin_chunks % 2 else 0))

    def copyable(s: int, e: int) -> bool:
        return not any(c in modified for c in range(s // chunk, (e - 1) // chunk + 1))

    parts = plan_prefix(origin, chunk, copyable, more_follows)
    assert parts[0].start == 0 and parts[-1].end == origin
    for a, b in zip(parts, parts[1:]):
        assert a.end == b.start
    for i, p in enumerate(parts):
        last = i == len(parts) - 1 and not more_follows
        assert last or p.end - p.start >= MIN_PART, (p, parts)
        assert p.end - p.start <= upload.COPY_PART
        if p.copy:
            assert copyable(p.start, p.end)


def test_abort_leaves_nothing_and_keeps_the_content(tmp_path):
    body = data(2 * PART)

    async def go(r: Rig):
        await r.write(0, body)
        await r.upload.abort()
        assert "k" not in r.s3.objects and r.s3.uploads == {}
        assert await r.commit() == body

    trio.run(rig(go), tmp_path)
