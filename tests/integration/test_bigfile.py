"""Large files through a real ocifs mount: a 1 GiB round trip and parallel readers."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import threading

import pytest

MiB = 1024 * 1024
GiB = 1024 * MiB

_BASE = random.Random(2024).randbytes(16 * MiB)


def chunk(i: int) -> bytes:
    """The i-th MiB of a deterministic stream: every MiB differs (counter prefix)."""
    off = (i % 16) * MiB
    return struct.pack(">Q", i) + _BASE[off + 8 : off + MiB]


def stream_sha256(n_mib: int) -> str:
    h = hashlib.sha256()
    for i in range(n_mib):
        h.update(chunk(i))
    return h.hexdigest()


def file_sha256(path) -> tuple[str, int]:
    h = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_1gib_file_round_trips_with_matching_sha256(mount):
    p = mount.path / "big" / "1gib.bin"
    os.mkdir(p.parent)
    h = hashlib.sha256()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(GiB // MiB):
            data = chunk(i)
            h.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    expected = h.hexdigest()
    assert os.stat(p).st_size == GiB

    assert file_sha256(p) == (expected, GiB), "read through the mount after close"

    mount.remount()
    assert os.stat(p).st_size == GiB
    assert file_sha256(p) == (expected, GiB), "read through the mount after remount"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_8_parallel_readers_of_256mib_file_get_identical_sha256(bucket, mount_factory):
    n_mib = 256
    bucket.put("shared/256mib.bin", b"".join(chunk(i) for i in range(n_mib)))
    expected = stream_sha256(n_mib)
    mount = mount_factory(bucket)
    p = mount.path / "shared" / "256mib.bin"
    assert os.stat(p).st_size == n_mib * MiB

    results: list = [None] * 8
    start = threading.Barrier(8, timeout=60)

    def reader(k: int) -> None:
        try:
            start.wait()
            results[k] = file_sha256(p)
        except BaseException as e:  # reported below, with the reader's index
            results[k] = e

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a reader thread hung"
    for k, r in enumerate(results):
        assert r == (expected, n_mib * MiB), f"reader {k}: {r!r}"
