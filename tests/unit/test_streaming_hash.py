"""The sha256 a content keeps while it is written front to back, hashed off the FUSE thread
(:class:`ocifs.content.StreamingHash`): same digest as hashing the bytes in order, no digest
once anything behind it changed, and no trouble when the file goes away under a job."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import trio

from ocifs.content import Content, StreamingHash

KiB = 1024


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs of 64 KiB (not 8 MiB) so a few hundred KiB cross many batch boundaries."""
    monkeypatch.setattr(StreamingHash, "HASH_BATCH", 64 * KiB)
    monkeypatch.setattr(StreamingHash, "INLINE", 16 * KiB)
    monkeypatch.setattr(StreamingHash, "MAX_JOBS", 2)


def body(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def write_in_pieces(c: Content, data: bytes, piece: int, start: int = 0) -> None:
    for off in range(0, len(data), piece):
        assert c.write_nowait(start + off, data[off : off + piece])


@pytest.mark.parametrize("size,piece", [(0, 1), (5, 5), (64 * KiB, 32 * KiB), (300 * KiB + 7, 32 * KiB), (200 * KiB, 7 * KiB + 3)])
def test_digest_is_sha256_of_the_bytes_written_in_order(tmp_path, size: int, piece: int) -> None:
    c = Content(tmp_path, 8 * KiB)
    data = body(size)
    write_in_pieces(c, data, piece)
    assert c.sha256 == hashlib.sha256(data).hexdigest()
    c.close()


def test_the_hash_goes_on_after_a_digest_was_taken(tmp_path) -> None:
    """An fsync publishes (takes the digest), then the writer appends: the next digest covers all."""
    c = Content(tmp_path, 8 * KiB)
    a, b = body(100 * KiB, 1), body(150 * KiB, 2)
    write_in_pieces(c, a, 32 * KiB)
    assert c.sha256 == hashlib.sha256(a).hexdigest()
    write_in_pieces(c, b, 32 * KiB, start=len(a))
    assert c.sha256 == hashlib.sha256(a + b).hexdigest()
    c.close()


def test_digest_waits_off_the_trio_thread(tmp_path) -> None:
    c = Content(tmp_path, 8 * KiB)
    data = body(500 * KiB)
    write_in_pieces(c, data, 32 * KiB)

    async def fetch(idx: int) -> bytes:
        raise AssertionError("no base to fetch")

    assert trio.run(c.digest, "sha256", fetch) == hashlib.sha256(data).hexdigest()
    c.close()


def test_a_rewrite_behind_the_hash_drops_it(tmp_path) -> None:
    c = Content(tmp_path, 8 * KiB)
    write_in_pieces(c, body(200 * KiB), 32 * KiB)
    assert c.write_nowait(10, b"changed")  # inside a range a job may already have hashed
    assert c.sha256 is None


def test_a_truncate_behind_the_hash_drops_it(tmp_path) -> None:
    c = Content(tmp_path, 8 * KiB)
    write_in_pieces(c, body(200 * KiB), 32 * KiB)
    c.truncate(100 * KiB)
    assert c.sha256 is None


def test_a_hole_stops_the_stream(tmp_path) -> None:
    """A write past the hashed end leaves the digest unknown (the hole is never hashed)."""
    c = Content(tmp_path, 8 * KiB)
    assert c.write_nowait(0, body(10 * KiB))
    assert c.write_nowait(20 * KiB, body(10 * KiB))
    assert c.sha256 is None


def test_jobs_survive_the_staging_file_closing_under_them(tmp_path) -> None:
    """A session that is dropped while its jobs are queued: each job holds its own descriptor."""
    gate = threading.Event()
    StreamingHash._executor().submit(gate.wait, 10)  # hold the worker so jobs queue behind it
    c = Content(tmp_path, 8 * KiB)
    write_in_pieces(c, body(128 * KiB), 32 * KiB)
    c.close()
    assert not list(tmp_path.iterdir())  # the staging file is gone from the directory
    gate.set()
    StreamingHash._executor().submit(lambda: None).result(10)  # the queued jobs ran


def test_a_job_that_cannot_read_its_range_gives_no_digest(tmp_path) -> None:
    c = Content(tmp_path, 8 * KiB)
    gate = threading.Event()
    StreamingHash._executor().submit(gate.wait, 10)
    write_in_pieces(c, body(128 * KiB), 32 * KiB)
    os.ftruncate(c.staging.fd, 0)  # the bytes vanish before the job reads them
    gate.set()
    assert c.sha256 is None
    c.close()
