"""The bulk data plane: UploadPart and ranged GetObject through awscrt's native S3 client.

Why not aiobotocore for these two: its bodies are handled in Python on the S3 thread, and every
byte costs GIL time that the FUSE thread then waits for. Measured with `bench.anatomy` (1 GiB
push under the cloud profile): the daemon's S3 thread spent 1.2-1.8 CPU-s per GiB on
UploadPart (aiohttp copies each 8 MiB body into a BytesIO and writes it to the socket under the
GIL), and py-spy showed the FUSE thread waiting for the GIL behind it. awscrt (the AWS C
runtime: aws-c-s3, aws-c-http, aws-c-auth) signs, sends, retries and receives on its own
threads without the GIL: 128 parts of 8 MiB, 16 in flight, cost 0.72-0.79 CPU-s in total, and
its one call into Python per part is a ``preadv`` from the staging file straight into the
CRT's buffer (no Python copy). A ranged GET comes back as one ``bytes`` per request, which the
chunk cache keeps as is.

Everything else (HEAD, LIST, PUT of small objects, conditional writes, copies, the multipart
control requests) stays on aiobotocore, in :mod:`ocifs.s3`, which owns the errors, the
counters and the mount-wide request limit; this module only moves bytes and reports what S3
answered as :mod:`ocifs.store` errors.

Endpoint and credentials come from the aiobotocore client (so ``--endpoint-url``, ``--region``,
``--profile`` and instance roles mean the same thing on both planes), and :meth:`S3.open_blocking`
checks at mount time that both planes give the same answer for one missing key before it uses
this one.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ocifs import store

log = logging.getLogger(__name__)

# A request that has not finished after this long plus its size at REQUEST_FLOOR_RATE is
# cancelled and reported as Unavailable (the CRT has no read timeout of its own; aiobotocore's
# is 60 s without a byte). 8 MiB: 92 s.
REQUEST_TIMEOUT = 60.0
REQUEST_FLOOR_RATE = 256 * 1024  # bytes per second


class StagedRange(Protocol):
    """A part body that lies in a local file: read by the CRT straight into its buffer.

    Still a :data:`ocifs.store.BodySource` (calling it returns the bytes), so every other
    ObjectStore takes it unchanged.
    """

    fd: int
    start: int
    end: int

    def __call__(self) -> bytes: ...


@dataclass(frozen=True)
class Endpoint:
    """Where the data plane sends requests: ``scheme://host[:port]`` and the path prefix of the
    bucket (``/bucket`` for path-style addressing, ``""`` for virtual-hosted)."""

    scheme: str
    host: str
    bucket_path: str

    @classmethod
    def for_bucket(cls, endpoint_url: str, bucket: str, path_style: bool) -> "Endpoint":
        u = urllib.parse.urlsplit(endpoint_url)
        if path_style or "." in bucket:
            return cls(u.scheme, u.netloc, "/" + bucket)
        return cls(u.scheme, f"{bucket}.{u.netloc}", "")

    def path(self, key: str, query: str = "") -> str:
        p = self.bucket_path + "/" + urllib.parse.quote(key.encode("utf-8", "surrogateescape"), safe="/~")
        return p + ("?" + query if query else "")


# --- what S3 answered, as ocifs.store errors (both planes use this table) ---------------------
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_PRECONDITION = {"412", "PreconditionFailed"}
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


class BodyError(store.BadResponse):
    """A response body that broke off or had the wrong length: worth another try."""


def error_for(what: str, code: str, status: str, msg: str) -> store.StoreError:
    """The :mod:`ocifs.store` error for an S3 error ``code`` / HTTP ``status``."""
    if code == "NoSuchUpload":
        return store.NoSuchUpload(f"{what}: no such multipart upload")
    if code == "NoSuchBucket":
        return store.NoSuchBucket(f"{what}: no such bucket")
    if code in _NOT_FOUND or status == "404":
        return store.NotFound(f"{what}: {msg}")
    if code in DENIED_CODES or status == "403":
        return store.Denied(f"{what}: access denied ({code})")
    if code in _PRECONDITION or status == "412" or code == "ConditionalRequestConflict":
        return store.PreconditionFailed(f"{what}: precondition failed ({code})")
    if code == "NotImplemented" or status == "501":
        return store.Unsupported(f"{what}: not implemented by this endpoint ({code})")
    if status.startswith("4"):
        return store.Rejected(f"{what}: {code or status}: {msg}")
    return store.Unavailable(f"{what}: {code or status}: {msg}")


def _error_response(op: str, status: int, body: bytes | None, fallback: str) -> store.StoreError:
    code = m.group(1).decode(errors="replace") if body and (m := _CODE.search(body)) else ""
    msg = m.group(1).decode(errors="replace") if body and (m := _MESSAGE.search(body)) else fallback
    return error_for(op, code, str(status), msg)


class _RangeStream:
    """The CRT reads a request body through this (on one of its threads): ``preadv`` of a
    private duplicate of the staging file's descriptor, straight into the CRT's buffer."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd = os.dup(fd)  # the staging file may be closed while the request runs
        self.start, self.pos, self.end = start, start, end
        self.error: BaseException | None = None

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.end - self.pos)
        if n <= 0:
            return 0
        try:
            k = os.preadv(self.fd, [memoryview(buf)[:n]], self.pos)
        except OSError as exc:
            self.error = exc
            raise
        if k == 0:  # the staging file is shorter than what was acknowledged: never send less
            self.error = store.BadResponse(f"staging file ends at {self.pos}, part needs {self.end}")
            raise self.error
        self.pos += k
        return k

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(self.end - self.pos if n < 0 else min(n, self.end - self.pos))
        return bytes(buf[: self.readinto(buf)])

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = self.start + offset if whence == 0 else (self.pos + offset if whence == 1 else self.end + offset)
        return self.pos - self.start

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _BufferStream(_RangeStream):
    """A body that is already in memory (bytes, bytearray, memoryview)."""

    def __init__(self, data: store.Body) -> None:  # noqa: D107 - no descriptor to duplicate
        self.view = memoryview(data).cast("B")
        self.start, self.pos, self.end = 0, 0, len(self.view)
        self.fd = -1
        self.error = None

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.end - self.pos)
        memoryview(buf)[:n] = self.view[self.pos : self.pos + n]
        self.pos += n
        return n


