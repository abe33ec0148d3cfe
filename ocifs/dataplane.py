"""The bulk data plane: UploadPart and ranged GetObject on plain HTTP/1.1 connections, one per
worker thread, off the FUSE thread and nearly off the GIL.

Why not aiobotocore for these two: it handles bodies in Python on the S3 thread, and every
byte costs GIL time the FUSE thread then waits for (py-spy, 1 GiB push: aiohttp copying each
8 MiB part into a BytesIO and writing it to the socket took half the S3 thread). Here a part
goes from the staging file to the socket with ``sendfile`` (no copy in this process, no GIL),
and a ranged GET is read with ``readinto`` straight into the buffer the chunk cache keeps (one
copy, by the kernel, GIL released while it waits). Per GiB moved, measured with 16 requests of
8 MiB in flight through the cloud profile (1 GiB, this box, same run): uploads 0.53-0.58
CPU-s here, 0.74-1.04 with awscrt's S3 client (the first native plane tried: it copies every
body twice more, see bench/README.md) and ~1.4 with aiobotocore; GETs 0.84 here, 1.07-1.44
awscrt, 1.09-1.21 aiobotocore.

Only these two requests come here. Everything else (HEAD, LIST, small PUTs, conditional
writes, copies, the multipart control requests) stays on aiobotocore, in :mod:`ocifs.s3`,
which owns the request limit and the counters and gives this plane its endpoint, region and
credentials (so ``--endpoint-url``, ``--region``, ``--profile`` and instance roles mean the
same on both); at mount both planes must answer one GET of a missing key alike before this one
is used. Requests are signed with SigV4 and ``UNSIGNED-PAYLOAD`` (as the aiobotocore client
is configured), retried on connection errors and 5xx like botocore's standard mode, and give
up after ``READ_TIMEOUT`` seconds without a byte, like aiobotocore's ``read_timeout``.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import hmac
import http.client
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ocifs import store, trace
from ocifs.tasks import wait_future

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_TIMEOUT = 60.0  # seconds without progress before a request fails (aiobotocore's read_timeout)
CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 20.0  # the mount-time probe: no answer by then and bulk transfers stay on aiobotocore
ATTEMPTS = 5  # as botocore's standard retry mode: 5xx, throttling, broken connections
BACKOFF = (0.05, 2.0)  # first and longest wait between attempts (full jitter)


class StagedRange(Protocol):
    """A part body that lies in a local file: sent from it with ``sendfile``.

    Still a :data:`ocifs.store.BodySource` (calling it returns the bytes), so every other
    ObjectStore takes it unchanged.
    """

    fd: int
    start: int
    end: int

    def __call__(self) -> bytes: ...


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``scheme://host[:port]`` and the path prefix of the bucket (``/bucket``
    for path-style addressing, ``""`` for virtual-hosted)."""

    scheme: str
    host: str  # the Host header: name[:port]
    bucket_path: str

    @classmethod
    def for_bucket(cls, endpoint_url: str, bucket: str, path_style: bool) -> "Endpoint":
        u = urllib.parse.urlsplit(endpoint_url)
        if path_style or "." in bucket:  # a dotted bucket name breaks the TLS name check
            return cls(u.scheme, u.netloc, "/" + bucket)
        return cls(u.scheme, f"{bucket}.{u.netloc}", "")

    def path(self, key: str) -> str:
        return self.bucket_path + "/" + urllib.parse.quote(key.encode("utf-8", "surrogateescape"), safe="/~")

    @property
    def address(self) -> tuple[str, int]:
        name, _, port = self.host.rpartition(":") if self.host.rpartition(":")[2].isdigit() else (self.host, "", "")
        return name, int(port) if port else (443 if self.scheme == "https" else 80)


# --- what S3 answered ------------------------------------------------------------------------
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


def _error_response(op: str, status: int, body: bytes | None, fallback: str) -> store.StoreError:
    code = m.group(1).decode(errors="replace") if body and (m := _CODE.search(body)) else ""
    msg = m.group(1).decode(errors="replace") if body and (m := _MESSAGE.search(body)) else fallback
    return store.error_for(op, code, str(status), msg)


# --- SigV4 ------------------------------------------------------------------------------------
Credentials = tuple[str, str, str | None]  # access key, secret key, session token


