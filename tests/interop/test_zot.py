"""zot v2.1.9 (the real, pinned binary) with its storage root on an ocifs mount, and zot's own
S3 driver on the same bucket.

zot's local driver does everything the mount has to get right: ``oci-layout`` and
``index.json`` written with open(O_WRONLY|O_CREAT) + ftruncate(0) + write + close, each PATCH
of an upload a separate open / seek-to-end / write / close of ``.uploads/<uuid>``, the whole
upload read back for its digest, a rename into ``blobs/``, manifests written straight into
``blobs/``, deletes, referrers. Clients: the oras CLI, the oras Python SDK, and the OCI
distribution API driven with urllib where a test needs a request no client makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.parse

import pytest
from oras.client import OrasClient

from testkit import Zot, storage_on_root, storage_on_s3

from .interop_lib import MiB, blob_path, fail, oras, sha256_bytes, sha256_file, tagged, top

pytestmark = pytest.mark.timeout(900)

SIZES = {"small.bin": 1024, "mid.bin": 64 * MiB, "big.bin": 512 * MiB}
VISIBLE_TIMEOUT = 30  # another mount sees a change within --metadata-ttl (1 s); generous deadline


@pytest.fixture(scope="session")
def layers(tmp_path_factory):
    """Random files of 1 KiB, 64 MiB and 512 MiB: name -> (path, digest)."""
    d = tmp_path_factory.mktemp("zot-layers")
    out = {}
    for name, size in SIZES.items():
        h = hashlib.sha256()
        with open(d / name, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 8 * MiB))
                h.update(block)
                f.write(block)
                left -= len(block)
        out[name] = (d / name, "sha256:" + h.hexdigest())
    return out


def small_files(d, **files: bytes):
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def oras_push(zot: Zot, ref: str, names, cwd, *extra) -> str:
    """oras push over plain HTTP; returns the manifest digest."""
    res = oras("push", "--plain-http", f"{zot.addr}/{ref}", *extra, "--format", "json", *names, cwd=cwd)
    return json.loads(res.stdout)["digest"]


def oras_pull(zot: Zot, ref: str, out) -> dict[str, str]:
    """oras pull over plain HTTP into a new directory; name -> sha256 of what arrived."""
    out.mkdir(parents=True)
    oras("pull", "--plain-http", f"{zot.addr}/{ref}", "-o", out, cwd=out)
    return {p.name: sha256_file(p) for p in out.iterdir()}


def sdk(zot: Zot) -> OrasClient:
    return OrasClient(hostname=zot.addr, insecure=True)


def digests(layers, names) -> dict[str, str]:
    return {n: layers[n][1] for n in names}


def assert_blobs_in_bucket(bucket, repo: str, want: dict[str, str]) -> None:
    """Every digest is an object ``<repo>/blobs/sha256/<hex>`` of the right size."""
    for name, dg in want.items():
        head = bucket.head(f"{repo}/blobs/sha256/{dg.split(':')[1]}")
        assert head is not None, f"{name}: blob {dg} is not in the bucket"
        assert head["ContentLength"] == SIZES[name], f"{name}: {head['ContentLength']} bytes in the bucket"
    assert not [k for k in bucket.list(f"{repo}/.uploads/") if not k.endswith("/")], "upload left behind"


def wait_until(what: str, cond, timeout: float = VISIBLE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            fail(f"{what}: not true after {timeout}s")
        time.sleep(0.2)


def start_upload(z: Zot, repo: str, data: bytes = b"") -> tuple[str, str]:
    """POST, then one PATCH of ``data`` if any; returns (location, upload uuid)."""
    status, h, body = z.request("POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    assert status == 202, body
    loc = h["Location"]
    if data:
        loc = patch(z, loc, data, 0)
    return loc, loc.split("?")[0].rstrip("/").rsplit("/", 1)[1]


def patch(z: Zot, location: str, data: bytes, offset: int) -> str:
    """One PATCH with Content-Range; zot must report everything so far. Returns the next location."""
    status, h, body = z.request("PATCH", location, data, {
        "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(data) - 1}",
        "Content-Length": str(len(data))})
    assert status == 202, body
    assert h["Range"] == f"0-{offset + len(data) - 1}"
    return h["Location"]


def finish_upload(z: Zot, location: str, data: bytes) -> str:
    """PUT ?digest= of an upload whose bytes were all sent; returns the digest."""
    dg = sha256_bytes(data)
    status, _h, body = z.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={urllib.parse.quote(dg)}",
                                 b"", {"Content-Length": "0"})
    assert status == 201, body
    return dg


def tagged_via(z: Zot, repo: str, tag: str) -> str:
    status, h, _ = z.request("HEAD", f"/v2/{repo}/manifests/{tag}",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200
    return h["Docker-Content-Digest"]


def index_merges(m) -> int:
    """The mount's ocifs_index_merges_total (``ocifs stats``)."""
    res = top.run([*top.ocifs_bin(), "stats", m.path], env=m.bucket.s3.env(), timeout=30)
    return int(next(ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("ocifs_index_merges_total")))


