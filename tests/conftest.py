"""Shared fixtures for the ocifs test suite.

Everything here is real: a real MinIO server (or an external S3 endpoint named by
the OCIFS_TEST_S3_* variables), real FUSE mounts made by the real ``ocifs`` CLI,
and the real pinned ``oras`` binary. A missing tool fails the test and names the
setup command; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import botocore.exceptions
import pytest

from ocifs import runtime

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"
SETUP_HINT = "run `scripts/setup.sh` to install it"

MINIO_USER = "ocifs-test"
MINIO_PASSWORD = "ocifs-test-secret"
REGION = "us-east-1"

MOUNT_TIMEOUT = 60  # seconds for `ocifs mount` to return once the mount is ready
UMOUNT_TIMEOUT = 300  # `ocifs umount` flushes pending uploads (may be a GiB)


# --------------------------------------------------------------------------- tools


def require_tool(path_or_name: str | os.PathLike) -> str:
    """Return the path of a required executable, or fail the test naming setup.sh."""
    p = Path(path_or_name)
    if p.is_absolute() or os.sep in str(path_or_name):
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
        pytest.fail(f"required tool {p} is missing: {SETUP_HINT}", pytrace=False)
    found = shutil.which(str(path_or_name))
    if not found:
        pytest.fail(
            f"required tool {path_or_name!r} is not on PATH: {SETUP_HINT}", pytrace=False
        )
    return found


def minio_bin() -> str:
    return require_tool(TOOLS / "minio")


def oras_bin() -> str:
    return require_tool(TOOLS / "oras")


def fusermount_bin() -> str:
    return require_tool("fusermount3")


def ocifs_bin() -> list[str]:
    """The installed console script (what users run)."""
    exe = VENV_BIN / "ocifs"
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        pytest.fail(f"the ocifs console script {exe} is missing: {SETUP_HINT}", pytrace=False)
    return [str(exe)]


# --------------------------------------------------------------------------- run


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    def describe(self) -> str:
        return (
            f"command: {' '.join(map(str, self.args))}\n"
            f"exit status: {self.returncode} after {self.duration:.1f}s\n"
            f"--- stdout (tail) ---\n{self.stdout[-4000:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-4000:]}"
        )


def run(
    cmd,
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict | None = None,
    cwd=None,
    input: bytes | None = None,
) -> Result:
    """subprocess.run with a timeout, captured output and a readable failure.

    Output is captured into temporary files rather than pipes, so that a command
    which leaves a daemon behind (``ocifs mount``) returns as soon as the command
    itself exits, whatever the daemon does with the inherited descriptors.
    The command runs in its own session; on timeout its whole process group is
    killed and the test fails.
    """
    args = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            if input is not None:
                proc.communicate(input=input, timeout=timeout)
            else:
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            out.seek(0)
            err.seek(0)
            pytest.fail(
                f"command timed out after {timeout}s: {' '.join(args)}\n"
                f"--- stdout ---\n{out.read().decode(errors='replace')[-4000:]}\n"
                f"--- stderr ---\n{err.read().decode(errors='replace')[-4000:]}",
                pytrace=False,
            )
        duration = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        res = Result(
            args,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            duration,
        )
    if check and res.returncode != 0:
        pytest.fail("command failed\n" + res.describe(), pytrace=False)
    return res


def oras(*args, cwd=None, timeout: float = 600, check: bool = True) -> Result:
    """Run the pinned oras binary."""
    env = dict(os.environ)
    # keep oras away from the invoking user's registry credentials and config
    env["HOME"] = str(Path(tempfile.gettempdir()) / "ocifs-test-oras-home")
    Path(env["HOME"]).mkdir(exist_ok=True)
    env.pop("DOCKER_CONFIG", None)
    return run([oras_bin(), *args], cwd=cwd, timeout=timeout, check=check, env=env)


# --------------------------------------------------------------------------- mounts


def mount_entries(path) -> list[runtime.MountEntry]:
    """The /proc/self/mounts entries whose mountpoint is ``path`` (ocifs's own parser, so the
    tests and ``ocifs umount`` agree on what is mounted)."""
    target = os.path.realpath(str(path))
    return [e for e in runtime.mount_table() if e.mountpoint == target]


def is_mounted(path) -> bool:
    return bool(mount_entries(path))


def force_unmount(path) -> None:
    """Last resort: lazy FUSE unmount, bounded in time."""
    for _ in range(5):
        if not is_mounted(path):
            return
        subprocess.run(
            [fusermount_bin(), "-u", "-z", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- S3


class S3:
    """An S3 endpoint for the tests, with a small synchronous client for direct checks."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, external_bucket=None):
        import botocore.config
        import botocore.session

        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.external_bucket = external_bucket
        session = botocore.session.get_session()
        self.client = session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                max_pool_connections=64,
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
            ),
        )

    def env(self, access_key: str | None = None, secret_key: str | None = None) -> dict:
        """Environment for a subprocess: botocore's default chain finds these keys."""
        env = dict(os.environ)
        for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.pop(k, None)
        env.update(
            AWS_ACCESS_KEY_ID=access_key if access_key is not None else self.access_key,
            AWS_SECRET_ACCESS_KEY=secret_key if secret_key is not None else self.secret_key,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    def requests_served(self) -> dict[str, float]:
        """MinIO's own count of S3 requests served, by API name (``CopyObject``, ...): what the
        server saw, not what ocifs thinks it sent (metrics v3, MINIO_PROMETHEUS_AUTH_TYPE=public)."""
        with urllib.request.urlopen(self.endpoint + "/minio/metrics/v3/api/requests", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("minio_api_requests_total{") and 'type="s3"' in line:
                labels, _, value = line[len("minio_api_requests_total{") :].partition("} ")
                name = next((p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("name=")), "")
                out[name] = out.get(name, 0.0) + float(value.split()[0])
        return out

    # -- direct object access (test-side checks only) --
    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def put(self, bucket: str, key: str, data: bytes = b"") -> None:
        if data:
            self.client.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            # no Body at all: after a PUT with Body=b"" (botocore 1.40 + this MinIO) the
            # next request on the same connection stalls for 30 s
            self.client.put_object(Bucket=bucket, Key=key)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def head(self, bucket: str, key: str) -> dict | None:
        """HeadObject, or None if the key does not exist."""
        try:
            return self.client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    def delete_prefix(self, bucket: str, prefix: str = "", extra_keys=()) -> None:
        keys = sorted(set(self.list(bucket, prefix)) | set(extra_keys))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )

    def delete_bucket(self, bucket: str, extra_keys=()) -> None:
        self.delete_prefix(bucket, "", extra_keys)
        self.client.delete_bucket(Bucket=bucket)


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


def _wait_live(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"minio exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(endpoint + "/minio/health/live", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"minio not live after {timeout}s:\n{log.read_text()[-4000:]}")


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

    exe = minio_bin()
    data = Path(tempfile.mkdtemp(prefix="ocifs-test-minio-"))
    port, console = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        MINIO_ROOT_USER=MINIO_USER,
        MINIO_ROOT_PASSWORD=MINIO_PASSWORD,
        MINIO_PROMETHEUS_AUTH_TYPE="public",
        MINIO_BROWSER="off",
        MINIO_UPDATE="off",
    )
    log = data.with_name(data.name + ".log")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                exe, "server", str(data / "data"),
                "--address", f"127.0.0.1:{port}",
                "--console-address", f"127.0.0.1:{console}",
                "--quiet",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_live(endpoint, proc, log)
        yield S3(endpoint, MINIO_USER, MINIO_PASSWORD)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)


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


