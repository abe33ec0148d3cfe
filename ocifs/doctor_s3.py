"""The bucket half of ``ocifs doctor``: every kind of S3 request a mount makes, made for real.

All writes go to keys under ``<prefix>.ocifs-doctor-<uuid>/`` (a name no OCI client uses),
and :meth:`Probe.cleanup` removes whatever is left there, multipart uploads included, whatever
failed before it. Requests go through the mount's own client (:class:`ocifs.s3.S3`), so
the answers are the ones a mount would get. A check that depends on an earlier one (copy
needs the object put) is skipped, not failed, when that one failed: one cause, one FAIL.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ocifs import store
from ocifs.config import Config
from ocifs.checks import FAIL, OK, SKIP, WARN, Result
from ocifs.s3 import S3

T = TypeVar("T")
D = TypeVar("D")

STEP_TIMEOUT = 30.0  # seconds per request before a check fails (the client retries inside)
PAYLOAD = b"ocifs doctor: a temporary object, deleted by the doctor itself\n"
WRONG_ETAG = '"00000000000000000000000000000000"'
NOT_S3 = "this endpoint does not behave as S3 here; ocifs relies on it"
NO_CONDITIONAL = (
    "without conditional writes, concurrent pushes to one repo can lose tags (last writer wins): "
    "use an endpoint that honours If-None-Match/If-Match on PUT (AWS S3, recent MinIO), or push each repo from one runner at a time"
)


class Mismatch(Exception):
    """S3 answered, but not as S3 does."""


class Probe:
    """The checks against one bucket, sharing the temporary keys they create."""

    def __init__(self, s3: S3, cfg: Config) -> None:
        self.s3, self.cfg = s3, cfg
        self.base = f"{cfg.prefix}.ocifs-doctor-{uuid.uuid4().hex[:12]}/"
        self.object = self.base + "object"
        self.put_ok = False
        self.some_key: str | None = None  # an existing key to read when we could not write
        self.uploads: list[tuple[str, str]] = []  # created multipart uploads, aborted at cleanup
        self.no_bucket = False

    async def step(self, name: str, actions: str, fn: Callable[[], Awaitable[str | Result]], unlike_s3: str = NOT_S3) -> Result:
        """Run one check (``fn`` says what it did, or returns its own row); an error becomes a
        FAIL row with the fix for that error (``unlike_s3``: when S3 answered, but not as S3 does)."""
        try:
            with trio.fail_after(STEP_TIMEOUT):
                done = await fn()
            return done if isinstance(done, Result) else Result(name, OK, done)
        except trio.TooSlowError:
            return Result(name, FAIL, f"no answer within {STEP_TIMEOUT:.0f} s", "check the endpoint and the network")
        except (Mismatch, store.Unsupported) as exc:
            return Result(name, FAIL, str(exc), unlike_s3)
        except store.StoreError as exc:
            self.no_bucket |= isinstance(exc, store.NoSuchBucket)
            return Result(name, FAIL, str(exc), self.fix(exc, actions))

    def fix(self, exc: store.StoreError, actions: str) -> str:
        if isinstance(exc, store.Denied):
            resource = f"arn:aws:s3:::{self.cfg.bucket}" if actions == "s3:ListBucket" else f"arn:aws:s3:::{self.cfg.bucket}/{self.cfg.prefix}*"
            return f"allow {actions} on {resource} for these credentials (IAM or bucket policy)"
        if isinstance(exc, store.NoSuchBucket):
            return f"create bucket {self.cfg.bucket!r} or fix the s3:// URL"
        return "check the endpoint, --region and the network, then run the doctor again"

    # --- the checks ---------------------------------------------------------------------------
    async def list(self) -> str:
        page = await self.s3.list_page(self.cfg.prefix, delimiter=None, max_keys=10)
        # something to read when we may not write: not ours, not empty (a ranged GET needs a byte)
        keys = [o.key for o in page.objects if o.size and not o.key.startswith(self.cfg.prefix + ".ocifs-")]
        self.some_key = keys[0] if keys else None
        return f"ListObjectsV2 {self.cfg.prefix or '(bucket root)'}: {len(page.objects)}{'+' if page.next_token else ''} keys"

    async def put(self) -> str:
        await self.s3.put(self.object, PAYLOAD, {"mode": "33188"})
        self.put_ok = True
        return f"PutObject {self.object}"

    async def get(self) -> str:
        key = self.object if self.put_ok else self.some_key
        assert key is not None
        info = await self.s3.head(key)
        if self.put_ok:
            _, data = await self.s3.get(key)
            if data != PAYLOAD:
                raise Mismatch(f"GetObject {key} returned other bytes than were put")
        got = await self.s3.get_range(key, 0, min(info.size, 16))
        return f"HeadObject, GetObject, ranged GetObject of {key} ({len(got)} bytes)"

    async def copy(self) -> str:
        dst = self.base + "copy"
        info = await self.s3.head(self.object)
        await self.s3.copy(self.object, dst, {"mode": "33060"}, src_etag=info.etag)
        if (await self.s3.head(dst)).size != len(PAYLOAD):
            raise Mismatch(f"CopyObject to {dst} made an object of another size")
        return f"CopyObject (If-Match) {self.object} -> {dst}"

    async def multipart(self) -> str:
        key = self.base + "multipart"
        upload = await self.s3.create_multipart(key, {})
        self.uploads.append((key, upload))
        etag = await self.s3.upload_part(key, upload, 1, PAYLOAD)
        await self.s3.complete_multipart(key, upload, [(1, etag)])
        if (await self.s3.head(key)).size != len(PAYLOAD):
            raise Mismatch(f"CompleteMultipartUpload of {key} made an object of another size")
        return f"CreateMultipartUpload, UploadPart, CompleteMultipartUpload {key}"

    async def abort(self) -> str | Result:
        key = self.base + "aborted"
        try:
            upload = await self.s3.create_multipart(key, {})
        except store.Denied:
            # Creating is not allowed (that is the multipart check's FAIL); S3 checks the
            # permission to abort before looking the upload up, so an unknown id still tells.
            await self.s3.abort_multipart(key, "ocifs-doctor-no-such-upload")
            return f"AbortMultipartUpload {key} (of an unknown upload: creating one is not allowed)"
        self.uploads.append((key, upload))
        await self.s3.upload_part(key, upload, 1, PAYLOAD)
        # the listing `ocifs fsck` makes to find stale uploads
        listed = {u.upload_id for u in await self.s3.list_multipart(self.cfg.prefix)}
        await self.s3.abort_multipart(key, upload)
        done = f"UploadPart, ListMultipartUploads, AbortMultipartUpload {key}"
        if upload in listed:
            return done
        return Result(
            "abort", WARN, f"{done}; ListMultipartUploads of {self.cfg.prefix!r} did not show the upload (MinIO lists only exact keys or the whole bucket)",
            "`ocifs fsck` cannot find stale uploads under this prefix: add a lifecycle rule with AbortIncompleteMultipartUpload",
        )

    async def conditional(self) -> str:
        try:
            await self.s3.put(self.object, PAYLOAD, {}, if_none_match=True)
            raise Mismatch("PutObject with If-None-Match: * replaced an existing object")
        except store.PreconditionFailed:
            pass
        try:
            await self.s3.put(self.object, PAYLOAD, {}, if_match=WRONG_ETAG)
            raise Mismatch("PutObject with If-Match of a wrong ETag replaced the object")
        except store.PreconditionFailed:
            pass
        return "If-None-Match: * and a wrong If-Match are both refused (412)"

    async def delete(self) -> str:
        key = self.object if self.put_ok else self.base + "never-written"
        await self.s3.delete(key)
        try:
            await self.s3.head(key)
        except store.NotFound:
            return f"DeleteObject {key}"
        raise Mismatch(f"{key} is still there after DeleteObject")

    async def cleanup(self) -> Result:
        """Remove every key and upload under the probe's prefix, whatever happened before."""
        left: list[str] = []
        with trio.move_on_after(STEP_TIMEOUT * 2):
            listed = await _quiet(self.s3.list_multipart(self.base), [])
            for key, upload in set(self.uploads) | {(u.key, u.upload_id) for u in listed}:
                await _quiet(self.s3.abort_multipart(key, upload), None)
            keys = {self.object, self.base + "copy", self.base + "multipart"}
            page = await _quiet(self.s3.list_page(self.base, delimiter=None), None)
            keys |= {o.key for o in page.objects} if page else set()
            for key in sorted(keys):
                await _quiet(self.s3.delete(key), None)
            page = await _quiet(self.s3.list_page(self.base, delimiter=None), None)
            if page is not None:
                left = [o.key for o in page.objects]
                if not left:
                    return Result("cleanup", OK, f"nothing left under {self.base}")
        what = ", ".join(left) if left else "unknown (cannot list it)"
        return Result("cleanup", FAIL, f"left behind under {self.base}: {what}", f"delete s3://{self.cfg.bucket}/{self.base} by hand")


