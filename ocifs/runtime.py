"""Facts about mounts that need no S3 and no FUSE library: pid files, /proc/self/mounts,
checks of mountpoints and options, and unmounting. Kept light so that ``ocifs umount`` and the
checks ``ocifs mount`` makes before starting the daemon do not import botocore.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from ocifs import errors


def runtime_dir() -> Path:
    """Where pid files and stats sockets live: /run/ocifs for root, else
    $XDG_RUNTIME_DIR/ocifs, else /tmp/ocifs-<uid>/ocifs.

    /tmp is writable by everyone: another user could have made /tmp/ocifs-<uid> first (or a
    symlink by that name) to read our sockets or have us write pid files where they point.
    Every directory of ours on the way is therefore made, or checked, with :func:`private_dir`.
    """
    uid = os.geteuid()
    if uid == 0:
        return private_dir(Path("/run/ocifs"), uid)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return private_dir(Path(xdg) / "ocifs", uid)
    hint = "remove it, or set XDG_RUNTIME_DIR to a directory of yours"
    return private_dir(private_dir(Path(f"/tmp/ocifs-{uid}"), uid, hint) / "ocifs", uid, hint)


def private_dir_problem(st: os.stat_result, uid: int) -> str | None:
    """Why a directory with this lstat() result is not safe to keep private files in (None:
    it is). A mode looser than 0700 is not a problem here: the owner can tighten it."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not {uid}"
    return None


def private_dir(path: Path, uid: int, hint: str = "remove it") -> Path:
    """Create ``path`` (mode 0700), or accept an existing one only if it is a real directory
    owned by ``uid``; then make sure its mode is 0700. Raises OcifsError (one line) otherwise.

    The checks run on an O_NOFOLLOW descriptor, so the directory checked is the one whose
    mode is set, even if the name is swapped for a symlink in between.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise errors.OcifsError(f"cannot create directory {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        try:
            problem = private_dir_problem(os.lstat(path), uid) or exc.strerror
        except OSError:
            problem = exc.strerror
        raise errors.OcifsError(f"refusing to use {path}: {problem}; {hint}") from None
    try:
        st = os.fstat(fd)
        problem = private_dir_problem(st, uid)
        if problem:
            raise errors.OcifsError(f"refusing to use {path}: {problem}; {hint}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def pid_file(mountpoint: Path) -> Path:
    digest = hashlib.sha1(str(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir() / f"{digest}.pid"


def stats_socket(mountpoint: Path) -> Path:
    return pid_file(mountpoint).with_suffix(".sock")


class MountEntry(NamedTuple):
    """One line of /proc/self/mounts (fields in the kernel's order)."""

    source: str
    mountpoint: str
    fstype: str
    options: str


# The kernel (fs/proc_namespace.c) writes these four bytes of a field as \ooo octal:
# space, tab, newline, backslash. Every other byte is the path's own (UTF-8 or not).
_MOUNT_ESCAPES = re.compile(rb"\\(040|011|012|134)")


def unescape_mount_field(field: bytes) -> str:
    """A /proc/*/mounts field as the str ``os.fsdecode`` would give for the same path."""
    raw = _MOUNT_ESCAPES.sub(lambda m: bytes([int(m.group(1), 8)]), field)
    return raw.decode("utf-8", "surrogateescape")


def parse_mounts(data: bytes) -> list[MountEntry]:
    """The entries of a /proc/*/mounts text (lines with fewer than four fields are skipped)."""
    out = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) >= 4:
            out.append(MountEntry(*(unescape_mount_field(f) for f in fields[:4])))
    return out


def mount_table() -> list[MountEntry]:
    with open("/proc/self/mounts", "rb") as f:
        return parse_mounts(f.read())


def mounted_paths() -> dict[str, str]:
    """Mountpoint -> filesystem type, from /proc/self/mounts."""
    return {e.mountpoint: e.fstype for e in mount_table()}


def check_mountpoint(mountpoint: Path) -> None:
    """Raise OcifsError with a one-line reason unless ``mountpoint`` can be mounted on.

    A dead ocifs mount (its daemon was killed: "Transport endpoint is not connected") is
    cleared, so a restart (systemd Restart=on-failure) just works.
    """
    fstype = mounted_paths().get(str(mountpoint))
    if fstype is not None:
        if fstype == "fuse.ocifs" and _is_dead(mountpoint) and _wait_gone(_read_pid(mountpoint), 5.0):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)
            _forget(mountpoint)
        if str(mountpoint) in mounted_paths():
            raise errors.OcifsError(f"{mountpoint} is already a mount point (busy); unmount it first")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise errors.OcifsError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        raise errors.OcifsError(f"mountpoint {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise errors.OcifsError(f"mountpoint {mountpoint} is not a directory")


def _is_dead(mountpoint: Path) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:  # the kernel's words for "this FUSE daemon is gone"
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _wait_gone(pid: int | None, timeout: float) -> bool:
    """True once ``pid`` is gone (a killed daemon may take a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _forget(mountpoint: Path) -> None:
    pid_file(mountpoint).unlink(missing_ok=True)
    stats_socket(mountpoint).unlink(missing_ok=True)


def _read_pid(mountpoint: Path) -> int | None:
    try:
        return int(pid_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None


# Options libfuse 3 accepts at mount time (mount(8) flags and fuse_session_new's own).
KNOWN_FUSE_OPTIONS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions", "ro", "rw", "nosuid",
    "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "relatime", "norelatime",
    "strictatime", "sync", "async", "dirsync", "blkdev", "debug", "nonempty",
}
KNOWN_FUSE_VALUE_OPTIONS = {"fsname", "subtype", "max_read", "blksize", "context", "fscontext", "defcontext", "rootcontext", "max_threads", "max_idle_threads"}


def check_fuse_options(options: tuple[str, ...]) -> None:
    """libfuse only says "fuse_session_new() failed" (its reason goes to stderr): name the option."""
    for opt in options:
        key = opt.partition("=")[0]
        if key not in KNOWN_FUSE_OPTIONS and key not in KNOWN_FUSE_VALUE_OPTIONS:
            raise errors.OcifsError(f"unknown FUSE option {opt!r} (known: {', '.join(sorted(KNOWN_FUSE_OPTIONS))}, ...)")


def unmount(mountpoint: Path, timeout: float) -> None:
    """Unmount; wait for the daemon to publish pending uploads and exit."""
    mp = str(mountpoint)
    if mp not in mounted_paths():
        raise errors.OcifsError(f"{mp} is not mounted")
    pid = _read_pid(mountpoint)
    res = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        text = msg[-1] if msg else f"fusermount3 exited {res.returncode}"
        if "not connected" in text or not _alive(pid):
            # The daemon is gone (killed): clear the dead mount lazily.
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
            _forget(mountpoint)
            return
        raise errors.OcifsError(f"cannot unmount {mp}: {text.removeprefix('fusermount3: ')}")
    if not _alive(pid):
        _forget(mountpoint)  # unmounted a dead daemon's mount: nobody else cleans up
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        raise errors.OcifsError(f"unmounted {mp}, but the daemon (pid {pid}) is still flushing after {timeout:.0f} s")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
