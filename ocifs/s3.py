"""The only module that talks to S3.

aiobotocore runs on asyncio; the filesystem runs on trio (pyfuse3's loop). The S3 client lives
on its own asyncio event loop in a dedicated thread, and trio tasks await its coroutines through
:meth:`S3.call`, which parks the trio task on a trio event that the asyncio side sets when the
request finishes. No thread is blocked per request, and cancelling the trio task cancels the
asyncio task. Why this bridge and not trio-asyncio: see README, "Design".

The bulk requests (UploadPart, ranged GetObject) go through the native data plane
(:mod:`ocifs.dataplane`: worker threads, ``sendfile`` and ``readinto``, off the GIL) when it
answers like aiobotocore at mount time; ``OCIFS_DATA_PLANE=aiobotocore`` keeps them on
aiobotocore too.

It implements :class:`ocifs.store.ObjectStore`. Everything here raises :mod:`ocifs.store` errors
(what S3 answered, no errno), never botocore ones, and counts every request by type in
:attr:`S3.stats` (what tests and benchmarks read).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import logging
import os
import random
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import trio
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.handlers import add_expect_header

from ocifs import errors, store, trace
from ocifs.config import Config
from ocifs.dataplane import Endpoint, HttpDataPlane
from ocifs.store import ListPage, ObjectInfo, PartInfo, UploadInfo
from ocifs.tasks import wait_future

log = logging.getLogger(__name__)

T = TypeVar("T")

BODY_RETRIES = 4  # attempts at a ranged GET whose body broke off
ATTEMPTS = 5  # botocore's attempts at one request (standard retry mode)
MAX_BACKOFF = 20.0  # seconds: botocore's cap on the wait before an attempt
# Seconds between refreshes of the credentials the data plane signs with (botocore refreshes
# temporary credentials 15 minutes before they expire, so a minute is early enough).
CREDENTIALS_REFRESH = 60.0


class AsyncioThread:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ocifs-s3", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        trace.name_os_thread("ocifs-s3")
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(_unretrieved)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_blocking(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` to completion from a thread that is not the loop's (CLI checks).

        After ``timeout`` it is cancelled on the loop and unwound before TimeoutError (a task
        left pending would be destroyed with the loop, and asyncio would say so on stderr).
        """
        if timeout is None:
            return self.submit(coro).result()
        return self.submit(asyncio.wait_for(coro, timeout)).result(timeout + 10)

    async def run_in_trio(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await an asyncio coroutine from a trio task without blocking a thread."""
        return await wait_future(self.submit(coro))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def _unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The S3 loop's handler of errors nobody awaited: a connection that closed is one line.

    aiohttp sends a request body in a task of its own; when the connection closes before the
    headers of an ``Expect: 100-continue`` request are out (MinIO killed, a reset), that task
    fails and nobody retrieves its error. The request itself fails too and is retried or
    reported, so asyncio's traceback would say nothing more. Anything else keeps it.
    """
    exc = context.get("exception")
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        log.info("S3 connection closed while a request was sent (%s: %s)", type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)


def _parse_meta(meta: dict[str, str], last_modified: dt.datetime) -> tuple[float, int | None]:
    mtime = last_modified.timestamp()
    mode: int | None = None
    try:
        if "mtime" in meta:
            mtime = float(meta["mtime"])
        if "mode" in meta:
            mode = int(meta["mode"])
    except ValueError:
        pass
    return mtime, mode


def translate(exc: BaseException, what: str) -> store.StoreError:
    """Map a botocore/aiohttp exception to the :mod:`ocifs.store` error it means."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        msg = exc.response.get("Error", {}).get("Message", "") or code
        return store.error_for(what, code, status, msg)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return store.Denied(f"{what}: no usable credentials ({exc})")
    if isinstance(exc, ParamValidationError):  # refused before it was sent (bad key, metadata)
        return store.Rejected(f"{what}: {exc}")
    if isinstance(exc, EndpointConnectionError):
        return store.Unavailable(f"{what}: cannot reach endpoint ({exc})")
    return store.Unavailable(f"{what}: {type(exc).__name__}: {exc}")


class S3:
    """An aiobotocore client for one bucket, usable from trio."""

    def __init__(self, cfg: Config, data_plane: str | None = None) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.stats: collections.Counter[str] = collections.Counter()
        self._aio = AsyncioThread()
        self._client: Any = None
        self._exit_stack: Any = None
        # "auto": the native data plane when it passes the mount-time check; "native": it or
        # fail; "aiobotocore": never.
        self.data_plane_mode = data_plane or os.environ.get("OCIFS_DATA_PLANE", "auto")
        self.plane: HttpDataPlane | None = None
        self._credentials: Any = None  # aiobotocore's (maybe refreshable) credentials
        self._frozen: tuple[str, str, str | None] | None = None  # what the data plane signs with
        self._refresher: asyncio.Task[None] | None = None
        self.limiter: trio.CapacityLimiter | None = None
        # Part bodies held in memory at once, mount-wide (each is part_size bytes): bounds the
        # daemon's memory when many files are written at once.
        self.part_memory = trio.CapacityLimiter(max(2, cfg.concurrency // 4))

    # --- lifecycle ----------------------------------------------------------------------------
    async def _open(self) -> None:
        session = AioSession(profile=self.cfg.profile)
        config = AioConfig(
            max_pool_connections=max(10, self.cfg.concurrency * 2),
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": ATTEMPTS},
            s3={
                "addressing_style": "path" if self.cfg.endpoint_url else "auto",
                # No SHA-256 of every body for SigV4 (UNSIGNED-PAYLOAD): with checksums off,
                # botocore would hash each part even over HTTPS. What ocifs publishes under
                # blobs/ is verified against its digest before upload; TLS (or the local link)
                # carries it. Measured: ~20% of the daemon's CPU on a push (py-spy).
                "payload_signing_enabled": False,
            },
            # Skip botocore's per-request payload checksums (CRC32 of every byte): same reason.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        ctx = session.create_client(
            "s3", endpoint_url=self.cfg.endpoint_url, region_name=self.cfg.region, config=config
        )
        self._exit_stack = ctx
        self._client = await ctx.__aenter__()
        self._client.meta.events.register("needs-retry.s3", self._needs_retry)
        # botocore asks for "Expect: 100-continue" on every PutObject and UploadPart: the
        # server answers the headers before the body is sent, one more round trip per request
        # (measured through a 25 ms link: a small PUT 60 ms instead of 37; an `oras push`
        # closes seven files in a row). ocifs's bodies are at most a part; a request refused
        # late costs that part's bytes once, never a round trip on every write.
        self._client.meta.events.unregister("before-call.s3", add_expect_header)
        self._credentials = await session.get_credentials()

    async def _start_signing(self) -> None:
        """Frozen credentials for the data plane to sign with, refreshed in the background.
        Only a mount opens the plane: ls, gc, fsck and doctor start no refresher."""
        if self._credentials is not None and self._refresher is None:
            await self._refresh_credentials()
            self._refresher = asyncio.get_running_loop().create_task(self._keep_credentials_fresh())

    async def _stop_signing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def _refresh_credentials(self) -> None:
        fc = await self._credentials.get_frozen_credentials()
        self._frozen = (fc.access_key, fc.secret_key, fc.token)

    async def _keep_credentials_fresh(self) -> None:
        while True:
            await asyncio.sleep(CREDENTIALS_REFRESH)
            try:
                await self._refresh_credentials()
            except Exception as exc:  # the data plane keeps the last ones; its requests say 403
                log.warning("could not refresh credentials for the data plane: %s", exc)

    def _signing_credentials(self) -> tuple[str, str, str | None]:
        assert self._frozen is not None
        return self._frozen

    def _needs_retry(self, attempts: int = 0, **kw: Any) -> float | None:
        """botocore asks after every attempt whether to retry. Its own (standard mode) handler
        answers first; this one counts the attempts that failed, and retries a 429 (which
        botocore does not) with botocore's backoff: a random wait of up to 2^(attempt-1) s,
        at most MAX_BACKOFF."""
        response, caught = kw.get("response"), kw.get("caught_exception")
        status = response[1].get("ResponseMetadata", {}).get("HTTPStatusCode", 200) if response is not None else 200
        if caught is not None or status >= 500 or status == 429:
            self.stats["retries"] += 1  # close enough for a metric: the last attempt counts too
        if status == 429 and attempts < ATTEMPTS:
            return random.random() * min(MAX_BACKOFF, 2.0 ** (attempts - 1))
        return None

    async def _close(self) -> None:
        await self._stop_signing()
        if self._exit_stack is not None:
            await self._exit_stack.__aexit__(None, None, None)
            self._exit_stack = None

    def open_blocking(self) -> None:
        """The aiobotocore client: every request goes there until :meth:`open_data_plane_blocking`
        (the mount calls it once the bucket answered; ls, gc, fsck and doctor never need it)."""
        self._aio.run_blocking(self._open(), timeout=60)

    def open_data_plane_blocking(self) -> None:
        """Bulk transfers on the native data plane, if it works here (else they stay put)."""
        if self.data_plane_mode != "aiobotocore":
            self._aio.run_blocking(self._start_signing(), timeout=60)
            self.plane = self._open_plane()
            if self.plane is None:
                self._aio.run_blocking(self._stop_signing(), timeout=10)

    def _open_plane(self) -> HttpDataPlane | None:
        """The native data plane, if it answers one probe exactly as aiobotocore does (same
        endpoint, region and credentials); else None (said once)."""
        required = self.data_plane_mode == "native"
        url = self.cfg.endpoint_url or self._client.meta.endpoint_url
        why = ""
        if self._frozen is None:
            why = "no credentials to sign with"
        elif urllib.request.getproxies() and not urllib.request.proxy_bypass(urllib.parse.urlsplit(url).hostname or ""):
            why = "an HTTP(S) proxy is configured (botocore's job)"
        if why:
            if required:
                raise errors.OcifsError(f"data plane native: {why}")
            log.info("bulk transfers use aiobotocore (%s)", why)
            return None
        plane = HttpDataPlane(
            Endpoint.for_bucket(url, self.bucket, path_style=self.cfg.endpoint_url is not None),
            self._client.meta.region_name or "us-east-1",
            self._signing_credentials,
            self.cfg.concurrency,
            ca_file=os.environ.get("AWS_CA_BUNDLE"),
        )
        probe = f"{self.cfg.prefix}.ocifs-probe-{uuid.uuid4().hex}"
        ours = plane.probe_blocking(probe)
        theirs = self._aio.run_blocking(self._probe(probe), timeout=60)
        if type(ours) is type(theirs):
            log.info("bulk transfers use the native data plane")
            return plane
        plane.close()
        why = f"a GET of a missing key answered {type(ours).__name__} ({ours}), aiobotocore {type(theirs).__name__}"
        if required:
            raise errors.OcifsError(f"data plane native: {why}")
        log.warning("bulk transfers use aiobotocore: the native data plane does not work here: %s", why)
        return None

    async def _probe(self, key: str) -> BaseException | None:
        try:
            await self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
        except Exception as exc:
            return translate(exc, "GetObject")
        return None

    def close_blocking(self) -> None:
        if self.plane is not None:
            self.plane.close()
            self.plane = None
        try:
            self._aio.run_blocking(self._close(), timeout=30)
        except Exception:  # closing a broken session must not mask the real error
            log.debug("closing the S3 session failed", exc_info=True)
        self._aio.close()

    def check_bucket_blocking(self, timeout: float = 20.0) -> None:
        """Fail fast (BucketError with one clear line) if the bucket is unusable."""
        try:
            self._aio.run_blocking(self._check_bucket(), timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise errors.BucketError(
                f"endpoint {self.cfg.endpoint_url or 'AWS S3'} did not answer within {timeout:.0f} s"
            ) from None

    async def _check_bucket(self) -> None:
        # A client of its own that gives up quickly: a wrong endpoint should be one line in
        # seconds, not five retries with backoff.
        session = AioSession(profile=self.cfg.profile)
        config = AioConfig(
            connect_timeout=5,
            read_timeout=15,
            retries={"mode": "standard", "max_attempts": 2},
            s3={"addressing_style": "path" if self.cfg.endpoint_url else "auto"},
        )
        try:
            async with session.create_client(
                "s3", endpoint_url=self.cfg.endpoint_url, region_name=self.cfg.region, config=config
            ) as client:
                await client.list_objects_v2(Bucket=self.bucket, MaxKeys=1, Prefix=self.cfg.prefix)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise errors.BucketError(f"bucket {self.bucket!r} does not exist") from None
            if code in store.DENIED_CODES:
                raise errors.BucketError(
                    f"access to bucket {self.bucket!r} denied ({code}): check the credentials"
                ) from None
            raise errors.BucketError(f"bucket {self.bucket!r}: {code}") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise errors.BucketError(
                "no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile)"
            ) from None
        except EndpointConnectionError:
            raise errors.BucketError(
                f"cannot connect to endpoint {self.cfg.endpoint_url or 'AWS S3'}"
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise errors.BucketError(f"cannot use endpoint: {exc}") from None
        except ValueError as exc:  # botocore's check of the endpoint URL
            raise errors.BucketError(f"invalid endpoint: {exc}") from None

    # --- the trio-facing call -----------------------------------------------------------------
    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one aiobotocore request under the mount-wide concurrency limit; count it."""
        return await self._counted(op, lambda: self._aio.run_in_trio(self._guard(op, fn)))

    async def _counted(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one request (either plane) under the mount-wide concurrency limit; count it."""
        assert self.limiter is not None, "S3.limiter is set when the filesystem starts"
        async with self.limiter:
            self.stats[f"requests.{op}"] += 1
            t0 = trace.on() and trio.current_time()
            try:
                return await fn()
            except (store.NotFound, store.PreconditionFailed):
                raise  # answers, not failures
            except store.StoreError:
                self.stats[f"errors.{op}"] += 1
                raise
            finally:
                if t0:
                    trace.event("s3", op=op, seconds=f"{trio.current_time() - t0:.4f}")

    async def _guard(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except store.StoreError:
            raise
        except Exception as exc:
            raise translate(exc, op) from None

    # --- requests -----------------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo:
        async def go() -> ObjectInfo:
            r = await self._client.head_object(Bucket=self.bucket, Key=key)
            mtime, mode = _parse_meta(r.get("Metadata", {}), r["LastModified"])
            return ObjectInfo(key, r["ContentLength"], mtime, r["ETag"], mode, True)

        return await self.call("HeadObject", go)

    async def get(self, key: str) -> tuple[str, bytes]:
        """A whole (small) object and its ETag."""

        async def go() -> tuple[str, bytes]:
            r = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with r["Body"] as body:
                data = await body.read()
            if len(data) != r["ContentLength"]:
                raise store.BadResponse(f"GetObject {key}: short body")
            return r["ETag"], data

        etag, data = await self.call("GetObject", go)
        self.stats["bytes.in"] += len(data)
        return etag, data

    async def list_multipart(self, prefix: str) -> list[UploadInfo]:
        """Incomplete multipart uploads under ``prefix``."""

        async def go() -> list[UploadInfo]:
            out: list[UploadInfo] = []
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            while True:
                r = await self._client.list_multipart_uploads(**kw)
                for u in r.get("Uploads", []):
                    out.append(UploadInfo(u["Key"], u["UploadId"], u["Initiated"].timestamp()))
                if not r.get("IsTruncated"):
                    return out
                kw["KeyMarker"] = r.get("NextKeyMarker")
                kw["UploadIdMarker"] = r.get("NextUploadIdMarker")

        return await self.call("ListMultipartUploads", go)

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """The parts uploaded so far to an incomplete multipart upload."""

        async def go() -> list[PartInfo]:
            out: list[PartInfo] = []
            kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
            while True:
                r = await self._client.list_parts(**kw)
                for p in r.get("Parts", []):
                    out.append(PartInfo(p["PartNumber"], p["Size"], p["ETag"], p["LastModified"].timestamp()))
                if not r.get("IsTruncated"):
                    return out
                kw["PartNumberMarker"] = r.get("NextPartNumberMarker")

        return await self.call("ListParts", go)

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of ``key``; raises unless exactly that many bytes arrive.

        botocore retries a request only until its body starts; a body cut short (reset
        connection, proxy cut) is retried here, a few times, before the read fails.
        """
        want = end - start

        async def go() -> bytes:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
            if etag:
                kw["IfMatch"] = etag
            r = await self._client.get_object(**kw)
            if r.get("ContentLength", want) < want:  # the object is shorter: no retry can help
                raise store.BadResponse(f"GetObject {key} [{start},{end}): the object ends before {end}")
            # Read straight into one buffer: body.read() would hold every piece and the joined
            # copy at once (twice the chunk per request in flight).
            buf = bytearray(want)
            pos = 0
            try:
                async with r["Body"] as body:
                    async for piece in body.content.iter_chunked(1 << 20):
                        n = len(piece)
                        if pos + n > want:
                            raise store.BodyError(f"GetObject {key} [{start},{end}): body longer than asked")
                        buf[pos : pos + n] = piece
                        pos += n
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                raise store.BodyError(f"GetObject {key} [{start},{end}): body broke off after {pos} bytes ({type(exc).__name__})") from None
            if pos != want:
                raise store.BodyError(f"GetObject {key} [{start},{end}): got {pos} bytes, expected {want}")
            return bytes(buf) if want <= 65536 else buf  # type: ignore[return-value]

        plane = self.plane

        async def native() -> bytes:
            assert plane is not None
            return await self._guard("GetObject", lambda: plane.get_range(key, start, end, etag))

        for attempt in range(BODY_RETRIES):
            try:
                data = await (self._counted("GetObject", native) if plane is not None else self.call("GetObject", go))
                break
            except store.BodyError as exc:
                if attempt == BODY_RETRIES - 1:
                    raise
                self.stats["retries"] += 1
                log.info("retrying GetObject %s [%d,%d) after: %s", key, start, end, exc)
                await trio.sleep(0.1 * 2**attempt)
        self.stats["bytes.in"] += len(data)
        return data

    async def list_page(
        self, prefix: str, token: str | None = None, delimiter: str | None = "/", max_keys: int = 1000
    ) -> ListPage:
        async def go() -> ListPage:
            kw: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": prefix,
                "MaxKeys": max_keys,
            }
            if delimiter:
                kw["Delimiter"] = delimiter
            if token:
                kw["ContinuationToken"] = token
            r = await self._client.list_objects_v2(**kw)
            # botocore asks for EncodingType=url itself and decodes Key/Prefix, so any byte a
            # key holds survives XML; keys arrive as str.
            prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            objs = [
                ObjectInfo(o["Key"], o["Size"], o["LastModified"].timestamp(), o.get("ETag", ""))
                for o in r.get("Contents", [])
            ]
            return ListPage(prefixes, objs, r.get("NextContinuationToken") if r.get("IsTruncated") else None)

        return await self.call("ListObjectsV2", go)

    async def put(
        self,
        key: str,
        body: store.Body,
        meta: dict[str, str],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """PUT an object; with ``if_match``/``if_none_match`` a conditional write (412 ->
        PreconditionFailed)."""

        if not isinstance(body, bytes):
            body = bytes(body)  # botocore takes bytes (or files), not memoryviews

        async def go() -> str:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, "Metadata": meta}
            if if_match:
                kw["IfMatch"] = if_match
            if if_none_match:
                kw["IfNoneMatch"] = "*"
            r = await self._client.put_object(**kw)
            return r["ETag"]

        etag = await self.call("PutObject", go)
        self.stats["bytes.out"] += len(body)
        return etag

    async def create_multipart(self, key: str, meta: dict[str, str]) -> str:
        async def go() -> tuple[str, int]:
            r = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=meta)
            return r["UploadId"], r.get("ResponseMetadata", {}).get("RetryAttempts", 0)

        upload_id, retried = await self.call("CreateMultipartUpload", go)
        if retried:
            # A retried create may have made an upload whose answer was lost. Nothing tells
            # ours from another host's upload of the same key (same credentials), so it is
            # left alone: it holds no parts (nobody knows its id), costs nothing, and
            # `ocifs fsck --repair` or a bucket lifecycle rule removes it.
            log.info("CreateMultipartUpload %s was retried; an empty twin upload may be left", key)
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: store.BodySource) -> str:
        """Upload one part. ``body`` may be a function that reads it: it is then called only
        once a request slot is free, so waiting parts hold no memory. A
        :class:`~ocifs.dataplane.StagedRange` is read by the native data plane straight from
        its file."""
        size = 0

        async def go(data: bytes) -> str:
            r = await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            return r["ETag"]

        assert self.limiter is not None
        plane = self.plane
        async with self.part_memory, self.limiter:
            trace.event("part_slot", part=number)
            self.stats["requests.UploadPart"] += 1
            try:
                if plane is not None:
                    staged = hasattr(body, "fd")
                    part = body if staged else _body(body)
                    etag, size = await self._guard("UploadPart", lambda: plane.upload_part(key, upload_id, number, part))  # type: ignore[arg-type]
                else:
                    data = _body(body)
                    if not isinstance(data, bytes):
                        data = bytes(data)
                    size = len(data)
                    etag = await self._aio.run_in_trio(self._guard("UploadPart", lambda: go(data)))
            except store.StoreError:
                self.stats["errors.UploadPart"] += 1
                raise
        self.stats["bytes.out"] += size
        return etag

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        async def go() -> str:
            r = await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
            )
            return r["ETag"]

        return await self.call("CompleteMultipartUpload", go)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        async def go() -> None:
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

        try:
            await self.call("AbortMultipartUpload", go)
        except (store.NoSuchUpload, store.NotFound):
            pass

    async def copy(self, src: str, dst: str, meta: dict[str, str], src_etag: str | None = None) -> str:
        """Server-side copy with new metadata (also used as a metadata-only self-copy)."""

        async def go() -> str:
            kw: dict[str, Any] = {}
            if src_etag:
                kw["CopySourceIfMatch"] = src_etag
            r = await self._client.copy_object(
                Bucket=self.bucket,
                Key=dst,
                CopySource={"Bucket": self.bucket, "Key": src},
                Metadata=meta,
                MetadataDirective="REPLACE",
                **kw,
            )
            return r["CopyObjectResult"]["ETag"]

        return await self.call("CopyObject", go)

    async def upload_part_copy(
        self, src: str, dst: str, upload_id: str, number: int, start: int, end: int, src_etag: str | None = None
    ) -> str:
        async def go() -> str:
            kw: dict[str, Any] = {}
            if src_etag:
                kw["CopySourceIfMatch"] = src_etag
            r = await self._client.upload_part_copy(
                Bucket=self.bucket,
                Key=dst,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": src},
                CopySourceRange=f"bytes={start}-{end - 1}",
                **kw,
            )
            return r["CopyPartResult"]["ETag"]

        return await self.call("UploadPartCopy", go)

    async def delete(self, key: str) -> None:
        async def go() -> None:
            await self._client.delete_object(Bucket=self.bucket, Key=key)

        await self.call("DeleteObject", go)


def _body(body: store.BodySource) -> store.Body:
    return body() if callable(body) else body
