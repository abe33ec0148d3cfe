"""mount(8) and fstab: ``mount -t fuse.ocifs`` runs /sbin/mount.fuse.ocifs (scripts/setup.sh).

Credentials come from a botocore credentials file named by ``credentials_file=``; no AWS_*
variable is in the environment of these calls (boot has none either).
"""

from __future__ import annotations

import os

import pytest

from conftest import force_unmount, is_mounted, mount_entries, require_tool, run

from .opslib import SYSTEM_PATH, require_installed, wait_unmounted

pytestmark = pytest.mark.timeout(120)


def clean_env(tmp_path) -> dict[str, str]:
    """An environment with no AWS_* at all, and no ~/.aws to fall back on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OCIFS_"))}
    env.update(PATH=SYSTEM_PATH, HOME=str(tmp_path / "home"), AWS_EC2_METADATA_DISABLED="true")
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def write_credentials(s3, tmp_path):
    creds = tmp_path / "ocifs.credentials"
    creds.write_text(f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n")
    creds.chmod(0o600)
    return creds


@pytest.fixture
def mnt(tmp_path):
    require_installed("/sbin/mount.fuse.ocifs")
    require_tool("mount")
    require_tool("umount")
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    force_unmount(mp)


def test_mount_t_fuse_ocifs_with_credentials_file(s3, bucket, mnt, tmp_path):
    creds = write_credentials(s3, tmp_path)
    cache = tmp_path / "cache"
    opts = f"endpoint_url={s3.endpoint},_netdev,cache_size=64,allow_other,credentials_file={creds},cache_dir={cache}"
    env = clean_env(tmp_path)
    res = run(["mount", "-t", "fuse.ocifs", bucket.url, mnt, "-o", opts], env=env, timeout=60, check=False)
    assert res.returncode == 0, res.describe()
    [entry] = mount_entries(mnt)
    assert entry[0] == bucket.url and entry[2] == "fuse.ocifs", entry
    assert "allow_other" in entry[3].split(","), entry
    payload = os.urandom(200_000)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "f.bin").write_bytes(payload)
    assert bucket.get("dir/f.bin") == payload  # close() published it
    bucket.put("from-s3.txt", b"hello")
    assert (mnt / "from-s3.txt").read_bytes() == b"hello"
    res = run(["umount", mnt], env=env, timeout=60, check=False)
    assert res.returncode == 0, res.describe()
    assert wait_unmounted(mnt, 10)


def test_fstab_line(s3, bucket, mnt, tmp_path):
    creds = write_credentials(s3, tmp_path)
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# ocifs test fstab\n"
        f"{bucket.url}  {mnt}  fuse.ocifs  _netdev,noauto,nofail,x-systemd.automount,"
        f"endpoint_url={s3.endpoint},credentials_file={creds},cache_dir={tmp_path / 'cache'},"
        "cache_size=64,allow_other  0  0\n"
    )
    env = clean_env(tmp_path)
    res = run(["mount", "--fstab", fstab, mnt], env=env, timeout=60, check=False)
    assert res.returncode == 0, res.describe()
    assert is_mounted(mnt)
    (mnt / "via-fstab.txt").write_bytes(b"fstab")
    assert bucket.get("via-fstab.txt") == b"fstab"
    res = run(["umount", mnt], env=env, timeout=60, check=False)
    assert res.returncode == 0, res.describe()
    assert wait_unmounted(mnt, 10)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("cache_size=lots", ["cache_size"]),
        ("cache_size=1", ["cache_size", "16"]),
        ("part_size=2", ["part_size", "5"]),
        ("log_level=loud", ["log-level", "loud"]),
        ("endpoint_url=ftp://example", ["endpoint_url"]),
        ("concurrency", ["concurrency"]),
    ],
)
def test_bad_option_is_one_clear_line(s3, bucket, mnt, tmp_path, bad, words):
    creds = write_credentials(s3, tmp_path)
    opts = f"endpoint_url={s3.endpoint},credentials_file={creds},cache_dir={tmp_path / 'cache'},{bad}"
    res = run(["mount", "-t", "fuse.ocifs", bucket.url, mnt, "-o", opts], env=clean_env(tmp_path), timeout=30, check=False)
    assert res.returncode != 0, res.describe()
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, "expected exactly one error line\n" + res.describe()
    assert all(w in lines[0] for w in words), f"the error does not name {words}\n" + res.describe()
    assert "Traceback" not in res.stdout + res.stderr
    assert not is_mounted(mnt)


def test_unknown_fuse_option_names_the_option(s3, bucket, mnt, tmp_path):
    """An option that is neither ocifs's nor mount(8)'s goes to FUSE; if FUSE rejects it, the
    one error line should say which option it was."""
    creds = write_credentials(s3, tmp_path)
    opts = f"endpoint_url={s3.endpoint},credentials_file={creds},cache_dir={tmp_path / 'cache'},no_such_option=1"
    res = run(["mount", "-t", "fuse.ocifs", bucket.url, mnt, "-o", opts], env=clean_env(tmp_path), timeout=30, check=False)
    assert res.returncode != 0, res.describe()
    assert not is_mounted(mnt)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.describe()
    assert "no_such_option" in lines[0], "the error line does not name the rejected option\n" + res.describe()
