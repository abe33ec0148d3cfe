"""What S3 computes, written here independently of the fake (a test must not ask the fake
what the right answer is)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # EntityTooSmall bound for all parts but the last


def md5_etag(data: bytes) -> str:
    """The ETag of a PutObject / CopyObject / UploadPart body."""
    return f'"{hashlib.md5(data).hexdigest()}"'


def multipart_etag(*parts: bytes) -> str:
    """The ETag of a completed multipart upload of ``parts``."""
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ at every offset modulo 251 and between seeds."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


@dataclasses.dataclass
class Window:
    """Wall-clock bounds of a block, to check the LastModified times S3 reports."""

    start: float
    end: float = math.inf

    def holds(self, t: float) -> bool:
        # HEAD gives whole seconds, listings milliseconds, both truncated: allow a second.
        return math.floor(self.start) - 1 <= t <= self.end + 1


@contextmanager
def window() -> Iterator[Window]:
    w = Window(time.time())
    yield w
    w.end = time.time()
