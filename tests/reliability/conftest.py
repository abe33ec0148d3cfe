"""Fixtures for the reliability tests: toxiproxy between ocifs and MinIO, a MinIO we may kill.

* ``toxiproxy``: one toxiproxy-server on 127.0.0.1 for the session.
* ``proxy``: a proxy (fresh per test) in front of the session MinIO from tests/conftest.py
  (the ``s3`` fixture's endpoint), with helpers to add and remove toxics.
* ``fault_mount_factory`` / ``fault_mount``: real ``ocifs mount``s whose S3 endpoint is the
  proxy (``--op-timeout 20``, ``--log-level debug``), so a hang becomes EIO within seconds.
  They are ``Mount`` objects from tests/conftest.py (remount, log, log_tail, teardown), and the
  top-level report hook attaches their daemon logs to a failing test.
* ``private_minio`` / ``private_bucket``: a MinIO of this module only (own data dir, own port)
  that tests may SIGKILL and restart on the same port and data.

Checks of what is in the bucket always go straight to MinIO, never through the proxy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import MOUNT_TIMEOUT, S3, Bucket, Mount, force_unmount, fusermount_bin, is_mounted, run

from .harness import HarnessError, MinioServer, Toxiproxy

OP_TIMEOUT = 20.0  # --op-timeout of fault mounts: a stuck FUSE op becomes EIO after this
MARGIN = 25.0  # slack over OP_TIMEOUT before we call an operation hung (2 busy cores)
FAULT_ARGS = ["--op-timeout", str(int(OP_TIMEOUT)), "--log-level", "debug"]


class Proxy:
    """One toxiproxy proxy in front of an S3 endpoint."""

    def __init__(self, toxi: Toxiproxy, name: str, upstream_endpoint: str) -> None:
        self.toxi = toxi
        self.name = name
        u = urlparse(upstream_endpoint)
        self.endpoint = toxi.proxy(name, f"{u.hostname}:{u.port}")
        self.active: list[str] = []

    def add(self, type: str, stream: str = "downstream", toxicity: float = 1.0, **attributes) -> str:
        t = self.toxi.add(self.name, type, stream, toxicity, **attributes)
        self.active.append(t)
        return t

    def remove(self, toxic: str) -> None:
        self.toxi.remove(self.name, toxic)
        self.active.remove(toxic)

    def clear(self) -> None:
        self.toxi.clear(self.name)
        self.active.clear()
        self.toxi.set_enabled(self.name, True)

    def disable(self) -> None:
        self.toxi.set_enabled(self.name, False)

    def enable(self) -> None:
        self.toxi.set_enabled(self.name, True)

    def delete(self) -> None:
        self.toxi._req("DELETE", f"/proxies/{self.name}")


@dataclass
class FaultMount(Mount):
    """A Mount whose endpoint is not necessarily the bucket's (the proxy), with its own env."""

    endpoint: str | None = None
    env: dict | None = None
    proxy: Proxy | None = None
    fixed_cache_dir: Path | None = None
    extra_env: dict = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        if self.fixed_cache_dir is not None:
            return self.fixed_cache_dir
        return self.workdir / f"cache-{self.generation}"

    def mount_args(self) -> list[str]:
        args = super().mount_args()
        if self.endpoint:
            args[args.index("--endpoint-url") + 1] = self.endpoint
        return args

    def process_env(self) -> dict:
        env = self.env if self.env is not None else self.bucket.s3.env()
        return {**env, **self.extra_env}

    def mount(self) -> None:
        fusermount_bin()
        assert not is_mounted(self.path), f"{self.path} is already mounted"
        self.generation += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.log_files.append(self.log_file)
        res = run(self.mount_args(), env=self.process_env(), timeout=MOUNT_TIMEOUT, check=False)
        if res.returncode != 0 or not is_mounted(self.path):
            pytest.fail(f"ocifs mount failed\n{res.describe()}\n{self.log_tail()}", pytrace=False)

    def umount(self) -> None:
        if self.proxy is not None:
            self.proxy.clear()
        super().umount()

    def teardown(self) -> str | None:
        if self.proxy is not None:
            try:
                self.proxy.clear()  # never flush through a toxic
            except Exception:
                pass
        return super().teardown()

    @property
    def pid_path(self) -> Path:
        from .harness import pid_file

        return pid_file(self.path)

    @property
    def pid(self) -> int:
        return int(self.pid_path.read_text())


