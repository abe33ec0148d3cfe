"""Running commands and watching processes, always bounded in time.

Commands run in their own session with their output in temporary files rather than pipes:
a command that leaves a daemon behind (``ocifs mount``) returns as soon as the command itself
exits, whatever the daemon does with the descriptors it inherited, and a command that times
out is killed with its whole process group. Only processes the rig started are signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.paths import RigError

TAIL = 4000  # characters of a command's output shown in a failure


class CommandTimeout(RigError):
    """A command outlived its timeout (it was killed with its process group)."""


class CommandFailed(RigError):
    """A command that had to succeed exited non-zero."""


@dataclass
class Result:
    """What a finished command did (the fields of ``subprocess.CompletedProcess``, and more)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    def describe(self) -> str:
        return (
            f"command: {' '.join(map(str, self.args))}\n"
            f"exit status: {self.returncode} after {self.duration:.1f}s\n"
            f"--- stdout (tail) ---\n{self.stdout[-TAIL:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-TAIL:]}"
        )


def run(
    cmd: Sequence[object],
    *,
    timeout: float = 120,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
) -> Result:
    """Run ``cmd`` to the end within ``timeout`` seconds, output captured.

    Raises :class:`CommandTimeout` (with the output so far) if it runs longer, and with
    ``check`` :class:`CommandFailed` (with :meth:`Result.describe`) if it exits non-zero.
    """
    args = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            if input is not None:
                proc.communicate(input=input, timeout=timeout)
            else:
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandTimeout(
                f"command timed out after {timeout}s: {' '.join(args)}\n"
                f"--- stdout ---\n{_read(out)[-TAIL:]}\n"
                f"--- stderr ---\n{_read(err)[-TAIL:]}"
            ) from None
        res = Result(args, proc.returncode, _read(out), _read(err), time.monotonic() - start)
    if check and res.returncode != 0:
        raise CommandFailed("command failed\n" + res.describe())
    return res


def _read(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def stop_process(proc: subprocess.Popen, timeout: float = 20, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: one process we started (``group``: the process
    group it leads, for a server started in its own session), by pid, never by name."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    try:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float) -> bool:
    """True once ``pid`` no longer runs; False if it still does after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a log file ("" if there is none yet)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` now, in MiB (raises OSError once it is gone)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    """Open descriptors of ``pid`` (raises OSError once it is gone)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
