from ocifs.layout import hidden_reason, is_blob_path

HEX64 = "a" * 64


def test_blob_paths_are_recognised_at_any_depth():
    assert is_blob_path(f"repo/blobs/sha256/{HEX64}")
    assert is_blob_path(f"team/app/blobs/sha256/{HEX64}")
    assert is_blob_path(f"blobs/sha512/{'b' * 128}")


def test_non_blob_paths_are_mutable():
    assert not is_blob_path("repo/index.json")
    assert not is_blob_path(f"repo/ingest/{HEX64}_123")
    assert not is_blob_path(f"repo/blobs/sha256/{HEX64[:-1]}")
    assert not is_blob_path(f"repo/blobs/sha256/{HEX64.upper()}")
    assert not is_blob_path(f"repo/blobs/md5/{HEX64}")


def test_names_that_cannot_be_posix_names_are_hidden():
    assert hidden_reason("") is not None
    assert hidden_reason(".") is not None
    assert hidden_reason("..") is not None
    assert hidden_reason("x" * 256) is not None
    assert hidden_reason("\udcff") is not None  # undecodable byte smuggled as a surrogate


def test_ordinary_names_are_shown():
    assert hidden_reason("index.json") is None
    assert hidden_reason("x" * 255) is None
    assert hidden_reason("ünïcödé") is None
