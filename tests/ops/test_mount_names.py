"""Mountpoints whose names /proc/self/mounts escapes or that are not ASCII, mounted for real.

``ocifs umount`` and the busy check of ``ocifs mount`` find mounts in /proc/self/mounts; a
name decoded wrongly there (``/mnt/ü`` read as ``/mnt/Ã¼``) makes ``ocifs umount`` say "not
mounted" and lets a second mount stack on the first.
"""

from __future__ import annotations

import pytest

from conftest import is_mounted, run

from .opslib import unmounted

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("name", ["ü x", "tab\tand\\backslash"])
def test_mount_busy_check_and_umount_on_an_escaped_non_ascii_name(bucket, mount_factory, name):
    m = unmounted(mount_factory, bucket, name)
    m.mount()
    (m.path / "f.txt").write_bytes(b"hi")
    assert bucket.get("f.txt") == b"hi"
    again = run(m.mount_args(), env=bucket.s3.env(), timeout=60, check=False)
    assert again.returncode == 1 and "already a mount point" in again.stderr, again.describe()
    m.umount()  # `ocifs umount`: fails the test unless it exits 0 and the mount is gone
    assert not is_mounted(m.path)
