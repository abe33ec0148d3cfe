"""Network and server faults between ocifs and S3 (toxiproxy, a killed MinIO).

The contract under test (README: op-timeout, close/fsync are durability points):
* a read returns the object's exact bytes or fails (EIO); never other bytes;
* no FUSE operation blocks much longer than --op-timeout;
* close/fsync returning 0 means the whole object is in S3; an error means nothing new is
  published under the key and no multipart upload is left behind;
* once the fault is gone the mount works again, without a remount.

Every filesystem call runs in a thread joined with a timeout (``bounded``): a hang fails the
test with a message instead of blocking the suite.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

from testkit import incomplete_uploads
from testkit.fsops import MiB, bounded, content, first_difference, read_file, write_file

from .conftest import MARGIN, OP_TIMEOUT

pytestmark = pytest.mark.timeout(240)

HANG = OP_TIMEOUT + MARGIN  # one FUSE op may take op-timeout; more than this is a hang
# open + writes + fsync + close are separate FUSE ops, each with its own deadline
HANG_WRITE = 3 * OP_TIMEOUT + MARGIN


def must_not_hang(outcome, what: str, mount=None):
    if outcome.status == "hang":
        tail = mount.log_tail(40) if mount is not None else ""
        pytest.fail(f"{what} did not return within {outcome.elapsed:.0f}s "
                    f"(op-timeout {OP_TIMEOUT:.0f}s): a hang\n{tail}", pytrace=False)
    return outcome


def assert_right_bytes_or_eio(outcome, want: bytes, what: str, mount=None):
    must_not_hang(outcome, what, mount)
    if outcome.status == "ok":
        got = outcome.value
        if got != want:
            pytest.fail(f"{what}: WRONG BYTES: got {len(got)} bytes, expected {len(want)}, first "
                        f"difference at offset {first_difference(got, want)}", pytrace=False)
        return True
    assert isinstance(outcome.error, OSError) and outcome.errno == errno.EIO, (
        f"{what}: failed with {outcome.error!r}, expected EIO")
    return False


def assert_whole_or_absent(bucket, rel: str, want: bytes, what: str):
    """The key holds exactly ``want`` or does not exist (nothing half-published)."""
    if bucket.head(rel) is None:
        return False
    got = bucket.get(rel)
    if got != want:
        pytest.fail(f"{what}: HALF-PUBLISHED object {rel!r}: {len(got)} bytes in the bucket, "
                    f"expected {len(want)} (first difference at {first_difference(got, want)})",
                    pytrace=False)
    return True


def seed(bucket, rel: str, size: int) -> bytes:
    data = content(rel, size)
    bucket.put(rel, data)
    return data


def check_mount_works(mount, bucket, tag: str):
    """A fresh object reads back right and a fresh write is published (no remount)."""
    data = seed(bucket, f"after-{tag}.bin", 3 * MiB + 17)
    o = must_not_hang(bounded(read_file, HANG, mount.path / f"after-{tag}.bin"), "read after fault", mount)
    assert o.status == "ok", f"the mount does not read after the fault was removed: {o!r}\n{mount.log_tail(40)}"
    assert o.value == data, "read after the fault returned wrong bytes"
    w = content(f"written-after-{tag}", 2 * MiB + 5)
    o = must_not_hang(bounded(write_file, HANG_WRITE, mount.path / f"written-after-{tag}.bin", w), "write after fault", mount)
    assert o.status == "ok", f"the mount does not write after the fault was removed: {o!r}\n{mount.log_tail(40)}"
    assert bucket.get(f"written-after-{tag}.bin") == w


# --------------------------------------------------------------------------- latency


def test_latency_spike_reads_right_bytes_and_writes_complete(bucket, proxy, fault_mount):
    m = fault_mount
    a = seed(bucket, "lat-a.bin", 20 * MiB + 3)
    small = seed(bucket, "lat-small.txt", 1000)
    t1 = proxy.add("latency", "downstream", latency=300, jitter=50)
    t2 = proxy.add("latency", "upstream", latency=300, jitter=50)

    o = must_not_hang(bounded(read_file, HANG, m.path / "lat-a.bin"), "read under 300 ms latency", m)
    assert o.status == "ok", f"read under 300 ms latency failed: {o!r}"
    assert o.value == a, f"wrong bytes under latency (first difference at {first_difference(o.value, a)})"
    o = must_not_hang(bounded(read_file, HANG, m.path / "lat-small.txt"), "small read under latency", m)
    assert o.status == "ok" and o.value == small

    w = content("lat-w", 12 * MiB + 1)  # two parts: a multipart upload under latency
    o = must_not_hang(bounded(write_file, HANG_WRITE, m.path / "lat-w.bin", w), "write under latency", m)
    assert o.status == "ok", f"write+fsync+close under 300 ms latency failed: {o!r}"
    assert bucket.get("lat-w.bin") == w

    proxy.remove(t1)
    proxy.remove(t2)
    check_mount_works(m, bucket, "latency")


# --------------------------------------------------------------------------- bandwidth


def test_bandwidth_collapse_slows_but_returns_right_bytes_or_eio_never_hangs(bucket, proxy, fault_mount):
    m = fault_mount
    big = seed(bucket, "bw-big.bin", 3 * MiB)  # 60 s at 50 KB/s: longer than op-timeout
    small = seed(bucket, "bw-small.bin", 100 * 1024)  # 2 s at 50 KB/s
    tox = [proxy.add("bandwidth", "downstream", rate=50), proxy.add("bandwidth", "upstream", rate=50)]
    start = time.monotonic()

    o = bounded(read_file, HANG, m.path / "bw-small.bin")
    small_ok = assert_right_bytes_or_eio(o, small, "small read at 50 KB/s", m)
    o = bounded(read_file, HANG, m.path / "bw-big.bin")
    assert_right_bytes_or_eio(o, big, "3 MiB read at 50 KB/s", m)
    w = content("bw-w", 1 * MiB)
    ow = must_not_hang(bounded(write_file, HANG_WRITE, m.path / "bw-w.bin", w), "1 MiB write at 50 KB/s", m)
    if ow.status == "error":
        assert ow.errno == errno.EIO, f"write at 50 KB/s failed with {ow.error!r}, expected EIO"
    print(f"at 50 KB/s: small read ok={small_ok}, big read {o!r}, write {ow!r} "
          f"({time.monotonic() - start:.0f}s)")

    for t in tox:
        proxy.remove(t)
    published = assert_whole_or_absent(bucket, "bw-w.bin", w, "1 MiB write at 50 KB/s")
    if ow.status == "ok":
        assert published, "write+fsync+close returned 0 at 50 KB/s but the object is not in the bucket"
    o = must_not_hang(bounded(read_file, HANG, m.path / "bw-big.bin"), "read after bandwidth restored", m)
    assert o.status == "ok" and o.value == big, f"after the bandwidth came back: {o!r}"
    check_mount_works(m, bucket, "bandwidth")


# --------------------------------------------------------------------------- resets


def test_connection_reset_mid_body_gives_right_bytes_or_eio_never_wrong_bytes(bucket, proxy, fault_mount):
    m = fault_mount
    objs = {f"rst-{i}.bin": seed(bucket, f"rst-{i}.bin", 24 * MiB + i) for i in range(4)}
    names = iter(objs)
    results = []

    # every connection dies after 1 MiB of response: every 8 MiB chunk GET is cut mid-body
    t = proxy.add("limit_data", "downstream", bytes=1 * MiB)
    n = next(names)
    results.append(("limit_data 1 MiB", assert_right_bytes_or_eio(
        bounded(read_file, HANG, m.path / n), objs[n], "read, every connection cut after 1 MiB", m)))
    proxy.remove(t)

    # half of the connections are cut mid-body: retries (if any) may succeed
    t = proxy.add("limit_data", "downstream", toxicity=0.5, bytes=3 * MiB)
    n = next(names)
    results.append(("limit_data 50%", assert_right_bytes_or_eio(
        bounded(read_file, HANG, m.path / n), objs[n], "read, half the connections cut after 3 MiB", m)))
    proxy.remove(t)

    # TCP RST 300 ms into every connection
    t = proxy.add("reset_peer", "downstream", timeout=300)
    n = next(names)
    results.append(("reset_peer 300ms", assert_right_bytes_or_eio(
        bounded(read_file, HANG, m.path / n), objs[n], "read, RST after 300 ms", m)))
    proxy.remove(t)

    # a write whose requests are cut mid-body (upstream): published whole, or error and nothing
    w = content("rst-w", 20 * MiB + 7)
    t = proxy.add("limit_data", "upstream", toxicity=0.5, bytes=2 * MiB)
    ow = must_not_hang(bounded(write_file, HANG_WRITE, m.path / "rst-w.bin", w), "write with cut uploads", m)
    proxy.remove(t)
    published = assert_whole_or_absent(bucket, "rst-w.bin", w, "write with cut uploads")
    if ow.status == "ok":
        assert published, "write+fsync+close returned 0 but the object is not in the bucket"
    else:
        assert ow.errno == errno.EIO, f"write with cut uploads failed with {ow.error!r}, expected EIO"
    results.append(("upload cut 50%", ow.status == "ok"))
    print("reset results (True = right bytes, False = EIO):", results)

    # afterwards: every object reads back whole
    for n in objs:
        o = must_not_hang(bounded(read_file, HANG, m.path / n), f"read {n} after resets", m)
        assert o.status == "ok" and o.value == objs[n], f"{n} after the resets stopped: {o!r}"
    deadline = time.monotonic() + 30
    while incomplete_uploads(bucket.s3.client, bucket.name) and time.monotonic() < deadline:
        time.sleep(1)
    assert incomplete_uploads(bucket.s3.client, bucket.name) == [], "incomplete multipart uploads left"
    check_mount_works(m, bucket, "reset")


# --------------------------------------------------------------------------- a silent server


def test_unresponsive_server_gives_eio_within_op_timeout_and_mount_recovers(bucket, proxy, fault_mount):
    m = fault_mount
    data = seed(bucket, "silent.bin", 5 * MiB)
    t = proxy.add("timeout", "downstream", timeout=0)  # requests arrive, answers never come

    o = bounded(read_file, HANG, m.path / "silent.bin")
    must_not_hang(o, "read from a silent server", m)
    assert o.status == "error" and o.errno == errno.EIO, f"read from a silent server: {o!r}, expected EIO"
    assert o.elapsed <= OP_TIMEOUT + MARGIN

    o = bounded(write_file, HANG_WRITE, m.path / "silent-w.bin", content("silent-w", 64 * 1024))
    must_not_hang(o, "write+fsync to a silent server", m)
    assert o.status == "error" and o.errno == errno.EIO, f"write+fsync to a silent server: {o!r}, expected EIO"

    proxy.remove(t)
    assert bucket.head("silent-w.bin") is None, "a write that failed with EIO was published"
    o = must_not_hang(bounded(read_file, HANG, m.path / "silent.bin"), "read after the server answers again", m)
    assert o.status == "ok" and o.value == data, f"read after the server answers again: {o!r}"
    check_mount_works(m, bucket, "timeout")


# --------------------------------------------------------------------------- MinIO killed


@pytest.mark.parametrize("down", [3, 30], ids=["down3s", "down30s"])
def test_minio_killed_during_64mib_upload_leaves_whole_object_or_nothing(
    private_minio, private_bucket, fault_mount_factory, tmp_path, down
):
    """down3s: retries can bridge the gap; down30s: longer than op-timeout and the retries."""
    b = private_bucket
    m = fault_mount_factory(b)  # straight to the private MinIO: the kill is the fault
    src = tmp_path / "big.src"
    data = content("killed-upload", 64 * MiB)
    src.write_bytes(data)
    dst = m.path / "big.bin"
    cp = subprocess.Popen(["cp", str(src), str(dst)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # kill MinIO once the upload has started (a part in flight or done)
        deadline = time.monotonic() + 30
        started = False
        while time.monotonic() < deadline and cp.poll() is None:
            if incomplete_uploads(b.s3.client, b.name):
                started = True
                break
            time.sleep(0.05)
        private_minio.kill()
        killed_at = time.monotonic()
        time.sleep(down)
        private_minio.start()
        restarted_at = time.monotonic()
        try:
            out, _ = cp.communicate(timeout=4 * OP_TIMEOUT + 2 * MARGIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cp of 64 MiB did not finish {time.monotonic() - killed_at:.0f}s after MinIO "
                        f"was killed (restarted after {down} s): a hang\n{m.log_tail(40)}", pytrace=False)
    finally:
        if cp.poll() is None:
            os.killpg(cp.pid, 9)
            cp.wait(10)
    print(f"multipart upload seen before the kill: {started}; cp exit {cp.returncode} "
          f"{time.monotonic() - restarted_at:.1f}s after restart: {out.decode(errors='replace').strip()}")

    published = assert_whole_or_absent(b, "big.bin", data, "64 MiB cp across a MinIO kill")
    if cp.returncode == 0:
        assert published, "cp returned 0 (close succeeded) but big.bin is not in the bucket"
    # the file is closed; once the mount recovers no multipart upload may be left
    deadline = time.monotonic() + 45
    left = incomplete_uploads(b.s3.client, b.name)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = incomplete_uploads(b.s3.client, b.name)
    assert left == [], (f"incomplete multipart uploads left after the failed upload was closed: {left}\n"
                        f"{m.log_tail(40)}")
    check_mount_works(m, b, "minio-kill")


# --------------------------------------------------------------------------- durability


def test_writes_acknowledged_by_fsync_and_close_are_never_lost(bucket, proxy, fault_mount):
    m = fault_mount
    acked: dict[str, bytes] = {}
    failed: dict[str, bytes] = {}
    hangs: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    sizes = [3000, 200 * 1024, 1 * MiB + 1, 9 * MiB + 3]  # PUT and multipart

    def writer(w: int):
        i = 0
        while not stop.is_set():
            name = f"ack-{w}-{i}.bin"
            data = content(name, sizes[i % len(sizes)])
            o = bounded(write_file, HANG_WRITE, m.path / name, data)
            with lock:
                if o.status == "ok":
                    acked[name] = data
                elif o.status == "hang":
                    hangs.append(f"{name}: {o!r}")
                    return
                else:
                    failed[name] = data
            i += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
    for t in threads:
        t.start()
    faults = [
        ("latency", "downstream", {"latency": 250, "jitter": 100}),
        ("reset_peer", "downstream", {"timeout": 400}),
        ("limit_data", "upstream", {"bytes": 3 * MiB}),
        ("bandwidth", "upstream", {"rate": 200}),
        ("slicer", "downstream", {"average_size": 64, "size_variation": 32, "delay": 100}),
        ("timeout", "downstream", {"timeout": 0}),
    ]
    for type_, stream, attrs in faults:
        time.sleep(2)
        # a silent server for everyone (EIO after op-timeout); the others hit 60% of connections
        t = proxy.add(type_, stream, toxicity=1.0 if type_ == "timeout" else 0.6, **attrs)
        time.sleep(4)
        proxy.remove(t)
    time.sleep(2)
    proxy.disable()  # connections refused: retries run out, writes fail (EIO)
    time.sleep(8)
    proxy.enable()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(HANG_WRITE + 5)
    assert not any(t.is_alive() for t in threads) and not hangs, f"writers hung: {hangs}\n{m.log_tail(40)}"
    print(f"{len(acked)} writes acknowledged, {len(failed)} failed cleanly during faults")
    assert acked, "no write at all succeeded during the faults"

    lost = []
    for name, data in acked.items():
        got = bucket.s3.client.get_object(Bucket=bucket.name, Key=name)["Body"].read() if bucket.head(name) else None
        if got != data:
            lost.append(f"{name}: {'missing' if got is None else f'{len(got)} bytes, expected {len(data)}'}")
    assert not lost, f"ACKNOWLEDGED WRITES LOST ({len(lost)} of {len(acked)}):\n" + "\n".join(lost)
    for name, data in failed.items():
        assert_whole_or_absent(bucket, name, data, "write that returned an error")
    check_mount_works(m, bucket, "durability")
