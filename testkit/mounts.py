"""Is it mounted, by which daemon, and the last resort when a mount will not go away.

"Mounted" is what ``ocifs.runtime`` reads from /proc/self/mounts (the kernel's octal escapes
undone, non-UTF-8 names kept), so the rig and ``ocifs umount`` never disagree about it; the
daemon's pid is read from the pid file ``ocifs.runtime.pid_file`` names.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from ocifs import runtime

from testkit.paths import require_tool

StrPath = str | os.PathLike[str]


def mount_entries(path: StrPath) -> list[runtime.MountEntry]:
    """The /proc/self/mounts entries whose mountpoint is ``path`` (stacked mounts: several)."""
    target = os.path.realpath(str(path))
    return [e for e in runtime.mount_table() if e.mountpoint == target]


def is_mounted(path: StrPath) -> bool:
    return bool(mount_entries(path))


def wait_mounted(path: StrPath, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until ``path`` is mounted; False after ``timeout``, or at once if the daemon
    ``proc`` (a FUSE daemon run in the foreground) exits without mounting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return True
        if proc is not None and proc.poll() is not None:
            return is_mounted(path)
        time.sleep(0.1)
    return is_mounted(path)


def force_unmount(path: StrPath) -> None:
    """Last resort: lazy FUSE unmount (``fusermount3 -u -z``), bounded in time."""
    for _ in range(5):
        if not is_mounted(path):
            return
        subprocess.run([require_tool("fusermount3"), "-u", "-z", str(path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if is_mounted(path):
            time.sleep(0.2)  # the kernel may finish a lazy unmount a moment later


def daemon_pid(mountpoint: StrPath) -> int | None:
    """The pid of the ocifs daemon serving ``mountpoint`` (None: no pid file), from the file
    the daemon writes, named the way the CLI names it (the absolute mountpoint)."""
    try:
        return int(runtime.pid_file(Path(os.path.abspath(mountpoint))).read_text().strip())
    except (OSError, ValueError):
        return None