def sign(method: str, host: str, path: str, query: dict[str, str], headers: dict[str, str], creds: Credentials,
         region: str, now: dt.datetime | None = None) -> dict[str, str]:
    """``headers`` plus SigV4 authorization for S3 with an unsigned payload (header names are
    lower case; ``path`` is already percent-encoded, S3 does not encode it twice)."""
    access, secret, token = creds
    amz = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    out = {**headers, "host": host, "x-amz-date": amz, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    if token:
        out["x-amz-security-token"] = token
    names = sorted(out)
    q = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    canonical = "\n".join([method, path, q, "".join(f"{k}:{' '.join(out[k].split())}\n" for k in names),
                           ";".join(names), "UNSIGNED-PAYLOAD"])
    scope = f"{amz[:8]}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + secret).encode()
    for part in (amz[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return out


# --- one request ------------------------------------------------------------------------------
class _Cancelled(Exception):
    """The trio side gave up on the request."""


class _Job:
    """A request a worker thread runs; the trio side may cancel it (it then closes the
    connection under the worker, which stops at once)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.conn: http.client.HTTPConnection | None = None
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            sock = self.conn.sock if self.conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: Any  # the buffer read into (2xx GET), the error body (bytes), or None


class HttpDataPlane:
    """UploadPart and ranged GetObject of one bucket, on worker threads with keep-alive
    connections (at most one per worker; the S3 class bounds requests in flight)."""

    def __init__(self, endpoint: Endpoint, region: str, credentials: Callable[[], Credentials], workers: int,
                 ca_file: str | None = None) -> None:
        self.endpoint = endpoint
        self.region = region
        self._credentials = credentials
        self._tls = ssl.create_default_context(cafile=ca_file) if endpoint.scheme == "https" else None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ocifs-data", initializer=trace.name_os_thread, initargs=("ocifs-data",)
        )
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._all_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._all_lock:
            for c in self._all:
                c.close()
            self._all.clear()

    # --- connections (one per worker thread) --------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            host, port = self.endpoint.address
            if self._tls is not None:
                conn = http.client.HTTPSConnection(host, port, timeout=READ_TIMEOUT, context=self._tls)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
            self._local.conn = conn
            with self._all_lock:
                self._all.add(conn)
        if conn.sock is None:
            conn.timeout = CONNECT_TIMEOUT
            conn.connect()
            conn.sock.settimeout(READ_TIMEOUT)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    # --- the worker side ----------------------------------------------------------------------
    def _exchange(self, job: _Job, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                  send: Callable[[http.client.HTTPConnection], None] | None, into: Callable[[int], Any] | None) -> _Answer:
        """One attempt: send the request (``send`` writes the body), read the answer (a 2xx
        body goes into the buffer ``into(length)`` returns)."""
        conn = self._connection()
        with job.lock:
            if job.cancelled:
                raise _Cancelled
            job.conn = conn
        signed = sign(method, self.endpoint.host, path, query, headers, self._credentials(), self.region)
        url = path + ("?" + "&".join(f"{k}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query.items()) if query else "")
        conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        for k, v in signed.items():
            conn.putheader(k, v)
        conn.endheaders()
        if send is not None:
            try:
                send(conn)
            except OSError:
                # S3 may refuse before it reads the body (403, 400) and close the connection:
                # its answer says more than the broken pipe.
                try:
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    resp = None
                if resp is None:
                    raise
                return _Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if 200 <= resp.status < 300 and into is not None:
            want = int(hdrs.get("content-length", -1))
            buf = into(want)
            view, pos = memoryview(buf), 0
            while pos < len(view):
                n = resp.readinto(view[pos:])
                if not n:
                    raise store.BodyError(f"body broke off after {pos} of {len(view)} bytes")
                pos += n
            resp.read()  # the rest (nothing): frees the connection for the next request
            return _Answer(resp.status, hdrs, buf)
        return _Answer(resp.status, hdrs, resp.read())

    def _attempts(self, job: _Job, op: str, *args: Any) -> _Answer:
        """Retry what botocore's standard mode retries: broken connections, 5xx, throttling."""
        for attempt in range(ATTEMPTS):
            try:
                answer = self._exchange(job, *args)
                if answer.status < 500 and answer.status != 429:
                    return answer
                why = f"HTTP {answer.status}"
                if attempt == ATTEMPTS - 1:
                    return answer
            except (_Cancelled, store.StoreError):
                self._drop()
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if job.cancelled:
                    raise _Cancelled from None
                if attempt == ATTEMPTS - 1:
                    raise store.Unavailable(f"{op}: {type(exc).__name__}: {exc}") from None
                why = f"{type(exc).__name__}: {exc}"
            log.info("%s: retrying after %s", op, why)
            time.sleep(random.uniform(0, min(BACKOFF[1], BACKOFF[0] * 2**attempt)))
        raise AssertionError("unreachable")

    # --- the trio side ------------------------------------------------------------------------
    async def _run(self, fn: Callable[[_Job], T]) -> T:
        """Run ``fn`` on a worker; a cancelled trio task cancels the request (and does not wait)."""
        job = _Job()
        return await wait_future(self._pool.submit(fn, job), job.cancel)

    async def upload_part(self, key: str, upload_id: str, number: int, body: store.Body | StagedRange) -> tuple[str, int]:
        """Send one part; returns (ETag, bytes sent)."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            view = memoryview(body).cast("B")
            size, send = len(view), (lambda conn: conn.sock.sendall(view))
        else:
            size, send = body.end - body.start, self._sender(body)
        query = {"partNumber": str(number), "uploadId": upload_id}
        path = self.endpoint.path(key)

        def go(job: _Job) -> _Answer:
            return self._attempts(job, "UploadPart", "PUT", path, query, {"content-length": str(size)}, send, None)

        answer = await self._run(go)
        if answer.status != 200:
            raise _error_response("UploadPart", answer.status, answer.body, f"HTTP {answer.status}")
        etag = answer.headers.get("etag")
        if not etag:
            raise store.BadResponse(f"UploadPart {key} part {number}: no ETag in the answer")
        return etag, size

    def _sender(self, body: StagedRange) -> Callable[[http.client.HTTPConnection], None]:
        """Send [start, end) of the staging file: ``sendfile`` (kernel to kernel) in plain
        HTTP; through TLS one ``preadv`` into a buffer and ``sendall``. A file shorter than
        the range (what was acknowledged to the writer is gone) fails the part: never fewer
        bytes than the Content-Length promised."""
        fd = os.dup(body.fd)  # the staging file may be closed while the request runs
        start, end = body.start, body.end

        def send(conn: http.client.HTTPConnection) -> None:
            if self._tls is None:
                with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                    sent = conn.sock.sendfile(f, start, end - start)
            else:
                buf = bytearray(end - start)
                sent = os.preadv(fd, [buf], start)
                conn.sock.sendall(memoryview(buf)[:sent])
            if sent != end - start:
                raise store.BadResponse(f"staging file ends at {start + sent}, the part needs {end}")

        weakref.finalize(send, os.close, fd)  # once no attempt can run it any more
        return send

    async def get_range(self, key: str, start: int, end: int, etag: str | None) -> bytes | bytearray:
        """Bytes [start, end) of ``key``, or the error S3 answered. BadResponse if the object
        is shorter (no retry can help), BodyError if the body had the wrong length (the
        caller retries those)."""
        want = end - start
        headers = {"range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["if-match"] = etag
        path = self.endpoint.path(key)

        def into(length: int) -> bytearray:
            if length != want:  # shorter: the object ends early; longer: the range was ignored
                raise (store.BadResponse(f"GetObject {key} [{start},{end}): the object ends before {end}") if 0 <= length < want
                       else store.BodyError(f"GetObject {key} [{start},{end}): {length} bytes instead of {want}"))
            return bytearray(want)

        def go(job: _Job) -> _Answer:
            return self._attempts(job, "GetObject", "GET", path, {}, headers, None, into)

        answer = await self._run(go)
        if answer.status not in (200, 206):
            raise _error_response("GetObject", answer.status, answer.body, f"HTTP {answer.status}")
        return answer.body if want > 65536 else bytes(answer.body)

    def probe_blocking(self, key: str) -> store.StoreError | None:
        """GET one byte of ``key`` outside trio (mount time); the error S3 answered, or None."""
        try:
            answer = self._pool.submit(self._attempts, _Job(), "GetObject", "GET", self.endpoint.path(key), {},
                                       {"range": "bytes=0-0"}, None, None).result(PROBE_TIMEOUT)
        except store.StoreError as exc:
            return exc
        except Exception as exc:
            return store.Unavailable(f"GetObject: {type(exc).__name__}: {exc}")
        return None if answer.status < 300 else _error_response("GetObject", answer.status, answer.body, f"HTTP {answer.status}")

