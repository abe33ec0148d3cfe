"""Hostile conditions: no write permission, a full staging disk, bad options, secrets in logs."""

from __future__ import annotations

import errno
import os
import re
import stat

import pytest

from conftest import ocifs_bin, run
from testkit import assume_role, force_unmount, is_mounted, s3_client, s3_env
from testkit.fsops import MiB, bounded, content, read_file, write_file

from .conftest import MARGIN, OP_TIMEOUT, tmpfs

pytestmark = pytest.mark.timeout(180)
HANG = OP_TIMEOUT + MARGIN


def read_only_policy(bucket_name: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
            "Resource": [f"arn:aws:s3:::{bucket_name}", f"arn:aws:s3:::{bucket_name}/*"],
        }],
    }


@pytest.fixture
def read_only_env(s3, bucket):
    """Temporary credentials (MinIO STS AssumeRole with a session policy) that may only read."""
    try:
        ak, sk, token = assume_role(s3.endpoint, s3.access_key, s3.secret_key, read_only_policy(bucket.name))
    except Exception as e:  # an external S3 endpoint may not offer STS
        pytest.fail(f"cannot make read-only credentials with STS AssumeRole on {s3.endpoint}: {e}", pytrace=False)
    # make sure they really are read-only before blaming ocifs
    c = s3_client(s3.endpoint, ak, sk, token)
    with pytest.raises(Exception, match="AccessDenied|Access Denied"):
        c.put_object(Bucket=bucket.name, Key="probe-denied", Body=b"x")
    return s3_env(ak, sk, token)


# --------------------------------------------------------------------------- permissions


def test_read_only_flag_refuses_every_write_with_erofs_and_reads_work(bucket, fault_mount_factory):
    data = content("ro.bin", 2 * MiB)
    bucket.put("ro.bin", data)
    m = fault_mount_factory(bucket, extra_args=["--read-only"])
    p = m.path
    for what, fn in [
        ("create", lambda: write_file(p / "new.bin", b"x")),
        ("open O_WRONLY existing", lambda: os.close(os.open(p / "ro.bin", os.O_WRONLY))),
        ("mkdir", lambda: os.mkdir(p / "d")),
        ("unlink", lambda: os.unlink(p / "ro.bin")),
        ("rename", lambda: os.rename(p / "ro.bin", p / "ro2.bin")),
        ("chmod", lambda: os.chmod(p / "ro.bin", 0o600)),
        ("truncate", lambda: os.truncate(p / "ro.bin", 0)),
    ]:
        o = bounded(fn, HANG)
        assert o.status == "error" and o.errno == errno.EROFS, f"{what} on a --read-only mount: {o!r}, expected EROFS"
    o = bounded(read_file, HANG, p / "ro.bin")
    assert o.status == "ok" and o.value == data
    assert sorted(bucket.list()) == ["ro.bin"], "a --read-only mount changed the bucket"


def test_read_only_credentials_with_read_only_flag_mount_and_read(bucket, read_only_env, fault_mount_factory):
    data = content("rocred.bin", 3 * MiB)
    bucket.put("rocred.bin", data)
    m = fault_mount_factory(bucket, extra_args=["--read-only"], env=read_only_env)
    o = bounded(read_file, HANG, m.path / "rocred.bin")
    assert o.status == "ok" and o.value == data, f"read with read-only credentials: {o!r}"
    assert "rocred.bin" in os.listdir(m.path)


def test_read_only_credentials_without_flag_mount_and_access_denied_writes_fail_with_eacces(
    bucket, read_only_env, fault_mount_factory
):
    """Credentials that may read but not write are a legitimate way to mount a bucket; a write
    must then fail with EACCES at close (nothing published) and the mount keep working."""
    data = content("denied.bin", 1 * MiB)
    bucket.put("denied.bin", data)
    m = fault_mount_factory(bucket, env=read_only_env, mount=False)
    m.generation += 1
    m.cache_dir.mkdir(parents=True, exist_ok=True)
    m.log_files.append(m.log_file)
    res = run(m.mount_args(), env=m.process_env(), timeout=60, check=False)
    assert res.returncode == 0 and is_mounted(m.path), (
        f"mounting with read-only credentials (no --read-only) failed:\n{res.describe()}\n{m.log_tail(30)}")
    o = bounded(write_file, HANG, m.path / "new.bin", content("new", 100 * 1024))
    assert o.status == "error" and o.errno in (errno.EACCES, errno.EPERM), f"write with read-only credentials: {o!r}"
    o = bounded(write_file, HANG, m.path / "big-new.bin", content("big-new", 12 * MiB))
    assert o.status == "error" and o.errno in (errno.EACCES, errno.EPERM), f"multipart write with read-only credentials: {o!r}"
    o = bounded(os.mkdir, HANG, m.path / "newdir")
    assert o.status == "error" and o.errno in (errno.EACCES, errno.EPERM), f"mkdir with read-only credentials: {o!r}"
    o = bounded(os.unlink, HANG, m.path / "denied.bin")
    assert o.status == "error" and o.errno in (errno.EACCES, errno.EPERM), f"unlink with read-only credentials: {o!r}"
    assert bucket.list() == ["denied.bin"]
    o = bounded(read_file, HANG, m.path / "denied.bin")
    assert o.status == "ok" and o.value == data


