"""Reading committed versions: the chunk cache, read-ahead, and what a changed object means.

Every read of a committed object goes through fixed-size chunks of one *version* (key + ETag)
in the mount's shared cache, and every ranged GET carries ``If-Match``, so a replaced object is
never mixed with the old one: the GET fails with PreconditionFailed instead, and the caller
(:mod:`ocifs.files`) decides what that means for its handle. Sequential readers get a growing
read-ahead window (:mod:`ocifs.prefetch`), fetched in the background by this service's own task
group; each background GET has a deadline, and its failure is only a miss for the real read.

With ``--disk-cache``, a blob is looked up by digest on local disk before any GET
(:mod:`ocifs.diskcache`): found whole, its bytes come from there and never from S3. A blob read
from S3 from its start is offered to that cache chunk by chunk as the chunks go by (read or
read ahead), and kept once all of it went by and it hashes right.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import trio

from ocifs import errors, trace
from ocifs.cache import ChunkCache, Fetch
from ocifs.config import Config
from ocifs.content import Content, FetchChunk, Version
from ocifs.diskcache import CachedBlob, Digest, DiskCache
from ocifs.layout import blob_digest
from ocifs.prefetch import ReadAhead
from ocifs.store import ObjectStore
from ocifs.tasks import TaskGroup

log = logging.getLogger(__name__)

DEMAND_PIECES = 4  # ranged GETs at once for a chunk a read waits on (read-ahead: one per chunk)
MIN_PIECE = 1024 * 1024  # ... each at least this long


class ReadState:
    """How one open handle reads the committed version it was opened on."""

    __slots__ = ("pin", "readahead", "returned", "verify", "verify_pos", "corrupt", "digest", "disk", "disk_checked", "disk_lock")

    def __init__(self, pin: Version | None, readahead: ReadAhead) -> None:
        self.pin = pin  # None: nothing committed when opened (a file another process is creating)
        self.readahead = readahead
        self.returned = False  # some bytes of ``pin`` were returned: switching versions would tear
        self.verify: "hashlib._Hash | None" = None  # --verify-reads: sequential hash of a blob
        self.verify_pos = 0
        self.corrupt = False  # --verify-reads found the blob wrong: every later read fails too
        self.digest: Digest | None = None  # a blob the disk cache may serve or keep
        self.disk: CachedBlob | None = None  # the disk cache's copy, when it serves this state
        self.disk_checked = False
        # The kernel sends several READs of one handle at once (16 MiB read-ahead): the first
        # looks the blob up on disk, the others wait for its answer instead of going to S3.
        self.disk_lock = trio.Lock()


class Reader:
    def __init__(self, cfg: Config, s3: ObjectStore, cache: ChunkCache, disk: DiskCache | None = None) -> None:
        self.cfg = cfg
        self.s3 = s3
        self.cache = cache
        self.disk = disk  # --disk-cache: blobs by digest on local disk
        self.group: TaskGroup | None = None  # read-ahead tasks; set when the mount starts
        # Read-ahead never plans more than half the cache per file, or it evicts itself.
        self.max_window = max(cfg.chunk_size, min(cfg.max_readahead, cfg.cache_size // 2))

    def new_state(self, pin: Version | None, blob_path: str | None = None) -> ReadState:
        """How a handle reads ``pin``; ``blob_path``: the path of a committed blob it opened."""
        st = ReadState(pin, ReadAhead(self.cfg.chunk_size, self.cfg.chunk_size, self.max_window))
        digest = blob_digest(blob_path) if blob_path else None
        if digest is not None:
            if self.cfg.verify_reads:
                st.verify = hashlib.new(digest[0])
            if self.disk is not None:
                st.digest = digest
        return st

    # --- chunks -----------------------------------------------------------------------------
    def _fetch(self, v: Version, idx: int, pieces: int = 1) -> Fetch:
        """The ranged GET of chunk ``idx`` of ``v`` (in ``pieces`` GETs at once, see
        :meth:`chunk`); what it brings is offered to the disk cache."""

        async def fetch(start: int, end: int) -> bytes:
            n = max(1, min(pieces, (end - start) // MIN_PIECE))
            if n == 1:
                data = await self.s3.get_range(v.key, start, end, v.etag or None)
            else:
                data = await self._get_pieces(v, start, end, n)
            if self.disk is not None:
                self.disk.offer(v, idx, data)
            return data

        return fetch

    async def _get_pieces(self, v: Version, start: int, end: int, n: int) -> bytes:
        """Bytes [start, end) of ``v`` by ``n`` ranged GETs at once. The first failure stops
        the others and is raised as it is (not in a group: callers tell a replaced object
        from a missing one by the error's type)."""
        bounds = [start + (end - start) * i // n for i in range(n + 1)]
        got: list[bytes] = [b""] * n
        failed: list[Exception] = []

        async def one(i: int, cancel: trio.CancelScope) -> None:
            try:
                got[i] = await self.s3.get_range(v.key, bounds[i], bounds[i + 1], v.etag or None)
            except Exception as exc:
                failed.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i, nursery.cancel_scope)
        if failed:
            raise failed[0]
        return b"".join(got)

    async def chunk(self, v: Version, idx: int) -> bytes:
        """Chunk ``idx`` of ``v`` for a read that waits on it. Fetched from S3 here (not by
        read-ahead), it comes in :data:`DEMAND_PIECES` ranged GETs at once: S3 serves each
        connection at a bounded rate (~90 MB/s), so the first chunk of a cold blob arrives in
        a quarter of the time (an 8 MiB layer: one round trip and 2 MiB, not 8)."""
        data = await self.cache.get((v.key, v.etag, idx), v.size, self._fetch(v, idx, DEMAND_PIECES))
        if self.disk is not None:
            self.disk.offer(v, idx, data)  # also when it came from memory
        return data

    def fetcher(self, content: "Content") -> FetchChunk:
        """Chunks of ``content``'s base, whichever it is when asked (a rename or a chmod of the
        file moves the base to a new key or ETag with the same bytes)."""

        async def fetch(idx: int) -> bytes:
            assert content.base is not None, "no base version to fetch from"
            return await self.chunk(content.base, idx)

        return fetch

    async def whole(self, v: Version) -> bytes:
        cs = self.cfg.chunk_size
        return b"".join([await self.chunk(v, i) for i in range(-(-v.size // cs))])

    def put_whole(self, v: Version, body: bytes) -> None:
        """Seed the cache with a version this mount just wrote (oras re-reads what it wrote)."""
        cs = self.cfg.chunk_size
        if v.size <= 4 * cs:
            for i in range(-(-v.size // cs)):
                self.cache.put((v.key, v.etag, i), body[i * cs : (i + 1) * cs])

    # --- reads ------------------------------------------------------------------------------
    async def read(self, st: ReadState, off: int, size: int, what: str) -> bytes:
        """Bytes of the pinned version; raises store.PreconditionFailed / store.NotFound if it
        is gone from S3 (the caller decides whether to switch versions or fail)."""
        v = st.pin
        if v is None:
            return b""
        if st.corrupt:
            raise errors.RemoteError(f"{what}: content does not match its digest")
        end = min(off + size, v.size)
        if off >= end:
            return b""
        if st.digest is not None:
            local = await self._read_disk(st, v, off, end)
            if local is not None:
                st.returned = True
                if st.verify is not None:
                    await self._verify_disk(st, off, local, what)
                return local
        cs = self.cfg.chunk_size
        for idx in st.readahead.on_read(off, size, v.size):
            if self.group is not None and not self.cache.is_present_or_pending((v.key, v.etag, idx)):
                self.group.start_soon(self._prefetch, v, idx)
        out = []
        for idx in range(off // cs, (end - 1) // cs + 1):
            if trace.on() and not self.cache.is_present((v.key, v.etag, idx)):
                t0 = trio.current_time()
                data = await self.chunk(v, idx)
                trace.event("reader_wait", chunk=idx, seconds=f"{trio.current_time() - t0:.4f}")
            else:
                data = await self.chunk(v, idx)
            base = idx * cs
            # A memoryview slice: pyfuse3 replies from the buffer, no copy of the bytes.
            out.append(memoryview(data)[max(off, base) - base : end - base])
        result = out[0] if len(out) == 1 else b"".join(out)
        st.returned = True
        if st.verify is not None:
            self._verify(st, off, result, what)
        return result

    async def _read_disk(self, st: ReadState, v: Version, off: int, end: int) -> bytes | None:
        """The bytes from the disk cache, or None: read S3 (and, from the blob's start, offer
        what goes by to the disk cache)."""
        assert self.disk is not None and st.digest is not None
        if not st.disk_checked:
            async with st.disk_lock:
                if not st.disk_checked:
                    st.disk = await self.disk.open(st.digest, v.size)
                    st.disk_checked = True
        if st.disk is None:
            if off == 0:
                self.disk.begin(st.digest, v, functools.partial(self.chunk, v))
            return None
        data = await self.disk.read(st.disk, off, end - off)
        if data is None:
            st.disk = None  # the disk failed: S3 from here on
        return data

    async def _verify_disk(self, st: ReadState, off: int, data: bytes, what: str) -> None:
        """--verify-reads on bytes from the disk cache: a mismatch also drops the cache file."""
        try:
            self._verify(st, off, data, what)
        except errors.RemoteError:
            if st.disk is not None and self.disk is not None:
                await self.disk.drop(st.disk, "its bytes do not match the digest (--verify-reads)")
            raise

    def prefetch_whole(self, v: Version) -> None:
        """Fetch a small version (one chunk) into the cache in the background: a file a
        client is about to read (a layout's index.json)."""
        if self.group is not None and not self.group.closed and 0 < v.size <= self.cfg.chunk_size:
            self.group.start_soon(self._prefetch, v, 0)

    async def _prefetch(self, v: Version, idx: int) -> None:
        with trio.move_on_after(self.cfg.op_timeout):
            await self.cache.prefetch((v.key, v.etag, idx), v.size, self._fetch(v, idx))

    def _verify(self, st: ReadState, off: int, data: bytes | memoryview, what: str) -> None:
        """--verify-reads: hash a blob read front to back; a mismatch at EOF is EIO."""
        assert st.verify is not None and st.pin is not None
        if off != st.verify_pos:
            st.verify = None  # not a front-to-back reader: nothing to check
            return
        st.verify.update(data)
        st.verify_pos += len(data)
        if st.verify_pos >= st.pin.size:
            want = what.rsplit("/", 1)[-1]
            got = st.verify.hexdigest()
            st.verify = None
            if got != want:
                st.corrupt = True  # the kernel retries failed read-ahead: keep failing
                log.error("blob %s read from S3 hashes to %s: corrupt object", st.pin.key, got)
                raise errors.RemoteError(f"{what}: content does not match its digest")
