"""Process plumbing shared by every benchmark: cleanup, /proc sampling, and the test rig's
servers and mounts (``testkit/``, shared with tests/ and scripts/) as the benchmarks use them.

Everything started here is registered with :data:`CLEANUP` and torn down in reverse order on
exit, on an exception and on SIGINT/SIGTERM. Mounts are unmounted with their own tool first and
``fusermount3 -u -z`` as the last resort. Only processes this module started are signalled,
always by pid.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import testkit
from testkit import (  # noqa: F401 - the benchmarks import the rig's plumbing from here
    REGION, REPO, TOOLS, VENV_BIN, force_unmount, free_port, is_mounted, stop_process, wait_mounted,
)
from testkit import find_tool as tool  # noqa: F401 - .tools/bin, the venv, then PATH; None if absent

MiB = 1024 * 1024
GiB = 1024 * MiB
S = TypeVar("S", bound=testkit.Server)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- cleanup


class Cleanup:
    """A LIFO of teardown callbacks, run once, also on SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._installed = False
        self._signals = 0

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self.run_all)

        def on_signal(signum, frame):  # noqa: ARG001
            self._signals += 1
            if self._signals == 1:
                log(f"\n[bench] got {signal.Signals(signum).name}: stopping; mounts and servers are cleaned up "
                    "on the way out (signal again to force)")
                raise KeyboardInterrupt
            log("[bench] second signal: cleaning up now")
            self.run_all()
            os._exit(130)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def push(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        self._stack.append((what, fn))
        return fn

    def pop_run(self, fn: Callable[[], None]) -> None:
        """Run one registered callback now and forget it."""
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][1] is fn:
                what, _ = self._stack.pop(i)
                self._call(what, fn)
                return
        fn()

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # cleanup is best effort, but loud
            log(f"[bench] cleanup of {what} failed: {type(exc).__name__}: {exc}")

    def run_all(self) -> None:
        while self._stack:
            what, fn = self._stack.pop()
            self._call(what, fn)


CLEANUP = Cleanup()


# --------------------------------------------------------------------------- caches


def warm_files(paths) -> None:
    """Read files into the page cache before a timed push: a CI runner pushes what it has just
    built, and the pull-cold before each push dropped the caches, so without this each push
    would time the bench machine's disk as much as the upload (a 1 GiB source read cold from
    this box's virtual disk: 4-5 s, more than its raw upload)."""
    buf = bytearray(8 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def drop_caches() -> bool:
    """sync + echo 3 > /proc/sys/vm/drop_caches (root); False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- /proc


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime+stime of a process (its own threads; not waited-for children)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        # fields[0] is state (field 3); utime is field 14, stime 15 -> index 11, 12
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kib(pid: int | None, key: str) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes(pid: int | None) -> int | None:
    kib = proc_status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss(pid: int | None) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux >= 4.0)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
        return True
    except OSError:
        return False


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children so far (user+sys)."""
    t = os.times()
    return t.children_user + t.children_system


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- MinIO


@dataclass
class Endpoint:
    """An S3 endpoint with credentials. ``url`` is what clients use (maybe via toxiproxy)."""

    url: str
    access_key: str
    secret_key: str
    region: str = REGION
    direct_url: str | None = None  # MinIO itself (metrics), when we run it
    metrics: bool = False

    def env(self, base: dict | None = None) -> dict:
        return testkit.s3_env(self.access_key, self.secret_key, region=self.region, base=base)


@dataclass
class MinioServer:
    proc: subprocess.Popen
    data_dir: Path
    endpoint: Endpoint
    log_path: Path


def start_server(server: S, what: str) -> S:
    """Start one of the rig's servers for this run: stopped by :data:`CLEANUP`; a server that
    does not start ends the run with the rig's one-line reason and its log tail."""
    CLEANUP.push(what, server.stop)
    try:
        return server.start()
    except testkit.RigError as e:
        raise SystemExit(str(e)) from None


def start_minio(workdir: Path) -> MinioServer:
    """The rig's MinIO in ``workdir/minio``."""
    server = start_server(testkit.MinioServer(workdir / "minio"), "minio")
    ep = Endpoint(server.endpoint, server.access_key, server.secret_key, direct_url=server.endpoint, metrics=True)
    return MinioServer(server.proc, server.data, ep, server.log)


def minio_metrics(direct_url: str) -> dict[str, float]:
    """MinIO's live S3 counters (:func:`testkit.minio_counters`); {} if MinIO does not answer."""
    try:
        return testkit.minio_counters(direct_url)
    except OSError:
        return {}


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    keys = set(before) | set(after)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in sorted(d.items()) if v}


# --------------------------------------------------------------------------- S3 admin (sync)


def boto_client(ep: Endpoint):
    return testkit.s3_client(ep.url, ep.access_key, ep.secret_key, region=ep.region, pool=32, connect_timeout=60,
                             read_timeout=300)


def delete_prefix(client, bucket: str, prefix: str) -> int:
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [o["Key"] for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            n += len(keys)
    # abort leftover multipart uploads under the prefix
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for u in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    except Exception:
        pass
    return n


# --------------------------------------------------------------------------- ocifs mount


@dataclass
class OcifsMount:
    """An ocifs mount of a benchmark (testkit's, by the real CLI): torn down by :data:`CLEANUP`,
    failures are RuntimeErrors (a failed step)."""

    path: Path
    cache_dir: Path
    log_file: Path
    endpoint: Endpoint
    url: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another revision

    def __post_init__(self) -> None:
        self.m = testkit.OcifsMount(self.url, self.path, self.endpoint.url, self.log_file.parent, extra_args=self.extra,
                                    env={**self.endpoint.env(), **self.env}, cache_dir=self.cache_dir, log_file=self.log_file)

    @property
    def pid(self) -> int | None:
        return self.m.pid

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        CLEANUP.push(f"ocifs mount {self.path}", self.teardown)
        try:
            self.m.mount(timeout=90)
        except testkit.RigError as e:
            raise RuntimeError(str(e)) from None

    def umount(self, timeout: float = 900) -> None:
        if not is_mounted(self.path):
            return
        try:
            self.m.umount(timeout=timeout + 30, flush_timeout=timeout)
        except testkit.RigError as e:
            raise RuntimeError(str(e)) from None

    def teardown(self) -> None:
        problem = self.m.teardown(timeout=150, flush_timeout=120)
        if problem:
            log(f"[bench] ocifs umount {self.path}: {problem}; forced")
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        return self.m.log_tail(n)


def make_workdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    CLEANUP.push(f"workdir {d}", lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@contextlib.contextmanager
def timed():
    t = {"start": time.perf_counter()}
    yield t
    t["seconds"] = time.perf_counter() - t["start"]
