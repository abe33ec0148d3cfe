"""Read-ahead policy for one open file: which chunks to fetch before they are asked for.

Sequential readers (the common case: an open blob is almost always read whole) get a window
that starts at ``initial`` bytes and doubles on every sequential read up to ``maximum``; a read
that jumps elsewhere resets it to nothing, so random readers fetch only the chunks they touch.
"""

from __future__ import annotations

from ocifs.config import MiB

# A backward or forward jump this small still counts as sequential: the kernel may reorder
# or split concurrent read requests of one sequential reader.
SEEK_TOLERANCE = 2 * MiB


class ReadAhead:
    __slots__ = ("chunk_size", "initial", "maximum", "window", "next_offset", "sequential_bytes")

    def __init__(self, chunk_size: int, initial: int, maximum: int) -> None:
        self.chunk_size = chunk_size
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.window = 0
        self.next_offset: int | None = None
        self.sequential_bytes = 0

    def on_read(self, offset: int, size: int, object_size: int) -> range:
        """Record a read; return the chunk indexes to fetch ahead of it (may be empty)."""
        expected = self.next_offset
        sequential = (offset == 0 and expected is None) or (
            expected is not None and abs(offset - expected) <= SEEK_TOLERANCE
        )
        self.next_offset = offset + size
        if not sequential:
            self.window = 0
            self.sequential_bytes = 0
            return range(0)
        self.sequential_bytes += size
        self.window = self.initial if self.window == 0 else min(self.window * 2, self.maximum)
        end = min(offset + size + self.window, object_size)
        first = (offset + size) // self.chunk_size
        last = (end + self.chunk_size - 1) // self.chunk_size
        return range(first, last)
