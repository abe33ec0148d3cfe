"""Several hosts on one bucket: what one does is noticed by the others where it matters."""

from __future__ import annotations

import hashlib
import time

from conftest import oras


def test_a_blob_deleted_by_another_host_is_uploaded_again_by_the_next_push(mount_factory, bucket, tmp_path):
    a = mount_factory(bucket)
    src = tmp_path / "src"
    src.mkdir()
    layer = b"a layer both runners push" * 1000
    (src / "layer.bin").write_bytes(layer)
    key = f"app/blobs/sha256/{hashlib.sha256(layer).hexdigest()}"
    oras("push", "--oci-layout", f"{a.path}/app:v1", "layer.bin", cwd=src)
    assert (a.path / key).stat().st_size == len(layer)  # mount A knows the blob
    bucket.s3.client.delete_object(Bucket=bucket.name, Key=bucket.key(key))  # ocifs gc elsewhere
    time.sleep(1.5)  # --metadata-ttl: existence is rechecked after it
    out = oras("push", "--oci-layout", f"{a.path}/app:v2", "layer.bin", cwd=src).stdout
    assert "Exists" not in "".join(l for l in out.splitlines() if "layer.bin" in l), out
    assert bucket.get(key) == layer, "the push skipped a blob that no longer exists"
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    oras("pull", "--oci-layout", f"{a.path}/app:v2", cwd=pulled)
    assert (pulled / "layer.bin").read_bytes() == layer
