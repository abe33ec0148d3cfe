"""The two backends of the contract suite, and a runner for its ``async def`` tests.

Every test in this directory takes the ``backend`` fixture and runs three times: against
:class:`fakes3.FakeS3`, and against the real client :class:`ocifs.s3.S3` on the session MinIO
(tests/conftest.py) with each of its data planes (aiobotocore only, and the native one for
UploadPart and ranged GETs), each in a fresh bucket. A behaviour the filesystem relies on is asserted
once, here, so the fake and real S3 cannot drift apart.

Tests are ``async def`` and run under ``trio.run`` (the hook below; no pytest-trio needed),
with ``store.limiter`` set inside the run as ocifs.mount does.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from conftest import REGION, Bucket
from fakes3 import FakeS3
from ocifs.config import Config
from ocifs.s3 import S3
from ocifs.store import ObjectStore

CONCURRENCY = 8  # requests in flight per test; the suite never needs more


@dataclasses.dataclass
class Backend:
    """One store under test, and where the test's keys go."""

    store: ObjectStore
    prefix: str = ""  # where this test's keys live: "" in a fresh bucket

    def key(self, rel: str) -> str:
        return self.prefix + rel


PLANES = {"minio": "aiobotocore", "minio-native": "native"}


@pytest.fixture(params=["fake", *PLANES])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "fake":
        yield Backend(FakeS3())
        return
    bucket: Bucket = request.getfixturevalue("bucket")
    for name, value in bucket.s3.env().items():  # the client finds the keys where users put them
        monkeypatch.setenv(name, value)
    config = Config(bucket=bucket.name, prefix=bucket.prefix, endpoint_url=bucket.s3.endpoint, region=REGION)
    s3 = S3(config, data_plane=PLANES[request.param])
    s3.open_blocking()
    s3.open_data_plane_blocking()
    assert (s3.plane is not None) == (request.param == "minio-native")
    try:
        yield Backend(s3, bucket.prefix)
    finally:
        s3.close_blocking()
        _abort_uploads(bucket)


def _abort_uploads(bucket: Bucket) -> None:
    """Incomplete uploads a test left behind would keep its bucket from being removed."""
    client = bucket.s3.client
    for up in client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []):
        if up["Key"].startswith(bucket.prefix):
            client.abort_multipart_upload(Bucket=bucket.name, Key=up["Key"], UploadId=up["UploadId"])


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test under trio, with the backend's limiter set inside the run."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def main() -> Any:
        backend = kwargs.get("backend")
        if isinstance(backend, Backend):
            backend.store.limiter = trio.CapacityLimiter(CONCURRENCY)  # type: ignore[attr-defined]
        return await pyfuncitem.obj(**kwargs)

    trio.run(main)
    return True
