"""32 concurrent readers and writers on one mount for a bounded time.

No deadlock (every thread finishes its last operation), every byte read is verified against
what was written, and the daemon's open descriptors and RSS stay within bounds
(RSS <= --cache-size + 200 MiB). ``OCIFS_LOAD_SECONDS`` sets the duration (default 60).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from testkit.fsops import MiB, content, first_difference, read_file, write_file
from testkit.procs import fd_count, rss_mib

SECONDS = float(os.environ.get("OCIFS_LOAD_SECONDS", "60"))
CACHE_MIB = 128
OP_TIMEOUT = 60
READERS = WRITERS = 16
pytestmark = pytest.mark.timeout(int(SECONDS) + 300)

SEED_SIZES = [1 * MiB, 3 * MiB + 5, 9 * MiB + 1, 17 * MiB + 3, 24 * MiB]
WRITE_SIZES = [4096, 300 * 1024 + 7, 2 * MiB, 9 * MiB + 13, 17 * MiB]


def test_32_concurrent_readers_and_writers_no_deadlock_bytes_verified_fds_and_rss_bounded(bucket, fault_mount_factory):
    objs = {}
    for i in range(16):
        rel = f"ro/obj-{i}.bin"
        objs[rel] = content(rel, SEED_SIZES[i % len(SEED_SIZES)])
        bucket.put(rel, objs[rel])
    m = fault_mount_factory(bucket, extra_args=["--cache-size", str(CACHE_MIB), "--op-timeout", str(OP_TIMEOUT),
                                                "--log-level", "info"])
    (m.path / "w").mkdir()
    pid = m.pid
    # warm up the S3 connection pool a little, then take the idle baseline
    read_file(m.path / "ro/obj-0.bin")
    time.sleep(1)
    base_fds, base_rss = fd_count(pid), rss_mib(pid)

    stop = threading.Event()
    lock = threading.Lock()
    stats = {"reads": 0, "writes": 0, "bytes_verified": 0, "max_op": 0.0}
    problems: list[str] = []
    published: dict[str, bytes] = {}
    samples: list[tuple[float, int, float]] = []

    def note(op_start: float) -> None:
        d = time.monotonic() - op_start
        with lock:
            stats["max_op"] = max(stats["max_op"], d)

    def reader(r: int) -> None:
        rng = random.Random(r)
        names = list(objs)
        while not stop.is_set():
            rel = rng.choice(names)
            want = objs[rel]
            t0 = time.monotonic()
            try:
                if rng.random() < 0.3:
                    got, off = read_file(m.path / rel), 0
                    expect = want
                else:
                    off = rng.randrange(len(want))
                    n = rng.choice([4096, 128 * 1024, 1 * MiB, 5 * MiB])
                    with open(m.path / rel, "rb", buffering=0) as f:
                        f.seek(off)
                        got = f.read(n)
                    expect = want[off : off + n]
            except OSError as e:
                with lock:
                    problems.append(f"reader {r}: {rel}: {e!r}")
                return
            note(t0)
            if got != expect:
                with lock:
                    problems.append(f"reader {r}: WRONG BYTES in {rel} at offset {off}+"
                                    f"{first_difference(got, expect)} ({len(got)} of {len(expect)} bytes)")
                return
            with lock:
                stats["reads"] += 1
                stats["bytes_verified"] += len(got)

    def writer(w: int) -> None:
        rng = random.Random(1000 + w)
        mine: list[str] = []
        i = 0
        while not stop.is_set():
            rel = f"w/{w}-{i}.bin"
            data = content(rel, rng.choice(WRITE_SIZES))
            t0 = time.monotonic()
            try:
                write_file(m.path / rel, data, fsync=rng.random() < 0.5)
                got = read_file(m.path / rel)
                if len(mine) > 3:  # keep the bucket small: unlink an old one of ours
                    old = mine.pop(0)
                    os.unlink(m.path / old)
                    with lock:
                        published.pop(old, None)
            except OSError as e:
                with lock:
                    problems.append(f"writer {w}: {rel}: {e!r}")
                return
            note(t0)
            if got != data:
                with lock:
                    problems.append(f"writer {w}: WRONG BYTES reading back {rel}: first difference at "
                                    f"{first_difference(got, data)} ({len(got)} of {len(data)} bytes)")
                return
            mine.append(rel)
            with lock:
                published[rel] = data
                stats["writes"] += 1
                stats["bytes_verified"] += len(got)
            i += 1

    def sampler() -> None:
        while not stop.is_set():
            try:
                samples.append((time.monotonic(), fd_count(pid), rss_mib(pid)))
            except OSError:
                pass
            time.sleep(0.5)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    threads += [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    mon = threading.Thread(target=sampler, daemon=True)
    start = time.monotonic()
    mon.start()
    for t in threads:
        t.start()
    stop.wait(SECONDS)
    stop.set()
    # a thread is in at most one operation: open+write(17 MiB)+fsync+close+read back
    deadline = time.monotonic() + 4 * OP_TIMEOUT
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    mon.join(5)
    elapsed = time.monotonic() - start
    time.sleep(2)  # let released sessions and idle connections settle
    end_fds, end_rss = fd_count(pid), rss_mib(pid)
    peak_fds = max(s[1] for s in samples)
    peak_rss = max(s[2] for s in samples)
    summary = (f"{elapsed:.0f}s: {stats['reads']} reads, {stats['writes']} writes, "
               f"{stats['bytes_verified'] / MiB:.0f} MiB verified, slowest op {stats['max_op']:.1f}s; "
               f"fds {base_fds} -> peak {peak_fds} -> {end_fds}; RSS {base_rss:.0f} -> peak {peak_rss:.0f} "
               f"-> {end_rss:.0f} MiB")
    print(summary)

    assert not stuck, f"DEADLOCK/HANG: {len(stuck)} threads still inside an operation {4 * OP_TIMEOUT}s after stop: {stuck}\n{summary}\n{m.log_tail(40)}"
    assert not problems, "\n".join(problems[:20]) + f"\n{summary}\n{m.log_tail(40)}"
    assert stats["reads"] > 0 and stats["writes"] > 0, summary
    # every file still published is in the bucket with its bytes
    for rel, data in published.items():
        assert bucket.get(rel) == data, f"{rel} in the bucket differs from what was written"
    # descriptors: staging files and S3 sockets in use come and go; nothing may pile up
    pool = 2 * 16  # max_pool_connections of the default --concurrency 16
    assert peak_fds <= base_fds + WRITERS + READERS + pool + 32, f"daemon fds peaked at {peak_fds}: {summary}"
    assert end_fds <= base_fds + pool + 8, f"daemon fds did not come back down: {summary}"
    assert peak_rss <= CACHE_MIB + 200, f"daemon RSS peaked at {peak_rss:.0f} MiB > --cache-size {CACHE_MIB} + 200: {summary}"
