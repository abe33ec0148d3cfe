"""The native data plane's pieces that need no server: where requests go, how S3's error
answers become ocifs.store errors, and how bodies are read (the rest is tests/contract)."""

from __future__ import annotations

import os

import pytest

from ocifs import store
from ocifs.config import Config
from ocifs.dataplane import Endpoint, _BufferStream, _error_response, _RangeStream, error_for
from ocifs.s3 import S3


@pytest.mark.parametrize("url,bucket,path_style,host,path", [
    ("http://127.0.0.1:9000", "b", True, "127.0.0.1:9000", "/b/k%20%2B/%C3%BC"),
    ("https://s3.eu-west-1.amazonaws.com", "b", False, "b.s3.eu-west-1.amazonaws.com", "/k%20%2B/%C3%BC"),
    ("https://s3.eu-west-1.amazonaws.com", "my.bucket", False, "s3.eu-west-1.amazonaws.com", "/my.bucket/k%20%2B/%C3%BC"),
])
def test_endpoint_addressing(url: str, bucket: str, path_style: bool, host: str, path: str) -> None:
    """Path-style with --endpoint-url (as the aiobotocore client is configured); virtual-hosted
    on AWS unless the bucket name has a dot (its TLS certificate would not match)."""
    ep = Endpoint.for_bucket(url, bucket, path_style)
    assert ep.host == host
    assert ep.path("k +/ü") == path
    assert ep.path("k", "partNumber=1&uploadId=a%2Fb") == ep.path("k") + "?partNumber=1&uploadId=a%2Fb"


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


def test_range_stream_reads_exactly_its_range_from_its_own_descriptor(tmp_path) -> None:
    f = tmp_path / "staging"
    f.write_bytes(bytes(range(256)) * 4)
    fd = os.open(f, os.O_RDONLY)
    s = _RangeStream(fd, 100, 700)
    os.close(fd)  # the stream holds a duplicate
    buf = bytearray(1000)
    assert s.readinto(buf) == 600 and bytes(buf[:600]) == (bytes(range(256)) * 4)[100:700]
    assert s.readinto(buf) == 0
    s.seek(0)
    assert s.read(10) == (bytes(range(256)) * 4)[100:110]
    s.close()


def test_range_stream_refuses_a_file_shorter_than_the_range(tmp_path) -> None:
    f = tmp_path / "staging"
    f.write_bytes(b"x" * 100)
    fd = os.open(f, os.O_RDONLY)
    s = _RangeStream(fd, 50, 200)
    os.close(fd)
    buf = bytearray(200)
    assert s.readinto(buf) == 50
    with pytest.raises(store.BadResponse):
        s.readinto(buf)
    assert isinstance(s.error, store.BadResponse)
    s.close()


def test_buffer_stream_takes_any_buffer() -> None:
    for body in (b"abcdef", bytearray(b"abcdef"), memoryview(b"xxabcdef")[2:]):
        s = _BufferStream(body)
        buf = bytearray(4)
        assert s.readinto(buf) == 4 and s.readinto(buf) == 2 and bytes(buf[:2]) == b"ef"


def test_the_aiobotocore_plane_is_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCIFS_DATA_PLANE", "aiobotocore")
    chosen, named = S3(Config(bucket="b")), S3(Config(bucket="b"), data_plane="crt")
    try:
        assert chosen.data_plane_mode == "aiobotocore" and chosen.plane is None
        assert named.data_plane_mode == "crt"
    finally:
        chosen.close_blocking()
        named.close_blocking()
