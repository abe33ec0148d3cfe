"""The limit: the same bytes moved with aiobotocore and no filesystem.

Upload: one multipart upload, ``part_size`` parts, ``concurrency`` parts in flight.
Download: ranged GETs of ``part_size``, ``concurrency`` in flight, each checked against the
pattern (or hashed in order for a real file) and discarded.
"""

from __future__ import annotations

import asyncio
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


async def _warm_client(ep, bucket, concurrency):
    """A client whose connection and operation models are loaded (a daemon's steady state)."""
    from aiobotocore.session import get_session

    ctx = _client_ctx(get_session(), ep, concurrency)
    c = await ctx.__aenter__()
    try:
        await c.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except Exception:
        await ctx.__aexit__(None, None, None)
        raise
    return ctx, c


async def _upload_one(c, sem, bucket, key, size, part_size, source):
    """``source(start, length) -> bytes``; parts share ``sem`` with everything else in flight."""
    if size <= part_size:
        async with sem:
            await c.put_object(Bucket=bucket, Key=key, Body=source(0, size))
        return
    mp = await c.create_multipart_upload(Bucket=bucket, Key=key)
    uid = mp["UploadId"]
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


async def _download_one(c, sem, bucket, key, part_size, sink) -> tuple[int, list[int]]:
    """``sink(start, data) -> bool`` is called in any order; returns (size, bad range starts)."""
    head = await c.head_object(Bucket=bucket, Key=key)
    size = head["ContentLength"]
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
    return size, bad


async def _many(ep, bucket, ups, downs, part_size, concurrency) -> Transfer:
    """Upload ``ups`` [(key, size, source)] or download ``downs`` [(key, sink)] concurrently,
    ``concurrency`` requests in flight in total; timed after the client is warm."""
    import time

    ctx, c = await _warm_client(ep, bucket, concurrency)
    try:
        sem = asyncio.Semaphore(concurrency)
        t0 = time.perf_counter()
        if ups:
            await asyncio.gather(*(_upload_one(c, sem, bucket, k, n, part_size, src) for k, n, src in ups))
            return Transfer(time.perf_counter() - t0, sum(n for _, n, _ in ups), True)
        res = await asyncio.gather(*(_download_one(c, sem, bucket, k, part_size, sink) for k, sink in downs))
        nbad = sum(len(b) for _, b in res)
        return Transfer(time.perf_counter() - t0, sum(n for n, _ in res), nbad == 0,
                        f"{nbad} range(s) wrong" if nbad else "")
    finally:
        await ctx.__aexit__(None, None, None)


async def _upload(ep, bucket, key, size, part_size, concurrency, source):
    return await _many(ep, bucket, [(key, size, source)], [], part_size, concurrency)


async def _download(ep, bucket, key, part_size, concurrency, sink):
    return await _many(ep, bucket, [], [(key, sink)], part_size, concurrency)


def upload_pattern(ep: Endpoint, bucket: str, key: str, size: int, part_size: int,
                   concurrency: int, pattern: Pattern) -> Transfer:
    return asyncio.run(_upload(ep, bucket, key, size, part_size, concurrency, pattern.span))


def download_pattern(ep: Endpoint, bucket: str, key: str, part_size: int, concurrency: int,
                     pattern: Pattern) -> Transfer:
    if part_size % BLOCK:
        raise ValueError("part size must be a multiple of 1 MiB")
    return asyncio.run(_download(ep, bucket, key, part_size, concurrency,
                                 lambda start, data: pattern.check(data, start)))


def upload_files(ep: Endpoint, bucket: str, files: list[tuple[str, str]], part_size: int, concurrency: int) -> Transfer:
    """[(key, local path)] uploaded together, ``concurrency`` parts in flight in total."""
    import os

    fds = []
    try:
        ups = []
        for key, path in files:
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            ups.append((key, os.path.getsize(path), lambda start, n, fd=fd: os.pread(fd, n, start)))
        return asyncio.run(_many(ep, bucket, ups, [], part_size, concurrency))
    finally:
        for fd in fds:
            os.close(fd)


def download_files(ep: Endpoint, bucket: str, files: list[tuple[str, str]], part_size: int, concurrency: int) -> Transfer:
    """[(key, local path)]: ranged parallel GETs written with pwrite (what a pull does)."""
    import os

    fds = []
    try:
        downs = []
        for key, path in files:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds.append(fd)

            def sink(start: int, data: bytes, fd=fd) -> bool:
                os.pwrite(fd, data, start)
                return True

            downs.append((key, sink))
        return asyncio.run(_many(ep, bucket, [], downs, part_size, concurrency))
    finally:
        for fd in fds:
            os.close(fd)


async def _randread(ep, bucket, key, size, block, seconds, seed):
    import random
    import time

    rnd = random.Random(seed)
    nblocks = size // block
    n = 0
    ctx, c = await _warm_client(ep, bucket, 1)
    try:
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
    finally:
        await ctx.__aexit__(None, None, None)


def randread(ep: Endpoint, bucket: str, key: str, size: int, block: int, seconds: float, seed: int = 1) -> Transfer:
    """One ranged GET of ``block`` bytes at a time (queue depth 1, like fio psync), for ``seconds``."""
    return asyncio.run(_randread(ep, bucket, key, size, block, seconds, seed))


async def _put_many(ep, bucket, items, concurrency):
    from aiobotocore.session import get_session

    sem = asyncio.Semaphore(concurrency)
    async with _client_ctx(get_session(), ep, concurrency) as c:
        async def one(key, body):
            async with sem:
                await c.put_object(Bucket=bucket, Key=key, Body=body)

        await asyncio.gather(*(one(k, b) for k, b in items))


def put_many(ep: Endpoint, bucket: str, items: list[tuple[str, bytes]], concurrency: int = 32) -> None:
    """Many small PUTs (setup only). aiohttp sets TCP_NODELAY; botocore's sync client sends
    headers and body in two writes and stalls on delayed ACKs (~40 ms per small PUT here)."""
    asyncio.run(_put_many(ep, bucket, items, concurrency))
