"""A file being written: its local staging copy and the multipart upload streamed from it.

Every write lands in a staging file on local disk (the source of truth for the file's bytes
until commit, so other opens can read it and random writes, truncates and appends just work).
While the writer moves forward, each completed part is uploaded in the background, in
parallel, as an S3 multipart upload: by the time the writer closes the file most bytes are
already in S3. At most ``max_inflight`` parts of one file are in flight; a writer that gets
further ahead waits (backpressure), which also bounds the work left for close().

A part that is rewritten after it was sent is sent again at commit, so any write pattern is
correct; only sequential writers get the streaming speed-up. Files smaller than one part go in
a single PUT at commit. Nothing is visible under the key until commit: an abandoned upload is
aborted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from pathlib import Path

import trio

from ocifs import errors, store
from ocifs.s3 import S3

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit


class Staging:
    """A local file that holds the whole content of a file being written."""

    def __init__(self, directory: Path) -> None:
        fd, name = _mkstemp(directory)
        self.fd = fd
        self.path = Path(name)

    def pwrite(self, data: bytes, offset: int) -> None:
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
            raise errors.OcifsError(f"staging truncate failed: {exc}", err=exc.errno) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix="w-", dir=directory)


class WriteSession:
    """The pending content of one inode, from the first write until the last release."""

    def __init__(
        self,
        s3: S3,
        nursery: trio.Nursery,
        staging_dir: Path,
        key: str,
        size: int,
        part_size: int,
        max_inflight: int,
        private: bool,
    ) -> None:
        self.s3 = s3
        self.nursery = nursery
        self.staging = Staging(staging_dir)
        self.key = key  # where the next commit publishes
        self.size = size
        self.part_size = part_size
        # True when this session rewrites a committed file from scratch (O_TRUNC): other
        # opens keep reading the committed version until the commit (atomic publish).
        self.private = private
        self.owner: int | None = None  # the process doing a private rewrite (sees it early)
        self.dirty = True
        # Zero-copy commit: the key this file is streamed to before its final name exists
        # (oras' ingest/<hex>_N -> blobs/<alg>/<hex>). Close only seals; the rename publishes.
        self.target: str | None = None
        self.sealed = False
        # sha256 of bytes [0, _hashed), fed by forward writes; rewrites below invalidate it.
        self._sha256: "hashlib._Hash | None" = hashlib.sha256()
        self._hashed = 0
        self._inflight = trio.Semaphore(max_inflight)
        self._max_inflight = max_inflight
        self._idle = trio.Event()
        self._idle.set()
        self._running = 0
        self._error: errors.OcifsError | store.StoreError | None = None
        self._reset_upload()

    def _reset_upload(self) -> None:
        self.upload_id: str | None = None
        self.upload_key: str | None = None
        self.upload_meta: dict[str, str] = {}
        self._parts: dict[int, tuple[str, int]] = {}  # number -> (etag, length sent)
        self._sent: set[int] = set()  # parts dispatched in this upload
        self._stale: set[int] = set()  # parts rewritten after they were dispatched
        self._frontier = 0  # bytes [0, frontier) were written by a forward-moving writer
        self._sent_end = 0  # end offset of the furthest part dispatched
        self._mpu_lock = trio.Lock()

    @property
    def streaming(self) -> bool:
        return self.upload_id is not None

    # --- writes -----------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes, meta: dict[str, str]) -> None:
        if self.write_nowait(offset, data):
            await self.dispatch(meta)

    def write_nowait(self, offset: int, data: bytes) -> bool:
        """Stage a write without yielding; True if a full part is ready to be sent.

        The FUSE write path calls this directly: most writes (oras writes 32 KiB at a time)
        then cost a pwrite and a hash update, no scheduling.
        """
        self.staging.pwrite(data, offset)
        end = offset + len(data)
        if end > self.size:
            self.size = end
        self.dirty = True
        self.sealed = False
        if self._sha256 is not None:
            if offset == self._hashed:
                self._sha256.update(data)
                self._hashed = end
            elif offset < self._hashed:
                self._sha256 = None
        if self._error is not None:
            return False  # reported at commit
        if offset < self._sent_end:  # rewrites something already sent: resend at commit
            first = offset // self.part_size + 1
            for n in self._sent:
                if n >= first and (n - 1) * self.part_size < end:
                    self._stale.add(n)
        if offset <= self._frontier and end > self._frontier:
            self._frontier = end
        return (len(self._sent) + 1) * self.part_size <= self._frontier

    async def dispatch(self, meta: dict[str, str]) -> None:
        await self._dispatch_full_parts(meta)

    def truncate(self, size: int) -> None:
        self.staging.truncate(size)
        self.sealed = False
        if size < self._hashed:
            self._sha256 = None
        if size < self.size:
            self._frontier = min(self._frontier, size)
            for n in self._sent:
                if n * self.part_size > size:
                    self._stale.add(n)
        self.size = size
        self.dirty = True

    async def _dispatch_full_parts(self, meta: dict[str, str]) -> None:
        n = len(self._sent) + 1
        while n * self.part_size <= self._frontier and n < MAX_PARTS and self._error is None:
            if n not in self._sent:
                await self._start_part(n, meta)
            n += 1

    async def _start_part(self, number: int, meta: dict[str, str]) -> None:
        await self._inflight.acquire()  # backpressure: the writer waits here
        try:
            await self._ensure_mpu(meta)
        except BaseException:
            self._inflight.release()
            raise
        self._sent.add(number)
        self._sent_end = max(self._sent_end, number * self.part_size)
        self._running += 1
        self._idle = trio.Event()
        self.nursery.start_soon(self._upload_part_task, number)

    async def _ensure_mpu(self, meta: dict[str, str]) -> None:
        async with self._mpu_lock:
            if self.upload_id is None:
                self.upload_id = await self.s3.create_multipart(self.key, meta)
                self.upload_key = self.key
                self.upload_meta = dict(meta)

    async def _upload_part_task(self, number: int) -> None:
        try:
            await self._upload_part(number)
        except (errors.OcifsError, store.StoreError) as exc:
            if self._error is None:
                self._error = exc
                log.warning("upload of part %d of %s failed: %s", number, self.key, exc)
        finally:
            self._inflight.release()
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _upload_part(self, number: int) -> None:
        assert self.upload_id is not None and self.upload_key is not None
        start = (number - 1) * self.part_size
        length = max(0, min(self.part_size, self.size - start))
        # Read the part only once a request slot is free (bounded memory with many writers).
        etag = await self.s3.upload_part(
            self.upload_key, self.upload_id, number, lambda: self.staging.pread(length, start)
        )
        self._parts[number] = (etag, length)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --- digests ----------------------------------------------------------------------------
    async def digest(self, alg: str) -> str:
        """Hex digest of the staged content; sha256 mostly comes from the streaming hash."""
        if alg == "sha256" and self._sha256 is not None:
            h = self._sha256.copy()
            start = self._hashed
        else:
            h = hashlib.new(alg)
            start = 0
        size = self.size

        def finish() -> str:
            pos = start
            while pos < size:
                block = self.staging.pread(min(8 << 20, size - pos), pos)
                if not block:
                    break
                h.update(block)
                pos += len(block)
            return h.hexdigest()

        if size - start <= 1 << 20:
            return finish()
        return await trio.to_thread.run_sync(finish)

    # --- commit -----------------------------------------------------------------------------
    async def seal(self) -> None:
        """Close of a zero-copy file: wait for its parts, publish nothing yet."""
        await self.wait_idle()
        if self._error is not None:
            err = self._error
            await self._abort()
            raise err
        self.sealed = True

    async def commit(
        self,
        meta: dict[str, str],
        expect: tuple[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        fix_meta: bool = True,
    ) -> tuple[str, int, float | None]:
        """Publish the staged content at ``self.key``.

        Returns (etag, size, mtime); mtime is None when S3's LastModified is the file's mtime
        (multipart uploads, where metadata is fixed before the last write). On failure nothing new is visible at the key, the
        multipart upload is aborted, and the next commit starts again from the staging file.
        """
        await self.wait_idle()
        try:
            if self._error is not None:
                raise self._error
            if expect is not None:
                alg, want = expect
                got = await self.digest(alg)
                if got != want:
                    raise errors.DigestMismatch(
                        f"refusing to publish {self.key}: content hashes to {alg}:{got}"
                    )
            if self.upload_id is None and self.size <= self.part_size:
                meta = dict(meta)
                meta.setdefault("mtime", f"{now():.6f}")
                body = self.staging.pread(self.size, 0)
                etag = await self.s3.put(self.key, body, meta, if_match, if_none_match)
                result: tuple[str, int, float | None] = (etag, self.size, float(meta["mtime"]))
            else:
                result = await self._complete(meta, fix_meta)
        except BaseException:
            await self._abort()
            raise
        self._reset_upload()
        self.dirty = False
        self.sealed = False
        self.target = None
        return result

    async def mark_published(self) -> None:
        """The content was published by other means (index.json merge): forget the upload."""
        await self.wait_idle()
        await self._abort()
        self.dirty = False
        self.sealed = False
        self.target = None

    @property
    def sha256_if_cheap(self) -> str | None:
        """The content's sha256 when the streaming hash covers all of it."""
        if self._sha256 is not None and self._hashed == self.size:
            return self._sha256.hexdigest()
        return None

    async def _complete(self, meta: dict[str, str], fix_meta: bool = True) -> tuple[str, int, float | None]:
        size = self.size
        nparts = max(1, -(-size // self.part_size))
        if nparts > MAX_PARTS or (self.upload_key not in (None, self.key)):
            # Too many parts for this part size, or renamed mid-upload: start over in one go.
            await self._abort()
            return await self._upload_whole(meta, fix_meta)
        await self._ensure_mpu(meta)
        assert self.upload_id is not None
        todo = []
        for n in range(1, nparts + 1):
            want = min(self.part_size, size - (n - 1) * self.part_size)
            got = self._parts.get(n)
            if got is None or got[1] != want or n in self._stale:
                todo.append(n)
        await self._send_parts(todo)
        if self._error is not None:
            raise self._error
        parts = [(n, self._parts[n][0]) for n in range(1, nparts + 1)]
        etag = await self.s3.complete_multipart(self.key, self.upload_id, parts)
        self.upload_id = None  # completed: nothing left to abort
        if fix_meta and self.upload_meta != meta:
            # Metadata changed after the upload began (chmod of an open file): S3 only takes
            # metadata at CreateMultipartUpload, so fix it with a server-side self-copy.
            etag = await self.s3.copy(self.key, self.key, meta)
        mtime = float(meta["mtime"]) if "mtime" in meta else None
        return etag, size, mtime

    async def _upload_whole(self, meta: dict[str, str], fix_meta: bool) -> tuple[str, int, float | None]:
        self._reset_upload()
        part_size = self.part_size
        while -(-self.size // part_size) > MAX_PARTS:
            part_size *= 2
        self.part_size = part_size
        return await self._complete(meta, fix_meta)

    async def _send_parts(self, numbers: list[int]) -> None:
        async with trio.open_nursery() as nursery:
            for n in numbers:
                await self._inflight.acquire()
                self._running += 1
                self._idle = trio.Event()
                self._sent.add(n)
                self._sent_end = max(self._sent_end, n * self.part_size)
                self._stale.discard(n)
                nursery.start_soon(self._upload_part_task, n)

    async def _abort(self) -> None:
        upload_id, key = self.upload_id, self.upload_key
        self._reset_upload()
        self._error = None
        if upload_id is not None and key is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                try:
                    await self.s3.abort_multipart(key, upload_id)
                except store.StoreError as exc:
                    log.warning("could not abort multipart upload of %s: %s", key, exc)

    async def discard(self) -> None:
        """Drop the session: abort any upload and delete the staging file."""
        await self.wait_idle()
        await self._abort()
        self.staging.close()

    def close(self) -> None:
        self.staging.close()


def now() -> float:
    return time.time()
