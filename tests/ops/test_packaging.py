"""The built wheel: what ``pip install ocifs`` gives a user, checked in a fresh venv.

The wheel is built with ``pip wheel --no-deps`` from a copy of the work tree (so a stale
``build/`` or the developer's venv cannot leak into it) and installed with its dependencies
into a new venv; the commands are run from there, a mount included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN, is_mounted

from .opslib import mount_in, unmounted

pytestmark = pytest.mark.timeout(600)

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NOT_SOURCE = shutil.ignore_patterns(".venv", ".tools", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def sh(args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE, symlinks=True)
    res = sh([VENV_BIN / "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", src])
    assert res.returncode == 0, f"pip wheel failed:\n{res.stdout}{res.stderr}"
    [whl] = (work / "dist").glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    res = sh([sys.executable, "-m", "venv", venv])
    assert res.returncode == 0, res.stderr
    res = sh([venv / "bin" / "pip", "install", "-q", wheel])
    assert res.returncode == 0, f"pip install of {wheel.name} into a fresh venv failed:\n{res.stdout}{res.stderr}"
    return venv


def test_wheel_holds_the_package_and_nothing_else(wheel):
    assert wheel.name == f"ocifs-{VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    stray = [n for n in names if not re.match(rf"(ocifs/[a-z0-9_]+\.py|ocifs-{re.escape(VERSION)}\.dist-info/[A-Za-z_.]+)$", n)]
    assert not stray, f"not ocifs code or metadata in the wheel: {stray}"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/", "testkit/"))]
    entry_points = zipfile.ZipFile(wheel).read(f"ocifs-{VERSION}.dist-info/entry_points.txt").decode()
    assert "ocifs = ocifs.cli:main" in entry_points and "mount.ocifs = ocifs.mount_helper:main" in entry_points


def test_ocifs_version_is_the_pyproject_version(fresh_venv, tmp_path):
    res = sh([fresh_venv / "bin" / "ocifs", "--version"], cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, f"ocifs {VERSION}\n"), res.stderr
    where = sh([fresh_venv / "bin" / "python", "-c", "import ocifs; print(ocifs.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(fresh_venv)), f"ocifs imported from {where.stdout!r}, not the fresh venv"


def test_dev_install_reports_the_same_version():
    res = sh([VENV_BIN / "ocifs", "--version"])
    assert res.stdout == f"ocifs {VERSION}\n"


def test_mount_helper_prints_its_usage(fresh_venv, tmp_path):
    res = sh([fresh_venv / "bin" / "mount.ocifs"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr == "usage: mount.ocifs s3://BUCKET[/PREFIX] MOUNTPOINT [-o OPTIONS]\n"


def test_wheel_install_mounts_on_a_mountpoint_named_ocifs_in_the_cwd(fresh_venv, bucket, mount_factory):
    m = unmounted(mount_factory, bucket, "ocifs")
    mount_in(m, cwd=m.workdir, mountpoint_arg="ocifs", ocifs=str(fresh_venv / "bin" / "ocifs"))
    (m.path / "from-wheel.txt").write_bytes(b"wheel")
    assert bucket.get("from-wheel.txt") == b"wheel"
    m.umount()
    assert not is_mounted(m.path)
