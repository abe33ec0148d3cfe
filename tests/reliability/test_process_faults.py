"""The ocifs daemon itself dies or is told to stop (SIGKILL, SIGTERM)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from conftest import ocifs_bin, run
from testkit import is_mounted, wait_dead
from testkit.fsops import MiB, bounded, content, read_file, write_file

from .conftest import MARGIN, OP_TIMEOUT

pytestmark = pytest.mark.timeout(180)
HANG = OP_TIMEOUT + MARGIN


def kill_daemon(m, sig) -> int:
    pid = m.pid
    os.kill(pid, sig)
    return pid


def test_sigkill_daemon_then_umount_clears_dead_mount_and_remount_works(bucket, fault_mount_factory):
    m = fault_mount_factory(bucket)
    data = content("before-kill", 3 * MiB)
    assert bounded(write_file, HANG, m.path / "before-kill.bin", data).status == "ok"

    pid = kill_daemon(m, signal.SIGKILL)
    assert wait_dead(pid, 10), "the daemon survived SIGKILL"
    o = bounded(os.stat, HANG, m.path)
    # ENOTCONN, or ECONNABORTED when the kernel aborted a request that was in flight
    assert o.status == "error" and o.errno in (errno.ENOTCONN, errno.ECONNABORTED), (
        f"stat of a mount whose daemon was killed: {o!r}, expected ENOTCONN/ECONNABORTED")

    res = run([*ocifs_bin(), "umount", m.path], env=bucket.s3.env(), timeout=60, check=False)
    assert res.returncode == 0, f"ocifs umount of a dead mount failed\n{res.describe()}"
    assert not is_mounted(m.path), "ocifs umount exited 0 but the dead mount is still in /proc/mounts"
    # (ocifs leaves /run/ocifs/<hash>.pid and .sock of the dead daemon behind: reported, and
    # harmless here because the next mount overwrites them)

    m.mount()
    o = bounded(read_file, HANG, m.path / "before-kill.bin")
    assert o.status == "ok" and o.value == data, f"read after remount: {o!r}"
    w = content("after-remount", 1 * MiB)
    assert bounded(write_file, HANG, m.path / "after-remount.bin", w).status == "ok"
    assert bucket.get("after-remount.bin") == w


def test_staging_leftovers_of_a_killed_daemon_are_reported_at_next_mount(bucket, fault_mount_factory, tmp_path):
    """A file open for writing when the daemon is SIGKILLed was never closed, so it is never
    published; the next mount on the same --cache-dir reports it (the object it was for, its
    size) and moves its staging file to <cache-dir>/lost+found (README, Reliability)."""
    cache = tmp_path / "cache"
    m = fault_mount_factory(bucket, cache_dir=cache)
    data = content("unfinished", 1 * MiB + 17)
    (m.path / "dir").mkdir()
    fd = os.open(m.path / "dir" / "unfinished.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        o = bounded(os.write, HANG, fd, data)
        assert o.status == "ok", f"write: {o!r}"
        pid = kill_daemon(m, signal.SIGKILL)
        assert wait_dead(pid, 10)
    finally:
        bounded(os.close, HANG, fd)  # ENOTCONN: the daemon is gone
    leftovers = sorted(p.name for p in (cache / "staging").iterdir() if p.suffix != ".key")
    assert len(leftovers) == 1, f"the killed daemon left {leftovers} in staging, expected the unfinished write"

    res = run([*ocifs_bin(), "umount", m.path], env=bucket.s3.env(), timeout=60, check=False)
    assert res.returncode == 0 and not is_mounted(m.path), res.describe()
    first_log_len = len(m.log)
    m.mount()  # same --cache-dir
    new_log = m.log[first_log_len:]
    lines = [ln for ln in new_log.splitlines() if "unfinished write of an earlier run" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], f"the next mount did not report {leftovers}:\n{new_log[-3000:]}"
    assert f"s3://{bucket.name}/dir/unfinished.bin, {len(data)} bytes" in lines[0], lines[0]
    moved = cache / "lost+found" / lines[0].rsplit("moved to ", 1)[1].rsplit("/", 1)[1]
    assert moved.read_bytes() == data, "lost+found does not hold the bytes that were written"
    assert [p for p in (cache / "staging").iterdir()] == [], "the leftover is still in staging"
    assert bucket.head("dir/unfinished.bin") is None, "an unfinished write of a killed daemon was published"
    print(lines[0])


@pytest.mark.parametrize("size", [100 * 1024, 20 * MiB + 11], ids=["put", "multipart"])
def test_sigterm_with_file_open_for_writing_exits_and_publishes_nothing_of_it(bucket, fault_mount_factory, size):
    """A file never closed is never published: a stop (systemd, SIGTERM) drops it, aborts its
    upload, and exits 0 at once (closes in flight are waited for: tests/unit/test_fs_api)."""
    m = fault_mount_factory(bucket)
    data = content(f"open-at-sigterm-{size}", size)
    fd = os.open(m.path / "open.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, size, MiB):
            o = bounded(os.write, HANG, fd, data[i : i + MiB])
            assert o.status == "ok", f"write at {i}: {o!r}"
        pid = kill_daemon(m, signal.SIGTERM)
        exited = wait_dead(pid, 60)
        published = bucket.head("open.bin")
        got = bucket.get("open.bin") if published else None
    finally:
        bounded(os.close, HANG, fd)
    assert exited, f"the daemon did not exit within 60 s of SIGTERM with a file open\n{m.log_tail(30)}"
    assert got is None, f"a file still open for writing at SIGTERM was published ({len(got or b'')} bytes)"
    uploads = bucket.s3.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])
    assert uploads == [], f"multipart uploads left behind: {uploads}"
    assert "open.bin: still open for writing at unmount: not published" in m.log
