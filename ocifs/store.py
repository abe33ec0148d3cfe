"""The S3 surface the filesystem depends on: a Protocol, its value types and its errors.

Everything above the S3 client (namespace, upload, publish, fs, markers, gc) talks to an
:class:`ObjectStore`, never to aiobotocore. Two things implement it: :class:`ocifs.s3.S3` (the
real client) and the in-memory fake the unit tests use (``tests/fakes3.py``). One contract test
suite (``tests/contract``) runs against both, so the fake cannot drift from real S3 (MinIO).

Errors here say what *S3* answered (no such key, precondition failed, denied, ...). They carry
no errno: which errno a caller sees depends on the operation, and is chosen at the FUSE edge
(:mod:`ocifs.fs`), as mountpoint-s3 does in ``fs/error.rs``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Protocol


# --- values ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since epoch: x-amz-meta-mtime if set, else LastModified
    etag: str
    mode: int | None = None  # st_mode from x-amz-meta-mode; None when unknown (listing)
    meta_known: bool = False  # True when user metadata was read (HEAD/GET), not a listing


@dataclasses.dataclass(slots=True)
class ListPage:
    prefixes: list[str]
    objects: list[ObjectInfo]
    next_token: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class UploadInfo:
    """An incomplete multipart upload (ListMultipartUploads)."""

    key: str
    upload_id: str
    initiated: float


@dataclasses.dataclass(frozen=True, slots=True)
class PartInfo:
    """One uploaded part of an incomplete multipart upload (ListParts)."""

    number: int
    size: int
    etag: str
    last_modified: float


Body = bytes | bytearray | memoryview
BodySource = Body | Callable[[], Body]  # a function is called only once a request slot is free


# --- errors ---------------------------------------------------------------------------------
class StoreError(Exception):
    """S3 failed or answered something a caller must handle. Carries no errno."""


class NotFound(StoreError):
    """404 NoSuchKey: no object at that key."""


class NoSuchUpload(StoreError):
    """The multipart upload id is not (or no longer) known to S3."""


class PreconditionFailed(StoreError):
    """412: If-Match / If-None-Match did not hold (the object changed, or exists)."""


class Denied(StoreError):
    """403, or no usable credentials."""


class Unsupported(StoreError):
    """501 NotImplemented: this endpoint lacks the feature."""


class NoSuchBucket(StoreError):
    """The bucket does not exist."""


class Rejected(StoreError):
    """Another 4xx: the request itself was refused (EntityTooSmall, InvalidPart, InvalidRange,
    InvalidObjectName, ...). Retrying it unchanged will not help."""


class Unavailable(StoreError):
    """The endpoint could not be reached, or kept failing after retries (5xx, resets, timeouts)."""


class BadResponse(StoreError):
    """An answer we cannot use: a short or overlong body, a malformed reply."""


# --- S3's error codes as these errors (aiobotocore's answers and the data plane's alike) -------
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_PRECONDITION = {"412", "PreconditionFailed"}
# "Too many requests": AWS says 503 SlowDown (botocore retries it), MinIO at
# MINIO_API_REQUESTS_MAX says 429 TooManyRequests (botocore's standard mode does not).
_THROTTLED = {"SlowDown", "TooManyRequests"}


class BodyError(BadResponse):
    """A response body that broke off or had the wrong length: worth another try."""


def error_for(what: str, code: str, status: str, msg: str) -> StoreError:
    """The error for an S3 error ``code`` / HTTP ``status``."""
    if code == "NoSuchUpload":
        return NoSuchUpload(f"{what}: no such multipart upload")
    if code == "NoSuchBucket":
        return NoSuchBucket(f"{what}: no such bucket")
    if code in _NOT_FOUND or status == "404":
        return NotFound(f"{what}: {msg}")
    if code in DENIED_CODES or status == "403":
        return Denied(f"{what}: access denied ({code})")
    if code in _PRECONDITION or status == "412" or code == "ConditionalRequestConflict":
        return PreconditionFailed(f"{what}: precondition failed ({code})")
    if code in _THROTTLED or status == "429":
        return Unavailable(f"{what}: {code or status}: still refused after retries: {msg}")
    if code == "NotImplemented" or status == "501":
        return Unsupported(f"{what}: not implemented by this endpoint ({code})")
    if status.startswith("4"):
        return Rejected(f"{what}: {code or status}: {msg}")
    return Unavailable(f"{what}: {code or status}: {msg}")


# --- the interface --------------------------------------------------------------------------
class ObjectStore(Protocol):
    """One bucket, as the filesystem uses it. All keys are full keys (prefix included)."""

    stats: collections.Counter[str]

    async def head(self, key: str) -> ObjectInfo: ...

    async def get(self, key: str) -> tuple[str, bytes]:
        """A whole (small) object and its ETag."""
        ...

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Exactly bytes [start, end); with ``etag``, PreconditionFailed if the object changed."""
        ...

    async def list_page(
        self, prefix: str, token: str | None = None, delimiter: str | None = "/", max_keys: int = 1000
    ) -> ListPage: ...

    async def put(
        self, key: str, body: Body, meta: dict[str, str], if_match: str | None = None, if_none_match: bool = False
    ) -> str: ...

    async def copy(self, src: str, dst: str, meta: dict[str, str], src_etag: str | None = None) -> str:
        """Server-side copy with new metadata; with ``src_etag``, PreconditionFailed if the
        source changed (x-amz-copy-source-if-match)."""
        ...

    async def delete(self, key: str) -> None:
        """DeleteObject; deleting a missing key succeeds (S3 semantics)."""
        ...

    async def create_multipart(self, key: str, meta: dict[str, str]) -> str: ...

    async def upload_part(self, key: str, upload_id: str, number: int, body: BodySource) -> str: ...

    async def upload_part_copy(
        self, src: str, dst: str, upload_id: str, number: int, start: int, end: int, src_etag: str | None = None
    ) -> str:
        """Bytes [start, end) of ``src`` as part ``number``; PreconditionFailed if ``src_etag``
        no longer matches."""
        ...

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort; an upload S3 no longer knows is not an error."""
        ...

    async def list_multipart(self, prefix: str) -> list[UploadInfo]: ...

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]: ...