class _Response:
    """What one CRT request delivered, filled in on a CRT thread."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[tuple[int, bytes]] = []
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        self.status = status_code
        self.headers = {k.lower(): v for k, v in headers}

    def on_body(self, chunk: bytes, offset: int, **_: Any) -> None:
        self.chunks.append((offset, chunk))

    def on_done(self, error: BaseException | None = None, status_code: int | None = None,
                error_body: bytes | None = None, **_: Any) -> None:
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(_Failed(error, status_code, error_body))


class _Failed(Exception):
    def __init__(self, error: BaseException, status: int | None, body: bytes | None) -> None:
        super().__init__(str(error))
        self.error, self.status, self.body = error, status, body


class CrtDataPlane:
    """UploadPart and ranged GetObject of one bucket through an ``awscrt.s3.S3Client``."""

    def __init__(
        self,
        endpoint: Endpoint,
        region: str,
        credentials: Callable[[], tuple[str, str, str | None]],
        concurrency: int,
        ca_file: str | None = None,
    ) -> None:
        from awscrt import auth, io, s3

        self._s3 = s3
        self._io = io
        self.endpoint = endpoint
        # Two event-loop threads move 1.4 GB/s here; more only compete with the FUSE thread.
        elg = io.EventLoopGroup(min(2, os.cpu_count() or 1))
        bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))

        def provide() -> Any:
            key, secret, token = credentials()
            return auth.AwsCredentials(key, secret, token)

        self._signing = s3.create_default_s3_signing_config(
            region=region, credential_provider=auth.AwsCredentialsProvider.new_delegate(provide)
        )
        tls = None
        if endpoint.scheme == "https":
            opts = io.TlsContextOptions()
            if ca_file:
                opts.override_default_trust_store_from_path(None, ca_file)
            tls = io.ClientTlsContext(opts).new_connection_options()
        self._client = s3.S3Client(
            bootstrap=bootstrap,
            region=region,
            tls_mode=s3.S3RequestTlsMode.ENABLED if tls is not None else s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls,
            signing_config=self._signing,
            # Sizes the CRT's connection pool; one S3 connection carries ~90 MB/s (0.7 Gbit/s).
            throughput_target_gbps=max(1.0, concurrency * 0.7),
        )
        self._closed = threading.Event()

    def close(self) -> None:
        """Release the client (its threads end once requests in flight are done)."""
        if self._closed.is_set():
            return
        self._closed.set()
        shutdown = self._client.shutdown_event
        del self._client
        shutdown.wait(10)

    # --- one request --------------------------------------------------------------------------
    def _start(self, op: str, method: str, path: str, headers: list[tuple[str, str]], body: _RangeStream | None) -> tuple[_Response, Any]:
        from awscrt import http

        resp = _Response()
        hdrs = http.HttpHeaders([("host", self.endpoint.host), *headers])
        req = http.HttpRequest(method, path, hdrs, body)
        handle = self._client.make_request(
            type=self._s3.S3RequestType.DEFAULT, operation_name=op, request=req,
            on_headers=resp.on_headers, on_body=resp.on_body if method == "GET" else None, on_done=resp.on_done,
        )
        return resp, handle

    async def _run(self, op: str, method: str, path: str, headers: list[tuple[str, str]], size: int,
                   body: _RangeStream | None = None) -> _Response:
        """Start a request and wait for it in trio; a cancelled trio task cancels it."""
        try:
            resp, handle = self._start(op, method, path, headers, body)
        except BaseException:
            if body is not None:
                body.close()
            raise
        if body is not None:
            resp.done.add_done_callback(lambda _: body.close())
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass

        resp.done.add_done_callback(wake)
        try:
            with trio.move_on_after(REQUEST_TIMEOUT + size / REQUEST_FLOOR_RATE) as deadline:
                await finished.wait()
        except BaseException:
            handle.cancel()
            raise
        if deadline.cancelled_caught:
            handle.cancel()
            raise store.Unavailable(f"{op}: no answer after {REQUEST_TIMEOUT + size / REQUEST_FLOOR_RATE:.0f} s")
        try:
            resp.done.result()
        except _Failed as f:
            if body is not None and body.error is not None:
                raise store.BadResponse(f"{op}: reading the body failed: {body.error}") from None
            if f.status:
                raise _error_response(op, f.status, f.body, str(f.error)) from None
            raise store.Unavailable(f"{op}: {f.error}") from None
        return resp

    def probe_blocking(self, key: str, timeout: float = 30.0) -> store.StoreError | None:
        """GET one byte of ``key`` outside trio (mount time); the error S3 answered, or None."""
        resp, handle = self._start("GetObject", "GET", self.endpoint.path(key), [("range", "bytes=0-0")], None)
        try:
            resp.done.result(timeout)
        except concurrent.futures.TimeoutError:
            handle.cancel()
            return store.Unavailable(f"GetObject: no answer in {timeout:.0f} s")
        except _Failed as f:
            return _error_response("GetObject", f.status, f.body, str(f.error)) if f.status else store.Unavailable(str(f.error))
        return None

    # --- the two operations -------------------------------------------------------------------
    async def upload_part(self, key: str, upload_id: str, number: int, body: store.Body | StagedRange) -> tuple[str, int]:
        """Send one part; returns (ETag, bytes sent)."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            stream: _RangeStream = _BufferStream(body)
        else:
            stream = _RangeStream(body.fd, body.start, body.end)
        size = stream.end - stream.start
        query = f"partNumber={number}&uploadId={urllib.parse.quote(upload_id, safe='')}"
        resp = await self._run("UploadPart", "PUT", self.endpoint.path(key, query),
                               [("content-length", str(size))], size, stream)
        etag = resp.headers.get("etag")
        if not etag:
            raise store.BadResponse(f"UploadPart {key} part {number}: no ETag in the answer")
        return etag, size

    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end) of ``key``, or the error S3 answered. BadResponse if the object
        is shorter (no retry can help), BodyError if the body had the wrong length (the caller
        retries those)."""
        want = end - start
        headers = [("range", f"bytes={start}-{end - 1}")]
        if etag:
            headers.append(("if-match", etag))
        resp = await self._run("GetObject", "GET", self.endpoint.path(key), headers, want)
        length = int(resp.headers.get("content-length", want))
        if length < want:
            raise store.BadResponse(f"GetObject {key} [{start},{end}): the object ends before {end}")
        if len(resp.chunks) == 1 and resp.chunks[0][0] == 0 and len(resp.chunks[0][1]) == want:
            return resp.chunks[0][1]  # the usual case: one bytes object, kept as is
        got = sum(len(c) for _, c in resp.chunks)
        if got != want:
            raise BodyError(f"GetObject {key} [{start},{end}): got {got} bytes, expected {want}")
        buf = bytearray(want)
        for offset, chunk in resp.chunks:
            buf[offset : offset + len(chunk)] = chunk
        return bytes(buf)
