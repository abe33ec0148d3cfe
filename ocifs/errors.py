"""Filesystem-level exceptions: what a POSIX caller is told.

Each carries the errno it becomes at the FUSE boundary. What S3 answered is a different kind of
error (:mod:`ocifs.store`, no errno); the FUSE edge (:mod:`ocifs.fs`) maps those per operation.
"""

from __future__ import annotations

import errno


class OcifsError(Exception):
    """Base class: an operation failed for a reason a caller should see as ``errno``."""

    errno: int = errno.EIO

    def __init__(self, message: str = "", *, err: int | None = None) -> None:
        super().__init__(message)
        if err is not None:
            self.errno = err


class NotFound(OcifsError):
    errno = errno.ENOENT


class Exists(OcifsError):
    errno = errno.EEXIST


class NotEmpty(OcifsError):
    errno = errno.ENOTEMPTY


class IsADirectory(OcifsError):
    errno = errno.EISDIR


class NotADirectory(OcifsError):
    errno = errno.ENOTDIR


class ReadOnly(OcifsError):
    errno = errno.EROFS


class AccessDenied(OcifsError):
    errno = errno.EACCES


class Unsupported(OcifsError):
    errno = errno.ENOTSUP


class InvalidName(OcifsError):
    errno = errno.EINVAL


class NameTooLong(OcifsError):
    errno = errno.ENAMETOOLONG


class Busy(OcifsError):
    errno = errno.EBUSY


class Stale(OcifsError):
    """The version an open file was reading is gone (replaced or deleted elsewhere)."""

    errno = errno.ESTALE


class Timeout(OcifsError):
    """An operation gave up waiting (the operation deadline)."""

    errno = errno.EIO


class DigestMismatch(OcifsError):
    """Content written to (or renamed to) blobs/<alg>/<hex> does not hash to <hex>."""

    errno = errno.EBADMSG


class PreconditionFailed(OcifsError):
    """A conditional write lost a race (the object changed since we read it)."""


class RemoteError(OcifsError):
    """S3 failed (after retries) or answered something we cannot use."""

    errno = errno.EIO


class BucketError(OcifsError):
    """The bucket cannot be used at all (startup check)."""