# --------------------------------------------------------------------------- toxiproxy


@pytest.fixture(scope="session")
def toxiproxy():
    t = Toxiproxy()
    try:
        t.start()
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    yield t
    t.stop()


@pytest.fixture
def proxy(s3, toxiproxy, request):
    p = Proxy(toxiproxy, f"s3-{uuid.uuid4().hex[:8]}", s3.endpoint)
    yield p
    try:
        p.clear()
        p.delete()
    except Exception:
        pass


# --------------------------------------------------------------------------- mounts


@pytest.fixture
def fault_mount_factory(request):
    """``make(bucket, endpoint=None, extra_args=(), proxy=None, env=None, mount=True, cache_dir=None)``"""
    mounts: list[FaultMount] = []
    request.node._ocifs_mounts = mounts

    def make(bucket: Bucket, endpoint: str | None = None, extra_args=(), proxy: Proxy | None = None,
             env: dict | None = None, mount: bool = True, cache_dir: Path | None = None) -> FaultMount:
        workdir = Path(tempfile.mkdtemp(prefix="ocifs-rel-"))
        mp = workdir / "mnt"
        mp.mkdir()
        m = FaultMount(bucket, mp, workdir, [*FAULT_ARGS, *extra_args], endpoint=endpoint or (proxy.endpoint if proxy else None),
                       env=env, proxy=proxy, fixed_cache_dir=cache_dir)
        mounts.append(m)
        if mount:
            m.mount()
        return m

    yield make
    problems = [p for m in reversed(mounts) if (p := m.teardown())]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def fault_mount(bucket, proxy, fault_mount_factory) -> FaultMount:
    """A bucket of the session MinIO mounted through ``proxy``."""
    return fault_mount_factory(bucket, proxy=proxy)


# --------------------------------------------------------------------------- private MinIO


@pytest.fixture(scope="module")
def private_minio():
    if os.environ.get("OCIFS_TEST_S3_ENDPOINT"):
        pytest.fail("the reliability tests kill and restart MinIO: they need the local MinIO, "
                    "unset OCIFS_TEST_S3_ENDPOINT", pytrace=False)
    m = MinioServer()
    try:
        m.start()
    except HarnessError as e:
        pytest.fail(str(e), pytrace=False)
    yield m
    m.close()


@pytest.fixture
def private_s3(private_minio) -> S3:
    if private_minio.proc is None or private_minio.proc.poll() is not None:
        private_minio.start()  # a previous test left it dead
    return S3(private_minio.endpoint, private_minio.access_key, private_minio.secret_key)


@pytest.fixture
def private_bucket(private_s3):
    b = Bucket(private_s3, f"ocifs-rel-{uuid.uuid4().hex[:10]}")
    private_s3.create_bucket(b.name)
    yield b
    try:
        private_s3.delete_bucket(b.name, b.put_keys)
    except Exception:
        pass


def tmpfs(path: Path, size: str):
    """Mount a tmpfs of ``size`` on ``path`` (root only); returns an undo function."""
    path.mkdir(parents=True, exist_ok=True)
    res = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=False, timeout=30)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (root needed)\n{res.describe()}", pytrace=False)

    def undo():
        run(["umount", "-l", path], check=False, timeout=30)
        shutil.rmtree(path, ignore_errors=True)

    return undo


__all__ = ["FaultMount", "OP_TIMEOUT", "MARGIN", "force_unmount", "tmpfs"]
