"""The shape every server of the rig has (MinIO, toxiproxy, zot, docker-registry).

A server is a pinned program on 127.0.0.1, in its own session (so it and whatever it forks
are one process group, signalled by its pid), with its output appended to a log in its own
work directory. It is ready once it answers an HTTP probe; a server that exits or does not
answer in time is a :class:`~testkit.paths.RigError` with the end of its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from testkit.paths import RigError
from testkit.procs import stop_process, tail


def http_ok(url: str, timeout: float = 2) -> bool:
    """GET ``url`` answers 200 (False while the server is not listening yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """Base class: a subclass says how to start it (:meth:`argv`, :meth:`environ`) and when it
    is ready (:meth:`ready`). ``start`` may be called again after ``stop`` or ``kill``: the
    same port, configuration and data."""

    name = "server"
    output_suffix = ".log"  # of the file its stdout and stderr go to (zot keeps a log of its own)
    ready_timeout = 60.0
    stop_timeout = 20.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"{self.name}{self.output_suffix}"
        self.proc: subprocess.Popen | None = None

    # -- what a subclass says
    def argv(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str] | None:
        """The server's environment (None: ours)."""
        return None

    def ready(self) -> bool:
        raise NotImplementedError

    # -- life cycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float | None = None) -> Self:
        timeout = self.ready_timeout if timeout is None else timeout
        argv = self.argv()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(argv, env=self.environ(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RigError(f"{self.name} exited with {self.proc.returncode} at start\n{self.log_tail()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RigError(f"{self.name} not ready after {timeout}s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (the server's process group), SIGKILL if it is still there after a while."""
        if self.proc is not None:
            self.resume()  # a frozen server would only see the SIGTERM once thawed
            stop_process(self.proc, self.stop_timeout, group=True)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, requests in flight just die."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=self.stop_timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but stops answering (a frozen server)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and remove the work directory (data and log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def log_text(self) -> str:
        """What the server wrote so far."""
        return tail(self.log, 1 << 20)
