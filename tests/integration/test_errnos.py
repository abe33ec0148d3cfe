"""Errnos through real mounts: every error case of the operations OCI clients use, with the
errno POSIX (and Linux's man pages) name for it. pjdfstest's lists per syscall were the guide.

Three tables, each row one case and one test:

* ``ROWS``: root on a plain mount. Each row gets a fresh scratch directory holding ``f`` (a
  file), ``d`` (an empty directory) and ``n/x`` (a non-empty directory), plus the keys it lists
  under ``remote``, put straight into the bucket before the mount (so only S3 knows them).
* ``NOBODY_ROWS``: user ``nobody`` on an ``-o allow_other`` mount (the kernel enforces modes,
  tests/integration/test_permissions.py): refused with EACCES/EPERM, and nothing changes.
* ``READ_ONLY_ROWS``: root on a ``--read-only`` mount: EROFS, and nothing changes.

A row with errno 0 is the success the error rows are measured against (a 255-byte name works).
The plain mount keeps attributes for ``--metadata-ttl 30``: a row in which another host deletes
a file must reach ocifs with the file still cached, not race the revalidation.

``docs/errnos.md`` is this module's tables as Markdown (``python tests/integration/test_errnos.py
> docs/errnos.md``); ``test_docs_errnos_md_is_the_table`` keeps the two equal.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import pwd
import re
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

if __name__ != "__main__":  # `python test_errnos.py` prints the Markdown tables only
    from conftest import REPO, Bucket, Mount
    from testkit.fsops import bounded

NAME_MAX = 255
N255, N256 = "a" * NAME_MAX, "a" * (NAME_MAX + 1)
TIB = 1 << 40
S3_MAX_OBJECT = 5 * TIB  # S3's largest object: no file may grow past it
DEADLINE = 120.0  # seconds one row may take (one or a few FUSE operations)
SYSTEM_PYTHON = "/usr/bin/python3"  # the other user cannot run the project's venv under /root

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------- helpers


class Ctx:
    """What a row's operation gets: its scratch directory ``d`` and the bucket beside it."""

    def __init__(self, root: Path, d: Path, bucket: Bucket, rel: str) -> None:
        self.root, self.d, self.bucket, self.rel = root, d, bucket, rel

    def delete_in_s3(self, name: str) -> None:
        """Another host deletes ``name`` (straight in the bucket, behind the mount's back)."""
        self.bucket.s3.client.delete_object(Bucket=self.bucket.name, Key=self.bucket.key(f"{self.rel}/{name}"))


def openclose(path, flags: int) -> None:
    os.close(os.open(path, flags, 0o644))


