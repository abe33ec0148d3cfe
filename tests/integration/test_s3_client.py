"""The real S3 client's own behaviour on MinIO (what the contract suite cannot fake)."""

from __future__ import annotations

import trio

from conftest import REGION
from ocifs.config import Config
from ocifs.s3 import S3


def test_a_retried_create_never_aborts_another_hosts_upload_of_the_same_key(bucket, monkeypatch):
    """Data-safety item 7: a retried CreateMultipartUpload used to abort every upload of that key
    started in the last 5 s, other runners' zero-copy uploads of the same layer included."""
    key = "app/blobs/sha256/" + "ab" * 32
    theirs = bucket.s3.client.create_multipart_upload(Bucket=bucket.name, Key=key)["UploadId"]  # another runner
    for name, value in bucket.s3.env().items():
        monkeypatch.setenv(name, value)
    s3 = S3(Config(bucket=bucket.name, endpoint_url=bucket.s3.endpoint, region=REGION))
    s3.open_blocking()
    real_call = S3.call

    async def call_reporting_a_retry(self, op, fn):  # the create's first answer was lost
        result = await real_call(self, op, fn)
        return (result[0], 1) if op == "CreateMultipartUpload" else result

    monkeypatch.setattr(S3, "call", call_reporting_a_retry)

    async def main() -> str:
        s3.limiter = trio.CapacityLimiter(4)
        return await s3.create_multipart(key, {})

    try:
        ours = trio.run(main)
    finally:
        s3.close_blocking()
    live = {u["UploadId"] for u in bucket.s3.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", [])}
    assert theirs in live and ours in live, live
    assert s3.stats["requests.AbortMultipartUpload"] == 0
    for upload_id in live:
        bucket.s3.client.abort_multipart_upload(Bucket=bucket.name, Key=key, UploadId=upload_id)


def test_only_a_client_that_opens_the_data_plane_refreshes_its_credentials(bucket, monkeypatch):
    """ls, gc, fsck and doctor open the client and never the data plane: no refresher task
    (a credentials call and an idle task per command, before)."""
    for name, value in bucket.s3.env().items():
        monkeypatch.setenv(name, value)
    s3 = S3(Config(bucket=bucket.name, endpoint_url=bucket.s3.endpoint, region=REGION))
    s3.open_blocking()
    try:
        assert s3._refresher is None and s3.plane is None
        s3.open_data_plane_blocking()
        assert s3.plane is not None and s3._refresher is not None
    finally:
        s3.close_blocking()
    assert s3._refresher is None


def test_a_put_sends_its_body_without_waiting_for_100_continue(bucket, monkeypatch):
    """botocore asks for `Expect: 100-continue` on every PutObject: one more round trip per PUT
    (a 25 ms link made each small PUT 60 ms instead of 37, and `oras push` closes seven files in
    a row). ocifs's client sends the body at once, and the object is stored whole."""
    for name, value in bucket.s3.env().items():
        monkeypatch.setenv(name, value)
    s3 = S3(Config(bucket=bucket.name, endpoint_url=bucket.s3.endpoint, region=REGION))
    s3.open_blocking()
    sent: list[dict[str, str]] = []
    s3._client.meta.events.register("before-send.s3.PutObject", lambda request, **kw: sent.append(dict(request.headers)))

    async def main() -> str:
        s3.limiter = trio.CapacityLimiter(4)
        return await s3.put("app/index.json", b'{"schemaVersion":2,"manifests":[]}', {})

    try:
        trio.run(main)
    finally:
        s3.close_blocking()
    assert len(sent) == 1 and not any(k.lower() == "expect" for k in sent[0]), sent
    got = bucket.s3.client.get_object(Bucket=bucket.name, Key="app/index.json")["Body"].read()
    assert got == b'{"schemaVersion":2,"manifests":[]}'
