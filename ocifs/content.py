"""The bytes of one version of a file being written: a base object plus local changes.

A write session does not copy the object it modifies. Its content is

* ``base``: the committed object (key, ETag, size) the session started from, whose bytes fill
  ``[0, base_extent)`` wherever nothing was written locally; and
* a sparse local *staging* file holding every byte written (at its real offset), plus the base
  chunks that had to be fetched because a write landed inside them.

So appending to an existing object (zot's chunked uploads reopen the file and write at EOF),
``truncate(path, N)`` and reopening without ``O_TRUNC`` cost nothing until commit, and the commit
copies the unchanged prefix server-side (UploadPartCopy) instead of downloading and uploading it
inside one FUSE operation. Chunks are the unit of bookkeeping: ``local`` holds the chunks below
``base_extent`` whose staging bytes are valid, ``modified`` those that differ from the base.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import hashlib
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import trio

from ocifs import errors, trace


class Version(NamedTuple):
    """One committed version of an object: where it is, which ETag, how big."""

    key: str
    etag: str
    size: int


# Fetch chunk ``idx`` of the base version (through the mount's chunk cache).
FetchChunk = Callable[[int], Awaitable[bytes]]


# Beside each staging file ``w-XXXX``: ``w-XXXX.key``, the object it would be published as (one
# line, s3://bucket/key), so that the next mount can say what a crashed run left behind.
LABEL_SUFFIX = ".key"


class Staging:
    """A sparse local file holding a file's locally written bytes at their real offsets."""

    def __init__(self, directory: Path, label: str | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix="w-", dir=directory)
        self.fd = fd
        self.path = Path(name)
        if label is not None:
            self.label(label)

    def label(self, what: str) -> None:
        """Record what this file would be published as (best effort: a full disk leaves the
        staging file unlabelled, never the write refused)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a key name is private too
            try:
                os.write(fd, (what + "\n").encode())
            finally:
                os.close(fd)
            tmp.replace(self.path.with_name(self.path.name + LABEL_SUFFIX))
        except OSError:
            tmp.unlink(missing_ok=True)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """All of ``data`` or an error: a short write (full disk) is ENOSPC, never ignored."""
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "no space left on the staging disk")
                view = view[n:]
                offset += n
        except OSError as exc:
            raise errors.OcifsError(f"staging write failed: {exc.strerror or exc}", err=exc.errno or errno.EIO) from None

    def pread(self, size: int, offset: int) -> bytes:
        """Exactly ``size`` bytes (what we publish must be what was acknowledged)."""
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise errors.OcifsError(f"staging file is short: {len(data)} of {size} bytes at {offset}")
        return data

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise errors.OcifsError(f"staging truncate failed: {exc.strerror or exc}", err=exc.errno or errno.EIO) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)
            self.path.with_name(self.path.name + LABEL_SUFFIX).unlink(missing_ok=True)


class StagedRange:
    """Bytes [start, end) of a staging file, read when a request slot is free.

    Calling it returns the bytes (a :data:`ocifs.store.BodySource` for any ObjectStore); the
    native data plane sends it from ``fd`` with ``sendfile`` instead (no copy in the process).
    """

    __slots__ = ("content", "fd", "start", "end")

    def __init__(self, content: "Content", start: int, end: int) -> None:
        self.content, self.fd, self.start, self.end = content, content.staging.fd, start, end

    def __call__(self) -> bytes:
        return self.content.pread_local(self.start, self.end)


class StreamingHash:
    """sha256 of a staging file's bytes [0, n) as a writer appends them, computed off the
    FUSE thread.

    The FUSE thread only says how far the file is written (:meth:`advance`); every
    ``HASH_BATCH`` bytes a job on one worker thread reads that range back from the staging file
    and hashes it (both release the GIL). Measured (py-spy, 1 GiB `oras push`, 32 KiB writes):
    hashing inside the write handler was 38 us of the ~125 us each write cost the FUSE thread.
    Jobs of all files share one worker, first in first out, so each hash is fed in order. A
    byte rewritten after it was queued makes the caller drop the whole hash (as before), so a
    job that reads newer bytes does no harm.
    """

    # One job per this many bytes: few GIL hand-overs per job, at most a batch left at close.
    HASH_BATCH = 8 * 1024 * 1024
    # Jobs queued but not done beyond this many and the writer waits (bounds the lag).
    MAX_JOBS = 8
    # A tail this small is hashed by the caller at close: a job would cost a thread hand-over.
    INLINE = 1024 * 1024
    _pool: concurrent.futures.ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()
    _buffers = threading.local()

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._sha = hashlib.sha256()
        self._queued = 0  # bytes handed to jobs
        self._written = 0  # bytes the writer has appended
        self._jobs: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self.broken = False  # a job could not read its range: no digest

    @classmethod
    def _executor(cls) -> concurrent.futures.ThreadPoolExecutor:
        with cls._pool_lock:
            if cls._pool is None:
                cls._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="ocifs-hash", initializer=trace.name_os_thread, initargs=("ocifs-hash",)
                )
            return cls._pool

    def advance(self, end: int) -> None:
        """The writer appended up to ``end``: queue full batches."""
        self._written = end
        if end - self._queued >= self.HASH_BATCH:
            self._queue(end - (end - self._queued) % self.HASH_BATCH)
            while len(self._jobs) > self.MAX_JOBS:
                self._jobs.popleft().result()

    def _queue(self, end: int) -> None:
        start, self._queued = self._queued, end
        fd = os.dup(self._fd)  # the staging file may be closed before the job runs
        self._jobs.append(self._executor().submit(self._job, fd, start, end))

    def _job(self, fd: int, start: int, end: int) -> None:
        buf = getattr(self._buffers, "buf", None)
        if buf is None:  # one buffer per worker thread, reused by every job
            buf = self._buffers.buf = bytearray(self.HASH_BATCH)
        self._hash(fd, start, end, buf)

    def _hash(self, fd: int, start: int, end: int, buf: bytearray) -> None:
        view = memoryview(buf)
        try:
            pos = start
            while pos < end and not self.broken:
                n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
                if n <= 0:
                    self.broken = True
                    break
                self._sha.update(view[:n])
                pos += n
        except OSError:
            self.broken = True
        finally:
            os.close(fd)

    @property
    def busy(self) -> bool:
        """Whether :meth:`hexdigest` would wait for a job (then call it off the FUSE thread)."""
        return bool(self._jobs) or self._written - self._queued > self.INLINE

    def hexdigest(self) -> str | None:
        """The digest of everything advanced so far (waits for the jobs: at most a batch or two)."""
        while self._jobs:
            self._jobs.popleft().result()
        if self._queued < self._written:
            start, self._queued = self._queued, self._written
            self._hash(os.dup(self._fd), start, self._written, bytearray(min(self._written - start, self.INLINE)))
        return None if self.broken else self._sha.hexdigest()


class Content:
    """The pending bytes of a file: ``base`` where untouched, staging everywhere else."""

    def __init__(self, staging_dir: Path, chunk_size: int, base: Version | None = None, label: str | None = None) -> None:
        self.staging = Staging(staging_dir, label)
        self.chunk_size = chunk_size
        self.base = base
        self.base_extent = base.size if base is not None else 0
        self.size = self.base_extent
        self.local: set[int] = set()
        self.modified: set[int] = set()
        # sha256 of bytes [0, _hashed), fed by forward writes of a file built from scratch;
        # anything else (a base, a rewrite behind the hash) makes it unknown (None).
        self._sha: StreamingHash | None = StreamingHash(self.staging.fd) if self.base_extent == 0 else None
        self._hashed = 0

    # --- queries ----------------------------------------------------------------------------
    def _chunks(self, start: int, end: int) -> range:
        cs = self.chunk_size
        return range(start // cs, (end - 1) // cs + 1) if end > start else range(0)

    def needs_base(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) include base bytes not present in staging."""
        end = min(end, self.base_extent)
        return any(c not in self.local for c in self._chunks(start, end))

    def copyable(self, start: int, end: int) -> bool:
        """Whether [start, end) is byte-for-byte the base (so S3 can copy it server-side)."""
        if self.base is None or end > self.base_extent:
            return False
        return not any(c in self.modified for c in self._chunks(start, end))

    @property
    def sha256(self) -> str | None:
        """The content's sha256 when the streaming hash covers all of it."""
        if self._sha is not None and self._hashed == self.size:
            digest = self._sha.hexdigest()
            if digest is None:
                self._sha = None
            return digest
        return None

    # --- writes -----------------------------------------------------------------------------
    def write_nowait(self, offset: int, data: bytes | memoryview) -> bool:
        """Write without awaiting; False (nothing written) if base chunks must be fetched first."""
        end = offset + len(data)
        if offset < self.base_extent and self.needs_base(offset, end):
            return False
        self.staging.pwrite(data, offset)
        if offset < self.base_extent:
            self.modified.update(self._chunks(offset, min(end, self.base_extent)))
        if end > self.size:
            self.size = end
        if self._sha is not None:
            if offset == self._hashed:
                self._hashed = end
                self._sha.advance(end)
            elif offset < self._hashed:
                self._sha = None
        return True

    async def write(self, offset: int, data: bytes | memoryview, fetch: FetchChunk) -> None:
        if not self.write_nowait(offset, data):
            await self.materialize(offset, offset + len(data), fetch)
            done = self.write_nowait(offset, data)
            assert done

    async def materialize(self, start: int, end: int, fetch: FetchChunk) -> None:
        """Bring the base bytes of every chunk touching [start, end) into staging."""
        cs = self.chunk_size
        for c in self._chunks(start, min(end, self.base_extent)):
            if c in self.local:
                continue
            data = await fetch(c)
            lo, hi = c * cs, min((c + 1) * cs, self.base_extent)
            # A write may have landed beyond base_extent inside this chunk: keep it.
            self.staging.pwrite(memoryview(data)[: hi - lo], lo)
            self.local.add(c)

    def truncate(self, size: int) -> None:
        self.staging.truncate(size)
        if size < self.base_extent:
            self.base_extent = size
            limit = -(-size // self.chunk_size)
            self.local = {c for c in self.local if c < limit}
            self.modified = {c for c in self.modified if c < limit}
        if size < self._hashed:
            self._sha = None
        self.size = size

    # --- reads ------------------------------------------------------------------------------
    async def read(self, offset: int, length: int, fetch: FetchChunk) -> bytes:
        """Bytes [offset, offset+length) of the content (short at EOF)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        cs = self.chunk_size
        out: list[bytes | memoryview] = []
        pos = offset
        while pos < end:
            if pos >= self.base_extent:
                out.append(self.staging.pread(end - pos, pos))
                break
            c = pos // cs
            stop = min(end, (c + 1) * cs, self.base_extent)
            if c in self.local:
                out.append(self.staging.pread(stop - pos, pos))
            else:
                data = await fetch(c)
                out.append(memoryview(data)[pos - c * cs : stop - c * cs])
            pos = stop
        return out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)

    def staged(self, start: int, end: int) -> StagedRange:
        """Bytes [start, end) as a part body (the caller made them local)."""
        assert not self.needs_base(start, end), "staged range of bytes still in the base"
        return StagedRange(self, start, end)

    def pread_local(self, start: int, end: int) -> bytes:
        """Bytes [start, end) straight from staging (the caller made them local)."""
        assert not self.needs_base(start, end), "pread_local of bytes still in the base"
        return self.staging.pread(end - start, start)

    async def digest(self, alg: str, fetch: FetchChunk) -> str:
        """Hex digest of the whole content (the streaming sha256 when it covers it)."""
        if alg == "sha256" and self._sha is not None and self._hashed == self.size:
            if self._sha.busy:  # wait for the hashing jobs off the FUSE thread
                await trio.to_thread.run_sync(self._sha.hexdigest)
            if self.sha256 is not None:
                return self.sha256
        h = hashlib.new(alg)
        step = 8 << 20
        for pos in range(0, self.size, step):
            data = await self.read(pos, step, fetch)
            # hashlib releases the GIL on big buffers: hash off the FUSE thread.
            await trio.to_thread.run_sync(h.update, data)
        return h.hexdigest()

    # --- after a publish --------------------------------------------------------------------
    def rebase(self, version: Version) -> None:
        """The content was published as ``version``: it is the new base, nothing is modified."""
        cs = self.chunk_size
        first_fresh = -(-self.base_extent // cs)  # chunks wholly written locally
        self.local.update(range(first_fresh, -(-self.size // cs)))
        self.base = version
        self.base_extent = self.size
        self.modified.clear()

    def close(self) -> None:
        self.staging.close()
