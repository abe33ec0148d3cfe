"""Plumbing for the reliability tests and ``scripts/soak.py`` (no pytest in here).

Everything is real: a private MinIO we can SIGKILL and restart on the same port and data dir,
a toxiproxy-server between ocifs and MinIO, the ocifs CLI, and the daemon's /proc entries.
Every wait is bounded; a blocking filesystem call runs in a thread joined with a timeout
(:func:`bounded`), so a hang becomes a reported failure instead of a stuck suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
VENV_BIN = REPO / ".venv" / "bin"

MINIO_USER = "ocifs-rel"
MINIO_PASSWORD = "ocifs-rel-secret-0123456789"
REGION = "us-east-1"
MiB = 1024 * 1024


class HarnessError(Exception):
    """Something in the test rig (not in ocifs) did not work."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    p = TOOLS / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise HarnessError(f"required tool {p} is missing: run scripts/setup.sh")
    return str(p)


def ocifs_cmd() -> list[str]:
    exe = VENV_BIN / "ocifs"
    if not exe.is_file():
        raise HarnessError(f"{exe} is missing: run scripts/setup.sh")
    return [str(exe)]


# --------------------------------------------------------------------------- content


def content(name: str, size: int) -> bytes:
    """Deterministic bytes for a file name: any object can be verified from its name alone."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def first_difference(a: bytes, b: bytes) -> int | None:
    if a == b:
        return None
    n = min(len(a), len(b))
    for i in range(0, n, 65536):
        if a[i : i + 65536] != b[i : i + 65536]:
            for j in range(i, min(i + 65536, n)):
                if a[j] != b[j]:
                    return j
    return n


# --------------------------------------------------------------------------- bounded calls


@dataclass
class Outcome:
    status: str  # "ok" | "error" | "hang"
    value: object = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def errno(self) -> int | None:
        return getattr(self.error, "errno", None)

    def __repr__(self) -> str:
        if self.status == "ok":
            return f"<ok after {self.elapsed:.1f}s>"
        if self.status == "error":
            return f"<error {self.error!r} after {self.elapsed:.1f}s>"
        return f"<HANG: still running after {self.elapsed:.1f}s>"


def bounded(fn, timeout: float, *args, **kwargs) -> Outcome:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout`` seconds (a hang)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name=f"bounded-{getattr(fn, '__name__', 'fn')}")
    start = time.monotonic()
    t.start()
    t.join(timeout)
    elapsed = time.monotonic() - start
    if t.is_alive():
        return Outcome("hang", elapsed=elapsed)
    if "error" in box:
        return Outcome("error", error=box["error"], elapsed=elapsed)
    return Outcome("ok", value=box.get("value"), elapsed=elapsed)


def write_file(path, data: bytes, fsync: bool = True, chunk: int = 1 * MiB, acked: list | None = None) -> None:
    """open/write/fsync/close; raises the first OSError (the fd is always closed).

    Short writes are continued. ``acked`` (a one-element list) receives the number of bytes
    write() reported written, even when a later call fails.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    try:
        view = memoryview(data)
        while done < len(data):
            n = os.write(fd, view[done : done + chunk])
            if n <= 0:
                raise OSError(5, f"write returned {n}")
            done += n
            if acked is not None:
                acked[:] = [done]
        if fsync:
            os.fsync(fd)
    finally:
        if acked is not None:
            acked[:] = [done]
        os.close(fd)


def read_file(path, chunk: int = 1 * MiB) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(chunk)
            if not b:
                return b"".join(parts)
            parts.append(b)


