"""The multipart upload of one file's content, streamed while the file is still being written.

While a writer moves forward, each completed part is uploaded in the background, in parallel:
by the time the file is closed most bytes are already in S3, and close only sends the tail and
completes the upload. At most ``max_inflight`` parts of one file are in flight; a writer that
gets further ahead waits (backpressure), which also bounds the work left for close.

Two things make any write pattern correct and any size stream:

* **Part layout** (:class:`PartLayout`): the part size doubles every 1,000 parts (S3 allows
  10,000 parts), so a file of any size streams (8 MiB parts carry 8 GB, then 16 MiB parts, ...
  up to S3's 5 TiB object limit). goofys grows its parts the same way (5 → 625 MiB).
* **An unchanged prefix is copied, not re-sent.** A session that appends to an existing object
  (zot's chunked uploads, ``truncate(path, N)``) has a base; the parts of ``[0, origin)`` that
  still equal the base become UploadPartCopy requests at commit (:func:`plan_prefix`), planned
  around whatever chunks were rewritten. They take the part numbers reserved below the
  streamed parts.

A part rewritten after it was sent is sent again at commit. Nothing is visible under the key
until CompleteMultipartUpload; a failed commit aborts the upload, and the next commit starts
again from the content (which is never lost by a failed upload).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import trio

from ocifs import errors, store, trace
from ocifs.content import Content, FetchChunk
from ocifs.store import ObjectStore

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3: every part but the last
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
TIER_PARTS = 1_000  # the part size doubles after this many parts
# Server-side copies of an unchanged prefix go in parts of this size: big enough that a 100 GiB
# base is 200 requests, small enough that they run in parallel and each finishes in seconds.
COPY_PART = 512 * MiB
# Part numbers reserved for the prefix beyond its copy parts: writes into the prefix split it.
PREFIX_SLACK = 64
# Rewritten pieces of a prefix are sent from memory in parts of at most this size.
ASSEMBLED_PART = 64 * MiB
# After a part failed in the background (retries spent), streaming rests this long; the part
# is sent again at commit, which is where a failure that persists is reported.
STREAM_PAUSE = 5.0


class PartLayout:
    """Where the streamed parts lie: part ``i`` (0-based) covers :meth:`range` (i) and is S3
    part number ``first + i``."""

    def __init__(self, origin: int, first: int, part_size: int) -> None:
        self.origin = origin
        self.first = first
        self.capacity = MAX_PARTS - first + 1
        self._sizes: list[int] = []
        self._starts: list[int] = []  # offset (relative to origin) where each tier starts
        pos = 0
        for t in range(-(-self.capacity // TIER_PARTS)):
            size = min(part_size << t, MAX_PART)
            self._sizes.append(size)
            self._starts.append(pos)
            pos += size * TIER_PARTS
        self.limit = origin + pos  # bytes the layout can hold

    def range(self, i: int) -> tuple[int, int]:
        t, k = divmod(i, TIER_PARTS)
        start = self.origin + self._starts[t] + k * self._sizes[t]
        return start, start + self._sizes[t]

    def index_at(self, offset: int) -> int:
        """The part holding byte ``offset`` (>= origin)."""
        rel = offset - self.origin
        t = len(self._starts) - 1
        while self._starts[t] > rel:
            t -= 1
        return t * TIER_PARTS + (rel - self._starts[t]) // self._sizes[t]

    def count(self, size: int) -> int:
        """How many parts cover [origin, size)."""
        return 0 if size <= self.origin else self.index_at(size - 1) + 1


class PlannedPart(NamedTuple):
    start: int
    end: int
    copy: bool  # UploadPartCopy from the base; otherwise sent from the content


def _split(start: int, end: int, most: int) -> list[tuple[int, int]]:
    """[start, end) in equal pieces of at most ``most`` bytes (each >= MIN_PART if the whole is)."""
    n = max(1, -(-(end - start) // most))
    step = -(-(end - start) // n)
    return [(s, min(s + step, end)) for s in range(start, end, step)]


def plan_prefix(origin: int, chunk: int, copyable: Callable[[int, int], bool], more_follows: bool) -> list[PlannedPart]:
    """Parts for [0, origin): copies of unchanged runs, the rest sent from the content.

    Every part is >= MIN_PART except the last one when nothing follows it.
    """
    runs: list[list[int | bool]] = []  # [start, end, copy]
    for c in range(-(-origin // chunk)):
        s, e = c * chunk, min((c + 1) * chunk, origin)
        cp = copyable(s, e)
        if runs and runs[-1][2] == cp:
            runs[-1][1] = e
        else:
            runs.append([s, e, cp])
    # A copy run too short to be a part is sent from the content instead.
    merged: list[list[int | bool]] = []
    for s, e, cp in runs:
        cp = bool(cp) and int(e) - int(s) >= MIN_PART
        if merged and merged[-1][2] == cp:
            merged[-1][1] = e
        else:
            merged.append([s, e, cp])
    parts: list[tuple[int, int, bool]] = []
    acc: int | None = None  # start of sent-from-content bytes not yet made a part
    for s0, e0, cp in merged:
        s, e = int(s0), int(e0)
        if not cp:
            acc = s if acc is None else acc
            continue
        if acc is not None:
            need = MIN_PART - (s - acc)
            if need > 0 and e - s - need < MIN_PART:
                continue  # absorb the whole (short) copy run; keep accumulating
            cut = s + max(need, 0)
            parts.append((acc, cut, False))
            acc, s = None, cut
        parts.append((s, e, True))
    if acc is not None:
        if origin - acc < MIN_PART and (more_follows or len(parts) > 0) and parts:
            ps, pe, _ = parts.pop()  # a copy run: give the tail some of its bytes
            cut = origin - MIN_PART
            if cut - ps >= MIN_PART:
                parts.append((ps, cut, True))
                acc = cut
            else:
                acc = ps
        parts.append((acc, origin, False))
    out: list[PlannedPart] = []
    for s, e, cp in parts:
        for a, b in _split(s, e, COPY_PART if cp else ASSEMBLED_PART):
            out.append(PlannedPart(a, b, cp))
    return out


class _Sent(NamedTuple):
    etag: str
    start: int
    end: int


class Upload:
    """The multipart upload of one content, from its first full part to CompleteMultipartUpload."""

    def __init__(
        self,
        s3: ObjectStore,
        content: Content,
        fetch: FetchChunk,
        part_size: int,
        max_inflight: int,
        spawn: Callable[..., None],
    ) -> None:
        self.s3 = s3
        self.content = content
        self.fetch = fetch  # base chunks, through the chunk cache
        self.part_size = part_size
        self._max_inflight = max_inflight
        self._spawn = spawn  # start_soon of the owning session's nursery
        self._inflight = trio.Semaphore(max_inflight)
        self._idle = trio.Event()
        self._idle.set()
        self._running = 0
        self._gen = 0
        self._paused_until = 0.0
        self._pump_lock = trio.Lock()  # two descriptors of one process may write at once
        self._mpu_lock = trio.Lock()  # one CreateMultipartUpload at a time
        self._target: tuple[str, dict[str, str]] = ("", {})  # where streamed parts go
        self.streaming_enabled = True
        self._reset()

    def _reset(self) -> None:
        """Forget the upload (after complete or abort) and lay out the next one."""
        c = self.content
        # Copy the unchanged prefix if it is big enough to be a part; else send it all.
        self.origin = c.base_extent if c.base is not None and c.base_extent >= MIN_PART else 0
        reserve = -(-self.origin // COPY_PART) + PREFIX_SLACK if self.origin else 0
        self.layout = PartLayout(self.origin, reserve + 1, self.part_size)
        self.upload_id: str | None = None
        self.key: str | None = None
        self.meta: dict[str, str] = {}
        self._sent: dict[int, _Sent] = {}  # part number -> what was sent
        self._dispatched: dict[int, tuple[int, int]] = {}  # number -> range, sent or in flight
        self._stale: set[int] = set()
        self._next = 0  # next streamed part index to dispatch
        # Bytes below the frontier are final unless rewritten: the base, then forward writes.
        self._frontier = c.base_extent
        self.error: BaseException | None = None
        self._gen += 1  # part tasks of an earlier upload must not touch this one

    @property
    def started(self) -> bool:
        return self.upload_id is not None

    # --- what the writer did ----------------------------------------------------------------
    def note_write(self, offset: int, end: int) -> None:
        # Every part dispatched and not yet stale ends at or below the frontier, so a write at
        # or past it touches none of them: forward writes skip the scan (it was O(parts) per
        # write, 1,280 parts deep at 10 GiB).
        if offset < self._frontier:
            for n, (s, e) in self._dispatched.items():
                if s < end and offset < e:
                    self._stale.add(n)
        if offset <= self._frontier < end:
            self._frontier = end

    def note_truncate(self, size: int) -> bool:
        """Record a truncate; True if the upload must start over (the prefix shrank)."""
        if size < self.origin:
            return True
        for n, (s, e) in self._dispatched.items():
            if e > size:
                self._stale.add(n)
        self._frontier = min(self._frontier, size)
        if size > self.origin:
            self._next = min(self._next, self.layout.index_at(size))
        else:
            self._next = 0
        return False

    def ready(self) -> bool:
        """A full part lies below the forward-writing frontier and can be sent now."""
        if not self.streaming_enabled or self._next >= self.layout.capacity:
            return False
        if trio.current_time() < self._paused_until:
            return False
        end = self.layout.range(self._next)[1]
        if self._next == 0 and self.origin == 0:
            # The first part waits for a byte past it: a file of one part is then one PUT at
            # close (one round trip), not Create + UploadPart + Complete (three in a row; an
            # 8 MiB `oras push` layer). A bigger file's first part leaves a write later.
            return end < self._frontier
        return end <= self._frontier

    # --- streaming --------------------------------------------------------------------------
    async def pump(self, key: str, meta: dict[str, str]) -> None:
        """Start every ready part (the writer waits here when too many are in flight)."""
        async with self._pump_lock:
            while self.ready():
                if trace.on() and self._inflight.value == 0:
                    t0 = trio.current_time()
                    await self._inflight.acquire()
                    trace.event("writer_wait", part=self.layout.first + self._next, seconds=f"{trio.current_time() - t0:.4f}")
                else:
                    await self._inflight.acquire()
                # The upload itself is created by the first part task: a write never waits
                # on S3 (only on backpressure); a failure there is the commit's to report.
                self._target = (key, dict(meta))
                i = self._next
                self._next += 1
                self._start(self.layout.first + i, *self.layout.range(i), acquired=True)

    async def _ensure(self, key: str, meta: dict[str, str]) -> None:
        async with self._mpu_lock:
            if self.upload_id is not None:
                return
            gen = self._gen
            trace.event("create_start", key=key)
            upload_id = await self.s3.create_multipart(key, meta)
            trace.event("create_done", key=key)
            if gen != self._gen:  # aborted while it was being created: nobody's upload
                with trio.CancelScope(shield=True), trio.move_on_after(30):
                    await self.s3.abort_multipart(key, upload_id)
                raise errors.OcifsError(f"{key}: the upload was restarted")
            self.upload_id, self.key, self.meta = upload_id, key, dict(meta)

    def _pause(self, why: str) -> None:
        log.warning("%s; streaming rests %.0f s, the commit sends what is missing", why, STREAM_PAUSE)
        self._paused_until = trio.current_time() + STREAM_PAUSE

    def _start(self, number: int, start: int, end: int, acquired: bool = False, copy: bool = False, commit: bool = False) -> None:
        self._dispatched[number] = (start, end)
        self._stale.discard(number)
        self._running += 1
        self._idle = trio.Event()
        self._spawn(self._part_task, number, start, end, acquired, copy, commit)

    async def _part_task(self, number: int, start: int, end: int, acquired: bool, copy: bool, commit: bool) -> None:
        gen = self._gen
        trace.event("part_queued", part=number, start=start, end=end, commit=int(commit))
        try:
            if not acquired:
                await self._inflight.acquire()
            try:
                trace.event("part_start", part=number)
                etag = await self._send(number, start, end, copy)
                trace.event("part_done", part=number)
            finally:
                self._inflight.release()
            if gen == self._gen:
                self._sent[number] = _Sent(etag, start, end)
        except Exception as exc:  # a part task must never take its session (or the mount) down
            if gen != self._gen or number in self._stale or end > self.content.size:
                return  # aborted, or rewritten meanwhile: it is sent again at commit anyway
            if not commit:
                self._dispatched.pop(number, None)  # not sent: the commit sends it
                self._pause(f"part {number} of {self.key} failed in the background: {exc}")
                return
            if self.error is None:
                self.error = exc
                level = logging.WARNING if isinstance(exc, (errors.OcifsError, store.StoreError)) else logging.ERROR
                log.log(level, "upload of part %d of %s failed: %s", number, self.key, exc)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _send(self, number: int, start: int, end: int, copy: bool) -> str:
        if self.upload_id is None:
            await self._ensure(*self._target)
        assert self.upload_id is not None and self.key is not None
        c = self.content
        if copy:
            assert c.base is not None
            return await self.s3.upload_part_copy(c.base.key, self.key, self.upload_id, number, start, end, c.base.etag)
        if c.needs_base(start, end):
            await c.materialize(start, end, self.fetch)
        # Read the body only once a request slot is free (bounded memory with many writers).
        return await self.s3.upload_part(self.key, self.upload_id, number, c.staged(start, end))

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --- commit -----------------------------------------------------------------------------
    async def finish(self, key: str, meta: dict[str, str], fix_meta: bool = True) -> str:
        """Publish the content at ``key``; returns the ETag. On failure nothing is published
        and the upload is aborted (the content is kept, so the commit can be retried)."""
        trace.event("commit_start", key=key, size=self.content.size, running=self._running, sent=len(self._sent))
        await self.wait_idle()
        trace.event("commit_idle", key=key)
        try:
            if self.error is not None:
                raise self.error
            size = self.content.size
            if size <= self.part_size and not self._streamed_whole(key, size):
                # One PUT (an upload begun before a truncate is dropped).
                if self.upload_id is not None:
                    await self._abort()
                return await self._put(key, meta, size)
            if self.upload_id is not None and self.key != key:
                await self._abort()  # renamed while streaming: start over at the new key
            upload_meta = dict(self.meta) if self.upload_id is not None else dict(meta)
            etag = await self._complete(key, meta, size)
            if fix_meta and upload_meta != meta:
                # Metadata changed after the upload began (chmod of an open file): S3 takes
                # metadata only at CreateMultipartUpload; fix it with a server-side self-copy.
                etag = await self.s3.copy(key, key, meta)
            return etag
        except BaseException:
            await self._abort()
            self._reset()
            raise

    def _streamed_whole(self, key: str, size: int) -> bool:
        """Whether the upload already holds all of a one-part content as its first part (a
        file written past one part and then cut back to it). Completing it costs one request;
        aborting it and PUTting the same bytes again cost a second upload of the whole file."""
        sent = self._sent.get(self.layout.first)
        return (self.upload_id is not None and self.key == key and self.origin == 0 and sent is not None
                and (sent.start, sent.end) == (0, size) and self.layout.first not in self._stale)

    def rebased(self) -> None:
        """The content was published and rebased on it: lay out the next upload."""
        self._reset()

    async def _put(self, key: str, meta: dict[str, str], size: int) -> str:
        c = self.content
        if c.needs_base(0, size):
            await c.materialize(0, size, self.fetch)
        return await self.s3.put(key, c.pread_local(0, size) if size else b"", meta)

    async def _complete(self, key: str, meta: dict[str, str], size: int) -> str:
        c = self.content
        prefix: list[PlannedPart] = []
        if self.origin:
            prefix = plan_prefix(min(self.origin, size), c.chunk_size, c.copyable, size > self.origin)
            if len(prefix) >= self.layout.first:
                log.info("%s: rewritten too much of its prefix; uploading it whole", key)
                await self._abort()
                self.origin, self.layout = 0, PartLayout(0, 1, self.part_size)
                self._frontier = 0
                prefix = []
        count = self.layout.count(size)
        if count > self.layout.capacity:
            raise errors.OcifsError(f"{key}: {size} bytes do not fit in {MAX_PARTS} parts")
        await self._ensure(key, meta)
        todo: list[tuple[int, int, int, bool]] = [(n, p.start, p.end, p.copy) for n, p in enumerate(prefix, 1)]
        for i in range(count):
            n = self.layout.first + i
            s, e = self.layout.range(i)
            e = min(e, size)
            sent = self._sent.get(n)
            if sent is None or n in self._stale or (sent.start, sent.end) != (s, e):
                todo.append((n, s, e, False))
        for n, s, e, cp in todo:
            self._start(n, s, e, copy=cp, commit=True)
        await self.wait_idle()
        if self.error is not None:
            raise self.error
        numbers = list(range(1, len(prefix) + 1)) + [self.layout.first + i for i in range(count)]
        assert self.upload_id is not None
        trace.event("complete_start", key=key, parts=len(numbers), sent_at_commit=len(todo))
        etag = await self.s3.complete_multipart(key, self.upload_id, [(n, self._sent[n].etag) for n in numbers])
        trace.event("complete_done", key=key)
        self.upload_id = None  # completed: nothing left to abort
        return etag

    async def abort(self) -> None:
        """Drop the upload (its parts are deleted by S3); the content stays."""
        await self.wait_idle()
        await self._abort()
        self._reset()

    async def _abort(self) -> None:
        upload_id, key = self.upload_id, self.key
        self.upload_id = None
        self._gen += 1
        self._sent.clear()
        self._dispatched.clear()
        self._stale.clear()
        self._next = 0
        self.error = None
        if upload_id is not None and key is not None:
            # Shielded and bounded: an abort runs on failure paths and at close.
            with trio.CancelScope(shield=True), trio.move_on_after(30):
                try:
                    await self.s3.abort_multipart(key, upload_id)
                except store.StoreError as exc:
                    log.warning("could not abort multipart upload of %s: %s (left for fsck --repair)", key, exc)
