"""Shared fixtures for the ocifs test suite.

Everything here is real: a real MinIO server (or an external S3 endpoint named by
the OCIFS_TEST_S3_* variables), real FUSE mounts made by the real ``ocifs`` CLI,
and the real pinned ``oras`` binary. A missing tool fails the test and names the
setup command; nothing is skipped.

The servers, commands and mounts are the rig's (``testkit/``, shared with bench/ and
scripts/); this file makes fixtures of them and turns the rig's errors into failed tests.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

import testkit
from testkit import (  # noqa: F401 - re-exported: the tests import these from conftest
    MOUNT_TIMEOUT, REGION, REPO, S3, TOOLS, UMOUNT_TIMEOUT, VENV_BIN, MinioServer, OcifsMount, Result,
    RigError, Server, free_port, is_mounted, mount_entries,
)

F = TypeVar("F", bound=Callable)
S = TypeVar("S", bound=Server)

# --------------------------------------------------------------------------- rig failures


@contextlib.contextmanager
def rig_failures() -> Iterator[None]:
    """The rig (testkit) raises RigError for a missing tool, a server that does not start, a
    command that times out or a mount that fails; in a test that is a failure with the rig's
    message (which names ``scripts/setup.sh`` for a missing tool), not a traceback into the rig."""
    try:
        yield
    except RigError as e:
        pytest.fail(str(e), pytrace=False)


def failing(fn: F) -> F:
    """``fn`` with :func:`rig_failures` around every call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rig_failures():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """A rig server for a fixture: started (a server that does not start fails the test),
    then stopped and its work directory removed."""
    try:
        with rig_failures():
            server.start()
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- tools

require_tool = failing(testkit.require_tool)
force_unmount = failing(testkit.force_unmount)
ocifs_bin = failing(testkit.ocifs_cmd)  # the installed console script (what users run)


def oras_bin() -> str:
    return require_tool(TOOLS / "oras")


@failing
def run(cmd, *, timeout: float = 120, check: bool = True, env: dict | None = None, cwd=None,
        input: bytes | None = None) -> Result:
    """:func:`testkit.run` (a timeout kills the command's process group), and the test fails
    if it times out or (``check``) exits non-zero."""
    return testkit.run(cmd, timeout=timeout, check=check, env=env, cwd=cwd, input=input)


def oras(*args, cwd=None, timeout: float = 600, check: bool = True) -> Result:
    """Run the pinned oras binary."""
    env = dict(os.environ)
    # keep oras away from the invoking user's registry credentials and config
    env["HOME"] = str(Path(tempfile.gettempdir()) / "ocifs-test-oras-home")
    Path(env["HOME"]).mkdir(exist_ok=True)
    env.pop("DOCKER_CONFIG", None)
    return run([oras_bin(), *args], cwd=cwd, timeout=timeout, check=check, env=env)


# --------------------------------------------------------------------------- S3