@dataclass
class Mount:
    """A real ocifs mount of a bucket made with the ocifs CLI in background mode."""

    bucket: Bucket
    path: Path
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    generation: int = 0
    log_files: list[Path] = field(default_factory=list)

    @property
    def cache_dir(self) -> Path:
        return self.workdir / f"cache-{self.generation}"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"ocifs-{self.generation}.log"

    def mount_args(self) -> list[str]:
        return [
            *ocifs_bin(), "mount", self.bucket.url, str(self.path),
            "--endpoint-url", self.bucket.s3.endpoint,
            "--cache-dir", str(self.cache_dir),
            "--log-file", str(self.log_file),
            "--log-level", os.environ.get("OCIFS_TEST_LOG_LEVEL", "info"),
            *self.extra_args,
        ]

    def mount(self) -> None:
        fusermount_bin()
        assert not is_mounted(self.path), f"{self.path} is already mounted"
        self.generation += 1
        self.cache_dir.mkdir(parents=True)
        self.log_files.append(self.log_file)
        res = run(self.mount_args(), env=self.bucket.s3.env(), timeout=MOUNT_TIMEOUT, check=False)
        if res.returncode != 0:
            pytest.fail(f"ocifs mount failed\n{res.describe()}\n{self.log_tail()}", pytrace=False)
        if not is_mounted(self.path):
            pytest.fail(
                f"ocifs mount exited 0 but {self.path} is not in /proc/mounts\n"
                f"{res.describe()}\n{self.log_tail()}",
                pytrace=False,
            )

    def umount(self) -> None:
        res = run(
            [*ocifs_bin(), "umount", str(self.path)],
            env=self.bucket.s3.env(),
            timeout=UMOUNT_TIMEOUT,
            check=False,
        )
        if res.returncode != 0:
            pytest.fail(f"ocifs umount failed\n{res.describe()}\n{self.log_tail()}", pytrace=False)
        if is_mounted(self.path):
            pytest.fail(f"ocifs umount exited 0 but {self.path} is still mounted\n{self.log_tail()}")
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def remount(self) -> None:
        """Unmount (flushing everything) and mount the same bucket again with a fresh cache."""
        self.umount()
        self.mount()

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

    def teardown(self) -> str | None:
        """Unmount with ``ocifs umount`` (lazy fusermount3 as a last resort) and clean up.

        Returns a description of what went wrong with ``ocifs umount``, if anything.
        """
        problem = None
        try:
            if is_mounted(self.path):
                res = run(
                    [*ocifs_bin(), "umount", str(self.path)],
                    env=self.bucket.s3.env(),
                    timeout=UMOUNT_TIMEOUT,
                    check=False,
                )
                if res.returncode != 0 or is_mounted(self.path):
                    problem = f"ocifs umount {self.path} failed\n{res.describe()}\n{self.log_tail()}"
        finally:
            force_unmount(self.path)
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problem


@pytest.fixture
def mount_factory(request):
    """Make more mounts: ``mount_factory(bucket, extra_args=[...], mount=True)``."""
    mounts: list[Mount] = []
    request.node._ocifs_mounts = mounts

    def make(bucket: Bucket, extra_args=(), mount: bool = True) -> Mount:
        workdir = Path(tempfile.mkdtemp(prefix="ocifs-test-"))
        mp = workdir / "mnt"
        mp.mkdir()
        m = Mount(bucket, mp, workdir, list(extra_args))
        mounts.append(m)
        if mount:
            m.mount()
        return m

    yield make
    problems = [p for m in reversed(mounts) if (p := m.teardown())]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


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
