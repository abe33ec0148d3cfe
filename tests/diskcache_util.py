"""What the --disk-cache tests read in a cache directory (unit and integration tests alike)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from ocifs import diskcache


def cached(d: Path) -> dict[str, int]:
    """Every file in the cache's blob directories: name (the hex digest) -> size."""
    root = d / diskcache.ROOT_NAME
    return {p.name: p.stat().st_size for alg in diskcache.ALGORITHMS if (root / alg).is_dir() for p in (root / alg).iterdir()}


def cache_path(d: Path, hexd: str, alg: str = "sha256") -> Path:
    return d / diskcache.ROOT_NAME / alg / hexd


def temp_files(d: Path) -> list[str]:
    return os.listdir(d / diskcache.ROOT_NAME / "tmp")


class UsageSampler(threading.Thread):
    """The bytes in a cache directory every few milliseconds, from another thread.

    Each sample holds the cache's own lock, as a scan of ocifs does: without it, a sample that
    read the blob directories before an eviction and the temp directory after the reservation
    that followed would add up two states that never existed at once. Renames (temp file to
    blob) take no lock; blob directories are read first, so a file renamed meanwhile is missed
    at most, never counted twice.
    """

    def __init__(self, d: Path, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.root = d / diskcache.ROOT_NAME
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()

    def usage(self) -> int:
        total = 0
        for sub in (*diskcache.ALGORITHMS, "tmp"):
            for e in os.scandir(self.root / sub):
                try:
                    total += e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
        return total

    def run(self) -> None:
        fd = os.open(self.root / "lock", os.O_RDWR)
        try:
            while not self.stop.is_set():
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    self.peak = max(self.peak, self.usage())
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self.samples += 1
                time.sleep(self.interval)
        finally:
            os.close(fd)

    def finish(self) -> int:
        """Stop sampling; the peak."""
        self.stop.set()
        self.join()
        return self.peak
