"""The native data plane's pieces that need no server: where requests go, how they are signed,
and how S3's error answers become ocifs.store errors (requests themselves: tests/contract)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from ocifs import store
from ocifs.config import Config as MountConfig
from ocifs.dataplane import Endpoint, _error_response, sign
from ocifs.store import error_for
from ocifs.s3 import S3


@pytest.mark.parametrize("url,bucket,path_style,host,address,path", [
    ("http://127.0.0.1:9000", "b", True, "127.0.0.1:9000", ("127.0.0.1", 9000), "/b/k%20%2B/%C3%BC"),
    ("https://s3.eu-west-1.amazonaws.com", "b", False, "b.s3.eu-west-1.amazonaws.com", ("b.s3.eu-west-1.amazonaws.com", 443),
     "/k%20%2B/%C3%BC"),
    ("https://s3.eu-west-1.amazonaws.com", "my.bucket", False, "s3.eu-west-1.amazonaws.com", ("s3.eu-west-1.amazonaws.com", 443),
     "/my.bucket/k%20%2B/%C3%BC"),
    ("http://[::1]:9000", "b", True, "[::1]:9000", ("[::1]", 9000), "/b/k%20%2B/%C3%BC"),
])
def test_endpoint_addressing(url: str, bucket: str, path_style: bool, host: str, address: tuple, path: str) -> None:
    """Path-style with --endpoint-url (as the aiobotocore client is configured); virtual-hosted
    on AWS unless the bucket name has a dot (its TLS certificate would not match)."""
    ep = Endpoint.for_bucket(url, bucket, path_style)
    assert (ep.host, ep.path("k +/ü")) == (host, path)
    assert ep.address == address


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("key,query,headers", [
    ("k", {}, {"range": "bytes=0-8388607", "if-match": '"abc"'}),
    ("odd dir/ünï cödé +%=&;!'()~ #?.bin", {"partNumber": "7", "uploadId": "a+b/c=="}, {"content-length": "5242880"}),
])
def test_signature_is_botocores(key: str, query: dict, headers: dict, token: str | None) -> None:
    """SigV4 with UNSIGNED-PAYLOAD, computed by hand, equals botocore's for the same request."""
    ep = Endpoint.for_bucket("http://127.0.0.1:9000", "bucket", True)
    path = ep.path(key)
    url = "http://127.0.0.1:9000" + path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    req = AWSRequest(method="PUT" if query else "GET", url=url.replace("a+b/c==", "a%2Bb%2Fc%3D%3D"), headers=dict(headers))
    req.context["client_config"] = Config(s3={"payload_signing_enabled": False})  # as ocifs.s3 configures it
    S3SigV4Auth(creds, "s3", "eu-central-1").add_auth(req)
    now = dt.datetime.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    ours = sign(req.method, ep.host, path, query, headers, (creds.access_key, creds.secret_key, token), "eu-central-1", now)
    assert ours["authorization"] == req.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


@pytest.mark.parametrize("status,code,kind", [
    (404, "NoSuchKey", store.NotFound),
    (404, "NoSuchUpload", store.NoSuchUpload),
    (404, "NoSuchBucket", store.NoSuchBucket),
    (412, "PreconditionFailed", store.PreconditionFailed),
    (403, "SignatureDoesNotMatch", store.Denied),
    (416, "InvalidRange", store.Rejected),
    (400, "InvalidPart", store.Rejected),
    (501, "NotImplemented", store.Unsupported),
    (503, "SlowDown", store.Unavailable),
    (500, "", store.Unavailable),
])
def test_error_answers_map_like_aiobotocore(status: int, code: str, kind: type) -> None:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode() if code else None
    assert type(_error_response("GetObject", status, body, "fallback")) is kind
    assert type(error_for("GetObject", code, str(status), "m")) is kind


def test_the_plane_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIFS_DATA_PLANE", "aiobotocore")
    chosen, named = S3(MountConfig(bucket="b")), S3(MountConfig(bucket="b"), data_plane="native")
    try:
        assert chosen.data_plane_mode == "aiobotocore" and chosen.plane is None
        assert named.data_plane_mode == "native"
    finally:
        chosen.close_blocking()
        named.close_blocking()
