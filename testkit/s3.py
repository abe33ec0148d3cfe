"""Talking to S3 from the rig itself (never through a mount): credentials for the programs we
start, and a small synchronous botocore client for setting up buckets and checking what a
mount really wrote.

botocore is imported when a client is made, so that ``import testkit`` stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from testkit.minio_metrics import minio_counters

REGION = "us-east-1"
NOT_FOUND = ("404", "NoSuchKey", "NotFound")
T = TypeVar("T")


def s3_env(access_key: str, secret_key: str, session_token: str | None = None, *, region: str = REGION,
           base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which botocore's default chain finds exactly these credentials: the
    invoking user's profiles, config files, endpoint and the EC2 metadata service are out."""
    env = dict(os.environ if base is None else base)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    if session_token:
        env["AWS_SESSION_TOKEN"] = session_token
    return env


def s3_client(endpoint: str, access_key: str, secret_key: str, session_token: str | None = None, *,
              region: str = REGION, attempts: int = 5, connect_timeout: float = 10, read_timeout: float = 120,
              pool: int = 64) -> Any:
    """A path-style botocore S3 client (``attempts=1``: one that never retries, to see what a
    server answers)."""
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=session_token,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, max_pool_connections=pool,
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
        ),
    )


def is_not_found(exc: Exception) -> bool:
    """A botocore ClientError that says the key is not there."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in NOT_FOUND


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def or_none(call: Callable[[], T]) -> T | None:
    """``call()``, or None if S3 answers that the key is not there."""
    import botocore.exceptions

    try:
        return call()
    except botocore.exceptions.ClientError as e:
        if is_not_found(e):
            return None
        raise


def get_or_none(client: Any, bucket: str, key: str) -> bytes | None:
    return or_none(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())


def incomplete_uploads(client: Any, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload begun and neither completed nor aborted."""
    out, kw = [], {"Bucket": bucket, "Prefix": prefix}
    while True:
        r = client.list_multipart_uploads(**kw)
        out.extend((u["Key"], u["UploadId"]) for u in r.get("Uploads", []))
        if not r.get("IsTruncated"):
            return out
        kw["KeyMarker"], kw["UploadIdMarker"] = r.get("NextKeyMarker"), r.get("NextUploadIdMarker")


def assume_role(endpoint: str, access_key: str, secret_key: str, policy: dict,
                seconds: int = 3600) -> tuple[str, str, str]:
    """MinIO STS AssumeRole with a session policy: temporary credentials (key, secret, token)
    limited by ``policy`` (e.g. read-only ones, to mount with credentials that cannot write)."""
    import botocore.session

    sts = botocore.session.get_session().create_client(
        "sts", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    r = sts.assume_role(RoleArn="arn:xxx:xxx:xxx:xxxx", RoleSessionName="ocifs-readonly",
                        Policy=json.dumps(policy), DurationSeconds=seconds)
    c = r["Credentials"]
    return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]


class S3:
    """An S3 endpoint with credentials, and a small synchronous client for direct checks."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, external_bucket: str | None = None) -> None:
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.external_bucket = external_bucket  # a shared bucket to work under prefixes of
        self.client = s3_client(endpoint, access_key, secret_key)

    def env(self, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """Environment for a subprocess: botocore's default chain finds these keys."""
        return s3_env(access_key if access_key is not None else self.access_key,
                      secret_key if secret_key is not None else self.secret_key)

    def requests_served(self) -> dict[str, float]:
        """MinIO's own count of S3 requests served, by API name (``CopyObject``, ...): what the
        server saw, not what ocifs thinks it sent."""
        return {k[4:]: v for k, v in minio_counters(self.endpoint).items() if k.startswith("req:")}

    # -- direct object access (checks only) --
    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes = b"") -> None:
        if data:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            # no Body at all: after a PUT with Body=b"" (botocore 1.40 + this MinIO) the
            # next request on the same connection stalls for 30 s
            self.client.put_object(Bucket=bucket, Key=key)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def head(self, bucket: str, key: str) -> dict | None:
        """HeadObject, or None if the key does not exist."""
        return or_none(lambda: self.client.head_object(Bucket=bucket, Key=key))

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        return list_keys(self.client, bucket, prefix)

    def delete_prefix(self, bucket: str, prefix: str = "", extra_keys: Iterable[str] = ()) -> None:
        keys = sorted(set(self.list(bucket, prefix)) | set(extra_keys))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )

    def delete_bucket(self, bucket: str, extra_keys: Iterable[str] = ()) -> None:
        self.delete_prefix(bucket, "", extra_keys)
        self.client.delete_bucket(Bucket=bucket)
