"""The streaming upload of one file, against an in-memory fake of the S3 calls it makes."""

import hashlib

import pytest
import trio

from ocifs import errors
from ocifs.upload import WriteSession

PART = 5 * 1024 * 1024


class FakeS3:
    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.calls: list[str] = []
        self.fail_parts = False

    async def put(self, key, body, meta, if_match=None, if_none_match=False):
        self.calls.append("PutObject")
        self.objects[key] = bytes(body)
        return '"etag-put"'

    async def create_multipart(self, key, meta):
        self.calls.append("CreateMultipartUpload")
        uid = f"u{len(self.uploads)}"
        self.uploads[uid] = {}
        return uid

    async def upload_part(self, key, upload_id, number, body):
        body = body() if callable(body) else body
        self.calls.append(f"UploadPart{number}")
        await trio.sleep(0)
        if self.fail_parts:
            raise errors.RemoteError("injected")
        self.uploads[upload_id][number] = bytes(body)
        return f'"p{number}"'

    async def complete_multipart(self, key, upload_id, parts):
        self.calls.append("CompleteMultipartUpload")
        data = self.uploads.pop(upload_id)
        self.objects[key] = b"".join(data[n] for n, _ in parts)
        return '"etag-mpu"'

    async def abort_multipart(self, key, upload_id):
        self.calls.append("AbortMultipartUpload")
        self.uploads.pop(upload_id, None)

    async def copy(self, src, dst, meta):
        self.calls.append("CopyObject")
        self.objects[dst] = self.objects[src]
        return '"etag-copy"'


def run(fn):
    async def main(tmp):
        async with trio.open_nursery() as nursery:
            s3 = FakeS3()
            session = WriteSession(s3, nursery, tmp, "k", 0, PART, max_inflight=4, private=False)
            try:
                await fn(s3, session)
            finally:
                session.close()

    return main


def data(n: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 7 + seed) % 251 for i in range(251))
    return (pattern * (n // 251 + 1))[:n]


def test_sequential_writer_streams_parts_before_commit(tmp_path):
    body = data(3 * PART + 100)

    async def go(s3, session):
        for off in range(0, len(body), 1 << 20):
            await session.write(off, body[off : off + (1 << 20)], {})
        await session.wait_idle()
        assert s3.calls[:4] == ["CreateMultipartUpload", "UploadPart1", "UploadPart2", "UploadPart3"]
        await session.commit({})
        assert s3.objects["k"] == body
        assert s3.calls.count("UploadPart1") == 1  # nothing sent twice

    trio.run(run(go), tmp_path)


def test_small_file_is_one_put(tmp_path):
    async def go(s3, session):
        await session.write(0, b"hello", {})
        await session.commit({})
        assert s3.calls == ["PutObject"]
        assert s3.objects["k"] == b"hello"

    trio.run(run(go), tmp_path)


def test_rewriting_a_sent_part_sends_it_again(tmp_path):
    body = bytearray(data(2 * PART + 10))

    async def go(s3, session):
        await session.write(0, bytes(body), {})
        await session.wait_idle()
        await session.write(10, b"XYZ", {})
        body[10:13] = b"XYZ"
        await session.commit({})
        assert s3.objects["k"] == bytes(body)
        assert s3.calls.count("UploadPart1") == 2

    trio.run(run(go), tmp_path)


def test_truncate_after_streaming_publishes_the_short_file(tmp_path):
    body = data(3 * PART)

    async def go(s3, session):
        await session.write(0, body, {})
        session.truncate(PART + 5)
        await session.commit({})
        assert s3.objects["k"] == body[: PART + 5]

    trio.run(run(go), tmp_path)


def test_wrong_digest_publishes_nothing_and_aborts(tmp_path):
    body = data(2 * PART)

    async def go(s3, session):
        await session.write(0, body, {})
        with pytest.raises(errors.DigestMismatch):
            await session.commit({}, expect=("sha256", "0" * 64))
        assert "k" not in s3.objects
        assert "AbortMultipartUpload" in s3.calls
        assert s3.uploads == {}

    trio.run(run(go), tmp_path)


def test_streaming_hash_matches_content(tmp_path):
    body = data(PART + 123)

    async def go(s3, session):
        for off in range(0, len(body), 32768):
            await session.write(off, body[off : off + 32768], {})
        assert await session.digest("sha256") == hashlib.sha256(body).hexdigest()
        assert await session.digest("sha512") == hashlib.sha512(body).hexdigest()

    trio.run(run(go), tmp_path)


def test_failed_part_is_reported_at_commit_and_nothing_is_published(tmp_path):
    body = data(2 * PART + 1)

    async def go(s3, session):
        s3.fail_parts = True
        await session.write(0, body, {})
        with pytest.raises(errors.RemoteError):
            await session.commit({})
        assert "k" not in s3.objects
        assert s3.uploads == {}
        s3.fail_parts = False  # the next commit starts again from the staging file
        await session.commit({})
        assert s3.objects["k"] == body

    trio.run(run(go), tmp_path)