@dataclass
class Bucket:
    """A bucket (or a unique prefix inside the external bucket) owned by one test."""

    s3: S3
    name: str
    prefix: str = ""  # "" or "some/prefix/" (always ends with "/")
    # keys put through this helper: MinIO hides some keys from listings (``both/child``
    # beside ``both``), so cleanup deletes these by name too
    put_keys: set = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix.rstrip('/')}" if self.prefix else f"s3://{self.name}"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def put(self, rel: str, data: bytes = b"") -> None:
        self.put_keys.add(self.key(rel))
        self.s3.put(self.name, self.key(rel), data)

    def get(self, rel: str) -> bytes:
        return self.s3.get(self.name, self.key(rel))

    def head(self, rel: str) -> dict | None:
        return self.s3.head(self.name, self.key(rel))

    def list(self, rel_prefix: str = "") -> list[str]:
        """Keys under rel_prefix, relative to this bucket's prefix."""
        return [k[len(self.prefix) :] for k in self.s3.list(self.name, self.key(rel_prefix))]

    def wait_for(self, rel: str, data: bytes | None = None, timeout: float = 30) -> bytes:
        """Wait (bounded) until the object exists (with exactly ``data`` if given)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.head(rel) is not None:
                last = self.get(rel)
                if data is None or last == data:
                    return last
            if time.monotonic() > deadline:
                if last is None:
                    pytest.fail(f"object {self.key(rel)!r} not in bucket {self.name} after {timeout}s")
                pytest.fail(
                    f"object {self.key(rel)!r} in bucket {self.name} has {len(last)} bytes "
                    f"that differ from the expected {len(data)} after {timeout}s"
                )
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3():
    endpoint = os.environ.get("OCIFS_TEST_S3_ENDPOINT")
    if endpoint:
        missing = [
            v
            for v in ("OCIFS_TEST_S3_ACCESS_KEY", "OCIFS_TEST_S3_SECRET_KEY", "OCIFS_TEST_S3_BUCKET")
            if not os.environ.get(v)
        ]
        if missing:
            pytest.fail(f"OCIFS_TEST_S3_ENDPOINT is set but {', '.join(missing)} is not")
        yield S3(
            endpoint,
            os.environ["OCIFS_TEST_S3_ACCESS_KEY"],
            os.environ["OCIFS_TEST_S3_SECRET_KEY"],
            external_bucket=os.environ["OCIFS_TEST_S3_BUCKET"],
        )
        return

    with running(MinioServer()) as minio:
        yield minio.s3()


@pytest.fixture
def bucket(s3, request):
    tag = uuid.uuid4().hex[:10]
    if s3.external_bucket:
        b = Bucket(s3, s3.external_bucket, f"ocifs-test/{request.node.name[:40]}-{tag}/")
        yield b
        try:
            s3.delete_prefix(b.name, b.prefix, b.put_keys)
        except Exception as e:  # cleanup is best effort on a shared bucket
            print(f"cleanup of {b.url} failed: {e}", file=sys.stderr)
        return
    b = Bucket(s3, f"ocifs-test-{tag}")
    s3.create_bucket(b.name)
    yield b
    try:
        s3.delete_bucket(b.name, b.put_keys)
    except Exception as e:
        print(f"cleanup of {b.url} failed: {e}", file=sys.stderr)


# --------------------------------------------------------------------------- mount


class Mount(OcifsMount):
    """A real ocifs mount of a bucket made with the ocifs CLI in background mode; a failure
    to mount or unmount fails the test with the daemon's log tail."""

    def __init__(self, bucket: Bucket, path: Path, workdir: Path, extra_args=()) -> None:
        super().__init__(bucket.url, path, bucket.s3.endpoint, workdir, extra_args=extra_args)
        self.bucket = bucket

    def own_args(self) -> list[str]:
        return ["--log-level", os.environ.get("OCIFS_TEST_LOG_LEVEL", "info")]

    def mount_args(self) -> list[str]:
        with rig_failures():
            return super().mount_args()

    def process_env(self) -> dict[str, str]:
        return self.bucket.s3.env()

    def mount(self) -> Result:
        with rig_failures():
            return super().mount()

    def umount(self, timeout: float = UMOUNT_TIMEOUT, flush_timeout: float | None = None) -> Result:
        with rig_failures():
            res = super().umount(timeout, flush_timeout)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        return res

    @property
    def pid(self) -> int:
        pid = super().pid
        if pid is None:
            pytest.fail(f"no ocifs daemon pid file for {self.path}\n{self.log_tail()}", pytrace=False)
        return pid

    def teardown(self) -> str | None:
        """Unmount with ``ocifs umount`` (lazy fusermount3 as a last resort) and clean up.

        Returns a description of what went wrong with ``ocifs umount``, if anything.
        """
        try:
            with rig_failures():
                return super().teardown()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Mounts:
    """The mounts one test makes through a factory fixture: each in a new work directory
    (``<workdir>/mnt``), their daemon logs attached to the report of a failing test, and all
    torn down after it; what went wrong with ``ocifs umount`` fails the test."""

    def __init__(self, request: pytest.FixtureRequest, prefix: str) -> None:
        self.prefix = prefix
        self.mounts: list[Mount] = []
        request.node._ocifs_mounts = self.mounts

    def add(self, cls: type[Mount], bucket: Bucket, extra_args, mount: bool, **kwargs) -> Mount:
        workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        mp = workdir / "mnt"
        mp.mkdir()
        m = cls(bucket, mp, workdir, list(extra_args), **kwargs)
        self.mounts.append(m)
        if mount:
            m.mount()
        return m

    def teardown(self) -> None:
        problems = [p for m in reversed(self.mounts) if (p := m.teardown())]
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def mount_factory(request):
    """Make more mounts: ``mount_factory(bucket, extra_args=[...], mount=True)``."""
    mounts = Mounts(request, "ocifs-test-")

    def make(bucket: Bucket, extra_args=(), mount: bool = True) -> Mount:
        return mounts.add(Mount, bucket, extra_args, mount)

    yield make
    mounts.teardown()


@pytest.fixture
def mount(bucket, mount_factory) -> Mount:
    return mount_factory(bucket)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for m in getattr(item, "_ocifs_mounts", []):
            rep.sections.append((f"ocifs daemon log for {m.path}", m.log_tail(80)))
        for s in getattr(item, "_rig_servers", []):  # servers a test started for itself
            rep.sections.append((f"{s.name} log", s.log_tail(60)))