async def _quiet(aw: Awaitable[T], default: D) -> T | D:
    """For cleanup: an error is just nothing removed (the listing afterwards tells)."""
    try:
        return await aw
    except store.StoreError:
        return default


async def _checks(probe: Probe, read_only: bool) -> list[Result]:
    results = [await probe.step("list", "s3:ListBucket", probe.list)]
    if probe.no_bucket:
        return results + [Result("requests", SKIP, "need the bucket")]
    if read_only:
        results.append(Result("put", SKIP, "--read-only: writes not checked"))
    else:
        results.append(await probe.step("put", "s3:PutObject", probe.put))
    if probe.put_ok or probe.some_key:
        results.append(await probe.step("get", "s3:GetObject", probe.get))
    else:
        results.append(Result("get", SKIP, "no object to read (put failed and the prefix lists none)"))
    if read_only:
        return results
    needs_put = "needs the object that put could not write"
    if probe.put_ok:
        results.append(await probe.step("copy", "s3:GetObject and s3:PutObject", probe.copy))
    else:
        results.append(Result("copy", SKIP, needs_put))
    results.append(await probe.step("multipart", "s3:PutObject", probe.multipart))
    results.append(await probe.step("abort", "s3:AbortMultipartUpload and s3:ListBucketMultipartUploads", probe.abort))
    if probe.put_ok:
        results.append(await probe.step("conditional", "s3:PutObject", probe.conditional, NO_CONDITIONAL))
    else:
        results.append(Result("conditional", SKIP, needs_put))
    results.append(await probe.step("delete", "s3:DeleteObject", probe.delete))
    return results


def bucket_checks(cfg: Config, read_only: bool = False) -> list[Result]:
    """Run the bucket checks with the mount's S3 client; always clean up after them."""
    s3 = S3(cfg)
    try:
        s3.open_blocking()

        async def main() -> list[Result]:
            s3.limiter = trio.CapacityLimiter(4)
            probe = Probe(s3, cfg)
            try:
                results = await _checks(probe, read_only)
            finally:
                with trio.CancelScope(shield=True):
                    done = await probe.cleanup()
            return results + ([] if read_only or probe.no_bucket else [done])

        return trio.run(main)
    finally:
        s3.close_blocking()