def ftruncate(path, flags: int, length: int) -> None:
    fd = os.open(path, flags)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def pwrite(path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def write_new(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)  # where a blob's digest is checked


def write_fd(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(old, new, flags: int) -> None:
    """renameat2(2) through libc (Python has no binding)."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def stale_then(op: Callable[[Path], object]) -> Callable[[Ctx], object]:
    """Stat ``f`` (the mount caches it), another host deletes it, then ``op(f)``."""

    def run(c: Ctx) -> object:
        os.stat(c.d / "f")
        c.delete_in_s3("f")
        return op(c.d / "f")

    return run


def with_open_file(op: Callable[[Ctx], object]) -> Callable[[Ctx], object]:
    """``op`` while ``d/open`` is open for writing (created, not yet closed: not in S3)."""

    def run(c: Ctx) -> object:
        fd = os.open(c.d / "d" / "open", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"pending")
            return op(c)
        finally:
            os.close(fd)

    return run


def deep(c: Ctx) -> Path:
    """Three directories of 255-byte names: one more 255-byte name makes a key > 1,024 bytes."""
    p = c.d / N255 / N255 / N255
    os.makedirs(p)
    return p


def blob_of(data: bytes) -> str:
    return f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"


def long_path(c: Ctx) -> Path:
    return c.d.joinpath(*["b" * 200] * 21)  # > PATH_MAX (4,096 bytes)


@dataclass(frozen=True)
class Row:
    op: str  # the operation, as its man page names it
    case: str  # what is wrong with the call (or: what succeeds)
    errno: int  # what POSIX names for it; 0: it succeeds
    call: Callable[[Ctx], object] | str  # str: Python code run as another user, with `d` set
    then: Callable[[Ctx], bool] | None = None  # after a success: what must be true
    remote: tuple[str, ...] = ()  # keys (relative to the scratch dir) only S3 has at mount time

    @property
    def id(self) -> str:
        return f"{self.op}-{re.sub(r'[^A-Za-z0-9_+.]+', '-', self.case.replace('|', '+')).strip('-')}"

    @property
    def errname(self) -> str:
        return errno.errorcode[self.errno] if self.errno else "0 (succeeds)"


E = errno
ROWS: list[Row] = [
    # --- open / creat
    Row("open", "O_CREAT|O_EXCL, name is an existing file", E.EEXIST, lambda c: openclose(c.d / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
    Row("open", "O_CREAT|O_EXCL, name is an existing directory", E.EEXIST, lambda c: openclose(c.d / "d", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
    Row("open", "O_CREAT|O_EXCL, name exists only in S3 (never looked up)", E.EEXIST,
        lambda c: openclose(c.d / "s3file", os.O_WRONLY | os.O_CREAT | os.O_EXCL), remote=("s3file",)),
    Row("open", "O_CREAT, name is a directory", E.EISDIR, lambda c: openclose(c.d / "d", os.O_WRONLY | os.O_CREAT)),
    Row("open", "O_WRONLY on a directory", E.EISDIR, lambda c: openclose(c.d / "d", os.O_WRONLY)),
    Row("open", "O_RDWR on a directory", E.EISDIR, lambda c: openclose(c.d / "d", os.O_RDWR)),
    Row("open", "O_TRUNC on a directory", E.EISDIR, lambda c: openclose(c.d / "d", os.O_RDONLY | os.O_TRUNC)),
    Row("open", "O_DIRECTORY on a file", E.ENOTDIR, lambda c: openclose(c.d / "f", os.O_RDONLY | os.O_DIRECTORY)),
    Row("open", "missing name", E.ENOENT, lambda c: openclose(c.d / "missing", os.O_RDONLY)),
    Row("open", "O_CREAT in a missing directory", E.ENOENT, lambda c: openclose(c.d / "missing" / "x", os.O_WRONLY | os.O_CREAT)),
    Row("open", "a path component is a file", E.ENOTDIR, lambda c: openclose(c.d / "f" / "x", os.O_RDONLY)),
    Row("open", "O_CREAT, a path component is a file", E.ENOTDIR, lambda c: openclose(c.d / "f" / "x", os.O_WRONLY | os.O_CREAT)),
    Row("open", "O_CREAT, name of 255 bytes", 0, lambda c: openclose(c.d / N255, os.O_WRONLY | os.O_CREAT),
        then=lambda c: (c.d / N255).is_file()),
    Row("open", "O_CREAT, name of 256 bytes", E.ENAMETOOLONG, lambda c: openclose(c.d / N256, os.O_WRONLY | os.O_CREAT)),
    Row("open", "name of 256 bytes", E.ENAMETOOLONG, lambda c: openclose(c.d / N256, os.O_RDONLY)),
    Row("open", "path longer than PATH_MAX", E.ENAMETOOLONG, lambda c: openclose(long_path(c), os.O_RDONLY)),
    Row("open", "O_CREAT, object key would be longer than 1,024 bytes", E.ENAMETOOLONG,
        lambda c: openclose(deep(c) / N255, os.O_WRONLY | os.O_CREAT)),
    Row("open", "O_CREAT, name is not UTF-8 (S3 keys are)", E.EINVAL, lambda c: openclose(bytes(c.d) + b"/\xff", os.O_WRONLY | os.O_CREAT)),
    Row("open", "name is not UTF-8 (no such name can exist)", E.ENOENT, lambda c: openclose(bytes(c.d) + b"/\xff", os.O_RDONLY)),
    Row("open", "O_CREAT of .ocifs at the top (reserved for gc)", E.EPERM, lambda c: openclose(c.root / ".ocifs", os.O_WRONLY | os.O_CREAT)),
    # --- truncate / ftruncate / write
    Row("truncate", "negative length", E.EINVAL, lambda c: os.truncate(c.d / "f", -1)),
    Row("truncate", "a directory", E.EISDIR, lambda c: os.truncate(c.d / "d", 0)),
    Row("truncate", "missing name", E.ENOENT, lambda c: os.truncate(c.d / "missing", 0)),
    Row("truncate", "a path component is a file", E.ENOTDIR, lambda c: os.truncate(c.d / "f" / "x", 0)),
    Row("truncate", "length beyond S3's largest object (5 TiB)", E.EFBIG, lambda c: os.truncate(c.d / "f", S3_MAX_OBJECT + 1),
        then=lambda c: os.stat(c.d / "f").st_size == 4),
    Row("ftruncate", "negative length", E.EINVAL, lambda c: ftruncate(c.d / "f", os.O_WRONLY, -1)),
    Row("ftruncate", "descriptor open read-only", E.EINVAL, lambda c: ftruncate(c.d / "f", os.O_RDONLY, 0)),
    Row("ftruncate", "descriptor of a directory", E.EINVAL, lambda c: ftruncate(c.d / "d", os.O_RDONLY, 0)),
    Row("ftruncate", "length beyond S3's largest object (5 TiB)", E.EFBIG, lambda c: ftruncate(c.d / "f", os.O_WRONLY, S3_MAX_OBJECT + 1)),
    Row("write", "at an offset beyond S3's largest object (5 TiB)", E.EFBIG, lambda c: pwrite(c.d / "f", b"x", S3_MAX_OBJECT)),
    Row("write", "descriptor open read-only", E.EBADF, lambda c: write_fd(c.d / "f")),
    Row("close", "blobs/sha256/<hex> whose content does not hash to <hex>", E.EBADMSG,
        lambda c: (os.makedirs(c.d / "blobs" / "sha256"), write_new(c.d / blob_of(b"x"), b"not x"))),
    # --- unlink
    Row("unlink", "a directory", E.EISDIR, lambda c: os.unlink(c.d / "d")),
    Row("unlink", "missing name", E.ENOENT, lambda c: os.unlink(c.d / "missing")),
    Row("unlink", "in a missing directory", E.ENOENT, lambda c: os.unlink(c.d / "missing" / "x")),
    Row("unlink", "a path component is a file", E.ENOTDIR, lambda c: os.unlink(c.d / "f" / "x")),
    Row("unlink", "name of 256 bytes", E.ENAMETOOLONG, lambda c: os.unlink(c.d / N256)),
    Row("unlink", "name is not UTF-8", E.ENOENT, lambda c: os.unlink(bytes(c.d) + b"/\xff")),
    # --- rename / renameat2
    Row("rename", "directory over a file", E.ENOTDIR, lambda c: os.rename(c.d / "d", c.d / "f")),
    Row("rename", "file over a directory", E.EISDIR, lambda c: os.rename(c.d / "f", c.d / "d")),
    Row("rename", "directory into itself", E.EINVAL, lambda c: os.rename(c.d / "d", c.d / "d" / "sub")),
    Row("rename", "missing source", E.ENOENT, lambda c: os.rename(c.d / "missing", c.d / "g")),
    Row("rename", "source path component is a file", E.ENOTDIR, lambda c: os.rename(c.d / "f" / "x", c.d / "g")),
    Row("rename", "into a missing directory", E.ENOENT, lambda c: os.rename(c.d / "f", c.d / "missing" / "g")),
    Row("rename", "target path component is a file", E.ENOTDIR, lambda c: os.rename(c.d / "n" / "x", c.d / "f" / "g")),
    Row("rename", "to a name of 255 bytes", 0, lambda c: os.rename(c.d / "f", c.d / N255), then=lambda c: (c.d / N255).is_file()),
    Row("rename", "to a name of 256 bytes", E.ENAMETOOLONG, lambda c: os.rename(c.d / "f", c.d / N256)),
    Row("rename", "object key would be longer than 1,024 bytes", E.ENAMETOOLONG, lambda c: os.rename(c.d / "f", deep(c) / N255)),
    Row("rename", "to a name that is not UTF-8", E.EINVAL, lambda c: os.rename(c.d / "f", bytes(c.d) + b"/\xff")),
    Row("rename", "to .ocifs at the top (reserved for gc)", E.EPERM, lambda c: os.rename(c.d / "f", c.root / ".ocifs")),
    Row("rename", "a directory (ocifs renames files only)", E.EXDEV, lambda c: os.rename(c.d / "d", c.d / "e")),
    Row("rename", "a directory over a non-empty directory", E.EXDEV, lambda c: os.rename(c.d / "d", c.d / "n")),
    Row("rename", "source deleted by another host (mount still caches it)", E.ENOENT, stale_then(lambda f: os.rename(f, f.with_name("g")))),
    Row("rename", "to a blob name the content does not hash to", E.EBADMSG,
        lambda c: (os.makedirs(c.d / "blobs" / "sha256"), os.rename(c.d / "f", c.d / blob_of(b"x")))),
    Row("renameat2", "RENAME_NOREPLACE over an existing name", E.EEXIST, lambda c: renameat2(c.d / "n" / "x", c.d / "f", RENAME_NOREPLACE)),
    Row("renameat2", "RENAME_NOREPLACE to a new name", 0, lambda c: renameat2(c.d / "f", c.d / "g", RENAME_NOREPLACE),
        then=lambda c: (c.d / "g").is_file() and not (c.d / "f").exists()),
    Row("renameat2", "RENAME_EXCHANGE (not supported)", E.EINVAL, lambda c: renameat2(c.d / "n" / "x", c.d / "f", RENAME_EXCHANGE)),
    Row("renameat2", "RENAME_EXCHANGE with a missing target", E.ENOENT, lambda c: renameat2(c.d / "f", c.d / "g", RENAME_EXCHANGE)),
    Row("renameat2", "RENAME_WHITEOUT (not supported)", E.EINVAL, lambda c: renameat2(c.d / "f", c.d / "g", RENAME_WHITEOUT)),
    # --- mkdir
    Row("mkdir", "name is an existing file", E.EEXIST, lambda c: os.mkdir(c.d / "f")),
    Row("mkdir", "name is an existing directory", E.EEXIST, lambda c: os.mkdir(c.d / "d")),
    Row("mkdir", "name is a directory only S3 knows", E.EEXIST, lambda c: os.mkdir(c.d / "s3dir"), remote=("s3dir/child",)),
    Row("mkdir", "a path component is a file", E.ENOTDIR, lambda c: os.mkdir(c.d / "f" / "x")),
    Row("mkdir", "in a missing directory", E.ENOENT, lambda c: os.mkdir(c.d / "missing" / "x")),
    Row("mkdir", "name of 255 bytes", 0, lambda c: os.mkdir(c.d / N255), then=lambda c: (c.d / N255).is_dir()),
    Row("mkdir", "name of 256 bytes", E.ENAMETOOLONG, lambda c: os.mkdir(c.d / N256)),
    Row("mkdir", "object key would be longer than 1,024 bytes", E.ENAMETOOLONG, lambda c: os.mkdir(deep(c) / N255)),
    Row("mkdir", "name is not UTF-8", E.EINVAL, lambda c: os.mkdir(bytes(c.d) + b"/\xff")),
    Row("mkdir", ".ocifs at the top (reserved for gc)", E.EPERM, lambda c: os.mkdir(c.root / ".ocifs")),
    # --- rmdir
    Row("rmdir", "non-empty directory", E.ENOTEMPTY, lambda c: os.rmdir(c.d / "n")),
    Row("rmdir", "directory whose files only S3 knows", E.ENOTEMPTY, lambda c: os.rmdir(c.d / "s3dir"), remote=("s3dir/child",)),
    Row("rmdir", "directory holding a just-made empty directory", E.ENOTEMPTY,
        lambda c: (os.mkdir(c.d / "d" / "sub"), os.rmdir(c.d / "d"))),
    Row("rmdir", "directory holding a file still being written", E.ENOTEMPTY, with_open_file(lambda c: os.rmdir(c.d / "d"))),
    Row("rmdir", "a file", E.ENOTDIR, lambda c: os.rmdir(c.d / "f")),
    Row("rmdir", "missing name", E.ENOENT, lambda c: os.rmdir(c.d / "missing")),
    Row("rmdir", "last component is .", E.EINVAL, lambda c: os.rmdir(f"{c.d}/d/.")),  # a str: pathlib drops the "."
    Row("rmdir", "a path component is a file", E.ENOTDIR, lambda c: os.rmdir(c.d / "f" / "x")),
    Row("rmdir", "name is not UTF-8", E.ENOENT, lambda c: os.rmdir(bytes(c.d) + b"/\xff")),
    # --- chmod / chown / utimensat / stat
    Row("chmod", "missing name", E.ENOENT, lambda c: os.chmod(c.d / "missing", 0o600)),
    Row("chmod", "a path component is a file", E.ENOTDIR, lambda c: os.chmod(c.d / "f" / "x", 0o600)),
    Row("chmod", "file deleted by another host (mount still caches it)", E.ENOENT, stale_then(lambda f: os.chmod(f, 0o600))),
    Row("chown", "missing name", E.ENOENT, lambda c: os.chown(c.d / "missing", 0, 0)),
    Row("utimensat", "missing name", E.ENOENT, lambda c: os.utime(c.d / "missing")),
    Row("utimensat", "a path component is a file", E.ENOTDIR, lambda c: os.utime(c.d / "f" / "x")),
    Row("utimensat", "file deleted by another host (mount still caches it)", E.ENOENT, stale_then(lambda f: os.utime(f, (1, 1)))),
    Row("stat", "name of 256 bytes", E.ENAMETOOLONG, lambda c: os.stat(c.d / N256)),
    Row("stat", "path longer than PATH_MAX", E.ENAMETOOLONG, lambda c: os.stat(long_path(c))),
    Row("stat", "name is not UTF-8", E.ENOENT, lambda c: os.stat(bytes(c.d) + b"/\xff")),
    # --- what ocifs does not have: hard links, symlinks, special files, xattrs
    Row("link", "of a file (no hard links)", E.EPERM, lambda c: os.link(c.d / "f", c.d / "g")),
    Row("link", "of a directory", E.EPERM, lambda c: os.link(c.d / "d", c.d / "g")),
    Row("link", "onto an existing name", E.EEXIST, lambda c: os.link(c.d / "f", c.d / "d")),
    Row("symlink", "new name (no symbolic links)", E.EPERM, lambda c: os.symlink("f", c.d / "g")),
    Row("symlink", "onto an existing name", E.EEXIST, lambda c: os.symlink("f", c.d / "d")),
    Row("mknod", "S_IFIFO (mkfifo)", E.EPERM, lambda c: os.mkfifo(c.d / "g")),
    Row("mknod", "S_IFCHR", E.EPERM, lambda c: os.mknod(c.d / "g", stat.S_IFCHR | 0o644, os.makedev(1, 3))),
    Row("mknod", "S_IFSOCK", E.EPERM, lambda c: os.mknod(c.d / "g", stat.S_IFSOCK | 0o644)),
    Row("mknod", "S_IFREG (files are made by open/creat)", E.EPERM, lambda c: os.mknod(c.d / "g", stat.S_IFREG | 0o644)),
    Row("setxattr", "user.x", E.ENOTSUP, lambda c: os.setxattr(c.d / "f", "user.x", b"1")),
    Row("getxattr", "user.x", E.ENOTSUP, lambda c: os.getxattr(c.d / "f", "user.x")),
    Row("listxattr", "a file", E.ENOTSUP, lambda c: os.listxattr(c.d / "f")),
    Row("removexattr", "user.x", E.ENOTSUP, lambda c: os.removexattr(c.d / "f", "user.x")),
]

# Run as `nobody` on an allow_other mount: `d` (0755) holds root's f (0644), secret (0600),
# d/ (empty, 0755), n/x, and private/ (0700) holding y.
NOBODY_ROWS: list[Row] = [
    Row("open", "O_WRONLY of another user's 0644 file", E.EACCES, "os.open(d + '/f', os.O_WRONLY)"),
    Row("open", "O_RDONLY of another user's 0600 file", E.EACCES, "os.open(d + '/secret', os.O_RDONLY)"),
    Row("open", "O_RDONLY|O_TRUNC of another user's file", E.EACCES, "os.open(d + '/f', os.O_RDONLY | os.O_TRUNC)"),
    Row("open", "O_CREAT in another user's 0755 directory", E.EACCES, "os.open(d + '/new', os.O_WRONLY | os.O_CREAT, 0o644)"),
    Row("stat", "through another user's 0700 directory", E.EACCES, "os.stat(d + '/private/y')"),
    Row("truncate", "another user's file", E.EACCES, "os.truncate(d + '/f', 0)"),
    Row("unlink", "in another user's directory", E.EACCES, "os.unlink(d + '/f')"),
    Row("rename", "in another user's directory", E.EACCES, "os.rename(d + '/f', d + '/g')"),
    Row("mkdir", "in another user's directory", E.EACCES, "os.mkdir(d + '/e')"),
    Row("rmdir", "another user's empty directory", E.EACCES, "os.rmdir(d + '/d')"),
    Row("chmod", "another user's file", E.EPERM, "os.chmod(d + '/f', 0o666)"),
    Row("chown", "another user's file", E.EPERM, "os.chown(d + '/f', os.getuid(), -1)"),
    Row("utimensat", "explicit times on another user's file", E.EPERM, "os.utime(d + '/f', (1, 1))"),
    Row("utimensat", "now (NULL times) on a file the caller may not write", E.EACCES, "os.utime(d + '/f')"),
    Row("setxattr", "another user's file", E.EACCES, "os.setxattr(d + '/f', 'user.x', b'1')"),
    Row("link", "of another user's file", E.EPERM, "os.link(d + '/f', d + '/g')"),
    Row("symlink", "in another user's directory", E.EACCES, "os.symlink('f', d + '/g')"),
    Row("mknod", "S_IFIFO in another user's directory", E.EACCES, "os.mkfifo(d + '/g')"),
]

# Root on a --read-only mount of a bucket holding ro/f, ro/d/ (marker) and ro/n/x.
READ_ONLY_ROWS: list[Row] = [
    Row("open", "O_CREAT", E.EROFS, lambda c: openclose(c.d / "new", os.O_WRONLY | os.O_CREAT)),
    Row("open", "O_WRONLY", E.EROFS, lambda c: openclose(c.d / "f", os.O_WRONLY)),
    Row("open", "O_RDONLY|O_TRUNC", E.EROFS, lambda c: openclose(c.d / "f", os.O_RDONLY | os.O_TRUNC)),
    Row("truncate", "a file", E.EROFS, lambda c: os.truncate(c.d / "f", 0)),
    Row("unlink", "a file", E.EROFS, lambda c: os.unlink(c.d / "f")),
    Row("rename", "a file", E.EROFS, lambda c: os.rename(c.d / "f", c.d / "g")),
    Row("mkdir", "new name", E.EROFS, lambda c: os.mkdir(c.d / "e")),
    Row("rmdir", "empty directory", E.EROFS, lambda c: os.rmdir(c.d / "d")),
    Row("chmod", "a file", E.EROFS, lambda c: os.chmod(c.d / "f", 0o600)),
    Row("chown", "a file", E.EROFS, lambda c: os.chown(c.d / "f", 0, 0)),
    Row("utimensat", "a file", E.EROFS, lambda c: os.utime(c.d / "f")),
    Row("link", "a file", E.EROFS, lambda c: os.link(c.d / "f", c.d / "g")),
    Row("symlink", "new name", E.EROFS, lambda c: os.symlink("f", c.d / "g")),
    Row("mknod", "S_IFIFO", E.EROFS, lambda c: os.mkfifo(c.d / "g")),
    Row("setxattr", "a file", E.EROFS, lambda c: os.setxattr(c.d / "f", "user.x", b"1")),
]


def outcome(fn, *args) -> int:
    """errno of ``fn(*args)`` (0 if it returns), within DEADLINE."""
    o = bounded(fn, DEADLINE, *args)
    if o.status == "hang":
        pytest.fail(f"no answer within {DEADLINE:.0f} s: a hang", pytrace=False)
    if o.status == "ok":
        return 0
    if not isinstance(o.error, OSError):
        raise o.error
    return o.errno


def name(e: int) -> str:
    return errno.errorcode.get(e, str(e)) if e else "0 (succeeds)"


# --------------------------------------------------------------------------- mounts


class ModuleMounts:
    """A bucket and its mounts for the whole module (one mount per table, not per row)."""

    def __init__(self, s3) -> None:
        self.s3 = s3
        tag = uuid.uuid4().hex[:10]
        if s3.external_bucket:
            self.bucket = Bucket(s3, s3.external_bucket, f"ocifs-test/errnos-{tag}/")
        else:
            self.bucket = Bucket(s3, f"ocifs-errnos-{tag}")
            s3.create_bucket(self.bucket.name)
        self.mounts: list[Mount] = []
        self.plain = self.shared = self.read_only = None

    def mount(self, *args: str) -> Mount:
        workdir = Path(tempfile.mkdtemp(prefix="ocifs-errnos-"))
        (workdir / "mnt").mkdir()
        m = Mount(self.bucket, workdir / "mnt", workdir, list(args))
        self.mounts.append(m)
        m.mount()
        return m

    def close(self) -> list[str]:
        problems = [p for m in reversed(self.mounts) if (p := m.teardown())]
        if self.s3.external_bucket:
            self.s3.delete_prefix(self.bucket.name, self.bucket.prefix, self.bucket.put_keys)
        else:
            self.s3.delete_bucket(self.bucket.name, self.bucket.put_keys)
        return problems


@pytest.fixture(scope="module")
def module_mounts(s3):
    mm = ModuleMounts(s3)
    for row in ROWS:
        for rel in row.remote:
            mm.bucket.put(f"plain/{row.id}/{rel}", b"only in S3")
    for rel, data in (("ro/f", b"file"), ("ro/d/", b""), ("ro/n/x", b"x")):
        mm.bucket.put(rel, data)
    mm.plain = mm.mount("--metadata-ttl", "30")
    mm.shared = mm.mount("-o", "allow_other")
    mm.read_only = mm.mount("--read-only")
    os.chmod(mm.shared.path.parent, 0o755)  # let nobody walk to the shared mount
    yield mm
    problems = mm.close()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def mounts(request, module_mounts):
    request.node._ocifs_mounts = module_mounts.mounts  # a failing row shows the daemon logs
    return module_mounts


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry below ``root``: (mode, content of files)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


def bucket_state(bucket: Bucket, rel: str) -> dict[str, bytes]:
    return {k: bucket.get(k) for k in bucket.list(rel)}


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.id)
def test_errno(row: Row, mounts):
    m = mounts.plain
    rel = f"plain/{row.id}"
    d = m.path / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "f").write_bytes(b"file")
    (d / "d").mkdir()
    (d / "n").mkdir()
    (d / "n" / "x").write_bytes(b"x")
    c = Ctx(m.path, d, mounts.bucket, rel)
    got = outcome(row.call, c)
    assert got == row.errno, f"{row.op}, {row.case}: {name(got)}, POSIX names {row.errname}"
    if row.then is not None:
        assert row.then(c), f"{row.op}, {row.case} returned 0 but did not do it"


def as_nobody(code: str, d: Path) -> int:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: run `scripts/setup.sh` (Debian python3)", pytrace=False)
    nobody = pwd.getpwnam("nobody")
    runner = (
        "import os, sys\nd = sys.argv[1]\n"
        "try:\n    exec(sys.argv[2])\n    print(0)\nexcept OSError as e:\n    print(e.errno)\n"
    )
    try:
        res = subprocess.run([SYSTEM_PYTHON, "-I", "-c", runner, str(d), code], user=nobody.pw_uid, group=nobody.pw_gid,
                             extra_groups=[], capture_output=True, text=True, timeout=DEADLINE, cwd="/")
    except subprocess.TimeoutExpired:
        pytest.fail(f"as nobody: {code} did not return within {DEADLINE:.0f} s", pytrace=False)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.mark.parametrize("row", NOBODY_ROWS, ids=lambda r: r.id)
def test_errno_as_another_user(row: Row, mounts):
    m = mounts.shared
    rel = f"shared/{row.id}"
    d = m.path / rel
    d.mkdir(parents=True)
    (d / "f").write_bytes(b"file")
    (d / "secret").write_bytes(b"secret")
    os.chmod(d / "secret", 0o600)
    (d / "d").mkdir()
    (d / "n").mkdir()
    (d / "n" / "x").write_bytes(b"x")
    (d / "private").mkdir(mode=0o700)
    (d / "private" / "y").write_bytes(b"y")
    before, in_s3 = snapshot(d), bucket_state(mounts.bucket, rel)
    got = as_nobody(row.call, d)
    assert got == row.errno, f"as nobody: {row.op}, {row.case}: {name(got)}, POSIX names {row.errname}"
    assert snapshot(d) == before, "another user's refused call changed the mount"
    assert bucket_state(mounts.bucket, rel) == in_s3, "another user's refused call changed the bucket"


def test_directory_modes_outlive_the_kernels_forget(mounts):
    """A directory made 0700 (or chmod'ed to it) stays 0700 after the kernel forgot its inode
    (an unused dentry is dropped once --metadata-ttl passed), so another user still gets
    EACCES through it."""
    d = mounts.shared.path / "forget"
    d.mkdir()
    os.mkdir(d / "made", 0o700)
    os.mkdir(d / "changed")
    os.chmod(d / "changed", 0o700)
    for sub in ("made", "changed"):
        (d / sub / "y").write_bytes(b"y")
    seen: set[tuple[str, int]] = set()
    end = time.monotonic() + 4  # --metadata-ttl 1: forgotten within about 1-3 s
    while time.monotonic() < end:
        seen |= {(sub, stat.S_IMODE(os.stat(d / sub).st_mode)) for sub in ("made", "changed")}
        time.sleep(0.1)
    assert seen == {("made", 0o700), ("changed", 0o700)}, f"modes seen over 4 s: {sorted((n, oct(m)) for n, m in seen)}"
    for sub in ("made", "changed"):
        assert as_nobody(f"os.stat(d + '/{sub}/y')", d) == errno.EACCES


@pytest.mark.parametrize("row", READ_ONLY_ROWS, ids=lambda r: r.id)
def test_errno_on_a_read_only_mount(row: Row, mounts):
    d = mounts.read_only.path / "ro"
    before, in_s3 = snapshot(d), bucket_state(mounts.bucket, "ro/")
    got = outcome(row.call, Ctx(mounts.read_only.path, d, mounts.bucket, "ro"))
    assert got == row.errno, f"--read-only: {row.op}, {row.case}: {name(got)}, expected {row.errname}"
    assert snapshot(d) == before and bucket_state(mounts.bucket, "ro/") == in_s3, "a --read-only mount changed something"


# --------------------------------------------------------------------------- the document


def markdown() -> str:
    def table(rows: list[Row], test: str) -> list[str]:
        lines = ["| operation | case | errno | test id |", "|---|---|---|---|"]
        for r in rows:
            case = r.case.replace("|", "\\|")
            lines.append(f"| {r.op} | {case} | {r.errname} | `{test}[{r.id}]` |")
        return lines

    here = "tests/integration/test_errnos.py"
    return "\n".join([
        "# Errnos",
        "",
        "What an ocifs mount answers for each error case of the operations OCI clients use, each row",
        f"one test through a real mount (`{here}`, real MinIO). Generated from that module's tables:",
        f"`.venv/bin/python {here} > docs/errnos.md` (a test keeps the two equal).",
        "",
        "## As the mounting user (root)",
        "",
        *table(ROWS, "test_errno"),
        "",
        "## As another local user on an `-o allow_other` mount (nothing changes)",
        "",
        *table(NOBODY_ROWS, "test_errno_as_another_user"),
        "",
        "## On a `--read-only` mount (nothing changes)",
        "",
        *table(READ_ONLY_ROWS, "test_errno_on_a_read_only_mount"),
        "",
        NOTES,
    ])


NOTES = """## Choices ocifs makes (the rest is what any POSIX filesystem answers)

- **No hard links, symbolic links, fifos, sockets or device nodes**: `link`, `symlink` and
  `mknod` are `EPERM`, what link(2), symlink(2) and mknod(2) name for a filesystem that does not
  support them (zot then turns dedupe off). Files are made by `open`/`creat` only.
- **No directory renames**: `EXDEV`, so `mv` and similar tools fall back to copying.
- **`renameat2` flags other than `RENAME_NOREPLACE`** are `EINVAL` (rename(2): the filesystem
  does not support one of the flags).
- **No extended attributes**: `ENOTSUP`.
- **Names are UTF-8** (S3 keys are): creating a name that is not is `EINVAL` (open(2), mkdir(2):
  characters the filesystem does not permit); looking one up is `ENOENT` (no such name exists).
- **A path's object key is at most 1,024 bytes** (S3's limit): `ENAMETOOLONG` beyond it, as for a
  name over 255 bytes.
- **A file is at most 5 TiB** (S3's largest object): a write or truncate beyond it is `EFBIG`.
- **`.ocifs` at the top of the mount** holds gc's marks: creating it is `EPERM`.
- **Blobs are verified**: content that does not hash to its `blobs/<alg>/<hex>` name is refused
  at close, fsync or rename with `EBADMSG`, and nothing is published.
- **Another host's delete** of a file this mount still caches (within `--metadata-ttl`) is
  `ENOENT` for chmod, utimens and rename, as if the mount had known.
- MinIO (not S3) refuses a directory marker whose last name is longer than 246 bytes: such an
  empty directory made by `mkdir` does not survive a remount there (the daemon logs a warning).
"""


def test_docs_errnos_md_is_the_table():
    doc = REPO / "docs" / "errnos.md"
    assert doc.is_file() and doc.read_text() == markdown() + "\n", (
        "docs/errnos.md differs from the tables: python tests/integration/test_errnos.py > docs/errnos.md")


if __name__ == "__main__":
    print(markdown())
