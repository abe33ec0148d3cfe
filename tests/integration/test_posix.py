"""Filesystem semantics through a real ocifs mount, with plain Python os calls.

One test per item of the filesystem semantics checklist. Objects a test needs in the
bucket beforehand are put directly with the S3 helper *before* the mount is made
(``mount_factory``), so no test depends on metadata caching rules.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

MiB = 1024 * 1024

# errnos that mean "this filesystem does not do that" (and not a crash: EIO/ENOTCONN).
UNSUPPORTED_ERRNOS = {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}

pytestmark = pytest.mark.timeout(300)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def write(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[: 4 * MiB])
            view = view[n:]
    finally:
        os.close(fd)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def wait_gone(bucket, rel: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while bucket.head(rel) is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"{bucket.key(rel)!r} still in bucket {bucket.name} after {timeout}s")
        time.sleep(0.2)


def assert_mount_answers(mount) -> None:
    """The daemon is alive: list, write and read back a fresh file."""
    os.listdir(mount.path)
    probe = mount.path / f"probe-{time.monotonic_ns()}"
    write(probe, b"still alive")
    assert read(probe) == b"still alive"


# --------------------------------------------------------------------- lookup / getattr


def test_getattr_of_bucket_object_reports_regular_file_with_size(bucket, mount_factory):
    bucket.put("dir/obj.bin", payload(12345))
    mount = mount_factory(bucket)
    st = os.stat(mount.path / "dir" / "obj.bin")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 12345


def test_getattr_of_written_file_reports_regular_file_with_size(mount):
    p = mount.path / "written.bin"
    write(p, payload(4321))
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 4321


def test_getattr_of_implicit_directory_reports_directory(bucket, mount_factory):
    bucket.put("implicit/sub/file", b"x")  # no marker objects: dirs exist only as prefixes
    mount = mount_factory(bucket)
    assert stat.S_ISDIR(os.stat(mount.path / "implicit").st_mode)
    assert stat.S_ISDIR(os.stat(mount.path / "implicit" / "sub").st_mode)
    assert stat.S_ISDIR(os.stat(mount.path).st_mode)


def test_lookup_of_missing_name_raises_enoent(mount):
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "no-such-file")
    with pytest.raises(FileNotFoundError):
        os.stat(mount.path / "no-such-dir" / "child")


# --------------------------------------------------------------------- readdir


@pytest.mark.timeout(600)
def test_readdir_lists_all_10050_entries(bucket, mount_factory):
    names = [f"f{i:05d}" for i in range(10050)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda n: bucket.put(f"big/{n}", n.encode()), names))
    mount = mount_factory(bucket)
    listed = os.listdir(mount.path / "big")
    assert len(listed) == len(names)
    assert set(listed) == set(names)


# --------------------------------------------------------------------- mkdir / rmdir


def test_mkdir_then_rmdir(mount):
    d = mount.path / "newdir"
    os.mkdir(d)
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert "newdir" in os.listdir(mount.path)
    assert os.listdir(d) == []
    os.rmdir(d)
    assert not d.exists()
    assert "newdir" not in os.listdir(mount.path)


def test_empty_directories_persist_across_remount(mount):
    os.mkdir(mount.path / "empty")
    os.makedirs(mount.path / "a" / "b" / "c")
    mount.remount()
    assert stat.S_ISDIR(os.stat(mount.path / "empty").st_mode)
    assert os.listdir(mount.path / "empty") == []
    assert stat.S_ISDIR(os.stat(mount.path / "a" / "b" / "c").st_mode)
    assert os.listdir(mount.path / "a" / "b" / "c") == []


def test_rmdir_of_non_empty_directory_raises_enotempty(bucket, mount_factory):
    bucket.put("remote/child", b"x")
    mount = mount_factory(bucket)
    os.mkdir(mount.path / "local")
    write(mount.path / "local" / "f", b"y")
    for d in ("local", "remote"):
        with pytest.raises(OSError) as ei:
            os.rmdir(mount.path / d)
        assert ei.value.errno == errno.ENOTEMPTY, d
        assert os.path.isdir(mount.path / d)
    assert read(mount.path / "remote" / "child") == b"x"
    assert read(mount.path / "local" / "f") == b"y"


# --------------------------------------------------------------------- open flags


def test_open_creat_excl_on_existing_file_raises_eexist(mount):
    p = mount.path / "exists"
    write(p, b"original")
    with pytest.raises(FileExistsError):
        os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert read(p) == b"original"


def test_open_trunc_rewrites_content(bucket, mount):
    p = mount.path / "rewritten"
    write(p, payload(3 * MiB, seed=1))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 5
    assert read(p) == b"short"
    bucket.wait_for("rewritten", b"short")


def test_open_rdwr_reads_and_writes_same_descriptor(mount):
    p = mount.path / "rdwr"
    write(p, b"hello world")
    fd = os.open(p, os.O_RDWR)
    try:
        assert os.read(fd, 5) == b"hello"
        os.write(fd, b"_")  # at offset 5
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 100) == b"hello_world"
        os.pwrite(fd, b"!!", 11)  # extend past the old end
        assert os.pread(fd, 100, 6) == b"world!!"
    finally:
        os.close(fd)
    assert read(p) == b"hello_world!!"


# --------------------------------------------------------------------- append


def _append_lseek_end(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)  # no O_APPEND, no O_TRUNC
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        assert end == os.stat(path).st_size
        os.write(fd, data)
    finally:
        os.close(fd)


def _append_o_append(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_append_at_eof_via_lseek_across_separate_opens(bucket, mount):
    p = mount.path / "log.txt"
    parts = [b"first line\n", payload(MiB + 17, seed=2), b"third\n", payload(9 * MiB, seed=3)]
    write(p, parts[0])
    for part in parts[1:]:
        _append_lseek_end(p, part)
    expected = b"".join(parts)
    assert os.stat(p).st_size == len(expected)
    assert read(p) == expected
    bucket.wait_for("log.txt", expected)


def test_append_with_o_append_across_separate_opens(bucket, mount):
    p = mount.path / "log.txt"
    parts = [b"first line\n", payload(MiB + 17, seed=4), b"third\n", payload(9 * MiB, seed=5)]
    write(p, parts[0])
    for part in parts[1:]:
        _append_o_append(p, part)
    expected = b"".join(parts)
    assert os.stat(p).st_size == len(expected)
    assert read(p) == expected
    bucket.wait_for("log.txt", expected)


def test_append_after_remount_extends_stored_object(mount):
    p = mount.path / "log.txt"
    write(p, b"before remount\n")
    mount.remount()
    _append_lseek_end(p, b"after remount (lseek)\n")
    _append_o_append(p, b"after remount (O_APPEND)\n")
    assert read(p) == b"before remount\nafter remount (lseek)\nafter remount (O_APPEND)\n"


# --------------------------------------------------------------------- reads


PREAD_SIZE = 20 * MiB + 12345
PREAD_CASES = [
    (0, 1),
    (0, 4096),
    (1, 100),
    (MiB - 1, 2),
    (8 * MiB - 5, 10),  # across the default chunk boundary
    (8 * MiB, 1),
    (7 * MiB + 3, 3 * MiB),  # a read spanning a whole boundary
    (16 * MiB - 1, 4 * MiB),
    (PREAD_SIZE - 10, 10),
    (PREAD_SIZE - 10, 1000),  # short read at EOF
    (PREAD_SIZE - 1, 1),
    (PREAD_SIZE, 10),  # at EOF: empty
    (PREAD_SIZE + MiB, 10),  # past EOF: empty
]


def _check_preads(path, data: bytes) -> None:
    rng = random.Random(99)
    cases = PREAD_CASES + [
        (rng.randrange(len(data)), rng.choice([1, 17, 4096, 65536, 3 * MiB])) for _ in range(40)
    ]
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in reversed(cases):  # backwards first: no sequential read-ahead luck
            assert os.pread(fd, n, off) == data[off : off + n], (off, n)
        for off, n in cases:
            assert os.pread(fd, n, off) == data[off : off + n], (off, n)
    finally:
        os.close(fd)


def test_pread_at_arbitrary_offsets_of_bucket_object(bucket, mount_factory):
    data = payload(PREAD_SIZE, seed=6)
    bucket.put("big.bin", data)
    mount = mount_factory(bucket)
    assert os.stat(mount.path / "big.bin").st_size == len(data)
    _check_preads(mount.path / "big.bin", data)


def test_pread_at_arbitrary_offsets_of_written_file(mount):
    data = payload(PREAD_SIZE, seed=7)
    write(mount.path / "big.bin", data)
    _check_preads(mount.path / "big.bin", data)


# --------------------------------------------------------------------- create / write / unlink


def test_empty_file_created_and_closed_exists_with_size_zero(bucket, mount):
    p = mount.path / "empty.txt"
    open(p, "wb").close()
    assert os.stat(p).st_size == 0
    assert "empty.txt" in os.listdir(mount.path)
    assert bucket.wait_for("empty.txt", b"") == b""
    mount.remount()
    assert os.stat(p).st_size == 0
    assert read(p) == b""


def test_write_flush_fsync_close_then_read_back(mount):
    p = mount.path / "synced.bin"
    data = payload(5 * MiB + 3, seed=8)
    with open(p, "wb") as f:
        f.write(data[: 2 * MiB])
        f.flush()
        os.fsync(f.fileno())
        f.write(data[2 * MiB :])
        f.flush()
        os.fsync(f.fileno())
    assert os.stat(p).st_size == len(data)
    assert read(p) == data


def test_unlink_removes_file_from_mount_and_bucket(bucket, mount):
    p = mount.path / "doomed.txt"
    write(p, b"bye")
    bucket.wait_for("doomed.txt", b"bye")
    os.unlink(p)
    assert not p.exists()
    assert "doomed.txt" not in os.listdir(mount.path)
    wait_gone(bucket, "doomed.txt")
    with pytest.raises(FileNotFoundError):
        os.unlink(p)


# --------------------------------------------------------------------- rename


def test_rename_across_directories_replaces_existing_target(bucket, mount):
    os.mkdir(mount.path / "src")
    os.mkdir(mount.path / "dst")
    src, dst = mount.path / "src" / "a.bin", mount.path / "dst" / "b.bin"
    new = payload(2 * MiB + 1, seed=9)
    write(src, new)
    write(dst, b"old target content")
    os.rename(src, dst)
    assert not src.exists()
    assert os.listdir(mount.path / "src") == []
    assert os.listdir(mount.path / "dst") == ["b.bin"]
    assert read(dst) == new
    bucket.wait_for("dst/b.bin", new)
    wait_gone(bucket, "src/a.bin")


def test_rename_while_open_for_writing_lands_at_new_name(bucket, mount):
    os.mkdir(mount.path / "tmp")
    os.mkdir(mount.path / "final")
    src, dst = mount.path / "tmp" / "upload.part", mount.path / "final" / "blob"
    first, second = payload(3 * MiB, seed=10), payload(MiB + 7, seed=11)
    fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, first)
        os.rename(src, dst)
        os.write(fd, second)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not src.exists()
    assert read(dst) == first + second
    bucket.wait_for("final/blob", first + second)
    wait_gone(bucket, "tmp/upload.part")
    mount.remount()
    assert read(dst) == first + second
    assert not src.exists()


# --------------------------------------------------------------------- metadata


def test_chmod_is_visible_in_stat_and_survives_remount(mount):
    p = mount.path / "script.sh"
    write(p, b"#!/bin/sh\n")
    os.chmod(p, 0o750)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o750
    mount.remount()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o750


def test_fchmod_is_visible_in_stat_and_survives_remount(mount):
    p = mount.path / "secret"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"s3cr3t")
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    mount.remount()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert read(p) == b"s3cr3t"


def test_read_only_mode_is_stored_but_not_enforced(mount):
    p = mount.path / "readonly.txt"
    write(p, b"original")
    os.chmod(p, 0o444)
    write(p, b"overwritten")  # O_WRONLY|O_TRUNC on a 0444 file
    assert read(p) == b"overwritten"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444


def test_fchown_is_accepted(mount):
    p = mount.path / "owned"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x")
        os.fchown(fd, os.getuid(), os.getgid())
        os.fchown(fd, 1234, 1234)
        os.fchown(fd, -1, -1)
    finally:
        os.close(fd)
    assert read(p) == b"x"


def test_truncate_shrinks_file(bucket, mount):
    p = mount.path / "shrink.bin"
    data = payload(3 * MiB + 100, seed=12)
    write(p, data)
    os.truncate(p, 1000)
    assert os.stat(p).st_size == 1000
    assert read(p) == data[:1000]
    bucket.wait_for("shrink.bin", data[:1000])


def test_truncate_grows_file_with_zeros(bucket, mount):
    p = mount.path / "grow.bin"
    write(p, b"head")
    os.truncate(p, 3 * MiB)
    expected = b"head" + bytes(3 * MiB - 4)
    assert os.stat(p).st_size == 3 * MiB
    assert read(p) == expected
    bucket.wait_for("grow.bin", expected)


def test_ftruncate_zero_after_create_then_write(mount):
    p = mount.path / "created"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b"content after ftruncate")
    finally:
        os.close(fd)
    assert read(p) == b"content after ftruncate"


def test_ftruncate_zero_on_existing_file_discards_old_content(mount):
    p = mount.path / "existing"
    write(p, payload(2 * MiB, seed=13))
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)  # no O_TRUNC
    try:
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert read(p) == b"new"


def test_utime_is_visible_and_survives_remount(mount):
    p = mount.path / "stamped"
    write(p, b"x")
    atime, mtime = 1_500_000_000, 1_600_000_000
    os.utime(p, (atime, mtime))
    assert os.stat(p).st_mtime == mtime
    mount.remount()
    assert os.stat(p).st_mtime == mtime


def test_mode_and_mtime_survive_remount(mount):
    stamped, plain = mount.path / "stamped", mount.path / "plain"
    write(stamped, b"x")
    os.chmod(stamped, 0o640)
    os.utime(stamped, (1_700_000_000, 1_700_000_000))
    write(plain, b"y")
    plain_mtime = os.stat(plain).st_mtime
    plain_mode = stat.S_IMODE(os.stat(plain).st_mode)
    mount.remount()
    st = os.stat(stamped)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime == 1_700_000_000
    st = os.stat(plain)
    assert stat.S_IMODE(st.st_mode) == plain_mode
    assert abs(st.st_mtime - plain_mtime) < 2


def test_statvfs_reports_block_size(mount):
    st = os.statvfs(mount.path)
    assert st.f_bsize > 0
    assert st.f_namemax > 0
    write(mount.path / "f", b"x")
    assert os.statvfs(mount.path / "f").f_bsize > 0


def test_flock_exclusive_nonblocking_succeeds(mount):
    p = mount.path / "lockfile"
    write(p, b"")
    with open(p, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def test_hard_link_fails_with_clean_errno(mount):
    src = mount.path / "target"
    write(src, b"x")
    with pytest.raises(OSError) as ei:
        os.link(src, mount.path / "hardlink")
    assert ei.value.errno in UNSUPPORTED_ERRNOS, ei.value
    assert not os.path.lexists(mount.path / "hardlink")
    assert read(src) == b"x"
    assert_mount_answers(mount)


def test_symlink_fails_with_clean_errno(mount):
    with pytest.raises(OSError) as ei:
        os.symlink("target", mount.path / "symlink")
    assert ei.value.errno in UNSUPPORTED_ERRNOS, ei.value
    assert not os.path.lexists(mount.path / "symlink")
    assert_mount_answers(mount)


# --------------------------------------------------------------------- concurrency / visibility


def test_file_being_written_is_readable_by_another_open_before_close(mount):
    p = mount.path / "growing.bin"
    data = payload(3 * MiB, seed=14)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(3):
            os.write(fd, data[i * MiB : (i + 1) * MiB])
        assert os.stat(p).st_size == len(data)
        with open(p, "rb") as r:
            assert os.fstat(r.fileno()).st_size == len(data)
            got = r.read()
        assert len(got) == len(data)
        assert got == data
    finally:
        os.close(fd)
    assert read(p) == data


def test_rewritten_index_json_is_never_seen_truncated(mount):
    os.mkdir(mount.path / "repo")
    p = mount.path / "repo" / "index.json"

    def doc(i: int) -> bytes:
        manifests = [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + hashlib.sha256(f"{i}-{j}".encode()).hexdigest(),
                "size": 1000 + i,
                "annotations": {"org.opencontainers.image.ref.name": f"v{i}.{j}"},
            }
            for j in range(1 + i % 9)  # sizes vary, so a short read would show
        ]
        return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()

    def write_file_like_go(i: int) -> None:  # os.WriteFile: O_TRUNC, one write, close
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, doc(i))
        finally:
            os.close(fd)

    write_file_like_go(0)
    stop = threading.Event()
    bad: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            data = b""
            try:
                with open(p, "rb") as f:
                    data = f.read()
                json.loads(data)
                reads[0] += 1
            except (OSError, ValueError) as e:
                bad.append(f"{type(e).__name__}: {e} (read {len(data)} bytes)")
                if len(bad) > 20:
                    return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for i in range(1, 201):
            write_file_like_go(i)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not t.is_alive(), "reader thread hung"
    assert not bad, f"{len(bad)} bad reads out of {reads[0] + len(bad)}: {bad[:5]}"
    assert reads[0] > 0
    assert read(p) == doc(200)


def test_written_file_is_in_bucket_with_identical_bytes_after_close(bucket, mount):
    small = b"small object"
    large = payload(17 * MiB + 5, seed=15)  # several multipart parts at the default size
    os.mkdir(mount.path / "d")
    write(mount.path / "d" / "small", small)
    write(mount.path / "d" / "large", large)
    assert bucket.wait_for("d/small", small) == small
    got = bucket.wait_for("d/large", large)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(large).hexdigest()


def test_written_file_matches_after_remount(mount):
    data = payload(11 * MiB + 11, seed=16)
    os.makedirs(mount.path / "x" / "y")
    write(mount.path / "x" / "y" / "file.bin", data)
    mount.remount()
    assert os.stat(mount.path / "x" / "y" / "file.bin").st_size == len(data)
    assert read(mount.path / "x" / "y" / "file.bin") == data
