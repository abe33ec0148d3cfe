"""ocifs mounts made and unmade by the real CLI (``ocifs mount`` in background mode, ``ocifs
umount``), as users make them: the rig never calls into the daemon's code.

Each ``mount()`` is a new generation: a new daemon with, unless told otherwise, its own cache
directory and its own log file in the mount's work directory, so a remount starts cold and a
failure shows the log of the daemon that failed (and :attr:`OcifsMount.log` all of them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from testkit.mounts import daemon_pid, force_unmount, is_mounted
from testkit.paths import RigError, ocifs_cmd, require_tool
from testkit.procs import Result, run

MOUNT_TIMEOUT = 60  # seconds for `ocifs mount` to return once the mount is ready
UMOUNT_TIMEOUT = 300  # `ocifs umount` flushes pending uploads (may be a GiB)


class MountFailed(RigError):
    """``ocifs mount`` or ``ocifs umount`` did not do what it said it did."""


class OcifsMount:
    """One mountpoint of one bucket URL, mounted by the ocifs CLI (again after a umount).

    ``cache_dir`` / ``log_file`` given: every generation uses that one; else
    ``<workdir>/cache-<generation>`` and ``<workdir>/ocifs-<generation>.log``.
    ``env`` is the CLI's environment (the S3 credentials); subclasses may compute it instead
    (:meth:`process_env`) and add flags (:meth:`own_args`).
    """

    def __init__(self, url: str, path: Path, endpoint: str, workdir: Path, *, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, cache_dir: Path | None = None,
                 log_file: Path | None = None) -> None:
        self.url = url
        self.path = Path(path)
        self.endpoint = endpoint
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args)
        self.env = env
        self.fixed_cache_dir = cache_dir
        self.fixed_log_file = log_file
        self.generation = 0
        self.log_files: list[Path] = []

    @property
    def cache_dir(self) -> Path:
        if self.fixed_cache_dir is not None:
            return self.fixed_cache_dir
        return self.workdir / f"cache-{self.generation}"

    @property
    def log_file(self) -> Path:
        if self.fixed_log_file is not None:
            return self.fixed_log_file
        return self.workdir / f"ocifs-{self.generation}.log"

    @property
    def pid(self) -> int | None:
        """The daemon's pid (None: no pid file, e.g. not mounted)."""
        return daemon_pid(self.path)

    def own_args(self) -> list[str]:
        """A subclass's flags, before ``extra_args`` (argparse keeps the last of a flag, so the
        caller's ``extra_args`` win)."""
        return []

    def mount_args(self) -> list[str]:
        return [
            *ocifs_cmd(), "mount", self.url, str(self.path),
            "--endpoint-url", self.endpoint,
            "--cache-dir", str(self.cache_dir),
            "--log-file", str(self.log_file),
            *self.own_args(),
            *self.extra_args,
        ]

    def process_env(self) -> dict[str, str]:
        return dict(os.environ if self.env is None else self.env)

    def mount(self, timeout: float = MOUNT_TIMEOUT) -> Result:
        """A new generation: ``ocifs mount``, which must exit 0 with the path in the mount table."""
        require_tool("fusermount3")
        if is_mounted(self.path):
            raise MountFailed(f"{self.path} is already mounted")
        self.generation += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if self.log_file not in self.log_files:
            self.log_files.append(self.log_file)
        res = run(self.mount_args(), env=self.process_env(), timeout=timeout)
        if res.returncode != 0:
            raise MountFailed(f"ocifs mount failed\n{res.describe()}\n{self.log_tail()}")
        if not is_mounted(self.path):
            raise MountFailed(f"ocifs mount exited 0 but {self.path} is not in /proc/mounts\n"
                              f"{res.describe()}\n{self.log_tail()}")
        return res

    def umount(self, timeout: float = UMOUNT_TIMEOUT, flush_timeout: float | None = None) -> Result:
        """``ocifs umount`` (``--timeout flush_timeout`` if given), which must exit 0 with the
        path gone from the mount table; ``timeout`` bounds the command itself."""
        return self._umount(timeout, flush_timeout)

    def _umount(self, timeout: float, flush_timeout: float | None) -> Result:
        # teardown calls this rather than umount(): a subclass's umount may report failures
        # its own way (pytest.fail), and teardown must collect them and go on
        args = [*ocifs_cmd(), "umount", str(self.path)]
        if flush_timeout is not None:
            args += ["--timeout", str(int(flush_timeout))]
        res = run(args, env=self.process_env(), timeout=timeout)
        if res.returncode != 0:
            raise MountFailed(f"ocifs umount {self.path} failed\n{res.describe()}\n{self.log_tail()}")
        if is_mounted(self.path):
            raise MountFailed(f"ocifs umount exited 0 but {self.path} is still mounted\n{self.log_tail()}")
        return res

    def remount(self) -> None:
        """Unmount (flushing everything) and mount the same bucket again: a new daemon."""
        self.umount()
        self.mount()

    def teardown(self, timeout: float = UMOUNT_TIMEOUT, flush_timeout: float | None = None) -> str | None:
        """``ocifs umount`` if still mounted, a lazy unmount as the last resort; returns what
        went wrong with ``ocifs umount``, if anything (a test or a soak reports it)."""
        try:
            if is_mounted(self.path):
                self._umount(timeout, flush_timeout)
        except RigError as e:
            return str(e)
        finally:
            force_unmount(self.path)
        return None

    @property
    def log(self) -> str:
        """All daemon logs of this mount so far (every generation), oldest first."""
        parts = []
        for f in self.log_files:
            try:
                parts.append(f.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log
        if not text:
            return f"(daemon log {self.log_file} is empty or missing)"
        return "--- ocifs daemon log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

