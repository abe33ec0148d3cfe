"""Directories ocifs keeps private: the runtime dir (pid files, stats sockets) and staging.

* The runtime dir of a non-root user without XDG_RUNTIME_DIR is /tmp/ocifs-<uid>: a name any
  user can take first. It is run here as a real other user (``setpriv``, a uid nobody uses)
  with the system Python, since the test venv's interpreter lives under root's 0700 home;
  ocifs.runtime needs nothing but the standard library.
* ``--cache-dir`` may be a shared directory: a real mount with a 1777 directory standing in
  for /tmp must leave its mode alone, and a ``staging`` planted by another user stops the
  mount with one line.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import REPO, is_mounted, require_tool

from .opslib import mount_in

pytestmark = pytest.mark.timeout(180)

# a uid with no account here, different for each run so no other test's /tmp entry is hit
OTHER_UID = 50000 + uuid.uuid4().int % 10000
PROBE = "import sys\nfrom pathlib import Path\nfrom ocifs import errors, runtime\ntry:\n    print(runtime.pid_file(Path('/mnt/x')))\nexcept errors.OcifsError as e:\n    sys.exit(f'ocifs: {e}')\n"


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def as_other_user(code: str) -> subprocess.CompletedProcess:
    setpriv = require_tool("setpriv")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    return subprocess.run(
        [setpriv, f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", "/usr/bin/python3", "-c", code],
        env=env, cwd="/", capture_output=True, text=True, timeout=60,
    )


def remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    shutil.rmtree(p, ignore_errors=True)


@pytest.fixture
def user_tmp_dir():
    """/tmp/ocifs-<OTHER_UID>, removed before and after the test."""
    d = Path(f"/tmp/ocifs-{OTHER_UID}")
    remove(d)
    yield d
    remove(d)


def test_runtime_dir_is_made_private_for_a_user_without_xdg_runtime_dir(user_tmp_dir):
    res = as_other_user(PROBE)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).parent == user_tmp_dir / "ocifs"
    for d in (user_tmp_dir, user_tmp_dir / "ocifs"):
        st = os.lstat(d)
        assert st.st_uid == OTHER_UID and stat.S_IMODE(st.st_mode) == 0o700, (d, oct(st.st_mode), st.st_uid)


def test_runtime_dir_planted_as_a_symlink_is_refused(user_tmp_dir, tmp_path):
    target = tmp_path / "attacker"
    target.mkdir()
    os.chmod(target, 0o777)
    user_tmp_dir.symlink_to(target)
    res = as_other_user(PROBE)
    assert res.returncode == 1
    assert res.stderr == f"ocifs: refusing to use {user_tmp_dir}: it is a symlink; remove it, or set XDG_RUNTIME_DIR to a directory of yours\n"
    assert list(target.iterdir()) == [] and mode(target) == 0o777


def test_runtime_dir_precreated_by_another_user_is_refused(user_tmp_dir):
    user_tmp_dir.mkdir()
    os.chmod(user_tmp_dir, 0o777)  # root made it first, and anyone may write in it
    res = as_other_user(PROBE)
    assert res.returncode == 1
    assert res.stderr.startswith(f"ocifs: refusing to use {user_tmp_dir}: it is owned by uid {os.geteuid()}, not {OTHER_UID};")
    assert res.stderr.count("\n") == 1
    assert list(user_tmp_dir.iterdir()) == [] and mode(user_tmp_dir) == 0o777


def test_shared_cache_dir_keeps_its_mode_through_a_mount(bucket, mount_factory):
    m = mount_factory(bucket, mount=False)
    shared = m.workdir / "tmp"  # stands in for /tmp
    shared.mkdir()
    os.chmod(shared, 0o1777)
    m.extra_args = ["--cache-dir", str(shared)]  # later flags win over the fixture's own
    m.mount()
    assert mode(shared) == 0o1777
    assert mode(shared / "staging") == 0o700
    (m.path / "f.bin").write_bytes(b"x" * 100_000)
    assert bucket.get("f.bin") == b"x" * 100_000
    m.umount()
    assert mode(shared) == 0o1777


def test_staging_dir_of_another_user_stops_the_mount_with_one_line(bucket, mount_factory):
    m = mount_factory(bucket, mount=False)
    shared = m.workdir / "tmp"
    (shared / "staging").mkdir(parents=True)
    os.chmod(shared, 0o1777)
    os.chown(shared / "staging", OTHER_UID, OTHER_UID)
    m.extra_args = ["--cache-dir", str(shared)]
    res = mount_in(m, cwd=m.workdir, mountpoint_arg=str(m.path), check=False)
    assert res.returncode == 1, res.describe()
    assert res.stderr == (
        f"ocifs: refusing to use {shared / 'staging'}: it is owned by uid {OTHER_UID}, not {os.geteuid()}; "
        "remove it, or use another --cache-dir\n"
    ), res.describe()
    assert not is_mounted(m.path)
    assert "Traceback" not in m.log
