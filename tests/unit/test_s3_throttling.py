"""Requests refused for being too many: 503 SlowDown (AWS; botocore's standard mode retries it)
and 429 TooManyRequests (MinIO at MINIO_API_REQUESTS_MAX; ocifs retries it with the same
capped exponential backoff). Still refused after every attempt: Unavailable (EIO), not
"the request itself was refused". The real thing: tests/reliability/test_throttling.py."""

from __future__ import annotations

import random

from botocore.exceptions import ClientError

from ocifs import store
from ocifs.config import Config
from ocifs.s3 import ATTEMPTS, S3, translate


def answer(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Please reduce your request rate"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_throttling_still_refused_after_the_retries_is_unavailable():
    for status, code in ((503, "SlowDown"), (429, "TooManyRequests")):
        assert isinstance(translate(answer(status, code), "GetObject k"), store.Unavailable), code


def test_a_429_is_retried_with_capped_exponential_backoff_and_counted():
    s3 = S3(Config(bucket="b"))
    try:
        random.seed(7)
        waits = {n: [s3._needs_retry(attempts=n, response=(None, {"ResponseMetadata": {"HTTPStatusCode": 429}})) for _ in range(200)]
                 for n in range(1, ATTEMPTS)}
        for n, ws in waits.items():
            assert all(0 <= w <= 2 ** (n - 1) for w in ws) and max(ws) > 0.5 * 2 ** (n - 1), (n, max(ws))
        assert s3._needs_retry(attempts=ATTEMPTS, response=(None, {"ResponseMetadata": {"HTTPStatusCode": 429}})) is None
        # 503 SlowDown: botocore's own handler retries it; this one only counts it
        assert s3._needs_retry(attempts=1, response=(None, {"ResponseMetadata": {"HTTPStatusCode": 503}})) is None
        assert s3._needs_retry(attempts=1, response=(None, {"ResponseMetadata": {"HTTPStatusCode": 200}})) is None
        assert s3.stats["retries"] == 200 * (ATTEMPTS - 1) + 2
    finally:
        s3.close_blocking()