# --------------------------------------------------------------------------- push / pull


@pytest.mark.slow
def test_oras_cli_push_and_pull_1k_64m_512m_through_zot_on_the_mount(ocifs, zot, bucket, layers, tmp_path):
    names = list(SIZES)
    src = layers["small.bin"][0].parent
    digest = oras_push(zot, "cli/app:v1", names, src)
    assert zot.tags("cli/app") == ["v1"]
    assert tagged(ocifs.path / "cli/app") == {"v1": digest}
    assert oras_pull(zot, "cli/app:v1", tmp_path / "out") == digests(layers, names)
    assert_blobs_in_bucket(bucket, "cli/app", digests(layers, names))
    assert zot.errors_logged() == []


@pytest.mark.slow
def test_oras_sdk_push_and_pull_1k_64m_512m_through_zot_on_the_mount(ocifs, zot, bucket, layers, tmp_path):
    names = list(SIZES)
    client = sdk(zot)
    r = client.push(target=f"{zot.addr}/sdk:v1", files=[str(layers[n][0]) for n in names],
                    disable_path_validation=True, quiet=True)
    assert r.status_code == 201, r.text
    out = tmp_path / "out"
    got = client.pull(target=f"{zot.addr}/sdk:v1", outdir=str(out))
    assert sorted(os.path.basename(p) for p in got) == sorted(names)
    assert {n: sha256_file(out / n) for n in names} == digests(layers, names)
    assert_blobs_in_bucket(bucket, "sdk", digests(layers, names))
    assert zot.errors_logged() == []


def test_oras_sdk_chunked_push_patches_64m_in_5m_chunks(ocifs, zot, bucket, layers, tmp_path):
    """13 PATCH requests for the 64 MiB layer: each one a separate open/seek/write/close."""
    names = ["small.bin", "mid.bin"]
    client = sdk(zot)
    r = client.push(target=f"{zot.addr}/chunked:v1", files=[str(layers[n][0]) for n in names],
                    disable_path_validation=True, do_chunked=True, chunk_size=5 * MiB, quiet=True)
    assert r.status_code == 201, r.text
    assert oras_pull(zot, "chunked:v1", tmp_path / "out") == digests(layers, names)
    assert_blobs_in_bucket(bucket, "chunked", digests(layers, names))
    assert zot.errors_logged() == []


def test_chunked_upload_over_the_api_appends_across_patches_and_is_published_at_each(ocifs, zot, bucket):
    """POST, three PATCHes with Content-Range, PUT ?digest=: after every PATCH the upload file
    on the mount and its object in the bucket hold exactly the bytes sent so far."""
    chunks = [os.urandom(MiB + 7), os.urandom(3 * MiB), b"tail"]
    data = b"".join(chunks)
    location, uuid = start_upload(zot, "api/chunks")
    upload = ocifs.path / "api/chunks/.uploads" / uuid
    sent = 0
    for c in chunks:
        location = patch(zot, location, c, sent)
        sent += len(c)
        assert upload.stat().st_size == sent
        assert upload.read_bytes() == data[:sent]
        assert bucket.get(f"api/chunks/.uploads/{uuid}") == data[:sent]  # each close published it
        status, h, _ = zot.request("GET", location)  # upload status: zot stats the file
        assert (status, h["Range"]) == (204, f"0-{sent - 1}")
    dg = finish_upload(zot, location, data)
    assert not upload.exists()
    assert bucket.head(f"api/chunks/.uploads/{uuid}") is None
    assert bucket.get(f"api/chunks/blobs/sha256/{dg.split(':')[1]}") == data
    status, _h, body = zot.request("GET", f"/v2/api/chunks/blobs/{dg}")
    assert (status, body) == (200, data)


