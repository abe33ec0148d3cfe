"""Filesystem calls that cannot hang the caller, and bytes that check themselves.

A call into a mount that does not return is what the reliability tests and the soak look for,
so each call runs in a daemon thread joined with a deadline (:func:`bounded`): a hang becomes
an :class:`Outcome`, not a stuck suite. Objects are filled by :func:`content`, so any of them
can be verified from its name alone.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024


def content(name: str, size: int) -> bytes:
    """Deterministic bytes for a file name: any object can be verified from its name alone."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def first_difference(a: bytes, b: bytes) -> int | None:
    if a == b:
        return None
    n = min(len(a), len(b))
    for i in range(0, n, 65536):
        if a[i : i + 65536] != b[i : i + 65536]:
            for j in range(i, min(i + 65536, n)):
                if a[j] != b[j]:
                    return j
    return n


@dataclass
class Outcome:
    status: str  # "ok" | "error" | "hang"
    value: object = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def errno(self) -> int | None:
        return getattr(self.error, "errno", None)

    def __repr__(self) -> str:
        if self.status == "ok":
            return f"<ok after {self.elapsed:.1f}s>"
        if self.status == "error":
            return f"<error {self.error!r} after {self.elapsed:.1f}s>"
        return f"<HANG: still running after {self.elapsed:.1f}s>"


def bounded(fn: Callable[..., Any], timeout: float, *args: Any, **kwargs: Any) -> Outcome:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout`` seconds (a hang)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"bounded-{getattr(fn, '__name__', 'fn')}")
    start = time.monotonic()
    t.start()
    t.join(timeout)
    elapsed = time.monotonic() - start
    if t.is_alive():
        return Outcome("hang", elapsed=elapsed)
    if "error" in box:
        return Outcome("error", error=box["error"], elapsed=elapsed)
    return Outcome("ok", value=box.get("value"), elapsed=elapsed)


def write_file(path, data: bytes, fsync: bool = True, chunk: int = 1 * MiB, acked: list | None = None) -> None:
    """open/write/fsync/close; raises the first OSError (the fd is always closed).

    Short writes are continued. ``acked`` (a one-element list) receives the number of bytes
    write() reported written, even when a later call fails.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    try:
        view = memoryview(data)
        while done < len(data):
            n = os.write(fd, view[done : done + chunk])
            if n <= 0:
                raise OSError(5, f"write returned {n}")
            done += n
            if acked is not None:
                acked[:] = [done]
        if fsync:
            os.fsync(fd)
    finally:
        if acked is not None:
            acked[:] = [done]
        os.close(fd)


def read_file(path, chunk: int = 1 * MiB) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(chunk)
            if not b:
                return b"".join(parts)
            parts.append(b)


def pread(path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
