"""Staging files a dead daemon left behind (README, Reliability): each is labelled with the
object it was for while it lives; the next mount reports it (that object, its size), moves it
to a bounded lost+found, and never touches the staging files of a daemon still running."""

from __future__ import annotations

import fcntl
import logging
import os

from ocifs import cachedir
from ocifs.cachedir import prepare_cache_dir, trim
from ocifs.config import Config
from ocifs.content import Content


def test_a_staging_file_carries_its_label_while_it_lives(tmp_path):
    c = Content(tmp_path, 1 << 20, label="s3://b/repo/blobs/x")
    label = c.staging.path.with_name(c.staging.path.name + ".key")
    assert label.read_text() == "s3://b/repo/blobs/x\n"
    c.staging.label("s3://b/repo/renamed")
    assert label.read_text() == "s3://b/repo/renamed\n"
    c.close()
    assert list(tmp_path.iterdir()) == []


def dead_run(cfg: Config, label: str | None, data: bytes, offset: int = 0) -> str:
    """What a killed daemon leaves: a staging file (and its label), never closed."""
    cfg.staging_dir.mkdir(parents=True, exist_ok=True)
    c = Content(cfg.staging_dir, 1 << 20, label=label)
    c.staging.pwrite(data, offset)
    os.close(c.staging.fd)  # the process died: no close(), nothing unlinked
    return c.staging.path.name


def test_the_next_mount_reports_each_leftover_with_its_object_and_size_and_moves_it(tmp_path, caplog):
    cfg = Config(bucket="b", cache_dir=tmp_path / "cache")
    a = dead_run(cfg, "s3://b/team/app/index.json", b"x" * 5000)
    b = dead_run(cfg, None, b"y" * 10, offset=1 << 20)  # unlabelled, sparse
    (cfg.staging_dir / "w-orphan.key").write_text("s3://b/gone\n")  # its file was closed
    with caplog.at_level(logging.INFO):
        prepare_cache_dir(cfg)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2, caplog.text
    assert any("s3://b/team/app/index.json, 5000 bytes" in m and "never published" in m for m in lines), lines
    assert any("no label" in m and f"{(1 << 20) + 10} bytes" in m for m in lines), lines
    assert list(cfg.staging_dir.iterdir()) == []
    moved = sorted(p.name for p in (cfg.cache_dir / "lost+found").iterdir())
    assert len(moved) == 4 and any(n.endswith(a) for n in moved) and any(n.endswith(b) for n in moved), moved
    kept = next(p for p in (cfg.cache_dir / "lost+found").iterdir() if p.name.endswith(a))
    assert kept.read_bytes() == b"x" * 5000
    assert kept.with_name(kept.name + ".key").read_text() == "s3://b/team/app/index.json\n"
    assert oct(os.stat(cfg.cache_dir / "lost+found").st_mode & 0o777) == oct(0o700)


def test_lost_found_keeps_the_newest_within_its_bounds(tmp_path):
    lf = tmp_path / "lost+found"
    lf.mkdir()
    for i in range(5):
        (lf / f"2026010{i}T000000-w-{i}").write_bytes(b"z" * 8192)
        (lf / f"2026010{i}T000000-w-{i}.key").write_text(f"s3://b/{i}\n")
    trim(lf, files=3, size=1 << 30)
    assert sorted(p.name for p in lf.iterdir() if p.suffix != ".key") == [f"2026010{i}T000000-w-{i}" for i in (2, 3, 4)]
    assert len(list(lf.glob("*.key"))) == 3
    trim(lf, files=100, size=8192)  # bytes on disk
    assert [p.name for p in lf.iterdir() if p.suffix != ".key"] == ["20260104T000000-w-4"]


def test_staging_files_of_a_daemon_still_running_are_left_alone(tmp_path, caplog):
    cfg = Config(bucket="b", cache_dir=tmp_path / "cache")
    live = dead_run(cfg, "s3://b/being-written", b"live")
    other = os.open(cfg.staging_dir, os.O_RDONLY | os.O_DIRECTORY)  # another daemon's lock
    try:
        fcntl.flock(other, fcntl.LOCK_SH)
        with caplog.at_level(logging.INFO):
            prepare_cache_dir(cfg)
    finally:
        os.close(other)
        for fd in cachedir._held:
            os.close(fd)
        cachedir._held.clear()
    assert (cfg.staging_dir / live).exists()
    assert "in use by another ocifs process" in caplog.text and "unfinished write" not in caplog.text