def test_access_denied_on_lookup_is_eacces_not_an_unexpected_error(s3, bucket, fault_mount_factory):
    """Credentials that may list the bucket but not read objects: stat of a file is EACCES
    (HeadObject 403), logged as a warning, not an 'unexpected error' traceback turned into EIO."""
    bucket.put("secret.bin", b"s" * 1000)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
        "Resource": [f"arn:aws:s3:::{bucket.name}"]}]}
    try:
        ak, sk, token = assume_role(s3.endpoint, s3.access_key, s3.secret_key, policy)
    except Exception as e:
        pytest.fail(f"cannot make list-only credentials with STS AssumeRole: {e}", pytrace=False)
    m = fault_mount_factory(bucket, extra_args=["--read-only"], env=s3_env(ak, sk, token))
    o = bounded(os.stat, HANG, m.path / "secret.bin")
    problems = []
    if not (o.status == "error" and o.errno == errno.EACCES):
        problems.append(f"stat of an object we may not read: {o!r}, expected EACCES")
    if "unexpected error" in m.log:
        line = next(ln for ln in m.log.splitlines() if "unexpected error" in ln)
        problems.append(f"the daemon logged an unexpected error (with traceback): {line}")
    assert not problems, "\n".join(problems) + "\n" + m.log_tail(12)


# --------------------------------------------------------------------------- full disk


def _fill_staging(m, names_sizes):
    """Write files that do not fit the 8 MiB staging tmpfs; returns {name: (outcome, data, acked)}."""
    out = {}
    for name, size, chunk in names_sizes:
        data = content(name, size)
        acked = [0]
        o = bounded(write_file, HANG * 2, m.path / name, data, True, chunk, acked)
        assert o.status != "hang", f"writing {name} to a full staging disk hung\n{m.log_tail(30)}"
        out[name] = (o, data, acked[0])
    return out


# 12 MiB does not fit in 8 MiB of staging; odd write sizes end writes off page boundaries
FILL = [("full-a.bin", 12 * MiB, 1 * MiB + 7), ("full-b.bin", 8 * MiB + 3, 300 * 1024 + 1)]


def test_full_staging_disk_gives_enospc_not_a_crash_and_mount_still_works(bucket, fault_mount_factory, tmp_path):
    cache = tmp_path / "tiny"
    undo = tmpfs(cache, "8m")
    try:
        m = fault_mount_factory(bucket, cache_dir=cache)
        pid_before = m.pid
        results = _fill_staging(m, FILL)
        assert os.path.exists(f"/proc/{pid_before}") and m.pid == pid_before, "the daemon died"
        assert is_mounted(m.path)
        left = list((cache / "staging").iterdir())
        assert not left, f"staging files left after the failed writes were closed: {left}"
        w = content("after-full", 2 * MiB)
        o = bounded(write_file, HANG, m.path / "after-full.bin", w)
        assert o.status == "ok", f"write after ENOSPC: {o!r}\n{m.log_tail(30)}"
        assert bucket.get("after-full.bin") == w
        o = bounded(read_file, HANG, m.path / "after-full.bin")
        assert o.status == "ok" and o.value == w
        assert "Traceback" not in m.log, f"traceback in the daemon log:\n{m.log_tail(40)}"
        m.umount()
        # last, so a missing ENOSPC does not hide whether the mount survived
        wrong = {n: o for n, (o, _, _) in results.items() if not (o.status == "error" and o.errno == errno.ENOSPC)}
        assert not wrong, f"files that do not fit the staging disk but got no ENOSPC: {wrong}"
    finally:
        undo()


def test_full_staging_disk_publishes_nothing_or_exactly_the_acknowledged_bytes(bucket, fault_mount_factory, tmp_path):
    """After ENOSPC the writer closes the file; like a local filesystem, what close publishes
    may be the bytes write() acknowledged, but never fewer (lost acknowledged bytes) or others."""
    cache = tmp_path / "tiny"
    undo = tmpfs(cache, "8m")
    try:
        m = fault_mount_factory(bucket, cache_dir=cache)
        results = _fill_staging(m, FILL)
        problems = []
        for name, (o, data, acked) in results.items():
            head = bucket.head(name)
            if head is None:
                continue
            got = bucket.get(name)
            if got != data[:acked]:
                problems.append(
                    f"{name}: write() acknowledged {acked} bytes before {o.error!r}, but the object "
                    f"published at close has {len(got)} bytes"
                    + ("" if data[:len(got)] == got else " that differ from what was written"))
            st = bounded(os.stat, HANG, m.path / name)
            if st.status == "ok" and st.value.st_size != len(got):
                problems.append(f"{name}: the mount reports st_size {st.value.st_size}, the object has {len(got)} bytes")
            r = bounded(read_file, HANG, m.path / name)
            if r.status != "ok" or r.value != got:
                problems.append(f"{name}: reading it back through the mount: {r!r}")
        assert not problems, "\n".join(problems) + "\n" + m.log_tail(20)
        m.umount()
    finally:
        undo()


