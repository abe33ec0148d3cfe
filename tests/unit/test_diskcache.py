"""The persistent blob cache (--disk-cache), kernel-free: FakeS3 counts every GetObject.

A "remount" is a new :class:`ocifs.fs.Operations` on the same FakeS3 and the same cache
directory, shut down like an unmount does (``ops.shutdown``). Several Operations at once on one
directory stand for several ocifs processes: the cache's flock is taken on a new open file
description each time, so they exclude each other as processes do.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pyfuse3
import pytest
import trio

from fakes3 import FakeS3
from diskcache_util import UsageSampler, cache_path, cached, temp_files
from fsrig import MiB, Rig, run
from ocifs import config, diskcache, errors, settings
from ocifs.diskcache import STAMP_NS, DiskCache


def body(n: int, seed: int = 0) -> bytes:
    pattern = bytes((i * 13 + seed) % 251 for i in range(251))
    return (pattern * (n // 251 + 1))[:n]


def blob(repo: str, data: bytes) -> tuple[str, str]:
    """(path in the mount, hex digest) of ``data`` as a blob of layout ``repo``."""
    hexd = hashlib.sha256(data).hexdigest()
    return f"{repo}/blobs/sha256/{hexd}", hexd


def gets(s3: FakeS3) -> int:
    return sum(1 for c in s3.calls if c.op == "GetObject")


async def unmount(r: Rig) -> None:
    await r.ops.shutdown()


async def settled(r: Rig) -> None:
    """Wait until the disk cache has no fill left (written, or given up)."""
    disk = r.ops.disk
    assert disk is not None
    with trio.fail_after(10):
        while disk._fills:
            await trio.sleep(0.01)


def mount(go, tmp_path: Path, s3: FakeS3, cache: Path, **cfg) -> None:
    settings_ = dict(disk_cache=cache, disk_cache_size=64 * MiB)
    settings_.update(cfg)
    run(go, tmp_path, s3=s3, **settings_)


# --- served from disk ------------------------------------------------------------------------
def test_a_blob_read_once_is_read_with_no_get_after_a_remount(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(5 * MiB + 123, 1)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        assert await r.read_file(path) == data
        await unmount(r)
        assert gets(r.s3) > 0

    async def second(r: Rig):
        before = gets(r.s3)
        assert await r.read_file(path) == data
        assert gets(r.s3) == before, "a cached blob was read from S3"
        assert r.ops.disk.stats["hits"] == 1
        await unmount(r)

    mount(first, tmp_path, s3, cache)
    assert cached(cache) == {hexd: len(data)}
    assert cache_path(cache, hexd).stat().st_mtime_ns == STAMP_NS
    assert temp_files(cache) == []
    mount(second, tmp_path, s3, cache)


@pytest.mark.parametrize("where", ["page cache", "disk"])
def test_reads_at_any_offset_of_a_cached_blob_return_its_bytes(tmp_path, monkeypatch, where):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(3 * MiB + 7, 2)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        if where == "disk":  # as after a reboot: every read goes to a worker thread
            monkeypatch.setattr(diskcache.CachedBlob, "pread_cached", lambda self, size, offset: None)
        before = gets(r.s3)
        fh = await r.open(path)
        for off, size in [(MiB + 5, 100), (0, 1), (len(data) - 3, 10), (2 * MiB - 1, MiB + 2), (len(data), 5)]:
            assert await r.read(fh, off, size) == data[off : off + size]
        await r.close(fh)
        assert gets(r.s3) == before

    mount(first, tmp_path, s3, cache)
    mount(second, tmp_path, s3, cache)


def test_concurrent_reads_of_one_handle_all_wait_for_the_disk_lookup(tmp_path, monkeypatch):
    """The kernel sends several READs of one handle at once (16 MiB read-ahead): none of them
    may go to S3 while the first is still looking the blob up on disk."""
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(6 * MiB + 11, 3)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        slow_open = diskcache.DiskCache.open

        async def open_slowly(self, digest, size):
            await trio.sleep(0.05)  # the lookup takes a while (a cold disk, a rehash)
            return await slow_open(self, digest, size)

        monkeypatch.setattr(diskcache.DiskCache, "open", open_slowly)
        before = gets(r.s3)
        fh = await r.open(path)
        got: dict[int, bytes] = {}

        async def read_at(off: int) -> None:
            got[off] = await r.read(fh, off, MiB)

        async with trio.open_nursery() as n:
            for off in range(0, len(data), MiB):
                n.start_soon(read_at, off)
        await r.close(fh)
        assert b"".join(got[o] for o in sorted(got)) == data
        assert gets(r.s3) == before, "a READ went to S3 while the disk lookup was under way"
        await unmount(r)

    mount(first, tmp_path, s3, cache)
    mount(second, tmp_path, s3, cache)


def test_the_same_blob_in_two_repos_and_two_buckets_is_one_entry(tmp_path):
    cache = tmp_path / "disk"
    data = body(2 * MiB, 3)
    a, hexd = blob("team/a", data)
    b, _ = blob("team/b", data)
    one, two = FakeS3(), FakeS3()
    one.seed(a, data)
    two.seed(b, data)

    async def read_a(r: Rig):
        assert await r.read_file(a) == data
        await unmount(r)

    async def read_b(r: Rig):
        assert await r.read_file(b) == data
        assert gets(r.s3) == 0, "the layer cached from another repo and bucket was fetched again"
        await unmount(r)

    mount(read_a, tmp_path, one, cache)
    mount(read_b, tmp_path, two, cache)
    assert list(cached(cache)) == [hexd]


def test_a_blob_is_served_from_disk_by_later_opens_of_the_same_mount(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(2 * MiB, 4)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def go(r: Rig):
        await r.read_file(path)
        await r.ops.disk.settle(10)
        r.ops.cache.invalidate_key(path)  # not from memory either
        before = gets(r.s3)
        assert await r.read_file(path) == data
        assert gets(r.s3) == before
        assert r.ops.disk.stats["stored"] == 1 and r.ops.disk.stats["hits"] == 1

    mount(go, tmp_path, s3, cache)


# --- never for mutable files; never existence -------------------------------------------------
def test_mutable_files_are_never_cached(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    index = b'{"schemaVersion":2,"manifests":[]}'
    s3.seed("repo/index.json", index)
    s3.seed("repo/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    s3.seed("repo/notes.bin", body(2 * MiB, 5))
    s3.seed("repo/blobs/sha256/not-a-digest", body(MiB, 6))

    async def go(r: Rig):
        for p in ("repo/index.json", "repo/oci-layout", "repo/notes.bin", "repo/blobs/sha256/not-a-digest"):
            await r.read_file(p)
        await unmount(r)

    async def again(r: Rig):
        before = gets(r.s3)
        assert await r.read_file("repo/index.json") == index
        assert gets(r.s3) > before

    mount(go, tmp_path, s3, cache)
    assert cached(cache) == {} and temp_files(cache) == []
    mount(again, tmp_path, s3, cache)


def test_a_blob_deleted_from_s3_is_not_found_although_it_is_cached(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(MiB, 7)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        del r.s3.objects[path]
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await r.open(path)
        assert exc.value.errno == errno.ENOENT

    mount(first, tmp_path, s3, cache)
    assert hexd in cached(cache)
    mount(second, tmp_path, s3, cache, metadata_ttl=0)


# --- verification ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "extended"])
def test_a_damaged_cache_file_is_detected_dropped_and_read_from_s3(tmp_path, damage, caplog):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(3 * MiB, 8)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        before = gets(r.s3)
        assert await r.read_file(path) == data
        assert gets(r.s3) > before, "the damaged file was served"
        assert r.ops.disk.stats["dropped"] == 1
        await unmount(r)

    mount(first, tmp_path, s3, cache)
    f = cache_path(cache, hexd)
    with open(f, "r+b") as fp:
        if damage == "flipped byte":
            fp.seek(MiB + 17)
            b = fp.read(1)
            fp.seek(MiB + 17)
            fp.write(bytes([b[0] ^ 0x40]))
        elif damage == "truncated":
            fp.truncate(len(data) - 1)
        else:
            fp.seek(0, os.SEEK_END)
            fp.write(b"x")
    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        mount(second, tmp_path, s3, cache)
    assert any("dropped blob sha256:" + hexd[:12] in m for m in caplog.messages), caplog.messages
    # read from S3 front to back again, so cached again, whole and right
    assert hashlib.sha256(f.read_bytes()).hexdigest() == hexd


def test_a_cache_file_touched_but_intact_is_rehashed_and_kept(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(2 * MiB, 9)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        assert await r.read_file(path) == data
        assert gets(r.s3) == before
        assert r.ops.disk.stats["hits"] == 1 and r.ops.disk.stats["dropped"] == 0

    mount(first, tmp_path, s3, cache)
    before = gets(s3)
    os.utime(cache_path(cache, hexd))  # e.g. a backup restored it with a new mtime
    mount(second, tmp_path, s3, cache)
    assert cache_path(cache, hexd).stat().st_mtime_ns == STAMP_NS  # verified and stamped again


def test_a_blob_whose_object_does_not_hash_to_its_name_is_not_cached(tmp_path, caplog):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(2 * MiB, 10)
    path, hexd = blob("repo", data)
    s3.seed(path, data[:-1] + b"!")  # corrupt in the bucket

    async def go(r: Rig):
        await r.read_file(path)
        await settled(r)

    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        mount(go, tmp_path, s3, cache)
    assert cached(cache) == {} and temp_files(cache) == []
    assert any("hashes to" in m and "not cached" in m for m in caplog.messages), caplog.messages


def test_verify_reads_of_a_rotten_cache_file_fail_and_drop_it(tmp_path):
    """Bit rot keeps the stamp: --verify-reads still catches it (EIO, as for S3) and drops the
    file, so the next open reads S3."""
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(2 * MiB, 11)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    async def second(r: Rig):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await r.read_file(path)
        assert exc.value.errno == errno.EIO
        assert not cache_path(cache, hexd).exists()
        assert await r.read_file(path) == data

    mount(first, tmp_path, s3, cache)
    f = cache_path(cache, hexd)
    with open(f, "r+b") as fp:
        fp.seek(100)
        fp.write(b"?")
    os.utime(f, ns=(time.time_ns(), STAMP_NS))
    mount(second, tmp_path, s3, cache, verify_reads=True)


# --- what is written, and when ----------------------------------------------------------------
def test_a_blob_read_only_in_part_is_not_cached_and_its_temp_file_goes(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(6 * MiB, 12)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def go(r: Rig):
        r.ops.disk.fill_idle_timeout = 0.3
        fh = await r.open(path)
        assert await r.read(fh, 0, 1000) == data[:1000]
        await settled(r)
        await r.close(fh)
        assert temp_files(cache) == []

    mount(go, tmp_path, s3, cache, max_readahead=MiB)
    assert cached(cache) == {}


def test_a_disk_slower_than_s3_never_slows_a_read_and_the_blob_is_still_kept(tmp_path, monkeypatch):
    """Chunks offered while the fill's queue is full are not queued; once the whole blob went
    by, the fill takes them again from the memory cache (no GET)."""
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(12 * MiB, 19)
    path, hexd = blob("repo", data)
    s3.seed(path, data)
    slow_write = diskcache._pwrite_all

    def slow(fd: int, data: bytes, offset: int) -> None:
        time.sleep(0.2)
        slow_write(fd, data, offset)

    async def go(r: Rig):
        monkeypatch.setattr(diskcache, "_pwrite_all", slow)
        r.ops.disk.max_queued = MiB  # one chunk
        started = trio.current_time()
        assert await r.read_file(path) == data
        assert trio.current_time() - started < 1.2  # not 12 x 0.2 s: reads never wait for the disk
        before = gets(r.s3)
        await unmount(r)
        assert gets(r.s3) == before
        assert r.ops.disk.stats["refetched"] > 0

    mount(go, tmp_path, s3, cache, max_readahead=8 * MiB)
    assert cached(cache) == {hexd: len(data)}


def test_a_skipped_chunk_no_longer_in_memory_is_fetched_again(tmp_path, monkeypatch):
    """Chunk 3 goes by while the queue is "full" and is evicted from the 2 MiB memory cache
    before the fill gets to it: the fill GETs it once more, and keeps the blob."""
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(6 * MiB, 20)
    path, hexd = blob("repo", data)
    s3.seed(path, data)
    real_offer = diskcache.DiskCache.offer

    def offer_drops_chunk_3(self, v, idx, chunk):
        if idx != 3:
            real_offer(self, v, idx, chunk)
        elif (fill := self._by_version.get(v)) is not None:
            fill.seen.add(idx)  # it went by, the queue was full

    async def go(r: Rig):
        monkeypatch.setattr(diskcache.DiskCache, "offer", offer_drops_chunk_3)
        r.ops.disk.max_queued = 64 * MiB  # no other chunk is skipped, however late the disk
        assert await r.read_file(path) == data
        await unmount(r)
        assert gets(r.s3) == 6 + 1  # each chunk once for the reader, chunk 3 again for the fill
        assert r.ops.disk.stats["refetched"] == 1

    mount(go, tmp_path, s3, cache, cache_size=2 * MiB, max_readahead=MiB)
    assert cached(cache) == {hexd: len(data)}


def test_a_blob_read_from_the_middle_only_starts_no_fill(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(3 * MiB, 13)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def go(r: Rig):
        fh = await r.open(path)
        assert await r.read(fh, MiB, MiB) == data[MiB : 2 * MiB]
        assert r.ops.disk._fills == {}
        await r.close(fh)

    mount(go, tmp_path, s3, cache)


def test_a_blob_bigger_than_the_bound_is_not_cached(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(3 * MiB, 14)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def go(r: Rig):
        assert await r.read_file(path) == data
        await unmount(r)

    mount(go, tmp_path, s3, cache, disk_cache_size=2 * MiB)
    assert cached(cache) == {} and temp_files(cache) == []


def test_the_unmount_finishes_a_fill_that_has_every_byte(tmp_path, monkeypatch):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(4 * MiB, 15)
    path, hexd = blob("repo", data)
    s3.seed(path, data)
    real_commit = DiskCache._commit

    def slow_commit(self, fill, fd, path):
        time.sleep(0.5)  # a big blob's hash
        return real_commit(self, fill, fd, path)

    async def go(r: Rig):
        monkeypatch.setattr(DiskCache, "_commit", slow_commit)
        await r.read_file(path)
        assert r.ops.disk._fills, "the fill should still be running here"
        await unmount(r)  # no settle before: shutdown itself waits

    mount(go, tmp_path, s3, cache)
    assert cached(cache) == {hexd: len(data)}


# --- a failing disk ---------------------------------------------------------------------------
def test_a_full_disk_turns_the_cache_off_for_that_blob_with_one_log_line(tmp_path, monkeypatch, caplog):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(2 * MiB, 16)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    def full(fd: int, off: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def go(r: Rig):
        monkeypatch.setattr(os, "posix_fallocate", full)
        for _ in range(3):
            assert await r.read_file(path) == data
            await settled(r)
            r.ops.cache.invalidate_key(path)
        assert temp_files(cache) == []

    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        mount(go, tmp_path, s3, cache)
    lines = [m for m in caplog.messages if "disk cache" in m]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    assert cached(cache) == {}


@pytest.mark.parametrize("where", ["page cache", "disk"])
def test_a_disk_read_error_falls_back_to_s3_with_one_log_line(tmp_path, monkeypatch, caplog, where):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(3 * MiB, 17)
    path, _ = blob("repo", data)
    s3.seed(path, data)

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    def broken(self, size: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    async def second(r: Rig):
        if where == "disk":  # not in the page cache: read by a worker thread
            monkeypatch.setattr(diskcache.CachedBlob, "pread_cached", lambda self, size, offset: None)
            monkeypatch.setattr(diskcache.CachedBlob, "pread", broken)
        else:
            monkeypatch.setattr(diskcache.CachedBlob, "pread_cached", broken)
        before = gets(r.s3)
        assert await r.read_file(path) == data
        assert await r.read_file(path) == data
        assert gets(r.s3) > before

    mount(first, tmp_path, s3, cache)
    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        mount(second, tmp_path, s3, cache)
    lines = [m for m in caplog.messages if "disk cache" in m]
    assert len(lines) == 1 and "Input/output error" in lines[0], lines


def test_a_disk_that_hangs_is_given_up_by_the_deadline(tmp_path, monkeypatch, caplog):
    s3, cache = FakeS3(), tmp_path / "disk"
    data = body(MiB, 18)
    path, _ = blob("repo", data)
    s3.seed(path, data)
    release = threading.Event()

    async def first(r: Rig):
        await r.read_file(path)
        await unmount(r)

    def hangs(self, size: int, offset: int) -> bytes:
        release.wait(10)
        return b""

    async def second(r: Rig):
        monkeypatch.setattr(diskcache, "IO_TIMEOUT", 0.2)
        monkeypatch.setattr(diskcache.CachedBlob, "pread_cached", lambda self, size, offset: None)
        monkeypatch.setattr(diskcache.CachedBlob, "pread", hangs)
        assert await r.read_file(path) == data
        release.set()

    mount(first, tmp_path, s3, cache)
    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        mount(second, tmp_path, s3, cache)
    assert any("took too long" in m for m in caplog.messages), caplog.messages


# --- the bound, eviction, several processes ---------------------------------------------------
def test_eviction_removes_the_least_recently_used_blob(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    blobs = {}
    for seed, name in enumerate("abcd"):
        data = body(MiB, 20 + seed)
        blobs[name] = blob("repo", data)
        s3.seed(blobs[name][0], data)

    async def go(r: Rig):
        for name in "abc":
            await r.read_file(blobs[name][0])
            await r.ops.disk.settle(10)
        r.ops.cache.invalidate_key(blobs["a"][0])
        await r.read_file(blobs["a"][0])  # a is used again: b is now the least recent
        assert r.ops.disk.stats["hits"] == 1
        await r.read_file(blobs["d"][0])
        await r.ops.disk.settle(10)
        assert r.ops.disk.stats["evicted"] == 1

    mount(go, tmp_path, s3, cache, disk_cache_size=3 * MiB)
    assert set(cached(cache)) == {blobs[n][1] for n in "acd"}


def test_a_smaller_bound_takes_effect_at_mount(tmp_path):
    s3, cache = FakeS3(), tmp_path / "disk"
    paths = []
    for seed in range(30, 34):
        data = body(MiB, seed)
        path, _ = blob("repo", data)
        s3.seed(path, data)
        paths.append(path)

    async def fill(r: Rig):
        for p in paths:
            await r.read_file(p)
        await unmount(r)

    async def nothing(r: Rig):
        pass

    mount(fill, tmp_path, s3, cache, disk_cache_size=8 * MiB)
    assert len(cached(cache)) == 4
    mount(nothing, tmp_path, s3, cache, disk_cache_size=2 * MiB)
    assert sum(cached(cache).values()) <= 2 * MiB


def test_the_bound_holds_with_several_mounts_writing_at_once(tmp_path):
    """Four mounts, one directory, 5 MiB bound, 24 blobs of 1-2 MiB read at once."""
    from ocifs.config import Config
    from ocifs.fs import Operations

    cache = tmp_path / "disk"
    s3 = FakeS3()
    s3.limiter = trio.CapacityLimiter(16)
    paths = []
    for i in range(24):
        data = body(MiB + (i % 4) * MiB // 4, 40 + i)
        path, _ = blob(f"repo{i % 3}", data)
        s3.seed(path, data)
        paths.append(path)
    sampler = UsageSampler(cache)

    async def main():
        async with trio.open_nursery() as nursery:
            rigs = []
            for n in range(4):
                cfg = Config(bucket="b", cache_dir=tmp_path / f"c{n}", chunk_size=MiB, cache_size=64 * MiB,
                             disk_cache=cache, disk_cache_size=5 * MiB)
                cfg.staging_dir.mkdir(parents=True)
                ops = Operations(cfg, s3)  # type: ignore[arg-type]
                await ops.start(nursery)
                rigs.append(Rig(ops, s3, nursery))
            sampler.start()

            async def reader(r: Rig, mine: list[str]) -> None:
                for p in mine:
                    await r.read_file(p)

            async with trio.open_nursery() as readers:
                for n, r in enumerate(rigs):
                    readers.start_soon(reader, r, paths[n::4] + paths[(n + 1) % 4 :: 4])
            for r in rigs:
                await r.ops.disk.settle(10)
            stored = sum(r.ops.disk.stats["stored"] for r in rigs)
            evicted = sum(r.ops.disk.stats["evicted"] for r in rigs)
            for r in rigs:
                await r.ops.shutdown()
            nursery.cancel_scope.cancel()
        return stored, evicted

    stored, evicted = trio.run(main)
    peak = sampler.finish()
    assert sampler.samples > 20, sampler.samples
    assert stored >= 10 and evicted >= 5, (stored, evicted)
    assert peak <= 5 * MiB, f"the cache held {peak} bytes, bound {5 * MiB}"
    assert temp_files(cache) == []
    for name in cached(cache):
        assert hashlib.sha256(cache_path(cache, name).read_bytes()).hexdigest() == name


def test_two_mounts_reading_one_new_blob_at_once_both_fill_harmlessly(tmp_path, caplog):
    from ocifs.config import Config
    from ocifs.fs import Operations

    cache = tmp_path / "disk"
    s3 = FakeS3()
    s3.limiter = trio.CapacityLimiter(16)
    data = body(6 * MiB, 60)
    path, hexd = blob("repo", data)
    s3.seed(path, data)

    async def main():
        async with trio.open_nursery() as nursery:
            rigs = []
            for n in range(2):
                cfg = Config(bucket="b", cache_dir=tmp_path / f"c{n}", chunk_size=MiB, disk_cache=cache)
                cfg.staging_dir.mkdir(parents=True)
                ops = Operations(cfg, s3)  # type: ignore[arg-type]
                await ops.start(nursery)
                rigs.append(Rig(ops, s3, nursery))
            results = {}

            async def read(n: int) -> None:
                results[n] = await rigs[n].read_file(path)

            async with trio.open_nursery() as readers:
                readers.start_soon(read, 0)
                readers.start_soon(read, 1)
            for r in rigs:
                await r.ops.shutdown()
            nursery.cancel_scope.cancel()
            return results, [r.ops.disk.stats["stored"] for r in rigs]

    with caplog.at_level(logging.WARNING, logger="ocifs.diskcache"):
        results, stored = trio.run(main)
    assert results == {0: data, 1: data}
    assert stored == [1, 1]  # both wrote it; the second rename replaced an identical file
    assert cached(cache) == {hexd: len(data)} and temp_files(cache) == []
    assert [m for m in caplog.messages if "disk cache" in m] == []


def test_a_temp_file_left_by_a_dead_writer_is_removed_and_a_live_writers_is_kept(tmp_path):
    cache = tmp_path / "disk"
    d = DiskCache(cache, 10 * MiB, MiB, MiB)
    d.prepare()
    tmp = cache / diskcache.ROOT_NAME / "tmp"
    (tmp / "sha256-dead.1.aa").write_bytes(b"x" * MiB)
    live = tmp / "sha256-live.2.bb"
    live.write_bytes(b"y" * (2 * MiB))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its writer is alive
    try:
        with d._locked():
            assert d._make_room(0)
        assert sorted(os.listdir(tmp)) == ["sha256-live.2.bb"]
        assert d.used_bytes == 2 * MiB  # a live reservation counts against the bound
        with d._locked():
            assert not d._make_room(9 * MiB)  # it cannot be evicted
    finally:
        os.close(fd)


# --- the directory and the settings -----------------------------------------------------------
def test_the_cache_directory_is_created_private(tmp_path):
    cache = tmp_path / "new" / "disk"
    DiskCache(cache, MiB, MiB, MiB).prepare()
    assert (cache.stat().st_mode & 0o777) == 0o700
    for d in ("", "tmp", "sha256", "sha512"):
        assert ((cache / diskcache.ROOT_NAME / d).stat().st_mode & 0o777) == 0o700


def test_a_shared_directory_keeps_its_mode_and_only_the_private_part_is_ours(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    DiskCache(shared, MiB, MiB, MiB).prepare()
    assert (shared.stat().st_mode & 0o7777) == 0o1777
    assert ((shared / diskcache.ROOT_NAME).stat().st_mode & 0o777) == 0o700


def test_a_planted_symlink_is_refused_with_one_line(tmp_path):
    cache = tmp_path / "disk"
    cache.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache / diskcache.ROOT_NAME).symlink_to(elsewhere)
    with pytest.raises(errors.OcifsError) as exc:
        DiskCache(cache, MiB, MiB, MiB).prepare()
    assert "it is a symlink" in str(exc.value) and "--disk-cache" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_disk_cache_is_off_by_default_and_set_by_flag_env_or_file(tmp_path):
    base = {"url": "s3://bucket", "mountpoint": str(tmp_path)}
    values, _ = settings.resolve(base, {}, None)
    cfg = config.from_values(values)
    assert cfg.disk_cache is None
    assert DiskCache.from_config(cfg) is None

    toml = tmp_path / "c.toml"
    toml.write_text(f'disk_cache = "{tmp_path}/from-file"\ndisk_cache_size = 100\n')
    values, sources = settings.resolve(base, {"OCIFS_DISK_CACHE": str(tmp_path / "from-env")}, toml)
    cfg = config.from_values(values)
    assert cfg.disk_cache == tmp_path / "from-env" and sources["disk_cache"] == "env OCIFS_DISK_CACHE"
    assert cfg.disk_cache_size == 100 * MiB and sources["disk_cache_size"] == f"file {toml}"

    values, sources = settings.resolve({**base, "disk_cache": "~/x", "disk_cache_size": "2048"}, {}, None)
    cfg = config.from_values(values)
    assert cfg.disk_cache == Path(os.path.expanduser("~/x")).resolve() and cfg.disk_cache_size == 2048 * MiB
    assert "disk_cache_size = 2048  # flag" in settings.render(values, sources)
    with pytest.raises(settings.SettingsError):
        settings.resolve({**base, "disk_cache_size": "0"}, {}, None)
