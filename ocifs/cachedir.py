"""The mount's cache directory: where staged writes (and, by default, the log) live.

``--cache-dir`` may name a directory that is not ocifs's own, even a shared one such as /tmp.
ocifs therefore never changes a directory it did not create: the cache directory is created
(mode 0700) only if missing, and the private parts live in its subdirectories ``staging`` and
``lost+found``, which are created, or accepted only if they are real directories of ours (see
:func:`ocifs.runtime.private_dir`). Staged files hold data not yet in S3, readable by nobody else.

A staging file left by a run that died (SIGKILL, a crash, power loss) belongs to a file that was
never closed, so it is never published. The next mount reports each one (the object it was
for, from its ``.key`` label, and its size) and moves it to ``lost+found``, which keeps the
newest ones within :data:`LOST_FOUND_FILES` files and :data:`LOST_FOUND_BYTES` bytes on disk.
Several daemons may share a cache dir: each holds a shared lock on ``staging`` while it runs,
and leftovers are only handled by a daemon that finds no other holding it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from ocifs import errors
from ocifs.config import Config
from ocifs.content import LABEL_SUFFIX
from ocifs.runtime import private_dir

log = logging.getLogger(__name__)

LOST_FOUND = "lost+found"
LOST_FOUND_FILES = 100
LOST_FOUND_BYTES = 1 << 30  # on disk (staging files are sparse)
LOCK_WAIT = 10.0  # seconds to wait while another daemon sorts out leftovers

_held: list[int] = []  # this process's lock on its staging dir (open while it runs)


def make_dir(path: Path, what: str) -> None:
    """Create ``path`` (mode 0700) if it is missing; an existing one is left as it is (it may
    be shared): what must be private goes into a subdirectory checked by ``private_dir``."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.OcifsError(f"cannot create {what} {path}: {exc.strerror}") from None


def prepare_cache_dir(cfg: Config) -> None:
    """Make the cache and staging directories ready; deal with leftovers of a run that died."""
    make_dir(cfg.cache_dir, "cache directory")
    hint = "remove it, or use another --cache-dir"
    private_dir(cfg.staging_dir, os.geteuid(), hint)
    fd = os.open(cfg.staging_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    _held.append(fd)
    if _lock(fd, fcntl.LOCK_EX, 0):
        leftovers = staging_leftovers(cfg.staging_dir)
        if leftovers:
            recover(leftovers, private_dir(cfg.cache_dir / LOST_FOUND, os.geteuid(), hint))
    else:
        log.info("staging dir %s is in use by another ocifs process; its files are that one's", cfg.staging_dir)
    if not _lock(fd, fcntl.LOCK_SH, LOCK_WAIT):
        log.warning("staging dir %s stays locked by another ocifs process; going on without a lock", cfg.staging_dir)


def _lock(fd: int, kind: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def staging_leftovers(staging: Path) -> list[Path]:
    """Staging files in ``staging`` (their labels and half-written labels aside: a label
    without its file is removed here)."""
    files = []
    for p in sorted(staging.iterdir()):
        if p.suffix in (LABEL_SUFFIX, ".tmp"):
            if p.suffix == ".tmp" or not p.with_suffix("").exists():
                p.unlink(missing_ok=True)
        else:
            files.append(p)
    return files


def _label(p: Path) -> str:
    try:
        return p.with_name(p.name + LABEL_SUFFIX).read_text().strip() or "(empty label)"
    except OSError:
        return "(no label: what it was for is unknown)"


def recover(leftovers: list[Path], lost_found: Path) -> None:
    """Report each leftover (one line), move it to ``lost_found``, keep that within bounds."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for p in leftovers:
        label = _label(p)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        dest = lost_found / f"{stamp}-{p.name}"
        kept = False
        if st.st_blocks * 512 <= LOST_FOUND_BYTES:
            try:
                os.rename(p, dest)
                dest.with_name(dest.name + LABEL_SUFFIX).write_text(label + "\n")
                kept = True
            except OSError as exc:
                log.debug("cannot move %s to %s: %s", p, lost_found, exc)
        if not kept:
            p.unlink(missing_ok=True)
        p.with_name(p.name + LABEL_SUFFIX).unlink(missing_ok=True)
        log.warning(
            "unfinished write of an earlier run (never closed, so never published): %s, %d bytes (%d on disk); %s",
            label, st.st_size, st.st_blocks * 512, f"moved to {dest}" if kept else "deleted (too big for lost+found or not movable)",
        )
    trim(lost_found)


def trim(lost_found: Path, files: int = LOST_FOUND_FILES, size: int = LOST_FOUND_BYTES) -> None:
    """Delete the oldest entries of ``lost_found`` until it holds at most ``files`` files and
    ``size`` bytes on disk."""
    entries = []
    for p in sorted(lost_found.iterdir()):  # names start with the time they were moved
        if p.suffix != LABEL_SUFFIX:
            try:
                entries.append((p, os.lstat(p).st_blocks * 512))
            except FileNotFoundError:
                pass
    total = sum(n for _, n in entries)
    while entries and (len(entries) > files or total > size):
        p, n = entries.pop(0)
        p.unlink(missing_ok=True)
        p.with_name(p.name + LABEL_SUFFIX).unlink(missing_ok=True)
        total -= n
        log.info("%s: removed %s, the oldest (keeps %d files, %d MiB)", lost_found, p.name, files, size >> 20)