# --------------------------------------------------------------------------- bad options


def _mount_cmd(bucket, mp, *extra):
    return [*ocifs_bin(), "mount", bucket.url, mp, "--endpoint-url", bucket.s3.endpoint, *extra]


def assert_one_clear_line(res, mp, what):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0, f"{what} was accepted:\n{res.describe()}"
    assert len(lines) == 1, f"{what}: expected one error line, got {len(lines)}:\n{res.stderr}"
    assert lines[0].startswith("ocifs: ") and "Traceback" not in res.stderr, lines[0]
    assert not is_mounted(mp), f"{what} left {mp} mounted"
    return lines[0]


def test_invalid_fuse_option_gives_one_clear_error_line_and_nothing_mounted(bucket, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        res = run(_mount_cmd(bucket, mp, "-o", "nonsense_option", "--cache-dir", tmp_path / "c"),
                  env=bucket.s3.env(), timeout=60, check=False)
        line = assert_one_clear_line(res, mp, "-o nonsense_option")
        assert "nonsense_option" in line or "option" in line.lower(), f"the error does not name the option: {line}"
    finally:
        force_unmount(mp)


@pytest.mark.parametrize("flags,mentions", [
    (["--op-timeout", "abc"], "op-timeout"),
    (["--op-timeout", "0"], "op-timeout"),
    (["--cache-size", "1"], "cache-size"),
    (["--part-size", "2"], "part-size"),
    (["--concurrency", "0"], "concurrency"),
    (["--chunk-size", "-4"], "chunk-size"),
    (["--endpoint-url", "ftp://127.0.0.1:1"], "endpoint"),
    (["--log-level", "loud"], "log-level"),
    (["--metadata-ttl", "soon"], "metadata-ttl"),
], ids=lambda v: v if isinstance(v, str) else "_".join(v))
def test_bad_flag_values_give_one_clear_error_line(bucket, tmp_path, flags, mentions):
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        res = run(_mount_cmd(bucket, mp, *flags), env=bucket.s3.env(), timeout=60, check=False)
        line = assert_one_clear_line(res, mp, " ".join(flags))
        assert mentions in line, f"the error line does not name {mentions}: {line}"
    finally:
        force_unmount(mp)


# --------------------------------------------------------------------------- security


def test_staging_dir_is_0700_and_a_given_cache_dir_keeps_its_mode(bucket, fault_mount_factory, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)  # the user's directory (think --cache-dir /tmp): never chmodded
    m = fault_mount_factory(bucket, cache_dir=cache)
    fd = os.open(m.path / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 4096)
        assert stat.S_IMODE(os.stat(cache).st_mode) == 0o755
        mode = stat.S_IMODE(os.stat(cache / "staging").st_mode)
        assert mode == 0o700, f"staging has mode {mode:o}, expected 700"
        for f in (cache / "staging").iterdir():
            mode = stat.S_IMODE(os.stat(f).st_mode)
            assert mode & 0o077 == 0, f"staging file {f} has mode {mode:o}: readable by others"
    finally:
        os.close(fd)


def test_daemon_debug_log_never_contains_secret_key_or_signatures(bucket, proxy, fault_mount_factory):
    m = fault_mount_factory(bucket, proxy=proxy)
    bucket.put("s.bin", content("s.bin", 9 * MiB))
    # successful and failing requests of every kind, logged at debug level
    assert bounded(write_file, HANG, m.path / "w.bin", content("w", 9 * MiB)).status == "ok"
    assert bounded(read_file, HANG, m.path / "s.bin").status == "ok"
    os.listdir(m.path)
    t = proxy.add("reset_peer", "downstream", timeout=0)
    bounded(read_file, HANG, m.path / "w-missing.bin")
    # write, fsync and close each give up after their own retries: wait for all three (a
    # descriptor still open would make the unmount below busy)
    o = bounded(write_file, 3 * OP_TIMEOUT + MARGIN, m.path / "fails.bin", content("fails", 10 * MiB))
    assert o.status == "error", o
    proxy.remove(t)
    res = run([*ocifs_bin(), "mount", f"s3://{bucket.name}", m.workdir, "--endpoint-url", bucket.s3.endpoint],
              env=bucket.s3.env(secret_key="wrong-" + bucket.s3.secret_key), timeout=60, check=False)
    m.umount()
    log = m.log
    assert "DEBUG" in log, "the mount did not log at debug level"
    secret = bucket.s3.secret_key
    for needle in (secret, "Authorization", "Signature=", "X-Amz-Signature", "x-amz-security-token"):
        assert needle.lower() not in log.lower(), f"the daemon log contains {needle!r}"
        assert needle.lower() not in (res.stderr + res.stdout).lower(), f"ocifs mount's error output contains {needle!r}"
    assert not re.search(r"AWS4-HMAC-SHA256\s+Credential=", log)
