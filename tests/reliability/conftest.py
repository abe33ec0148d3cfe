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
import uuid
from pathlib import Path

import pytest

from conftest import S3, Bucket, Mount, Mounts, rig_failures, run, running
from testkit import MinioServer, Proxy, Toxiproxy

OP_TIMEOUT = 20.0  # --op-timeout of fault mounts: a stuck FUSE op becomes EIO after this
MARGIN = 25.0  # slack over OP_TIMEOUT before we call an operation hung (2 busy cores)
FAULT_ARGS = ["--op-timeout", str(int(OP_TIMEOUT)), "--log-level", "debug"]


class FaultMount(Mount):
    """A Mount whose endpoint is not necessarily the bucket's (the proxy), with its own env."""

    def __init__(self, bucket: Bucket, path: Path, workdir: Path, extra_args=(), *, endpoint: str | None = None,
                 env: dict | None = None, proxy: Proxy | None = None, fixed_cache_dir: Path | None = None,
                 extra_env: dict | None = None) -> None:
        super().__init__(bucket, path, workdir, extra_args)
        self.endpoint = endpoint or self.endpoint
        self.env = env
        self.proxy = proxy
        self.fixed_cache_dir = fixed_cache_dir
        self.extra_env = extra_env or {}

    def process_env(self) -> dict:
        env = self.env if self.env is not None else self.bucket.s3.env()
        return {**env, **self.extra_env}

    def umount(self, *args, **kwargs):
        if self.proxy is not None:
            self.proxy.clear()
        return super().umount(*args, **kwargs)

    def teardown(self) -> str | None:
        if self.proxy is not None:
            try:
                self.proxy.clear()  # never flush through a toxic
            except Exception:
                pass
        return super().teardown()


# --------------------------------------------------------------------------- toxiproxy


@pytest.fixture(scope="session")
def toxiproxy():
    with running(Toxiproxy()) as t:
        yield t


@pytest.fixture
def proxy(s3, toxiproxy, request):
    p = toxiproxy.proxy(f"s3-{uuid.uuid4().hex[:8]}", s3.endpoint)
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
    mounts = Mounts(request, "ocifs-rel-")

    def make(bucket: Bucket, endpoint: str | None = None, extra_args=(), proxy: Proxy | None = None,
             env: dict | None = None, mount: bool = True, cache_dir: Path | None = None) -> FaultMount:
        return mounts.add(FaultMount, bucket, [*FAULT_ARGS, *extra_args], mount,
                          endpoint=endpoint or (proxy.endpoint if proxy else None), env=env, proxy=proxy,
                          fixed_cache_dir=cache_dir)

    yield make
    mounts.teardown()


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
    with running(MinioServer()) as m:
        yield m


@pytest.fixture
def private_s3(private_minio) -> S3:
    if not private_minio.running:
        with rig_failures():
            private_minio.start()  # a previous test left it dead
    return private_minio.s3()


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


__all__ = ["FaultMount", "OP_TIMEOUT", "MARGIN", "tmpfs"]
