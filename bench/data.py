"""Deterministic, verifiable test data without holding it in memory.

Block ``i`` (1 MiB) of a stream is ``i`` as 8 little-endian bytes, then the seed's 1 MiB of
random bytes after its first 8. A reader checks every byte with two ``startswith`` calls per
block (memcmp, no copies), so verification costs almost no CPU next to the transfer itself.
"""

from __future__ import annotations

import hashlib
import os
import random

BLOCK = 1024 * 1024


class Pattern:
    def __init__(self, seed: int = 1) -> None:
        rnd = random.Random(seed)
        self.base = bytearray(rnd.randbytes(BLOCK))
        self.tail = bytes(self.base[8:])
        self._buf = bytearray(self.base)

    def block(self, i: int) -> bytearray:
        """Block ``i``; the returned buffer is reused by the next call."""
        self._buf[0:8] = i.to_bytes(8, "little")
        return self._buf

    def span(self, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of the stream (start is block-aligned)."""
        assert start % BLOCK == 0
        parts = []
        i = start // BLOCK
        left = length
        while left > 0:
            b = i.to_bytes(8, "little") + self.tail
            parts.append(b if left >= BLOCK else b[:left])
            left -= BLOCK
            i += 1
        return b"".join(parts)

    def check(self, buf, offset: int, length: int | None = None) -> bool:
        """True if ``buf`` (bytes/bytearray) equals the stream at ``offset`` (block-aligned)."""
        n = len(buf) if length is None else length
        if offset % BLOCK:
            raise ValueError("offset must be block-aligned")
        pos = 0
        i = offset // BLOCK
        while pos < n:
            take = min(BLOCK, n - pos)
            hdr = i.to_bytes(8, "little")
            if take <= 8:
                if bytes(buf[pos : pos + take]) != hdr[:take]:
                    return False
            else:
                if not buf.startswith(hdr, pos):
                    return False
                if take == BLOCK:
                    if not buf.startswith(self.tail, pos + 8):
                        return False
                elif bytes(buf[pos + 8 : pos + take]) != self.tail[: take - 8]:
                    return False
            pos += take
            i += 1
        return True

    def write_file(self, path: str, size: int) -> str:
        """Write ``size`` bytes of the stream to ``path``; return its sha256 hex digest."""
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            i, left = 0, size
            while left > 0:
                b = self.block(i)
                chunk = b if left >= BLOCK else memoryview(b)[:left]
                h.update(chunk)
                os.write(fd, chunk)
                left -= len(chunk)
                i += 1
        finally:
            os.close(fd)
        return h.hexdigest()


def sha256_file(path: str, bufsize: int = 4 * BLOCK) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            k = os.readv(fd, [buf])
            if k == 0:
                break
            h.update(mv[:k])
            n += k
    finally:
        os.close(fd)
    return h.hexdigest(), n
