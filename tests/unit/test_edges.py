"""Pure rules at ocifs's edges: S3 answers to store errors, metrics text, names to keys."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ParamValidationError

from ocifs import errors, metrics, store
from ocifs.layout import check_key, hidden_reason, name_to_str
from ocifs.s3 import translate


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    "exc, kind",
    [
        (client_error("NoSuchKey", 404), store.NotFound),
        (client_error("404", 404), store.NotFound),
        (client_error("NoSuchUpload", 404), store.NoSuchUpload),
        (client_error("NoSuchBucket", 404), store.NoSuchBucket),
        (client_error("AccessDenied", 403), store.Denied),
        (client_error("PreconditionFailed", 412), store.PreconditionFailed),
        (client_error("ConditionalRequestConflict", 409), store.PreconditionFailed),
        (client_error("NotImplemented", 501), store.Unsupported),
        (client_error("EntityTooSmall", 400), store.Rejected),
        (client_error("SlowDown", 503), store.Unavailable),
        (client_error("InternalError", 500), store.Unavailable),
        (NoCredentialsError(), store.Denied),
        (EndpointConnectionError(endpoint_url="http://x"), store.Unavailable),
        (ParamValidationError(report="bad key"), store.Rejected),
        (ConnectionResetError(), store.Unavailable),
    ],
)
def test_every_s3_answer_becomes_one_store_error_without_an_errno(exc, kind):
    got = translate(exc, "Op key")
    assert type(got) is kind
    assert not hasattr(got, "errno")  # the errno is chosen at the FUSE edge, per operation


def test_metrics_render_and_parse_round_trip():
    values = {"requests.GetObject": 3, "requests.PutObject": 1, "bytes.in": 10, "cache.hits": 2, "index.merges": 1}
    text = metrics.render(values)
    assert "# TYPE ocifs_s3_requests_total counter" in text
    parsed = metrics.parse(text)
    assert parsed['ocifs_s3_requests_total{op="GetObject"}'] == 3
    assert parsed["ocifs_index_merges_total"] == 1
    assert parsed["ocifs_open_files"] == 0  # every metric is there, zero or not


@pytest.mark.parametrize(
    "name, top, reason",
    [("", False, "empty"), (".", False, "'.'"), ("..", False, "'..'"), ("n" * 256, False, "longer than 255"),
     ("a\0b", False, "NUL"), (".ocifs", True, "reserved"), (".ocifs", False, None), ("ok", True, None)],
)
def test_which_key_segments_are_hidden(name, top, reason):
    got = hidden_reason(name, top_level=top)
    assert (got is None) if reason is None else (reason in got)


def test_names_become_keys_or_a_clean_errno():
    assert name_to_str("ü".encode()) == "ü"
    with pytest.raises(errors.NameTooLong):
        name_to_str(b"n" * 256)
    with pytest.raises(errors.InvalidName):
        name_to_str(b"\xff")
    check_key("k" * 1024)
    with pytest.raises(errors.NameTooLong):
        check_key("k" * 1025)