def test_upload_cancel_and_blob_delete_remove_their_objects(ocifs, zot, bucket):
    loc, uuid = start_upload(zot, "api/del", b"abandoned")
    assert bucket.get(f"api/del/.uploads/{uuid}") == b"abandoned"
    assert zot.request("DELETE", loc)[0] == 204
    assert not (ocifs.path / "api/del/.uploads" / uuid).exists()
    assert bucket.head(f"api/del/.uploads/{uuid}") is None
    data = os.urandom(3000)
    loc, _ = start_upload(zot, "api/del", data)
    dg = finish_upload(zot, loc, data)
    assert zot.request("DELETE", f"/v2/api/del/blobs/{dg}")[0] == 202
    assert zot.request("HEAD", f"/v2/api/del/blobs/{dg}")[0] == 404
    assert not blob_path(ocifs.path / "api/del", dg).exists()
    assert bucket.head(f"api/del/blobs/sha256/{dg.split(':')[1]}") is None
    assert zot.errors_logged() == []


# --------------------------------------------------------------------------- restart, ranges


def test_restart_zot_and_remount_then_pull_and_ranged_blob_gets(ocifs, zot, bucket, tmp_path):
    data = os.urandom(20 * MiB + 123)  # crosses ocifs's 8 MiB chunks
    src = small_files(tmp_path / "src", **{"layer.bin": data, "note.txt": b"restart me\n"})
    digest = oras_push(zot, "restart:v1", ["layer.bin", "note.txt"], src)
    zot.stop()
    ocifs.remount()  # a fresh cache: everything below comes from the bucket
    zot.start()
    assert zot.catalog() == ["restart"]
    assert zot.tags("restart") == ["v1"]
    assert oras_pull(zot, "restart:v1", tmp_path / "out") == {
        "layer.bin": sha256_bytes(data), "note.txt": sha256_bytes(b"restart me\n")}
    status, _h, body = zot.request("GET", "/v2/restart/manifests/v1",
                                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and sha256_bytes(body) == digest
    dg = sha256_bytes(data)
    for first, last in [(0, 0), (8 * MiB - 5, 8 * MiB + 5), (17 * MiB + 3, 19 * MiB), (len(data) - 10, len(data) - 1)]:
        status, h, body = zot.request("GET", f"/v2/restart/blobs/{dg}", headers={"Range": f"bytes={first}-{last}"})
        assert status == 206, (first, last, status)
        assert h["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        assert body == data[first:last + 1], (first, last)
    assert zot.errors_logged() == []


def test_an_upload_resumes_after_zot_restarts_on_a_remounted_mount(ocifs, zot, bucket):
    """Every PATCH is durable when zot answers it (its close published the upload file), so an
    upload survives a restart of zot and of the mount, and resumes where it was."""
    first, rest = os.urandom(2 * MiB + 1), os.urandom(MiB)
    loc, uuid = start_upload(zot, "resume", first)
    zot.stop()
    ocifs.remount()
    zot.start()
    status, h, _ = zot.request("GET", loc)
    assert (status, h["Range"]) == (204, f"0-{len(first) - 1}")
    loc = patch(zot, loc, rest, len(first))
    dg = finish_upload(zot, loc, first + rest)
    assert bucket.get(f"resume/blobs/sha256/{dg.split(':')[1]}") == first + rest
    assert bucket.head(f"resume/.uploads/{uuid}") is None
    assert zot.errors_logged() == []


# --------------------------------------------------------------------------- concurrency


def test_two_repos_pushed_at_once_through_one_zot(ocifs, zot, tmp_path):
    files = {f"f{i}.bin": os.urandom(3 * MiB + i) for i in range(2)}
    src = small_files(tmp_path / "src", **files)
    procs = []
    for i in range(2):
        args = [top.oras_bin(), "push", "--plain-http", f"{zot.addr}/par{i}:v1", f"f{i}.bin"]
        procs.append(subprocess.Popen(args, cwd=src, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for i, p in enumerate(procs):
        try:
            _out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            fail("concurrent oras push timed out after 300s")
        assert p.returncode == 0, err.decode()
    assert zot.catalog() == ["par0", "par1"]
    for i in range(2):
        assert oras_pull(zot, f"par{i}:v1", tmp_path / f"out{i}") == {f"f{i}.bin": sha256_bytes(files[f"f{i}.bin"])}


def test_two_zot_instances_on_two_mounts_push_different_tags_into_one_repo(bucket, mount_factory, zot_factory, tmp_path):
    """Each zot reads index.json from its mount before every manifest PUT and writes it back
    whole; on ocifs that write is a conditional PUT which merges a concurrent writer's tags
    instead of dropping them. 6 rounds of one push per zot at the same time, the first one
    creating the repository on both sides at once: no tag lost."""
    m1, m2 = mount_factory(bucket), mount_factory(bucket)
    z1 = zot_factory(storage_on_root(m1.path), "zot1")
    z2 = zot_factory(storage_on_root(m2.path), "zot2")
    src = small_files(tmp_path / "src", **{"a.txt": b"from zot1\n", "b.txt": b"from zot2\n"})
    want: set[str] = set()
    for r in range(6):
        results: dict[str, object] = {}

        def push(z, tag, name):
            try:
                results[tag] = oras_push(z, f"shared:{tag}", [name], src)
            except BaseException as e:  # pytest.fail inside a thread
                results[tag] = e

        threads = [threading.Thread(target=push, args=(z1, f"r{r}z1", "a.txt")),
                   threading.Thread(target=push, args=(z2, f"r{r}z2", "b.txt"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
            assert not t.is_alive(), "oras push did not return in 300s"
        for tag, res in results.items():
            assert isinstance(res, str), f"push of {tag}: {res}"
        want |= {f"r{r}z1", f"r{r}z2"}
    index = json.loads(bucket.get("shared/index.json"))
    in_bucket = {d["annotations"]["org.opencontainers.image.ref.name"] for d in index["manifests"]}
    assert in_bucket == want, f"lost: {sorted(want - in_bucket)}"
    for z in (z1, z2):
        wait_until(f"{z.name} lists every tag", lambda z=z: set(z.tags("shared")) == want)
    print(f"index.json merges (races ocifs resolved): {sum(index_merges(m) for m in (m1, m2))}")


# --------------------------------------------------------------------------- delete, referrers, catalog


def test_manifest_delete_referrers_catalog_and_tag_list(ocifs, zot, bucket, tmp_path):
    src = small_files(tmp_path / "src", **{"a.txt": b"subject\n", "sig.txt": b"signature\n"})
    subject = oras_push(zot, "team/app:v1", ["a.txt"], src)
    oras_push(zot, "team/app:v2", ["sig.txt"], src)
    oras_push(zot, "other:v1", ["a.txt"], src)
    assert zot.catalog() == ["other", "team/app"]
    assert zot.tags("team/app") == ["v1", "v2"]
    res = oras("attach", "--plain-http", f"{zot.addr}/team/app:v1", "--artifact-type",
               "application/vnd.test.sig", "--format", "json", "sig.txt", cwd=src)
    sig = json.loads(res.stdout)["digest"]
    found = json.loads(oras("discover", "--plain-http", f"{zot.addr}/team/app:v1", "--format", "json").stdout)
    assert [r["digest"] for r in found["referrers"]] == [sig]
    refs = zot.json(f"/v2/team/app/referrers/{subject}")
    assert [(m["digest"], m["artifactType"]) for m in refs["manifests"]] == [(sig, "application/vnd.test.sig")]
    # the referrer is a manifest of the layout on the mount, with its subject
    assert json.loads(blob_path(ocifs.path / "team/app", sig).read_bytes())["subject"]["digest"] == subject

    oras("manifest", "delete", "--plain-http", "--force", f"{zot.addr}/team/app@{sig}")
    found = json.loads(oras("discover", "--plain-http", f"{zot.addr}/team/app:v1", "--format", "json").stdout)
    assert not found.get("referrers")
    v2 = tagged(ocifs.path / "team/app")["v2"]
    oras("manifest", "delete", "--plain-http", "--force", f"{zot.addr}/team/app:v2")
    assert zot.tags("team/app") == ["v1"]
    assert zot.request("GET", f"/v2/team/app/manifests/{v2}")[0] == 404
    assert tagged(ocifs.path / "team/app") == {"v1": subject}
    assert not blob_path(ocifs.path / "team/app", v2).exists()
    assert bucket.head(f"team/app/blobs/sha256/{v2.split(':')[1]}") is None
    assert bucket.head(f"team/app/blobs/sha256/{sig.split(':')[1]}") is None
    assert zot.errors_logged() == []


# --------------------------------------------------------------------------- zot <-> oras --oci-layout


def test_layout_pushed_by_oras_on_the_mount_is_served_by_zot(ocifs, zot, tmp_path):
    data = os.urandom(9 * MiB)
    src = small_files(tmp_path / "src", **{"l.bin": data})
    res = oras("push", "--oci-layout", f"{ocifs.path}/fromlayout:v1", "--format", "json", "l.bin", cwd=src)
    digest = json.loads(res.stdout)["digest"]
    assert "fromlayout" in zot.catalog()
    assert zot.tags("fromlayout") == ["v1"]
    assert oras_pull(zot, "fromlayout:v1", tmp_path / "out") == {"l.bin": sha256_bytes(data)}
    status, _h, body = zot.request("GET", "/v2/fromlayout/manifests/v1",
                                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and sha256_bytes(body) == digest


def test_image_pushed_to_zot_is_pulled_with_oras_oci_layout_from_the_mount(ocifs, zot, tmp_path):
    data = os.urandom(9 * MiB)
    src = small_files(tmp_path / "src", **{"l.bin": data})
    digest = oras_push(zot, "tolayout:v1", ["l.bin"], src)
    out = tmp_path / "out"
    out.mkdir()
    oras("pull", "--oci-layout", f"{ocifs.path}/tolayout:v1", "-o", out, cwd=out)
    assert sha256_file(out / "l.bin") == sha256_bytes(data)
    assert oras("repo", "tags", "--oci-layout", f"{ocifs.path}/tolayout").stdout.split() == ["v1"]
    assert tagged(ocifs.path / "tolayout") == {"v1": digest}


# --------------------------------------------------------------------------- zot's own S3 driver


@pytest.fixture
def zot_s3(bucket, zot_factory, tmp_path_factory):
    """zot's S3 driver on the test's bucket, layouts at the bucket root."""
    if bucket.prefix:
        fail("zot's S3 driver keeps repositories at the bucket root: run this test on the "
             "suite's own MinIO (unset OCIFS_TEST_S3_ENDPOINT)")
    s3 = bucket.s3
    return zot_factory(storage_on_s3(tmp_path_factory.mktemp("zot-s3-state"), bucket.name, s3.endpoint,
                                     s3.access_key, s3.secret_key), "zot-s3")


def test_pushed_to_zot_on_the_mount_is_served_by_zots_s3_driver(ocifs, zot, zot_s3, tmp_path):
    data = os.urandom(12 * MiB)
    src = small_files(tmp_path / "src", **{"l.bin": data, "sig.txt": b"sig\n"})
    digest = oras_push(zot, "viamount:v1", ["l.bin"], src)
    oras("attach", "--plain-http", f"{zot.addr}/viamount:v1", "--artifact-type", "application/vnd.test.sig",
         "sig.txt", cwd=src)
    assert "viamount" in zot_s3.catalog()
    assert zot_s3.tags("viamount") == ["v1"]
    assert oras_pull(zot_s3, "viamount:v1", tmp_path / "out") == {"l.bin": sha256_bytes(data)}
    refs = zot_s3.json(f"/v2/viamount/referrers/{digest}")
    assert [m["artifactType"] for m in refs["manifests"]] == ["application/vnd.test.sig"]
    assert zot_s3.errors_logged() == []


def test_pushed_to_zots_s3_driver_is_served_by_zot_on_the_mount_and_oras_layout(ocifs, zot, zot_s3, tmp_path):
    data = os.urandom(12 * MiB)
    src = small_files(tmp_path / "src", **{"l.bin": data})
    # chunked, so the S3 driver's multipart "resumable" uploads are exercised too
    r = sdk(zot_s3).push(target=f"{zot_s3.addr}/vias3:v1", files=[str(src / "l.bin")],
                         disable_path_validation=True, do_chunked=True, chunk_size=5 * MiB, quiet=True)
    assert r.status_code == 201, r.text
    digest = tagged_via(zot_s3, "vias3", "v1")
    wait_until("the mount sees the repo zot's S3 driver wrote", lambda: "vias3" in zot.catalog())
    assert zot.tags("vias3") == ["v1"]
    assert oras_pull(zot, "vias3:v1", tmp_path / "out") == {"l.bin": sha256_bytes(data)}
    out = tmp_path / "out2"
    out.mkdir()
    oras("pull", "--oci-layout", f"{ocifs.path}/vias3:v1", "-o", out, cwd=out)
    assert sha256_file(out / "l.bin") == sha256_bytes(data)
    assert tagged(ocifs.path / "vias3") == {"v1": digest}


def test_what_each_side_sees_of_the_others_markers_and_upload_leftovers(ocifs, zot, zot_s3, bucket, tmp_path):
    """ocifs keeps an empty directory as a ``dir/`` marker object; zot's S3 driver writes no
    markers and keeps uploads in progress as multipart uploads. Neither confuses the other."""
    src = small_files(tmp_path / "src", **{"a.txt": b"hello\n"})
    # an oras layout on the mount leaves ingest/ empty: a marker inside a repository
    oras("push", "--oci-layout", f"{ocifs.path}/marked:v1", "a.txt", cwd=src)
    (ocifs.path / "empty" / "nested").mkdir(parents=True)  # marker-only directories
    ocifs.remount()  # pending markers are written at unmount at the latest
    markers = sorted(k for k in bucket.list() if k.endswith("/"))
    assert markers == ["empty/nested/", "marked/ingest/"], markers
    # zot's S3 driver: the marked repository is served, marker-only directories are no repos
    assert zot_s3.catalog() == ["marked"]
    assert zot_s3.tags("marked") == ["v1"]
    assert oras_pull(zot_s3, "marked:v1", tmp_path / "out1") == {"a.txt": sha256_bytes(b"hello\n")}

    # an upload in progress through zot on the mount is a plain object, visible to all; zot's
    # S3 driver cannot resume it (it resumes its own multipart uploads only): an upload must
    # finish on the zot that started it
    part = os.urandom(1000)
    loc, uuid = start_upload(zot, "marked", part)
    assert bucket.get(f"marked/.uploads/{uuid}") == part
    assert zot_s3.request("GET", f"/v2/marked/blobs/uploads/{uuid}")[0] == 500
    finish_upload(zot, loc, part)
    # the emptied .uploads/ keeps a marker; the S3 driver lists and serves the repo around it
    wait_until("the marker of the emptied .uploads/", lambda: bucket.head("marked/.uploads/") is not None)
    assert zot_s3.catalog() == ["marked"]
    assert oras_pull(zot_s3, "marked:v1", tmp_path / "out2") == {"a.txt": sha256_bytes(b"hello\n")}

    # an upload in progress through zot's S3 driver is a multipart upload: not an object, so
    # nothing shows under .uploads/ on the mount until the PUT completes it as a blob
    part = os.urandom(2000)
    loc, s3uuid = start_upload(zot_s3, "marked", part)
    time.sleep(1.5)  # past --metadata-ttl: the mount would list anything new by now
    assert s3uuid not in os.listdir(ocifs.path / "marked/.uploads")
    assert not [k for k in bucket.list("marked/.uploads/") if s3uuid in k]
    dg = finish_upload(zot_s3, loc, part)
    wait_until("the mount sees the blob zot's S3 driver committed",
               lambda: blob_path(ocifs.path / "marked", dg).is_file())
    assert blob_path(ocifs.path / "marked", dg).read_bytes() == part
    assert [k for k in bucket.list("marked/.uploads/")] == ["marked/.uploads/"], "the S3 driver left an upload"
