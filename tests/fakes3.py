"""FakeS3: one in-memory bucket behind :class:`ocifs.store.ObjectStore`, for kernel-free tests.

Why a fake and not MinIO: filesystem logic (write states, publish races, timeouts) needs
deterministic tests: a fault on the third UploadPart, a request that hangs until the test lets
it go, a clock the test moves. MinIO can do none of that. The fake is trio-native (no threads),
so trio's ``MockClock`` and ``trio.testing.wait_all_tasks_blocked`` drive it exactly.

Why it can be trusted: ``tests/contract`` runs one suite against this fake and against
:class:`ocifs.s3.S3` on a real MinIO. Each rule below that the filesystem relies on is pinned
there; what MinIO actually answered decided the rule (probed against the pinned MinIO build):

- ETags are quoted MD5 hex for PutObject, CopyObject (also of a multipart source: the copy is
  rewritten, so its ETag is the MD5 of the content) and each UploadPart/UploadPartCopy part; a
  completed multipart upload is ``"<md5 of the concatenated binary part MD5s>-<N>"``.
- HEAD gives user metadata (``x-amz-meta-*``: HTTP headers, so names come back lower-cased
  and values must be ASCII, else Rejected) and LastModified in whole seconds (an HTTP date);
  listings give no metadata and LastModified in milliseconds.
- PUT If-None-Match on an existing key and If-Match with another ETag: PreconditionFailed;
  If-Match on a missing key: NotFound (404 NoSuchKey, not 412). GET If-Match and
  x-amz-copy-source-if-match likewise.
- GetObject ranges: a start at or beyond the size, or an empty/inverted range, is 416
  InvalidRange (:class:`Rejected`); an end beyond the size is clamped by S3, so
  ``get_range`` (which promises exactly ``end - start`` bytes) fails with :class:`BadResponse`,
  as ``S3.get_range`` does. UploadPartCopy does not clamp: a range past the end is Rejected.
- ListObjectsV2 sorts keys by UTF-8 bytes; a common prefix counts as one entry of ``max_keys``;
  a page that ends exactly at the last entry is not truncated (no token).
- CompleteMultipartUpload: part numbers ascending, ETags matching, every part but the last at
  least 5 MiB, at least one part (else :class:`Rejected`); LastModified is the completion time;
  an unknown, aborted or completed upload id is :class:`NoSuchUpload`, also for UploadPart and
  ListParts; AbortMultipartUpload of an unknown id succeeds. An upload id belongs to its key.

Where it follows AWS S3 instead of MinIO (the contract suite asserts what both share;
``tests/contract/test_fake_extras.py`` pins the fake's side, two MinIO-only tests MinIO's):

- Keys: any non-empty string of at most 1024 UTF-8 bytes. MinIO refuses ``a//b``, ``x/./y``,
  ``x/../y`` and segments over 255 bytes (XMinioInvalidObjectName), and hides ``both/child``
  from listings when ``both`` exists; AWS stores and lists them all, and so does the fake.
- ListMultipartUploads filters by prefix. MinIO answers only for a prefix that is an exact key
  (or no prefix) -- minio/minio#20989, "working as intended".
- ListObjectsV2 with ``max_keys=1`` under a prefix that is itself a key: MinIO returns that
  key and ends the listing; AWS (and the fake) give a token to the rest.
- CompleteMultipartUpload with a part number twice is InvalidPartOrder (MinIO accepts it).

Known differences from the real client (not contract-tested): ``get_range`` past the end
fails at once (``S3`` retries the short body three times first); requests never fail or
retry unless a fault is injected.

Test-side API (kept small on purpose):

``FakeS3(clock=time.time, conditional_writes=True)``
    ``clock`` gives LastModified / Initiated times; ``conditional_writes=False`` makes PUT ignore
    If-Match / If-None-Match, like S3-compatible stores (and AWS before 2024) that predate them.
``objects``, ``uploads``
    The state: key -> :class:`FakeObject`, upload id -> :class:`FakeUpload`. Read them in
    assertions; :meth:`seed` adds an object without a request.
``calls``, ``stats``, ``limiter``
    Every request as a :class:`Call` (op, key, part), in the order they were sent (a frozen or
    delayed call is logged before it waits); the same
    counters :class:`ocifs.s3.S3` keeps; an optional ``trio.CapacityLimiter`` that requests hold
    while in flight, as the real client's.
``fail(op, error, times=1, when=None, after=False)``, ``delay(op, seconds)``, ``freeze(op)``,
``thaw()``, ``reset_faults()``
    Deterministic faults; ``op`` is an S3 operation name (see :data:`OPS`) or ``"*"``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import trio

from ocifs.s3 import _parse_meta
from ocifs.store import (
    BadResponse,
    Body,
    BodySource,
    ListPage,
    NoSuchUpload,
    NotFound,
    ObjectInfo,
    PartInfo,
    PreconditionFailed,
    Rejected,
    StoreError,
    Unavailable,
    UploadInfo,
)

# The S3 operation names, as ocifs.s3.S3 counts them in stats ("requests.<Op>").
OPS = frozenset(
    {
        "HeadObject",
        "GetObject",
        "ListObjectsV2",
        "PutObject",
        "CopyObject",
        "DeleteObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListMultipartUploads",
        "ListParts",
    }
)
MIN_PART = 5 * 1024 * 1024  # S3's EntityTooSmall bound for every part but the last
MAX_PART_NUMBER = 10_000
MAX_KEYS = 1000  # ListObjectsV2 returns at most this many entries, whatever max_keys asks
MAX_KEY_BYTES = 1024  # AWS KeyTooLongError beyond this


# --- state ----------------------------------------------------------------------------------
def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _bare(etag: str) -> str:
    """An ETag without its quotes: S3 compares conditions and part ETags either way."""
    return etag.strip('"')


@dataclasses.dataclass(slots=True)
class FakeObject:
    data: bytes
    meta: dict[str, str]
    etag: str
    last_modified: float  # seconds since the epoch, full precision (HEAD/list truncate it)


@dataclasses.dataclass(slots=True)
class FakePart:
    data: bytes
    etag: str
    last_modified: float


@dataclasses.dataclass(slots=True)
class FakeUpload:
    key: str
    upload_id: str
    meta: dict[str, str]
    initiated: float
    parts: dict[int, FakePart] = dataclasses.field(default_factory=dict)


class Call(NamedTuple):
    """One request: its S3 operation, the key it names (the destination of a copy, the prefix
    of a listing) and, for UploadPart/UploadPartCopy, the part number."""

    op: str
    key: str
    part: int | None = None


@dataclasses.dataclass(slots=True)
class _Fault:
    op: str
    error: StoreError | type[StoreError]
    times: int | None  # None: every matching call
    when: Callable[[Call], bool] | None
    after: bool  # the request takes effect, then the error is raised (the reply was lost)


def _seconds(t: float) -> float:
    """LastModified as HEAD shows it: an HTTP date, whole seconds."""
    return float(math.floor(t))


def _millis(t: float) -> float:
    """LastModified as listings show it: ISO 8601 with milliseconds."""
    return math.floor(t * 1000) / 1000


def _check_key(key: str) -> None:
    try:
        n = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise Rejected(f"{key!r}: not valid UTF-8") from None
    if n == 0 or n > MAX_KEY_BYTES:
        raise Rejected(f"{key[:40]!r}...: a key has 1 to {MAX_KEY_BYTES} UTF-8 bytes ({n})")


def _check_meta(meta: dict[str, str]) -> dict[str, str]:
    """User metadata as S3 stores it: names lower-cased (HTTP headers), ASCII only."""
    out = {}
    for name, value in meta.items():
        if not (name.isascii() and value.isascii()):
            raise Rejected(f"metadata {name!r}: S3 metadata can only contain ASCII characters")
        out[name.lower()] = value
    return out


# --- the fake -------------------------------------------------------------------------------
class FakeS3:
    """An in-memory bucket implementing :class:`ocifs.store.ObjectStore` (see module doc)."""

    def __init__(self, clock: Callable[[], float] = time.time, conditional_writes: bool = True) -> None:
        self.clock = clock
        self.conditional_writes = conditional_writes
        self.objects: dict[str, FakeObject] = {}
        self.uploads: dict[str, FakeUpload] = {}
        self.calls: list[Call] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.limiter: trio.CapacityLimiter | None = None
        self._upload_seq = 0
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._frozen: set[str] = set()
        self._thawed = trio.Event()
        self._thawed.set()

    # --- test-side API --------------------------------------------------------------------------
    def seed(self, key: str, data: bytes = b"", meta: dict[str, str] | None = None) -> FakeObject:
        """Store an object directly (no request, no fault, not logged): test setup."""
        _check_key(key)
        obj = FakeObject(bytes(data), _check_meta(meta or {}), _md5_etag(data), self.clock())
        self.objects[key] = obj
        return obj

    def fail(
        self,
        op: str,
        error: StoreError | type[StoreError] = Unavailable,
        *,
        times: int | None = 1,
        when: Callable[[Call], bool] | None = None,
        after: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``op`` (all of them if None) for which
        ``when(call)`` holds raise ``error`` (a StoreError class or instance).

        Without ``after`` the request fails before it takes effect (refused, or lost on the way);
        with ``after`` it takes effect and then fails (the reply was lost): what a client that
        retries must survive. Rules are tried in the order they were added.
        """
        self._check_op(op)
        if not (isinstance(error, StoreError) or (isinstance(error, type) and issubclass(error, StoreError))):
            raise TypeError(f"fail() takes an ocifs.store.StoreError, not {error!r}: the real client raises no other")
        self._faults.append(_Fault(op, error, times, when, after))

    def delay(self, op: str, seconds: float) -> None:
        """Every call of ``op`` sleeps ``seconds`` (trio time: instant under a MockClock with
        autojump) before it takes effect; 0 removes the delay."""
        self._check_op(op)
        if seconds:
            self._delays[op] = seconds
        else:
            self._delays.pop(op, None)

    def freeze(self, op: str = "*") -> None:
        """Calls of ``op`` that arrive from now on block (holding their limiter slot, like a
        hung connection) until :meth:`thaw`. Cancelling the caller cancels them."""
        self._check_op(op)
        self._frozen.add(op)
        if self._thawed.is_set():
            self._thawed = trio.Event()

    def thaw(self) -> None:
        """Release every frozen call; nothing is frozen any more."""
        self._frozen.clear()
        self._thawed.set()

    def reset_faults(self) -> None:
        """Forget every fail and delay rule, and thaw."""
        self._faults.clear()
        self._delays.clear()
        self.thaw()

    @staticmethod
    def _check_op(op: str) -> None:
        if op != "*" and op not in OPS:
            raise ValueError(f"unknown S3 operation {op!r}; one of {sorted(OPS)} or '*'")

    # --- the request pipeline -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _request(self, op: str, key: str, part: int | None = None) -> AsyncIterator[None]:
        """One request: the limiter slot, the counters and log, then the injected faults, around
        the effect (the ``async with`` body, which does not yield: each request is atomic)."""
        call = Call(op, key, part)
        listing = op in ("ListObjectsV2", "ListMultipartUploads")
        async with self.limiter if self.limiter is not None else contextlib.nullcontext():
            self.stats[f"requests.{op}"] += 1
            self.calls.append(call)
            try:
                if not listing:
                    _check_key(key)
                await trio.lowlevel.checkpoint()
                if op in self._frozen or "*" in self._frozen:
                    await self._thawed.wait()
                seconds = self._delays.get(op, self._delays.get("*", 0.0))
                if seconds:
                    await trio.sleep(seconds)
                self._inject(call, after=False)
                yield
                # The reply is on its way: the caller may be cancelled although S3 acted.
                await trio.lowlevel.checkpoint()
                self._inject(call, after=True)
            except StoreError as exc:
                if not isinstance(exc, (NotFound, PreconditionFailed)):  # answers, not failures
                    self.stats[f"errors.{op}"] += 1
                raise

    def _inject(self, call: Call, after: bool) -> None:
        for fault in self._faults:
            if fault.after != after or fault.op not in (call.op, "*"):
                continue
            if fault.when is not None and not fault.when(call):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
            error = fault.error
            if isinstance(error, type):
                error = error(f"{call.op} {call.key}: injected {error.__name__}")
            raise error

    # --- objects --------------------------------------------------------------------------------
    def _object(self, key: str) -> FakeObject:
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(f"{key}: The specified key does not exist.")
        return obj

    def _source(self, key: str, etag: str | None) -> FakeObject:
        """An object read under If-Match (GET) or x-amz-copy-source-if-match (copies)."""
        obj = self._object(key)
        if etag and _bare(etag) != _bare(obj.etag):
            raise PreconditionFailed(f"{key}: ETag is {obj.etag}, not {etag}")
        return obj

    async def head(self, key: str) -> ObjectInfo:
        async with self._request("HeadObject", key):
            obj = self._object(key)
        last_modified = dt.datetime.fromtimestamp(_seconds(obj.last_modified), tz=dt.timezone.utc)
        mtime, mode = _parse_meta(obj.meta, last_modified)
        return ObjectInfo(key, len(obj.data), mtime, obj.etag, mode, True)

    async def get(self, key: str) -> tuple[str, bytes]:
        async with self._request("GetObject", key):
            obj = self._object(key)
        self.stats["bytes.in"] += len(obj.data)
        return obj.etag, obj.data

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        async with self._request("GetObject", key):
            obj = self._source(key, etag)
            size = len(obj.data)
            if start < 0 or start >= end or start >= size:
                raise Rejected(f"GetObject {key}: InvalidRange: bytes={start}-{end - 1} of {size}")
            data = obj.data[start:end]
            if len(data) != end - start:  # S3 clamps the end; the caller asked for exactly this
                raise BadResponse(f"GetObject {key} [{start},{end}): got {len(data)} bytes, expected {end - start}")
        self.stats["bytes.in"] += len(data)
        return data

    async def list_page(
        self, prefix: str, token: str | None = None, delimiter: str | None = "/", max_keys: int = 1000
    ) -> ListPage:
        async with self._request("ListObjectsV2", prefix):
            after, skip = _decode_token(token) if token else ("", None)
            entries = self._entries(prefix, delimiter, after, skip, min(max_keys, MAX_KEYS) + 1)
        page = ListPage([], [], None)
        if max_keys <= 0:  # MinIO: an empty page, not truncated
            return page
        if len(entries) > min(max_keys, MAX_KEYS):
            entries = entries[:-1]
            page.next_token = _encode_token(entries[-1])
        for entry in entries:
            if isinstance(entry, str):
                page.prefixes.append(entry)
            else:
                page.objects.append(entry)
        return page

    def _entries(
        self, prefix: str, delimiter: str | None, after: str, skip: str | None, limit: int
    ) -> list[str | ObjectInfo]:
        """ListObjectsV2 entries in key order after ``after`` (not under ``skip``, a common
        prefix already returned): common prefixes (str) and objects, at most ``limit``."""
        out: list[str | ObjectInfo] = []
        for key in sorted((k for k in self.objects if k.startswith(prefix)), key=lambda k: k.encode()):
            if len(out) >= limit:
                break
            if key.encode() <= after.encode() or (skip is not None and key.startswith(skip)):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[: cut + len(delimiter or "")]
                if not (out and out[-1] == common):
                    out.append(common)
                continue
            obj = self.objects[key]
            out.append(ObjectInfo(key, len(obj.data), _millis(obj.last_modified), obj.etag))
        return out

    async def put(
        self, key: str, body: Body, meta: dict[str, str], if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        async with self._request("PutObject", key):
            meta = _check_meta(meta)
            existing = self.objects.get(key)
            if self.conditional_writes:
                if if_none_match and existing is not None:
                    raise PreconditionFailed(f"PutObject {key}: If-None-Match: the key exists")
                if if_match:
                    self._source(key, if_match)
            data = bytes(body)
            obj = self.objects[key] = FakeObject(data, meta, _md5_etag(data), self.clock())
        self.stats["bytes.out"] += len(data)
        return obj.etag

    async def copy(self, src: str, dst: str, meta: dict[str, str], src_etag: str | None = None) -> str:
        async with self._request("CopyObject", dst):
            _check_key(src)
            meta = _check_meta(meta)
            data = self._source(src, src_etag).data
            obj = self.objects[dst] = FakeObject(data, meta, _md5_etag(data), self.clock())
        return obj.etag

    async def delete(self, key: str) -> None:
        async with self._request("DeleteObject", key):
            self.objects.pop(key, None)

    # --- multipart ------------------------------------------------------------------------------
    def _upload(self, key: str, upload_id: str) -> FakeUpload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NoSuchUpload(f"{key}: no multipart upload {upload_id!r}")
        return upload

    @staticmethod
    def _check_part_number(number: int) -> None:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise Rejected(f"part number {number}: must be between 1 and {MAX_PART_NUMBER}")

    async def create_multipart(self, key: str, meta: dict[str, str]) -> str:
        async with self._request("CreateMultipartUpload", key):
            meta = _check_meta(meta)
            self._upload_seq += 1
            upload_id = f"fake-upload-{self._upload_seq}"  # opaque to callers; deterministic
            self.uploads[upload_id] = FakeUpload(key, upload_id, meta, self.clock())
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: BodySource) -> str:
        async with self._request("UploadPart", key, number):
            data = bytes(body() if callable(body) else body)  # read only once a slot is held
            upload = self._upload(key, upload_id)
            self._check_part_number(number)
            part = upload.parts[number] = FakePart(data, _md5_etag(data), self.clock())
        self.stats["bytes.out"] += len(data)
        return part.etag

    async def upload_part_copy(
        self, src: str, dst: str, upload_id: str, number: int, start: int, end: int, src_etag: str | None = None
    ) -> str:
        async with self._request("UploadPartCopy", dst, number):
            _check_key(src)
            upload = self._upload(dst, upload_id)
            self._check_part_number(number)
            source = self._source(src, src_etag).data
            if start < 0 or start >= end or end > len(source):
                raise Rejected(f"UploadPartCopy {src}: range [{start},{end}) not within {len(source)} bytes")
            data = source[start:end]
            part = upload.parts[number] = FakePart(data, _md5_etag(data), self.clock())
        return part.etag

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        async with self._request("CompleteMultipartUpload", key):
            upload = self._upload(key, upload_id)
            chosen = _chosen_parts(upload, parts)
            digest = hashlib.md5(b"".join(hashlib.md5(p.data).digest() for p in chosen)).hexdigest()
            etag = f'"{digest}-{len(chosen)}"'
            data = b"".join(p.data for p in chosen)
            self.objects[key] = FakeObject(data, upload.meta, etag, self.clock())
            del self.uploads[upload_id]
        return etag

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        async with self._request("AbortMultipartUpload", key):
            upload = self.uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self.uploads[upload_id]

    async def list_multipart(self, prefix: str) -> list[UploadInfo]:
        async with self._request("ListMultipartUploads", prefix):
            found = [u for u in self.uploads.values() if u.key.startswith(prefix)]
        found.sort(key=lambda u: (u.key.encode(), u.initiated))
        return [UploadInfo(u.key, u.upload_id, _millis(u.initiated)) for u in found]

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        async with self._request("ListParts", key):
            upload = self._upload(key, upload_id)
        return [
            PartInfo(n, len(p.data), p.etag, _millis(p.last_modified)) for n, p in sorted(upload.parts.items())
        ]


