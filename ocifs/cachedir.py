"""The mount's cache directory: where staged writes (and, by default, the log) live.

``--cache-dir`` may name a directory that is not ocifs's own, even a shared one such as /tmp.
ocifs therefore never changes a directory it did not create: the cache directory is created
(mode 0700) only if missing, and the private parts live in its subdirectory ``staging``, which
is created, or accepted only if it is a real directory of ours (see
:func:`ocifs.runtime.private_dir`). Staged files hold data not yet in S3, readable by nobody else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ocifs import errors
from ocifs.config import Config
from ocifs.runtime import private_dir

log = logging.getLogger(__name__)


def make_dir(path: Path, what: str) -> None:
    """Create ``path`` (mode 0700) if it is missing; an existing one is left as it is (it may
    be shared): what must be private goes into a subdirectory checked by ``private_dir``."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.OcifsError(f"cannot create {what} {path}: {exc.strerror}") from None


def prepare_cache_dir(cfg: Config) -> None:
    """Make the cache and staging directories ready; warn about leftovers of a crashed run."""
    make_dir(cfg.cache_dir, "cache directory")
    private_dir(cfg.staging_dir, os.geteuid(), "remove it, or use another --cache-dir")
    leftovers = list(cfg.staging_dir.iterdir())
    if leftovers:
        log.warning(
            "staging dir %s holds %d file(s) from an earlier run that did not finish; "
            "they were not published", cfg.staging_dir, len(leftovers)
        )
