"""Verified OCI blobs on local disk, kept across remounts, reboots and ocifs processes.

CI runners pull the same base layers again and again. A blob (``blobs/<alg>/<hex>``) never
changes: a file whose content hashes to ``<hex>`` *is* that blob, whichever bucket, repository
or key it was read from. So this cache is keyed by digest, never by S3 key (one layer in two
repos or two buckets is one entry), and a cached blob needs no revalidation. It serves bytes,
not existence: whether a blob exists is still the namespace's question (a HEAD after
``metadata_ttl``), so a blob deleted from S3 is not shown just because it is cached here.

Layout (``DIR`` is ``--disk-cache``)::

    DIR/                          created 0700 if missing, else left as it is (it may be shared)
    DIR/ocifs-blobs/              private (ocifs.runtime.private_dir): ours, 0700, no symlink
        lock                      flock(LOCK_EX) while making room (scan, evict, reserve)
        sha256/<hex>, sha512/<hex>   verified blobs: mtime = STAMP_NS, atime = last use
        tmp/<alg>-<hex>.<pid>.<rand>  a blob being written; its writer holds flock(LOCK_EX) on it

**Verification.** A blob is written to the cache only after its digest is checked: its bytes go
to a temp file sized in advance, which is fsynced, hashed (read back, so what is checked is what
the disk holds), stamped, and renamed into place atomically (then the directory is fsynced).
Concurrent writers of one blob, in one process or several, are harmless: each renames a
verified copy of the same bytes. The stamp is the file's mtime, set to :data:`STAMP_NS` after
hashing: any later write to the file (by anything) moves its mtime, so a cache file opened with
another mtime is hashed again before it is used, and dropped if it no longer matches. A file
whose size differs from the object's is dropped at once. Either way the read goes to S3.

**Bound and eviction.** The cache holds at most ``--disk-cache-size`` bytes of files (blobs plus
temp files being written, by their sizes). Room is made under ``lock`` (flock, so every ocifs
process sharing the directory takes turns): scan, evict the least recently used blobs (by atime,
set explicitly on every use, so ``noatime`` mounts do not matter), and create the temp file at
its full size (fallocate) before the lock is released, so the room is reserved for every other
process's next scan. A temp file whose writer died holds no flock: the next scan removes it.
The scan lists temp files before blobs, so a rename racing with it is counted twice (safe),
never missed. (A blob evicted while some process reads it keeps its disk blocks until that
reader closes it, as any unlinked file does; the bound counts the directory's files.)

**Reads** of a cached blob come from its file: from the page cache on the FUSE thread when all
the bytes are there (``RWF_NOWAIT``), else in a worker thread, which also asks the kernel for
the next :data:`READ_AHEAD` bytes.

**Writes.** A blob read from S3 from its start gets a *fill*: every chunk of it that goes by
(read, or read ahead) is offered, queued (bounded) and written in order of arrival by the fill's
task, in this cache's own task group. One blob is hashed at a time (one core at most). A chunk
offered while the queue is full is not queued: a disk slower than S3 never slows a read. Once
every chunk went by, the fill fetches those it skipped itself, through the mount's chunk cache
(memory, else a ranged GET). A fill that stops receiving chunks before that (the reader went
away) is abandoned; at unmount, fills whose every chunk went by are finished (bounded).

**Failure.** Disk trouble (ENOSPC, EIO, a deadline passed) never fails a read: the cache is
turned off for that blob for the life of the process, with one log line, and the read goes to
S3. Every wait on the disk has a deadline; a worker thread past it is abandoned, never waited
for (see :meth:`DiskCache._io`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import trio

from ocifs.cachedir import make_dir
from ocifs.config import Config
from ocifs.content import FetchChunk, Version
from ocifs.runtime import private_dir
from ocifs.tasks import TaskGroup

log = logging.getLogger(__name__)

T = TypeVar("T")
Digest = tuple[str, str]  # (algorithm, hex), as ocifs.layout.blob_digest gives it

ALGORITHMS = ("sha256", "sha512")
ROOT_NAME = "ocifs-blobs"
# The mtime of a verified cache file. Writing to a file sets its mtime to "now", which is never
# this, so a cache file modified after it was verified is recognised and hashed again.
STAMP_NS = 0
# Deadlines for waits on the local disk. A verify reads the whole file: its deadline grows with
# the size, at a rate any working disk beats.
IO_TIMEOUT = 30.0
SLOWEST_DISK = 20 * 1024 * 1024  # bytes per second
LOCK_TIMEOUT = 20.0  # waiting for another process's scan; inside the thread, below IO_TIMEOUT
# A fill whose blob stops arriving (the reader went away after part of it) is abandoned.
FILL_IDLE_TIMEOUT = 60.0
# A chunk a fill fetches itself (memory cache, else a ranged GET) arrives within this.
REFETCH_TIMEOUT = 60.0
HASH_BLOCK = 4 * 1024 * 1024
# How far ahead of a read from the disk the page cache is filled in the background.
READ_AHEAD = 16 * 1024 * 1024


def _verify_deadline(size: int) -> float:
    return IO_TIMEOUT + size / SLOWEST_DISK


def _digest_name(digest: Digest) -> str:
    return f"{digest[0]}:{digest[1][:12]}"


def hash_fd(fd: int, alg: str, size: int) -> str:
    """The hex digest of the first ``size`` bytes of ``fd`` (hashlib drops the GIL while it
    hashes, so this runs in a worker thread beside the FUSE loop)."""
    h = hashlib.new(alg)
    buf = bytearray(min(HASH_BLOCK, max(size, 1)))
    view = memoryview(buf)
    off = 0
    while off < size:
        n = os.preadv(fd, [view[: min(len(buf), size - off)]], off)
        if n <= 0:
            raise OSError(errno.EIO, f"cache file ends at {off} of {size} bytes")
        h.update(view[:n])
        off += n
    return h.hexdigest()


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[n:]
        offset += n


class CachedBlob:
    """An open cache file found whole and verified: a read state's bytes come from here, never
    from S3. The descriptor closes when the last read state using it goes (so a blob evicted by
    another process while it is read stays readable, as on any local file)."""

    __slots__ = ("digest", "fd", "size", "nowait", "__weakref__")

    def __init__(self, digest: Digest, fd: int, size: int) -> None:
        self.digest = digest
        self.fd = fd
        self.size = size
        self.nowait = True  # the filesystem answers RWF_NOWAIT reads
        weakref.finalize(self, os.close, fd)

    def pread(self, size: int, offset: int) -> bytes:
        """Blocking: the bytes from the disk (in a worker thread), and the next
        :data:`READ_AHEAD` bytes asked for in the background, so that the next reads find
        them in the page cache (:meth:`pread_cached`) and need no thread."""
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise OSError(errno.EIO, f"cache file is short: {len(data)} of {size} bytes at {offset}")
        if offset + size < self.size:
            os.posix_fadvise(self.fd, offset + size, READ_AHEAD, os.POSIX_FADV_WILLNEED)
        return data

    def pread_cached(self, size: int, offset: int) -> bytearray | None:
        """The bytes if the page cache holds all of them (RWF_NOWAIT: never waits for the disk,
        so it runs on the FUSE thread, without a hop to a worker thread), else None."""
        if not self.nowait:
            return None
        buf = bytearray(size)
        try:
            n = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait = False
                return None
            raise
        return buf if n == size else None


class _Fill:
    """One blob on its way into the cache: chunks offered by the reader, written by one task."""

    __slots__ = ("digest", "size", "chunk_size", "nchunks", "versions", "fetch", "queue", "queued_bytes", "seen", "written", "wake")

    def __init__(self, digest: Digest, size: int, chunk_size: int, fetch: FetchChunk) -> None:
        self.digest = digest
        self.size = size
        self.chunk_size = chunk_size
        self.nchunks = -(-size // chunk_size)
        self.versions: set[Version] = set()  # S3 objects with these bytes (same digest)
        self.fetch = fetch  # a chunk again (from the memory cache, else S3), if one was skipped
        self.queue: dict[int, bytes] = {}  # offered, not written yet (in the order offered)
        self.queued_bytes = 0
        self.seen: set[int] = set()  # offered at least once, queued or not
        self.written: set[int] = set()
        self.wake = trio.Event()

    def chunk_len(self, idx: int) -> int:
        return min(self.chunk_size, self.size - idx * self.chunk_size)

    @property
    def complete(self) -> bool:
        """Every chunk went by: the blob was read (or read ahead) to its end, so it is kept
        even if the disk fell behind meanwhile (the chunks skipped then are fetched again)."""
        return len(self.seen) >= self.nchunks


class _Temp:
    """A reserved temp file: sized, flocked by us until it is renamed or removed.

    Worker threads use its descriptor through :meth:`run`; a thread abandoned at its deadline
    may still be running when the fill ends, so the descriptor is closed by whoever is last
    (never under a running thread, whose number could meanwhile be reused for another file).
    """

    __slots__ = ("fd", "path", "_lock", "_busy", "_closed")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self._lock = threading.Lock()
        self._busy = 0
        self._closed = False

    def run(self, fn: Callable[[int], T]) -> T:
        """``fn(fd)`` in a worker thread, the descriptor guaranteed open meanwhile."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the temp file was given up")
            self._busy += 1
        try:
            return fn(self.fd)
        finally:
            with self._lock:
                self._busy -= 1
                if self._closed and not self._busy:
                    os.close(self.fd)

    def close(self) -> None:
        """Close (releasing the flock) now, or when the last thread using it is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._busy:
                return
        os.close(self.fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.close()


class DiskCache:
    """The persistent blob cache of one mount (see the module docstring for the design).

    The Reader calls :meth:`open` before any GET of a blob, :meth:`read` for its bytes,
    :meth:`begin` when a blob starts being read from S3 front to back, and :meth:`offer` with
    every chunk of it that goes by.
    """

    def __init__(self, directory: Path, max_bytes: int, chunk_size: int, max_queued: int) -> None:
        self.dir = directory
        self.root = directory / ROOT_NAME
        self.tmp = self.root / "tmp"
        self.lock_path = self.root / "lock"
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        # Bytes of chunks a fill may hold before the disk wrote them (mostly the same buffers
        # the chunk cache holds). Beyond it a chunk is not queued, so a disk slower than S3
        # never slows a read; the fill fetches it again once the whole blob went by.
        self.max_queued = max(4 * chunk_size, max_queued)
        self.fill_idle_timeout = FILL_IDLE_TIMEOUT
        # One blob hashed at a time (set in start(), inside trio): at most one core for
        # verification, so a pull of many layers on a small machine keeps CPU for its reads.
        self._hashing: trio.CapacityLimiter | None = None
        self.group: TaskGroup | None = None
        self.prepared = False
        self._fills: dict[Digest, _Fill] = {}
        self._by_version: dict[Version, _Fill] = {}
        self._off: set[Digest] = set()  # the disk failed for these: S3 only, for this process
        self.stats: collections.Counter[str] = collections.Counter()
        self.used_bytes = 0  # as of this process's last scan (a gauge)

    @classmethod
    def from_config(cls, cfg: Config) -> "DiskCache | None":
        if cfg.disk_cache is None:
            return None
        return cls(cfg.disk_cache, cfg.disk_cache_size, cfg.chunk_size, cfg.max_readahead)

    # --- setup ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create or check the directories (OcifsError, one line, if they are not ours), then
        apply the bound once: a smaller --disk-cache-size takes effect at mount."""
        make_dir(self.dir, "disk cache directory")
        uid = os.geteuid()
        hint = "remove it, or use another --disk-cache"
        for d in (self.root, self.tmp, *(self.root / alg for alg in ALGORITHMS)):
            private_dir(d, uid, hint)
        with self._locked():
            self._make_room(0)
        self.prepared = True

    async def start(self, nursery: trio.Nursery) -> None:
        """Open the task group of background writes (preparing first if the mount did not)."""
        if not self.prepared:
            await trio.to_thread.run_sync(self.prepare)
        self._hashing = trio.CapacityLimiter(1)
        self.group = await TaskGroup.open(nursery, "disk cache")

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) until every fill whose chunks all went by is written and renamed."""
        with trio.move_on_after(timeout):
            while any(f.complete for f in self._fills.values()):
                await trio.sleep(0.02)

    async def aclose(self, timeout: float) -> None:
        """Unmount: let fills whose chunks all went by finish (bounded), cancel the rest."""
        await self.settle(timeout)
        for f in self._fills.values():
            log.info("disk cache: not keeping blob %s: unmounted with %d of its %d chunks", _digest_name(f.digest), len(f.written) + len(f.queue), f.nchunks)
        if self.group is not None:
            await self.group.aclose()

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {f"disk.{k}": v for k, v in self.stats.items()}
        out["disk.bytes"] = self.used_bytes
        return out

    # --- paths and the lock -----------------------------------------------------------------
    def path(self, digest: Digest) -> Path:
        return self.root / digest[0] / digest[1]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The cache-wide lock (flock: every process sharing the directory). A new open file
        description each time, so two threads of one process exclude each other too. Polled,
        so a thread waiting for it ends by its own deadline instead of blocking forever."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(errno.ETIMEDOUT, "the disk cache lock was held too long") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    async def _io(
        self, timeout: float, fn: Callable[[], T], on_abandon: Callable[[T], None] | None = None, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run blocking disk work in a worker thread, under a deadline (trio.TooSlowError).

        A thread past its deadline (or cancelled) is abandoned, never waited for: a hung disk
        cannot hang the mount. ``fn`` then does not start if it had not yet; if it finishes
        anyway, ``on_abandon`` gets what it made (by whichever side comes last, under a lock,
        so nothing it made is lost between the two).
        """
        lock = threading.Lock()
        box: dict[str, object] = {"state": "new"}  # new -> running -> done | abandoned; new -> dropped

        def run() -> T:
            with lock:
                if box["state"] == "dropped":
                    raise OSError(errno.ECANCELED, "given up before it started")
                box["state"] = "running"
            result = fn()
            with lock:
                if box["state"] == "abandoned":
                    if on_abandon is not None:
                        on_abandon(result)
                else:
                    box["state"], box["result"] = "done", result
            return result

        try:
            with trio.fail_after(timeout):
                return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
        except BaseException:
            with lock:
                state = box["state"]
                box["state"] = {"new": "dropped", "running": "abandoned"}.get(str(state), state)
                if state == "done" and on_abandon is not None:
                    on_abandon(box["result"])  # type: ignore[arg-type]
            raise

    def _turn_off(self, digest: Digest, what: str, exc: BaseException) -> None:
        """The disk failed for this blob: S3 only from now on, and say so once."""
        self.stats["errors"] += 1
        if digest in self._off:
            return
        self._off.add(digest)
        reason = "took too long" if isinstance(exc, trio.TooSlowError) else (getattr(exc, "strerror", None) or str(exc))
        log.warning("disk cache: %s of blob %s failed (%s); reading it from S3 from now on", what, _digest_name(digest), reason)

    # --- reads ------------------------------------------------------------------------------
    async def open(self, digest: Digest, size: int) -> CachedBlob | None:
        """The cached blob, found whole (right size, verified), or None: read it from S3."""
        if digest in self._off:
            return None
        try:
            blob = await self._io(_verify_deadline(size), lambda: self._open(digest, size))
        except (OSError, trio.TooSlowError) as exc:
            self._turn_off(digest, "open", exc)
            return None
        self.stats["hits" if blob is not None else "misses"] += 1
        return blob

    def _open(self, digest: Digest, size: int) -> CachedBlob | None:
        path = self.path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):  # not cached (ELOOP: not a file of ours)
                return None
            raise
        try:
            st = os.fstat(fd)
            problem = None
            if not stat.S_ISREG(st.st_mode):
                problem = "it is not a regular file"
            elif st.st_size != size:
                problem = f"it has {st.st_size} bytes, S3 says {size}"
            elif st.st_mtime_ns != STAMP_NS:
                # Written to since it was verified: check it again, and stamp it if it is good.
                got = hash_fd(fd, digest[0], size)
                if got != digest[1]:
                    problem = f"it was modified and hashes to {got[:12]}"
            if problem is not None:
                self._drop_path(path, st, f"{problem}; reading it from S3", digest)
                os.close(fd)
                return None
            os.utime(fd, ns=(time.time_ns(), STAMP_NS))  # last use, for LRU eviction
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return CachedBlob(digest, fd, size)

    def _drop_path(self, path: Path, st: os.stat_result, why: str, digest: Digest) -> None:
        """Remove a wrong cache file, unless another process replaced it meanwhile."""
        log.warning("disk cache: dropped blob %s: %s", _digest_name(digest), why)
        self.stats["dropped"] += 1
        with contextlib.suppress(OSError):
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                path.unlink()

    async def read(self, blob: CachedBlob, off: int, size: int) -> bytes | bytearray | None:
        """Bytes from the cache file, or None if the disk failed (the caller reads S3)."""
        try:
            data = blob.pread_cached(size, off) or await self._io(IO_TIMEOUT, lambda: blob.pread(size, off))
        except (OSError, trio.TooSlowError) as exc:
            self._turn_off(blob.digest, "read", exc)
            return None
        return data

    async def drop(self, blob: CachedBlob, why: str) -> None:
        """Remove a cache file found wrong while reading it (--verify-reads)."""
        self._off.add(blob.digest)
        path = self.path(blob.digest)
        with contextlib.suppress(OSError, trio.TooSlowError):
            st = await self._io(IO_TIMEOUT, lambda: os.fstat(blob.fd))
            await self._io(IO_TIMEOUT, lambda: self._drop_path(path, st, why, blob.digest))

    # --- writes -----------------------------------------------------------------------------
    def begin(self, digest: Digest, v: Version, fetch: FetchChunk) -> None:
        """``v`` (a blob with this digest) is being read from S3 from its start: keep it once
        all of its chunks went by (:meth:`offer`) and it hashes right. ``fetch`` gets a chunk
        of ``v`` through the mount's chunk cache (for the few a lagging disk had to skip)."""
        if self.group is None or self.group.closed or digest in self._off:
            return
        fill = self._fills.get(digest)
        if fill is None:
            if v.size == 0 or v.size > self.max_bytes:
                return  # nothing to keep, or never fits
            fill = _Fill(digest, v.size, self.chunk_size, fetch)
            self._fills[digest] = fill
            self.group.start_soon(self._fill, fill)
        elif fill.size != v.size:
            return  # not the same bytes: one of the two objects is wrong, the hash will tell
        fill.versions.add(v)
        self._by_version[v] = fill

    def offer(self, v: Version, idx: int, data: bytes | bytearray | memoryview) -> None:
        """Chunk ``idx`` of ``v`` went by (from S3 or the memory cache); cheap when unwanted."""
        fill = self._by_version.get(v)
        if fill is None or idx in fill.written or idx in fill.queue:
            return
        if idx >= fill.nchunks or len(data) != fill.chunk_len(idx):
            return
        fill.seen.add(idx)
        if fill.queued_bytes + len(data) > self.max_queued:
            return  # the disk is behind: a later offer, or the fill's own fetch, brings it
        fill.queue[idx] = data  # type: ignore[assignment]
        fill.queued_bytes += len(data)
        fill.wake.set()

    async def _fill(self, fill: _Fill) -> None:
        temp: _Temp | None = None
        try:
            temp = await self._io(IO_TIMEOUT, lambda: self._reserve(fill), lambda t: t and t.discard())
            if temp is None:
                return
            while len(fill.written) < fill.nchunks:
                if not fill.queue and fill.complete:
                    # All of it went by, but the disk fell behind and some chunks were not
                    # queued: fetch them (usually still in memory), one at a time.
                    if not await self._refetch(fill):
                        return
                if not fill.queue:
                    fill.wake = trio.Event()
                    with trio.move_on_after(self.fill_idle_timeout):
                        await fill.wake.wait()
                    if not fill.queue and not fill.complete:
                        log.debug("disk cache: not keeping blob %s: not read to its end", _digest_name(fill.digest))
                        return
                    continue
                # Everything queued, in one trip to a worker thread; chunks stay queued until
                # written, so none is queued twice meanwhile.
                batch = list(fill.queue.items())
                cs, t = fill.chunk_size, temp
                await self._io(IO_TIMEOUT, lambda: t.run(lambda fd: [_pwrite_all(fd, data, idx * cs) for idx, data in batch]))
                for idx, data in batch:
                    del fill.queue[idx]
                    fill.queued_bytes -= len(data)
                    fill.written.add(idx)
            done = temp
            commit = lambda: done.run(lambda fd: self._commit(fill, fd, done.path))  # noqa: E731
            if await self._io(_verify_deadline(fill.size), commit, limiter=self._hashing):
                temp = None  # renamed into place: a blob now, not a temp file
                done.close()  # releases its flock
                self.stats["stored"] += 1
            else:
                self._off.add(fill.digest)  # S3's object is not the blob: do not try again
        except (OSError, trio.TooSlowError) as exc:
            self._turn_off(fill.digest, "write", exc)
        finally:
            if self._fills.get(fill.digest) is fill:
                del self._fills[fill.digest]
            for v in fill.versions:
                if self._by_version.get(v) is fill:
                    del self._by_version[v]
            fill.queue.clear()
            if temp is not None:
                temp.discard()

    async def _refetch(self, fill: _Fill) -> bool:
        """Queue the first chunk that is neither written nor queued; False: it cannot be had."""
        idx = min(set(range(fill.nchunks)) - fill.written - fill.queue.keys())
        try:
            with trio.fail_after(REFETCH_TIMEOUT):
                data = await fill.fetch(idx)
        except Exception as exc:  # S3 said no (object gone, changed): not a disk failure
            log.debug("disk cache: not keeping blob %s: chunk %d: %s", _digest_name(fill.digest), idx, exc)
            return False
        self.stats["refetched"] += 1
        if idx not in fill.written and idx not in fill.queue:
            fill.queue[idx] = data
            fill.queued_bytes += len(data)
        return True

    def _reserve(self, fill: _Fill) -> _Temp | None:
        """Make room for the blob and create its temp file at full size, under the lock."""
        with self._locked():
            if not self._make_room(fill.size):
                log.debug("disk cache: no room for blob %s now (others are writing)", _digest_name(fill.digest))
                return None
            alg, hexd = fill.digest
            path = self.tmp / f"{alg}-{hexd}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            temp = _Temp(fd, path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "in use" for every other scan
                try:
                    os.posix_fallocate(fd, 0, fill.size)  # ENOSPC now rather than mid-write
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, fill.size)  # the size still counts in every scan
            except BaseException:
                temp.discard()
                raise
            self.used_bytes += fill.size
            return temp

    def _make_room(self, need: int) -> bool:
        """Under the lock: remove stale temp files, evict least recently used blobs until
        ``need`` more bytes fit in the bound. False if they cannot (others' temp files)."""
        used = 0
        # Temp files first: a blob renamed during the scan is then counted twice, never missed.
        with os.scandir(self.tmp) as it:
            for entry in it:
                size = self._temp_size(entry)
                used += size
        blobs: list[tuple[int, int, str]] = []  # (atime_ns, size, path)
        for alg in ALGORITHMS:
            with os.scandir(self.root / alg) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        blobs.append((st.st_atime_ns, st.st_size, entry.path))
                        used += st.st_size
        blobs.sort()
        evict = 0
        while used + need > self.max_bytes and evict < len(blobs):
            _, size, path = blobs[evict]
            evict += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            used -= size
            self.stats["evicted"] += 1
        self.used_bytes = used
        return used + need <= self.max_bytes

    def _temp_size(self, entry: os.DirEntry[str]) -> int:
        """The size a temp file counts for, or 0 after removing it if its writer is gone (no
        process holds its flock)."""
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.fstat(fd).st_size  # a live writer's reservation
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            log.info("disk cache: removed %s, left by a writer that is gone", entry.name)
            return 0
        finally:
            os.close(fd)

    def _commit(self, fill: _Fill, fd: int, path: Path) -> bool:
        """fsync, hash what the disk holds, stamp, rename into place, fsync the directory."""
        os.fsync(fd)
        alg, want = fill.digest
        got = hash_fd(fd, alg, fill.size)
        if got != want:
            keys = ", ".join(sorted(v.key for v in fill.versions))
            log.warning("disk cache: blob %s read from S3 (%s) hashes to %s: not cached", _digest_name(fill.digest), keys, got[:12])
            self.stats["dropped"] += 1
            return False
        os.utime(fd, ns=(time.time_ns(), STAMP_NS))
        final = self.path(fill.digest)
        os.rename(path, final)
        dfd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