def pread(path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- processes


def run(cmd, timeout: float = 120, env=None, input: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    """subprocess.run in its own session, output captured, whole group killed on timeout."""
    args = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(args, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
                             stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)
        try:
            p.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            raise HarnessError(f"command timed out after {timeout}s: {' '.join(args)}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, p.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def pid_file(mountpoint) -> Path:
    digest = hashlib.sha1(str(os.path.abspath(mountpoint)).encode()).hexdigest()[:16]
    base = Path("/run/ocifs") if os.getuid() == 0 else Path(
        os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ocifs-{os.getuid()}") / "ocifs"
    return base / f"{digest}.pid"


def daemon_pid(mountpoint) -> int:
    return int(pid_file(mountpoint).read_text().strip())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def is_mounted(path) -> bool:
    target = os.path.realpath(str(path))
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[1].encode().decode("unicode_escape") == target:
                return True
    return False


def lazy_unmount(path) -> None:
    for _ in range(5):
        if not is_mounted(path):
            return
        subprocess.run(["fusermount3", "-u", "-z", str(path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


# --------------------------------------------------------------------------- S3 side


def s3_client(endpoint: str, access_key: str, secret_key: str, session_token: str | None = None,
              attempts: int = 3, read_timeout: float = 30):
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=session_token,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=5, read_timeout=read_timeout, max_pool_connections=32,
        ),
    )


def s3_env(access_key: str, secret_key: str, session_token: str | None = None) -> dict:
    env = dict(os.environ)
    for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key, AWS_REGION=REGION,
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    if session_token:
        env["AWS_SESSION_TOKEN"] = session_token
    env["PATH"] = f"{VENV_BIN}:{TOOLS}:{env.get('PATH', '')}"
    return env


def incomplete_uploads(client, bucket: str, prefix: str = "") -> list[tuple[str, str]]:
    out, kw = [], {"Bucket": bucket, "Prefix": prefix}
    while True:
        r = client.list_multipart_uploads(**kw)
        out.extend((u["Key"], u["UploadId"]) for u in r.get("Uploads", []))
        if not r.get("IsTruncated"):
            return out
        kw["KeyMarker"], kw["UploadIdMarker"] = r.get("NextKeyMarker"), r.get("NextUploadIdMarker")


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def get_or_none(client, bucket: str, key: str) -> bytes | None:
    import botocore.exceptions

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def assume_role(endpoint: str, access_key: str, secret_key: str, policy: dict, seconds: int = 3600):
    """MinIO STS AssumeRole with a session policy: temporary credentials limited by ``policy``."""
    import botocore.session

    sts = botocore.session.get_session().create_client(
        "sts", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    r = sts.assume_role(RoleArn="arn:xxx:xxx:xxx:xxxx", RoleSessionName="ocifs-readonly",
                        Policy=json.dumps(policy), DurationSeconds=seconds)
    c = r["Credentials"]
    return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]


# --------------------------------------------------------------------------- MinIO


class MinioServer:
    """A private MinIO that can be stopped, SIGKILLed and restarted (same port, same data)."""

    def __init__(self, root: Path | None = None, port: int | None = None, env: dict | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="ocifs-rel-minio-"))
        self.env = env or {}  # more MINIO_* settings (e.g. MINIO_API_REQUESTS_MAX)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.console = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "minio.log"
        self.proc: subprocess.Popen | None = None
        self.access_key, self.secret_key = MINIO_USER, MINIO_PASSWORD

    def start(self, timeout: float = 60) -> None:
        env = dict(os.environ)
        env.update(MINIO_ROOT_USER=self.access_key, MINIO_ROOT_PASSWORD=self.secret_key,
                   MINIO_BROWSER="off", MINIO_UPDATE="off", MINIO_PROMETHEUS_AUTH_TYPE="public", **self.env)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [tool("minio"), "server", str(self.data), "--address", f"127.0.0.1:{self.port}",
                 "--console-address", f"127.0.0.1:{self.console}", "--quiet"],
                env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"minio exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/minio/health/live", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise HarnessError(f"minio not live after {timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, in-flight requests just die."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self, **kw):
        return s3_client(self.endpoint, self.access_key, self.secret_key, **kw)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- toxiproxy


class Toxiproxy:
    """toxiproxy-server on 127.0.0.1 and a tiny client for its REST API."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ocifs-rel-toxi-"))
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / "toxiproxy.log"
        self.proc: subprocess.Popen | None = None
        self._n = 0

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [tool("toxiproxy-server"), "-host", "127.0.0.1", "-port", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"toxiproxy exited: {self.log.read_text()[-2000:]}")
            try:
                self._req("GET", "/version")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise HarnessError("toxiproxy-server did not answer")

    def _req(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def proxy(self, name: str, upstream: str) -> str:
        """Create a proxy listening on a free 127.0.0.1 port; returns its http:// endpoint."""
        port = free_port()
        self._req("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}",
                                       "upstream": upstream, "enabled": True})
        return f"http://127.0.0.1:{port}"

    def add(self, proxy: str, type: str, stream: str = "downstream", toxicity: float = 1.0, **attributes) -> str:
        self._n += 1
        name = f"{type}_{stream}_{self._n}"
        self._req("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": type, "stream": stream,
                                                       "toxicity": toxicity, "attributes": attributes})
        return name

    def remove(self, proxy: str, toxic: str) -> None:
        self._req("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def clear(self, proxy: str) -> None:
        for t in self._req("GET", f"/proxies/{proxy}/toxics") or []:
            self.remove(proxy, t["name"])

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        self._req("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
