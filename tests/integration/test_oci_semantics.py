"""What ocifs guarantees for OCI layouts that a plain S3 mount does not (real oras, real mount)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import Mount, ocifs_bin, oras, run
from ocifs import metrics

MiB = 1024 * 1024


def stats(m: Mount) -> dict[str, float]:
    out = run([*ocifs_bin(), "stats", str(m.path)], env=m.bucket.s3.env()).stdout
    return metrics.parse(out)


def req(values: dict[str, float], op: str) -> float:
    return values.get(f'ocifs_s3_requests_total{{op="{op}"}}', 0.0)


def sent(values: dict[str, float]) -> float:
    return values.get('ocifs_s3_bytes_total{direction="out"}', 0.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def incomplete_uploads(m: Mount) -> list[str]:
    r = m.bucket.s3.client.list_multipart_uploads(Bucket=m.bucket.name, Prefix=m.bucket.prefix)
    return [u["Key"] for u in r.get("Uploads", [])]


def tool(m: Mount, *args: str, check: bool = True):
    return run(
        [*ocifs_bin(), *args, m.bucket.url, "--endpoint-url", m.bucket.s3.endpoint],
        env=m.bucket.s3.env(),
        check=check,
        timeout=300,
    )


def push(m: Mount, ref: str, files: dict[str, bytes], tmp_path, *extra: str) -> str:
    src = tmp_path / f"src-{abs(hash(ref))}"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = oras("push", "--oci-layout", f"{m.path}/{ref}", *files, *extra, cwd=src).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("Digest:"))


# --- zero-copy commit ------------------------------------------------------------------------
@pytest.mark.slow
def test_push_of_256mib_blob_makes_no_copy_and_sends_it_once(mount, tmp_path):
    blob = os.urandom(MiB) * 256
    before, served = stats(mount), mount.bucket.s3.requests_served()
    push(mount, "zc:v1", {"blob.bin": blob}, tmp_path)
    after, served_after = stats(mount), mount.bucket.s3.requests_served()
    # MinIO's own count: no CopyObject, no UploadPartCopy reached the server
    # (MinIO's names: CopyObjectPart is UploadPartCopy, PutObjectPart is UploadPart)
    for api in ("CopyObject", "CopyObjectPart"):
        assert served_after.get(api, 0) - served.get(api, 0) == 0, (api, served, served_after)
    # (and the count is live: the parts of the push are in it)
    assert served_after.get("PutObjectPart", 0) - served.get("PutObjectPart", 0) >= 32, (served, served_after)
    uploaded = sent(after) - sent(before)
    assert 256 * MiB <= uploaded < 256 * MiB + MiB, f"sent {uploaded} bytes for a 256 MiB blob"
    assert mount.bucket.head(f"zc/blobs/sha256/{sha(blob)}")["ContentLength"] == 256 * MiB


def test_ingest_file_is_published_under_its_blob_key_at_close_and_renamed_without_a_copy(mount):
    data = os.urandom(3 * MiB) * 7  # 21 MiB: streamed as a multipart upload while written
    digest = sha(data)
    ingest = mount.path / "lay" / "ingest"
    (mount.path / "lay" / "blobs" / "sha256").mkdir(parents=True)
    ingest.mkdir(parents=True)
    tmp = ingest / f"{digest}_12345"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        assert mount.bucket.head(f"lay/blobs/sha256/{digest}") is None  # not before close
        assert incomplete_uploads(mount) == [f"lay/blobs/sha256/{digest}"]  # but streaming
    # close published it: verified, under its digest name (a durability point like any close)
    assert mount.bucket.get(f"lay/blobs/sha256/{digest}") == data
    assert tmp.read_bytes() == data
    served = mount.bucket.s3.requests_served()
    os.rename(tmp, mount.path / "lay" / "blobs" / "sha256" / digest)
    served_after = mount.bucket.s3.requests_served()
    for api in ("CopyObject", "CopyObjectPart", "PutObject", "CompleteMultipartUpload", "PutObjectPart"):
        assert served_after.get(api, 0) == served.get(api, 0), (api, served, served_after)
    assert (mount.path / "lay" / "blobs" / "sha256" / digest).read_bytes() == data
    assert mount.bucket.head(f"lay/ingest/{digest}_12345") is None  # the temp name never existed
    assert incomplete_uploads(mount) == []


def test_ingest_file_unlinked_before_close_leaves_no_object_and_no_upload(mount):
    data = os.urandom(MiB) * 20
    digest = sha(data)
    ingest = mount.path / "lay" / "ingest"
    ingest.mkdir(parents=True)
    tmp = ingest / f"{digest}_1"
    with open(tmp, "wb") as f:
        f.write(data)
        tmp.unlink()
    keys = mount.bucket.list("lay/")
    assert [k for k in keys if not k.endswith("/")] == []
    assert incomplete_uploads(mount) == []


# --- verified blobs --------------------------------------------------------------------------
def test_wrong_content_written_into_a_blob_path_fails_and_leaves_no_object(mount):
    blobs = mount.path / "lay" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    name = sha(b"the right content")
    with pytest.raises(OSError) as exc:
        with open(blobs / name, "wb") as f:
            f.write(b"the wrong content")
    assert exc.value.errno == errno.EBADMSG
    assert mount.bucket.head(f"lay/blobs/sha256/{name}") is None
    assert "refusing to publish" in mount.log


def test_wrong_content_renamed_into_a_blob_path_fails_and_leaves_no_object(mount):
    blobs = mount.path / "lay" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = mount.path / "lay" / "oci-put-blob123"
    tmp.write_bytes(b"not what the name says")
    name = sha(b"something else")
    with pytest.raises(OSError) as exc:
        os.rename(tmp, blobs / name)
    assert exc.value.errno == errno.EBADMSG
    assert mount.bucket.head(f"lay/blobs/sha256/{name}") is None
    assert tmp.read_bytes() == b"not what the name says"


def test_wrong_ingest_content_fails_at_rename_and_leaves_no_object(mount):
    data = os.urandom(MiB) * 12
    claimed = sha(b"claimed")
    (mount.path / "lay" / "blobs" / "sha256").mkdir(parents=True)
    (mount.path / "lay" / "ingest").mkdir(parents=True)
    tmp = mount.path / "lay" / "ingest" / f"{claimed}_7"
    tmp.write_bytes(data)
    with pytest.raises(OSError) as exc:
        os.rename(tmp, mount.path / "lay" / "blobs" / "sha256" / claimed)
    assert exc.value.errno == errno.EBADMSG
    assert mount.bucket.head(f"lay/blobs/sha256/{claimed}") is None
    assert incomplete_uploads(mount) == []


def test_right_content_renamed_into_a_blob_path_is_published(mount):
    blobs = mount.path / "lay" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = mount.path / "lay" / "oci-put-blob9"
    tmp.write_bytes(b"payload")
    os.rename(tmp, blobs / sha(b"payload"))
    assert mount.bucket.get(f"lay/blobs/sha256/{sha(b'payload')}") == b"payload"


# --- no lost tags ----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_mounts_ten_concurrent_pushes_each_keep_all_tags(bucket, mount_factory, tmp_path):
    a = mount_factory(bucket)
    b = mount_factory(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("base")
    oras("push", "--oci-layout", f"{a.path}/shared:v0", "f.txt", cwd=src)

    errors: list[str] = []

    def one(m: Mount, tag: str) -> None:
        d = tmp_path / tag
        d.mkdir()
        (d / "f.txt").write_text(f"content of {tag}")
        env = dict(os.environ, HOME=str(tmp_path / "home"))
        proc = subprocess.run(
            [oras_path(), "push", "--oci-layout", f"{m.path}/shared:{tag}", "f.txt"],
            cwd=d, capture_output=True, text=True, timeout=300, env=env,
        )
        if proc.returncode != 0:
            errors.append(f"{tag}: {proc.stderr.strip()}")

    threads = [threading.Thread(target=one, args=(m, f"{name}{i}")) for i in range(10) for m, name in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == []
    index = json.loads(bucket.get("shared/index.json"))
    tags = {(d.get("annotations") or {}).get("org.opencontainers.image.ref.name") for d in index["manifests"]} - {None}
    assert tags == {"v0"} | {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)}
    time.sleep(1.5)  # the other mount's last write shows here after --metadata-ttl (1 s)
    listed = oras("repo", "tags", "--oci-layout", f"{b.path}/shared").stdout.split()
    assert sorted(listed) == sorted(tags)


def oras_path() -> str:
    from conftest import oras_bin

    return oras_bin()


# --- gc / fsck / ls --------------------------------------------------------------------------
def test_gc_removes_exactly_the_unreachable_blobs(mount, tmp_path):
    keep = b"kept layer"
    drop = b"dropped layer"
    v1 = push(mount, "app:v1", {"keep.txt": keep}, tmp_path)
    v2 = push(mount, "app:v2", {"drop.txt": drop}, tmp_path)
    sig_dir = tmp_path / "sig"
    sig_dir.mkdir()
    (sig_dir / "sig.txt").write_text("signature")
    oras("attach", "--oci-layout", f"{mount.path}/app:v1", "--artifact-type", "application/x.sig", "sig.txt", cwd=sig_dir)
    # Untag v2 the way a layout loses a tag (a rewrite of index.json); oras' own `manifest
    # delete` would garbage-collect by itself, so gc would have nothing left to find.
    index_path = mount.path / "app" / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"] = [d for d in index["manifests"] if d["digest"] != v2]
    index_path.write_text(json.dumps(index))
    planted = b"nobody points here"
    mount.bucket.put(f"app/blobs/sha256/{sha(planted)}", planted)
    before = set(mount.bucket.list("app/blobs/"))

    # --grace 0: mark and sweep in one run (nothing writes now).
    dry = tool(mount, "gc", "--grace", "0", "--dry-run").stdout
    assert set(mount.bucket.list("app/blobs/")) == before, "--dry-run deleted something"
    assert mount.bucket.list(".ocifs/") == [], "--dry-run wrote a mark"
    tool(mount, "gc", "--grace", "0")
    after = set(mount.bucket.list("app/blobs/"))

    gone = before - after
    v2_hex = v2.split(":")[1]
    assert gone == {f"app/blobs/sha256/{sha(drop)}", f"app/blobs/sha256/{v2_hex}", f"app/blobs/sha256/{sha(planted)}"}
    for key in gone:
        assert f"would condemn {key} " in dry and f"would delete {key} " in dry
    # everything reachable still works: the image, and its referrer
    out = tmp_path / "out"
    out.mkdir()
    oras("pull", "--oci-layout", f"{mount.path}/app:v1", cwd=out)
    assert (out / "keep.txt").read_bytes() == keep
    assert "application/x.sig" in oras("discover", "--oci-layout", f"{mount.path}/app:v1").stdout
    assert v1 not in gone


def test_gc_marks_first_and_deletes_only_after_the_grace_period(mount, tmp_path):
    # A blob's age does not matter (a reused blob is old); the time since gc marked it does.
    push(mount, "app:v1", {"a.txt": b"a"}, tmp_path)
    planted = b"unreachable, maybe a push in flight"
    key = f"app/blobs/sha256/{sha(planted)}"
    mount.bucket.put(key, planted)
    out = tool(mount, "gc", "--grace", "20").stdout
    assert f"condemned {key} " in out and mount.bucket.head(key) is not None
    out = tool(mount, "gc", "--grace", "20").stdout
    assert "1 mark(s) pending" in out and mount.bucket.head(key) is not None
    time.sleep(20)
    out = tool(mount, "gc", "--grace", "20").stdout
    assert f"deleted {key} " in out and mount.bucket.head(key) is None


def test_fsck_finds_a_corrupt_blob_and_repair_removes_it(mount, tmp_path):
    layer = b"layer bytes " * 1000
    push(mount, "app:v1", {"layer.bin": layer}, tmp_path)
    key = f"app/blobs/sha256/{sha(layer)}"
    mount.bucket.put(key, b"bit rot")
    mount.bucket.put("app/ingest/deadbeef_1", b"stale")
    res = tool(mount, "fsck", "--grace", "0", check=False)
    assert res.returncode == 1
    assert f"corrupt: {mount.bucket.key(key)}" in res.stdout
    assert "leftover:" in res.stdout and "ingest/deadbeef_1" in res.stdout
    res = tool(mount, "fsck", "--grace", "0", "--repair", check=False)
    assert mount.bucket.head(key) is None
    assert mount.bucket.head("app/ingest/deadbeef_1") is None


def test_fsck_of_a_healthy_layout_reports_nothing(mount, tmp_path):
    push(mount, "app:v1", {"a.txt": b"fine"}, tmp_path)
    res = tool(mount, "fsck", "--grace", "0")
    assert "fsck: 0 problem(s)" in res.stdout


def test_ls_lists_repos_and_tags(mount, tmp_path):
    push(mount, "one:v1", {"a.txt": b"1"}, tmp_path)
    push(mount, "team/two:v2", {"b.txt": b"2"}, tmp_path)
    repos = json.loads(tool(mount, "ls", "--json").stdout)
    got = {r["repo"]: [t["tag"] for t in r["tags"]] for r in repos}
    assert got == {"one": ["v1"], "team/two": ["v2"]}
    assert "one: v1" in tool(mount, "ls").stdout


def test_verify_reads_turns_a_corrupt_blob_into_eio(bucket, mount_factory):
    good = b"the real layer " * 5000
    digest = sha(good)
    bucket.put(f"lay/blobs/sha256/{digest}", b"bit rot " * 9000)  # corrupt object under the name
    m = mount_factory(bucket, extra_args=["--verify-reads"])
    with pytest.raises(OSError) as exc:
        (m.path / "lay" / "blobs" / "sha256" / digest).read_bytes()
    assert exc.value.errno == errno.EIO
    assert "content does not match its digest" in m.log or "hashes to" in m.log


def test_without_verify_reads_a_blob_reads_as_stored(bucket, mount_factory):
    stored = b"whatever is there " * 100
    bucket.put(f"lay/blobs/sha256/{sha(b'x')}", stored)
    m = mount_factory(bucket)
    assert (m.path / "lay" / "blobs" / "sha256" / sha(b"x")).read_bytes() == stored
