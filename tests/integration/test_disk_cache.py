"""--disk-cache through real mounts: real MinIO, real FUSE, the real oras CLI.

GETs are counted by the mount's own counters (`ocifs stats`); the cache directory is read as
files. A remount is a new daemon (`ocifs umount` + `ocifs mount`) with the same --disk-cache.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from conftest import Bucket, Mount, is_mounted, ocifs_bin, oras, run
from diskcache_util import UsageSampler, cache_path, cached, temp_files
from ocifs import diskcache, metrics

MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(600)


def stats(m: Mount) -> dict[str, float]:
    return metrics.parse(run([*ocifs_bin(), "stats", str(m.path)], env=m.bucket.s3.env()).stdout)


def gets(values: dict[str, float]) -> float:
    return values.get('ocifs_s3_requests_total{op="GetObject"}', 0.0)


def bytes_in(values: dict[str, float]) -> float:
    return values.get('ocifs_s3_bytes_total{direction="in"}', 0.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk_args(d: Path, size_mib: int | None = None) -> list[str]:
    return ["--disk-cache", str(d)] + ([] if size_mib is None else ["--disk-cache-size", str(size_mib)])


def layer_files(seed: int, sizes: dict[str, int]) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {name: rnd.randbytes(n) for name, n in sizes.items()}


def push(m: Mount, ref: str, files: dict[str, bytes], tmp_path: Path) -> None:
    src = tmp_path / f"src-{ref.replace('/', '_').replace(':', '_')}"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    oras("push", "--oci-layout", f"{m.path}/{ref}", *files, cwd=src)


def pull(m: Mount, ref: str, out: Path, files: dict[str, bytes]) -> None:
    out.mkdir(parents=True)
    oras("pull", "--oci-layout", f"{m.path}/{ref}", "-o", str(out), cwd=out)
    for name, data in files.items():
        assert sha((out / name).read_bytes()) == sha(data), name


# oras pushes an empty config ("{}") and never reads it back: the manifest carries its bytes.
EMPTY = hashlib.sha256(b"{}").hexdigest()


def blobs_of(bucket: Bucket, repo: str) -> list[str]:
    """The blobs of a layout that `oras pull` reads: manifest, layers (not the empty config)."""
    return [n for k in bucket.list(f"{repo}/blobs/sha256/") if (n := k.rsplit("/", 1)[1]) != EMPTY]


def mutable_bytes(bucket: Bucket, repo: str) -> int:
    """What `oras pull` reads besides blobs: index.json and oci-layout."""
    return len(bucket.get(f"{repo}/index.json")) + len(bucket.get(f"{repo}/oci-layout"))


def wait_cached(d: Path, names: set[str], timeout: float = 60) -> None:
    """Cache fills finish in the background after the read: wait (bounded) for them."""
    deadline = time.monotonic() + timeout
    while not names <= set(cached(d)):
        if time.monotonic() > deadline:
            pytest.fail(f"not cached after {timeout}s: {sorted(names - set(cached(d)))}")
        time.sleep(0.1)


def assert_all_verify(d: Path) -> None:
    for name in cached(d):
        assert sha(cache_path(d, name).read_bytes()) == name


# --- served from disk --------------------------------------------------------------------------
def test_a_blob_pulled_once_is_read_with_no_get_after_a_remount(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    files = layer_files(1, {"layer.bin": 24 * MiB + 5, "small.txt": 300})
    m = mount_factory(bucket, extra_args=disk_args(d))
    push(m, "app:v1", files, tmp_path)
    m.remount()
    pull(m, "app:v1", tmp_path / "cold", files)
    m.umount()
    blobs = blobs_of(bucket, "app")
    assert set(cached(d)) == set(blobs)  # layers and manifest: every blob pulled

    m.mount()
    before = stats(m)
    pull(m, "app:v1", tmp_path / "warm", files)
    after = stats(m)
    # Only the layout's mutable files were read from S3, once each; no byte of any blob.
    assert gets(after) - gets(before) == 2
    assert bytes_in(after) - bytes_in(before) == mutable_bytes(bucket, "app")
    assert after["ocifs_disk_cache_hits_total"] - before["ocifs_disk_cache_hits_total"] >= len(blobs)

    m.remount()
    before = stats(m)
    for name in blobs:
        data = (m.path / "app" / "blobs" / "sha256" / name).read_bytes()
        assert sha(data) == name
    # No byte of any blob from S3. (Finding the layout, the mount fetches its index.json and
    # oci-layout in the background, as a client reads them next: at most those two GETs.)
    after = stats(m)
    assert gets(after) - gets(before) <= 2
    assert bytes_in(after) - bytes_in(before) <= mutable_bytes(bucket, "app")


def test_the_same_layer_in_two_repos_is_one_cache_entry(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    shared = layer_files(2, {"base.bin": 8 * MiB})
    m = mount_factory(bucket, extra_args=disk_args(d))
    push(m, "one:v1", shared, tmp_path)
    push(m, "two:v1", {**shared, "extra.txt": b"two"}, tmp_path)
    m.remount()
    pull(m, "one:v1", tmp_path / "one", shared)
    m.remount()
    before = stats(m)
    base = sha(shared["base.bin"])
    assert sha((m.path / "two" / "blobs" / "sha256" / base).read_bytes()) == base
    after = stats(m)  # none of the layer from S3 (at most two's index.json and oci-layout)
    assert gets(after) - gets(before) <= 2 and bytes_in(after) - bytes_in(before) <= mutable_bytes(bucket, "two")
    assert list(cached(d)).count(base) == 1


# --- verification ------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_corrupted_cache_file_is_not_served(bucket, mount_factory, tmp_path, damage):
    d = tmp_path / "blobs"
    files = layer_files(3, {"layer.bin": 12 * MiB})
    digest = sha(files["layer.bin"])
    m = mount_factory(bucket, extra_args=disk_args(d))
    push(m, "app:v1", files, tmp_path)
    m.remount()
    pull(m, "app:v1", tmp_path / "cold", files)
    m.umount()
    f = cache_path(d, digest)
    with open(f, "r+b") as fp:
        if damage == "flipped byte":
            fp.seek(5 * MiB + 3)
            b = fp.read(1)
            fp.seek(5 * MiB + 3)
            fp.write(bytes([b[0] ^ 1]))
        else:
            fp.truncate(MiB)

    m.mount()
    before = stats(m)
    pull(m, "app:v1", tmp_path / "after", files)  # right bytes: from S3
    after = stats(m)
    assert bytes_in(after) - bytes_in(before) >= len(files["layer.bin"])
    assert after["ocifs_disk_cache_dropped_total"] == 1
    assert f"dropped blob sha256:{digest[:12]}" in m.log
    m.umount()
    assert sha(f.read_bytes()) == digest  # read front to back from S3: cached again, right


def test_index_json_and_other_mutable_files_are_never_cached(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    files = layer_files(4, {"layer.bin": 3 * MiB})
    m = mount_factory(bucket, extra_args=disk_args(d))
    push(m, "app:v1", files, tmp_path)
    (m.path / "app" / "notes.bin").write_bytes(os.urandom(2 * MiB))
    m.remount()
    for name in ("index.json", "oci-layout", "notes.bin"):
        (m.path / "app" / name).read_bytes()
    pull(m, "app:v1", tmp_path / "out", files)
    m.umount()
    assert set(cached(d)) == set(blobs_of(bucket, "app"))  # blobs, by digest; nothing else
    assert_all_verify(d)
    m.mount()
    before = stats(m)
    (m.path / "app" / "index.json").read_bytes()
    (m.path / "app" / "notes.bin").read_bytes()
    assert gets(stats(m)) - gets(before) >= 2


def test_a_blob_deleted_from_s3_is_not_served_although_cached(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    files = layer_files(5, {"layer.bin": 2 * MiB})
    digest = sha(files["layer.bin"])
    m = mount_factory(bucket, extra_args=disk_args(d))
    push(m, "app:v1", files, tmp_path)
    m.remount()
    pull(m, "app:v1", tmp_path / "out", files)
    m.umount()
    assert digest in cached(d)
    bucket.s3.client.delete_object(Bucket=bucket.name, Key=bucket.key(f"app/blobs/sha256/{digest}"))
    m.mount()
    assert not (m.path / "app" / "blobs" / "sha256" / digest).exists()
    with pytest.raises(FileNotFoundError):
        (m.path / "app" / "blobs" / "sha256" / digest).read_bytes()


def test_a_cache_dir_that_is_not_ours_stops_the_mount_with_one_line(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    d.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (d / diskcache.ROOT_NAME).symlink_to(tmp_path / "elsewhere")
    m = mount_factory(bucket, extra_args=disk_args(d), mount=False)
    m.generation += 1
    m.cache_dir.mkdir(parents=True)
    res = run(m.mount_args(), env=bucket.s3.env(), timeout=60, check=False)
    assert res.returncode == 1, res.describe()
    assert res.stderr == (
        f"ocifs: refusing to use {d / diskcache.ROOT_NAME}: it is a symlink; remove it, or use another --disk-cache\n"
    ), res.describe()
    assert not is_mounted(m.path)


# --- several mounts ----------------------------------------------------------------------------
def test_two_mounts_share_the_cache_dir(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    files = layer_files(6, {"a.bin": 16 * MiB, "b.bin": 5 * MiB})
    big = layer_files(7, {"big.bin": 40 * MiB})
    a = mount_factory(bucket, extra_args=disk_args(d))
    b = mount_factory(bucket, extra_args=disk_args(d))
    push(a, "app:v1", files, tmp_path)
    push(a, "big:v1", big, tmp_path)
    a.remount()

    pull(a, "app:v1", tmp_path / "from-a", files)
    wait_cached(d, set(blobs_of(bucket, "app")))
    before = stats(b)
    pull(b, "app:v1", tmp_path / "from-b", files)
    after = stats(b)
    assert bytes_in(after) - bytes_in(before) == mutable_bytes(bucket, "app")

    # both read a blob neither has cached, at once: two fills, one verified entry, no error
    path = "big/blobs/sha256/" + sha(big["big.bin"])
    got: dict[str, str] = {}

    def read(m: Mount) -> None:
        got[m.path.name + str(id(m))] = sha((m.path / path).read_bytes())

    threads = [threading.Thread(target=read, args=(m,)) for m in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert list(got.values()) == [sha(big["big.bin"])] * 2
    a.umount()
    b.umount()
    assert sha(big["big.bin"]) in cached(d)
    assert_all_verify(d)
    assert temp_files(d) == []
    assert "disk cache:" not in a.log + b.log


def test_the_size_bound_holds_with_two_mounts_pulling_at_once(bucket, mount_factory, tmp_path):
    d = tmp_path / "blobs"
    bound = 24
    repos = {
        "left": layer_files(8, {f"l{i}.bin": (4 + i % 3) * MiB for i in range(6)}),
        "right": layer_files(9, {f"r{i}.bin": (4 + i % 3) * MiB for i in range(6)}),
    }
    a = mount_factory(bucket, extra_args=disk_args(d, bound))
    b = mount_factory(bucket, extra_args=disk_args(d, bound))
    for repo, files in repos.items():
        push(a, f"{repo}:v1", files, tmp_path)
    a.remount()
    sampler = UsageSampler(d, interval=0.002)
    sampler.start()
    errors: list[BaseException] = []

    def go(m: Mount, repo: str) -> None:
        try:
            for rnd in range(2):
                pull(m, f"{repo}:v1", tmp_path / f"{repo}-{rnd}", repos[repo])
        except BaseException as exc:  # pytest.fail in a thread: report it from the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(m, r)) for m, r in ((a, "left"), (b, "right"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    evicted = stats(a)["ocifs_disk_cache_evicted_total"] + stats(b)["ocifs_disk_cache_evicted_total"]
    a.umount()
    b.umount()
    peak = sampler.finish()
    assert not errors, errors
    total = sum(len(x) for files in repos.values() for x in files.values())
    assert total > 2 * bound * MiB  # far more than fits: eviction had to work
    assert sampler.samples > 50 and evicted > 0
    assert peak <= bound * MiB, f"the cache held {peak} bytes; bound {bound} MiB"
    assert sum(cached(d).values()) <= bound * MiB
    assert_all_verify(d)
