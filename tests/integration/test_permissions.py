"""allow_other: the kernel enforces ownership and modes, tested as another local user.

Without default_permissions, any local user of an allow_other mount could read, rewrite and
delete with the mount's S3 credentials. ocifs adds it whenever other users can reach the mount;
owner and modes come from --uid/--gid/--file-mode/--dir-mode (and stored modes).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest

from conftest import Mount, mount_entries

NOBODY = pwd.getpwnam("nobody")
# The project's interpreter lives under root's home; the other user runs Debian's python3.
SYSTEM_PYTHON = "/usr/bin/python3"

# Run as `nobody`: try each operation and report its errno name (or "ok").
PROBE = r"""
import errno, json, os, sys
root = sys.argv[1]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def write():
    with open(os.path.join(root, "owned.txt"), "r+b") as f:
        f.write(b"pwned")
def create():
    with open(os.path.join(root, "new.txt"), "wb") as f:
        f.write(b"x")
print(json.dumps({
    "read": attempt(lambda: open(os.path.join(root, "owned.txt"), "rb").read()),
    "write": attempt(write),
    "truncate": attempt(lambda: os.truncate(os.path.join(root, "owned.txt"), 0)),
    "unlink": attempt(lambda: os.unlink(os.path.join(root, "owned.txt"))),
    "rename": attempt(lambda: os.rename(os.path.join(root, "owned.txt"), os.path.join(root, "moved.txt"))),
    "create": attempt(create),
    "mkdir": attempt(lambda: os.mkdir(os.path.join(root, "d"))),
    "chmod": attempt(lambda: os.chmod(os.path.join(root, "owned.txt"), 0o666)),
}))
"""


def as_nobody(path) -> dict[str, str]:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: run `scripts/setup.sh` (Debian python3)", pytrace=False)
    res = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", PROBE, str(path)],
        user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def opened_mount(mount_factory, bucket, *args: str) -> Mount:
    m = mount_factory(bucket, extra_args=["-o", "allow_other", *args])
    os.chmod(m.path.parent, 0o755)  # the test's temp dir: let nobody walk to the mount
    return m


def test_another_user_cannot_change_what_they_do_not_own(mount_factory, bucket):
    m = opened_mount(mount_factory, bucket)
    (m.path / "owned.txt").write_bytes(b"root's file")
    got = as_nobody(m.path)
    assert got["read"] == "ok"  # 0644: readable by all
    assert {k: got[k] for k in ("write", "truncate", "unlink", "rename", "create", "mkdir")} == dict.fromkeys(
        ("write", "truncate", "unlink", "rename", "create", "mkdir"), "EACCES"
    )
    assert got["chmod"] == "EPERM"
    assert (m.path / "owned.txt").read_bytes() == b"root's file"
    assert bucket.get("owned.txt") == b"root's file"
    assert "default_permissions" in mount_entries(m.path)[0].options.split(",")


def test_uid_and_modes_give_another_user_access(mount_factory, bucket):
    m = opened_mount(mount_factory, bucket, "--uid", str(NOBODY.pw_uid), "--gid", str(NOBODY.pw_gid))
    (m.path / "owned.txt").write_bytes(b"shared")
    st = os.stat(m.path / "owned.txt")
    assert (st.st_uid, st.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    got = as_nobody(m.path)
    assert got["write"] == "ok" and got["create"] == "ok" and got["mkdir"] == "ok"
    assert bucket.get("new.txt") == b"x"


def test_file_and_dir_modes_are_what_the_flags_say(mount_factory, bucket):
    bucket.put("plain.txt", b"no stored mode")
    m = mount_factory(bucket, extra_args=["--file-mode", "0640", "--dir-mode", "0750"])
    os.mkdir(m.path / "sub")
    assert oct(os.stat(m.path / "plain.txt").st_mode & 0o7777) == oct(0o640)
    assert oct(os.stat(m.path).st_mode & 0o7777) == oct(0o750)
