"""How ``ocifs mount`` starts its daemon: never from a package in the current directory.

The daemon used to be ``python -m ocifs``, which puts the current directory first on
sys.path: a mountpoint named ``ocifs`` there shadowed the package (the mount failed), and an
``ocifs/__main__.py`` planted in a directory others can write (/tmp) ran as whoever mounted.
These tests mount for real (MinIO, FUSE, the installed CLI) from such a directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import is_mounted

from .opslib import mount_in, unmounted

pytestmark = pytest.mark.timeout(180)


def plant_package(cwd: Path, marker: Path) -> None:
    """An ``ocifs`` package in ``cwd`` whose import or run leaves ``marker`` behind."""
    pkg = cwd / "ocifs"
    pkg.mkdir()
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (pkg / "__init__.py").write_text(code)
    (pkg / "__main__.py").write_text(code)


def test_mountpoint_named_ocifs_in_the_current_directory(bucket, mount_factory):
    m = unmounted(mount_factory, bucket, "ocifs")
    mount_in(m, cwd=m.workdir, mountpoint_arg="ocifs")
    (m.path / "hello.txt").write_bytes(b"hello")
    assert bucket.get("hello.txt") == b"hello"
    m.umount()
    assert not is_mounted(m.path)


@pytest.mark.parametrize("entry_point", ["ocifs", "mount.ocifs"])
def test_planted_ocifs_package_in_the_current_directory_never_runs(bucket, mount_factory, entry_point):
    m = unmounted(mount_factory, bucket, "mnt")
    marker = m.workdir / "planted-code-ran"
    plant_package(m.workdir, marker)
    mount_in(m, cwd=m.workdir, mountpoint_arg="mnt", helper=entry_point == "mount.ocifs")
    (m.path / "f.txt").write_bytes(b"data")
    assert bucket.get("f.txt") == b"data"
    m.umount()
    assert not marker.exists(), f"the planted ocifs package ran: {marker.read_text()!r}"
