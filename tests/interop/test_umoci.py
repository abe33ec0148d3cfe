"""umoci (Debian 0.4.7) reading from and writing into OCI layouts on an ocifs mount.

umoci's writes are the hardest of the three clients for a filesystem: a
``.umoci-*`` temp directory it flock()s, blobs fsync()ed and renamed into blobs/sha256
while still open, index.json replaced by temp + rename.
"""

from __future__ import annotations

import json

import pytest

from .interop_lib import (
    assert_layout_blobs_verify,
    blob_path,
    files_under,
    read_blob,
    referenced_digests,
    sha256_bytes,
    sha256_file,
    skopeo,
    tagged,
    umoci,
)

pytestmark = pytest.mark.timeout(600)


def copy_in(umoci_image, mount, repo: str):
    skopeo("copy", f"oci:{umoci_image['layout']}:v2", f"oci:{mount.path}/{repo}:v2")
    return mount.path / repo


def test_unpack_from_mount_matches_source_rootfs(ocifs, umoci_image, tmp_path):
    layout = copy_in(umoci_image, ocifs, "unpack")
    bundle = tmp_path / "bundle"
    umoci("unpack", "--image", f"{layout}:v2", bundle)
    assert files_under(bundle / "rootfs") == umoci_image["rootfs_v2"]
    assert (bundle / "rootfs" / "opt" / "app" / "bin" / "run.sh").read_text().startswith("#!/bin/sh")


def test_gc_on_mount_removes_planted_blob_and_keeps_referenced(ocifs, umoci_image):
    layout = copy_in(umoci_image, ocifs, "gc")
    referenced = referenced_digests(layout)
    planted = b"an unreferenced blob planted by the test\n"
    planted_digest = sha256_bytes(planted)
    blob_path(layout, planted_digest).write_bytes(planted)
    assert blob_path(layout, planted_digest).is_file()
    umoci("gc", "--layout", layout)
    names = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert planted_digest.split(":")[1] not in names
    assert not blob_path(layout, planted_digest).exists()
    assert names == {d.split(":")[1] for d in referenced}
    assert_layout_blobs_verify(layout)


def test_gc_on_mount_removes_stale_umoci_temp_dir(ocifs, umoci_image):
    layout = copy_in(umoci_image, ocifs, "gcdir")
    stale = layout / ".umoci-stale0001"
    stale.mkdir()
    (stale / "blob-123").write_bytes(b"half-written")
    umoci("gc", "--layout", layout)
    assert not stale.exists()
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_init_new_insert_on_mount_builds_a_valid_image(ocifs, tmp_path):
    layout = ocifs.path / "built" / "img"
    layout.parent.mkdir()
    umoci("init", "--layout", layout)
    assert (layout / "blobs" / "sha256").is_dir()
    assert not json.loads((layout / "index.json").read_bytes())["manifests"]  # umoci writes null
    umoci("new", "--image", f"{layout}:base")
    add = tmp_path / "add"
    (add / "sub").mkdir(parents=True)
    (add / "hello.txt").write_text("hello\n")
    (add / "sub" / "data.bin").write_bytes(bytes(range(256)) * 1024)
    umoci("insert", "--image", f"{layout}:base", "--tag", "v1", add, "/srv")
    tags = tagged(layout)
    assert sorted(tags) == ["base", "v1"]
    assert_layout_blobs_verify(layout)
    # another client agrees on the manifest
    assert sha256_bytes(skopeo("inspect", "--raw", f"oci:{layout}:v1").stdout.encode()) == tags["v1"]
    bundle = tmp_path / "bundle"
    umoci("unpack", "--image", f"{layout}:v1", bundle)
    assert (bundle / "rootfs" / "srv" / "hello.txt").read_text() == "hello\n"
    assert sha256_file(bundle / "rootfs" / "srv" / "sub" / "data.bin") == sha256_file(
        add / "sub" / "data.bin"
    )
    # no umoci temp directories left behind
    assert not [p for p in layout.iterdir() if p.name.startswith(".umoci-")]


def test_repack_onto_mount_adds_a_layer_readable_after_remount(ocifs, umoci_image, tmp_path):
    layout = copy_in(umoci_image, ocifs, "repack")
    bundle = tmp_path / "bundle"
    umoci("unpack", "--image", f"{layout}:v2", bundle)
    (bundle / "rootfs" / "etc" / "added-by-repack").write_text("repacked on ocifs\n")
    (bundle / "rootfs" / "etc" / "motd").unlink()
    umoci("repack", "--image", f"{layout}:v3", bundle)
    tags = tagged(layout)
    assert sorted(tags) == ["v2", "v3"]
    v3 = json.loads(read_blob(layout, tags["v3"]))
    assert len(v3["layers"]) == 3
    ocifs.remount()
    assert_layout_blobs_verify(layout)
    out = tmp_path / "out"
    umoci("unpack", "--image", f"{layout}:v3", out)
    assert (out / "rootfs" / "etc" / "added-by-repack").read_text() == "repacked on ocifs\n"
    assert not (out / "rootfs" / "etc" / "motd").exists()
    want = dict(umoci_image["rootfs_v2"])
    del want["etc/motd"]
    got = files_under(out / "rootfs")
    del got["etc/added-by-repack"]
    assert got == want


def test_umoci_tag_and_rm_rewrite_index_on_mount(ocifs, umoci_image):
    layout = copy_in(umoci_image, ocifs, "tagrm")
    digest = tagged(layout)["v2"]
    umoci("tag", "--image", f"{layout}:v2", "latest")
    assert tagged(layout) == {"v2": digest, "latest": digest}
    assert sorted(umoci("ls", "--layout", layout).stdout.split()) == ["latest", "v2"]
    umoci("rm", "--image", f"{layout}:v2")
    assert tagged(layout) == {"latest": digest}
    assert blob_path(layout, digest).is_file()
