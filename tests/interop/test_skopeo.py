"""skopeo (Debian 1.9.3, ``oci:`` transport) writing to and reading from an ocifs mount.

The image is a real multi-layer image built locally with umoci (see interop_lib).
skopeo's ``oci:`` transport lstat()s the parent of the layout directory, so the parent
must exist: that is skopeo's own rule (the same on a local disk), hence the mkdirs.
"""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from .interop_lib import (
    archive_index,
    assert_layout_blobs_verify,
    blob_path,
    read_blob,
    referenced_digests,
    sha256_bytes,
    sha256_file,
    skopeo,
    tagged,
)

pytestmark = pytest.mark.timeout(600)


def raw_manifest_digest(ref: str) -> str:
    """sha256 of the manifest bytes skopeo reads from ``ref``."""
    return sha256_bytes(skopeo("inspect", "--raw", ref).stdout.encode())


def copy_in(umoci_image, mount, repo: str, tag: str = "v2"):
    src = umoci_image["layout"]
    (mount.path / repo).parent.mkdir(parents=True, exist_ok=True)
    skopeo("copy", f"oci:{src}:{tag}", f"oci:{mount.path}/{repo}:{tag}")
    return mount.path / repo


def test_copy_into_mount_keeps_manifest_digest_and_blobs(ocifs, umoci_image):
    src = umoci_image["layout"]
    want = tagged(src)["v2"]
    layout = copy_in(umoci_image, ocifs, "sk/img")
    assert tagged(layout) == {"v2": want}
    assert raw_manifest_digest(f"oci:{layout}:v2") == want
    assert read_blob(layout, want) == read_blob(src, want)
    assert_layout_blobs_verify(layout)
    manifest = json.loads(read_blob(layout, want))
    assert len(manifest["layers"]) == 2
    assert json.loads((layout / "oci-layout").read_bytes())["imageLayoutVersion"] == "1.0.0"


def test_copy_from_mount_to_oci_archive_keeps_digests(ocifs, umoci_image, tmp_path):
    want = tagged(umoci_image["layout"])["v2"]
    layout = copy_in(umoci_image, ocifs, "arch")
    tar = tmp_path / "img.tar"
    skopeo("copy", f"oci:{layout}:v2", f"oci-archive:{tar}:v2")
    idx = archive_index(tar)
    assert [d["digest"] for d in idx["manifests"]] == [want]
    assert raw_manifest_digest(f"oci-archive:{tar}:v2") == want
    with tarfile.open(tar) as t:
        names = {n for n in t.getnames() if n.startswith("blobs/sha256/")}
    assert {f"blobs/sha256/{d.split(':')[1]}" for d in referenced_digests(layout)} <= names


def test_copy_from_mount_to_dir_keeps_digests(ocifs, umoci_image, tmp_path):
    src = umoci_image["layout"]
    want = tagged(src)["v2"]
    layout = copy_in(umoci_image, ocifs, "dirout")
    out = tmp_path / "dir"
    skopeo("copy", f"oci:{layout}:v2", f"dir:{out}")
    assert sha256_file(out / "manifest.json") == want
    manifest = json.loads((out / "manifest.json").read_bytes())
    for d in [manifest["config"], *manifest["layers"]]:
        p = out / d["digest"].split(":")[1]
        assert sha256_file(p) == d["digest"]
        assert p.read_bytes() == blob_path(src, d["digest"]).read_bytes()


def test_copy_mount_to_mount_and_second_tag_keeps_both_tags(ocifs, umoci_image):
    src = umoci_image["layout"]
    want = tagged(src)
    layout = copy_in(umoci_image, ocifs, "two", "v2")
    skopeo("copy", f"oci:{src}:v1", f"oci:{layout}:v1")  # second tag, same layout
    assert tagged(layout) == {"v1": want["v1"], "v2": want["v2"]}
    skopeo("copy", f"oci:{layout}:v2", f"oci:{ocifs.path}/three:copied")
    assert tagged(ocifs.path / "three") == {"copied": want["v2"]}
    assert_layout_blobs_verify(layout)
    assert_layout_blobs_verify(ocifs.path / "three")


def test_recopy_overwrites_read_only_manifest_file(ocifs, umoci_image):
    """skopeo os.WriteFile()s manifests over existing files; oras leaves blobs 0444."""
    want = tagged(umoci_image["layout"])["v2"]
    layout = copy_in(umoci_image, ocifs, "ro")
    for p in (layout / "blobs" / "sha256").iterdir():
        os.chmod(p, 0o444)
    assert blob_path(layout, want).stat().st_mode & 0o777 == 0o444
    skopeo("copy", f"oci:{umoci_image['layout']}:v2", f"oci:{layout}:again")
    assert tagged(layout) == {"v2": want, "again": want}
    assert_layout_blobs_verify(layout)


def test_copied_image_reads_back_after_remount_from_fresh_cache(ocifs, umoci_image, bucket, tmp_path):
    want = tagged(umoci_image["layout"])["v2"]
    layout = copy_in(umoci_image, ocifs, "persist/img")
    ocifs.remount()
    assert raw_manifest_digest(f"oci:{layout}:v2") == want
    assert_layout_blobs_verify(layout)
    out = tmp_path / "dir"
    skopeo("copy", f"oci:{layout}:v2", f"dir:{out}")
    assert sha256_file(out / "manifest.json") == want
    keys = set(bucket.list("persist/img/"))
    assert {f"persist/img/blobs/sha256/{d.split(':')[1]}" for d in referenced_digests(layout)} <= keys
