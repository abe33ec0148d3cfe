"""S3 that refuses requests for being too many (fleet-safety issue): AWS answers 503 SlowDown,
MinIO with MINIO_API_REQUESTS_MAX answers 429 TooManyRequests once a request has waited
MINIO_API_REQUESTS_DEADLINE for a slot. Either is retried with capped exponential backoff, and
every operation ends with the right bytes or a clean EIO; acknowledged writes are whole."""

from __future__ import annotations

import collections
import errno
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from conftest import S3, Bucket, ocifs_bin, run, running
from testkit import MinioServer, s3_client
from testkit.fsops import MiB, bounded, content, read_file, write_file

from .conftest import MARGIN, OP_TIMEOUT

pytestmark = pytest.mark.timeout(600)
HANG = OP_TIMEOUT + MARGIN
HANG_WRITE = 3 * OP_TIMEOUT + MARGIN


@pytest.fixture
def throttled_minio():
    with running(MinioServer(env={"MINIO_API_REQUESTS_MAX": "2", "MINIO_API_REQUESTS_DEADLINE": "100ms"})) as m:
        yield m


def refusals(m: MinioServer, bucket: str, key: str) -> collections.Counter:
    """Hammer MinIO with a client that never retries: what does it answer when overloaded?"""
    c = s3_client(m.endpoint, m.access_key, m.secret_key, attempts=1)
    seen: collections.Counter = collections.Counter()

    def get(_):
        try:
            c.get_object(Bucket=bucket, Key=key)["Body"].read()
            return "ok"
        except botocore.exceptions.ClientError as e:
            return f'{e.response["ResponseMetadata"]["HTTPStatusCode"]} {e.response["Error"]["Code"]}'

    with ThreadPoolExecutor(32) as pool:
        seen.update(pool.map(get, range(200)))
    return seen


def retries(m, bucket: Bucket) -> float:
    out = run([*ocifs_bin(), "stats", m.path], env=bucket.s3.env(), timeout=30).stdout
    return sum(float(line.split()[-1]) for line in out.splitlines() if line.startswith("ocifs_s3_retries_total"))


def test_throttling_is_retried_with_backoff_and_ends_in_right_bytes_or_eio(throttled_minio, fault_mount_factory):
    s3 = S3(throttled_minio.endpoint, throttled_minio.access_key, throttled_minio.secret_key)
    bucket = Bucket(s3, "throttled")
    s3.create_bucket(bucket.name)
    seeded = {f"seed/{i}.bin": content(f"seed-{i}", (4 * MiB) + i) for i in range(6)}
    for key, data in seeded.items():
        bucket.put(key, data)
    seen = refusals(throttled_minio, bucket.name, "seed/0.bin")
    refused = {k: v for k, v in seen.items() if k != "ok"}
    assert set(refused) <= {"503 SlowDown", "429 TooManyRequests"} and refused, (
        f"this MinIO did not refuse requests for being too many: {dict(seen)}")

    # Straight to the throttled MinIO (--op-timeout 20); a cache of 16 chunks of 1 MiB, so that
    # reads keep asking S3 (many small GETs) instead of being answered from memory.
    m = fault_mount_factory(bucket, extra_args=["--cache-size", "16", "--chunk-size", "1"])
    (m.path / "w").mkdir()
    outcomes: collections.Counter = collections.Counter()
    acked: dict[str, bytes] = {}
    attempted: dict[str, bytes] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + 25

    def reader(r: int) -> None:
        rng = random.Random(r)
        while time.monotonic() < deadline:
            key = rng.choice(list(seeded))
            o = bounded(read_file, HANG, m.path / key)
            with lock:
                outcomes[f"read {o.status} {errno.errorcode.get(o.errno, '') if o.error else ''}".strip()] += 1
            assert o.status != "hang", f"read of {key}: {o!r}"
            if o.status == "ok":
                assert o.value == seeded[key], f"read of {key}: wrong bytes under throttling"
            else:
                assert o.errno == errno.EIO, f"read of {key}: {o!r}, expected the right bytes or EIO"

    def writer(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            key = f"w/{w}-{i}.bin"
            data = content(key, random.Random(key).choice([100_000, 3 * MiB, 9 * MiB + 1]))
            i += 1
            with lock:
                attempted[key] = data
            o = bounded(write_file, HANG_WRITE, m.path / key, data)
            with lock:
                outcomes[f"write {o.status} {errno.errorcode.get(o.errno, '') if o.error else ''}".strip()] += 1
            assert o.status != "hang", f"write of {key}: {o!r}"
            if o.status == "ok":
                with lock:
                    acked[key] = data
            else:
                assert o.errno == errno.EIO, f"write of {key}: {o!r}, expected success or EIO"

    errors: list[BaseException] = []

    def guard(fn, *a):
        try:
            fn(*a)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(reader, r)) for r in range(8)]
    threads += [threading.Thread(target=guard, args=(writer, w)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=25 + HANG_WRITE + 30)
        assert not t.is_alive(), f"a worker is still running: {dict(outcomes)}"
    if errors:
        raise errors[0]

    done = sum(outcomes.values())
    ok = sum(v for k, v in outcomes.items() if " ok" in k)
    n_retries = retries(m, bucket)
    print(f"throttled MinIO ({dict(seen)}); through the mount: {dict(outcomes)}; retries {n_retries:.0f}")
    assert n_retries > 0, "the mount never retried a refused request"
    assert ok >= 0.9 * done, f"most operations should succeed after backoff, got {dict(outcomes)}"
    for key, data in attempted.items():
        got = bucket.get(key) if bucket.head(key) is not None else None
        if key in acked:
            assert got == data, f"acknowledged write {key} is not whole in the bucket"
        else:
            assert got in (None, data), f"failed write {key} left {len(got or b'')} bytes published"
