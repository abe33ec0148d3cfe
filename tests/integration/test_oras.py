"""The oras CLI (pinned binary) and the oras Python SDK against OCI layouts on a real mount."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct

import pytest

from conftest import oras

MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(600)


def make_files(directory, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)


def push(layout_ref: str, names, cwd) -> None:
    """oras push with relative file names from the directory holding them."""
    oras("push", "--oci-layout", layout_ref, *names, cwd=cwd)


def pull(layout_ref: str, out) -> None:
    out.mkdir(parents=True, exist_ok=True)
    oras("pull", "--oci-layout", layout_ref, "-o", str(out), cwd=out)


def tags(layout: str) -> list[str]:
    return oras("repo", "tags", "--oci-layout", layout).stdout.split()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def assert_same_files(src, out, names) -> None:
    assert sorted(os.listdir(out)) == sorted(names)
    for n in names:
        assert sha256_file(out / n) == sha256_file(src / n), n


def test_push_then_pull_single_file_is_byte_identical(mount, tmp_path):
    src = tmp_path / "src"
    make_files(src, {"hello.txt": b"hello from ocifs\n"})
    push(f"{mount.path}/hello:v1", ["hello.txt"], cwd=src)
    pull(f"{mount.path}/hello:v1", tmp_path / "out")
    assert_same_files(src, tmp_path / "out", ["hello.txt"])


def test_push_then_pull_three_files_is_byte_identical(mount, tmp_path):
    src = tmp_path / "src"
    files = {
        "config.yaml": b"a: 1\nb: [2, 3]\n",
        "model.bin": random.Random(1).randbytes(3 * MiB + 5),
        "README": b"",
    }
    make_files(src, files)
    push(f"{mount.path}/three:v1", ["config.yaml", "model.bin:application/octet-stream", "README"], cwd=src)
    pull(f"{mount.path}/three:v1", tmp_path / "out")
    assert_same_files(src, tmp_path / "out", list(files))


@pytest.mark.timeout(900)
def test_push_then_pull_256mib_blob_is_byte_identical(mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = random.Random(2).randbytes(MiB)
    with open(src / "blob.bin", "wb") as f:
        for i in range(256):
            f.write(struct.pack(">Q", i) + base[8:])
    push(f"{mount.path}/large:v1", ["blob.bin"], cwd=src)
    pull(f"{mount.path}/large:v1", tmp_path / "out")
    assert_same_files(src, tmp_path / "out", ["blob.bin"])


def test_repo_tags_lists_pushed_tags(mount, tmp_path):
    src = tmp_path / "src"
    make_files(src, {"a.txt": b"version one\n"})
    push(f"{mount.path}/tagged:v1", ["a.txt"], cwd=src)
    (src / "a.txt").write_bytes(b"version two\n")
    push(f"{mount.path}/tagged:v2", ["a.txt"], cwd=src)
    assert sorted(tags(f"{mount.path}/tagged")) == ["v1", "v2"]
    pull(f"{mount.path}/tagged:v1", tmp_path / "out1")
    assert (tmp_path / "out1" / "a.txt").read_bytes() == b"version one\n"


def test_oras_tag_adds_second_tag_to_same_manifest(mount, tmp_path):
    src = tmp_path / "src"
    make_files(src, {"a.txt": b"tag me\n"})
    push(f"{mount.path}/retag:v1", ["a.txt"], cwd=src)
    oras("tag", "--oci-layout", f"{mount.path}/retag:v1", "latest")
    assert sorted(tags(f"{mount.path}/retag")) == ["latest", "v1"]
    pull(f"{mount.path}/retag:latest", tmp_path / "out")
    assert_same_files(src, tmp_path / "out", ["a.txt"])
    index = json.loads((mount.path / "retag" / "index.json").read_bytes())
    digests = {m["digest"] for m in index["manifests"]}
    assert len(digests) == 1, index


def test_pushed_layout_pulls_identical_after_remount(mount, tmp_path):
    src = tmp_path / "src"
    make_files(src, {"a.bin": random.Random(3).randbytes(9 * MiB), "b.txt": b"b\n"})
    push(f"{mount.path}/persist:v1", ["a.bin", "b.txt"], cwd=src)
    mount.remount()
    assert tags(f"{mount.path}/persist") == ["v1"]
    pull(f"{mount.path}/persist:v1", tmp_path / "out")
    assert_same_files(src, tmp_path / "out", ["a.bin", "b.txt"])


def test_pushed_layout_is_stored_in_bucket_with_digest_named_blobs(bucket, mount, tmp_path):
    src = tmp_path / "src"
    make_files(src, {"a.txt": b"stored\n"})
    push(f"{mount.path}/stored:v1", ["a.txt"], cwd=src)
    mount.umount()  # flushes everything
    keys = bucket.list("stored/")
    assert "stored/oci-layout" in keys
    assert "stored/index.json" in keys
    # (keys ending in "/" are ocifs's directory markers)
    blobs = [k for k in keys if k.startswith("stored/blobs/sha256/") and not k.endswith("/")]
    assert blobs
    for k in blobs:
        assert hashlib.sha256(bucket.get(k)).hexdigest() == k.rsplit("/", 1)[1], k
    index = json.loads(bucket.get("stored/index.json"))
    for m in index["manifests"]:
        assert f"stored/blobs/sha256/{m['digest'].split(':', 1)[1]}" in blobs


def test_oras_python_sdk_reads_layout_pushed_to_mount(mount, tmp_path):
    """The SDK (a registry client) has no layout push/pull without a registry; it can
    validate an OCI layout and walk it, which is what this checks on the mount."""
    from oras.layout.layout import Layout

    src = tmp_path / "src"
    make_files(src, {"a.txt": b"sdk\n", "b.bin": random.Random(4).randbytes(MiB)})
    push(f"{mount.path}/sdk:v1", ["a.txt", "b.bin"], cwd=src)
    layout = Layout(str(mount.path / "sdk"))  # validates oci-layout, index.json, blobs/
    assert Layout.is_oci_layout(str(mount.path / "sdk"))
    digests = layout.get_ordered_blobs("v1")
    expected_layers = {"sha256:" + sha256_file(src / n) for n in ("a.txt", "b.bin")}
    assert expected_layers <= set(digests)
    for d in digests:
        assert "sha256:" + sha256_file(layout.digest_to_blob_path(d)) == d
