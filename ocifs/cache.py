"""Chunks of committed objects in memory, shared by every open file of the mount.

A chunk is ``chunk_size`` bytes of one object version, keyed by (key, etag, index): a new
version of an object never hits an old chunk. The cache is bounded in bytes (cachetools LRU
with ``getsizeof=len``). Concurrent requests for the same missing chunk share one GET.

A GET that is *abandoned* (its task was cancelled: the read that started it timed out, or the
read-ahead was dropped) is not an answer: its waiters start their own GET. Re-raising the
filler's ``trio.Cancelled`` in a waiter's task would cancel nothing there and unwind that task
to its nursery — that is how one timed-out read used to end the FUSE loop.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable

import cachetools
import trio

from ocifs import trace

log = logging.getLogger(__name__)

ChunkKey = tuple[str, str, int]  # (object key, etag, chunk index)
Fetch = Callable[[int, int], Awaitable[bytes]]  # (start, end) -> bytes


class _Pending:
    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: Exception | None = None  # None with no data: abandoned, try again


class ChunkCache:
    def __init__(self, max_bytes: int, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.max_bytes = max(max_bytes, chunk_size)
        # Bytes of GETs in flight: they count against the budget too, so cached plus
        # arriving chunks never exceed max_bytes (the daemon's memory stays bounded).
        self.pending_bytes = 0
        self._lru: cachetools.LRUCache[ChunkKey, bytes] = cachetools.LRUCache(
            maxsize=max(max_bytes, chunk_size), getsizeof=len
        )
        self._pending: dict[ChunkKey, _Pending] = {}
        self.hits = 0
        self.misses = 0

    @property
    def current_bytes(self) -> int:
        return int(self._lru.currsize)

    def put(self, ck: ChunkKey, data: bytes) -> None:
        if len(data) <= self._lru.maxsize:
            self._make_room(len(data))
            self._lru[ck] = data

    def _make_room(self, nbytes: int) -> None:
        while self._lru and self._lru.currsize + self.pending_bytes + nbytes > self.max_bytes:
            self._lru.popitem()

    def is_present(self, ck: ChunkKey) -> bool:
        return ck in self._lru

    def is_present_or_pending(self, ck: ChunkKey) -> bool:
        return ck in self._lru or ck in self._pending

    async def get(self, ck: ChunkKey, object_size: int, fetch: Fetch) -> bytes:
        """The chunk's bytes, from memory or by one ranged GET shared with other waiters."""
        while True:
            data = self._lru.get(ck)
            if data is not None:
                self.hits += 1
                return data
            pending = self._pending.get(ck)
            if pending is None:
                self.misses += 1
                return await self._fill(ck, object_size, fetch)
            await pending.done.wait()
            if pending.data is not None:
                self.hits += 1
                return pending.data
            if pending.error is not None:
                # The same answer for every waiter, as a fresh exception of this task's own.
                raise copy.copy(pending.error) from pending.error

    async def _fill(self, ck: ChunkKey, object_size: int, fetch: Fetch) -> bytes:
        pending = _Pending()
        self._pending[ck] = pending
        start = ck[2] * self.chunk_size
        end = min(start + self.chunk_size, object_size)
        self._make_room(end - start)
        self.pending_bytes += end - start
        try:
            trace.event("get_start", chunk=ck[2])
            data = await fetch(start, end)
            trace.event("get_done", chunk=ck[2])
            pending.data = data
        except Exception as exc:
            pending.error = exc
            raise
        finally:
            self.pending_bytes -= end - start
            del self._pending[ck]
            pending.done.set()
        self.put(ck, data)
        return data

    def has_room_for_prefetch(self) -> bool:
        """Read-ahead may use at most half the budget in flight, so it never evicts the
        chunks it fetched before they are read."""
        return self.pending_bytes + self.chunk_size <= self.max_bytes // 2

    async def prefetch(self, ck: ChunkKey, object_size: int, fetch: Fetch) -> None:
        """Fill a chunk in the background; errors are left for the real read to meet."""
        if self.is_present_or_pending(ck) or not self.has_room_for_prefetch():
            return
        try:
            await self._fill(ck, object_size, fetch)
        except Exception as exc:
            log.debug("read-ahead of %s chunk %d failed: %s", ck[0], ck[2], exc)

    def invalidate_key(self, key: str) -> None:
        for ck in [k for k in self._lru.keys() if k[0] == key]:
            self._lru.pop(ck, None)
