"""Bad input to ``ocifs mount``, and hostile keys in a bucket.

Every bad invocation must exit non-zero within 30 s with exactly one non-empty line on
stderr, no traceback, and leave nothing mounted.
"""

from __future__ import annotations

import collections
import os
import stat
import uuid

import botocore.exceptions
import pytest

from conftest import force_unmount, free_port, is_mounted, mount_entries, ocifs_bin, run

CLI_TIMEOUT = 30

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def mountpoint(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    force_unmount(mp)  # only does anything if a failing test left a mount behind


def ocifs_mount(s3, url: str, mp, tmp_path, env=None, endpoint=None):
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return run(
        [
            *ocifs_bin(), "mount", url, str(mp),
            "--endpoint-url", endpoint or s3.endpoint,
            "--cache-dir", str(cache),
        ],
        env=env or s3.env(),
        timeout=CLI_TIMEOUT,
        check=False,
    )


def assert_clean_failure(res, mp, mounts_before: int = 0) -> None:
    detail = res.describe()
    assert res.returncode != 0, detail
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be exactly one line\n{detail}"
    assert lines[0].strip(), f"stderr line is empty\n{detail}"
    assert "Traceback" not in res.stderr + res.stdout, detail
    assert len(mount_entries(mp)) == mounts_before, f"{mp} mounts changed\n{detail}"
    assert res.duration < CLI_TIMEOUT, detail


def test_http_url_is_rejected(s3, mountpoint, tmp_path):
    res = ocifs_mount(s3, "http://x", mountpoint, tmp_path)
    assert_clean_failure(res, mountpoint)


def test_s3_url_without_bucket_is_rejected(s3, mountpoint, tmp_path):
    res = ocifs_mount(s3, "s3://", mountpoint, tmp_path)
    assert_clean_failure(res, mountpoint)


def test_missing_bucket_is_rejected(s3, mountpoint, tmp_path):
    res = ocifs_mount(s3, f"s3://ocifs-missing-{uuid.uuid4().hex[:12]}", mountpoint, tmp_path)
    assert_clean_failure(res, mountpoint)


def test_wrong_credentials_are_rejected(s3, bucket, mountpoint, tmp_path):
    env = s3.env(secret_key="definitely-not-the-secret")
    res = ocifs_mount(s3, bucket.url, mountpoint, tmp_path, env=env)
    assert_clean_failure(res, mountpoint)


def test_unreachable_endpoint_is_rejected(s3, bucket, mountpoint, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = ocifs_mount(s3, bucket.url, mountpoint, tmp_path, endpoint=closed)
    assert_clean_failure(res, mountpoint)


def test_missing_mountpoint_is_rejected(s3, bucket, tmp_path):
    mp = tmp_path / "does-not-exist"
    try:
        res = ocifs_mount(s3, bucket.url, mp, tmp_path)
        assert_clean_failure(res, mp)
        assert not mp.exists()
    finally:
        force_unmount(mp)


def test_mountpoint_that_is_a_file_is_rejected(s3, bucket, tmp_path):
    mp = tmp_path / "a-file"
    mp.write_bytes(b"not a directory")
    try:
        res = ocifs_mount(s3, bucket.url, mp, tmp_path)
        assert_clean_failure(res, mp)
        assert mp.read_bytes() == b"not a directory"
    finally:
        force_unmount(mp)


def test_mountpoint_already_mounted_is_rejected(s3, bucket, mount, tmp_path):
    (mount.path / "marker").write_bytes(b"first mount")
    res = ocifs_mount(s3, bucket.url, mount.path, tmp_path)
    assert_clean_failure(res, mount.path, mounts_before=1)
    assert (mount.path / "marker").read_bytes() == b"first mount"


# --------------------------------------------------------------------- hostile keys

LONG = "n" * 300

MINIO_REFUSES = ("a//b", "x/./y", "x/../y", f"long/{LONG}")
HOSTILE = {
    "a//b": b"double slash",
    "x/./y": b"dot segment",
    "x/../y": b"dotdot segment",
    f"long/{LONG}": b"300-byte segment",
    "both": b"file named both",
    "both/child": b"child of both",
    "dir/": b"",
    "dir": b"file named dir",
    "normal.txt": b"plain file",
}


def put_hostile_keys(bucket) -> list[str]:
    """Put every hostile key the server accepts; return the refused ones.

    MinIO refuses some of them outright (``a//b``, dot segments, segments over 255 bytes:
    XMinioInvalidObjectName / XMinioInvalidResourceName); real S3 stores them all. Those keys
    reach ocifs through the fake S3 in tests/unit/test_fs_api.py
    (test_hostile_keys_are_hidden_and_do_not_break_listings), which holds ocifs to what real S3 lists.
    """
    refused = []
    for key, data in HOSTILE.items():
        try:
            bucket.put(key, data)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if not code.startswith("XMinioInvalid"):
                raise
            refused.append(f"{key[:40]!r} ({code})")
    return refused


def server_lists_both_as_prefix(bucket) -> bool:
    """Real S3 lists ``both/`` as a common prefix beside the object ``both``; MinIO hides it."""
    r = bucket.s3.client.list_objects_v2(
        Bucket=bucket.name, Prefix=bucket.key(""), Delimiter="/"
    )
    return bucket.key("both/") in {p["Prefix"] for p in r.get("CommonPrefixes", [])}


def test_hostile_keys_do_not_break_the_mount(bucket, mount_factory):
    refused = put_hostile_keys(bucket)
    # Only the keys MinIO is known to refuse; any other refusal is a fixture bug, not a skip.
    assert {r.split(" (")[0] for r in refused} <= {repr(k[:40]) for k in MINIO_REFUSES}, refused
    both_listed = server_lists_both_as_prefix(bucket)
    mount = mount_factory(bucket)

    errors: list[str] = []
    files = []
    for root, dirs, names in os.walk(mount.path, onerror=lambda e: errors.append(repr(e))):
        for entries in (dirs, names):
            dup = [n for n, c in collections.Counter(entries).items() if c > 1]
            assert not dup, f"duplicate entries {dup} in {root}"
        files.extend(os.path.join(root, n) for n in names)
    assert not errors, errors

    for f in files:
        try:
            st = os.stat(f)
            if stat.S_ISREG(st.st_mode):
                with open(f, "rb") as fh:
                    assert len(fh.read()) == st.st_size, f
        except OSError as e:
            errors.append(f"{f}: {e!r}")
    assert not errors, errors

    ls = run(["ls", "-laR", str(mount.path)], timeout=60, check=False)
    assert ls.returncode == 0, ls.describe()

    assert (mount.path / "normal.txt").read_bytes() == b"plain file"
    both = mount.path / "both"
    if both_listed:
        assert stat.S_ISDIR(os.stat(both).st_mode)
        assert "child" in os.listdir(both)
        assert (both / "child").read_bytes() == b"child of both"
    else:
        # MinIO never lists both/child beside the object both, so ocifs cannot know it: `both`
        # is just there. The directory-wins rule is asserted against the fake S3 (which lists
        # both, as real S3 does) in tests/unit/test_fs_api.py.
        assert os.path.lexists(both)

    # the mount still answers, reads and writes
    assert is_mounted(mount.path)
    (mount.path / "after.txt").write_bytes(b"still fine")
    assert (mount.path / "after.txt").read_bytes() == b"still fine"
    assert "after.txt" in os.listdir(mount.path)