def _chosen_parts(upload: FakeUpload, parts: list[tuple[int, str]]) -> list[FakePart]:
    """The parts a CompleteMultipartUpload names, checked as S3 checks them."""
    if not parts:
        raise Rejected("CompleteMultipartUpload: InvalidRequest: you must specify at least one part")
    numbers = [n for n, _ in parts]
    if any(a >= b for a, b in zip(numbers, numbers[1:])):
        raise Rejected(f"CompleteMultipartUpload: InvalidPartOrder: {numbers}")
    chosen = []
    for number, etag in parts:
        part = upload.parts.get(number)
        if part is None or _bare(part.etag) != _bare(etag):
            raise Rejected(f"CompleteMultipartUpload: InvalidPart: part {number} with ETag {etag}")
        chosen.append(part)
    for number, part in zip(numbers[:-1], chosen[:-1]):
        if len(part.data) < MIN_PART:
            raise Rejected(f"CompleteMultipartUpload: EntityTooSmall: part {number} has {len(part.data)} bytes")
    return chosen


# ListObjectsV2 continuation tokens: opaque to callers (base64), they name where the last page
# ended: after a key, or after a common prefix (every key under it is skipped).
def _encode_token(last: str | ObjectInfo) -> str:
    marker = ("p" + last) if isinstance(last, str) else ("k" + last.key)
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _decode_token(token: str) -> tuple[str, str | None]:
    try:
        marker = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise Rejected("ListObjectsV2: InvalidArgument: the continuation token provided is incorrect") from None
    if marker[:1] == "k":
        return marker[1:], None
    if marker[:1] == "p":
        return marker[1:], marker[1:]
    raise Rejected("ListObjectsV2: InvalidArgument: the continuation token provided is incorrect")
