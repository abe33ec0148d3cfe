"""ocifs.cachedir: --cache-dir may be a shared directory; ocifs changes only its own staging dir."""

from __future__ import annotations

import os
import stat

import pytest

from ocifs import errors
from ocifs.cachedir import prepare_cache_dir
from ocifs.config import Config


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_a_shared_cache_dir_keeps_its_mode_and_staging_is_private(tmp_path):
    shared = tmp_path / "tmp"  # stands in for /tmp
    shared.mkdir()
    os.chmod(shared, 0o1777)
    prepare_cache_dir(Config(bucket="b", cache_dir=shared))
    assert mode(shared) == 0o1777
    assert mode(shared / "staging") == 0o700


def test_a_missing_cache_dir_is_created_private(tmp_path):
    cfg = Config(bucket="b", cache_dir=tmp_path / "a" / "cache")
    prepare_cache_dir(cfg)
    assert mode(cfg.cache_dir) == 0o700 and mode(cfg.staging_dir) == 0o700


def test_a_staging_symlink_is_refused(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "staging").symlink_to(tmp_path / "target")
    with pytest.raises(errors.OcifsError, match="staging: it is a symlink; remove it, or use another --cache-dir"):
        prepare_cache_dir(Config(bucket="b", cache_dir=tmp_path))
