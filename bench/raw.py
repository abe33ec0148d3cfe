"""The limit: the same bytes moved with aiobotocore and no filesystem.

Upload: one multipart upload, ``part_size`` parts, ``concurrency`` parts in flight.
Download: ranged GETs of ``part_size``, ``concurrency`` in flight, each checked against the
pattern (or hashed in order for a real file) and discarded.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from bench.common import Endpoint
from bench.data import BLOCK, Pattern


@dataclass
class Transfer:
    seconds: float
    bytes: int
    ok: bool
    detail: str = ""


def _client_ctx(session, ep: Endpoint, concurrency: int):
    from aiobotocore.config import AioConfig

    return session.create_client(
        "s3", endpoint_url=ep.url, region_name=ep.region,
        aws_access_key_id=ep.access_key, aws_secret_access_key=ep.secret_key,
        config=AioConfig(
            s3={"addressing_style": "path"}, max_pool_connections=max(10, concurrency),
            retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=300,
        ),
    )


async def _upload(ep, bucket, key, size, part_size, concurrency, source):
    """``source(start, length) -> bytes``."""
    import time

    from aiobotocore.session import get_session

    async with _client_ctx(get_session(), ep, concurrency) as c:
        t0 = time.perf_counter()
        if size <= part_size:
            await c.put_object(Bucket=bucket, Key=key, Body=source(0, size))
            return Transfer(time.perf_counter() - t0, size, True)
        mp = await c.create_multipart_upload(Bucket=bucket, Key=key)
        uid = mp["UploadId"]
        sem = asyncio.Semaphore(concurrency)
        nparts = (size + part_size - 1) // part_size
        etags: dict[int, str] = {}

        async def part(n: int) -> None:
            async with sem:
                start = n * part_size
                body = source(start, min(part_size, size - start))
                r = await c.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n + 1, Body=body)
                etags[n + 1] = r["ETag"]

        try:
            await asyncio.gather(*(part(n) for n in range(nparts)))
            await c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=uid,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
            )
        except BaseException:
            await c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
            raise
        return Transfer(time.perf_counter() - t0, size, True)


async def _download(ep, bucket, key, part_size, concurrency, sink):
    """``sink(start, data)`` is called in any order; returns False on a mismatch."""
    import time

    from aiobotocore.session import get_session

    async with _client_ctx(get_session(), ep, concurrency) as c:
        t0 = time.perf_counter()
        head = await c.head_object(Bucket=bucket, Key=key)
        size = head["ContentLength"]
        sem = asyncio.Semaphore(concurrency)
        bad: list[int] = []

        async def one(start: int) -> None:
            async with sem:
                end = min(start + part_size, size) - 1
                r = await c.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
                async with r["Body"] as body:
                    data = await body.read()
            if len(data) != end - start + 1 or not sink(start, data):
                bad.append(start)

        await asyncio.gather(*(one(s) for s in range(0, size, part_size)))
        return Transfer(time.perf_counter() - t0, size, not bad,
                        f"{len(bad)} range(s) wrong" if bad else "")


def upload_pattern(ep: Endpoint, bucket: str, key: str, size: int, part_size: int,
                   concurrency: int, pattern: Pattern) -> Transfer:
    return asyncio.run(_upload(ep, bucket, key, size, part_size, concurrency, pattern.span))


def download_pattern(ep: Endpoint, bucket: str, key: str, part_size: int, concurrency: int,
                     pattern: Pattern) -> Transfer:
    if part_size % BLOCK:
        raise ValueError("part size must be a multiple of 1 MiB")
    return asyncio.run(_download(ep, bucket, key, part_size, concurrency,
                                 lambda start, data: pattern.check(data, start)))


def upload_file(ep: Endpoint, bucket: str, key: str, path: str, part_size: int, concurrency: int) -> Transfer:
    import os

    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return asyncio.run(_upload(ep, bucket, key, size, part_size, concurrency,
                                   lambda start, n: os.pread(fd, n, start)))
    finally:
        os.close(fd)


def download_sha256(ep: Endpoint, bucket: str, key: str, part_size: int, concurrency: int) -> tuple[Transfer, str]:
    """Ranged parallel GETs, hashed in order (out-of-order parts wait in memory)."""
    h = hashlib.sha256()
    pending: dict[int, bytes] = {}
    state = {"next": 0}

    def sink(start: int, data: bytes) -> bool:
        pending[start] = data
        while state["next"] in pending:
            d = pending.pop(state["next"])
            h.update(d)
            state["next"] += len(d)
        return True

    t = asyncio.run(_download(ep, bucket, key, part_size, concurrency, sink))
    return t, h.hexdigest()


def download_file(ep: Endpoint, bucket: str, key: str, path: str, part_size: int, concurrency: int) -> Transfer:
    """Ranged parallel GETs written into a local file with pwrite (what a pull does)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        def sink(start: int, data: bytes) -> bool:
            os.pwrite(fd, data, start)
            return True

        return asyncio.run(_download(ep, bucket, key, part_size, concurrency, sink))
    finally:
        os.close(fd)


async def _randread(ep, bucket, key, size, block, seconds, seed):
    import random
    import time

    from aiobotocore.session import get_session

    rnd = random.Random(seed)
    nblocks = size // block
    n = 0
    async with _client_ctx(get_session(), ep, 1) as c:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            off = rnd.randrange(nblocks) * block
            r = await c.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + block - 1}")
            async with r["Body"] as body:
                data = await body.read()
            if len(data) != block:
                return Transfer(time.perf_counter() - t0, n * block, False, f"short ranged GET at {off}")
            n += 1
        return Transfer(time.perf_counter() - t0, n * block, True, f"{n} reads")


def randread(ep: Endpoint, bucket: str, key: str, size: int, block: int, seconds: float, seed: int = 1) -> Transfer:
    """One ranged GET of ``block`` bytes at a time (queue depth 1, like fio psync), for ``seconds``."""
    return asyncio.run(_randread(ep, bucket, key, size, block, seconds, seed))
